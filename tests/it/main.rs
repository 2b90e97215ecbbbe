//! The integration tests, one crate: each suite a module, all against the real server on
//! a loopback port (one link of wharf, tract, ort and tonic instead of one per suite).

mod batching;
mod common;
mod ensemble;
mod errors;
mod fuzz;
mod lifecycle;
mod loadgen;
mod memory;
mod metrics;
mod onnxruntime;
mod reliability;
mod rpc;
mod security;
mod triton_configs;
