//! One poll-mode scan of a model repository (8 models of 16 MiB each): reading and hashing
//! every file, as each scan did, against the scan cache, which reads again only files whose
//! stamp (inode, size, modification and change times) changed.
//!
//!     cargo bench --bench repository_scan

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use wharf::repository::digest::{digest_folders, ScanCache};

const MODELS: usize = 8;
const MODEL_BYTES: usize = 16 << 20;

fn repository() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    for m in 0..MODELS {
        let version = root.path().join(format!("model_{m}")).join("1");
        std::fs::create_dir_all(&version).expect("model folder");
        let file = version.join("model.onnx");
        // Settled (changed over 2 s before a scan reads it) by the time the cached scans
        // run: the first group of the bench takes longer than that.
        std::fs::write(&file, vec![m as u8; MODEL_BYTES]).expect("model file");
        std::fs::write(
            root.path().join(format!("model_{m}")).join("config.yaml"),
            "max_batch_size: 8\n",
        )
        .expect("config");
    }
    root
}

fn scan(c: &mut Criterion) {
    let root = repository();
    let mut group = c.benchmark_group("repository_scan_128MiB");
    group.sample_size(10);
    group.bench_function("every file read", |b| {
        b.iter(|| black_box(digest_folders(root.path(), &mut ScanCache::default())))
    });
    let mut cache = ScanCache::default();
    digest_folders(root.path(), &mut cache);
    group.bench_function("scan cache", |b| {
        b.iter(|| black_box(digest_folders(root.path(), &mut cache)))
    });
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
