//! The ONNX Runtime library, opened once per process, and a loaded model: its bytes,
//! shared initializers and the sessions' settings.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use ort::{
    ep::{self, ExecutionProvider},
    session::{
        builder::{GraphOptimizationLevel, PrepackedWeights},
        Session,
    },
    value::{DynValue, Tensor as OrtTensor},
};
use tract_onnx::{pb, prelude::Framework};

use super::options::OrtOptions;
use crate::backend::{BackendError, Signature};

/// The ONNX Runtime release this build is made against (ort's `api-31`).
pub const WANTED_VERSION: &str = super::WANTED_VERSION_TEXT;

/// Initializers smaller than this stay in the model: sharing them saves nothing.
const SHARED_INITIALIZER_MIN_ELEMENTS: usize = 1024;

/// The process-wide ONNX Runtime environment: opened once, from the first path given.
static ENVIRONMENT: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> =
    OnceLock::new();

fn environment(
    library: Option<&Path>,
) -> Result<&'static ort::environment::Environment, BackendError> {
    let opened = ENVIRONMENT.get_or_init(|| {
        let Some(path) = library else {
            return Err(format!(
                "backend onnxruntime needs the ONNX Runtime {WANTED_VERSION} library: {}",
                super::library::not_found()
            ));
        };
        if !path.is_file() {
            return Err(format!(
                "ONNX Runtime library {}: no such file",
                path.display()
            ));
        }
        let env = ort::init_from(path)
            .map_err(|e| {
                format!(
                    "ONNX Runtime library {}: {e} (wanted version {WANTED_VERSION})",
                    path.display()
                )
            })?
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

/// Whether the library opens (opening it for the process if it is the first call):
/// the reason, naming the file, where it does not.
pub fn library_status(library: Option<&Path>) -> Result<(), String> {
    environment(library).map(|_| ()).map_err(|e| e.to_string())
}

pub struct OrtModel {
    pub(super) model_bytes: Vec<u8>,
    /// `model_bytes` is already optimised: sessions load it as it is.
    pub(super) optimised: bool,
    pub(super) signature: Signature,
    pub(super) options: OrtOptions,
    /// Large initializers, shared by every session instead of each loading its own copy.
    pub(super) initializers: Vec<(String, Arc<DynValue>)>,
    pub(super) prepacked: PrepackedWeights,
    pub(super) environment: &'static ort::environment::Environment,
    /// The batch sizes calls are padded to (each gets a session of its own where there
    /// are several), and whether the other dims are fixed.
    pub(super) plan: OnceLock<(Vec<usize>, bool)>,
    /// Why CUDA graphs could not be used, once found: later sessions skip the attempt.
    pub(super) graph_refused: OnceLock<String>,
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
            signature: crate::backend::onnx::signature(&proto),
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
    pub(super) fn session(&self, share: usize, cuda_graph: bool) -> Result<Session, String> {
        // Making a CUDA session synchronises the device, which a capture elsewhere refuses.
        let _gpu = gpu_guard(self);
        let err = |e: ort::Error<_>| e.to_string();
        let mut builder = Session::builder(self.environment)
            .map_err(|e| e.to_string())?
            .with_intra_threads(self.options.intra_op_threads)
            .map_err(err)?
            .with_intra_op_spinning(self.options.intra_op_spinning)
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

impl OrtModel {
    pub(super) fn wants_graph(&self) -> bool {
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
    pub(super) fn graph_session(&self, share: usize) -> Result<(Session, bool), BackendError> {
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

    pub(super) fn refuse_graph(&self, reason: String) {
        if self.graph_refused.set(reason.clone()).is_ok() {
            tracing::warn!(%reason, "CUDA graphs are off for this model; its sessions run plainly");
        }
    }
}

/// Held for writing while a CUDA graph is captured, for reading around every other GPU
/// run and copy: CUDA refuses work on other streams of the process during a capture.
pub(super) static CAPTURE: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub(super) fn gpu_guard(model: &OrtModel) -> Option<std::sync::RwLockReadGuard<'static, ()>> {
    model
        .options
        .gpu
        .is_some()
        .then(|| CAPTURE.read().unwrap_or_else(|e| e.into_inner()))
}
