//! wharf: a KServe v2 / Open Inference Protocol gRPC inference server.
//!
//! Transport (`grpc`) → serving core (`inference`, `validate`) → workers → engines
//! (`backend`), over a model repository (`repository`); `app` wires them together.
// unsafe_code is denied in Cargo.toml's [lints]; the exceptions are ONNX Runtime's
// arena statistics (backend/onnxruntime/instance.rs) and the allocator (heap.rs).
//
// Modules from the bottom up: each names only modules above it in this list
// (`python3 scripts/module_graph.py` checks it and finds no cycle).

// The allocator, and what loads and first calls are measured by; the CPUs threads are
// sized from.
pub mod cpus;
pub mod heap;
pub mod logging;
// Which requests are traced, their spans, and the OTLP export.
pub mod trace;

// Data and engines, and the protocol's and model config's generated messages; the
// in-flight byte budget, which shared-memory reads are held against.
pub(crate) mod admission;
pub mod shared_memory;
pub mod tensor;

pub mod proto;

pub mod backend;

pub mod error;

// The request path's vocabulary, then telemetry that the scheduler and workers feed.
pub(crate) mod job;

pub mod metrics;

pub(crate) mod stats;

// Scheduling and running batches.
pub mod batching;

pub(crate) mod workers;

// Models: the repository, loading, configs.
pub mod auth;
pub mod config;
pub mod repository;

// Changing what is loaded while serving.
pub mod control;

// Serving: validation, the core, the transport, the server.
pub(crate) mod request;
pub(crate) mod shutdown;
pub mod validate;

pub(crate) mod inference;

pub(crate) mod listener;
pub(crate) mod tls;

pub mod grpc;
pub mod http;

pub mod app;
