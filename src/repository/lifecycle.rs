//! The one writer of version state. A load reads each model's folder, loads the versions
//! that are new or changed beside those serving (one dependency graph puts ensembles after
//! their steps), swaps each in once READY, and retires what the version policy no longer
//! selects; a retired version drains, and is marked UNLOADED when its last request lets go
//! of it. Start-up, repository polls and the model-control RPCs all come through here. One
//! load or unload of a model at a time; different models in parallel.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use tracing::{info, warn};

use super::{
    config::ModelConfig,
    digest::digest,
    gpu_budget::{self, GpuClaim},
    loader::{self, LoadError, LoadTask},
    read_model, Registry, Repository, ServedModel, VersionState,
};

/// The models to load, each with the config given in its folder's place (a control
/// RPC's), if any.
pub type Wanted = BTreeMap<String, Option<ModelConfig>>;

/// Why a model's load did not all apply: the model's own error (its folder, its config),
/// or each version that failed with its error. What did load serves.
#[derive(Debug)]
pub struct LoadFailure(Vec<(Option<u64>, LoadError)>);

impl From<LoadError> for LoadFailure {
    /// The model's own error.
    fn from(error: LoadError) -> LoadFailure {
        LoadFailure(vec![(None, error)])
    }
}

impl LoadFailure {
    /// The first error: what the failure's status code follows.
    pub fn first(&self) -> &LoadError {
        &self.0[0].1
    }
}

impl fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (version, error)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match version {
                Some(version) => write!(f, "version {version}: {error}")?,
                None => write!(f, "{error}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for LoadFailure {}

/// Each model's outcome.
pub type Outcomes = BTreeMap<String, Result<(), LoadFailure>>;

/// A model read from its folder: its config and the versions its policy selects.
struct Read {
    config: ModelConfig,
    selected: Vec<u64>,
}

/// Takes a version out of service: a serving one becomes UNLOADING and is handed back to
/// drain; one already unloading stays so; any other (loading, failed) is UNLOADED.
fn retire(state: &mut VersionState) -> Option<Arc<ServedModel>> {
    match std::mem::replace(state, VersionState::Unloaded) {
        VersionState::Ready(model) => {
            *state = VersionState::Unloading;
            Some(model)
        }
        VersionState::Unloading => {
            *state = VersionState::Unloading;
            None
        }
        _ => None,
    }
}

/// Lets `model` drain: once its last request drops it, its workers are joined off that
/// request's thread, and it is marked UNLOADED if nothing has replaced it since.
fn drain_then_mark_unloaded(registry: &Arc<Registry>, model: Arc<ServedModel>) {
    let registry = Arc::downgrade(registry);
    let (name, version) = (model.name.clone(), model.version);
    model.when_unloaded(Box::new(move || {
        if let Some(registry) = registry.upgrade() {
            registry.update(&name, |entry| {
                if let Some(state @ VersionState::Unloading) = entry.versions.get_mut(&version) {
                    *state = VersionState::Unloaded;
                }
            });
        }
        info!(model = %name, version, "unloaded");
    }));
}

/// The models in load order, by levels: an ensemble comes in a level after every step
/// model of its own that is among `models` (steps outside them are looked up as they
/// serve). What no level takes names, or waits on, ensembles that are steps of each other.
fn dependency_levels(models: &BTreeMap<String, Read>) -> (Vec<Vec<String>>, Vec<String>) {
    let mut waiting: BTreeMap<&str, BTreeSet<&str>> = models
        .iter()
        .map(|(name, read)| {
            let steps = read
                .config
                .step_models()
                .filter(|step| *step != name && models.contains_key(*step))
                .collect();
            (name.as_str(), steps)
        })
        .collect();
    let mut levels = Vec::new();
    loop {
        let level: Vec<&str> = waiting
            .iter()
            .filter(|(_, steps)| steps.is_empty())
            .map(|(name, _)| *name)
            .collect();
        if level.is_empty() {
            break;
        }
        for name in &level {
            waiting.remove(name);
        }
        for steps in waiting.values_mut() {
            steps.retain(|step| !level.contains(step));
        }
        levels.push(level.into_iter().map(str::to_owned).collect());
    }
    (levels, waiting.into_keys().map(str::to_owned).collect())
}

impl Repository {
    /// Start-up: loads every model the scan set LOADING, with the step models their
    /// ensembles name (blocking). A failure marks its own version only.
    pub fn load_all(&self, parallelism: usize, runtime: &tokio::runtime::Handle) {
        let wanted: BTreeSet<String> = self
            .registry
            .loading()
            .into_iter()
            .map(|(name, _, _)| name)
            .collect();
        let wanted = self.with_unserved_steps(wanted.into_iter().map(|n| (n, None)).collect());
        self.load_models(wanted, parallelism, runtime);
        self.registry.mark_started();
    }

    /// `wanted` with the step models its ensembles name, and theirs, that serve no
    /// version yet (those that do are used as they serve).
    pub fn with_unserved_steps(&self, mut wanted: Wanted) -> Wanted {
        let mut unread: Vec<String> = wanted.keys().cloned().collect();
        while let Some(name) = unread.pop() {
            let dir = self.root.join(&name);
            let config = wanted[&name].clone().or_else(|| {
                ModelConfig::from_dir(&dir, self.settings.model_config_name.as_deref()).ok()
            });
            let Some(config) = config else { continue };
            for step in config.step_models() {
                let known = wanted.contains_key(step) || self.registry.lookup(step, "").is_ok();
                if !known && self.root.join(step).is_dir() {
                    wanted.insert(step.to_owned(), None);
                    unread.push(step.to_owned());
                }
            }
        }
        wanted
    }

    /// Loads `wanted`: steps before the ensembles over them, the models of one level
    /// together, `parallelism` versions at a time (blocking). Versions that are new or
    /// changed load beside those serving and are swapped in once READY; versions the
    /// policy no longer selects are retired once one it selects is READY, so that a failed
    /// new version leaves the old one serving. Each failure names every part that failed;
    /// the rest is applied.
    pub fn load_models(
        &self,
        wanted: Wanted,
        parallelism: usize,
        runtime: &tokio::runtime::Handle,
    ) -> Outcomes {
        let mut outcomes = Outcomes::new();
        let mut read = BTreeMap::new();
        for (name, given) in wanted {
            let dir = self.root.join(&name);
            if !dir.is_dir() {
                let error = LoadError::NoFolder {
                    name: name.clone(),
                    root: self.root.clone(),
                };
                outcomes.insert(name, Err(error.into()));
                continue;
            }
            match read_model(
                &name,
                &dir,
                given,
                self.settings.model_config_name.as_deref(),
            ) {
                Ok((config, selected)) => {
                    read.insert(name, Read { config, selected });
                }
                Err(reason) => {
                    let _serial = self.serial.lock(&name);
                    self.keep_serving_or_fail(&name, &reason);
                    outcomes.insert(name, Err(LoadError::Repository(reason).into()));
                }
            }
        }
        let (levels, stuck) = dependency_levels(&read);
        let reason = format!(
            "ensembles {} are steps of each other: none can load first",
            stuck.join(", ")
        );
        for name in stuck {
            let _serial = self.serial.lock(&name);
            let failures = read[&name]
                .selected
                .iter()
                .map(|&version| {
                    self.registry.update(&name, |entry| {
                        mark_failed(entry, version, &reason);
                    });
                    (Some(version), LoadError::Ensemble(reason.clone()))
                })
                .collect();
            outcomes.insert(name, Err(LoadFailure(failures)));
        }
        for level in levels {
            let level = level
                .into_iter()
                .map(|name| {
                    let model = read.remove(&name).expect("levels name read models");
                    (name, model)
                })
                .collect();
            outcomes.extend(self.load_level(level, parallelism, runtime));
        }
        outcomes
    }

    /// Loads models that do not depend on each other, their versions' GPU claims checked
    /// together beside those serving.
    fn load_level(
        &self,
        models: BTreeMap<String, Read>,
        parallelism: usize,
        runtime: &tokio::runtime::Handle,
    ) -> Outcomes {
        let _serial = self.serial.lock_all(models.keys());
        let mut tasks = Vec::new();
        let mut reloads = BTreeSet::new();
        for (name, Read { config, selected }) in &models {
            let dir = self.root.join(name);
            let entry = self.registry.entry(name).unwrap_or_default();
            if entry
                .versions
                .values()
                .any(|s| matches!(s, VersionState::Ready(_)))
            {
                reloads.insert(name.clone());
            }
            tasks.extend(
                selected
                    .iter()
                    .map(|&version| LoadTask {
                        name: name.clone(),
                        version,
                        dir: dir.clone(),
                        config: config.clone(),
                        digest: digest(&dir, version, config),
                    })
                    .filter(|task| match entry.versions.get(&task.version) {
                        Some(VersionState::Ready(served)) => served.digest != task.digest,
                        _ => true,
                    }),
            );
        }
        let serving: Vec<GpuClaim> = self
            .registry
            .served(None)
            .iter()
            .filter_map(|m| GpuClaim::of(&m.name, m.version, &m.config))
            .collect();
        let (tasks, refused) = self.split_by_gpu_budget(serving, tasks);
        let changed: BTreeSet<String> = tasks.iter().map(|t| t.name.clone()).collect();
        for (name, Read { config, .. }) in &models {
            self.registry.update(name, |entry| {
                entry.failure = None;
                entry.config.get_or_insert_with(|| config.clone());
                for task in tasks.iter().filter(|t| &t.name == name) {
                    if !matches!(
                        entry.versions.get(&task.version),
                        Some(VersionState::Ready(_))
                    ) {
                        entry.versions.insert(task.version, VersionState::Loading);
                    }
                }
            });
        }
        let mut loaded: Vec<(String, u64, Result<ServedModel, LoadError>)> = refused
            .into_iter()
            .map(|(task, reason)| (task.name, task.version, Err(LoadError::GpuBudget(reason))))
            .collect();
        loaded.extend(self.run_loads(tasks, parallelism, runtime));

        let mut failures: BTreeMap<String, Vec<(Option<u64>, LoadError)>> = BTreeMap::new();
        for (name, version, result) in loaded {
            match result {
                Ok(model) => {
                    let replaced = self.registry.update(&name, |entry| {
                        entry
                            .versions
                            .insert(version, VersionState::Ready(Arc::new(model)))
                    });
                    if let Some(VersionState::Ready(_)) = replaced {
                        info!(model = %name, version, "new config or files serving; the old copy drains");
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    warn!(model = %name, version, %reason, "model failed to load");
                    self.registry.update(&name, |entry| {
                        mark_failed(entry, version, &reason);
                    });
                    failures
                        .entry(name)
                        .or_default()
                        .push((Some(version), error));
                }
            }
        }
        let mut outcomes = Outcomes::new();
        for (name, Read { config, selected }) in models {
            let failure = failures.remove(&name).map(LoadFailure);
            let shown = failure
                .as_ref()
                .filter(|_| reloads.contains(&name))
                .map(ToString::to_string);
            let retired = self.registry.update(&name, |entry| {
                // Only a reload's failure is shown beside the versions that serve on.
                entry.reload_failure = shown;
                let serving = selected
                    .iter()
                    .any(|v| matches!(entry.versions.get(v), Some(VersionState::Ready(_))));
                if !serving {
                    return Vec::new();
                }
                entry.config = Some(config);
                entry
                    .versions
                    .iter_mut()
                    .filter(|(version, _)| !selected.contains(version))
                    .filter_map(|(_, state)| retire(state))
                    .collect::<Vec<_>>()
            });
            for model in retired {
                info!(model = %name, version = model.version, "version retired; it drains, then unloads");
                drain_then_mark_unloaded(&self.registry, model);
            }
            outcomes.insert(name, failure.map_or(Ok(()), Err));
        }
        for name in &changed {
            self.replan_ensembles_using(name);
        }
        outcomes
    }

    /// Loads each task, `parallelism` at a time, on this thread's helpers (blocking).
    fn run_loads(
        &self,
        tasks: Vec<LoadTask>,
        parallelism: usize,
        runtime: &tokio::runtime::Handle,
    ) -> Vec<(String, u64, Result<ServedModel, LoadError>)> {
        let workers = parallelism.clamp(1, tasks.len().max(1));
        let queue = Mutex::new(tasks);
        let next = || queue.lock().unwrap_or_else(PoisonError::into_inner).pop();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        while let Some(task) = next() {
                            let (name, version) = (task.name.clone(), task.version);
                            done.push((name, version, self.load_one(task, runtime)));
                        }
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("load threads catch their panics"))
                .collect()
        })
    }

    fn load_one(
        &self,
        task: LoadTask,
        runtime: &tokio::runtime::Handle,
    ) -> Result<ServedModel, LoadError> {
        if task.config.is_ensemble() {
            let lookup = |name: &str, version: &str| {
                self.registry
                    .lookup(name, version)
                    .map_err(|e| e.to_string())
            };
            loader::load_ensemble(&task, &lookup, &self.settings, self.metrics())
        } else {
            loader::load_isolated(task, &self.settings, self.metrics(), runtime)
        }
    }

    /// Takes every version of `name` out of service; each drains its admitted requests,
    /// then unloads. Returns whether the model was known.
    pub fn unload_model(&self, name: &str) -> bool {
        let _serial = self.serial.lock(name);
        if self.registry.entry(name).is_none() {
            return false;
        }
        let retired = self.registry.update(name, |entry| {
            entry.reload_failure = None;
            entry.failure = None;
            entry
                .versions
                .values_mut()
                .filter_map(retire)
                .collect::<Vec<_>>()
        });
        for model in retired {
            info!(model = %name, version = model.version, "unloading once its requests finish");
            drain_then_mark_unloaded(&self.registry, model);
        }
        true
    }

    /// Stops every worker pool, joining its threads once queued work is done (blocking).
    pub fn unload_all(&self) {
        drop(self.registry.take_all());
        super::reaper::flush();
    }

    /// The ensembles that serve with `model` as a step.
    pub fn dependents(&self, model: &str) -> Vec<String> {
        self.registry
            .served(None)
            .iter()
            .filter(|m| m.config.step_models().any(|step| step == model))
            .map(|m| m.name.clone())
            .collect()
    }

    /// After a step model changed, each ensemble using it is planned again against what
    /// now serves, and swapped in; one that no longer fits keeps its old plan, logged.
    fn replan_ensembles_using(&self, step_model: &str) {
        let dependents = self.dependents(step_model);
        for ensemble in self
            .registry
            .served(None)
            .into_iter()
            .filter(|m| dependents.contains(&m.name))
        {
            let task = LoadTask {
                name: ensemble.name.clone(),
                version: ensemble.version,
                dir: self.root.join(&ensemble.name),
                config: ensemble.config.clone(),
                digest: ensemble.digest,
            };
            let lookup = |name: &str, version: &str| {
                self.registry
                    .lookup(name, version)
                    .map_err(|e| e.to_string())
            };
            match loader::load_ensemble(&task, &lookup, &self.settings, self.metrics()) {
                Ok(planned) => {
                    self.registry.update(&task.name, |entry| {
                        entry
                            .versions
                            .insert(task.version, VersionState::Ready(Arc::new(planned)))
                    });
                }
                Err(e) => warn!(
                    ensemble = %task.name,
                    step = step_model,
                    error = %e,
                    "the ensemble no longer fits its step model; it keeps its old plan"
                ),
            }
        }
    }

    /// A load whose config cannot be read: the versions serving stay, with the reason
    /// shown beside them; with none serving, the model is UNAVAILABLE with it.
    fn keep_serving_or_fail(&self, name: &str, reason: &str) {
        self.registry.update(name, |entry| {
            let serving = entry
                .versions
                .values()
                .any(|s| matches!(s, VersionState::Ready(_)));
            if serving {
                entry.reload_failure = Some(reason.to_owned());
            } else {
                entry.versions.clear();
                entry.failure = Some(reason.to_owned());
            }
        });
    }

    /// The tasks whose GPU claims fit their device beside `serving` (every version
    /// serving, the one a task replaces included: both are held while they overlap), and
    /// the others with why not.
    fn split_by_gpu_budget(
        &self,
        serving: Vec<GpuClaim>,
        tasks: Vec<LoadTask>,
    ) -> (Vec<LoadTask>, Vec<(LoadTask, String)>) {
        if !tasks.iter().any(|t| t.config.on_gpu()) {
            return (tasks, Vec::new());
        }
        let memory = match self.settings.gpu_memory_bytes() {
            configured if configured.is_empty() => gpu_budget::device_memory_from_driver(),
            configured => configured,
        };
        gpu_budget::split_by_gpu_budget(
            serving,
            tasks,
            &memory,
            self.settings.gpu_context_memory.as_u64(),
        )
    }
}

/// A version that failed to load is UNAVAILABLE with why, unless an older copy of it
/// serves on.
fn mark_failed(entry: &mut super::ModelEntry, version: u64, reason: &str) {
    if !matches!(entry.versions.get(&version), Some(VersionState::Ready(_))) {
        let reason = reason.to_owned();
        entry
            .versions
            .insert(version, VersionState::Unavailable { reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_budget::split_by_gpu_budget;

    fn read(yaml: &str) -> Read {
        Read {
            config: ModelConfig::from_yaml(yaml).unwrap(),
            selected: vec![1],
        }
    }

    fn ensemble_over(steps: &[&str]) -> String {
        let steps: Vec<String> = steps
            .iter()
            .map(|s| format!("{{model_name: {s}, model_version: -1, input_map: {{x: x}}, output_map: {{y: y}}}}"))
            .collect();
        format!(
            "platform: ensemble\ninput: [{{name: x, data_type: TYPE_FP32, dims: [-1]}}]\noutput: [{{name: y, data_type: TYPE_FP32, dims: [-1]}}]\nensemble_scheduling: {{step: [{}]}}\n",
            steps.join(", ")
        )
    }

    #[test]
    fn ensembles_load_a_level_after_their_steps_and_a_loop_is_left_out() {
        let models = BTreeMap::from([
            ("det".to_owned(), read("{}")),
            ("rec".to_owned(), read("{}")),
            ("ocr".to_owned(), read(&ensemble_over(&["det", "rec"]))),
            (
                "page".to_owned(),
                read(&ensemble_over(&["ocr", "served_elsewhere"])),
            ),
            ("a".to_owned(), read(&ensemble_over(&["b"]))),
            ("b".to_owned(), read(&ensemble_over(&["a"]))),
            ("over_a".to_owned(), read(&ensemble_over(&["a"]))),
        ]);
        let (levels, stuck) = dependency_levels(&models);
        assert_eq!(levels, [vec!["det", "rec"], vec!["ocr"], vec!["page"]]);
        assert_eq!(stuck, ["a", "b", "over_a"]);
    }

    #[test]
    fn a_swap_that_would_not_fit_beside_the_serving_version_is_refused_with_both() {
        let config = ModelConfig::from_yaml(
            "backend: onnxruntime\ninstance_group: [{kind: KIND_GPU, gpus: [0], count: 1, memory_budget: 1GiB}]\n",
        )
        .unwrap();
        let task = |version| LoadTask {
            name: "rec".into(),
            version,
            dir: "models/rec".into(),
            config: config.clone(),
            digest: 0,
        };
        let serving = vec![GpuClaim::of("rec", 1, &config).unwrap()];
        let memory = BTreeMap::from([(0, 3 << 30)]);
        // 1 GiB + 140 MiB twice, and 640 MiB of context: 2.9 GiB fits 3 GiB.
        let (fitting, failures) =
            split_by_gpu_budget(serving.clone(), vec![task(2)], &memory, 640 << 20);
        assert_eq!((fitting.len(), failures.len()), (1, 0));
        // On a 2 GiB card the new version alone would fit; beside the serving one it does
        // not, and the reason names both.
        let memory = BTreeMap::from([(0, 2 << 30)]);
        let (fitting, failures) = split_by_gpu_budget(serving, vec![task(2)], &memory, 640 << 20);
        assert!(fitting.is_empty());
        let (refused, reason) = &failures[0];
        assert_eq!(refused.version, 2);
        assert!(
            reason.contains("rec v1") && reason.contains("rec v2"),
            "{reason}"
        );
    }
}
