//! The model repository: model folders and their versions, loading and warming them, and
//! the state of each (LOADING, READY, UNAVAILABLE with its reason).

pub mod config;
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
    error::InferError,
    workers::WorkerPool,
};
use config::{BackendKind, ModelConfig};
use spec::ModelSpec;

/// Queue bound per model when the config sets no `max_queue_size`: deep enough to absorb a
/// burst at the default batch sizes, short enough that a request never waits seconds.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// A loaded, warmed version that can take requests.
pub struct ServedModel {
    pub name: String,
    pub version: u64,
    pub config: ModelConfig,
    pub spec: ModelSpec,
    pub pool: WorkerPool,
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

pub struct Repository {
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
    pub fn scan(root: &Path) -> std::io::Result<Repository> {
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
            models.insert(name.clone(), scan_model(&name, &entry.path()));
        }
        Ok(Repository {
            root: root.to_owned(),
            models: RwLock::new(models),
            changes: watch::channel(0).0,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Loads and warms every LOADING version, `parallelism` at a time, on the calling
    /// thread and helpers (blocking). A failure marks its own version only.
    pub fn load_all(&self, parallelism: usize) {
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
                        let state = match load_version(&task) {
                            Ok(model) => VersionState::Ready(Arc::new(model)),
                            Err(reason) => {
                                warn!(model = %task.name, version = task.version, %reason, "model failed to load");
                                VersionState::Unavailable(reason)
                            }
                        };
                        self.set_state(&task.name, task.version, state);
                    }
                });
            }
        });
    }

    fn set_state(&self, name: &str, version: u64, state: VersionState) {
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

fn load_version(task: &LoadTask) -> Result<ServedModel, String> {
    let started = Instant::now();
    let config = &task.config;
    if config.backend == BackendKind::Onnxruntime {
        return Err("backend onnxruntime is not part of this build yet; use backend: tract".into());
    }
    let path = task
        .dir
        .join(task.version.to_string())
        .join(config.model_filename());
    if !path.is_file() {
        return Err(format!("{}: no such model file", path.display()));
    }
    let model: Arc<dyn Model> = TractModel::load(&path).map_err(|e| e.to_string())?;
    let spec = ModelSpec::resolve(config, model.signature())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let parsed = started.elapsed();
    let warmed = warmup::run(&model, &spec, config)?;
    let capacity = config
        .dynamic_batching
        .as_ref()
        .and_then(|b| b.default_queue_policy.as_ref())
        .map(|p| p.max_queue_size as usize)
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_QUEUE_CAPACITY);
    let label = format!("{}-{}", task.name, task.version);
    let pool = WorkerPool::start(&label, model, config.instance_count(), capacity)
        .map_err(|e| format!("cannot start worker threads: {e}"))?;
    let load_time = started.elapsed();
    info!(
        model = %task.name,
        version = task.version,
        instances = config.instance_count(),
        max_batch_size = spec.max_batch_size,
        parse_ms = parsed.as_millis() as u64,
        warmed_shapes = warmed,
        ready_ms = load_time.as_millis() as u64,
        "model ready"
    );
    Ok(ServedModel {
        name: task.name.clone(),
        version: task.version,
        config: config.clone(),
        spec,
        pool,
        load_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let repo = Repository::scan(dir.path()).unwrap();
        let err = repo.get("a", "").err().unwrap().to_string();
        assert_eq!(err, "model 'a' is not ready: it is still loading");
        assert!(!repo.settled());
        repo.load_all(2);
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
    fn version_policy_picks_the_served_versions() {
        let dir = repo_with(&[("a", Some("version_policy: { all: {} }\n"))]);
        std::fs::create_dir_all(dir.path().join("a/3")).unwrap();
        std::fs::copy(
            dir.path().join("a/1/model.onnx"),
            dir.path().join("a/3/model.onnx"),
        )
        .unwrap();
        let repo = Repository::scan(dir.path()).unwrap();
        repo.load_all(1);
        let versions: Vec<String> = repo.index().into_iter().map(|r| r.version).collect();
        assert_eq!(versions, vec!["1", "3"]);
        assert_eq!(repo.get("a", "").unwrap().version, 3);
        let err = repo.get("a", "2").err().unwrap().to_string();
        assert_eq!(err, "model 'a' has no version 2; it serves 1, 3");
    }

    #[test]
    fn a_folder_name_mismatch_is_named() {
        let dir = repo_with(&[("a", Some("name: b\n"))]);
        let repo = Repository::scan(dir.path()).unwrap();
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
