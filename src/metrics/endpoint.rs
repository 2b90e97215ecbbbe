//! The HTTP side, on its own plaintext port: GET /metrics in Prometheus' text format, and
//! /live and /ready for probes that cannot speak gRPC over TLS (kubelet's cannot).

use std::{future::Future, sync::Arc};

use axum::{
    http::{header, StatusCode},
    routing::get,
    Router,
};
use tokio::net::TcpListener;

use super::Metrics;

/// Serves /metrics, /live and /ready on `listener` until `stop` resolves; /ready answers
/// 200 while `ready()` holds, 503 otherwise (loading, a model failed, draining).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route(
            "/ready",
            get(move || async move {
                if ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}
