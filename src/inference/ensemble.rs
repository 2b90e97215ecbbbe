//! Runs an ensemble's request: each step starts as soon as the tensors it reads exist, is
//! submitted to its model's own queue (so it batches with everything else sent there),
//! and its outputs stay in memory for the steps that read them. A step given more rows
//! than its model takes in one call is split; one given none is not called.

use std::sync::Arc;

use futures::{stream::FuturesUnordered, StreamExt};
use opentelemetry::KeyValue;
use tokio::time::Instant;

use super::{Answered, Inference};
use crate::{
    backend::BackendError,
    error::InferError,
    metrics::Protocol,
    repository::{ensemble::Step, Pipeline, ServedModel},
    request::InferRequest,
    tensor::{concat_rows, split_rows, Tensor},
    trace::TraceCx,
    validate,
};

/// What every step's request inherits from the ensemble's.
struct Inherited {
    id: String,
    priority: Option<u64>,
    timeout: Option<std::time::Duration>,
    /// The caller's deadline, as an instant.
    deadline: Option<Instant>,
    protocol: Protocol,
    /// The ensemble's span, where the request is traced: each step's span goes under it.
    trace: Option<TraceCx>,
}

pub(super) async fn run(
    core: &Inference,
    model: &ServedModel,
    pipeline: &Pipeline,
    mut request: InferRequest,
    arrived: Instant,
) -> Result<Answered, InferError> {
    let (inputs, rows) = validate::check(model, &mut request)?;
    let wanted: Vec<String> = if request.outputs.is_empty() {
        model.spec.outputs.iter().map(|o| o.name.clone()).collect()
    } else {
        std::mem::take(&mut request.outputs)
    };
    let needed = pipeline.needed(&wanted);
    let inherited = Inherited {
        id: request.id.clone(),
        priority: request.priority,
        timeout: request.timeout,
        deadline: request.deadline.and_then(|d| arrived.checked_add(d)),
        protocol: request.protocol,
        trace: request.trace.take(),
    };
    // Counts the steps a caller who leaves spares, when this future is dropped unfinished.
    let mut progress = Progress {
        pipeline,
        model,
        not_started: needed.iter().filter(|n| **n).count(),
        finished: false,
        protocol: request.protocol,
    };
    let outputs = drive(
        core,
        model,
        pipeline,
        inputs,
        &needed,
        &wanted,
        &inherited,
        &mut progress,
    )
    .await;
    progress.finished = true;
    Ok(Answered::new(model, request.id, rows, outputs?))
}

/// Starts each needed step once what it reads is held, until every wanted output is.
#[allow(clippy::too_many_arguments)]
async fn drive(
    core: &Inference,
    model: &ServedModel,
    pipeline: &Pipeline,
    inputs: Vec<Tensor>,
    needed: &[bool],
    wanted: &[String],
    inherited: &Inherited,
    progress: &mut Progress<'_>,
) -> Result<Vec<Tensor>, InferError> {
    let mut held = Held::new(model, pipeline, needed, wanted);
    for input in inputs {
        held.insert(input, || "its inputs".to_owned())?;
    }
    let mut started = vec![false; pipeline.steps.len()];
    let mut running = FuturesUnordered::new();
    loop {
        for (i, step) in pipeline.steps.iter().enumerate() {
            if !needed[i] || started[i] || !step.inputs.iter().all(|(_, t)| held.has(t)) {
                continue;
            }
            started[i] = true;
            progress.not_started -= 1;
            let inputs: Vec<Tensor> = step
                .inputs
                .iter()
                .map(|(input, tensor)| Tensor {
                    name: input.clone(),
                    ..held.read(tensor)
                })
                .collect();
            let call = run_step(core, model, step, inputs, inherited);
            running.push(async move { (step, call.await) });
        }
        let Some((step, result)) = running.next().await else {
            break;
        };
        let mut outputs = result.map_err(|source| InferError::Step {
            ensemble: model.name.clone(),
            step: step.label(),
            source: Box::new(source),
        })?;
        // Each step output is mapped once (output_map is keyed by it), so it is moved.
        for (output, tensor) in &step.outputs {
            let Some(at) = outputs.iter().position(|t| &t.name == output) else {
                return Err(InferError::Step {
                    ensemble: model.name.clone(),
                    step: step.label(),
                    source: Box::new(InferError::Backend {
                        model: step.model_name.clone(),
                        source: BackendError::BadOutput(format!("no output '{output}'")),
                    }),
                });
            };
            let mut renamed = outputs.swap_remove(at);
            renamed.name.clone_from(tensor);
            held.insert(renamed, || step.label())?;
        }
    }
    // Every wanted output has a needed writer (checked at load), and every needed step
    // has started and ended by now.
    Ok(wanted.iter().map(|name| held.take(name)).collect())
}

/// One step: its model looked up now (a reload between steps is seen), its rows split
/// into calls the model takes, each call queued with that model's own requests.
async fn run_step(
    core: &Inference,
    ensemble: &ServedModel,
    step: &Step,
    inputs: Vec<Tensor>,
    inherited: &Inherited,
) -> Result<Vec<Tensor>, InferError> {
    let model = core
        .repository()
        .registry()
        .get(&step.model_name, &step.version)?;
    let outputs: Vec<String> = step.outputs.iter().map(|(o, _)| o.clone()).collect();
    let rows = inputs.first().and_then(|t| t.shape.first().copied());
    let limit = model.max_rows();
    let calls = match rows {
        Some(0) if limit > 0 => 0,
        Some(rows) if limit > 0 => rows.div_ceil(limit),
        _ => 1,
    };
    let span = inherited.trace.as_ref().map(|parent| {
        parent.child(
            format!("step {}: {}", step.index, step.model_name),
            vec![
                KeyValue::new("wharf.step.index", step.index as i64),
                KeyValue::new("wharf.step.model", model.name.clone()),
                KeyValue::new("wharf.step.rows", rows.unwrap_or(1) as i64),
                KeyValue::new("wharf.step.fan_out", calls as i64),
            ],
        )
    });
    let result = step_calls(
        core,
        ensemble,
        step,
        &model,
        inputs,
        inherited,
        outputs,
        span.clone(),
    )
    .await;
    if let Some(span) = span {
        span.end(Vec::new(), result.as_ref().err().map(InferError::message));
    }
    result
}

/// A step's calls: none where it has no rows, several where its rows pass the model's
/// limit, else one.
#[allow(clippy::too_many_arguments)]
async fn step_calls(
    core: &Inference,
    ensemble: &ServedModel,
    step: &Step,
    model: &Arc<ServedModel>,
    inputs: Vec<Tensor>,
    inherited: &Inherited,
    outputs: Vec<String>,
    trace: Option<TraceCx>,
) -> Result<Vec<Tensor>, InferError> {
    let rows = inputs.first().and_then(|t| t.shape.first().copied());
    let limit = model.max_rows();
    let request = |inputs: Vec<Tensor>| InferRequest {
        model_name: model.name.clone(),
        model_version: model.version.to_string(),
        id: inherited.id.clone(),
        inputs,
        outputs: outputs.clone(),
        classification: Vec::new(),
        priority: inherited.priority,
        timeout: inherited.timeout,
        deadline: inherited
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now())),
        protocol: inherited.protocol,
        trace: trace.clone(),
    };
    match rows {
        // Nothing to compute (a detector that found no text): the outputs are empty.
        Some(0) if limit > 0 => Ok(empty_outputs(model, ensemble, step)),
        Some(rows) if limit > 0 && rows > limit => {
            let cuts: Vec<usize> = (0..rows)
                .step_by(limit)
                .map(|start| limit.min(rows - start))
                .collect();
            let mut pieces: Vec<Vec<Tensor>> = vec![Vec::new(); cuts.len()];
            for input in inputs {
                let parts = split_rows(input, &cuts).map_err(InferError::invalid)?;
                for (piece, part) in pieces.iter_mut().zip(parts) {
                    piece.push(part);
                }
            }
            let calls = pieces
                .into_iter()
                .map(|piece| Box::pin(core.serve(Arc::clone(model), request(piece))));
            let answers = futures::future::try_join_all(calls).await?;
            Ok(outputs
                .iter()
                .map(|name| {
                    let parts: Vec<&Tensor> = answers
                        .iter()
                        .filter_map(|a| a.outputs.iter().find(|t| &t.name == name))
                        .collect();
                    concat_rows(&parts)
                })
                .collect())
        }
        _ => Ok(Box::pin(core.serve(Arc::clone(model), request(inputs)))
            .await?
            .outputs),
    }
}

/// Zero-row outputs, as a call of zero rows would give them: open dims are 0, or what the
/// ensemble declares for the tensor where it is one of its outputs.
fn empty_outputs(model: &ServedModel, ensemble: &ServedModel, step: &Step) -> Vec<Tensor> {
    step.outputs
        .iter()
        .filter_map(|(output, tensor)| {
            let spec = model.spec.outputs.iter().find(|o| &o.name == output)?;
            let declared = ensemble
                .spec
                .outputs
                .iter()
                .find(|o| &o.name == tensor)
                .map(|o| ensemble.spec.full_dims(o, 0));
            let dims = model.spec.full_dims(spec, 0);
            let shape = dims
                .iter()
                .enumerate()
                .map(|(i, d)| match declared.as_ref().and_then(|e| e.get(i)) {
                    Some(e) if *d < 0 => (*e).max(0) as usize,
                    _ => (*d).max(0) as usize,
                })
                .collect();
            Some(Tensor::zeros(output, spec.datatype, shape))
        })
        .collect()
}

/// The tensors a request holds between steps, each kept only while a step yet to start
/// (or the answer) reads it, and their bytes counted against the ensemble's limit.
/// Vectors searched by name, not maps: a pipeline has a handful of tensors, and hashing
/// them cost more than the search.
struct Held<'a> {
    model: &'a ServedModel,
    limit: u64,
    tensors: Vec<Tensor>,
    /// Readers still to come per tensor: needed steps not started, plus the answer.
    readers: Vec<(&'a str, usize)>,
    bytes: u64,
}

impl<'a> Held<'a> {
    fn new(
        model: &'a ServedModel,
        pipeline: &'a Pipeline,
        needed: &[bool],
        wanted: &'a [String],
    ) -> Held<'a> {
        let mut readers: Vec<(&str, usize)> = Vec::new();
        let reads = pipeline
            .steps
            .iter()
            .zip(needed)
            .filter(|(_, needed)| **needed)
            .flat_map(|(step, _)| step.inputs.iter().map(|(_, t)| t.as_str()));
        for tensor in reads.chain(wanted.iter().map(String::as_str)) {
            match readers.iter_mut().find(|(name, _)| *name == tensor) {
                Some((_, count)) => *count += 1,
                None => readers.push((tensor, 1)),
            }
        }
        Held {
            model,
            limit: pipeline.max_intermediate_bytes,
            tensors: Vec::new(),
            readers,
            bytes: 0,
        }
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.iter().any(|t| t.name == name)
    }

    /// Keeps `tensor` if anything reads it; refuses it past the byte limit, naming what
    /// produced it (`by`, formatted only then).
    fn insert(&mut self, tensor: Tensor, by: impl FnOnce() -> String) -> Result<(), InferError> {
        if !self.readers.iter().any(|(name, _)| *name == tensor.name) {
            return Ok(());
        }
        let bytes = self.bytes + tensor.byte_size() as u64;
        if bytes > self.limit {
            return Err(InferError::IntermediateBytes {
                ensemble: self.model.name.clone(),
                step: by(),
                held: bytesize::ByteSize::b(bytes),
                limit: bytesize::ByteSize::b(self.limit),
            });
        }
        self.bytes = bytes;
        self.tensors.push(tensor);
        Ok(())
    }

    /// One reader's copy (its data shared, not copied); the last reader takes it.
    fn read(&mut self, name: &str) -> Tensor {
        let (_, left) = self
            .readers
            .iter_mut()
            .find(|(reader, _)| *reader == name)
            .expect("counted at start");
        *left -= 1;
        if *left == 0 {
            self.take(name)
        } else {
            self.tensors
                .iter()
                .find(|t| t.name == name)
                .expect("written before read")
                .clone()
        }
    }

    fn take(&mut self, name: &str) -> Tensor {
        let at = self
            .tensors
            .iter()
            .position(|t| t.name == name)
            .expect("written before read");
        let tensor = self.tensors.swap_remove(at);
        self.bytes -= tensor.byte_size() as u64;
        tensor
    }
}

/// Counts, when a request is dropped unfinished (its caller left), the steps it never
/// started; those running were cancelled with it.
struct Progress<'a> {
    pipeline: &'a Pipeline,
    model: &'a ServedModel,
    not_started: usize,
    finished: bool,
    protocol: Protocol,
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.model.stats.record_cancelled(self.protocol);
            self.pipeline
                .steps_cancelled
                .increment(self.not_started as u64);
        }
    }
}
