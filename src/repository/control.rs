//! Changing models while serving: a new version or config is loaded and warmed beside the
//! one serving, takes traffic only once READY, and what it replaces drains the requests it
//! admitted before it is dropped. A load that fails leaves the serving versions as they
//! were. Callers serialise loads and unloads of one model (the top-level `control`).

use std::{
    collections::{BTreeMap, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tracing::{info, warn};

use super::{
    config::ModelConfig,
    gpu_budget::GpuClaim,
    is_folder,
    loader::{self, LoadError, LoadTask},
    read_model, Repository, ServedModel, VersionState,
};

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

/// How often a retired version checks whether its last request has finished.
const DRAIN_CHECK: Duration = Duration::from_millis(10);

/// The content a version is loaded from: its config (as parsed) and every file under its
/// version folder, names and bytes. Equal digests mean a reload would change nothing.
pub fn digest(dir: &Path, version: u64, config: &ModelConfig) -> u64 {
    let mut hasher = DefaultHasher::new();
    format!("{config:?}").hash(&mut hasher);
    hash_tree(
        &dir.join(version.to_string()),
        0,
        &mut hasher,
        &mut |path| read_hash(path).unwrap_or(UNREADABLE),
    );
    hasher.finish()
}

/// Each model folder under `root` (hidden ones left out) with a digest of every file
/// under it, names and contents: what a repository poll compares. Contents come from
/// `cache` where a file looks unchanged since an earlier scan.
pub fn digest_folders(root: &Path, cache: &mut ScanCache) -> BTreeMap<String, u64> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return BTreeMap::new();
    };
    let folders = entries
        .flatten()
        .filter(is_folder)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            (!name.starts_with('.')).then(|| {
                let mut hasher = DefaultHasher::new();
                hash_tree(&e.path(), 0, &mut hasher, &mut |path| cache.content(path));
                (name, hasher.finish())
            })
        })
        .collect();
    cache.end_scan();
    folders
}

/// The content hashes of a repository's files from the last scan, each reused while the
/// file's stamp stays the same, so that a poll reads only the files that changed (every
/// scan read every model's bytes: 31 ms of CPU for 128 MiB in the page cache, and all of
/// it again from a network volume where it is not). A file changed within `SETTLED` of
/// when it was read is read again: a write in the same clock tick as that read would leave
/// its stamp unchanged.
#[derive(Debug)]
pub struct ScanCache {
    /// From the last scan.
    previous: HashMap<PathBuf, Stamped>,
    /// Seen in this scan; files gone since drop out.
    current: HashMap<PathBuf, Stamped>,
    /// `SETTLED`, shorter in tests.
    settle: Duration,
    /// Files read, for tests.
    #[cfg(test)]
    reads: usize,
}

impl Default for ScanCache {
    fn default() -> ScanCache {
        ScanCache {
            previous: HashMap::new(),
            current: HashMap::new(),
            settle: SETTLED,
            #[cfg(test)]
            reads: 0,
        }
    }
}

/// What vouches for a file's content without reading it: which file it is (device and
/// inode: a file renamed over it, or a link moved to another, is another file), its size,
/// and when its content and its inode last changed. The inode's time (ctime) moves with
/// every write and cannot be set, so a tool that puts a file's old modification time back
/// after rewriting it is still seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            device: m.dev(),
            inode: m.ino(),
            len: m.len(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// When the file last changed in any way.
    fn changed_at(&self) -> SystemTime {
        let (seconds, nanos) = self.changed;
        UNIX_EPOCH + Duration::new(seconds.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
    }
}

#[derive(Debug, Clone, Copy)]
struct Stamped {
    stamp: Stamp,
    read_at: SystemTime,
    content: u64,
}

/// How long before a read a file's last change must be for its stamp to vouch for its
/// content (filesystems keep times in ticks of up to 2 s).
const SETTLED: Duration = Duration::from_secs(2);

impl ScanCache {
    fn content(&mut self, path: &Path) -> u64 {
        let stamp = Stamp::of(path);
        let earlier = self.previous.remove(path);
        if let (Some(stamp), Some(earlier)) = (stamp, earlier) {
            let settled = earlier
                .read_at
                .duration_since(stamp.changed_at())
                .is_ok_and(|age| age >= self.settle);
            if earlier.stamp == stamp && settled {
                self.current.insert(path.to_owned(), earlier);
                return earlier.content;
            }
        }
        let read_at = SystemTime::now();
        #[cfg(test)]
        {
            self.reads += 1;
        }
        let Some(content) = read_hash(path) else {
            // Not kept: a file made readable (a chmod) is read next scan.
            return UNREADABLE;
        };
        if let Some(stamp) = stamp {
            let stamped = Stamped {
                stamp,
                read_at,
                content,
            };
            self.current.insert(path.to_owned(), stamped);
        }
        content
    }

    fn end_scan(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

/// A file's bytes, hashed.
fn read_hash(path: &Path) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    std::fs::read(path).ok()?.hash(&mut hasher);
    Some(hasher.finish())
}

/// What an unreadable file counts as in a digest (its load will say what is wrong).
const UNREADABLE: u64 = 0;

/// Folders deeper than this under a model's or a version's folder are not looked into:
/// links are followed, and a link to a folder above it would otherwise never end.
const MAX_DEPTH: usize = 8;

fn hash_tree(
    dir: &Path,
    depth: usize,
    hasher: &mut DefaultHasher,
    content: &mut dyn FnMut(&Path) -> u64,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        entry.file_name().hash(hasher);
        let path = entry.path();
        if !is_folder(&entry) {
            content(&path).hash(hasher);
        } else if depth < MAX_DEPTH {
            hash_tree(&path, depth + 1, hasher, content);
        }
    }
}

impl Repository {
    /// Loads `name` from its folder (with `given` as its config, if set): versions that
    /// are new or changed are loaded beside those serving and swapped in once READY;
    /// versions the policy no longer selects are retired once one it selects is READY.
    /// Blocking. The error names every part that failed; the rest is applied.
    pub fn load_model(
        self: &Arc<Self>,
        name: &str,
        given: Option<ModelConfig>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(), String> {
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(format!(
                "no folder '{name}' in the model repository {}",
                self.root.display()
            ));
        }
        let (config, selected) = match read_model(name, &dir, given) {
            Ok(read) => read,
            Err(reason) => {
                self.keep_serving_or_fail(name, &reason);
                return Err(reason);
            }
        };
        let entry = self.registry.entry(name).unwrap_or_default();
        let tasks: Vec<LoadTask> = selected
            .iter()
            .map(|&version| LoadTask {
                name: name.to_owned(),
                version,
                dir: dir.clone(),
                config: config.clone(),
                digest: digest(&dir, version, &config),
            })
            .filter(|task| match entry.versions.get(&task.version) {
                Some(VersionState::Ready(served)) => served.digest != task.digest,
                _ => true,
            })
            .collect();
        let serving: Vec<GpuClaim> = self
            .registry
            .served(None)
            .iter()
            .filter_map(|m| GpuClaim::of(&m.name, m.version, &m.config))
            .collect();
        let (tasks, refused) = self.split_by_gpu_budget(serving, tasks);
        let mut failures: Vec<String> = refused
            .into_iter()
            .map(|(task, reason)| {
                format!(
                    "version {}: refused, the serving versions kept: {reason}",
                    task.version
                )
            })
            .collect();
        self.registry.update(name, |entry| {
            entry.failure = None;
            entry.config.get_or_insert_with(|| config.clone());
            for task in &tasks {
                if !matches!(
                    entry.versions.get(&task.version),
                    Some(VersionState::Ready(_))
                ) {
                    entry.versions.insert(task.version, VersionState::Loading);
                }
            }
        });
        let changed = !tasks.is_empty();
        let loaded: Vec<(u64, Result<ServedModel, LoadError>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = tasks
                .into_iter()
                .map(|task| {
                    scope.spawn(move || {
                        let version = task.version;
                        (version, self.load_one(task, runtime))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("load threads catch their panics"))
                .collect()
        });
        for (version, result) in loaded {
            match result {
                Ok(model) => {
                    let replaced = self.registry.update(name, |entry| {
                        entry
                            .versions
                            .insert(version, VersionState::Ready(Arc::new(model)))
                    });
                    if let Some(VersionState::Ready(old)) = replaced {
                        info!(model = %name, version, "new config or files serving; the old copy drains");
                        self.drain(old, false);
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    warn!(model = %name, version, %reason, "load failed");
                    self.registry.update(name, |entry| {
                        if !matches!(entry.versions.get(&version), Some(VersionState::Ready(_))) {
                            entry.versions.insert(
                                version,
                                VersionState::Unavailable {
                                    reason: reason.clone(),
                                },
                            );
                        }
                    });
                    failures.push(format!("version {version}: {reason}"));
                }
            }
        }
        let failure = (!failures.is_empty()).then(|| failures.join("; "));
        // Versions the policy dropped go once a version it selects serves, so that a
        // failed new version leaves the old one serving.
        let retired = self.registry.update(name, |entry| {
            entry.reload_failure = failure.clone();
            let serving = selected
                .iter()
                .any(|v| matches!(entry.versions.get(v), Some(VersionState::Ready(_))));
            if !serving {
                return Vec::new();
            }
            entry.config = Some(config.clone());
            let mut retired = Vec::new();
            for (version, state) in entry.versions.iter_mut() {
                if selected.contains(version) {
                    continue;
                }
                retired.extend(retire(state));
            }
            retired
        });
        for model in retired {
            info!(model = %name, version = model.version, "version retired; it drains, then unloads");
            self.drain(model, true);
        }
        if changed {
            self.replan_ensembles_using(name);
        }
        failure.map_or(Ok(()), Err)
    }

    /// Takes every version of `name` out of service; each drains its admitted requests,
    /// then unloads. Returns whether the model was known.
    pub fn unload_model(self: &Arc<Self>, name: &str) -> bool {
        if self.registry.entry(name).is_none() {
            return false;
        }
        let retired = self.registry.update(name, |entry| {
            entry.reload_failure = None;
            entry.failure = None;
            let mut retired = Vec::new();
            for state in entry.versions.values_mut() {
                retired.extend(retire(state));
            }
            retired
        });
        for model in retired {
            info!(model = %name, version = model.version, "unloading once its requests finish");
            self.drain(model, true);
        }
        true
    }

    /// The ensembles that name `model` as a step.
    pub fn dependents(&self, model: &str) -> Vec<String> {
        self.registry
            .served(None)
            .iter()
            .filter(|m| {
                m.config
                    .ensemble_scheduling
                    .iter()
                    .flat_map(|s| &s.step)
                    .any(|step| step.model_name == model)
            })
            .map(|m| m.name.clone())
            .collect()
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

    /// After a step model changed, each ensemble using it is planned again against what
    /// now serves, and swapped in; one that no longer fits keeps its old plan, logged.
    fn replan_ensembles_using(self: &Arc<Self>, step_model: &str) {
        for ensemble in self
            .registry
            .served(None)
            .into_iter()
            .filter(|m| self.dependents(step_model).contains(&m.name))
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

    /// Drops `model` once the requests holding it have finished (its workers are joined
    /// on this thread, never on a request's), then marks it UNAVAILABLE "unloaded" if
    /// `mark_unloaded` and nothing has replaced it since.
    fn drain(self: &Arc<Self>, model: Arc<ServedModel>, mark_unloaded: bool) {
        let repository = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("wharf-drain-{}", model.name))
            .spawn(move || {
                while Arc::strong_count(&model) > 1 {
                    std::thread::sleep(DRAIN_CHECK);
                }
                let (name, version) = (model.name.clone(), model.version);
                drop(model);
                if mark_unloaded {
                    repository.registry.update(&name, |entry| {
                        if let Some(state @ VersionState::Unloading) =
                            entry.versions.get_mut(&version)
                        {
                            *state = VersionState::Unloaded;
                        }
                    });
                }
                info!(model = %name, version, "unloaded");
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a drain thread; the version is dropped when its last request ends");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::split_by_gpu_budget;
    use super::*;

    /// Writes `bytes` to `path` and dates it `age` ago.
    fn write_dated(path: &Path, bytes: &[u8], age: Duration) {
        std::fs::write(path, bytes).unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
    }

    /// Writes `bytes` to `path` and gives it back the modification time it had.
    fn rewrite_keeping_time(path: &Path, bytes: &[u8]) {
        let stamp = std::fs::metadata(path).unwrap().modified().unwrap();
        std::fs::write(path, bytes).unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(stamp).unwrap();
    }

    /// Until the last change to `path` is `window` old.
    fn wait_settled(path: &Path, window: Duration) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let changed = Stamp::of(path).unwrap().changed_at();
        while changed.elapsed().map_or(true, |age| age < window) {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock stands still"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_scan_reads_again_only_files_whose_stamp_changed_or_that_were_fresh() {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("m");
        std::fs::create_dir_all(model.join("1")).unwrap();
        let file = model.join("1").join("model.onnx");
        let old = Duration::from_secs(60);
        write_dated(&file, b"aaaa", old);
        // A short window, waited out: the inode's time cannot be set into the past.
        let mut cache = ScanCache {
            settle: Duration::from_millis(20),
            ..ScanCache::default()
        };
        wait_settled(&file, cache.settle);
        let first = digest_folders(root.path(), &mut cache)["m"];
        assert_eq!(digest_folders(root.path(), &mut cache)["m"], first);
        assert_eq!(cache.reads, 1, "an unchanged file is read once");

        // Same size and modification time, other bytes: the inode's time gives it away.
        rewrite_keeping_time(&file, b"bbbb");
        let second = digest_folders(root.path(), &mut cache)["m"];
        assert_ne!(second, first);
        assert_eq!(
            second,
            digest_folders(root.path(), &mut ScanCache::default())["m"]
        );
        // A version folder's link moved to another folder whose file has the same size and
        // modification time: another file, so it is read.
        let store = tempfile::tempdir().unwrap();
        let (a, b) = (store.path().join("a"), store.path().join("b"));
        for (folder, bytes) in [(&a, b"eeee"), (&b, b"ffff")] {
            std::fs::create_dir(folder).unwrap();
            write_dated(&folder.join("model.onnx"), bytes, old);
        }
        let stamp = std::fs::metadata(a.join("model.onnx")).unwrap().modified();
        let b_file = std::fs::File::options()
            .write(true)
            .open(b.join("model.onnx"));
        b_file.unwrap().set_modified(stamp.unwrap()).unwrap();
        std::os::unix::fs::symlink(&a, model.join("2")).unwrap();
        let with_a = digest_folders(root.path(), &mut cache)["m"];
        std::fs::remove_file(model.join("2")).unwrap();
        std::os::unix::fs::symlink(&b, model.join("2")).unwrap();
        assert_ne!(digest_folders(root.path(), &mut cache)["m"], with_a);
        std::fs::remove_file(model.join("2")).unwrap();

        // With the real window, a file changed just before it was read is read on every
        // scan until its change is older than the window.
        let mut cache = ScanCache::default();
        write_dated(&file, b"dddd", Duration::ZERO);
        digest_folders(root.path(), &mut cache);
        digest_folders(root.path(), &mut cache);
        assert_eq!(cache.reads, 2);

        // Files gone leave the cache with the scan.
        std::fs::remove_file(&file).unwrap();
        digest_folders(root.path(), &mut cache);
        assert!(cache.previous.is_empty());
    }

    #[test]
    fn a_scan_follows_links_to_folders_and_ends_on_a_link_to_a_folder_above() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let model = elsewhere.path().join("m");
        std::fs::create_dir_all(model.join("1")).unwrap();
        std::fs::write(model.join("1").join("model.onnx"), b"aaaa").unwrap();
        std::os::unix::fs::symlink(&model, root.path().join("m")).unwrap();
        // A version folder that is a link, holding a link back to the model's folder.
        std::fs::create_dir_all(elsewhere.path().join("v2")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("v2"), model.join("2")).unwrap();
        std::os::unix::fs::symlink(&model, elsewhere.path().join("v2").join("up")).unwrap();

        let first = digest_folders(root.path(), &mut ScanCache::default());
        assert_eq!(first.keys().collect::<Vec<_>>(), ["m"]);
        std::fs::write(elsewhere.path().join("v2").join("model.onnx"), b"b").unwrap();
        let second = digest_folders(root.path(), &mut ScanCache::default());
        assert_ne!(
            second["m"], first["m"],
            "a file under a linked version folder"
        );
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
