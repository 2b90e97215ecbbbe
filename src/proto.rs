//! Code generated from `proto/`: KServe v2 with Triton's extensions, and Triton's own
//! model configuration schema, with the descriptors that reflection, the HTTP front end's
//! JSON and the `config.pbtxt` reader use.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, MessageDescriptor};

tonic::include_proto!("inference");

/// For server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("inference_descriptor");

/// The descriptors of every message above, decoded once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("the build's own descriptors")
    })
}

/// The descriptor of `inference.<name>`.
pub fn message(name: &str) -> MessageDescriptor {
    pool()
        .get_message_by_name(&format!("inference.{name}"))
        .expect("a message of the build's protos")
}
