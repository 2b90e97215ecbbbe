//! The worker pool: OS threads per model fed through a bounded crossbeam channel. Each
//! thread owns one engine instance, runs the batches the scheduler closes (as pieces where
//! the measured cost curve says that is cheaper), and answers each request by its oneshot.

use std::{
    collections::HashMap,
    sync::Arc,
    thread::{self, JoinHandle},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{mpsc, oneshot};

use crate::{
    backend::{Instance, Model},
    batching::{cost::CostCurve, ShapeKey},
    error::InferError,
    metrics::saturation::WorkToken,
    stats::ModelStats,
    tensor::{Tensor, TensorData},
};

pub type JobResult = Result<Vec<Tensor>, InferError>;

/// One request's inputs (in the model's input order) and the way back to its caller.
pub struct Job {
    pub inputs: Vec<Tensor>,
    pub reply: oneshot::Sender<JobResult>,
    /// The request's share of the model's backlog, released when the job is dropped.
    pub work: WorkToken,
}

/// Requests that may run together; their inputs share every dim but the first, along
/// which they are concatenated.
pub type Batch = Vec<Job>;

/// Cost curves by shape key, measured at warmup; shapes not measured use `fallback`.
#[derive(Debug, Clone, Default)]
pub struct CostCurves {
    pub by_shape: HashMap<ShapeKey, CostCurve>,
    pub fallback: CostCurve,
}

impl CostCurves {
    fn for_shape(&self, key: &ShapeKey) -> &CostCurve {
        self.by_shape.get(key).unwrap_or(&self.fallback)
    }
}

/// The shape key of a request's inputs (all dims but the first).
pub fn shape_key(inputs: &[Tensor]) -> ShapeKey {
    inputs
        .iter()
        .map(|t| (t.datatype, t.shape.get(1..).unwrap_or_default().to_vec()))
        .collect()
}

pub struct WorkerPool {
    threads: Vec<JoinHandle<()>>,
}

/// What every worker of a model shares.
pub struct WorkerContext {
    pub model_name: String,
    pub model: Arc<dyn Model>,
    pub costs: CostCurves,
    pub stats: Arc<ModelStats>,
    /// Whether inputs carry a batch dimension to concatenate along.
    pub batched: bool,
    /// Pad every formed batch with zero rows to this many (batched models only): an engine that prepares each
    /// input shape anew (cuDNN on a GPU) then sees one shape per model, and on a GPU the
    /// extra rows cost next to nothing. None: calls carry the rows they were given.
    pub pad_rows: Option<usize>,
}

impl WorkerPool {
    /// Starts `instances` threads, each building its own engine instance and running the
    /// `warm` inputs on it, and waits until all are ready. They take batches from the
    /// returned sender (one slot per instance: the scheduler only sends to an idle one)
    /// and say `done` after each, so the scheduler knows an instance is free.
    pub fn start(
        context: Arc<WorkerContext>,
        instances: usize,
        done: mpsc::Sender<()>,
        warm: Vec<Vec<Tensor>>,
    ) -> Result<(WorkerPool, Sender<Batch>), String> {
        let warm = Arc::new(warm);
        let (sender, batches) = crossbeam_channel::bounded::<Batch>(instances.max(1));
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(instances);
        let mut pool = WorkerPool {
            threads: Vec::with_capacity(instances),
        };
        for i in 0..instances {
            let (context, batches, done, ready_tx, warm) = (
                Arc::clone(&context),
                batches.clone(),
                done.clone(),
                ready_tx.clone(),
                Arc::clone(&warm),
            );
            let spawned = thread::Builder::new()
                .name(format!("wharf-{}-{i}", context.model_name))
                .spawn(move || work(&context, batches, done, ready_tx, warm));
            match spawned {
                Ok(handle) => pool.threads.push(handle),
                Err(e) => {
                    drop(sender); // lets the threads already started end, so they join
                    return Err(format!("cannot start worker thread {i}: {e}"));
                }
            }
        }
        drop(ready_tx);
        let failed: Vec<String> = ready
            .iter()
            .take(instances)
            .filter_map(Result::err)
            .collect();
        if let Some(first) = failed.into_iter().next() {
            drop(sender);
            return Err(format!("cannot create an instance: {first}"));
        }
        Ok((pool, sender))
    }
}

impl Drop for WorkerPool {
    /// Joins the instances once their channel is closed and what they hold is done.
    fn drop(&mut self) {
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

fn work(
    context: &WorkerContext,
    batches: Receiver<Batch>,
    done: mpsc::Sender<()>,
    ready: std::sync::mpsc::SyncSender<Result<(), String>>,
    warm: Arc<Vec<Vec<Tensor>>>,
) {
    let warmed = Arc::clone(&context.model)
        .new_instance()
        .map_err(|e| e.to_string())
        .and_then(|mut instance| {
            // Twice: ONNX Runtime traces a new shape's memory on its first run and sets up
            // its memory pattern on the second, and neither should land on a request.
            for inputs in warm.iter().flat_map(|inputs| [inputs, inputs]) {
                instance.run(inputs).map_err(|e| {
                    let shapes: Vec<_> = inputs.iter().map(|t| &t.shape).collect();
                    format!("warming it at {shapes:?} failed: {e}")
                })?;
            }
            Ok(instance)
        });
    drop(warm);
    let mut instance = match warmed {
        Ok(instance) => {
            let _ = ready.send(Ok(()));
            drop(ready);
            instance
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    for batch in batches {
        // A caller that has gone costs nothing more.
        let (live, gone): (Batch, Batch) =
            batch.into_iter().partition(|job| !job.reply.is_closed());
        for _ in gone {
            context.stats.record_cancelled();
        }
        if !live.is_empty() {
            if context.pad_rows.is_some() {
                // Padded, every call costs the same: one call for the whole batch.
                run_piece(context, instance.as_mut(), live);
            } else if context.batched {
                let rows: Vec<usize> = live.iter().map(|j| j.inputs[0].shape[0]).collect();
                let pieces = context
                    .costs
                    .for_shape(&shape_key(&live[0].inputs))
                    .plan(&rows);
                let mut jobs = live.into_iter();
                for size in pieces {
                    run_piece(
                        context,
                        instance.as_mut(),
                        jobs.by_ref().take(size).collect(),
                    );
                }
            } else {
                for job in live {
                    run_piece(context, instance.as_mut(), vec![job]);
                }
            }
        }
        // The scheduler may be gone (unloading); then nobody needs to know.
        let _ = done.blocking_send(());
    }
}

/// One engine call for `jobs`: concatenated, run, split back.
fn run_piece(context: &WorkerContext, instance: &mut dyn Instance, jobs: Batch) {
    let started = Instant::now();
    // A model without a batch dimension takes one request as one row, whatever its shape.
    let rows: Vec<usize> = jobs
        .iter()
        .map(|j| match j.inputs.first() {
            Some(t) if context.batched => t.shape.first().copied().unwrap_or(1),
            _ => 1,
        })
        .collect();
    let pad = context
        .pad_rows
        .map_or(0, |to| to.saturating_sub(rows.iter().sum()));
    let joined: Vec<Tensor>;
    let inputs: &[Tensor] = if jobs.len() == 1 && pad == 0 {
        &jobs[0].inputs
    } else {
        joined = (0..jobs[0].inputs.len())
            .map(|ix| {
                let filler = (pad > 0).then(|| {
                    let like = &jobs[0].inputs[ix];
                    let shape = [pad].into_iter().chain(like.shape[1..].iter().copied());
                    Tensor::zeros(&like.name, like.datatype, shape.collect())
                });
                let parts: Vec<&Tensor> = jobs
                    .iter()
                    .map(|job| &job.inputs[ix])
                    .chain(filler.as_ref())
                    .collect();
                concat_rows(&parts)
            })
            .collect();
        &joined
    };
    let prepared = Instant::now();
    let result = instance.run(inputs);
    let computed = Instant::now();
    match result {
        Ok(outputs) => {
            let answers: Vec<Vec<Tensor>> = if jobs.len() == 1 && pad == 0 {
                vec![outputs]
            } else {
                // The padding's rows come last and are left out.
                let cuts: Vec<usize> = rows
                    .iter()
                    .copied()
                    .chain((pad > 0).then_some(pad))
                    .collect();
                let mut per_job: Vec<Vec<Tensor>> =
                    vec![Vec::with_capacity(outputs.len()); jobs.len()];
                for output in outputs {
                    for (slot, part) in per_job.iter_mut().zip(split_rows(output, &cuts)) {
                        slot.push(part);
                    }
                }
                per_job
            };
            let finished = Instant::now();
            context.stats.record_execution(
                rows.iter().sum(),
                jobs.len(),
                prepared - started,
                computed - prepared,
                finished - computed,
            );
            for (job, outputs) in jobs.into_iter().zip(answers) {
                if job.reply.send(Ok(outputs)).is_err() {
                    context.stats.record_cancelled(); // the caller left during the call
                }
            }
        }
        Err(source) => {
            context.stats.record_backend_error(jobs.len());
            for job in jobs {
                let error = InferError::Backend {
                    model: context.model_name.clone(),
                    source: source.clone(),
                };
                let _ = job.reply.send(Err(error));
            }
        }
    }
}

/// Stacks tensors that agree on every dim but the first.
pub fn concat_rows(parts: &[&Tensor]) -> Tensor {
    let first = parts[0];
    let mut shape = first.shape.clone();
    shape[0] = parts.iter().map(|t| t.shape[0]).sum();
    let data = match &first.data {
        TensorData::Fixed(_) => {
            let mut out = BytesMut::with_capacity(parts.iter().map(|t| t.byte_size()).sum());
            for t in parts {
                if let TensorData::Fixed(b) = &t.data {
                    out.extend_from_slice(b);
                }
            }
            TensorData::Fixed(out.freeze())
        }
        TensorData::Bytes(_) => TensorData::Bytes(
            parts
                .iter()
                .flat_map(|t| match &t.data {
                    TensorData::Bytes(items) => items.clone(),
                    TensorData::Fixed(_) => Vec::new(),
                })
                .collect(),
        ),
    };
    Tensor {
        name: first.name.clone(),
        datatype: first.datatype,
        shape,
        data,
    }
}

/// Cuts a batch output back into one tensor per request, `rows[i]` rows each. Fixed-size
/// data is sliced without copying.
pub fn split_rows(t: Tensor, rows: &[usize]) -> Vec<Tensor> {
    let total: usize = rows.iter().sum();
    let per_row = t.element_count().checked_div(total).unwrap_or(0);
    let mut at = 0;
    rows.iter()
        .map(|&n| {
            let mut shape = t.shape.clone();
            shape[0] = n;
            let data = match &t.data {
                TensorData::Fixed(b) => {
                    let stride = per_row * t.datatype.element_size().unwrap_or(1);
                    TensorData::Fixed(Bytes::slice(b, at * stride..(at + n) * stride))
                }
                TensorData::Bytes(items) => {
                    TensorData::Bytes(items[at * per_row..(at + n) * per_row].to_vec())
                }
            };
            at += n;
            Tensor {
                name: t.name.clone(),
                datatype: t.datatype,
                shape,
                data,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DataType;

    fn fp32(shape: Vec<usize>, values: &[f32]) -> Tensor {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape,
            data: TensorData::Fixed(bytes.into()),
        }
    }

    /// An engine that logs the rows of every call each instance makes, and fails calls of
    /// `fail_at` rows.
    struct Recording {
        signature: crate::backend::Signature,
        calls: std::sync::Mutex<Vec<(usize, usize)>>,
        instances: std::sync::atomic::AtomicUsize,
        fail_at: usize,
    }

    struct RecordingInstance {
        model: Arc<Recording>,
        id: usize,
    }

    impl Model for Recording {
        fn signature(&self) -> &crate::backend::Signature {
            &self.signature
        }

        fn new_instance(
            self: Arc<Self>,
        ) -> Result<Box<dyn Instance>, crate::backend::BackendError> {
            let id = self
                .instances
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Box::new(RecordingInstance { model: self, id }))
        }
    }

    impl Instance for RecordingInstance {
        fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, crate::backend::BackendError> {
            let rows = inputs[0].shape[0];
            if rows == self.model.fail_at {
                return Err(crate::backend::BackendError::Execution(
                    "out of memory".into(),
                ));
            }
            self.model.calls.lock().unwrap().push((self.id, rows));
            Ok(inputs.to_vec())
        }
    }

    type Started = Result<(WorkerPool, Sender<Batch>), String>;

    fn recording(fail_at: usize) -> Arc<Recording> {
        Arc::new(Recording {
            signature: crate::backend::Signature {
                inputs: Vec::new(),
                outputs: Vec::new(),
            },
            calls: Default::default(),
            instances: Default::default(),
            fail_at,
        })
    }

    fn pool_with_warmup(fail_at: usize) -> (Arc<Recording>, Started) {
        let model = recording(fail_at);
        let context = Arc::new(WorkerContext {
            model_name: "m".into(),
            model: Arc::clone(&model) as Arc<dyn Model>,
            costs: CostCurves::default(),
            stats: Arc::new(ModelStats::default()),
            batched: true,
            pad_rows: None,
        });
        let warm = (1..=4)
            .map(|rows| vec![fp32(vec![rows, 1], &vec![0.0; rows])])
            .collect();
        let (done, _done_rx) = mpsc::channel(2);
        (
            Arc::clone(&model),
            WorkerPool::start(context, 2, done, warm),
        )
    }

    #[test]
    fn every_instance_runs_the_warm_inputs_before_it_is_ready() {
        let (model, started) = pool_with_warmup(0);
        let (pool, sender) = started.unwrap();
        let mut calls = model.calls.lock().unwrap().clone();
        calls.sort_unstable();
        let expected: Vec<(usize, usize)> = (0..2)
            .flat_map(|i| (1..=4).flat_map(move |r| [(i, r), (i, r)]))
            .collect();
        assert_eq!(
            calls, expected,
            "each of the 2 instances ran 1..=4 rows twice"
        );
        drop(sender);
        drop(pool);
    }

    #[test]
    fn a_failing_warm_call_fails_the_start_and_names_the_shape() {
        let (_model, started) = pool_with_warmup(3);
        let error = started.err().expect("the start fails");
        assert!(
            error.contains("warming it at [[3, 1]] failed: inference failed: out of memory"),
            "{error}"
        );
    }

    #[test]
    fn padded_calls_carry_the_padding_and_answer_only_the_requests() {
        let model = recording(0);
        let context = WorkerContext {
            model_name: "m".into(),
            model: Arc::clone(&model) as Arc<dyn Model>,
            costs: CostCurves::default(),
            stats: Arc::new(ModelStats::default()),
            batched: true,
            pad_rows: Some(8),
        };
        let mut instance = Arc::clone(&context.model).new_instance().unwrap();
        let (a, b) = (
            fp32(vec![1, 2], &[1.0, 2.0]),
            fp32(vec![2, 2], &[3.0, 4.0, 5.0, 6.0]),
        );
        let mut answers = Vec::new();
        let jobs = [a.clone(), b.clone()]
            .into_iter()
            .map(|input| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                Job {
                    inputs: vec![input],
                    reply,
                    work: WorkToken::none(),
                }
            })
            .collect();
        run_piece(&context, instance.as_mut(), jobs);
        let calls = model.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1, "one call");
        assert_eq!(calls[0].1, 8, "3 rows padded to 8");
        let got: Vec<Tensor> = answers
            .into_iter()
            .map(|mut answer| answer.try_recv().unwrap().unwrap().remove(0))
            .collect();
        assert_eq!(
            got,
            vec![a, b],
            "each request gets its own rows, not the padding"
        );
        let stats = context.stats.snapshot();
        assert_eq!(stats.execution_count, 1);
        assert_eq!(
            stats.batches.keys().copied().collect::<Vec<_>>(),
            vec![3],
            "counted as the 3 rows asked for"
        );
    }

    #[test]
    fn concat_then_split_gives_back_each_request() {
        let a = fp32(vec![1, 2], &[1.0, 2.0]);
        let b = fp32(vec![2, 2], &[3.0, 4.0, 5.0, 6.0]);
        let joined = concat_rows(&[&a, &b]);
        assert_eq!(joined.shape, vec![3, 2]);
        let parts = split_rows(joined, &[1, 2]);
        assert_eq!(parts, vec![a, b]);
    }

    #[test]
    fn bytes_tensors_concat_and_split() {
        let s = |items: &[&'static [u8]]| Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![items.len(), 1],
            data: TensorData::Bytes(items.iter().map(|i| Bytes::from_static(i)).collect()),
        };
        let (a, b) = (s(&[b"a"]), s(&[b"bb", b"ccc"]));
        let parts = split_rows(concat_rows(&[&a, &b]), &[1, 2]);
        assert_eq!(parts, vec![a, b]);
    }
}
