//! ONNX Runtime engine through `ort` (load-dynamic): the library is opened at run time from
//! a path the operator gives. One session per instance; on CPU the weights are shared, not
//! copied: every session takes the model's large float initializers from one set of buffers
//! held here, and one prepacked-weights container.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use bytes::Bytes;
use ort::{
    ep::{self, ExecutionProvider},
    memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType},
    session::{
        builder::{GraphOptimizationLevel, PrepackedWeights},
        Session,
    },
    value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType},
    AsPointer,
};
use tract_onnx::{pb, prelude::Framework};

use super::{BackendError, Instance, Model, Signature};
use crate::tensor::{DataType, Tensor, TensorData};

/// The ONNX Runtime release this build is made against (ort's `api-31`).
pub const WANTED_VERSION: &str = "1.31";

/// Initializers smaller than this stay in the model: sharing them saves nothing.
const SHARED_INITIALIZER_MIN_ELEMENTS: usize = 1024;

/// How one model's sessions are set up.
#[derive(Debug, Clone, PartialEq)]
pub struct OrtOptions {
    pub intra_op_threads: usize,
    pub inter_op_threads: usize,
    pub gpu: Option<GpuOptions>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuOptions {
    pub device_id: i32,
    /// The CUDA arena's cap (`gpu_mem_limit`), from the instance's memory budget.
    pub memory_limit: Option<usize>,
    /// Exhaustive cuDNN convolution search (slow first call, best kernels) or heuristic.
    pub cudnn_exhaustive: bool,
    /// Let cuDNN take as much workspace as its best algorithm wants (ONNX Runtime's
    /// default); false caps it, at some speed, for less arena growth.
    pub cudnn_max_workspace: bool,
    /// Grow the arena by what is asked or by powers of two (fewer, larger device
    /// allocations; less fragmentation, so often less held). Capped by `memory_limit`
    /// either way.
    pub arena_same_as_requested: bool,
    /// Try TensorRT first, with these settings.
    pub tensorrt: Option<TensorRtOptions>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorRtOptions {
    pub fp16: bool,
    pub engine_cache: Option<PathBuf>,
}

/// The process-wide ONNX Runtime environment: opened once, from the first path given.
static ENVIRONMENT: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> =
    OnceLock::new();

fn environment(
    library: Option<&Path>,
) -> Result<&'static ort::environment::Environment, BackendError> {
    let opened = ENVIRONMENT.get_or_init(|| {
        let Some(path) = library else {
            return Err(format!(
                "backend onnxruntime needs the ONNX Runtime {WANTED_VERSION} library: set --onnxruntime-lib or \
                 ORT_DYLIB_PATH (the onnxruntime=={WANTED_VERSION}.1 wheel carries it as onnxruntime/capi/libonnxruntime.so.{WANTED_VERSION}.1)"
            ));
        };
        if !path.is_file() {
            return Err(format!("ONNX Runtime library {}: no such file", path.display()));
        }
        let env = ort::init_from(path)
            .map_err(|e| format!("ONNX Runtime library {}: {e} (wanted version {WANTED_VERSION})", path.display()))?
            .with_name("wharf")
            .build()
            .map_err(|e| format!("ONNX Runtime library {}: {e}", path.display()))?;
        Ok((path.to_owned(), env))
    });
    match opened {
        Ok((opened_path, env)) => match library {
            Some(asked) if asked != opened_path => Err(BackendError::Load(format!(
                "ONNX Runtime is already loaded from {}; one library per process, not also {}",
                opened_path.display(),
                asked.display()
            ))),
            _ => Ok(env),
        },
        Err(e) => Err(BackendError::Load(e.clone())),
    }
}

pub struct OrtModel {
    model_bytes: Vec<u8>,
    /// `model_bytes` is already optimised: sessions load it as it is.
    optimised: bool,
    signature: Signature,
    options: OrtOptions,
    /// Large initializers, shared by every session instead of each loading its own copy.
    initializers: Vec<(String, Arc<DynValue>)>,
    prepacked: PrepackedWeights,
    environment: &'static ort::environment::Environment,
}

impl OrtModel {
    pub fn load(
        path: &Path,
        options: OrtOptions,
        library: Option<&Path>,
    ) -> Result<Arc<OrtModel>, BackendError> {
        let environment = environment(library)?;
        let load = |e: String| BackendError::Load(format!("{}: {e}", path.display()));
        let model_bytes = std::fs::read(path).map_err(|e| load(e.to_string()))?;
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut model_bytes.as_slice())
            .map_err(|e| load(format!("{e:#}")))?;
        if let Some(gpu) = &options.gpu {
            if !ep::CUDA::is_available().unwrap_or(false) {
                return Err(BackendError::Load(format!(
                    "KIND_GPU needs the CUDA execution provider, which this ONNX Runtime library does not have \
                     (device {} asked); use the onnxruntime-gpu build of the library",
                    gpu.device_id
                )));
            }
        }
        // On CPU, optimise the graph once and give every session the optimised file: graph
        // rewrites (Conv+BatchNorm fusion, constant folding) make new weight tensors, which
        // each session would otherwise build and keep for itself.
        let (model_bytes, proto, optimised) = if options.gpu.is_none() {
            let bytes = optimise_once(environment, &model_bytes).map_err(load)?;
            let proto = tract_onnx::onnx()
                .proto_model_for_read(&mut bytes.as_slice())
                .map_err(|e| load(format!("{e:#}")))?;
            (bytes, proto, true)
        } else {
            (model_bytes, proto, false)
        };
        // Host-side sharing is a CPU saving: a CUDA session copies its weights to the device
        // whatever it is given, and ONNX Runtime expects a shared initializer where its
        // consumer runs, so GPU sessions load their own.
        let initializers = if options.gpu.is_none() {
            shared_initializers(&proto).map_err(load)?
        } else {
            Vec::new()
        };
        let model = Arc::new(OrtModel {
            optimised,
            signature: super::onnx::signature(&proto),
            model_bytes,
            options,
            initializers,
            prepacked: PrepackedWeights::new(),
            environment,
        });
        Ok(model)
    }

    fn session(&self) -> Result<Session, String> {
        let err = |e: ort::Error<_>| e.to_string();
        let mut builder = Session::builder(self.environment)
            .map_err(|e| e.to_string())?
            .with_intra_threads(self.options.intra_op_threads)
            .map_err(err)?
            .with_inter_threads(self.options.inter_op_threads)
            .map_err(err)?
            .with_prepacked_weights(&self.prepacked)
            .map_err(err)?;
        if self.optimised {
            builder = builder
                .with_optimization_level(GraphOptimizationLevel::Disable)
                .map_err(err)?;
        }
        for (name, value) in &self.initializers {
            builder = builder
                .with_initializer(name, Arc::clone(value))
                .map_err(err)?;
        }
        if let Some(gpu) = &self.options.gpu {
            let mut providers = Vec::new();
            if let Some(trt) = &gpu.tensorrt {
                let mut provider = ep::TensorRT::default()
                    .with_device_id(gpu.device_id)
                    .with_fp16(trt.fp16);
                if let Some(cache) = &trt.engine_cache {
                    provider = provider
                        .with_engine_cache(true)
                        .with_engine_cache_path(cache.display());
                }
                providers.push(provider.build());
            }
            let mut cuda = ep::CUDA::default()
                .with_device_id(gpu.device_id)
                .with_arena_extend_strategy(if gpu.arena_same_as_requested {
                    ep::ArenaExtendStrategy::SameAsRequested
                } else {
                    ep::ArenaExtendStrategy::NextPowerOfTwo
                })
                .with_conv_max_workspace(gpu.cudnn_max_workspace)
                .with_conv_algorithm_search(if gpu.cudnn_exhaustive {
                    ep::cuda::ConvAlgorithmSearch::Exhaustive
                } else {
                    ep::cuda::ConvAlgorithmSearch::Heuristic
                });
            if let Some(limit) = gpu.memory_limit {
                cuda = cuda.with_memory_limit(limit);
            }
            providers.push(cuda.build().error_on_failure());
            builder = builder.with_execution_providers(providers).map_err(err)?;
        }
        builder
            .commit_from_memory(&self.model_bytes)
            .map_err(|e| e.to_string())
    }
}

/// The model as ONNX Runtime optimises it for this machine's CPU, serialised.
fn optimise_once(
    environment: &ort::environment::Environment,
    model: &[u8],
) -> Result<Vec<u8>, String> {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path =
        std::env::temp_dir().join(format!("wharf-{}-{n}.optimised.onnx", std::process::id()));
    let result = (|| {
        let err = |e: ort::Error<_>| e.to_string();
        let session = Session::builder(environment)
            .map_err(|e| e.to_string())?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(err)?
            .with_intra_threads(1)
            .map_err(err)?
            .with_optimized_model_path(&path)
            .map_err(err)?
            .commit_from_memory(model)
            .map_err(|e| e.to_string())?;
        drop(session);
        std::fs::read(&path)
            .map_err(|e| format!("reading the optimised model {}: {e}", path.display()))
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// The float initializers big enough to matter, as values every session can borrow.
fn shared_initializers(proto: &pb::ModelProto) -> Result<Vec<(String, Arc<DynValue>)>, String> {
    let Some(graph) = proto.graph.as_ref() else {
        return Ok(Vec::new());
    };
    let mut shared = Vec::new();
    for init in &graph.initializer {
        let elements: usize = init.dims.iter().map(|d| *d as usize).product();
        // FLOAT only, inline data only (external data stays with ONNX Runtime).
        if init.data_type != 1
            || elements < SHARED_INITIALIZER_MIN_ELEMENTS
            || !init.external_data.is_empty()
        {
            continue;
        }
        let values: Vec<f32> = if !init.raw_data.is_empty() {
            init.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        } else {
            init.float_data.clone()
        };
        if values.len() != elements {
            return Err(format!(
                "initializer '{}' holds {} values for dims {:?}",
                init.name,
                values.len(),
                init.dims
            ));
        }
        let tensor =
            OrtTensor::from_array((init.dims.clone(), values)).map_err(|e| e.to_string())?;
        shared.push((init.name.clone(), Arc::new(tensor.into_dyn())));
    }
    Ok(shared)
}

impl Model for OrtModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn counts_host_memory(&self) -> bool {
        false
    }

    fn new_instance(self: Arc<Self>) -> Result<Box<dyn Instance>, BackendError> {
        let session = self.session().map_err(BackendError::Load)?;
        Ok(Box::new(OrtInstance {
            model: self,
            session,
        }))
    }
}

struct OrtInstance {
    model: Arc<OrtModel>,
    session: Session,
}

impl Instance for OrtInstance {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let values = inputs
            .iter()
            .map(|t| to_ort(t).map(|v| (t.name.clone(), v)))
            .collect::<Result<Vec<(String, DynValue)>, _>>()?;
        let outputs = self
            .session
            .run(values)
            .map_err(|e| BackendError::Execution(e.to_string()))?;
        self.model
            .signature
            .outputs
            .iter()
            .map(|sig| {
                let value = outputs.get(sig.name.as_str()).ok_or_else(|| {
                    BackendError::Execution(format!("output '{}' missing from the run", sig.name))
                })?;
                from_ort(&sig.name, value)
            })
            .collect()
    }

    /// The session arena's `MaxInUse` (activations, outputs and whatever the session did
    /// not share), read through `AllocatorGetStats`.
    fn peak_bytes(&self) -> Option<u64> {
        let (device, id) = match &self.model.options.gpu {
            Some(gpu) => (AllocationDevice::CUDA, gpu.device_id),
            None => (AllocationDevice::CPU, 0),
        };
        let info = MemoryInfo::new(device, id, AllocatorType::Arena, MemoryType::Default).ok()?;
        let allocator = Allocator::new(&self.session, info).ok()?;
        arena_max_in_use(&allocator)
    }
}

fn le<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes
        .chunks_exact(N)
        .map(|c| c.try_into().expect("N bytes"))
}

fn to_ort(t: &Tensor) -> Result<DynValue, BackendError> {
    let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
    let fail = |e: ort::Error| BackendError::Execution(format!("input '{}': {e}", t.name));
    let bytes: &[u8] = match &t.data {
        TensorData::Fixed(b) => b,
        TensorData::Bytes(items) => {
            let strings = super::utf8_strings(t, items, "onnxruntime")?;
            return OrtTensor::from_string_array((shape, strings.as_slice()))
                .map(|v| v.into_dyn())
                .map_err(fail);
        }
    };
    macro_rules! typed {
        ($ty:ty, $n:literal, $conv:expr) => {
            OrtTensor::<$ty>::from_array((shape, le::<$n>(bytes).map($conv).collect::<Vec<$ty>>()))
                .map(|v| v.into_dyn())
                .map_err(fail)
        };
    }
    match t.datatype {
        DataType::Bool => typed!(bool, 1, |b: [u8; 1]| b[0] != 0),
        DataType::Uint8 => typed!(u8, 1, |b: [u8; 1]| b[0]),
        DataType::Uint16 => typed!(u16, 2, u16::from_le_bytes),
        DataType::Uint32 => typed!(u32, 4, u32::from_le_bytes),
        DataType::Uint64 => typed!(u64, 8, u64::from_le_bytes),
        DataType::Int8 => typed!(i8, 1, i8::from_le_bytes),
        DataType::Int16 => typed!(i16, 2, i16::from_le_bytes),
        DataType::Int32 => typed!(i32, 4, i32::from_le_bytes),
        DataType::Int64 => typed!(i64, 8, i64::from_le_bytes),
        DataType::Fp16 => typed!(half::f16, 2, |b: [u8; 2]| half::f16::from_le_bytes(b)),
        DataType::Bf16 => typed!(half::bf16, 2, |b: [u8; 2]| half::bf16::from_le_bytes(b)),
        DataType::Fp32 => typed!(f32, 4, f32::from_le_bytes),
        DataType::Fp64 => typed!(f64, 8, f64::from_le_bytes),
        DataType::Bytes => unreachable!("BYTES data is TensorData::Bytes"),
    }
}

fn from_ort(name: &str, value: &DynValue) -> Result<Tensor, BackendError> {
    let fail = |e: ort::Error| BackendError::Execution(format!("output '{name}': {e}"));
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(BackendError::Unsupported(format!(
                "output '{name}' is {other:?}, not a tensor"
            )))
        }
    };
    macro_rules! fixed {
        ($ty:ty, $dt:expr, $to:expr) => {{
            let (shape, data) = value.try_extract_tensor::<$ty>().map_err(fail)?;
            let bytes: Vec<u8> = data.iter().flat_map(|v| $to(*v)).collect();
            (
                shape.iter().map(|d| *d as usize).collect::<Vec<_>>(),
                $dt,
                TensorData::Fixed(Bytes::from(bytes)),
            )
        }};
    }
    let (shape, datatype, data) = match ty {
        TensorElementType::Bool => fixed!(bool, DataType::Bool, |v: bool| [v as u8]),
        TensorElementType::Uint8 => fixed!(u8, DataType::Uint8, |v: u8| [v]),
        TensorElementType::Uint16 => fixed!(u16, DataType::Uint16, u16::to_le_bytes),
        TensorElementType::Uint32 => fixed!(u32, DataType::Uint32, u32::to_le_bytes),
        TensorElementType::Uint64 => fixed!(u64, DataType::Uint64, u64::to_le_bytes),
        TensorElementType::Int8 => fixed!(i8, DataType::Int8, i8::to_le_bytes),
        TensorElementType::Int16 => fixed!(i16, DataType::Int16, i16::to_le_bytes),
        TensorElementType::Int32 => fixed!(i32, DataType::Int32, i32::to_le_bytes),
        TensorElementType::Int64 => fixed!(i64, DataType::Int64, i64::to_le_bytes),
        TensorElementType::Float16 => fixed!(half::f16, DataType::Fp16, half::f16::to_le_bytes),
        TensorElementType::Bfloat16 => fixed!(half::bf16, DataType::Bf16, half::bf16::to_le_bytes),
        TensorElementType::Float32 => fixed!(f32, DataType::Fp32, f32::to_le_bytes),
        TensorElementType::Float64 => fixed!(f64, DataType::Fp64, f64::to_le_bytes),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings().map_err(fail)?;
            (
                shape.iter().map(|d| *d as usize).collect(),
                DataType::Bytes,
                TensorData::Bytes(strings.into_iter().map(Bytes::from).collect()),
            )
        }
        other => {
            return Err(BackendError::Unsupported(format!(
                "output '{name}' has type {other:?}, which has no KServe datatype"
            )))
        }
    };
    Ok(Tensor {
        name: name.to_owned(),
        datatype,
        shape,
        data,
    })
}

/// The `MaxInUse` entry of an arena allocator's statistics; None for allocators that keep
/// none. The one unsafe block in wharf: `ort` has no safe call for allocator statistics.
#[allow(unsafe_code)]
fn arena_max_in_use(allocator: &Allocator) -> Option<u64> {
    let api = ort::api();
    let mut stats: *mut ort::sys::OrtKeyValuePairs = std::ptr::null_mut();
    // SAFETY: the allocator pointer is live for the borrow; on success ONNX Runtime hands
    // over `stats`, released below; the value string it returns lives until then.
    unsafe {
        let status = (api.AllocatorGetStats)(allocator.ptr(), &mut stats);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return None;
        }
        if stats.is_null() {
            return None;
        }
        let value = (api.GetKeyValue)(stats, c"MaxInUse".as_ptr());
        let parsed = (!value.is_null())
            .then(|| std::ffi::CStr::from_ptr(value).to_str().ok()?.parse().ok())
            .flatten();
        (api.ReleaseKeyValuePairs)(stats);
        parsed
    }
}
