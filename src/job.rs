//! The request path's shared vocabulary: a request's inputs as a job, the shape key that
//! groups jobs, the batch that runs in one call, and the share of backlog a job holds.
//! Below the scheduler, the workers and telemetry, which all build on it.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::{sync::oneshot, time::Instant};

use crate::{
    error::InferError,
    tensor::{DataType, Tensor},
};

/// The front end a request came in on: every per-request series carries it, so a
/// dashboard can tell a browser's traffic from the services'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Grpc,
    Http,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Grpc, Protocol::Http];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }
}

/// What can run together: every input's datatype and dims but the first (the rows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ShapeKey(Vec<(DataType, Vec<usize>)>);

impl ShapeKey {
    /// The key of a request's inputs.
    pub fn of(inputs: &[Tensor]) -> ShapeKey {
        ShapeKey(
            inputs
                .iter()
                .map(|t| (t.datatype, t.shape.get(1..).unwrap_or_default().to_vec()))
                .collect(),
        )
    }

    /// Elements in one row, all inputs together.
    pub fn elements_per_row(&self) -> usize {
        self.0
            .iter()
            .map(|(_, dims)| dims.iter().product::<usize>())
            .sum()
    }
}

impl From<Vec<(DataType, Vec<usize>)>> for ShapeKey {
    fn from(inputs: Vec<(DataType, Vec<usize>)>) -> ShapeKey {
        ShapeKey(inputs)
    }
}

pub type JobResult = Result<Vec<Tensor>, InferError>;

/// A request checked against its model, as `validate::admit` makes it: the only thing a
/// scheduler admits.
#[derive(Debug)]
pub struct ValidRequest {
    /// In the model's input order, every shape checked.
    pub inputs: Vec<Tensor>,
    /// The batch rows the inputs carry (1 for a model without a batch dimension).
    pub rows: usize,
    pub key: ShapeKey,
    /// The model's priority level, 1 the highest.
    pub priority: u32,
    pub arrived: Instant,
    /// The earlier of the queue timeout and the caller's deadline.
    pub deadline: Option<Instant>,
    pub protocol: Protocol,
    /// The model span of a traced request: its queue and engine spans go under it.
    pub trace: Option<crate::trace::TraceCx>,
}

/// One request's inputs (in the model's input order) and the way back to its caller.
pub struct Job {
    pub inputs: Vec<Tensor>,
    pub reply: oneshot::Sender<JobResult>,
    pub arrived: Instant,
    /// Past it the job is answered DEADLINE_EXCEEDED rather than run, wherever it waits
    /// (None: no deadline, or a policy that lets it wait on).
    pub deadline: Option<Instant>,
    /// The request's share of the model's backlog, released when the job is dropped.
    pub work: WorkToken,
    /// Its place in the queue's count where instances take jobs straight from their
    /// channel (`BatchPolicy::direct`), given back as an instance takes it; else none.
    pub slot: WorkToken,
    /// Its front end, for the metrics that count how it ends.
    pub protocol: Protocol,
    /// The model span of a traced request: its queue and engine spans go under it.
    pub trace: Option<crate::trace::TraceCx>,
}

/// Requests that may run together; their inputs share every dim but the first, along
/// which they are concatenated.
pub type Batch = Vec<Job>;

/// A share of a counter, given back on drop whichever way the request ends: a request's
/// estimated engine nanoseconds in its model's backlog, or its place in a queue's count.
#[derive(Debug)]
pub struct WorkToken(Option<(Arc<AtomicU64>, u64)>);

impl WorkToken {
    /// Adds `ns` to `backlog` until the token is dropped.
    pub fn hold(backlog: &Arc<AtomicU64>, ns: u64) -> WorkToken {
        backlog.fetch_add(ns, Ordering::Relaxed);
        WorkToken(Some((Arc::clone(backlog), ns)))
    }

    /// A share of `n` already added to `counter` (by whoever checked it against a bound).
    pub fn taken(counter: &Arc<AtomicU64>, n: u64) -> WorkToken {
        WorkToken(Some((Arc::clone(counter), n)))
    }

    /// For requests that no counter follows.
    pub fn none() -> WorkToken {
        WorkToken(None)
    }
}

impl Drop for WorkToken {
    fn drop(&mut self) {
        if let Some((backlog, ns)) = self.0.take() {
            backlog.fetch_sub(ns, Ordering::Relaxed);
        }
    }
}
