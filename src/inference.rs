//! The serving core shared by unary and streaming RPCs: find the model, validate, queue,
//! await the worker's answer. Knows nothing of protobuf.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};
use tracing::debug;

use crate::{
    batching::{Entry, Scheduler},
    error::InferError,
    job::{Job, ShapeKey},
    metrics::Refusal,
    repository::{Repository, ServedModel},
    shutdown::InFlight,
    tensor::Tensor,
    validate,
};

/// A decoded request: inputs already checked against the protocol, not yet the model.
#[derive(Debug)]
pub struct InferRequest {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub inputs: Vec<Tensor>,
    /// Output names asked for; empty means all.
    pub outputs: Vec<String>,
    /// The `priority` parameter: 1 is the highest; None or 0 for the model's default.
    pub priority: Option<u64>,
    /// The `timeout` parameter: how long the request may wait in the queue.
    pub timeout: Option<Duration>,
    /// What is left of the caller's gRPC deadline on arrival.
    pub deadline: Option<Duration>,
}

#[derive(Debug)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<Tensor>,
}

pub struct Inference {
    repository: Arc<Repository>,
    draining: watch::Sender<bool>,
    in_flight: InFlight,
}

impl Inference {
    pub fn new(repository: Arc<Repository>) -> Inference {
        Inference {
            repository,
            draining: watch::channel(false).0,
            in_flight: InFlight::default(),
        }
    }

    pub fn repository(&self) -> &Arc<Repository> {
        &self.repository
    }

    /// From now on new requests are refused; those admitted run to completion.
    pub fn begin_drain(&self) {
        self.draining.send_replace(true);
    }

    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// The server's readiness, the one rule for ServerReady, gRPC health and `/ready`: not
    /// draining, loading settled, and (`strict`, Triton's default) every model READY.
    pub fn server_ready(&self, strict: bool) -> bool {
        let registry = self.repository.registry();
        !self.is_draining() && registry.settled() && (!strict || registry.all_ready())
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, InferError> {
        // Counted before the drain check, so a drain that sees zero cannot miss this one.
        let _admitted = self.in_flight.admit();
        let metrics = self.repository.metrics();
        if self.is_draining() {
            metrics.refused(Refusal::ShuttingDown);
            return Err(InferError::ShuttingDown);
        }
        let model = self
            .repository
            .registry()
            .get(&request.model_name, &request.model_version)
            .inspect_err(|e| {
                metrics.refused(match e {
                    InferError::ModelUnavailable { .. } => Refusal::ModelUnavailable,
                    _ => Refusal::UnknownModel,
                })
            })?;
        let arrived = Instant::now();
        // Kept only when the per-request line is asked for: no copy on the hot path.
        let id = tracing::enabled!(tracing::Level::DEBUG).then(|| request.id.clone());
        let result = Self::run(&model, request, arrived).await;
        let took = arrived.elapsed();
        match &result {
            Ok(response) => model.stats.record_success(response.rows, took),
            Err(e) => model.stats.record_failure(e, took),
        }
        debug!(
            model = %model.name,
            version = model.version,
            id = id.as_deref().unwrap_or_default(),
            ok = result.is_ok(),
            took_us = took.as_micros() as u64,
            "request answered"
        );
        result.map(|r| r.response)
    }

    async fn run(
        model: &ServedModel,
        request: InferRequest,
        arrived: Instant,
    ) -> Result<Answered, InferError> {
        validate::requested_outputs(&model.name, &model.spec, &request.outputs)?;
        let policy = model.scheduler.policy();
        let (inputs, rows) = validate::inputs(&model.name, &model.spec, request.inputs)?;
        if rows > policy.max_rows && model.spec.max_batch_size > 0 {
            return Err(InferError::invalid(format!(
                "batch size {rows} does not fit model '{}': its memory budget allows {} rows per call",
                model.name, policy.max_rows
            )));
        }
        let priority = policy
            .priority(request.priority)
            .map_err(InferError::invalid)?;
        let timeout = match request.timeout {
            Some(t) if policy.allow_timeout_override || policy.default_timeout.is_none() => Some(t),
            _ => policy.default_timeout,
        };
        // A wait too long to represent is no deadline at all (a caller may send any
        // grpc-timeout).
        let deadline = [timeout, request.deadline]
            .into_iter()
            .flatten()
            .min()
            .and_then(|d| arrived.checked_add(d));
        let (reply, answer) = oneshot::channel();
        let key = ShapeKey::of(&inputs);
        let stats = &model.stats;
        let work = stats.backlog.arrive(model.work.nanos(
            &key,
            rows,
            stats.backlog.observed_row_ns(),
        ));
        model.scheduler.submit(Entry {
            key,
            rows,
            priority,
            enqueued: arrived,
            deadline,
            payload: Job {
                inputs,
                reply,
                work,
            },
        })?;
        // Dropping this future (the caller went away) closes `answer`, which the scheduler
        // and the worker check before computing, and tells the scheduler to free the slot.
        let waiter = Waiter(Some(&model.scheduler));
        let answered = answer.await;
        waiter.answered();
        let outputs = answered.map_err(|_| InferError::WorkerGone(model.name.clone()))??;
        let outputs = if request.outputs.is_empty() {
            outputs
        } else {
            request
                .outputs
                .iter()
                .filter_map(|name| outputs.iter().find(|o| &o.name == name).cloned())
                .collect()
        };
        Ok(Answered {
            rows,
            response: InferResponse {
                model_name: model.name.clone(),
                model_version: model.version.to_string(),
                id: request.id,
                outputs,
            },
        })
    }
}

/// A request waiting for its answer; dropped unanswered, it tells the scheduler its caller
/// has gone.
struct Waiter<'a>(Option<&'a Scheduler>);

impl Waiter<'_> {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let Some(scheduler) = self.0 {
            scheduler.caller_left();
        }
    }
}

struct Answered {
    rows: usize,
    response: InferResponse,
}
