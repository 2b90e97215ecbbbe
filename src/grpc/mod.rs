//! The gRPC front end: the KServe v2 inference service, health and reflection.

pub mod convert;
pub(crate) mod extensions;
pub mod gate;
mod messages;
mod service;
pub mod status;
mod traced;

pub use service::InferenceService;

/// Code generated from `proto/`.
pub use crate::proto as pb;
