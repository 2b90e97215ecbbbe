//! Dynamic batching: one scheduler per model version owns its queue, closes batches by
//! the policy's rules, and hands them to idle instances only, so a batch keeps growing
//! while every instance is busy. A model without dynamic batching has nothing to group,
//! order or hold back: its requests go straight to the instances' channel, which is then
//! the queue (`BatchPolicy::direct`).

pub mod cost;
pub mod policy;
pub mod queue;

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use crossbeam_channel::Sender;
use tokio::{
    sync::{mpsc, Notify},
    task::JoinHandle,
    time::{sleep_until, Instant},
};

pub use policy::{BatchPolicy, TimeoutAction};
pub use queue::{Closed, Entry, Left, Queue, Waiting};

use crate::{
    error::InferError,
    job::{Batch, Job, JobResult, ValidRequest, WorkToken},
    stats::ModelStats,
};

impl Waiting for Job {
    fn cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

/// The door to a model's queue.
pub struct Scheduler {
    model: String,
    door: Door,
    /// Requests admitted and not yet taken by an instance: at most max_queue_size.
    waiting: Arc<AtomicU64>,
    /// Woken when a caller leaves before its answer, so that the queue gives its slot
    /// back at once rather than when a batch is next formed.
    left: Arc<Notify>,
    policy: BatchPolicy,
    stats: Arc<ModelStats>,
}

enum Door {
    /// Arrivals go to the scheduler task, which forms the batches.
    Queue {
        arrivals: mpsc::UnboundedSender<Entry<Job>>,
        task: JoinHandle<()>,
    },
    /// Each request is a batch of its own, sent straight to the instances, which take
    /// them in turn without waiting on a scheduler between requests (measured with
    /// benches/overhead.py: that wait was most of what a small model's request cost).
    Direct(Sender<Batch>),
}

impl Scheduler {
    /// Starts the scheduler task on `runtime`. `batches` leads to `instances` workers,
    /// each of which sends on `done` when it finishes a batch. With `policy.direct`, no
    /// task: `batches` must then be unbounded (the queue's bound is counted here).
    pub fn start(
        runtime: &tokio::runtime::Handle,
        model: String,
        policy: BatchPolicy,
        instances: usize,
        batches: Sender<Batch>,
        done: mpsc::Receiver<()>,
        stats: Arc<ModelStats>,
    ) -> Scheduler {
        let waiting = Arc::new(AtomicU64::new(0));
        let left = Arc::new(Notify::new());
        let door = if policy.direct {
            Door::Direct(batches)
        } else {
            let (arrivals, incoming) = mpsc::unbounded_channel();
            let task = runtime.spawn(run(
                model.clone(),
                Queue::new(policy.clone()),
                incoming,
                batches,
                done,
                instances,
                Arc::clone(&waiting),
                Arc::clone(&left),
                Arc::clone(&stats),
            ));
            Door::Queue { arrivals, task }
        };
        stats
            .metrics
            .queue_capacity
            .set(policy.max_queue_size as f64);
        stats.metrics.instances.set(instances as f64);
        Scheduler {
            model,
            door,
            waiting,
            left,
            policy,
            stats,
        }
    }

    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// Requests admitted and not yet handed to an instance.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed) as usize
    }

    /// Says that a caller has gone before its answer: whatever it left in the queue is
    /// removed, and its slot freed, without waiting for an instance to come free.
    pub fn caller_left(&self) {
        // Direct: an instance skips the gone caller's job when it comes to it.
        if let Door::Queue { .. } = self.door {
            self.left.notify_one();
        }
    }

    /// Admits a request or refuses it at once when the queue is full; the answer comes on
    /// `reply`, and `work` is the request's share of the backlog until it is answered.
    pub fn submit(
        &self,
        request: ValidRequest,
        reply: tokio::sync::oneshot::Sender<JobResult>,
        work: WorkToken,
    ) -> Result<(), InferError> {
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        if before >= self.policy.max_queue_size as u64 {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.stats.record_rejected();
            return Err(InferError::QueueFull {
                model: self.model.clone(),
                capacity: self.policy.max_queue_size,
            });
        }
        let unloading = || {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            InferError::ModelUnavailable {
                model: self.model.clone(),
                reason: "it is unloading".into(),
            }
        };
        let job = Job {
            inputs: request.inputs,
            reply,
            arrived: request.arrived,
            deadline: request
                .deadline
                .filter(|_| self.policy.timeout_action == TimeoutAction::Reject),
            work,
            slot: WorkToken::none(),
        };
        match &self.door {
            Door::Direct(batches) => {
                let job = Job {
                    // Given back when an instance takes the job.
                    slot: WorkToken::taken(&self.waiting, 1),
                    ..job
                };
                batches.send(vec![job]).map_err(|_| unloading())?;
                self.stats.record_pending(self.waiting());
                Ok(())
            }
            Door::Queue { arrivals, .. } => {
                let entry = Entry {
                    key: request.key,
                    rows: request.rows,
                    priority: request.priority,
                    enqueued: request.arrived,
                    deadline: request.deadline,
                    payload: job,
                };
                arrivals.send(entry).map_err(|_| unloading())
            }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Whatever still waits has no one left to serve it; the workers finish the
        // batches they hold once the task (and with it the batch sender) is gone.
        if let Door::Queue { task, .. } = &self.door {
            task.abort();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    model: String,
    mut queue: Queue<Job>,
    mut incoming: mpsc::UnboundedReceiver<Entry<Job>>,
    batches: Sender<Batch>,
    mut done: mpsc::Receiver<()>,
    instances: usize,
    waiting: Arc<AtomicU64>,
    caller_left: Arc<Notify>,
    stats: Arc<ModelStats>,
) {
    let mut idle = instances;
    loop {
        let wake = queue.next_wake(Instant::now());
        let mut sweep = false;
        tokio::select! {
            arrival = incoming.recv() => match arrival {
                Some(entry) => queue.push(entry),
                None => return,
            },
            Some(()) = done.recv() => idle += 1,
            () = caller_left.notified() => sweep = true,
            () = async { sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {}
        }
        // Take every arrival already there before forming a batch from them.
        while let Ok(entry) = incoming.try_recv() {
            queue.push(entry);
        }
        let now = Instant::now();
        let gone = if sweep {
            queue.sweep(now)
        } else {
            queue.expire(now)
        };
        for left in gone {
            waiting.fetch_sub(1, Ordering::AcqRel);
            settle(&model, left, now, &stats);
        }
        while idle > 0 {
            let Some(Closed { batch, abandoned }) = queue.next_batch(now) else {
                break;
            };
            waiting.fetch_sub((batch.len() + abandoned.len()) as u64, Ordering::AcqRel);
            for entry in abandoned {
                settle(&model, Left::Cancelled(entry), now, &stats);
            }
            if batch.is_empty() {
                continue;
            }
            for entry in &batch {
                stats.record_queue(now.duration_since(entry.enqueued));
            }
            let jobs: Batch = batch.into_iter().map(|e| e.payload).collect();
            // Never blocks: a batch is sent only to an idle instance.
            if batches.try_send(jobs).is_err() {
                return; // the workers are gone: the model is unloading
            }
            idle -= 1;
        }
        stats.record_pending(waiting.load(Ordering::Relaxed) as usize);
    }
}

fn settle(model: &str, left: Left<Job>, now: Instant, stats: &ModelStats) {
    match left {
        Left::Expired(entry) => {
            stats.record_expired();
            let waited = now.duration_since(entry.enqueued);
            let _ = entry.payload.reply.send(Err(InferError::DeadlineExceeded {
                model: model.to_owned(),
                waited,
            }));
        }
        Left::Cancelled(_) => stats.record_cancelled(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use crossbeam_channel::Receiver;
    use tokio::sync::oneshot;

    use super::*;
    use crate::{
        batching::policy::TimeoutAction,
        job::ShapeKey,
        tensor::{DataType, Tensor, TensorData},
    };

    /// A scheduler whose "workers" are the test itself.
    struct Harness {
        scheduler: Scheduler,
        batches: Receiver<Batch>,
        done: mpsc::Sender<()>,
        stats: Arc<ModelStats>,
    }

    fn policy(preferred: &[usize], delay_ms: u64) -> BatchPolicy {
        BatchPolicy {
            enabled: true,
            max_rows: 8,
            form_rows: 8,
            preferred: preferred.to_vec(),
            max_queue_delay: Duration::from_millis(delay_ms),
            max_queue_size: 64,
            default_timeout: None,
            allow_timeout_override: true,
            timeout_action: TimeoutAction::Reject,
            priority_levels: 2,
            default_priority: 2,
            direct: false,
        }
    }

    fn harness(policy: BatchPolicy, instances: usize) -> Harness {
        let (tx, batches) = if policy.direct {
            crossbeam_channel::unbounded()
        } else {
            crossbeam_channel::bounded(instances)
        };
        let (done, done_rx) = mpsc::channel(instances);
        let stats = Arc::new(ModelStats::default());
        let scheduler = Scheduler::start(
            &tokio::runtime::Handle::current(),
            "m".into(),
            policy,
            instances,
            tx,
            done_rx,
            Arc::clone(&stats),
        );
        Harness {
            scheduler,
            batches,
            done,
            stats,
        }
    }

    /// A one-row request with no inputs, for the refusals at the door.
    fn empty_request() -> ValidRequest {
        ValidRequest {
            key: vec![(DataType::Uint8, vec![1])].into(),
            inputs: Vec::new(),
            rows: 1,
            priority: 0,
            arrived: Instant::now(),
            deadline: None,
        }
    }

    impl Harness {
        /// Submits a request named `id` of `rows` rows and shape key `k`.
        fn send(
            &self,
            id: &str,
            k: usize,
            rows: usize,
            priority: u32,
            deadline_ms: Option<u64>,
        ) -> oneshot::Receiver<JobResult> {
            let (reply, answer) = oneshot::channel();
            let tensor = Tensor {
                name: id.into(),
                datatype: DataType::Uint8,
                shape: vec![rows, k],
                data: TensorData::Fixed(Bytes::from(vec![0; rows * k])),
            };
            let now = Instant::now();
            let request = ValidRequest {
                key: ShapeKey::of(std::slice::from_ref(&tensor)),
                inputs: vec![tensor],
                rows,
                priority,
                arrived: now,
                deadline: deadline_ms.map(|ms| now + Duration::from_millis(ms)),
            };
            self.scheduler
                .submit(request, reply, WorkToken::none())
                .unwrap();
            answer
        }

        /// Lets the scheduler task run, then takes the batches it handed out.
        async fn dispatched(&self) -> Vec<Vec<String>> {
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            self.batches
                .try_iter()
                .map(|b| b.iter().map(|j| j.inputs[0].name.clone()).collect())
                .collect()
        }

        async fn finish_one(&self) {
            self.done.send(()).await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_groups_go_at_once_and_shapes_never_mix() {
        let h = harness(policy(&[2], 1000), 2);
        let _a = [
            h.send("a1", 1, 1, 0, None),
            h.send("b1", 2, 1, 0, None),
            h.send("a2", 1, 1, 0, None),
        ];
        assert_eq!(
            h.dispatched().await,
            vec![vec!["a1", "a2"]],
            "a is full at 2; b waits"
        );
        let _b = h.send("b2", 2, 1, 0, None);
        assert_eq!(h.dispatched().await, vec![vec!["b1", "b2"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_group_waits_for_the_delay_then_goes() {
        let h = harness(policy(&[4], 10), 1);
        let _a = [h.send("a1", 1, 1, 0, None), h.send("a2", 1, 2, 0, None)];
        assert!(h.dispatched().await.is_empty());
        tokio::time::advance(Duration::from_millis(9)).await;
        assert!(h.dispatched().await.is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(h.dispatched().await, vec![vec!["a1", "a2"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_model_that_does_not_batch_sends_each_request_straight_to_the_instances() {
        let mut p = policy(&[], 0);
        p.enabled = false;
        p.direct = true;
        p.max_queue_size = 2;
        let h = harness(p, 1);
        let _r = [
            h.send("first", 1, 1, 0, None),
            h.send("second", 1, 1, 0, None),
        ];
        assert_eq!(
            h.scheduler.waiting(),
            2,
            "counted until an instance takes them"
        );
        let (reply, _answer) = oneshot::channel();
        let request = empty_request();
        assert!(matches!(
            h.scheduler.submit(request, reply, WorkToken::none()),
            Err(InferError::QueueFull { capacity: 2, .. })
        ));
        assert_eq!(
            h.dispatched().await,
            vec![vec!["first"], vec!["second"]],
            "one request a batch, in order, with no scheduler task between"
        );
        assert_eq!(h.scheduler.waiting(), 0, "taken: the slots are free again");
    }

    #[tokio::test(start_paused = true)]
    async fn batches_grow_while_every_instance_is_busy_and_priority_goes_first() {
        let h = harness(policy(&[2], 0), 1);
        let _busy = h.send("first", 1, 1, 0, None);
        assert_eq!(
            h.dispatched().await,
            vec![vec!["first"]],
            "no delay: an idle instance takes it alone"
        );
        let _w = [
            h.send("low", 1, 1, 2, None),
            h.send("high", 1, 1, 1, None),
            h.send("low2", 1, 1, 2, None),
        ];
        assert!(h.dispatched().await.is_empty(), "the only instance is busy");
        h.finish_one().await;
        assert_eq!(
            h.dispatched().await,
            vec![vec!["high", "low"]],
            "priority 1 first, then FIFO"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_ready_group_goes_first() {
        let h = harness(policy(&[2], 5), 1);
        let _busy = h.send("x1", 3, 1, 0, None);
        let _x = h.send("x2", 3, 1, 0, None);
        assert_eq!(h.dispatched().await, vec![vec!["x1", "x2"]]);
        let _b = h.send("b1", 2, 1, 0, None);
        tokio::time::advance(Duration::from_millis(1)).await;
        let _a = [h.send("a1", 1, 1, 0, None), h.send("a2", 1, 1, 0, None)];
        tokio::time::advance(Duration::from_millis(10)).await;
        h.finish_one().await;
        assert_eq!(
            h.dispatched().await,
            vec![vec!["b1"]],
            "b waited longest; a's full group does not starve it"
        );
        h.finish_one().await;
        assert_eq!(h.dispatched().await, vec![vec!["a1", "a2"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_requests_are_answered_and_never_computed() {
        let h = harness(policy(&[2], 0), 1);
        let _busy = h.send("busy", 1, 1, 0, None);
        h.dispatched().await;
        let late = h.send("late", 1, 1, 0, Some(5));
        tokio::time::advance(Duration::from_millis(6)).await;
        assert!(h.dispatched().await.is_empty());
        let answer = late.await.unwrap().unwrap_err();
        assert!(
            matches!(answer, InferError::DeadlineExceeded { .. }),
            "{answer}"
        );
        h.finish_one().await;
        assert!(
            h.dispatched().await.is_empty(),
            "the expired request is not computed"
        );
        assert_eq!(h.stats.snapshot().expired, 1);
        assert_eq!(h.scheduler.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_and_gone_callers_are_dropped() {
        let mut p = policy(&[2], 0);
        p.max_queue_size = 2;
        let h = harness(p, 1);
        let _busy = h.send("busy", 1, 1, 0, None);
        h.dispatched().await;
        let gone = h.send("gone", 1, 1, 0, None);
        let _kept = h.send("kept", 1, 1, 0, None);
        let (reply, _answer) = oneshot::channel();
        let request = empty_request();
        let refused = h.scheduler.submit(request, reply, WorkToken::none());
        assert!(matches!(
            refused,
            Err(InferError::QueueFull { capacity: 2, .. })
        ));
        drop(gone);
        h.finish_one().await;
        assert_eq!(h.dispatched().await, vec![vec!["kept"]]);
        assert_eq!(h.stats.snapshot().cancelled, 1);
    }
}
