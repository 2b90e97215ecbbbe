//! The table of models and their versions' states (LOADING, READY, UNAVAILABLE with its
//! reason): what requests, health and the repository index read. Loading is
//! elsewhere (`loader`); this only records its outcome.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, RwLock},
};

use tokio::sync::watch;

use super::{config::ModelConfig, ServedModel};
use crate::{error::InferError, metrics::Metrics};

/// Where one version stands.
#[derive(Clone)]
pub enum VersionState {
    Loading,
    Ready(Arc<ServedModel>),
    Unavailable { reason: String },
}

/// A version's state without its payload, as the protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Loading,
    Ready,
    Unavailable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Loading => "LOADING",
            Status::Ready => "READY",
            Status::Unavailable => "UNAVAILABLE",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl VersionState {
    pub fn status(&self) -> Status {
        match self {
            VersionState::Loading => Status::Loading,
            VersionState::Ready(_) => Status::Ready,
            VersionState::Unavailable { .. } => Status::Unavailable,
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
    /// Empty for a model whose folder is broken as a whole.
    pub version: String,
    pub status: Status,
    pub reason: String,
}

/// The models by name; every change is announced to subscribers and to `wharf_model_ready`.
pub struct Registry {
    models: RwLock<BTreeMap<String, ModelEntry>>,
    /// Bumped on every state change, so that health can follow without polling.
    changes: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(models: BTreeMap<String, ModelEntry>, metrics: Arc<Metrics>) -> Registry {
        for (name, model) in &models {
            if model.failure.is_some() {
                metrics.set_ready(name, "", false);
            }
            for version in model.versions.keys() {
                metrics.set_ready(name, &version.to_string(), false);
            }
        }
        Registry {
            models: RwLock::new(models),
            changes: watch::channel(0).0,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models.read().expect("registry lock")
    }

    pub fn set_state(&self, name: &str, version: u64, state: VersionState) {
        let ready = matches!(state, VersionState::Ready(_));
        self.metrics.set_ready(name, &version.to_string(), ready);
        let mut models = self.models.write().expect("registry lock");
        if let Some(entry) = models.get_mut(name) {
            entry.versions.insert(version, state);
        }
        drop(models);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Every version still LOADING, with its model's config.
    pub fn loading(&self) -> Vec<(String, u64, ModelConfig)> {
        self.read()
            .iter()
            .flat_map(|(name, entry)| {
                entry
                    .versions
                    .iter()
                    .filter(|(_, s)| matches!(s, VersionState::Loading))
                    .map(move |(v, _)| (name.clone(), *v, entry.config.clone().unwrap_or_default()))
            })
            .collect()
    }

    /// The model version a request names: "" means the highest READY version.
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, InferError> {
        let models = self.read();
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
            Some(VersionState::Unavailable { reason }) => Err(unavailable(reason)),
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

    /// Whether any version of `name` is still LOADING.
    pub fn is_loading(&self, name: &str) -> bool {
        self.read().get(name).is_some_and(|entry| {
            entry
                .versions
                .values()
                .any(|s| matches!(s, VersionState::Loading))
        })
    }

    /// Whether a request for this name and version would be served now.
    pub fn is_ready(&self, name: &str, version: &str) -> bool {
        self.get(name, version).is_ok()
    }

    /// Every version served (or meant to be) with its state; a model whose folder is broken
    /// appears once, without a version.
    pub fn index(&self) -> Vec<IndexRow> {
        let models = self.read();
        let mut rows = Vec::new();
        for (name, entry) in models.iter() {
            if let Some(failure) = &entry.failure {
                rows.push(IndexRow {
                    name: name.clone(),
                    version: String::new(),
                    status: Status::Unavailable,
                    reason: failure.clone(),
                });
                continue;
            }
            for (version, state) in &entry.versions {
                let reason = match state {
                    VersionState::Unavailable { reason } => reason.clone(),
                    _ => String::new(),
                };
                rows.push(IndexRow {
                    name: name.clone(),
                    version: version.to_string(),
                    status: state.status(),
                    reason,
                });
            }
        }
        rows
    }

    /// Every READY version, optionally of one model only.
    pub fn served(&self, name: Option<&str>) -> Vec<Arc<ServedModel>> {
        self.read()
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
        self.read().get(name).cloned()
    }

    /// True once nothing is LOADING any more.
    pub fn settled(&self) -> bool {
        self.index().iter().all(|r| r.status != Status::Loading)
    }

    /// True when every model and version is READY.
    pub fn all_ready(&self) -> bool {
        self.index().iter().all(|r| r.status == Status::Ready)
    }

    /// Removes every model and returns them, for the caller to drop outside the lock
    /// (dropping a served model joins its workers once queued work is done).
    pub fn take_all(&self) -> BTreeMap<String, ModelEntry> {
        let taken = std::mem::take(&mut *self.models.write().expect("registry lock"));
        for (name, entry) in &taken {
            for version in entry.versions.keys() {
                self.metrics.set_ready(name, &version.to_string(), false);
            }
        }
        self.changes.send_modify(|n| *n += 1);
        taken
    }
}
