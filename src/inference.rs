//! The serving core shared by unary and streaming RPCs: find the model, validate, queue,
//! await the worker's answer. Knows nothing of protobuf.

use std::{sync::Arc, time::Instant};

use tokio::sync::{oneshot, watch};

use crate::{
    error::InferError, repository::Repository, shutdown::InFlight, tensor::Tensor, validate,
    workers::Job,
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

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, InferError> {
        // Counted before the drain check, so a drain that sees zero cannot miss this one.
        let _admitted = self.in_flight.admit();
        if self.is_draining() {
            return Err(InferError::ShuttingDown);
        }
        let model = self
            .repository
            .get(&request.model_name, &request.model_version)?;
        validate::requested_outputs(&model.name, &model.spec, &request.outputs)?;
        let (inputs, _rows) = validate::inputs(&model.name, &model.spec, request.inputs)?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            reply,
            enqueued: Instant::now(),
        };
        model
            .pool
            .try_submit(vec![job])
            .map_err(|_| InferError::QueueFull {
                model: model.name.clone(),
                capacity: model.pool.capacity(),
            })?;
        // Dropping this future (the caller went away) closes `answer`, which the worker
        // checks before computing.
        let outputs = answer
            .await
            .map_err(|_| InferError::WorkerGone(model.name.clone()))?
            .map_err(|source| InferError::Backend {
                model: model.name.clone(),
                source,
            })?;
        let outputs = if request.outputs.is_empty() {
            outputs
        } else {
            request
                .outputs
                .iter()
                .filter_map(|name| outputs.iter().find(|o| &o.name == name).cloned())
                .collect()
        };
        Ok(InferResponse {
            model_name: model.name.clone(),
            model_version: model.version.to_string(),
            id: request.id,
            outputs,
        })
    }
}
