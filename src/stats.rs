//! Per model version telemetry, recorded once where each decision is made: Triton's
//! ModelStatistics counters (so batching is visible from tritonclient) and the Prometheus
//! metrics beside them.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    error::InferError,
    metrics::{Backlog, ModelMetrics, Outcome, Protocol},
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

pub struct ModelStats {
    snapshot: Mutex<Snapshot>,
    pub metrics: ModelMetrics,
    pub backlog: Arc<Backlog>,
}

impl Default for ModelStats {
    /// Triton's counters only, no Prometheus series (tests of the parts).
    fn default() -> Self {
        ModelStats::new(
            ModelMetrics::noop(),
            Backlog::new(1, Duration::from_secs(1)),
        )
    }
}

impl ModelStats {
    pub fn new(metrics: ModelMetrics, backlog: Arc<Backlog>) -> ModelStats {
        ModelStats {
            snapshot: Mutex::default(),
            metrics,
            backlog,
        }
    }

    fn with(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.snapshot.lock().expect("stats lock"));
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().expect("stats lock").clone()
    }

    /// Requests admitted and not yet taken by an instance, after a change.
    pub fn record_pending(&self, waiting: usize) {
        self.metrics.pending.set(waiting as f64);
    }

    /// Instances running a batch, after one starts or ends.
    pub fn record_busy(&self, busy: usize) {
        self.metrics.instances_busy.set(busy as f64);
    }

    pub fn record_queue(&self, waited: Duration) {
        self.with(|s| s.queue.add(waited));
        self.metrics.queue_duration.record(waited.as_secs_f64());
    }

    /// Refused at the door: the queue was full.
    pub fn record_rejected(&self, protocol: Protocol) {
        self.metrics.ended(protocol, Outcome::QueueFull, 1);
        self.backlog.refuse();
    }

    pub fn record_expired(&self, protocol: Protocol) {
        self.with(|s| s.expired += 1);
        self.metrics.ended(protocol, Outcome::Timeout, 1);
    }

    pub fn record_cancelled(&self, protocol: Protocol) {
        self.with(|s| s.cancelled += 1);
        self.metrics.ended(protocol, Outcome::Cancelled, 1);
    }

    /// The engine failed on a call carrying this request.
    pub fn record_backend_error(&self, protocol: Protocol) {
        self.metrics.ended(protocol, Outcome::BackendError, 1);
    }

    /// An engine call panicked (its requests are counted where they end).
    pub fn record_panic(&self) {
        self.metrics.engine_panics.increment(1);
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
        let took = input + infer + output;
        self.metrics.executions.increment(1);
        self.metrics.inferences.increment(rows as u64);
        self.metrics.compute_duration.record(took.as_secs_f64());
        self.metrics.batch_rows.record(rows as f64);
        self.backlog.observe_row_cost(took / rows.max(1) as u32);
    }

    pub fn record_success(&self, protocol: Protocol, rows: usize, took: Duration) {
        self.with(|s| {
            s.inference_count += rows as u64;
            s.success.add(took);
            s.last_inference_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        });
        self.metrics.ended(protocol, Outcome::Success, 1);
        self.metrics.answered(protocol, took);
    }

    /// An ensemble's failure: no queue or worker counts its outcome, so it is counted
    /// here from the error, a step's by the step's own error.
    pub fn record_pipeline_failure(&self, protocol: Protocol, error: &InferError, took: Duration) {
        self.with(|s| s.fail.add(took));
        let outcome = match error.root() {
            InferError::InvalidArgument(_) => Outcome::Invalid,
            InferError::QueueFull { .. }
            | InferError::InflightBytes(_)
            | InferError::IntermediateBytes { .. } => Outcome::QueueFull,
            InferError::DeadlineExceeded { .. } => Outcome::Timeout,
            _ => Outcome::BackendError,
        };
        self.metrics.ended(protocol, outcome, 1);
    }

    /// Any failure, for Triton's tally. The outcome is counted here only for the errors
    /// decided by the request itself (validation, a worker that vanished); the queue and
    /// the workers count theirs where they decide them.
    pub fn record_failure(&self, protocol: Protocol, error: &InferError, took: Duration) {
        self.with(|s| s.fail.add(took));
        match error {
            InferError::InvalidArgument(_) => self.metrics.ended(protocol, Outcome::Invalid, 1),
            InferError::WorkerGone(_) => self.metrics.ended(protocol, Outcome::BackendError, 1),
            _ => {}
        }
    }
}
