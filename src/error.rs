//! The serving layer's error: everything a request can fail with after it reaches wharf.
//! `grpc::status` holds the one mapping from these to gRPC codes.

use thiserror::Error;

use crate::backend::BackendError;

#[derive(Debug, Error)]
pub enum InferError {
    #[error("unknown model '{0}'")]
    ModelNotFound(String),
    #[error("model '{model}' has no version {version}{available}")]
    VersionNotFound {
        model: String,
        version: String,
        available: String,
    },
    #[error("model '{model}' is not ready: {reason}")]
    ModelUnavailable { model: String, reason: String },
    /// The request is malformed or does not fit the model; the text names the input.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("model '{model}' queue is full ({capacity} waiting, its max_queue_size); retry later")]
    QueueFull { model: String, capacity: usize },
    #[error("model '{model}': the request waited {waited:?} in the queue, past its deadline, and was not computed")]
    DeadlineExceeded {
        model: String,
        waited: std::time::Duration,
    },
    #[error("server is shutting down and takes no new requests")]
    ShuttingDown,
    #[error("model '{model}': {source}")]
    Backend { model: String, source: BackendError },
    /// The worker dropped the request without answering (it panicked or was stopped).
    #[error("model '{0}': the worker stopped before answering")]
    WorkerGone(String),
}

impl InferError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        InferError::InvalidArgument(msg.into())
    }
}
