//! Scheduler overhead per request with 10,000 requests queued: admitting one and closing
//! the batches it joins, amortised per request.
//!
//!     cargo bench --bench scheduler

use std::{hint::black_box, time::Duration};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tokio::time::Instant;
use wharf::{
    batching::{BatchPolicy, Entry, Queue, Waiting},
    repository::config::TimeoutAction,
    tensor::DataType,
};

struct Request;

impl Waiting for Request {
    fn cancelled(&self) -> bool {
        false
    }
}

fn policy() -> BatchPolicy {
    BatchPolicy {
        enabled: true,
        max_rows: 8,
        form_rows: 8,
        preferred: vec![4, 8],
        max_queue_delay: Duration::from_millis(2),
        max_queue_size: 1 << 20,
        default_timeout: None,
        allow_timeout_override: true,
        timeout_action: TimeoutAction::Reject,
        priority_levels: 2,
        default_priority: 1,
        direct: false,
    }
}

fn entry(i: usize, at: Instant) -> Entry<Request> {
    Entry {
        // Four shapes, as a mixed OCR workload (text lines of four widths) would queue.
        key: vec![(DataType::Fp32, vec![3, 48, 160 * (1 + i % 4)])].into(),
        rows: 1,
        priority: 1 + (i % 2) as u32,
        enqueued: at,
        deadline: Some(at + Duration::from_secs(60)),
        payload: Request,
    }
}

fn scheduler(c: &mut Criterion) {
    let start = Instant::now();
    let full = || {
        let mut q = Queue::new(policy());
        for i in 0..10_000 {
            q.push(entry(i, start));
        }
        q
    };
    // 1,000 requests admitted and 1,000 dispatched against a queue holding 10,000.
    c.bench_function("queue_10k/admit_and_dispatch_1000", |b| {
        b.iter_batched(
            full,
            |mut q| {
                let now = start + Duration::from_millis(1);
                let mut sent = 0;
                for i in 0..1000 {
                    q.push(entry(10_000 + i, now));
                }
                q.expire(now);
                while sent < 1000 {
                    sent += q
                        .next_batch(now)
                        .expect("full groups are ready")
                        .batch
                        .len();
                }
                black_box(q.len())
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
