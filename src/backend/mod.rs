//! The engine boundary: a loaded model shared by every instance, and per-instance state
//! that runs one batch at a time. One module per engine.

pub mod ocr;
pub mod onnx;
pub mod onnxruntime;
pub mod reshape;
pub mod tract;

use std::sync::Arc;

use thiserror::Error;

use crate::tensor::{DataType, Tensor};

/// What an engine reads from the model file.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub inputs: Vec<TensorSignature>,
    pub outputs: Vec<TensorSignature>,
}

/// One graph input or output as the file declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSignature {
    pub name: String,
    /// `None` where the file leaves the type open.
    pub datatype: Option<DataType>,
    /// The full shape, -1 for a dimension the file leaves open; `None` for unknown rank.
    pub dims: Option<Vec<i64>>,
}

#[derive(Debug, Clone, Error)]
pub enum BackendError {
    #[error("cannot load model: {0}")]
    Load(String),
    /// The engine cannot build a plan for these input shapes (the graph rejects them).
    #[error("the model cannot run input shapes {shapes}: {reason}")]
    ShapeRejected { shapes: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("inference failed: {0}")]
    Execution(String),
    /// The engine panicked; the instance that ran the call was rebuilt.
    #[error("the engine panicked: {0}")]
    Panicked(String),
    /// The input is not what the step can work on (an image it cannot decode); the text
    /// names the input and what was wrong.
    #[error("{0}")]
    BadInput(String),
    /// The engine answered with an output that does not fit the call it was given.
    #[error("the engine returned a wrong output: {0}")]
    BadOutput(String),
}

/// The text of a panic's payload (`panic!` carries a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// A loaded model: weights and compiled plans, shared by all instances through `Arc`.
/// What an engine is like where the loader and the workers care. The default is ONNX
/// Runtime's shape, less its own allocators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineTraits {
    /// The engine allocates through Rust's global allocator, so that wharf can count the
    /// memory a call needs (tract does; ONNX Runtime has allocators of its own).
    pub counts_host_memory: bool,
    /// Warming with synthetic inputs means something: not for a processing step (zeros
    /// are no image), which has no plan to build either.
    pub warms: bool,
    /// A call computes on the calling thread alone (tract), so that the thread's CPU time
    /// is its cost whatever else the machine is doing.
    pub computes_on_calling_thread: bool,
    /// Each instance must run the warm inputs itself before READY: yes where an instance
    /// prepares per shape (ONNX Runtime's sessions trace memory on a first run; on a GPU,
    /// cuDNN searches and CUDA graphs), no where the plans warming built are shared and an
    /// instance only holds run state (tract).
    pub warms_each_instance: bool,
    /// Threads one call computes on: the instance's own (1), or an engine's intra-op
    /// pool, sized from the CPUs the process may use (`cpus::available`).
    pub threads_per_call: usize,
}

impl Default for EngineTraits {
    fn default() -> EngineTraits {
        EngineTraits {
            counts_host_memory: true,
            warms: true,
            computes_on_calling_thread: false,
            warms_each_instance: true,
            threads_per_call: 1,
        }
    }
}

/// How calls will come to a model, as its config and batching policy say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallPlan {
    /// Dimension 0 of every tensor is the batch's rows, each computed independently of
    /// the others (`max_batch_size` > 0).
    pub batched: bool,
    /// The row counts every call carries (formed batches are padded up to them); empty:
    /// any.
    pub batch_sizes: Vec<usize>,
    /// Every dimension but the rows is fixed.
    pub fixed_shapes: bool,
}

pub trait Model: Send + Sync + 'static {
    fn signature(&self) -> &Signature;

    /// What the loader and the workers may count on from this engine.
    fn traits(&self) -> EngineTraits {
        EngineTraits::default()
    }

    /// How calls will come, told once before the first instance is made. An engine that
    /// prepares each input shape anew may then keep one prepared session, or one captured
    /// graph, per row count, or run a batch's rows one by one. Others ignore it.
    fn plan_calls(&self, _calls: &CallPlan) {}

    /// A fresh instance that shares this model and owns only its mutable run state.
    /// Called on the thread that will use it, so instances need not be `Send`.
    fn new_instance(self: Arc<Self>) -> Result<Box<dyn Instance>, BackendError>;
}

/// Runs batches: inputs in the model's input order, outputs in its output order.
pub trait Instance {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError>;

    /// The most bytes the engine's own allocator has held for this instance so far, for
    /// engines that keep such books (ONNX Runtime's arena); None where the counting
    /// global allocator measures instead.
    fn peak_bytes(&self) -> Option<u64> {
        None
    }
}

/// A BYTES tensor's elements as text, for engines whose string type is UTF-8.
pub fn utf8_strings(
    t: &Tensor,
    items: &[bytes::Bytes],
    engine: &str,
) -> Result<Vec<String>, BackendError> {
    items
        .iter()
        .enumerate()
        .map(|(i, b)| {
            String::from_utf8(b.to_vec()).map_err(|_| {
                BackendError::Unsupported(format!(
                    "input '{}' element {i}: the {engine} backend takes BYTES as UTF-8 text only",
                    t.name
                ))
            })
        })
        .collect()
}
