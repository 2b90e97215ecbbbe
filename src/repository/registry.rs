//! The table of models and their versions' states (LOADING, READY, UNLOADING, UNAVAILABLE
//! with its reason): what requests, health and the repository index read. Only the
//! repository's `lifecycle` changes it.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use tokio::sync::watch;

use super::{config::ModelConfig, ServedModel};
use crate::{error::InferError, metrics::Metrics};

/// Where one version stands.
#[derive(Clone)]
pub enum VersionState {
    Loading,
    Ready(Arc<ServedModel>),
    /// Taken out of service; the requests it had admitted are finishing.
    Unloading,
    /// Unloaded on request (or by a version policy after a swap): UNAVAILABLE, "unloaded".
    Unloaded,
    Unavailable {
        reason: String,
    },
}

/// A version's state without its payload, as the protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Loading,
    Ready,
    Unloading,
    Unavailable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Loading => "LOADING",
            Status::Ready => "READY",
            Status::Unloading => "UNLOADING",
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
            VersionState::Unloading => Status::Unloading,
            VersionState::Unloaded | VersionState::Unavailable { .. } => Status::Unavailable,
        }
    }

    fn reason(&self) -> &str {
        match self {
            VersionState::Unavailable { reason } => reason,
            VersionState::Unloaded => "unloaded",
            _ => "",
        }
    }

    /// Whether the version is meant to serve: not unloading or unloaded on purpose.
    fn wanted(&self) -> bool {
        !matches!(self, VersionState::Unloading | VersionState::Unloaded)
    }
}

/// One model folder.
#[derive(Clone, Default)]
pub struct ModelEntry {
    pub config: Option<ModelConfig>,
    pub versions: BTreeMap<u64, VersionState>,
    /// Why the model as a whole cannot load (bad config, no versions), if it cannot.
    pub failure: Option<String>,
    /// Why the last load failed while the versions before it kept serving.
    pub reload_failure: Option<String>,
    /// Requests that named no version so far, for `version_traffic`'s split.
    pub unversioned: Arc<AtomicU64>,
}

impl ModelEntry {
    /// A model in the repository that is not loaded (explicit model control).
    pub fn not_loaded() -> ModelEntry {
        ModelEntry::default()
    }

    /// The version a request naming none gets: by `version_traffic` among the READY
    /// versions it names where it is set, else the highest READY version. Only a request
    /// (`advance`) moves the split on; a readiness or metadata look does not.
    fn unversioned(&self, advance: bool) -> Option<&VersionState> {
        let ready = |v: &u64| matches!(self.versions.get(v), Some(VersionState::Ready(_)));
        let split = self
            .config
            .as_ref()
            .and_then(|c| c.version_traffic.as_ref());
        if let Some(split) = split {
            // Only READY versions take traffic: a canary still loading gets none.
            let shares: Vec<(u64, u64)> = split
                .iter()
                .filter(|(v, _)| ready(v))
                .map(|(v, w)| (*v, u64::from(*w)))
                .collect();
            let total: u64 = shares.iter().map(|(_, w)| w).sum();
            if total > 0 {
                let n = if advance {
                    self.unversioned.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.unversioned.load(Ordering::Relaxed)
                };
                let mut slot = spread(n, total);
                for (version, weight) in shares {
                    if slot < weight {
                        return self.versions.get(&version);
                    }
                    slot -= weight;
                }
            }
        }
        self.versions
            .values()
            .rev()
            .find(|s| matches!(s, VersionState::Ready(_)))
            .or_else(|| self.versions.values().rev().find(|s| s.wanted()))
    }
}

/// The `n`th request's slot in 0..total: every run of `total` requests takes each slot
/// once (exact shares), interleaved rather than in blocks, so that a 90/10 split sends
/// every tenth request or so to the smaller side, not 10 in a row.
fn spread(n: u64, total: u64) -> u64 {
    // A step coprime with `total` walks every slot once per cycle.
    let mut step = (total * 5 / 8).max(1);
    while gcd(step, total) != 1 {
        step += 1;
    }
    (n % total) * step % total
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A row of the repository index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow {
    pub name: String,
    /// Empty for a model whose folder is broken as a whole, or that is not loaded.
    pub version: String,
    /// None for a model that is in the repository but not loaded (explicit control).
    pub status: Option<Status>,
    pub reason: String,
}

/// The models by name; every change is announced to subscribers and to `wharf_model_ready`.
pub struct Registry {
    models: RwLock<BTreeMap<String, ModelEntry>>,
    /// Bumped on every state change, so that health can follow without polling.
    changes: watch::Sender<u64>,
    /// The start-up load has finished. Later loads (a reload, an explicit load) leave the
    /// server ready: a pod must not leave its Service each time a model is swapped.
    started: AtomicBool,
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
            started: AtomicBool::new(false),
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

    /// The model version a request names: "" means the highest READY version, or the
    /// next in `version_traffic`'s split.
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, InferError> {
        self.resolve(name, version, true)
    }

    /// As `get`, for readiness, metadata and load checks: the split is not moved on.
    pub fn lookup(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, InferError> {
        self.resolve(name, version, false)
    }

    fn resolve(
        &self,
        name: &str,
        version: &str,
        advance: bool,
    ) -> Result<Arc<ServedModel>, InferError> {
        // Triton's words, which its clients match.
        if !version.is_empty() && version.parse::<u64>().is_err() {
            return Err(InferError::invalid(format!(
                "failed to get model version from specified version string '{version}': a version is a whole number, or empty for the model's policy"
            )));
        }
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
        if entry.versions.is_empty() {
            return Err(unavailable(
                "it is not loaded (RepositoryModelLoad loads it)",
            ));
        }
        let state = if version.is_empty() {
            entry.unversioned(advance)
        } else {
            version
                .parse::<u64>()
                .ok()
                .and_then(|v| entry.versions.get(&v))
        };
        match state {
            Some(VersionState::Ready(model)) => Ok(Arc::clone(model)),
            Some(VersionState::Loading) => Err(unavailable("it is still loading")),
            Some(VersionState::Unloading) => Err(unavailable("it is being unloaded")),
            Some(VersionState::Unloaded) | None if version.is_empty() => {
                Err(unavailable("it is unloaded"))
            }
            Some(VersionState::Unloaded) => Err(unavailable("that version is unloaded")),
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

    /// Whether a request for this name and version would be served now.
    pub fn is_ready(&self, name: &str, version: &str) -> bool {
        self.lookup(name, version).is_ok()
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
                    status: Some(Status::Unavailable),
                    reason: failure.clone(),
                });
                continue;
            }
            if entry.versions.is_empty() {
                rows.push(IndexRow {
                    name: name.clone(),
                    version: String::new(),
                    status: None,
                    reason: String::new(),
                });
            }
            for (version, state) in &entry.versions {
                let reason = match (&entry.reload_failure, state) {
                    // The serving version says why the newer config or version is not
                    // serving instead of it.
                    (Some(failure), VersionState::Ready(_)) => {
                        format!("the last load failed, this version serves on: {failure}")
                    }
                    _ => state.reason().to_owned(),
                };
                rows.push(IndexRow {
                    name: name.clone(),
                    version: version.to_string(),
                    status: Some(state.status()),
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

    /// Marks the start-up load finished, announcing it.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
        self.changes.send_modify(|n| *n += 1);
    }

    /// True once the start-up load has finished, whatever has loaded since.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// True once nothing is LOADING any more.
    pub fn settled(&self) -> bool {
        self.read().values().all(|entry| {
            !entry
                .versions
                .values()
                .any(|s| matches!(s, VersionState::Loading))
        })
    }

    /// True when every version meant to serve is READY (models not loaded, and versions
    /// unloaded on purpose, do not count). A model that answers counts as ready: one whose
    /// last reload failed while an older version serves on, and one with a version LOADING
    /// beside a READY one (a swap: every pod of a Deployment swaps at once, and none should
    /// leave its Service for it).
    pub fn all_ready(&self) -> bool {
        self.read().values().all(|entry| {
            let ready = |s: &VersionState| matches!(s, VersionState::Ready(_));
            let serving = entry.versions.values().any(ready);
            entry.failure.is_none()
                && if entry.reload_failure.is_some() {
                    serving
                } else {
                    entry
                        .versions
                        .values()
                        .filter(|s| s.wanted())
                        .all(|s| ready(s) || (serving && matches!(s, VersionState::Loading)))
                }
        })
    }

    /// Changes one model's entry under the lock, announcing the change; what `change`
    /// returns (versions taken out of service, say) is handed back, to be dropped
    /// outside the lock.
    pub(super) fn update<T>(&self, name: &str, change: impl FnOnce(&mut ModelEntry) -> T) -> T {
        let mut models = self.models.write().expect("registry lock");
        let entry = models.entry(name.to_owned()).or_default();
        let result = change(entry);
        for (version, state) in &entry.versions {
            self.metrics.set_ready(
                name,
                &version.to_string(),
                matches!(state, VersionState::Ready(_)),
            );
        }
        drop(models);
        self.changes.send_modify(|n| *n += 1);
        result
    }

    /// The names of every model in the table.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Removes every model and returns them, for the caller to drop outside the lock
    /// (dropping a served model joins its workers once queued work is done).
    pub(super) fn take_all(&self) -> BTreeMap<String, ModelEntry> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_of_total_requests_takes_each_slot_once_interleaved() {
        for total in [1, 2, 3, 10, 100, 7919] {
            let mut slots: Vec<u64> = (0..total).map(|n| spread(n, total)).collect();
            slots.sort_unstable();
            assert_eq!(slots, (0..total).collect::<Vec<_>>(), "total {total}");
        }
        // 90/10: the 10 slots of the small side are spread over the cycle of 100, not
        // bunched: no run of 20 requests misses it.
        let small: Vec<u64> = (0..100).filter(|n| spread(*n, 100) >= 90).collect();
        assert_eq!(small.len(), 10);
        assert!(small.windows(2).all(|w| w[1] - w[0] <= 20), "{small:?}");
    }
}
