//! A request as the transport decodes it, and the answer it gets: the serving core's input
//! and output, free of protobuf.

use std::time::Duration;

use crate::{metrics::Protocol, tensor::Tensor};

/// A decoded request: inputs already checked against the protocol, not yet the model.
#[derive(Debug)]
pub struct InferRequest {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub inputs: Vec<Tensor>,
    /// Output names asked for; empty means all.
    pub outputs: Vec<String>,
    /// The `priority` parameter: 1 is the highest; None or 0 for the model's default.
    pub priority: Option<u64>,
    /// The `timeout` parameter: how long the request may wait in the queue.
    pub timeout: Option<Duration>,
    /// What is left of the caller's gRPC deadline on arrival.
    pub deadline: Option<Duration>,
    /// The front end it came in on; an ensemble's steps carry their caller's.
    pub protocol: Protocol,
}

#[derive(Debug)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<Tensor>,
}
