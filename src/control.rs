//! Model control in Triton's three modes: `none` (the repository as read at start),
//! `explicit` (RepositoryModelLoad / RepositoryModelUnload), `poll` (the repository's
//! changes, read every --repository-poll-secs), each turned into loads and unloads of the
//! repository's lifecycle.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use thiserror::Error;
use tracing::{info, warn};

pub use crate::config::ControlMode;
use crate::config::ServerConfig;
use crate::repository::{
    config::ModelConfig,
    digest::{digest_folders, ScanCache},
    lifecycle::Outcomes,
    LoadError, LoadFailure, Repository, Wanted,
};

#[derive(Debug, Error)]
pub enum ControlError {
    /// "if polling is enabled" is Triton's phrase for any mode but explicit, which
    /// model_analyzer matches to tell its user to start the server in explicit mode.
    #[error("explicit model load / unload is not allowed if polling is enabled or the models are fixed (--model-control-mode {0}); start wharf with --model-control-mode explicit")]
    NotAllowed(&'static str),
    #[error("failed to load '{model}': {source}")]
    Load { model: String, source: LoadFailure },
    /// A load of a model without a folder; "failed to load" is Triton's phrase, which its
    /// model-control clients match.
    #[error("failed to load '{0}': no folder of that name in the model repository")]
    NoFolder(String),
    #[error("model '{0}' is not in the model repository")]
    NotFound(String),
    #[error("failed to load '{model}': the `config` parameter: {reason}")]
    BadConfig { model: String, reason: String },
}

pub struct ModelControl {
    mode: ControlMode,
    repository: Arc<Repository>,
    runtime: tokio::runtime::Handle,
    /// Versions loaded at once.
    parallelism: usize,
}

impl ModelControl {
    pub fn new(
        mode: ControlMode,
        repository: Arc<Repository>,
        runtime: tokio::runtime::Handle,
        parallelism: usize,
    ) -> ModelControl {
        ModelControl {
            mode,
            repository,
            runtime,
            parallelism,
        }
    }

    pub fn mode(&self) -> ControlMode {
        self.mode
    }

    /// The models start-up loads: None for all; in explicit mode those `--load-model`
    /// names (`*`: all). The start-up load adds the step models of the ensembles among
    /// them.
    pub fn start_set(config: &ServerConfig) -> Option<BTreeSet<String>> {
        let control = &config.control;
        if control.model_control_mode != ControlMode::Explicit
            || control.load_model.iter().any(|m| m == "*")
        {
            return None;
        }
        for name in &control.load_model {
            if !config.load.model_repository.join(name).is_dir() {
                warn!(model = %name, "--load-model names no folder of the repository");
            }
        }
        Some(control.load_model.iter().cloned().collect())
    }

    /// RepositoryModelLoad: loads or reloads `name` (with `config`: Triton's ModelConfig
    /// as protobuf JSON, or wharf's keys in JSON or YAML, in place of its config file), with the step models of an
    /// ensemble that do not serve yet. Returns once it is READY, or with why it is not
    /// (a step's failure first).
    pub async fn load(&self, name: &str, config: Option<&str>) -> Result<(), ControlError> {
        if self.mode != ControlMode::Explicit {
            return Err(ControlError::NotAllowed(self.mode.as_str()));
        }
        let given = config
            .map(|text| {
                // Triton's form first (protobuf JSON: quoted numbers are valid), then
                // wharf's YAML keys, which JSON is also written in.
                ModelConfig::from_protobuf_json(text).or_else(|as_triton| {
                    ModelConfig::from_yaml(text).map_err(|as_yaml| ControlError::BadConfig {
                        model: name.to_owned(),
                        reason: if text.trim_start().starts_with('{') {
                            format!("as Triton's ModelConfig JSON: {as_triton}; as wharf's keys: {as_yaml}")
                        } else {
                            as_yaml
                        },
                    })
                })
            })
            .transpose()?;
        if !self.repository.root().join(name).is_dir() {
            return Err(ControlError::NoFolder(name.to_owned()));
        }
        let wanted = self
            .repository
            .with_unserved_steps(Wanted::from([(name.to_owned(), given)]));
        let mut outcomes = self.apply(wanted).await;
        let own = outcomes.remove(name);
        let failed = outcomes
            .into_iter()
            .chain(own.map(|outcome| (name.to_owned(), outcome)))
            .find_map(|(model, outcome)| outcome.err().map(|source| (model, source)));
        match failed {
            Some((model, source)) => Err(ControlError::Load { model, source }),
            None => Ok(()),
        }
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
            if !self.unload_now(&name).await {
                return Err(ControlError::NotFound(name));
            }
        }
        Ok(())
    }

    /// Loads `wanted` off the async threads, and counts each model's outcome.
    async fn apply(&self, wanted: Wanted) -> Outcomes {
        let names: Vec<String> = wanted.keys().cloned().collect();
        let (repository, runtime, parallelism) = (
            Arc::clone(&self.repository),
            self.runtime.clone(),
            self.parallelism,
        );
        let outcomes = tokio::task::spawn_blocking(move || {
            let outcomes = repository.load_models(wanted, parallelism, &runtime);
            // What the load freed (parsing, optimising, a failed attempt's all) goes back
            // to the OS now, from this thread's heap, which holds it: an idle server
            // would otherwise keep it until its allocator next runs a purge.
            crate::heap::release_freed();
            outcomes
        })
        .await
        .unwrap_or_else(|e| {
            let failed = |_| Err(LoadFailure::from(LoadError::Panicked(e.to_string())));
            names.iter().map(|n| (n.clone(), failed(n))).collect()
        });
        for (name, outcome) in &outcomes {
            self.repository
                .metrics()
                .model_loaded(name, outcome.is_ok());
            match outcome {
                Ok(()) => info!(model = %name, "loaded"),
                Err(reason) => warn!(model = %name, %reason, "load failed"),
            }
        }
        outcomes
    }

    /// Unloads `name` off the async threads (it waits for a load of it under way);
    /// whether it was known.
    async fn unload_now(&self, name: &str) -> bool {
        let (repository, name) = (Arc::clone(&self.repository), name.to_owned());
        tokio::task::spawn_blocking(move || repository.unload_model(&name))
            .await
            .unwrap_or(false)
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
            let changed: BTreeSet<String> = now
                .keys()
                .chain(applied.keys())
                .filter(|name| now.get(*name) != applied.get(*name) && stable(name))
                .cloned()
                .collect();
            let present = changed.iter().filter(|n| now.contains_key(*n));
            self.apply(present.map(|n| (n.clone(), None)).collect())
                .await;
            for name in &changed {
                match now.get(name) {
                    Some(digest) => {
                        applied.insert(name.clone(), *digest);
                    }
                    None => {
                        info!(model = %name, "its folder is gone: unloading");
                        self.unload_now(name).await;
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
