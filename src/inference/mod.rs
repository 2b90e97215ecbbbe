//! The serving core shared by unary and streaming RPCs: find the model, validate, queue,
//! await the worker's answer, or run an ensemble's steps (`ensemble`). Knows nothing of
//! protobuf.

mod classify;
mod ensemble;

use std::sync::Arc;

use opentelemetry::KeyValue;
use tokio::{sync::oneshot, time::Instant};
use tracing::debug;

pub use crate::request::{InferRequest, InferResponse};
use crate::{
    batching::Scheduler,
    error::InferError,
    metrics::Refusal,
    repository::{EngineRunner, Repository, Runner, ServedModel},
    shutdown::{Drain, InFlight},
    tensor::Tensor,
    trace::Tracing,
    validate,
};

pub struct Inference {
    repository: Arc<Repository>,
    drain: Drain,
    in_flight: InFlight,
    tracing: Arc<Tracing>,
}

impl Inference {
    pub fn new(repository: Arc<Repository>, drain: Drain, tracing: Arc<Tracing>) -> Inference {
        Inference {
            repository,
            drain,
            in_flight: InFlight::default(),
            tracing,
        }
    }

    /// Which requests are traced, and where their spans go.
    pub fn tracing(&self) -> &Tracing {
        &self.tracing
    }

    pub fn repository(&self) -> &Arc<Repository> {
        &self.repository
    }

    /// The server's drain handle: once signaled, new requests are refused and those
    /// admitted run to completion.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_signaled()
    }

    /// The server's readiness, the one rule for ServerReady, gRPC health and `/ready`: not
    /// draining, the start-up load finished, and (`strict`, Triton's default) every model READY
    /// (a LOADING version counts as not READY, as in Triton).
    pub fn server_ready(&self, strict: bool) -> bool {
        let registry = self.repository.registry();
        !self.is_draining() && registry.started() && (!strict || registry.all_ready())
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    pub async fn infer(&self, mut request: InferRequest) -> Result<InferResponse, InferError> {
        // Counted before the drain check, so a drain that sees zero cannot miss this one.
        let _admitted = self.in_flight.admit();
        let metrics = self.repository.metrics();
        if self.is_draining() {
            metrics.refused(request.protocol, Refusal::ShuttingDown);
            return Err(InferError::ShuttingDown);
        }
        let model = self
            .repository
            .registry()
            .get(&request.model_name, &request.model_version)
            .inspect_err(|e| {
                metrics.refused(
                    request.protocol,
                    match e {
                        InferError::ModelUnavailable { .. } => Refusal::ModelUnavailable,
                        _ => Refusal::UnknownModel,
                    },
                )
            })?;
        if request.classification.is_empty() {
            return self.serve(model, request).await;
        }
        let classes = std::mem::take(&mut request.classification);
        let mut response = self.serve(Arc::clone(&model), request).await?;
        let batched = model.spec.max_batch_size > 0;
        for output in std::mem::take(&mut response.outputs) {
            let output = match classes.iter().find(|(name, _)| *name == output.name) {
                Some((name, count)) => {
                    classify::top_classes(output, *count, batched, model.labels.of(name))?
                }
                None => output,
            };
            response.outputs.push(output);
        }
        Ok(response)
    }

    /// One model version's answer to a request, recorded in its statistics: what a
    /// caller's request and an ensemble's step both go through.
    async fn serve(
        &self,
        model: Arc<ServedModel>,
        mut request: InferRequest,
    ) -> Result<InferResponse, InferError> {
        // A traced request's span for this model version: its queue and compute spans, or
        // an ensemble's steps, go under it. Started first, so that it holds them all.
        let span = request.trace.take().map(|parent| {
            parent.child(
                model.name.clone(),
                vec![
                    KeyValue::new("wharf.model", model.name.clone()),
                    KeyValue::new("wharf.model_version", model.version.to_string()),
                    KeyValue::new("wharf.request_id", request.id.clone()),
                ],
            )
        });
        request.trace.clone_from(&span);
        let arrived = Instant::now();
        // Kept only when the per-request line is asked for: no copy on the hot path.
        let id = tracing::enabled!(tracing::Level::DEBUG).then(|| request.id.clone());
        let protocol = request.protocol;
        let result = match model.runner() {
            Runner::Engine(engine) => Self::run(&model, engine, request, arrived).await,
            // Boxed: a pipeline's state would otherwise be part of every request's future,
            // copied as the transport moves it.
            Runner::Ensemble(pipeline) => {
                Box::pin(ensemble::run(self, &model, pipeline, request, arrived)).await
            }
        };
        let took = arrived.elapsed();
        if let Some(span) = span {
            let rows = result.as_ref().map_or(0, |r| r.rows);
            let error = result.as_ref().err().map(InferError::message);
            span.end(vec![KeyValue::new("wharf.rows", rows as i64)], error);
        }
        match &result {
            Ok(response) => model.stats.record_success(protocol, response.rows, took),
            Err(e) if matches!(model.runner(), Runner::Ensemble(_)) => {
                model.stats.record_pipeline_failure(protocol, e, took)
            }
            Err(e) => model.stats.record_failure(protocol, e, took),
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
        engine: &EngineRunner,
        mut request: InferRequest,
        arrived: Instant,
    ) -> Result<Answered, InferError> {
        let valid = validate::admit(model, engine, &mut request, arrived)?;
        let rows = valid.rows;
        let (reply, answer) = oneshot::channel();
        let stats = &model.stats;
        let work = stats.backlog.arrive(engine.work.nanos(
            &valid.key,
            rows,
            stats.backlog.observed_row_ns(),
        ));
        engine.scheduler.submit(valid, reply, work)?;
        // Dropping this future (the caller went away) closes `answer`, which the scheduler
        // and the worker check before computing, and tells the scheduler to free the slot.
        let waiter = Waiter(Some(&engine.scheduler));
        let answered = answer.await;
        waiter.answered();
        let outputs = answered.map_err(|_| InferError::WorkerGone(model.name.clone()))??;
        let outputs = if request.outputs.is_empty() {
            outputs
        } else {
            // Moved, not copied; a name asked for twice gets a second copy.
            let mut left = outputs;
            let mut picked: Vec<Tensor> = Vec::with_capacity(request.outputs.len());
            for name in &request.outputs {
                if let Some(at) = left.iter().position(|o| &o.name == name) {
                    picked.push(left.swap_remove(at));
                } else if let Some(again) = picked.iter().find(|o| &o.name == name) {
                    picked.push(again.clone());
                }
            }
            picked
        };
        Ok(Answered::new(model, request.id, rows, outputs))
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

impl Answered {
    fn new(model: &ServedModel, id: String, rows: usize, outputs: Vec<Tensor>) -> Answered {
        Answered {
            rows,
            response: InferResponse {
                model_name: model.name.clone(),
                model_version: model.version.to_string(),
                id,
                outputs,
            },
        }
    }
}
