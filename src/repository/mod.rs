//! The model repository: model folders and their versions, read from disk, loaded
//! (`loader`) and swapped (`lifecycle`), and recorded in the table requests read
//! (`registry`).

pub mod autocomplete;
pub mod config;
pub mod digest;
pub mod dynamic_batching;
pub mod effective;
pub mod engine;
pub mod ensemble;
pub mod gpu_budget;
pub mod labels;
pub mod lifecycle;
pub mod loader;
pub mod parameters;
mod reaper;
pub mod registry;
mod serial;
pub mod spec;
mod warmup;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use crate::{
    batching::{cost::WorkEstimate, Scheduler},
    config::LoadConfig,
    metrics::Metrics,
    stats::ModelStats,
    workers::WorkerPool,
};
use config::ModelConfig;
pub use ensemble::Pipeline;
pub use lifecycle::{LoadFailure, Wanted};
pub use loader::LoadError;
pub use registry::{IndexRow, ModelEntry, Registry, Status, VersionState};
use spec::ModelSpec;
pub use warmup::Profile;

/// A loaded, warmed version that can take requests.
pub struct ServedModel {
    pub name: String,
    pub version: u64,
    pub config: ModelConfig,
    pub spec: ModelSpec,
    /// Its outputs' class labels (`label_filename`).
    pub labels: labels::Labels,
    pub stats: Arc<ModelStats>,
    pub load_time: Duration,
    /// Its folder's and config's content digest (`control::digest`).
    pub digest: u64,
    /// None only while it is dropped (see `Drop`).
    runner: Option<Runner>,
    /// What to do once it is dropped (mark it UNLOADED), if anything.
    on_unloaded: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

/// What answers a version's requests: its own engine instances, or a pipeline of other
/// models' (an ensemble).
// One per loaded version, behind an Arc: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Runner {
    Engine(EngineRunner),
    Ensemble(Pipeline),
}

/// A model's queue and the instances it feeds.
pub struct EngineRunner {
    /// Declared before `pool`: dropping it closes the pool's channel, which lets the
    /// pool's threads end before the pool joins them.
    pub scheduler: Scheduler,
    pub pool: WorkerPool,
    /// Engine time per request, estimated from the cost curves (for the backlog).
    pub work: WorkEstimate,
    pub profile: Profile,
    /// Bytes the model keeps however many instances run it (weights, compiled plans).
    pub shared_bytes: u64,
}

impl ServedModel {
    pub fn runner(&self) -> &Runner {
        self.runner.as_ref().expect("taken only when dropped")
    }

    /// The engine side of a model that runs one; None for an ensemble.
    pub fn engine(&self) -> Option<&EngineRunner> {
        match self.runner() {
            Runner::Engine(engine) => Some(engine),
            Runner::Ensemble(_) => None,
        }
    }

    /// The most rows one request to this version may carry (0: it has no batch
    /// dimension): `max_batch_size`, or less where a memory budget allows less.
    pub fn max_rows(&self) -> usize {
        match self.runner() {
            Runner::Engine(engine) if self.spec.max_batch_size > 0 => {
                engine.scheduler.policy().max_rows
            }
            _ => self.spec.max_batch_size as usize,
        }
    }

    /// Runs `then` once this version is dropped and its workers joined.
    fn when_unloaded(&self, then: Box<dyn FnOnce() + Send>) {
        *self
            .on_unloaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(then);
    }
}

impl Drop for ServedModel {
    /// Hands the engine side to the reaper: dropping it joins the worker threads, and the
    /// last holder of a version is often a request on an async thread.
    fn drop(&mut self) {
        let runner = self.runner.take();
        let then = self
            .on_unloaded
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        reaper::reap(move || {
            drop(runner);
            if let Some(then) = then {
                then();
            }
        });
    }
}

pub struct Repository {
    settings: Arc<LoadConfig>,
    root: PathBuf,
    registry: Arc<Registry>,
    serial: serial::Serial,
}

impl Repository {
    /// Reads the folder tree (fast, no model is loaded yet): every model starts LOADING,
    /// or UNAVAILABLE with its reason when its folder is already wrong.
    pub fn scan(
        root: &Path,
        settings: LoadConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Repository> {
        Self::scan_only(root, settings, metrics, |_| true)
    }

    /// As `scan`, with only the models `wanted` names set to load; the others are listed
    /// as not loaded (explicit model control).
    pub fn scan_only(
        root: &Path,
        settings: LoadConfig,
        metrics: Arc<Metrics>,
        wanted: impl Fn(&str) -> bool,
    ) -> std::io::Result<Repository> {
        let mut models = BTreeMap::new();
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            if !is_folder(&entry) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let model = if wanted(&name) {
                scan_model(&name, &entry.path(), settings.model_config_name.as_deref())
            } else {
                ModelEntry::not_loaded()
            };
            models.insert(name, model);
        }
        Ok(Repository {
            settings: Arc::new(settings),
            root: root.to_owned(),
            registry: Arc::new(Registry::new(models, metrics)),
            serial: serial::Serial::default(),
        })
    }

    /// The folder the models are read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The models and their versions' states.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.registry.metrics()
    }
}

/// Whether a repository entry is a folder, following a link as Triton does (a model
/// linked in from elsewhere, a mounted volume's folders); only a link costs a stat.
fn is_folder(entry: &std::fs::DirEntry) -> bool {
    match entry.file_type() {
        Ok(kind) if !kind.is_symlink() => kind.is_dir(),
        _ => entry.path().is_dir(),
    }
}

fn scan_model(name: &str, dir: &Path, custom: Option<&str>) -> ModelEntry {
    match read_model(name, dir, None, custom) {
        Ok((config, versions)) => ModelEntry {
            versions: versions
                .into_iter()
                .map(|v| (v, VersionState::Loading))
                .collect(),
            config: Some(config),
            ..ModelEntry::default()
        },
        Err(reason) => ModelEntry {
            failure: Some(reason),
            ..ModelEntry::default()
        },
    }
}

/// A model folder's config (its config file, or `given` in its place) and the versions
/// its version policy selects, or why it cannot load at all.
pub(crate) fn read_model(
    name: &str,
    dir: &Path,
    given: Option<ModelConfig>,
    custom: Option<&str>,
) -> Result<(ModelConfig, Vec<u64>), String> {
    let found = config::locate(dir, custom)?;
    let config = match (given, &found) {
        (Some(config), _) => config,
        (None, Some(path)) => ModelConfig::from_file(path)?,
        (None, None) => ModelConfig::default(),
    };
    let config_path = found.unwrap_or_else(|| dir.join(config::YAML_FILE));
    if let Some(declared) = config.name.as_deref().filter(|n| *n != name) {
        return Err(format!(
            "{}: key `name`: expected the folder's name '{name}', found '{declared}'",
            config_path.display()
        ));
    }
    let mut found: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(is_folder)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    found.sort_unstable();
    let selected = config
        .version_policy
        .clone()
        .unwrap_or_default()
        .select(&found);
    if selected.is_empty() {
        return Err(format!(
            "{}: no version folder to serve (expected numbered folders such as 1/{}; found {:?})",
            dir.display(),
            config.model_filename(),
            found
        ));
    }
    if let Some(split) = &config.version_traffic {
        if let Some(missing) = split.keys().find(|v| !selected.contains(v)) {
            return Err(format!(
                "{}: key `version_traffic`: version {missing} is not served (the version \
                 policy selects {selected:?})",
                config_path.display()
            ));
        }
    }
    Ok((config, selected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::InferError;

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
        let repo = Repository::scan(dir.path(), LoadConfig::default(), Metrics::new()).unwrap();
        let err = repo.registry().get("a", "").err().unwrap().to_string();
        assert_eq!(err, "model 'a' is not ready: it is still loading");
        assert!(!repo.registry().settled());
        repo.load_all(2, &runtime());
        assert!(repo.registry().settled() && repo.registry().all_ready());
        assert_eq!(repo.registry().get("a", "1").unwrap().version, 1);
        assert!(matches!(
            repo.registry().get("b", ""),
            Err(InferError::ModelNotFound(_))
        ));
        repo.unload_all();
        assert!(repo.registry().index().is_empty());
    }

    #[test]
    fn model_and_version_folders_may_be_links() {
        let elsewhere = repo_with(&[("a", None)]);
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("a"), dir.path().join("linked")).unwrap();
        std::fs::rename(elsewhere.path().join("a/1"), elsewhere.path().join("v1")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("v1"), elsewhere.path().join("a/1"))
            .unwrap();
        let repo = Repository::scan(dir.path(), LoadConfig::default(), Metrics::new()).unwrap();
        repo.load_all(1, &runtime());
        assert_eq!(repo.registry().get("linked", "").unwrap().version, 1);
        repo.unload_all();
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
        let settings = LoadConfig {
            gpu_memory: vec![(0, bytesize::ByteSize::gib(2))],
            ..LoadConfig::default()
        };
        let repo = Repository::scan(dir.path(), settings, Metrics::new()).unwrap();
        repo.load_all(2, &runtime());
        let reason = |name: &str| {
            repo.registry()
                .index()
                .into_iter()
                .find(|r| r.name == name)
                .map(|r| (r.status.unwrap().as_str(), r.reason))
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
        let repo = Repository::scan(dir.path(), LoadConfig::default(), Metrics::new()).unwrap();
        repo.load_all(1, &runtime());
        let versions: Vec<String> = repo
            .registry()
            .index()
            .into_iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(versions, vec!["1", "3"]);
        assert_eq!(repo.registry().get("a", "").unwrap().version, 3);
        let err = repo.registry().get("a", "2").err().unwrap().to_string();
        assert_eq!(err, "model 'a' has no version 2; it serves 1, 3");
    }

    #[test]
    fn a_folder_name_mismatch_is_named() {
        let dir = repo_with(&[("a", Some("name: b\n"))]);
        let repo = Repository::scan(dir.path(), LoadConfig::default(), Metrics::new()).unwrap();
        let row = &repo.registry().index()[0];
        assert_eq!(row.status, Some(Status::Unavailable));
        assert!(
            row.reason
                .contains("key `name`: expected the folder's name 'a', found 'b'"),
            "{}",
            row.reason
        );
    }
}
