//! Serving the router on its port: connections that sent their request line in time, at
//! most `MAX_CONNECTIONS` at once, a deadline for each request's headers (no slowloris),
//! HTTP/1.1 keep-alive or h2c, and a graceful close once the drain's work is done.

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use futures::StreamExt;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

use crate::listener;

/// Open connections served at once; past it a new one is closed as it comes.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long a request's line and headers may take to arrive, once its connection has
/// sent its first bytes.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `stop` resolves, then lets each connection finish
/// the request it is on and closes it.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    handshake: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut incoming = listener::incoming(listener, handshake, listener::REQUEST_LINE_BYTES);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let service = TowerToHyperService::new(router);
    let mut refusing = false;
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => break,
            next = incoming.next() => match next {
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    debug!(error = %e, "an HTTP connection failed as it was accepted");
                    continue;
                }
                None => break,
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if !refusing {
                warn!(limit = MAX_CONNECTIONS, "HTTP connections at their limit: closing new ones");
                refusing = true;
            }
            continue;
        };
        refusing = false;
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service.clone())
            .into_owned();
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                debug!(error = %e, "an HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(incoming);
    graceful.shutdown().await;
}
