//! wharf: a KServe v2 / Open Inference Protocol gRPC inference server.
//!
//! Transport (`grpc`) → serving core (`inference`, `validate`) → workers → engines
//! (`backend`), over a model repository (`repository`); `app` wires them together.
// unsafe_code is denied in Cargo.toml's [lints]; the one exception is ONNX Runtime's arena statistics (backend/onnxruntime.rs).

pub mod admission;
pub mod app;
pub mod auth;
pub mod backend;
pub mod batching;
pub mod config;
pub mod error;
pub mod grpc;
pub mod inference;
pub mod listener;
pub mod loadgen;
pub mod metrics;
pub mod repository;
pub mod shutdown;
pub mod stats;
pub mod tensor;
pub mod validate;
pub mod workers;
