//! Dynamic batching: one queue per model version, whose batches close by the policy's
//! rules and go to idle instances only, so a batch keeps growing while every instance is
//! busy. An instance that finishes a batch takes its next one from the queue itself, and
//! an arrival finding an idle instance hands it one, so no request waits on a scheduler
//! task; a timer task only acts when a delay runs out or a deadline passes. A model
//! without dynamic batching has nothing to group, order or hold back: its requests go
//! straight to the instances' channel, which is then the queue (`BatchPolicy::direct`).

pub mod cost;
pub mod policy;
pub mod queue;

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex, MutexGuard,
};

use crossbeam_channel::Sender;
use tokio::{
    sync::Notify,
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
    policy: BatchPolicy,
    stats: Arc<ModelStats>,
}

enum Door {
    /// The queue, shared with the instances (which take their next batch from it) and the
    /// timer task.
    Queue {
        shared: Arc<Shared>,
        timers: JoinHandle<()>,
    },
    /// Each request is a batch of its own, sent straight to the instances, which take
    /// them in turn (measured with benches/overhead.py: a scheduler between requests was
    /// most of what a small model's request cost).
    Direct(Sender<Batch>),
}

/// What the door, the instances and the timer task share.
struct Shared {
    model: String,
    state: Mutex<State>,
    waiting: Arc<AtomicU64>,
    stats: Arc<ModelStats>,
    /// Wakes the timer task: the next delay or deadline may have moved earlier.
    rearm: Notify,
}

struct State {
    queue: Queue<Job>,
    /// Instances waiting on the channel for a batch.
    idle: usize,
    /// To the idle instances; None once the scheduler is gone (the instances then end).
    batches: Option<Sender<Batch>>,
    /// When the timer task will next act, if it sleeps until then.
    armed: Option<Instant>,
}

/// An instance's side of its model's queue: after each batch it asks for the next one
/// here before waiting on its channel.
#[derive(Clone)]
pub struct Feed(Option<Arc<Shared>>);

impl Feed {
    /// The next batch to run now, if one can close; otherwise the instance is counted idle
    /// and the next batch will come on its channel.
    pub fn next(&self) -> Option<Batch> {
        let shared = self.0.as_ref()?;
        let mut state = shared.lock();
        let now = Instant::now();
        shared.expire(&mut state, now);
        let batch = state
            .batches
            .is_some()
            .then(|| shared.close_batch(&mut state, now))
            .flatten();
        if batch.is_none() {
            state.idle += 1;
        }
        shared.record_pending();
        shared.rearm_if_earlier(&mut state, now);
        batch
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("queue lock")
    }

    fn record_pending(&self) {
        self.stats
            .record_pending(self.waiting.load(Ordering::Relaxed) as usize);
    }

    /// Answers what has expired.
    fn expire(&self, state: &mut State, now: Instant) {
        for left in state.queue.expire(now) {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            settle(&self.model, left, now, &self.stats);
        }
    }

    /// The next batch that may close now, its waiting counted out.
    fn close_batch(&self, state: &mut State, now: Instant) -> Option<Batch> {
        loop {
            let Closed { batch, abandoned } = state.queue.next_batch(now)?;
            self.waiting
                .fetch_sub((batch.len() + abandoned.len()) as u64, Ordering::AcqRel);
            for entry in abandoned {
                settle(&self.model, Left::Cancelled(entry), now, &self.stats);
            }
            if batch.is_empty() {
                continue;
            }
            for entry in &batch {
                self.stats.record_queue(now.duration_since(entry.enqueued));
            }
            return Some(batch.into_iter().map(|e| e.payload).collect());
        }
    }

    /// Hands every batch that may close now to an idle instance.
    fn dispatch(&self, state: &mut State, now: Instant) {
        self.expire(state, now);
        while state.idle > 0 {
            let Some(batch) = self.close_batch(state, now) else {
                break;
            };
            let sent = state.batches.as_ref().map(|b| b.try_send(batch));
            // Never full: a batch goes only to an idle instance, which waits on the channel.
            if !matches!(sent, Some(Ok(()))) {
                return; // the instances are gone: the model is unloading
            }
            state.idle -= 1;
        }
        self.record_pending();
    }

    /// Wakes the timer task where the queue's next wake is earlier than it sleeps until.
    fn rearm_if_earlier(&self, state: &mut State, now: Instant) {
        let wake = state.queue.next_wake(now);
        if wake.is_some_and(|w| state.armed.is_none_or(|armed| w < armed)) {
            state.armed = wake;
            self.rearm.notify_one();
        }
    }
}

impl Scheduler {
    /// Starts the model's queue. `batches` leads to `instances` idle workers, which must
    /// ask `feed()` for their next batch after each one. With `policy.direct`, no queue:
    /// `batches` must then be unbounded (the queue's bound is counted here).
    pub fn start(
        runtime: &tokio::runtime::Handle,
        model: String,
        policy: BatchPolicy,
        instances: usize,
        batches: Sender<Batch>,
        stats: Arc<ModelStats>,
    ) -> Scheduler {
        let waiting = Arc::new(AtomicU64::new(0));
        let door = if policy.direct {
            Door::Direct(batches)
        } else {
            let shared = Arc::new(Shared {
                model: model.clone(),
                state: Mutex::new(State {
                    queue: Queue::new(policy.clone()),
                    idle: instances,
                    batches: Some(batches),
                    armed: None,
                }),
                waiting: Arc::clone(&waiting),
                stats: Arc::clone(&stats),
                rearm: Notify::new(),
            });
            let timers = runtime.spawn(timers(Arc::clone(&shared)));
            Door::Queue { shared, timers }
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
            policy,
            stats,
        }
    }

    /// What the model's instances take their batches through.
    pub fn feed(&self) -> Feed {
        match &self.door {
            Door::Queue { shared, .. } => Feed(Some(Arc::clone(shared))),
            Door::Direct(_) => Feed(None),
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
        if let Door::Queue { shared, .. } = &self.door {
            let mut state = shared.lock();
            let now = Instant::now();
            for left in state.queue.sweep(now) {
                shared.waiting.fetch_sub(1, Ordering::AcqRel);
                settle(&shared.model, left, now, &shared.stats);
            }
            shared.record_pending();
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
            self.stats.record_rejected(request.protocol);
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
            protocol: request.protocol,
            trace: request.trace,
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
            Door::Queue { shared, .. } => {
                let mut state = shared.lock();
                if state.batches.is_none() {
                    return Err(unloading());
                }
                let now = Instant::now();
                state.queue.push(Entry {
                    key: request.key,
                    rows: request.rows,
                    priority: request.priority,
                    enqueued: request.arrived,
                    deadline: request.deadline,
                    payload: job,
                });
                shared.dispatch(&mut state, now);
                shared.rearm_if_earlier(&mut state, now);
                Ok(())
            }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Whatever still waits has no one left to serve it; the instances finish the
        // batches they hold, then end as their channel closes.
        if let Door::Queue { shared, timers } = &self.door {
            timers.abort();
            let mut state = shared.lock();
            state.batches = None;
            let dropped = std::mem::replace(&mut state.queue, Queue::new(self.policy.clone()));
            drop(state);
            drop(dropped);
        }
    }
}

/// Acts when nothing else would: a group's delay running out, or a deadline passing,
/// while no instance comes free and no request arrives.
async fn timers(shared: Arc<Shared>) {
    loop {
        let wake = {
            let mut state = shared.lock();
            let now = Instant::now();
            shared.dispatch(&mut state, now);
            let wake = state.queue.next_wake(now);
            state.armed = wake;
            wake
        };
        tokio::select! {
            () = shared.rearm.notified() => {}
            () = async { sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {}
        }
    }
}

fn settle(model: &str, left: Left<Job>, now: Instant, stats: &ModelStats) {
    match left {
        Left::Expired(entry) => {
            stats.record_expired(entry.payload.protocol);
            let waited = now.duration_since(entry.enqueued);
            let _ = entry.payload.reply.send(Err(InferError::DeadlineExceeded {
                model: model.to_owned(),
                waited,
            }));
        }
        Left::Cancelled(entry) => stats.record_cancelled(entry.payload.protocol),
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
        /// Batches the test's "instances" took from the queue as they finished one.
        pulled: std::sync::Mutex<Vec<Batch>>,
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
        let stats = Arc::new(ModelStats::default());
        let scheduler = Scheduler::start(
            &tokio::runtime::Handle::current(),
            "m".into(),
            policy,
            instances,
            tx,
            Arc::clone(&stats),
        );
        Harness {
            scheduler,
            batches,
            pulled: Default::default(),
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
            protocol: Default::default(),
            trace: None,
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
                protocol: Default::default(),
                trace: None,
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
            let pulled = std::mem::take(&mut *self.pulled.lock().unwrap());
            pulled
                .into_iter()
                .chain(self.batches.try_iter())
                .map(|b| b.iter().map(|j| j.inputs[0].name.clone()).collect())
                .collect()
        }

        /// An instance finishes its batch and takes the next, if one can close.
        async fn finish_one(&self) {
            if let Some(batch) = self.scheduler.feed().next() {
                self.pulled.lock().unwrap().push(batch);
            }
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
