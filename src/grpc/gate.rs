//! Admission of unary ModelInfer bodies against the in-flight byte budget, before their
//! bytes are read: the 5-byte gRPC message prefix declares the length, which is held (or
//! refused with RESOURCE_EXHAUSTED) as soon as it arrives, so that concurrent large
//! requests cannot pile up in memory while they are decoded.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use http_body::Frame;
use tonic::{
    body::Body,
    codegen::{http, Service},
    server::NamedService,
    Status,
};

use crate::{
    admission::{ByteBudget, Held},
    metrics::{Metrics, Protocol, Refusal},
};

/// The one unary RPC that carries tensors; streams are charged per message instead.
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
/// Compressed flag (1 byte) and message length (4 bytes, big-endian).
const PREFIX: usize = 5;

/// What a request's body was admitted for, handed to the handler through the request's
/// extensions, which keeps it until the request is answered.
#[derive(Debug, Clone, Default)]
pub struct Charge(Arc<Mutex<Option<Held>>>);

/// Wraps the inference service so that unary ModelInfer bodies are charged.
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    budget: Arc<ByteBudget>,
    metrics: Arc<Metrics>,
}

impl<S> Gate<S> {
    pub fn new(inner: S, budget: Arc<ByteBudget>, metrics: Arc<Metrics>) -> Gate<S> {
        Gate {
            inner,
            budget,
            metrics,
        }
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Gate<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if request.uri().path() == MODEL_INFER {
            let charge = Charge::default();
            request.extensions_mut().insert(charge.clone());
            let (budget, metrics) = (Arc::clone(&self.budget), Arc::clone(&self.metrics));
            request = request.map(|inner| {
                Body::new(Charged {
                    inner,
                    budget,
                    metrics,
                    charge,
                    prefix: Vec::with_capacity(PREFIX),
                    admitted: false,
                })
            });
        }
        self.inner.call(request)
    }
}

/// A request body that holds its declared length against the budget once it knows it.
struct Charged {
    inner: Body,
    budget: Arc<ByteBudget>,
    metrics: Arc<Metrics>,
    charge: Charge,
    prefix: Vec<u8>,
    admitted: bool,
}

impl http_body::Body for Charged {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            if let Some(data) = data.filter(|_| !self.admitted) {
                let wanted = PREFIX - self.prefix.len();
                let mut head = data.clone();
                let take = wanted.min(head.remaining());
                self.prefix.extend_from_slice(&head.split_to(take));
                if self.prefix.len() == PREFIX {
                    self.admitted = true;
                    let length = u32::from_be_bytes(self.prefix[1..].try_into().expect("4 bytes"));
                    match self.budget.try_hold(length as usize) {
                        Ok(held) => {
                            *self.charge.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(held)
                        }
                        Err(refused) => {
                            self.metrics.refused(Protocol::Grpc, Refusal::InflightBytes);
                            return Poll::Ready(Some(Err(
                                crate::error::InferError::from(refused).into()
                            )));
                        }
                    }
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
