//! Per model version counters and cumulative durations, as Triton's ModelStatistics
//! reports them, so batching is visible from tritonclient.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A count and the total time it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub nanos: u64,
}

impl Tally {
    fn add(&mut self, d: Duration) {
        self.add_n(1, d);
    }

    fn add_n(&mut self, n: u64, d: Duration) {
        self.count += n;
        self.nanos += d.as_nanos() as u64;
    }
}

/// One batch size's executions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchTally {
    pub compute_input: Tally,
    pub compute_infer: Tally,
    pub compute_output: Tally,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Milliseconds since the epoch of the last answered request; 0 if none.
    pub last_inference_ms: u64,
    /// Rows answered successfully.
    pub inference_count: u64,
    /// Engine calls (batches, or their pieces where the cost curve split them).
    pub execution_count: u64,
    pub success: Tally,
    pub fail: Tally,
    pub queue: Tally,
    pub compute_input: Tally,
    pub compute_infer: Tally,
    pub compute_output: Tally,
    /// By rows per engine call.
    pub batches: BTreeMap<u64, BatchTally>,
    /// Requests answered DEADLINE_EXCEEDED while queued.
    pub expired: u64,
    /// Requests dropped uncomputed because their caller had gone.
    pub cancelled: u64,
}

#[derive(Debug, Default)]
pub struct ModelStats(Mutex<Snapshot>);

impl ModelStats {
    fn with(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.0.lock().expect("stats lock"));
    }

    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().expect("stats lock").clone()
    }

    pub fn record_queue(&self, waited: Duration) {
        self.with(|s| s.queue.add(waited));
    }

    pub fn record_expired(&self) {
        self.with(|s| s.expired += 1);
    }

    pub fn record_cancelled(&self) {
        self.with(|s| s.cancelled += 1);
    }

    /// One engine call of `rows` rows serving `requests` requests. Triton counts the
    /// compute durations per request, so each request is charged the call's time.
    pub fn record_execution(
        &self,
        rows: usize,
        requests: usize,
        input: Duration,
        infer: Duration,
        output: Duration,
    ) {
        self.with(|s| {
            s.execution_count += 1;
            let n = requests as u64;
            s.compute_input.add_n(n, input * requests as u32);
            s.compute_infer.add_n(n, infer * requests as u32);
            s.compute_output.add_n(n, output * requests as u32);
            let b = s.batches.entry(rows as u64).or_default();
            b.compute_input.add(input);
            b.compute_infer.add(infer);
            b.compute_output.add(output);
        });
    }

    pub fn record_success(&self, rows: usize, took: Duration) {
        self.with(|s| {
            s.inference_count += rows as u64;
            s.success.add(took);
            s.last_inference_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        });
    }

    pub fn record_failure(&self, took: Duration) {
        self.with(|s| s.fail.add(took));
    }
}
