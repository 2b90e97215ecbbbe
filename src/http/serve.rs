//! Serving the router on its port: connections that sent their first bytes in time, at
//! most `MAX_CONNECTIONS` at once, TLS where it is on, a deadline for each request's
//! headers (no slowloris), HTTP/1.1 keep-alive or HTTP/2, and a graceful close once the
//! drain's work is done.

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use futures::StreamExt;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::listener;

/// Open connections served at once; past it a new one is closed as it comes.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long a request's line and headers may take to arrive, once its connection has
/// sent its first bytes.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` (over TLS with `tls`) until `stop` resolves, then lets
/// each connection finish the request it is on and closes it.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    handshake: Duration,
    stop: impl Future<Output = ()>,
) {
    // A TLS hello is longer than an HTTP/2 preface; a plain request line is shorter.
    let first = match tls {
        Some(_) => listener::PREFACE_BYTES,
        None => listener::REQUEST_LINE_BYTES,
    };
    let mut incoming = listener::incoming(listener, handshake, first);
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
                warn!(
                    limit = MAX_CONNECTIONS,
                    "HTTP connections at their limit: closing new ones"
                );
                refusing = true;
            }
            continue;
        };
        refusing = false;
        let (builder, service, watcher, tls) = (
            builder.clone(),
            service.clone(),
            graceful.watcher(),
            tls.clone(),
        );
        tokio::spawn(async move {
            match tls {
                None => serve_io(&builder, stream, service, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_io(&builder, stream, service, watcher).await,
                        Ok(Err(e)) => debug!(error = %e, "a TLS handshake failed"),
                        Err(_) => debug!("a TLS handshake did not finish in time"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(incoming);
    graceful.shutdown().await;
}

/// One connection, until it ends or the shutdown closes it.
async fn serve_io<I>(
    builder: &Builder<TokioExecutor>,
    io: I,
    service: TowerToHyperService<Router>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        debug!(error = %e, "an HTTP connection ended with an error");
    }
}
