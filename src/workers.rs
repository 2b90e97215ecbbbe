//! The worker pool: OS threads per model fed through a bounded crossbeam channel. Each
//! thread owns one engine instance, runs the batches the scheduler closes (as pieces where
//! the measured cost curve says that is cheaper), and answers each request by its oneshot.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
    thread::{self, JoinHandle},
    time::Instant,
};

use crossbeam_channel::{Receiver, Sender};
use tracing::{debug, error, warn};

use std::sync::{
    atomic::{AtomicU64, Ordering},
    OnceLock,
};

use opentelemetry::KeyValue;

use crate::{
    backend::{panic_message, BackendError, Instance, Model},
    batching::{cost::CostCurves, Feed},
    error::InferError,
    job::{Batch, ShapeKey, WorkToken},
    stats::ModelStats,
    tensor::{concat_rows, split_rows, Tensor},
};

/// A call at least this long has scratch memory worth handing back when its worker goes
/// idle (`heap::release_freed`).
const HEAVY_CALL: std::time::Duration = std::time::Duration::from_millis(2);

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
    /// Row counts ("buckets") every formed batch is padded up to with zero rows, to the
    /// smallest that holds it (batched models only): an engine that prepares each input
    /// shape anew (cuDNN on a GPU) then sees only these shapes, and on a GPU the extra rows
    /// cost next to nothing. Empty: calls carry the rows they were given.
    pub buckets: Vec<usize>,
    /// Jobs come straight from the requests (`BatchPolicy::direct`): the channel is the
    /// queue, and an instance taking a job ends its wait there.
    pub direct: bool,
    /// Instances running a batch now.
    pub busy: std::sync::atomic::AtomicUsize,
    /// Where an instance takes its next batch as it finishes one (set once the model's
    /// scheduler has started, before any batch can come).
    pub feed: OnceLock<Feed>,
}

impl WorkerPool {
    /// Starts `instances` threads, each building its own engine instance and running the
    /// `warm` inputs on it, and waits until all are ready. They take batches from the
    /// returned sender, and after each the next one from `context.feed` where it has one.
    /// The channel holds one batch per instance (a batch is sent only to an idle one), or
    /// any number where `context.direct` (the channel is then the queue, bounded by the
    /// scheduler's count).
    pub fn start(
        context: Arc<WorkerContext>,
        instances: usize,
        warm: Vec<Vec<Tensor>>,
    ) -> Result<(WorkerPool, Sender<Batch>), String> {
        let warm = Arc::new(warm);
        let (sender, batches) = if context.direct {
            crossbeam_channel::unbounded::<Batch>()
        } else {
            crossbeam_channel::bounded::<Batch>(instances.max(1))
        };
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(instances);
        let mut pool = WorkerPool {
            threads: Vec::with_capacity(instances),
        };
        for i in 0..instances {
            let (context, batches, ready_tx, warm) = (
                Arc::clone(&context),
                batches.clone(),
                ready_tx.clone(),
                Arc::clone(&warm),
            );
            let spawned = thread::Builder::new()
                .name(format!("wharf-{}-{i}", context.model_name))
                .spawn(move || work(&context, i, batches, ready_tx, warm));
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
    index: usize,
    batches: Receiver<Batch>,
    ready: std::sync::mpsc::SyncSender<Result<(), String>>,
    warm: Arc<Vec<Vec<Tensor>>>,
) {
    let mut engine = Engine::new(Arc::clone(&context.model), index);
    let warmed = (|| {
        // Twice: ONNX Runtime traces a new shape's memory on its first run and sets up
        // its memory pattern on the second, and neither should land on a request.
        for inputs in warm.iter().flat_map(|inputs| [inputs, inputs]) {
            engine.run(inputs).map_err(|e| {
                let shapes: Vec<_> = inputs.iter().map(|t| &t.shape).collect();
                format!("warming it at {shapes:?} failed: {e}")
            })?;
        }
        // A model without warm inputs still builds its instance before READY.
        engine.instance().map(|_| ()).map_err(|e| e.to_string())
    })();
    drop(warm);
    let _ = ready.send(warmed.clone());
    drop(ready);
    if warmed.is_err() {
        return;
    }
    let stats = &context.stats;
    let mut next: Option<Batch> = None;
    loop {
        let mut batch = match next.take() {
            Some(batch) => batch,
            None => match batches.recv() {
                Ok(batch) => {
                    stats.record_busy(context.busy.fetch_add(1, Ordering::Relaxed) + 1);
                    batch
                }
                Err(_) => break, // the scheduler is gone: the model is unloading
            },
        };
        if context.direct {
            let now = tokio::time::Instant::now();
            for job in &mut batch {
                job.slot = WorkToken::none();
                stats.record_queue(now.duration_since(job.arrived));
            }
            stats.record_pending(batches.len());
        }
        // Engine panics are caught closer in; this catches a fault of wharf's own, so the
        // instance is never lost: the batch's callers get INTERNAL (their replies drop).
        let started = Instant::now();
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| serve(context, &mut engine, batch)))
        {
            error!(model = %context.model_name, panic = %panic_message(payload.as_ref()), "a batch failed outside the engine");
        }
        // Straight on to the next batch where one can close now: no wait on a scheduler.
        next = context.feed.get().and_then(Feed::next);
        if next.is_none() {
            stats.record_busy(context.busy.fetch_sub(1, Ordering::Relaxed) - 1);
            // Going idle after a heavy call: give its scratch memory back (a trivial
            // model's calls skip the walk over the thread's heap).
            if started.elapsed() >= HEAVY_CALL {
                crate::heap::release_freed();
            }
        }
    }
}

/// Runs one batch: in one call, or in the pieces the cost curve finds cheaper.
fn serve(context: &WorkerContext, engine: &mut Engine, batch: Batch) {
    // A caller that has gone costs nothing more; one whose deadline passed while its batch
    // waited behind another is answered as the queue would have.
    let (live, gone): (Batch, Batch) = batch.into_iter().partition(|job| !job.reply.is_closed());
    for job in gone {
        context.stats.record_cancelled(job.protocol);
    }
    let now = tokio::time::Instant::now();
    let (expired, live): (Batch, Batch) = live
        .into_iter()
        .partition(|job| job.deadline.is_some_and(|d| d <= now));
    for job in expired {
        context.stats.record_expired(job.protocol);
        let _ = job.reply.send(Err(InferError::DeadlineExceeded {
            model: context.model_name.clone(),
            waited: now.duration_since(job.arrived),
        }));
    }
    if live.is_empty() {
        return;
    }
    if !context.buckets.is_empty() {
        // Padded to a bucket, a split saves nothing: one call for the whole batch.
        run_piece(context, engine, live);
    } else if context.batched {
        let rows: Vec<usize> = live.iter().map(|j| j.inputs[0].shape[0]).collect();
        let pieces = context
            .costs
            .for_shape(&ShapeKey::of(&live[0].inputs))
            .plan(&rows);
        let mut jobs = live.into_iter();
        for size in pieces {
            run_piece(context, engine, jobs.by_ref().take(size).collect());
        }
    } else {
        for job in live {
            run_piece(context, engine, vec![job]);
        }
    }
}

/// One worker's engine instance, kept in service whatever a call does: a panic is caught
/// and answered as an error, and the instance (whose state the panic may have left half
/// written) is dropped and rebuilt from the shared model before the next call.
struct Engine {
    model: Arc<dyn Model>,
    instance: Option<Box<dyn Instance>>,
    /// Which of the model's instances this is (0-based), for traces.
    index: usize,
}

impl Engine {
    fn new(model: Arc<dyn Model>, index: usize) -> Engine {
        Engine {
            model,
            instance: None,
            index,
        }
    }

    fn instance(&mut self) -> Result<&mut Box<dyn Instance>, BackendError> {
        if self.instance.is_none() {
            let model = Arc::clone(&self.model);
            let built = catch_unwind(AssertUnwindSafe(|| model.new_instance()))
                .map_err(|payload| BackendError::Panicked(panic_message(payload.as_ref())))??;
            self.instance = Some(built);
        }
        Ok(self.instance.as_mut().expect("just built"))
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let instance = self.instance()?;
        match catch_unwind(AssertUnwindSafe(|| instance.run(inputs))) {
            Ok(result) => result,
            Err(payload) => {
                self.instance = None;
                Err(BackendError::Panicked(panic_message(payload.as_ref())))
            }
        }
    }
}

/// Zero rows to add so that `rows` fills the smallest bucket that holds it; none where no
/// bucket does (or there are none).
fn padding(buckets: &[usize], rows: usize) -> usize {
    buckets
        .iter()
        .filter(|b| **b >= rows)
        .min()
        .map_or(0, |b| b - rows)
}

/// One engine call for `jobs`: concatenated, run, checked, split back. Where a call of
/// several requests fails, each is retried alone, once, so that only the request that
/// causes the failure gets the error.
fn run_piece(context: &WorkerContext, engine: &mut Engine, jobs: Batch) {
    let started = Instant::now();
    // A model without a batch dimension takes one request as one row, whatever its shape.
    let rows: Vec<usize> = jobs
        .iter()
        .map(|j| match j.inputs.first() {
            Some(t) if context.batched => t.shape.first().copied().unwrap_or(1),
            _ => 1,
        })
        .collect();
    let pad = padding(&context.buckets, rows.iter().sum());
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
    let result = engine.run(inputs);
    let computed = Instant::now();
    // Each call's rows and time, for finding slow calls per batch size
    // (WHARF_LOG=wharf::engine_calls=trace); one disabled check when off.
    tracing::trace!(
        target: "wharf::engine_calls",
        model = %context.model_name,
        rows = rows.iter().sum::<usize>() + pad,
        us = (computed - prepared).as_micros() as u64,
        "engine call"
    );
    if matches!(result, Err(BackendError::Panicked(_))) {
        context.stats.record_panic();
        warn!(model = %context.model_name, requests = jobs.len(), "the engine panicked; its instance is rebuilt");
    }
    // The padding's rows come last and are left out.
    let cuts: Vec<usize> = rows
        .iter()
        .copied()
        .chain((pad > 0).then_some(pad))
        .collect();
    let answers = result.and_then(|outputs| {
        if jobs.len() == 1 && pad == 0 && !context.batched {
            return Ok(vec![outputs]);
        }
        let mut per_job: Vec<Vec<Tensor>> = vec![Vec::with_capacity(outputs.len()); jobs.len()];
        for output in outputs {
            let parts = split_rows(output, &cuts).map_err(BackendError::BadOutput)?;
            for (slot, part) in per_job.iter_mut().zip(parts) {
                slot.push(part);
            }
        }
        Ok(per_job)
    });
    let call = Call {
        rows: &rows,
        pad,
        started,
        prepared,
        computed,
        instance: engine.index,
    };
    match answers {
        Ok(answers) => {
            let finished = Instant::now();
            trace_call(&jobs, &call, finished, None);
            context.stats.record_execution(
                rows.iter().sum(),
                jobs.len(),
                prepared - started,
                computed - prepared,
                finished - computed,
            );
            for (job, outputs) in jobs.into_iter().zip(answers) {
                if job.reply.send(Ok(outputs)).is_err() {
                    // The caller left during the call.
                    context.stats.record_cancelled(job.protocol);
                }
            }
        }
        Err(source) if jobs.len() > 1 => {
            debug!(model = %context.model_name, requests = jobs.len(), error = %source, "a batch failed; retrying its requests one by one");
            for job in jobs {
                run_piece(context, engine, vec![job]);
            }
        }
        Err(source) => {
            trace_call(&jobs, &call, Instant::now(), Some(&source));
            for job in jobs {
                context.stats.record_backend_error(job.protocol);
                let error = InferError::Backend {
                    model: context.model_name.clone(),
                    source: source.clone(),
                };
                let _ = job.reply.send(Err(error));
            }
        }
    }
}

/// One engine call's shape and times, as its traced requests' spans report it.
struct Call<'a> {
    /// Each job's rows, in the jobs' order.
    rows: &'a [usize],
    pad: usize,
    started: Instant,
    prepared: Instant,
    computed: Instant,
    instance: usize,
}

/// Engine calls that traced requests rode in, numbered across the server.
static TRACED_CALLS: AtomicU64 = AtomicU64::new(0);

/// Each traced request's queue wait and its share of the engine call, as two spans under
/// its model span. Every member of the call gets its own `compute` span carrying the
/// call's id, size, rows, padding and instance (docs/tracing.md says why not links).
fn trace_call(jobs: &Batch, call: &Call<'_>, finished: Instant, error: Option<&BackendError>) {
    if jobs.iter().all(|job| job.trace.is_none()) {
        return;
    }
    let id = TRACED_CALLS.fetch_add(1, Ordering::Relaxed);
    let call_rows: usize = call.rows.iter().sum();
    for (job, rows) in jobs.iter().zip(call.rows) {
        let Some(trace) = &job.trace else { continue };
        trace.record("queue", job.arrived.into_std(), call.started, Vec::new());
        let mut attributes = vec![
            KeyValue::new("wharf.batch.id", id as i64),
            KeyValue::new("wharf.batch.requests", jobs.len() as i64),
            KeyValue::new("wharf.batch.rows", call_rows as i64),
            KeyValue::new("wharf.batch.padding", call.pad as i64),
            KeyValue::new("wharf.request.rows", *rows as i64),
            KeyValue::new("wharf.instance", call.instance as i64),
            KeyValue::new(
                "wharf.compute.input_us",
                (call.prepared - call.started).as_micros() as i64,
            ),
            KeyValue::new(
                "wharf.compute.infer_us",
                (call.computed - call.prepared).as_micros() as i64,
            ),
        ];
        if let Some(error) = error {
            attributes.push(KeyValue::new("error.type", error.to_string()));
        }
        trace.record("compute", call.started, finished, attributes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        job::{Job, JobResult, WorkToken},
        tensor::{fp32, TensorData},
    };
    use tokio::sync::oneshot;

    /// An engine that logs the rows of every call each instance makes, and fails calls of
    /// `fail_at` rows.
    struct Recording {
        signature: crate::backend::Signature,
        calls: std::sync::Mutex<Vec<(usize, usize)>>,
        instances: std::sync::atomic::AtomicUsize,
        fail_at: usize,
        /// Panics on a call where any input value is this.
        panic_on: Option<f32>,
        /// Answers a call of several rows with one row, as a model without a batch
        /// dimension in its output would.
        one_row_out: bool,
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
            if let (Some(marker), TensorData::Fixed(b)) = (self.model.panic_on, &inputs[0].data) {
                if b.chunks_exact(4).any(|c| c == marker.to_le_bytes()) {
                    panic!("index {marker} is out of range");
                }
            }
            if self.model.one_row_out && rows > 1 {
                self.model.calls.lock().unwrap().push((self.id, rows));
                return Ok(vec![fp32(vec![1, 1], &[0.0])]);
            }
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
            panic_on: None,
            one_row_out: false,
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
            buckets: Vec::new(),
            direct: false,
            busy: Default::default(),
            feed: Default::default(),
        });
        let warm = (1..=4)
            .map(|rows| vec![fp32(vec![rows, 1], &vec![0.0; rows])])
            .collect();
        (Arc::clone(&model), WorkerPool::start(context, 2, warm))
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
            buckets: vec![8],
            direct: false,
            busy: Default::default(),
            feed: Default::default(),
        };
        let mut engine = Engine::new(Arc::clone(&context.model), 0);
        let (a, b) = (
            fp32(vec![1, 2], &[1.0, 2.0]),
            fp32(vec![2, 2], &[3.0, 4.0, 5.0, 6.0]),
        );
        let (jobs, answers) = jobs_of(vec![a.clone(), b.clone()]);
        run_piece(&context, &mut engine, jobs);
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
    fn a_batch_is_padded_to_the_smallest_bucket_that_holds_it() {
        let buckets = [1, 2, 4, 8];
        let padded: Vec<usize> = (1..=9).map(|rows| rows + padding(&buckets, rows)).collect();
        assert_eq!(
            padded,
            vec![1, 2, 4, 4, 8, 8, 8, 8, 9],
            "past the largest: as it is"
        );
        assert_eq!(padding(&[], 3), 0, "no buckets, no padding");
    }

    /// One one-input request per tensor, and the receivers of their answers.
    fn jobs_of(inputs: Vec<Tensor>) -> (Batch, Vec<oneshot::Receiver<JobResult>>) {
        inputs
            .into_iter()
            .map(|input| {
                let (reply, answer) = oneshot::channel();
                let job = Job {
                    inputs: vec![input],
                    reply,
                    arrived: tokio::time::Instant::now(),
                    deadline: None,
                    work: WorkToken::none(),
                    slot: WorkToken::none(),
                    protocol: Default::default(),
                    trace: None,
                };
                (job, answer)
            })
            .unzip()
    }

    /// Runs `inputs` as one batch on a started one-instance pool of `model`; returns each
    /// request's answer.
    fn run_batch(model: &Arc<Recording>, batches: Vec<Vec<Tensor>>) -> Vec<Vec<JobResult>> {
        let context = Arc::new(WorkerContext {
            model_name: "m".into(),
            model: Arc::clone(model) as Arc<dyn Model>,
            costs: CostCurves::default(),
            stats: Arc::new(ModelStats::default()),
            batched: true,
            buckets: Vec::new(),
            direct: false,
            busy: Default::default(),
            feed: Default::default(),
        });
        let (pool, sender) = WorkerPool::start(Arc::clone(&context), 1, Vec::new()).unwrap();
        let answers = batches
            .into_iter()
            .map(|inputs| {
                let (jobs, answers) = jobs_of(inputs);
                sender.send(jobs).unwrap();
                answers
                    .into_iter()
                    .map(|a| a.blocking_recv().expect("answered"))
                    .collect()
            })
            .collect();
        drop(sender);
        drop(pool);
        answers
    }

    #[test]
    fn a_panicking_call_fails_only_its_request_and_the_instance_serves_on() {
        let model = Arc::new(Recording {
            panic_on: Some(99.0),
            ..Arc::into_inner(recording(0)).unwrap()
        });
        let good = || fp32(vec![1, 1], &[1.0]);
        let answers = run_batch(
            &model,
            vec![
                vec![good(), fp32(vec![1, 1], &[99.0]), good()],
                vec![good(), good()],
            ],
        );
        let first: Vec<String> = answers[0]
            .iter()
            .map(|a| match a {
                Ok(_) => "ok".into(),
                Err(e) => e.to_string(),
            })
            .collect();
        assert_eq!(
            first,
            vec![
                "ok".to_string(),
                "model 'm': the engine panicked: index 99 is out of range".into(),
                "ok".into()
            ],
            "the batch is retried one by one: only the culprit fails"
        );
        assert!(
            answers[1].iter().all(Result::is_ok),
            "the next batch is served"
        );
        assert_eq!(
            model.instances.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "the instance was rebuilt after each of the two panics"
        );
    }

    #[test]
    fn an_output_without_the_batch_rows_is_an_error_not_a_panic() {
        let model = Arc::new(Recording {
            one_row_out: true,
            ..Arc::into_inner(recording(0)).unwrap()
        });
        let answers = run_batch(&model, vec![vec![fp32(vec![2, 1], &[1.0, 2.0])]]);
        let error = answers[0][0].as_ref().expect_err("refused").to_string();
        assert_eq!(
            error,
            "model 'm': the engine returned a wrong output: output 'x' has shape [1, 1], whose first dimension should be the 2 rows the call carried"
        );
        let split = split_rows(fp32(vec![], &[1.0]), &[1, 1]).unwrap_err();
        assert!(split.contains("shape []"), "{split}");
    }
}
