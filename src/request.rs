//! A request as the transport decodes it, and the answer it gets: the serving core's input
//! and output, free of protobuf.

use std::time::Duration;

use crate::{metrics::Protocol, tensor::Tensor};

/// A decoded request: inputs already checked against the protocol, not yet the model.
#[derive(Debug, Default)]
pub struct InferRequest {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub inputs: Vec<Tensor>,
    /// Output names asked for; empty means all.
    pub outputs: Vec<String>,
    /// Outputs (among `outputs`) answered as their top N classes, with N > 0: Triton's
    /// classification extension.
    pub classification: Vec<(String, u32)>,
    /// The `priority` parameter: 1 is the highest; None or 0 for the model's default.
    pub priority: Option<u64>,
    /// The `timeout` parameter: how long the request may wait in the queue.
    pub timeout: Option<Duration>,
    /// What is left of the caller's gRPC deadline on arrival.
    pub deadline: Option<Duration>,
    /// The front end it came in on; an ensemble's steps carry their caller's.
    pub protocol: Protocol,
    /// Where a traced request's spans go (None: not traced).
    pub trace: Option<crate::trace::TraceCx>,
}

#[derive(Debug)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<Tensor>,
}

/// A classification count as a front end reads it: at least 1, at most `u32::MAX`.
pub fn class_count(output: &str, count: i128) -> Result<u32, crate::error::InferError> {
    u32::try_from(count).ok().filter(|n| *n > 0).ok_or_else(|| {
        crate::error::InferError::invalid(format!(
            "output '{output}': invalid value {count} for 'classification'; expected a class count of at least 1"
        ))
    })
}
