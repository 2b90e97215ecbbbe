//! Loading one version: read its file → build the engine → warm and measure → enforce the
//! memory budget → start its scheduler and worker pool. Runs on a thread of its own, so
//! that a load that panics or hangs costs only that version.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use thiserror::Error;
use tracing::info;

use super::{
    autocomplete,
    config::{BackendKind, ModelConfig},
    dynamic_batching,
    ensemble::{Lookup, Pipeline},
    labels::Labels,
    spec::ModelSpec,
    warmup::{self, Profile},
    EngineRunner, Runner, ServedModel,
};
use crate::{
    backend::{
        reshape::{Reshaped, Shapes},
        tract::TractModel,
        BackendError, CallPlan, Model,
    },
    batching::{cost::WorkEstimate, BatchPolicy, Scheduler},
    config::LoadConfig,
    metrics::{saturation::Backlog, Metrics, ModelMetrics},
    stats::ModelStats,
    workers::{WorkerContext, WorkerPool},
};

/// Why a version did not load; shown as its UNAVAILABLE reason.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The config asks for what this build or the model's placement cannot give.
    #[error("{0}")]
    Config(String),
    #[error("{}: no such model file", .0.display())]
    NoModelFile(PathBuf),
    #[error(transparent)]
    Engine(#[from] BackendError),
    /// The model file and its config disagree.
    #[error("{}: {reason}", path.display())]
    Signature { path: PathBuf, reason: String },
    #[error("{0}")]
    Warmup(String),
    /// An ensemble's steps do not fit together, or a step model is not READY.
    #[error("{0}")]
    Ensemble(String),
    /// The instance's memory budget cannot be held.
    #[error("{0}")]
    Budget(String),
    /// The version's instances, with the others on its GPU, need more than the device has.
    #[error("{0}")]
    GpuBudget(String),
    #[error("{0}")]
    Workers(String),
    #[error("loading panicked: {0}")]
    Panicked(String),
    #[error("loading did not finish within {0:?} (--model-load-timeout-secs)")]
    TimedOut(Duration),
    #[error("cannot start a loading thread: {0}")]
    Thread(std::io::Error),
    #[error("the loading thread ended without a result")]
    ThreadLost,
    #[error("no folder '{name}' in the model repository {}", root.display())]
    NoFolder { name: String, root: PathBuf },
    /// The model's folder as a whole: its config does not read, or no version to serve.
    #[error("{0}")]
    Repository(String),
}

/// A version waiting to be loaded.
pub struct LoadTask {
    pub name: String,
    pub version: u64,
    pub dir: PathBuf,
    pub config: ModelConfig,
    /// What the version was loaded from (`control::digest`): a reload with the same
    /// digest is a no-op.
    pub digest: u64,
}

/// Loads one version on a thread of its own, so that a load that panics ends as
/// that version's error and one that hangs is given up after the load timeout (its
/// thread is left to finish or hang alone; whatever it builds late is dropped).
pub fn load_isolated(
    task: LoadTask,
    settings: &Arc<LoadConfig>,
    metrics: &Arc<Metrics>,
    runtime: &tokio::runtime::Handle,
) -> Result<ServedModel, LoadError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let limit = settings.model_load_timeout;
    let (settings, metrics, runtime) = (Arc::clone(settings), Arc::clone(metrics), runtime.clone());
    std::thread::Builder::new()
        .name(format!("wharf-load-{}", task.name))
        .spawn(move || {
            let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                load_version(&task, &runtime, &settings, &metrics)
            }))
            .unwrap_or_else(|payload| {
                Err(LoadError::Panicked(crate::backend::panic_message(
                    payload.as_ref(),
                )))
            });
            let _ = tx.send(loaded);
        })
        .map_err(LoadError::Thread)?;
    match rx.recv_timeout(limit) {
        Ok(loaded) => loaded,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(LoadError::TimedOut(limit)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(LoadError::ThreadLost),
    }
}

/// The row counts formed batches are padded up to; empty: no padding (see
/// `Parameters::bucket_rows`).
fn batch_buckets(config: &ModelConfig, policy: &BatchPolicy) -> Vec<usize> {
    config
        .params
        .bucket_rows(policy.enabled, policy.max_rows, config.on_gpu())
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

/// The config with the engine that serves it: the first of its preference whose runtime is
/// present. Only ONNX Runtime can be absent (its library is opened at run time); where it
/// is and a later engine is named, that one serves, with one line saying why. The
/// config's fields that wharf reads but does not act on are logged here, once a load.
fn resolve_engine(task: &LoadTask, settings: &LoadConfig) -> Result<ModelConfig, LoadError> {
    let config = &task.config;
    for warning in &config.warnings {
        tracing::warn!(model = %task.name, version = task.version, "{warning}");
    }
    if config.backend_fallbacks.is_empty() {
        return Ok(config.clone());
    }
    let mut skipped = Vec::new();
    for engine in std::iter::once(config.backend).chain(config.backend_fallbacks.iter().copied()) {
        let present = match engine {
            BackendKind::Onnxruntime => {
                crate::backend::onnxruntime::library_status(settings.onnxruntime_lib.as_deref())
            }
            _ => Ok(()),
        };
        match present {
            Ok(()) => {
                let chosen = config.served_by(engine).map_err(LoadError::Config)?;
                if !skipped.is_empty() {
                    tracing::warn!(
                        model = %task.name,
                        version = task.version,
                        engine = engine.as_str(),
                        skipped = %skipped.join("; "),
                        "served by a fallback engine"
                    );
                }
                return Ok(chosen);
            }
            Err(why) => skipped.push(format!("{}: {why}", engine.as_str())),
        }
    }
    Err(LoadError::Config(format!(
        "no engine of `backend` is present: {}",
        skipped.join("; ")
    )))
}

/// The built-in processing step a config names, built from its `parameters`.
pub(crate) fn open_step(config: &ModelConfig, model_dir: &Path) -> Result<Arc<dyn Model>, String> {
    let kind = config.backend.builtin_step().expect("a built-in step");
    let parameters = config
        .parameters
        .iter()
        .map(|(k, v)| (k.clone(), v.string_value.clone()))
        .collect();
    crate::backend::ocr::open(kind, &parameters, model_dir)
}

/// Opens the model file with the engine its config names.
fn open_model(
    path: &Path,
    model_dir: &Path,
    config: &ModelConfig,
    settings: &LoadConfig,
) -> Result<Arc<dyn Model>, LoadError> {
    match config.backend {
        BackendKind::Tract => Ok(TractModel::load(path)?),
        BackendKind::ImageDecode
        | BackendKind::DbPostprocess
        | BackendKind::TextCrop
        | BackendKind::TextLines
        | BackendKind::CtcDecode => open_step(config, model_dir).map_err(LoadError::Config),
        #[cfg(feature = "onnxruntime")]
        BackendKind::Onnxruntime => {
            use crate::backend::onnxruntime::{GpuPlacement, OrtModel};
            let params = &config.params.onnxruntime;
            if params.cuda_graph == Some(true) {
                // A captured graph replays one shape: a free dim would be a new shape.
                let free = config
                    .input
                    .iter()
                    .flatten()
                    .find(|i| i.dims.as_ref().is_none_or(|d| d.contains(&-1)));
                if !config.on_gpu() {
                    return Err(LoadError::Config(
                        "parameters.cuda_graph: CUDA graphs need KIND_GPU".into(),
                    ));
                }
                if let Some(input) = free {
                    return Err(LoadError::Config(format!(
                        "parameters.cuda_graph: a CUDA graph replays one shape, but input '{}' has \
                         dims {:?} in the config; give every dim a size, or leave CUDA graphs off",
                        input.name,
                        input.dims.as_deref().unwrap_or_default()
                    )));
                }
            }
            let gpu = config.on_gpu().then(|| GpuPlacement {
                device_id: config.gpu_device() as i32,
                memory_limit: config.memory_budget().map(|b| b as usize),
            });
            let options = params.options(config.instance_count(), gpu);
            Ok(OrtModel::load(
                path,
                options,
                settings.onnxruntime_lib.as_deref(),
            )?)
        }
        #[cfg(not(feature = "onnxruntime"))]
        BackendKind::Onnxruntime => {
            let _ = settings;
            Err(LoadError::Config(
                "backend onnxruntime: this wharf was built without the `onnxruntime` feature"
                    .into(),
            ))
        }
    }
}

fn load_version(
    task: &LoadTask,
    runtime: &tokio::runtime::Handle,
    settings: &LoadConfig,
    metrics: &Metrics,
) -> Result<ServedModel, LoadError> {
    let started = Instant::now();
    let resolved = resolve_engine(task, settings)?;
    let config = &resolved;
    let path = task
        .dir
        .join(task.version.to_string())
        .join(config.model_filename());
    if !path.is_file() && !config.backend.is_builtin() {
        return Err(LoadError::NoModelFile(path));
    }
    let labels = Labels::read(config, &task.dir).map_err(LoadError::Config)?;
    // What loading and warming keep allocated on this thread is what every instance shares.
    let mut loaded: Option<Result<_, LoadError>> = None;
    let mut opened = Duration::ZERO;
    let mut measured = Duration::ZERO;
    let kept = crate::heap::measure(|| {
        loaded = Some((|| {
            let model = open_model(&path, &task.dir, config, settings)?;
            opened = started.elapsed();
            let completed;
            let config = if config.backend.is_builtin() {
                config
            } else {
                completed = autocomplete::complete(
                    config,
                    model.signature(),
                    !settings.disable_auto_complete_config,
                )
                .map_err(LoadError::Config)?;
                &completed
            };
            // A built-in step takes one request's data as it is: its leading open dims are
            // counts of boxes or pixels, not a batch to split.
            let unbatched;
            let config = if config.backend.is_builtin() && config.max_batch_size.is_none() {
                unbatched = ModelConfig {
                    max_batch_size: Some(0),
                    ..config.clone()
                };
                &unbatched
            } else {
                config
            };
            let spec = ModelSpec::resolve(config, model.signature()).map_err(|reason| {
                LoadError::Signature {
                    path: path.clone(),
                    reason,
                }
            })?;
            let shapes = |side: &[crate::repository::spec::TensorSpec]| {
                side.iter()
                    .map(|t| {
                        t.reshape.clone().map(|model| Shapes {
                            wire: t.dims.clone(),
                            model,
                        })
                    })
                    .collect()
            };
            let model = Reshaped::wrap(
                model,
                shapes(&spec.inputs),
                shapes(&spec.outputs),
                spec.max_batch_size > 0,
            );
            let mut policy = dynamic_batching::batch_policy(config, spec.max_batch_size);
            // Padded calls carry only the buckets' row counts: sessions (and CUDA graphs,
            // where the other dims are fixed too) can be made per count.
            let fixed_shapes = spec.inputs.iter().all(|i| i.dims.iter().all(|d| *d > 0));
            model.plan_calls(&CallPlan {
                batched: spec.max_batch_size > 0,
                batch_sizes: batch_buckets(config, &policy),
                fixed_shapes,
            });
            let candidates = candidate_rows(&policy, spec.max_batch_size);
            let budgeted = config.memory_budget().is_some();
            let profile = if model.traits().warms {
                warmup::run(&model, &spec, config, &candidates, budgeted)
                    .map_err(LoadError::Warmup)?
            } else {
                Profile::default()
            };
            measured = started.elapsed() - opened;
            enforce_budget(config, &spec, &profile, &mut policy).map_err(LoadError::Budget)?;
            // Padded, a call costs what its bucket costs: join up to where that stops paying.
            let padded = profile
                .curves
                .fallback
                .padded_to(&batch_buckets(config, &policy));
            policy.cap_form_rows(padded.efficient_rows(policy.max_rows));
            Ok((model, spec, policy, profile, config.clone()))
        })());
    });
    let (model, spec, policy, profile, completed) = loaded.expect("the measured closure ran")?;
    let config = &completed;
    let shared_bytes = kept.bytes_current.max(0) as u64;

    let instances = config.instance_count();
    let objective = config
        .params
        .latency_objective
        .unwrap_or(settings.latency_objective);
    let model_metrics = metrics.model(&task.name, &task.version.to_string());
    let stats = Arc::new(ModelStats::new(
        model_metrics,
        Backlog::new(instances, objective),
    ));
    let work = WorkEstimate::new(&profile.curves, policy.form_rows);
    let buckets = batch_buckets(config, &policy);
    let context = Arc::new(WorkerContext {
        model_name: task.name.clone(),
        model,
        costs: profile.curves.clone(),
        stats: Arc::clone(&stats),
        batched: spec.max_batch_size > 0,
        buckets: buckets.clone(),
        direct: policy.direct,
        busy: Default::default(),
        feed: Default::default(),
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
    let warm = if context.model.traits().warms && context.model.traits().warms_each_instance {
        warmup::instance_inputs(&spec, config, &warm_rows, padded).map_err(LoadError::Warmup)?
    } else {
        Vec::new()
    };
    let (pool, batches_tx) =
        WorkerPool::start(Arc::clone(&context), instances, warm).map_err(LoadError::Workers)?;
    let scheduler = Scheduler::start(
        runtime,
        task.name.clone(),
        policy.clone(),
        instances,
        batches_tx,
        Arc::clone(&stats),
    );
    // Before any batch is sent: only the scheduler sends them.
    let _ = context.feed.set(scheduler.feed());
    let load_time = started.elapsed();
    record_load(
        metrics,
        &stats.metrics,
        task,
        &policy,
        &profile,
        shared_bytes,
        load_time,
        config.backend,
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
        threads_per_call = context.model.traits().threads_per_call,
        max_batch_size = spec.max_batch_size,
        batch_rows = policy.form_rows,
        call_rows = policy.max_rows,
        warmed_samples = profile.samples,
        cost_per_call = %curve.join(" "),
        peak_per_call = %peaks.join(" "),
        shared = %bytesize::ByteSize::b(shared_bytes),
        ready_ms = load_time.as_millis() as u64,
        open_ms = opened.as_millis() as u64,
        measure_ms = measured.as_millis() as u64,
        engine = config.backend.as_str(),
        "model ready"
    );
    Ok(ServedModel {
        name: task.name.clone(),
        version: task.version,
        config: config.clone(),
        spec,
        labels,
        stats,
        load_time,
        digest: task.digest,
        runner: Some(Runner::Engine(EngineRunner {
            scheduler,
            pool,
            work,
            profile,
            shared_bytes,
        })),
        on_unloaded: Default::default(),
    })
}

/// Loads an ensemble: its spec from its config, its steps resolved against the step
/// models as `lookup` finds them (loaded before it). No engine, no instances.
pub fn load_ensemble(
    task: &LoadTask,
    lookup: &Lookup,
    settings: &LoadConfig,
    metrics: &Metrics,
) -> Result<ServedModel, LoadError> {
    let started = Instant::now();
    let resolved = resolve_engine(task, settings)?;
    let config = &resolved;
    let spec = ModelSpec::declared(config).map_err(LoadError::Ensemble)?;
    let labels = Labels::read(config, &task.dir).map_err(LoadError::Config)?;
    let version = task.version.to_string();
    let steps_cancelled = metrics.steps_cancelled(&task.name, &version);
    let pipeline =
        Pipeline::plan(config, &spec, lookup, steps_cancelled).map_err(LoadError::Ensemble)?;
    let objective = config
        .params
        .latency_objective
        .unwrap_or(settings.latency_objective);
    let stats = Arc::new(ModelStats::new(
        metrics.model(&task.name, &version),
        Backlog::new(1, objective),
    ));
    let load_time = started.elapsed();
    stats.metrics.load_duration.set(load_time.as_secs_f64());
    info!(
        model = %task.name,
        version = task.version,
        steps = pipeline.steps.len(),
        "ensemble ready"
    );
    Ok(ServedModel {
        name: task.name.clone(),
        version: task.version,
        config: config.clone(),
        spec,
        labels,
        stats,
        load_time,
        digest: task.digest,
        runner: Some(Runner::Ensemble(pipeline)),
        on_unloaded: Default::default(),
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
    engine: BackendKind,
) {
    if !task.config.is_ensemble() {
        server.set_engine(&task.name, &task.version.to_string(), engine.as_str());
    }
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

    #[test]
    fn batches_are_padded_to_buckets_on_a_gpu_with_dynamic_batching_only() {
        let buckets = |yaml: &str| {
            let config = ModelConfig::from_yaml(yaml).unwrap();
            batch_buckets(&config, &dynamic_batching::batch_policy(&config, 8))
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
}
