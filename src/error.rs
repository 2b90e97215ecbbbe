//! The serving layer's error: everything a request can fail with after it reaches wharf.
//! `grpc::status` holds the one mapping from these to gRPC codes.

use thiserror::Error;

use crate::backend::BackendError;

#[derive(Debug, Error)]
pub enum InferError {
    /// Triton's words, which its clients match.
    #[error("Request for unknown model: '{0}' is not found")]
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
    #[error(transparent)]
    InflightBytes(#[from] crate::admission::OverBudget),
    #[error("server is shutting down and takes no new requests")]
    ShuttingDown,
    #[error("model '{model}': {source}")]
    Backend { model: String, source: BackendError },
    /// A step of an ensemble failed; the error is the step model's.
    #[error("ensemble '{ensemble}' {step}: {source}")]
    Step {
        ensemble: String,
        /// Its place and model, as `Step::label` writes them.
        step: String,
        source: Box<InferError>,
    },
    #[error("ensemble '{ensemble}': {step} would hold {held} between steps, over the request's {limit} (max_intermediate_bytes)")]
    IntermediateBytes {
        ensemble: String,
        step: String,
        held: bytesize::ByteSize,
        limit: bytesize::ByteSize,
    },
    /// A shared-memory region a request names, or registering one.
    #[error(transparent)]
    SharedMemory(crate::shared_memory::ShmError),
    /// The worker dropped the request without answering (it panicked or was stopped).
    #[error("model '{0}': the worker stopped before answering")]
    WorkerGone(String),
}

impl InferError {
    /// The error a step's own error comes down to (itself for any other).
    pub fn root(&self) -> &InferError {
        match self {
            InferError::Step { source, .. } => source.root(),
            other => other,
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        InferError::InvalidArgument(msg.into())
    }

    /// The text a caller is shown: clipped, since it may quote what the caller sent (a
    /// model name of a megabyte would otherwise not fit in a gRPC status header).
    pub fn message(&self) -> String {
        clip(&self.to_string(), MAX_MESSAGE_BYTES).into_owned()
    }
}

/// The longest error text sent back; gRPC carries it in a header (8 KiB by default).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes on a character boundary, marked where it was cut.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end]).into()
}

impl From<crate::shared_memory::ShmError> for InferError {
    /// A region's bytes refused by the in-flight budget are refused as any request's are.
    fn from(error: crate::shared_memory::ShmError) -> InferError {
        match error {
            crate::shared_memory::ShmError::OverBudget(refused) => {
                InferError::InflightBytes(refused)
            }
            other => InferError::SharedMemory(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_clipped_on_a_character_boundary() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdefghij", 8), "abcde...");
        assert_eq!(clip("ééééé", 8), "éé...", "never inside a character");
        let huge = InferError::ModelNotFound("m".repeat(1 << 20));
        assert_eq!(huge.message().len(), MAX_MESSAGE_BYTES);
    }
}
