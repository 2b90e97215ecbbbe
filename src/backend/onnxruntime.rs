//! ONNX Runtime engine through `ort` (load-dynamic): the library is opened at run time from
//! a path the operator gives. One session per instance; on CPU the weights are shared, not
//! copied: every session takes the model's large float initializers from one set of buffers
//! held here, and one prepacked-weights container. Where calls are padded to a few batch
//! sizes (GPU buckets), an instance keeps one session per size, so that no session ever
//! sees its input shape change (cuDNN re-plans every convolution when it does); sessions
//! may run through IoBinding, and on CUDA replay a captured CUDA graph.

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
        IoBinding, RunOptions, Session,
    },
    value::{
        DynTensor, DynTensorValueType, DynValue, Tensor as OrtTensor, TensorElementType, ValueType,
    },
    AsPointer,
};
use tract_onnx::{pb, prelude::Framework};

use super::{BackendError, Instance, Model, Signature};
use crate::tensor::{le_chunks as le, DataType, Tensor, TensorData};

/// The ONNX Runtime release this build is made against (ort's `api-31`).
pub const WANTED_VERSION: &str = "1.31";

/// Initializers smaller than this stay in the model: sharing them saves nothing.
const SHARED_INITIALIZER_MIN_ELEMENTS: usize = 1024;

/// How one model's sessions are set up.
#[derive(Debug, Clone, PartialEq)]
pub struct OrtOptions {
    pub intra_op_threads: usize,
    pub inter_op_threads: usize,
    /// Run through IoBinding: inputs copied into buffers bound once per shape (device
    /// memory on a GPU), outputs left in buffers bound after the first run of that shape.
    pub io_binding: bool,
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
    /// Capture each session's run as a CUDA graph and replay it (one fixed shape per
    /// session, I/O bound at fixed device addresses). None: wherever every call has a fixed
    /// shape (padded to batch sizes, other dims fixed). Where ONNX Runtime refuses (nodes
    /// off the CUDA provider, control flow) or a replay disagrees with a plain run, sessions
    /// run plainly and the log says why.
    pub cuda_graph: Option<bool>,
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
    /// The batch sizes calls are padded to (each gets a session of its own where there
    /// are several), and whether the other dims are fixed.
    plan: OnceLock<(Vec<usize>, bool)>,
    /// Why CUDA graphs could not be used, once found: later sessions skip the attempt.
    graph_refused: OnceLock<String>,
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
            plan: OnceLock::new(),
            graph_refused: OnceLock::new(),
        });
        Ok(model)
    }

    /// One session; on a GPU its arena gets `1/share` of the instance's budget, as each of
    /// an instance's `share` sessions keeps its own.
    fn session(&self, share: usize, cuda_graph: bool) -> Result<Session, String> {
        // Making a CUDA session synchronises the device, which a capture elsewhere refuses.
        let _gpu = gpu_guard(self);
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
                cuda = cuda.with_memory_limit(limit / share.max(1));
            }
            if cuda_graph {
                cuda = cuda.with_cuda_graph(true);
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

    fn plan_calls(&self, batch_sizes: &[usize], fixed_shapes: bool) {
        let _ = self.plan.set((batch_sizes.to_vec(), fixed_shapes));
    }

    fn new_instance(self: Arc<Self>) -> Result<Box<dyn Instance>, BackendError> {
        let sizes = self.plan.get().map(|p| p.0.clone()).unwrap_or_default();
        let keys: Vec<Option<usize>> = if sizes.len() > 1 {
            sizes.into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        let share = keys.len();
        let mut instance = OrtInstance {
            model: self,
            sessions: keys.into_iter().map(|rows| (rows, None)).collect(),
            share,
        };
        // The first session now, so that a model that cannot make one fails here; the
        // others when their batch size first runs (warm-up, before READY).
        instance.session(0)?;
        Ok(Box::new(instance))
    }
}

impl OrtModel {
    fn wants_graph(&self) -> bool {
        let fixed_calls = self
            .plan
            .get()
            .is_some_and(|(sizes, fixed)| *fixed && !sizes.is_empty());
        let asked = match self.options.gpu.as_ref().map(|g| g.cuda_graph) {
            Some(Some(asked)) => asked,
            Some(None) => fixed_calls,
            None => false,
        };
        asked && self.graph_refused.get().is_none()
    }

    /// A session with CUDA graphs where asked and possible, else a plain one; the first
    /// refusal is logged with ONNX Runtime's reason.
    fn graph_session(&self, share: usize) -> Result<(Session, bool), BackendError> {
        if self.wants_graph() {
            match self.session(share, true) {
                Ok(session) => return Ok((session, true)),
                Err(reason) => self.refuse_graph(reason),
            }
        }
        Ok((
            self.session(share, false).map_err(BackendError::Load)?,
            false,
        ))
    }

    /// Why this model's sessions do not use CUDA graphs although asked, if they do not.
    pub fn graph_refusal(&self) -> Option<&str> {
        self.graph_refused.get().map(String::as_str)
    }

    fn refuse_graph(&self, reason: String) {
        if self.graph_refused.set(reason.clone()).is_ok() {
            tracing::warn!(%reason, "CUDA graphs are off for this model; its sessions run plainly");
        }
    }
}

struct OrtInstance {
    model: Arc<OrtModel>,
    /// One session per batch size (the leading dimension it serves; None: any) where
    /// calls are padded to several, else one for all; each made at its first call.
    sessions: Vec<(Option<usize>, Option<ShapeSession>)>,
    /// How many sessions split the instance's memory budget.
    share: usize,
}

struct ShapeSession {
    session: Session,
    /// Runs replay a captured CUDA graph.
    graph: bool,
    /// The IoBinding state for the shape last seen.
    bound: Option<Bound>,
}

/// Buffers bound to a session for one set of input shapes. Fields drop in order: the
/// tensors before the allocator that made them.
struct Bound {
    binding: IoBinding,
    shapes: Vec<Vec<usize>>,
    inputs: Vec<DynTensor>,
    /// Made the device buffers (the binding holds the output buffers).
    _allocator: Allocator,
}

impl OrtInstance {
    /// The session for a call of `rows`: its own, else the smallest larger, else the last.
    fn session_for(&self, rows: usize) -> usize {
        let keys: Vec<Option<usize>> = self.sessions.iter().map(|(k, _)| *k).collect();
        keys.iter()
            .position(|k| *k == Some(rows))
            .or_else(|| {
                (0..keys.len())
                    .filter(|i| keys[*i].is_none_or(|r| r >= rows))
                    .min_by_key(|i| keys[*i])
            })
            .unwrap_or(keys.len() - 1)
    }

    /// The session at `ix`, made now if it has not been.
    fn session(&mut self, ix: usize) -> Result<&mut ShapeSession, BackendError> {
        let slot = &mut self.sessions[ix].1;
        if slot.is_none() {
            let (session, graph) = self.model.graph_session(self.share)?;
            *slot = Some(ShapeSession {
                session,
                graph,
                bound: None,
            });
        }
        Ok(slot.as_mut().expect("made above"))
    }
}

impl Instance for OrtInstance {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let rows = inputs
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(1);
        let ix = self.session_for(rows);
        let model = Arc::clone(&self.model);
        let bindable = inputs
            .iter()
            .all(|t| matches!(t.data, TensorData::Fixed(_)));
        let share = self.share;
        let shape = self.session(ix)?;
        if !(model.options.io_binding || shape.graph) || !bindable {
            return run_plain(&model, &mut shape.session, inputs);
        }
        let capturing = shape.graph && shape.bound.is_none();
        match run_bound(&model, shape, inputs) {
            // A graph that fails to capture, or whose replay disagrees with a plain run, is
            // given up for this model: the session is rebuilt plain and the call made again.
            Err(e) if capturing => {
                model.refuse_graph(format!("capturing the first run failed: {e}"));
                shape.bound = None;
                shape.session = model.session(share, false).map_err(BackendError::Load)?;
                shape.graph = false;
                run_bound(&model, shape, inputs)
            }
            result => result,
        }
    }

    /// The largest `MaxInUse` of the instance's session arenas (activations, outputs and
    /// whatever a session did not share), read through `AllocatorGetStats`.
    fn peak_bytes(&self) -> Option<u64> {
        let (device, id) = match &self.model.options.gpu {
            Some(gpu) => (AllocationDevice::CUDA, gpu.device_id),
            None => (AllocationDevice::CPU, 0),
        };
        self.sessions
            .iter()
            .filter_map(|(_, s)| s.as_ref())
            .filter_map(|s| {
                let info = MemoryInfo::new(
                    device.clone(),
                    id,
                    AllocatorType::Arena,
                    MemoryType::Default,
                )
                .ok()?;
                let allocator = Allocator::new(&s.session, info).ok()?;
                arena_max_in_use(&allocator)
            })
            .reduce(|a, b| a + b)
    }
}

fn run_plain(
    model: &OrtModel,
    session: &mut Session,
    inputs: &[Tensor],
) -> Result<Vec<Tensor>, BackendError> {
    let values = inputs
        .iter()
        .map(|t| to_ort(t).map(|v| (t.name.clone(), v.into_dyn())))
        .collect::<Result<Vec<(String, DynValue)>, _>>()?;
    let _gpu = gpu_guard(model);
    let outputs = session
        .run(values)
        .map_err(|e| BackendError::Execution(e.to_string()))?;
    read_outputs(model, &outputs)
}

/// Held for writing while a CUDA graph is captured, for reading around every other GPU
/// run and copy: CUDA refuses work on other streams of the process during a capture.
static CAPTURE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn gpu_guard(model: &OrtModel) -> Option<std::sync::RwLockReadGuard<'static, ()>> {
    model
        .options
        .gpu
        .is_some()
        .then(|| CAPTURE.read().unwrap_or_else(|e| e.into_inner()))
}

/// A run through IoBinding. The first call of a shape binds input buffers of that shape,
/// runs once with the outputs placed by ONNX Runtime (no graph capture on that run), then
/// binds output buffers of the shapes it produced, so that every later run (and a CUDA
/// graph's capture and replays) reads and writes the same addresses. A graph session
/// never changes shape, and its first replay must agree with the plain first run.
fn run_bound(
    model: &OrtModel,
    shape: &mut ShapeSession,
    inputs: &[Tensor],
) -> Result<Vec<Tensor>, BackendError> {
    let exec = |e: ort::Error| BackendError::Execution(e.to_string());
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.clone()).collect();
    let fresh = shape.bound.as_ref().is_none_or(|b| b.shapes != shapes);
    if !fresh {
        let _gpu = gpu_guard(model);
        let bound = shape.bound.as_mut().expect("bound");
        fill(&mut bound.inputs, inputs)?;
        let outputs = shape.session.run_binding(&bound.binding).map_err(exec)?;
        return read_outputs(model, &outputs);
    }
    if let (true, Some(bound)) = (shape.graph, &shape.bound) {
        return Err(BackendError::Execution(format!(
            "this session replays a CUDA graph captured for input shapes {:?}, not {shapes:?}",
            bound.shapes
        )));
    }
    shape.bound = None;
    let (bound, plain) = {
        let _gpu = gpu_guard(model);
        bind(model, &mut shape.session, inputs, shapes, shape.graph)?
    };
    let bound = shape.bound.insert(bound);
    if !shape.graph {
        return Ok(plain);
    }
    // ONNX Runtime captures within this one call (after the regular run it needs) and
    // replays the graph to produce its outputs.
    let replayed = {
        let _capturing = CAPTURE.write().unwrap_or_else(|e| e.into_inner());
        let outputs = shape.session.run_binding(&bound.binding).map_err(exec)?;
        read_outputs(model, &outputs)?
    };
    match replayed.iter().zip(&plain).find(|(a, b)| !agree(a, b)) {
        Some((a, _)) => Err(BackendError::Execution(format!(
            "output '{}' of the replayed CUDA graph disagrees with a plain run",
            a.name
        ))),
        None => Ok(replayed),
    }
}

/// Binds input buffers of `shapes`, runs once with the outputs placed by ONNX Runtime
/// (skipping graph capture), and binds output buffers of the shapes that run produced;
/// returns them with that run's outputs.
fn bind(
    model: &OrtModel,
    session: &mut Session,
    inputs: &[Tensor],
    shapes: Vec<Vec<usize>>,
    graph: bool,
) -> Result<(Bound, Vec<Tensor>), BackendError> {
    let exec = |e: ort::Error| BackendError::Execution(e.to_string());
    let device = match &model.options.gpu {
        Some(gpu) => MemoryInfo::new(
            AllocationDevice::CUDA,
            gpu.device_id,
            AllocatorType::Device,
            MemoryType::Default,
        ),
        None => MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        ),
    }
    .map_err(exec)?;
    let allocator = Allocator::new(session, device.clone()).map_err(exec)?;
    let mut binding = session.create_binding().map_err(exec)?;
    let mut buffers = Vec::with_capacity(inputs.len());
    for t in inputs {
        let mut buffer =
            DynTensor::new(&allocator, element_type(t.datatype), t.shape.clone()).map_err(exec)?;
        to_ort(t)?.copy_into(&mut buffer).map_err(exec)?;
        binding.bind_input(t.name.as_str(), &buffer).map_err(exec)?;
        buffers.push(buffer);
    }
    for sig in &model.signature.outputs {
        binding
            .bind_output_to_device(sig.name.as_str(), &device)
            .map_err(exec)?;
    }
    // `gpu_graph_id` -1: a regular run, not counted towards (nor starting) a capture.
    let mut skip_graph = RunOptions::new().map_err(exec)?;
    if graph {
        skip_graph.set("gpu_graph_id", "-1").map_err(exec)?;
    }
    let (placed, plain) = {
        let outputs = session
            .run_binding_with_options(&binding, &skip_graph)
            .map_err(exec)?;
        let placed = model
            .signature
            .outputs
            .iter()
            .map(
                |sig| match outputs.get(sig.name.as_str()).map(|v| v.dtype()) {
                    Some(ValueType::Tensor { ty, shape, .. }) => Ok((*ty, shape.to_vec())),
                    other => Err(BackendError::Execution(format!(
                        "output '{}' is {other:?}, not a tensor",
                        sig.name
                    ))),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        (placed, read_outputs(model, &outputs)?)
    };
    for (sig, (ty, dims)) in model.signature.outputs.iter().zip(placed) {
        let buffer = DynTensor::new(&allocator, ty, dims).map_err(exec)?;
        binding
            .bind_output(sig.name.as_str(), buffer)
            .map_err(exec)?;
    }
    let bound = Bound {
        binding,
        shapes,
        inputs: buffers,
        _allocator: allocator,
    };
    Ok((bound, plain))
}

fn read_outputs(
    model: &OrtModel,
    outputs: &ort::session::SessionOutputs<'_>,
) -> Result<Vec<Tensor>, BackendError> {
    model
        .signature
        .outputs
        .iter()
        .map(|sig| {
            let value = outputs.get(sig.name.as_str()).ok_or_else(|| {
                BackendError::Execution(format!("output '{}' missing from the run", sig.name))
            })?;
            to_host(&sig.name, value)
        })
        .collect()
}

/// Two runs' outputs agree: FP32 within 1e-3 (relative past 1), anything else exactly.
fn agree(a: &Tensor, b: &Tensor) -> bool {
    if a.shape != b.shape || a.datatype != b.datatype {
        return false;
    }
    match (&a.data, &b.data, a.datatype) {
        (TensorData::Fixed(x), TensorData::Fixed(y), DataType::Fp32) => {
            le::<4>(x).zip(le::<4>(y)).all(|(p, q)| {
                let (p, q) = (f32::from_le_bytes(p), f32::from_le_bytes(q));
                (p - q).abs() <= 1e-3 * q.abs().max(1.0)
            })
        }
        _ => a.data == b.data,
    }
}

/// Copies each call's data into the bound input buffers (to the device on a GPU).
fn fill(buffers: &mut [DynTensor], inputs: &[Tensor]) -> Result<(), BackendError> {
    for (buffer, t) in buffers.iter_mut().zip(inputs) {
        to_ort(t)?
            .copy_into(&mut *buffer)
            .map_err(|e| BackendError::Execution(format!("input '{}': {e}", t.name)))?;
    }
    Ok(())
}

/// An output as wharf's tensor, copied to the host first where it lives on a device.
fn to_host(name: &str, value: &DynValue) -> Result<Tensor, BackendError> {
    let fail = |e: ort::Error| BackendError::Execution(format!("output '{name}': {e}"));
    let tensor = value
        .view()
        .downcast::<DynTensorValueType>()
        .map_err(fail)?;
    if tensor.memory_info().is_cpu_accessible() {
        return from_ort(name, value);
    }
    let host = tensor.to(AllocationDevice::CPU, 0).map_err(fail)?;
    from_ort(name, &host.into_dyn())
}

fn element_type(datatype: DataType) -> TensorElementType {
    match datatype {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Uint16 => TensorElementType::Uint16,
        DataType::Uint32 => TensorElementType::Uint32,
        DataType::Uint64 => TensorElementType::Uint64,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int16 => TensorElementType::Int16,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp16 => TensorElementType::Float16,
        DataType::Bf16 => TensorElementType::Bfloat16,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
    }
}

fn to_ort(t: &Tensor) -> Result<DynTensor, BackendError> {
    let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
    let fail = |e: ort::Error| BackendError::Execution(format!("input '{}': {e}", t.name));
    let bytes: &[u8] = match &t.data {
        TensorData::Fixed(b) => b,
        TensorData::Bytes(items) => {
            let strings = super::utf8_strings(t, items, "onnxruntime")?;
            return OrtTensor::from_string_array((shape, strings.as_slice()))
                .map(|v| v.upcast())
                .map_err(fail);
        }
    };
    macro_rules! typed {
        ($ty:ty, $n:literal, $conv:expr) => {
            OrtTensor::<$ty>::from_array((shape, le::<$n>(bytes).map($conv).collect::<Vec<$ty>>()))
                .map(|v| v.upcast())
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
            // One sized buffer, appended to in place (a flat_map collect grows it by
            // doubling and pushes byte by byte): rec's answers are 1 MiB a row.
            let mut bytes = Vec::with_capacity(std::mem::size_of_val(data));
            for v in data {
                bytes.extend_from_slice(&$to(*v));
            }
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
