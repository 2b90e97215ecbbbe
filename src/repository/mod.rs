//! The model repository: model folders and their versions, loading and warming them, and
//! the state of each (LOADING, READY, UNAVAILABLE with its reason).

pub mod config;
pub mod gpu_budget;
pub mod policy;
pub mod spec;
mod warmup;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    backend::{tract::TractModel, Model},
    batching::{cost::WorkEstimate, BatchPolicy, Scheduler},
    error::InferError,
    metrics::{saturation::Backlog, Metrics, ModelMetrics},
    stats::ModelStats,
    workers::{WorkerContext, WorkerPool},
};
use config::{BackendKind, ModelConfig};
use gpu_budget::GpuClaim;
use spec::ModelSpec;
pub use warmup::Profile;

/// A loaded, warmed version that can take requests.
pub struct ServedModel {
    pub name: String,
    pub version: u64,
    pub config: ModelConfig,
    pub spec: ModelSpec,
    /// Declared before `pool`: dropping it closes the pool's channel, which lets the
    /// pool's threads end before the pool joins them.
    pub scheduler: Scheduler,
    pub pool: WorkerPool,
    pub stats: Arc<ModelStats>,
    /// Engine time per request, estimated from the cost curves (for the backlog).
    pub work: WorkEstimate,
    pub profile: Profile,
    /// Bytes the model keeps however many instances run it (weights, compiled plans).
    pub shared_bytes: u64,
    pub load_time: Duration,
}

#[derive(Clone)]
pub enum VersionState {
    Loading,
    Ready(Arc<ServedModel>),
    Unavailable(String),
}

impl VersionState {
    pub fn name(&self) -> &'static str {
        match self {
            VersionState::Loading => "LOADING",
            VersionState::Ready(_) => "READY",
            VersionState::Unavailable(_) => "UNAVAILABLE",
        }
    }
}

/// One model folder.
#[derive(Clone)]
pub struct ModelEntry {
    pub config: Option<ModelConfig>,
    pub versions: BTreeMap<u64, VersionState>,
    /// Why the model as a whole cannot load (bad config, no versions), if it cannot.
    pub failure: Option<String>,
}

/// A row of the repository index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow {
    pub name: String,
    pub version: String,
    pub state: &'static str,
    pub reason: String,
}

/// What loading needs beyond the model folders.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSettings {
    /// The ONNX Runtime library for `backend: onnxruntime` models.
    pub onnxruntime_lib: Option<PathBuf>,
    /// The time a request should be answered in; the saturation signal is measured
    /// against it. A model's `latency_objective_ms` parameter overrides it.
    pub latency_objective: Duration,
    /// Bytes of memory per GPU, for the per-device budget check; empty asks the driver.
    pub gpu_memory: BTreeMap<u32, u64>,
    /// Held on each GPU before any arena (CUDA context and libraries).
    pub gpu_context_memory: u64,
    /// A version still loading after this is UNAVAILABLE; the others load on.
    pub load_timeout: Duration,
}

impl Default for LoadSettings {
    fn default() -> Self {
        LoadSettings {
            onnxruntime_lib: None,
            latency_objective: crate::config::DEFAULT_LATENCY_OBJECTIVE,
            gpu_memory: BTreeMap::new(),
            gpu_context_memory: crate::config::DEFAULT_GPU_CONTEXT_MEMORY.as_u64(),
            load_timeout: crate::config::DEFAULT_MODEL_LOAD_TIMEOUT,
        }
    }
}

pub struct Repository {
    settings: Arc<LoadSettings>,
    metrics: Arc<Metrics>,
    root: PathBuf,
    models: RwLock<BTreeMap<String, ModelEntry>>,
    /// Bumped on every state change, so that health can follow without polling.
    changes: watch::Sender<u64>,
}

/// A version waiting to be loaded.
struct LoadTask {
    name: String,
    version: u64,
    dir: PathBuf,
    config: ModelConfig,
}

impl Repository {
    /// Reads the folder tree (fast, no model is loaded yet): every model starts LOADING,
    /// or UNAVAILABLE with its reason when its folder is already wrong.
    pub fn scan(
        root: &Path,
        settings: LoadSettings,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Repository> {
        let mut models = BTreeMap::new();
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let model = scan_model(&name, &entry.path());
            if model.failure.is_some() {
                metrics.set_ready(&name, "", false);
            }
            for version in model.versions.keys() {
                metrics.set_ready(&name, &version.to_string(), false);
            }
            models.insert(name, model);
        }
        Ok(Repository {
            settings: Arc::new(settings),
            metrics,
            root: root.to_owned(),
            models: RwLock::new(models),
            changes: watch::channel(0).0,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Loads and warms every LOADING version, `parallelism` at a time, on the calling
    /// thread and helpers (blocking). A failure marks its own version only.
    pub fn load_all(&self, parallelism: usize, runtime: &tokio::runtime::Handle) {
        let tasks: Vec<LoadTask> = {
            let models = self.models.read().expect("repository lock");
            models
                .iter()
                .flat_map(|(name, entry)| {
                    entry
                        .versions
                        .iter()
                        .filter(|(_, s)| matches!(s, VersionState::Loading))
                        .map(move |(v, _)| LoadTask {
                            name: name.clone(),
                            version: *v,
                            dir: self.root.join(name),
                            config: entry.config.clone().unwrap_or_default(),
                        })
                })
                .collect()
        };
        let tasks = self.refuse_over_gpu_budget(tasks);
        // Filled once with the fixed task list, then only drained.
        let (tx, rx) = crossbeam_channel::bounded::<LoadTask>(tasks.len().max(1));
        for task in tasks {
            tx.send(task).expect("receiver alive");
        }
        drop(tx);
        std::thread::scope(|scope| {
            for _ in 0..parallelism.max(1) {
                let rx = rx.clone();
                scope.spawn(move || {
                    for task in rx {
                        let (name, version) = (task.name.clone(), task.version);
                        let state = match self.load_isolated(task, runtime) {
                            Ok(model) => VersionState::Ready(Arc::new(model)),
                            Err(reason) => {
                                warn!(model = %name, version, %reason, "model failed to load");
                                VersionState::Unavailable(reason)
                            }
                        };
                        self.set_state(&name, version, state);
                    }
                });
            }
        });
    }

    /// Loads one version on a thread of its own, so that a load that panics ends as
    /// that version's error and one that hangs is given up after the load timeout (its
    /// thread is left to finish or hang alone; whatever it builds late is dropped).
    fn load_isolated(
        &self,
        task: LoadTask,
        runtime: &tokio::runtime::Handle,
    ) -> Result<ServedModel, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (settings, metrics, runtime) = (
            Arc::clone(&self.settings),
            Arc::clone(&self.metrics),
            runtime.clone(),
        );
        std::thread::Builder::new()
            .name(format!("wharf-load-{}", task.name))
            .spawn(move || {
                let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    load_version(&task, &runtime, &settings, &metrics)
                }))
                .unwrap_or_else(|payload| {
                    Err(format!(
                        "loading panicked: {}",
                        crate::backend::panic_message(payload.as_ref())
                    ))
                });
                let _ = tx.send(loaded);
            })
            .map_err(|e| format!("cannot start a loading thread: {e}"))?;
        let limit = self.settings.load_timeout;
        match rx.recv_timeout(limit) {
            Ok(loaded) => loaded,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "loading did not finish within {limit:?} (--model-load-timeout-secs)"
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err("the loading thread ended without a result".into())
            }
        }
    }

    /// Marks UNAVAILABLE every version on a GPU whose instances' budgets, added up with
    /// the others on that device, exceed its memory; returns the tasks left to load.
    fn refuse_over_gpu_budget(&self, tasks: Vec<LoadTask>) -> Vec<LoadTask> {
        let claims: Vec<GpuClaim> = tasks
            .iter()
            .filter_map(|t| GpuClaim::of(&t.name, t.version, &t.config))
            .collect();
        if claims.is_empty() {
            return tasks;
        }
        let memory = if self.settings.gpu_memory.is_empty() {
            gpu_budget::device_memory_from_driver()
        } else {
            self.settings.gpu_memory.clone()
        };
        let refused = gpu_budget::over_budget(&claims, &memory, self.settings.gpu_context_memory);
        tasks
            .into_iter()
            .filter(|t| match refused.get(&(t.name.clone(), t.version)) {
                Some(reason) => {
                    warn!(model = %t.name, version = t.version, %reason, "model failed to load");
                    self.set_state(
                        &t.name,
                        t.version,
                        VersionState::Unavailable(reason.clone()),
                    );
                    false
                }
                None => true,
            })
            .collect()
    }

    fn set_state(&self, name: &str, version: u64, state: VersionState) {
        let ready = matches!(state, VersionState::Ready(_));
        self.metrics.set_ready(name, &version.to_string(), ready);
        let mut models = self.models.write().expect("repository lock");
        if let Some(entry) = models.get_mut(name) {
            entry.versions.insert(version, state);
        }
        drop(models);
        self.changes.send_modify(|n| *n += 1);
    }

    /// The model version a request names: "" means the highest READY version.
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, InferError> {
        let models = self.models.read().expect("repository lock");
        let entry = models
            .get(name)
            .ok_or_else(|| InferError::ModelNotFound(name.to_owned()))?;
        let unavailable = |reason: &str| InferError::ModelUnavailable {
            model: name.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(failure) = &entry.failure {
            return Err(unavailable(failure));
        }
        let state = if version.is_empty() {
            entry
                .versions
                .values()
                .rev()
                .find(|s| matches!(s, VersionState::Ready(_)))
                .or_else(|| entry.versions.values().next_back())
        } else {
            version
                .parse::<u64>()
                .ok()
                .and_then(|v| entry.versions.get(&v))
        };
        match state {
            Some(VersionState::Ready(model)) => Ok(Arc::clone(model)),
            Some(VersionState::Loading) => Err(unavailable("it is still loading")),
            Some(VersionState::Unavailable(reason)) => Err(unavailable(reason)),
            None => Err(InferError::VersionNotFound {
                model: name.to_owned(),
                version: version.to_owned(),
                available: format!(
                    "; it serves {}",
                    entry
                        .versions
                        .keys()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// Whether a request for this name and version would be served now.
    pub fn is_ready(&self, name: &str, version: &str) -> bool {
        self.get(name, version).is_ok()
    }

    /// Every version served (or meant to be) with its state; a model whose folder is broken
    /// appears once, without a version.
    pub fn index(&self) -> Vec<IndexRow> {
        let models = self.models.read().expect("repository lock");
        let mut rows = Vec::new();
        for (name, entry) in models.iter() {
            if let Some(failure) = &entry.failure {
                rows.push(IndexRow {
                    name: name.clone(),
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: failure.clone(),
                });
                continue;
            }
            for (version, state) in &entry.versions {
                let reason = match state {
                    VersionState::Unavailable(r) => r.clone(),
                    _ => String::new(),
                };
                rows.push(IndexRow {
                    name: name.clone(),
                    version: version.to_string(),
                    state: state.name(),
                    reason,
                });
            }
        }
        rows
    }

    /// Every READY version, optionally of one model only.
    pub fn served(&self, name: Option<&str>) -> Vec<Arc<ServedModel>> {
        let models = self.models.read().expect("repository lock");
        models
            .iter()
            .filter(|(n, _)| name.is_none_or(|want| want == n.as_str()))
            .flat_map(|(_, entry)| entry.versions.values())
            .filter_map(|state| match state {
                VersionState::Ready(model) => Some(Arc::clone(model)),
                _ => None,
            })
            .collect()
    }

    /// The model's entry, for metadata and config.
    pub fn entry(&self, name: &str) -> Option<ModelEntry> {
        self.models
            .read()
            .expect("repository lock")
            .get(name)
            .cloned()
    }

    /// True once nothing is LOADING any more.
    pub fn settled(&self) -> bool {
        self.index().iter().all(|r| r.state != "LOADING")
    }

    /// True when every model and version is READY.
    pub fn all_ready(&self) -> bool {
        self.index().iter().all(|r| r.state == "READY")
    }

    /// Stops every worker pool, joining its threads once queued work is done (blocking).
    pub fn unload_all(&self) {
        let mut models = self.models.write().expect("repository lock");
        let taken = std::mem::take(&mut *models);
        drop(models);
        for (name, entry) in &taken {
            for version in entry.versions.keys() {
                self.metrics.set_ready(name, &version.to_string(), false);
            }
        }
        drop(taken);
        self.changes.send_modify(|n| *n += 1);
    }
}

fn scan_model(name: &str, dir: &Path) -> ModelEntry {
    let failed = |reason: String| ModelEntry {
        config: None,
        versions: BTreeMap::new(),
        failure: Some(reason),
    };
    let config_path = dir.join("config.yaml");
    let config = if config_path.exists() {
        match ModelConfig::from_file(&config_path) {
            Ok(c) => c,
            Err(e) => return failed(e),
        }
    } else {
        ModelConfig::default()
    };
    if let Some(declared) = config.name.as_deref().filter(|n| *n != name) {
        return failed(format!(
            "{}: key `name`: expected the folder's name '{name}', found '{declared}'",
            config_path.display()
        ));
    }
    let mut found: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    found.sort_unstable();
    let selected = config
        .version_policy
        .clone()
        .unwrap_or_default()
        .select(&found);
    if selected.is_empty() {
        return failed(format!(
            "{}: no version folder to serve (expected numbered folders such as 1/{}; found {:?})",
            dir.display(),
            config.model_filename(),
            found
        ));
    }
    ModelEntry {
        versions: selected
            .into_iter()
            .map(|v| (v, VersionState::Loading))
            .collect(),
        config: Some(config),
        failure: None,
    }
}

/// The row counts ("buckets") formed batches are padded up to; empty: no padding.
/// `batch_buckets` says: `none`, `max` (every batch padded to `max_rows`) or a list such
/// as `1,2,4,8` (to the smallest that holds the batch; `max_rows` is always one). Unset: on
/// a GPU with dynamic batching, the powers of two up to `max_rows` unless `pad_batches:
/// false`. Measured on an H200: one session fed batches of 1 and 8 in turn took 40x (cls)
/// to 100x (rec) longer per call than fed one size, as cuDNN re-plans every convolution at
/// each change of shape; the onnxruntime engine gives each bucket a session of its own.
fn batch_buckets(config: &ModelConfig, policy: &BatchPolicy) -> Vec<usize> {
    bucket_rows(config, policy.enabled, policy.max_rows)
}

/// `batch_buckets` for a model that batches (`enabled`) up to `max` rows a call.
fn bucket_rows(config: &ModelConfig, enabled: bool, max: usize) -> Vec<usize> {
    if !enabled {
        return Vec::new();
    }
    let mut buckets = match config.parameter("batch_buckets") {
        Some("none") => return Vec::new(),
        Some("max") => vec![max],
        Some(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .filter(|n| *n < max)
            .collect(),
        // Measured on an H200 (benches/README.md): buckets served rec 1.1-1.4x the rows/s
        // of padding to the maximum, cls the same; sessions cost memory, not time.
        None if config.on_gpu() && config.parameter("pad_batches") != Some("false") => {
            std::iter::successors(Some(1), |r| Some(r * 2))
                .take_while(|r| *r < max)
                .collect()
        }
        None => return Vec::new(),
    };
    buckets.push(max);
    buckets.sort_unstable();
    buckets.dedup();
    buckets
}

/// Row counts worth measuring: 1, powers of two, the preferred sizes and the maximum.
fn candidate_rows(policy: &BatchPolicy, max_batch_size: u32) -> Vec<usize> {
    if max_batch_size == 0 {
        return Vec::new();
    }
    let max = max_batch_size as usize;
    let mut rows: Vec<usize> = std::iter::successors(Some(1usize), |r| Some(r * 2))
        .take_while(|r| *r <= max)
        .collect();
    rows.extend(policy.preferred.iter().copied());
    rows.push(max);
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// Opens the model file with the engine its config names.
fn open_model(
    path: &Path,
    config: &ModelConfig,
    settings: &LoadSettings,
) -> Result<Arc<dyn Model>, String> {
    match config.backend {
        BackendKind::Tract => Ok(TractModel::load(path).map_err(|e| e.to_string())?),
        #[cfg(feature = "onnxruntime")]
        BackendKind::Onnxruntime => {
            use crate::backend::onnxruntime::{GpuOptions, OrtModel, OrtOptions, TensorRtOptions};
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let instances = config.instance_count();
            let number = |key: &str, default: usize| {
                config
                    .parameter(key)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(default)
            };
            let flag = |key: &str| config.parameter(key) == Some("true");
            if flag("cuda_graph") {
                // A captured graph replays one shape: a free dim would be a new shape.
                let free = config
                    .input
                    .iter()
                    .flatten()
                    .find(|i| i.dims.as_ref().is_none_or(|d| d.contains(&-1)));
                if !config.on_gpu() {
                    return Err("parameters.cuda_graph: CUDA graphs need KIND_GPU".into());
                }
                if let Some(input) = free {
                    return Err(format!(
                        "parameters.cuda_graph: a CUDA graph replays one shape, but input '{}' has \
                         dims {:?} in the config; give every dim a size, or leave CUDA graphs off",
                        input.name,
                        input.dims.as_deref().unwrap_or_default()
                    ));
                }
            }
            let gpu = config.on_gpu().then(|| GpuOptions {
                device_id: config.gpu_device() as i32,
                memory_limit: config.memory_budget().map(|b| b as usize),
                cudnn_exhaustive: config.cudnn_exhaustive_search(),
                cudnn_max_workspace: config.parameter("cudnn_conv_use_max_workspace")
                    != Some("false"),
                // ONNX Runtime's default: on PP-OCR rec it held 953 MiB of the H200 against
                // 1,253 MiB growing to 1,325 MiB with kSameAsRequested (fragmentation).
                arena_same_as_requested: config.parameter("arena_extend_strategy")
                    == Some("kSameAsRequested"),
                cuda_graph: config.parameter("cuda_graph").map(|v| v == "true"),
                tensorrt: flag("tensorrt").then(|| TensorRtOptions {
                    fp16: flag("trt_fp16"),
                    engine_cache: config.parameter("trt_engine_cache_path").map(PathBuf::from),
                }),
            });
            let options = OrtOptions {
                // Instances split the cores between them, so that they do not oversubscribe.
                intra_op_threads: number(
                    "intra_op_thread_count",
                    (cores / instances.max(1)).max(1),
                ),
                inter_op_threads: number("inter_op_thread_count", 1),
                io_binding: flag("io_binding"),
                gpu,
            };
            Ok(
                OrtModel::load(path, options, settings.onnxruntime_lib.as_deref())
                    .map_err(|e| e.to_string())?,
            )
        }
        #[cfg(not(feature = "onnxruntime"))]
        BackendKind::Onnxruntime => {
            let _ = settings;
            Err(
                "backend onnxruntime: this wharf was built without the `onnxruntime` feature"
                    .into(),
            )
        }
    }
}

fn load_version(
    task: &LoadTask,
    runtime: &tokio::runtime::Handle,
    settings: &LoadSettings,
    metrics: &Metrics,
) -> Result<ServedModel, String> {
    let started = Instant::now();
    let config = &task.config;
    let path = task
        .dir
        .join(task.version.to_string())
        .join(config.model_filename());
    if !path.is_file() {
        return Err(format!("{}: no such model file", path.display()));
    }
    // What loading and warming keep allocated on this thread is what every instance shares.
    let mut loaded = Err(String::new());
    let kept = allocation_counter::measure(|| {
        loaded = (|| {
            let model = open_model(&path, config, settings)?;
            let spec = ModelSpec::resolve(config, model.signature())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let mut policy = policy::batch_policy(config, spec.max_batch_size);
            // Padded calls carry only the buckets' row counts: sessions (and CUDA graphs,
            // where the other dims are fixed too) can be made per count.
            let fixed_shapes = spec.inputs.iter().all(|i| i.dims.iter().all(|d| *d > 0));
            model.plan_calls(&batch_buckets(config, &policy), fixed_shapes);
            let candidates = candidate_rows(&policy, spec.max_batch_size);
            let budgeted = config.memory_budget().is_some();
            let profile = warmup::run(&model, &spec, config, &candidates, budgeted)?;
            enforce_budget(config, &spec, &profile, &mut policy)?;
            // Padded, a call costs what its bucket costs: join up to where that stops paying.
            let padded = profile
                .curves
                .fallback
                .padded_to(&batch_buckets(config, &policy));
            policy.cap_form_rows(padded.efficient_rows(policy.max_rows));
            Ok((model, spec, policy, profile))
        })();
    });
    let (model, spec, policy, profile) = loaded?;
    let shared_bytes = kept.bytes_current.max(0) as u64;

    let instances = config.instance_count();
    let objective = config
        .parameter("latency_objective_ms")
        .and_then(|ms| ms.parse().ok())
        .map_or(settings.latency_objective, Duration::from_millis);
    let model_metrics = metrics.model(&task.name, &task.version.to_string());
    let stats = Arc::new(ModelStats::new(
        model_metrics,
        Backlog::new(instances, objective),
    ));
    let work = WorkEstimate::new(&profile.curves, policy.form_rows);
    let (done_tx, done_rx) = tokio::sync::mpsc::channel(instances);
    let buckets = batch_buckets(config, &policy);
    let context = Arc::new(WorkerContext {
        model_name: task.name.clone(),
        model,
        costs: profile.curves.clone(),
        stats: Arc::clone(&stats),
        batched: spec.max_batch_size > 0,
        buckets: buckets.clone(),
    });
    // On a GPU every batch size the scheduler can send is a new shape to prepare for
    // (with padding, only the buckets).
    let padded = !buckets.is_empty();
    let warm_rows: Vec<usize> = if padded {
        buckets
    } else if config.on_gpu() {
        (1..=policy.max_rows).collect()
    } else {
        Vec::new()
    };
    let warm = warmup::instance_inputs(&spec, config, &warm_rows, padded)?;
    let (pool, batches_tx) = WorkerPool::start(context, instances, done_tx, warm)?;
    let scheduler = Scheduler::start(
        runtime,
        task.name.clone(),
        policy.clone(),
        instances,
        batches_tx,
        done_rx,
        Arc::clone(&stats),
    );
    let load_time = started.elapsed();
    record_load(
        metrics,
        &stats.metrics,
        task,
        &policy,
        &profile,
        shared_bytes,
        load_time,
    );
    let curve: Vec<String> = profile
        .curves
        .fallback
        .points()
        .iter()
        .map(|(rows, t)| format!("{rows}:{:.2}ms", t.as_secs_f64() * 1000.0))
        .collect();
    let peaks: Vec<String> = profile
        .peak_bytes
        .iter()
        .map(|(r, b)| format!("{r}:{}", bytesize::ByteSize::b(*b)))
        .collect();
    info!(
        model = %task.name,
        version = task.version,
        instances,
        max_batch_size = spec.max_batch_size,
        batch_rows = policy.form_rows,
        call_rows = policy.max_rows,
        warmed_samples = profile.samples,
        cost_per_call = %curve.join(" "),
        peak_per_call = %peaks.join(" "),
        shared = %bytesize::ByteSize::b(shared_bytes),
        ready_ms = load_time.as_millis() as u64,
        "model ready"
    );
    Ok(ServedModel {
        name: task.name.clone(),
        version: task.version,
        config: config.clone(),
        spec,
        scheduler,
        pool,
        stats,
        work,
        profile,
        shared_bytes,
        load_time,
    })
}

/// The gauges a load settles: memory (budget, measured peak at the largest batch the
/// scheduler forms, shared bytes) and how long it took.
#[allow(clippy::too_many_arguments)]
fn record_load(
    server: &Metrics,
    metrics: &ModelMetrics,
    task: &LoadTask,
    policy: &BatchPolicy,
    profile: &Profile,
    shared_bytes: u64,
    load_time: Duration,
) {
    if let Some(budget) = task.config.memory_budget() {
        server.set_memory_budget(&task.name, &task.version.to_string(), budget);
    }
    if let Some((_, peak)) = profile
        .peak_bytes
        .iter()
        .filter(|(rows, _)| *rows <= policy.form_rows.max(1))
        .max_by_key(|(rows, _)| *rows)
    {
        metrics.memory_peak.set(*peak as f64);
    }
    metrics.memory_shared.set(shared_bytes as f64);
    metrics.load_duration.set(load_time.as_secs_f64());
}

/// Lowers the rows a batch may hold to what fits each instance's memory budget, measured
/// at warmup; a model whose single row does not fit does not load.
fn enforce_budget(
    config: &ModelConfig,
    spec: &ModelSpec,
    profile: &Profile,
    policy: &mut BatchPolicy,
) -> Result<(), String> {
    let Some(budget) = config.memory_budget() else {
        return Ok(());
    };
    let shown = bytesize::ByteSize::b(budget);
    let Some(&(first_rows, first_peak)) = profile.peak_bytes.first() else {
        // On a GPU ONNX Runtime holds each instance to its budget itself (gpu_mem_limit).
        if config.backend == BackendKind::Onnxruntime && config.on_gpu() {
            return Ok(());
        }
        return Err(format!(
            "memory_budget {shown} cannot be enforced: no warm shape to measure; add model_warmup samples with concrete dims"
        ));
    };
    if first_peak > budget {
        return Err(format!(
            "memory_budget {shown} per instance is below what one call needs: {} measured at batch {first_rows}",
            bytesize::ByteSize::b(first_peak)
        ));
    }
    if spec.max_batch_size > 0 {
        let fits = profile
            .peak_bytes
            .iter()
            .filter(|(_, peak)| *peak <= budget)
            .map(|(rows, _)| *rows)
            .max()
            .unwrap_or(1);
        policy.cap_rows(fits);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Handle {
        static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        RUNTIME
            .get_or_init(|| tokio::runtime::Runtime::new().unwrap())
            .handle()
            .clone()
    }

    fn repo_with(models: &[(&str, Option<&str>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let source =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models/identity_fp32/1/model.onnx");
        for (name, config) in models {
            std::fs::create_dir_all(dir.path().join(name).join("1")).unwrap();
            std::fs::copy(&source, dir.path().join(name).join("1/model.onnx")).unwrap();
            if let Some(config) = config {
                std::fs::write(dir.path().join(name).join("config.yaml"), config).unwrap();
            }
        }
        dir
    }

    #[test]
    fn models_are_unavailable_until_loaded_then_ready() {
        let dir = repo_with(&[("a", None)]);
        let repo = Repository::scan(dir.path(), LoadSettings::default(), Metrics::new()).unwrap();
        let err = repo.get("a", "").err().unwrap().to_string();
        assert_eq!(err, "model 'a' is not ready: it is still loading");
        assert!(!repo.settled());
        repo.load_all(2, &runtime());
        assert!(repo.settled() && repo.all_ready());
        assert_eq!(repo.get("a", "1").unwrap().version, 1);
        assert!(matches!(
            repo.get("b", ""),
            Err(InferError::ModelNotFound(_))
        ));
        repo.unload_all();
        assert!(repo.index().is_empty());
    }

    #[test]
    fn batches_are_padded_to_buckets_on_a_gpu_with_dynamic_batching_only() {
        let buckets = |yaml: &str| {
            let config = ModelConfig::from_yaml(yaml).unwrap();
            batch_buckets(&config, &policy::batch_policy(&config, 8))
        };
        let gpu = "backend: onnxruntime\ninstance_group: [{kind: KIND_GPU}]\n";
        let param = |v: &str| format!("parameters: {{batch_buckets: {{string_value: \"{v}\"}}}}\n");
        assert_eq!(
            buckets(&format!("{gpu}dynamic_batching: {{}}\n")),
            vec![1, 2, 4, 8],
            "a GPU's default: powers of two"
        );
        assert_eq!(
            buckets(&format!("{gpu}dynamic_batching: {{}}\n{}", param("max"))),
            vec![8]
        );
        assert!(
            buckets(gpu).is_empty(),
            "no dynamic batching: each request runs as it came"
        );
        assert!(
            buckets("backend: onnxruntime\ndynamic_batching: {}\n").is_empty(),
            "CPU"
        );
        assert!(buckets(&format!(
            "{gpu}dynamic_batching: {{}}\nparameters: {{pad_batches: {{string_value: \"false\"}}}}\n"
        ))
        .is_empty());
        assert!(buckets(&format!("{gpu}dynamic_batching: {{}}\n{}", param("none"))).is_empty());
        assert_eq!(
            buckets(&format!("{gpu}dynamic_batching: {{}}\n{}", param("2,1,4"))),
            vec![1, 2, 4, 8],
            "sorted, the maximum always one"
        );
        assert_eq!(
            buckets(&format!(
                "backend: onnxruntime\ndynamic_batching: {{}}\n{}",
                param("1,2,16")
            )),
            vec![1, 2, 8],
            "asked for on a CPU too; none past the maximum"
        );
    }

    #[test]
    fn gpu_models_whose_budgets_overflow_their_device_do_not_load() {
        let gpu = |count: u32| {
            format!(
                "backend: onnxruntime\ninstance_group: [{{kind: KIND_GPU, gpus: [0], count: {count}, memory_budget: 1GiB}}]\n"
            )
        };
        let (a, b) = (gpu(2), gpu(1));
        let dir = repo_with(&[("a", Some(&a)), ("b", Some(&b)), ("cpu", None)]);
        let settings = LoadSettings {
            gpu_memory: BTreeMap::from([(0, 2 << 30)]),
            ..LoadSettings::default()
        };
        let repo = Repository::scan(dir.path(), settings, Metrics::new()).unwrap();
        repo.load_all(2, &runtime());
        let reason = |name: &str| {
            repo.index()
                .into_iter()
                .find(|r| r.name == name)
                .map(|r| (r.state, r.reason))
                .unwrap()
        };
        let over = "the memory budgets of the KIND_GPU instances on GPU 0 add up to 4.0 GiB \
                    (a v1: 2 x (1.0 GiB + 1 session(s) x 140.0 MiB), b v1: 1 x (1.0 GiB + 1 \
                    session(s) x 140.0 MiB) and 640.0 MiB of CUDA context), more than its 2.0 GiB";
        assert_eq!(reason("a"), ("UNAVAILABLE", over.to_owned()));
        assert_eq!(reason("b"), ("UNAVAILABLE", over.to_owned()));
        assert_eq!(reason("cpu").0, "READY");
    }

    #[test]
    fn version_policy_picks_the_served_versions() {
        let dir = repo_with(&[("a", Some("version_policy: { all: {} }\n"))]);
        std::fs::create_dir_all(dir.path().join("a/3")).unwrap();
        std::fs::copy(
            dir.path().join("a/1/model.onnx"),
            dir.path().join("a/3/model.onnx"),
        )
        .unwrap();
        let repo = Repository::scan(dir.path(), LoadSettings::default(), Metrics::new()).unwrap();
        repo.load_all(1, &runtime());
        let versions: Vec<String> = repo.index().into_iter().map(|r| r.version).collect();
        assert_eq!(versions, vec!["1", "3"]);
        assert_eq!(repo.get("a", "").unwrap().version, 3);
        let err = repo.get("a", "2").err().unwrap().to_string();
        assert_eq!(err, "model 'a' has no version 2; it serves 1, 3");
    }

    #[test]
    fn a_folder_name_mismatch_is_named() {
        let dir = repo_with(&[("a", Some("name: b\n"))]);
        let repo = Repository::scan(dir.path(), LoadSettings::default(), Metrics::new()).unwrap();
        let row = &repo.index()[0];
        assert_eq!(row.state, "UNAVAILABLE");
        assert!(
            row.reason
                .contains("key `name`: expected the folder's name 'a', found 'b'"),
            "{}",
            row.reason
        );
    }
}
