//! The gRPC front end: the KServe v2 inference service, health and reflection.

pub mod convert;
pub mod gate;
mod messages;
mod service;
pub mod status;

pub use service::InferenceService;

/// Code generated from `proto/` (KServe v2 with Triton's extensions).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");

    /// For server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("inference_descriptor");
}
