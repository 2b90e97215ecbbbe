//! ONNX Runtime engine through `ort` (load-dynamic): the library is opened at run time from
//! a path the operator gives. One session per instance; on CPU the weights are shared, not
//! copied: every session takes the model's large float initializers from one set of buffers
//! held here, and one prepacked-weights container. Where calls are padded to a few batch
//! sizes (GPU buckets), an instance keeps one session per size, so that no session ever
//! sees its input shape change (cuDNN re-plans every convolution when it does); sessions
//! may run through IoBinding, and on CUDA replay a captured CUDA graph.
//!
//! `options` is built without the `onnxruntime` feature too, so that configs are checked
//! the same either way.

pub mod library;
pub mod options;

#[cfg(feature = "onnxruntime")]
mod instance;
#[cfg(feature = "onnxruntime")]
mod session;
#[cfg(feature = "onnxruntime")]
mod values;

pub use options::{GpuOptions, GpuPlacement, OrtOptions, OrtParameters, TensorRtOptions};
#[cfg(feature = "onnxruntime")]
pub use session::{library_status, OrtModel, WANTED_VERSION};

/// The ONNX Runtime release wharf is built against, in the library's file name.
pub const WANTED_VERSION_TEXT: &str = "1.31";

/// Without the `onnxruntime` feature no library is ever opened.
#[cfg(not(feature = "onnxruntime"))]
pub fn library_status(_: Option<&std::path::Path>) -> Result<(), String> {
    Err("this wharf was built without the `onnxruntime` feature".into())
}
