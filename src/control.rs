//! Model control in Triton's three modes: `none` (the repository as read at start),
//! `explicit` (RepositoryModelLoad / RepositoryModelUnload), `poll` (the repository's
//! changes, read every --repository-poll-secs). One load or unload of a model at a time;
//! different models in parallel.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use thiserror::Error;
use tracing::{info, warn};

pub use crate::config::ControlMode;
use crate::config::ServerConfig;
use crate::repository::{
    config::ModelConfig,
    control::{digest_folders, ScanCache},
    Repository,
};

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("explicit model load / unload is not allowed with --model-control-mode {0} (only with explicit)")]
    NotAllowed(&'static str),
    #[error("failed to load '{model}': {reason}")]
    Load { model: String, reason: String },
    #[error("model '{0}' is not in the model repository")]
    NotFound(String),
    #[error("the `config` parameter for '{model}': {reason}")]
    BadConfig { model: String, reason: String },
}

pub struct ModelControl {
    mode: ControlMode,
    repository: Arc<Repository>,
    runtime: tokio::runtime::Handle,
    /// One lock per model name: loads and unloads of one model queue behind each other.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ModelControl {
    pub fn new(
        mode: ControlMode,
        repository: Arc<Repository>,
        runtime: tokio::runtime::Handle,
    ) -> ModelControl {
        ModelControl {
            mode,
            repository,
            runtime,
            locks: Mutex::default(),
        }
    }

    pub fn mode(&self) -> ControlMode {
        self.mode
    }

    /// The models start-up loads: None for all; in explicit mode those `--load-model`
    /// names (`*`: all) and the step models of the ensembles among them.
    pub fn start_set(config: &ServerConfig) -> Option<BTreeSet<String>> {
        let control = &config.control;
        if control.model_control_mode != ControlMode::Explicit
            || control.load_model.iter().any(|m| m == "*")
        {
            return None;
        }
        let mut wanted = BTreeSet::new();
        for name in &control.load_model {
            let dir = config.load.model_repository.join(name);
            if !dir.is_dir() {
                warn!(model = %name, "--load-model names no folder of the repository");
            }
            wanted.extend(steps_needed(&dir, None));
            wanted.insert(name.clone());
        }
        Some(wanted)
    }

    fn lock_of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("control locks");
        Arc::clone(locks.entry(name.to_owned()).or_default())
    }

    /// RepositoryModelLoad: loads or reloads `name` (with `config`, JSON or YAML in
    /// Triton's field names, in place of its config.yaml), an ensemble's step models
    /// first. Returns once it is READY, or with why it is not.
    pub async fn load(&self, name: &str, config: Option<&str>) -> Result<(), ControlError> {
        if self.mode != ControlMode::Explicit {
            return Err(ControlError::NotAllowed(self.mode.as_str()));
        }
        let given = config
            .map(|text| {
                ModelConfig::from_yaml(text).map_err(|reason| ControlError::BadConfig {
                    model: name.to_owned(),
                    reason,
                })
            })
            .transpose()?;
        let dir = self.repository.root().join(name);
        if !dir.is_dir() {
            return Err(ControlError::NotFound(name.to_owned()));
        }
        let steps = steps_needed(&dir, given.as_ref());
        for step in steps {
            if step != name && self.repository.registry().lookup(&step, "").is_err() {
                self.load_now(&step, None).await?;
            }
        }
        self.load_now(name, given).await
    }

    /// RepositoryModelUnload: takes `name` out of service (its admitted requests finish);
    /// with `dependents`, the ensembles using it too.
    pub async fn unload(&self, name: &str, dependents: bool) -> Result<(), ControlError> {
        if self.mode != ControlMode::Explicit {
            return Err(ControlError::NotAllowed(self.mode.as_str()));
        }
        let mut names = vec![name.to_owned()];
        if dependents {
            names.extend(self.repository.dependents(name));
        }
        for name in names {
            let lock = self.lock_of(&name);
            let _serial = lock.lock().await;
            if !self.repository.unload_model(&name) {
                return Err(ControlError::NotFound(name));
            }
        }
        Ok(())
    }

    async fn load_now(&self, name: &str, given: Option<ModelConfig>) -> Result<(), ControlError> {
        let lock = self.lock_of(name);
        let _serial = lock.lock().await;
        let (repository, runtime, model) = (
            Arc::clone(&self.repository),
            self.runtime.clone(),
            name.to_owned(),
        );
        let result = tokio::task::spawn_blocking(move || {
            let loaded = repository.load_model(&model, given, &runtime);
            // What the load freed (parsing, optimising, a failed attempt's all) goes back
            // to the OS now, from this thread's heap, which holds it: an idle server
            // would otherwise keep it until its allocator next runs a purge.
            crate::heap::release_freed();
            loaded
        })
        .await
        .unwrap_or_else(|e| Err(format!("the load task failed: {e}")));
        self.repository.metrics().model_loaded(name, result.is_ok());
        match &result {
            Ok(()) => info!(model = %name, "loaded"),
            Err(reason) => warn!(model = %name, %reason, "load failed"),
        }
        result.map_err(|reason| ControlError::Load {
            model: name.to_owned(),
            reason,
        })
    }

    /// Poll mode: every `every`, what changed in the repository since it was last applied
    /// is applied (new, changed or removed model folders, versions and configs), once it
    /// has looked the same on two polls in a row, so that a folder still being copied is
    /// left alone. A failed load is retried only when its files change again; it never
    /// stops the polls.
    pub async fn poll(self: Arc<Self>, every: Duration) {
        let root = self.repository.root().to_owned();
        // What the start-up load read.
        let (mut applied, mut cache) = scan(root.clone(), ScanCache::default()).await;
        let mut previous = applied.clone();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now;
            (now, cache) = scan(root.clone(), cache).await;
            let stable = |name: &String| now.get(name) == previous.get(name);
            let changed: Vec<String> = now
                .keys()
                .chain(applied.keys())
                .filter(|name| now.get(*name) != applied.get(*name) && stable(name))
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            // Step models before the ensembles over them: ensembles last.
            let (ensembles, models): (Vec<String>, Vec<String>) = changed
                .into_iter()
                .partition(|name| !steps_needed(&root.join(name), None).is_empty());
            let loads = models.iter().filter(|n| now.contains_key(*n)).map(|name| {
                let control = Arc::clone(&self);
                async move {
                    let _ = control.load_now(name, None).await;
                }
            });
            futures::future::join_all(loads).await;
            for name in &ensembles {
                if now.contains_key(name) {
                    let _ = self.load_now(name, None).await;
                }
            }
            for name in models.iter().chain(&ensembles) {
                match now.get(name) {
                    Some(digest) => {
                        applied.insert(name.clone(), *digest);
                    }
                    None => {
                        info!(model = %name, "its folder is gone: unloading");
                        let lock = self.lock_of(name);
                        let _serial = lock.lock().await;
                        self.repository.unload_model(name);
                        applied.remove(name);
                    }
                }
            }
            previous = now;
            self.repository.metrics().polled();
        }
    }
}

/// The repository's model folders and their digests, off the async threads; the cache
/// comes back for the next scan.
async fn scan(root: PathBuf, mut cache: ScanCache) -> (BTreeMap<String, u64>, ScanCache) {
    tokio::task::spawn_blocking(move || (digest_folders(&root, &mut cache), cache))
        .await
        .unwrap_or_default()
}

/// The step models an ensemble's config (`given`, or its folder's config.yaml) names,
/// with theirs before them; empty for a model that is not an ensemble.
fn steps_needed(dir: &Path, given: Option<&ModelConfig>) -> Vec<String> {
    let read = |dir: &Path| ModelConfig::from_file(&dir.join("config.yaml")).ok();
    let mut order = Vec::new();
    let mut stack: Vec<(String, Option<ModelConfig>)> = Vec::new();
    let config = given.cloned().or_else(|| read(dir));
    let Some(root) = dir.parent() else {
        return order;
    };
    let steps = |config: &ModelConfig| -> Vec<String> {
        config
            .ensemble_scheduling
            .iter()
            .flat_map(|s| &s.step)
            .map(|step| step.model_name.clone())
            .collect()
    };
    for step in config.as_ref().map(steps).unwrap_or_default() {
        stack.push((step.clone(), read(&root.join(&step))));
    }
    // Depth-first, each name once: a cycle ends (its load will say what is wrong).
    let mut seen: BTreeSet<String> = BTreeSet::new();
    while let Some((name, config)) = stack.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        order.insert(0, name);
        for step in config.as_ref().map(steps).unwrap_or_default() {
            stack.push((step.clone(), read(&root.join(&step))));
        }
    }
    order
}
