//! Content digests of model folders: what a version was loaded from (a reload with the same
//! digest changes nothing), and what a repository poll compares, reading only the files
//! whose stamps changed.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{config::ModelConfig, is_folder};

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

#[cfg(test)]
mod tests {
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
}
