//! Accepting connections (gRPC's and HTTP's): TCP_NODELAY on each, a back-off when
//! accepting fails (file descriptors exhausted), and a deadline for a new connection's
//! first bytes, so that a peer that opens connections and sends nothing (or half a
//! preface) cannot hold them.

use std::{io, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

/// The HTTP/2 client preface is 24 bytes; a TLS ClientHello is longer. A gRPC connection
/// is handed on once this much has arrived.
pub const PREFACE_BYTES: usize = 24;
/// The shortest HTTP/1.1 request line, `GET / HTTP/1.1\r\n`.
pub const REQUEST_LINE_BYTES: usize = 16;
/// Accepted connections waiting for the server to take them; the accept loop waits past
/// it, which is the back-pressure a listener's own backlog would give.
const HANDOFF: usize = 64;
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often a connection that has sent part of its first bytes is looked at again.
const PEEK_EVERY: Duration = Duration::from_millis(10);

/// Connections from `listener`, each handed on only once it has sent its first `first`
/// bytes (at most `PREFACE_BYTES`) within `handshake`. Accepting stops when the returned
/// stream is dropped.
pub fn incoming(
    listener: TcpListener,
    handshake: Duration,
    first: usize,
) -> ReceiverStream<io::Result<TcpStream>> {
    let (tx, rx) = mpsc::channel(HANDOFF);
    tokio::spawn(accept(listener, handshake, first.min(PREFACE_BYTES), tx));
    ReceiverStream::new(rx)
}

async fn accept(
    listener: TcpListener,
    handshake: Duration,
    first: usize,
    tx: mpsc::Sender<io::Result<TcpStream>>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if failing {
                    info!("accepting connections again");
                    failing = false;
                }
                backoff = MIN_BACKOFF;
                // Small answers must leave at once: without TCP_NODELAY, Nagle's algorithm
                // and delayed ACKs add ~40 ms to a share of requests.
                let _ = stream.set_nodelay(true);
                let tx = tx.clone();
                tokio::spawn(async move {
                    if first_bytes(&stream, first, handshake).await {
                        let _ = tx.send(Ok(stream)).await;
                    } else {
                        debug!(%peer, "closed a connection that sent no preface in time");
                    }
                });
            }
            Err(error) => {
                // Typically EMFILE: retrying at once would spin a core. Said once per
                // spell of failures, not once per try.
                if !failing {
                    warn!(%error, "cannot accept connections; retrying with back-off");
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Whether the peer sent its first `wanted` bytes within `limit` (false if it closed or
/// was slow).
async fn first_bytes(stream: &TcpStream, wanted: usize, limit: Duration) -> bool {
    let arrived = async {
        let mut buffer = [0u8; PREFACE_BYTES];
        loop {
            stream.readable().await?;
            match stream.peek(&mut buffer).await? {
                0 => return Ok::<bool, io::Error>(false),
                n if n >= wanted => return Ok(true),
                // Part of it: readable() stays ready until more comes, so look again soon
                // rather than spin.
                _ => tokio::time::sleep(PEEK_EVERY).await,
            }
        }
    };
    matches!(tokio::time::timeout(limit, arrived).await, Ok(Ok(true)))
}
