//! Dynamic batching: one scheduler per model version owns its queue, closes batches by
//! the policy's rules, and hands them to idle instances only, so a batch keeps growing
//! while every instance is busy.

pub mod cost;
pub mod policy;
pub mod queue;

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use crossbeam_channel::Sender;
use tokio::{
    sync::mpsc,
    task::JoinHandle,
    time::{sleep_until, Instant},
};

pub use policy::BatchPolicy;
pub use queue::{Entry, Left, Queue, ShapeKey, Waiting};

use crate::{
    error::InferError,
    stats::ModelStats,
    workers::{Batch, Job},
};

impl Waiting for Job {
    fn cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

/// The door to a model's queue.
pub struct Scheduler {
    model: String,
    /// Unbounded as a channel, bounded in effect: `waiting` admits at most max_queue_size
    /// requests before any reaches it.
    arrivals: mpsc::UnboundedSender<Entry<Job>>,
    waiting: Arc<AtomicUsize>,
    policy: BatchPolicy,
    task: JoinHandle<()>,
}

impl Scheduler {
    /// Starts the scheduler task on `runtime`. `batches` leads to `instances` workers,
    /// each of which sends on `done` when it finishes a batch.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        model: String,
        policy: BatchPolicy,
        instances: usize,
        batches: Sender<Batch>,
        done: mpsc::Receiver<()>,
        stats: Arc<ModelStats>,
    ) -> Scheduler {
        let (arrivals, incoming) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let queue = Queue::new(policy.clone());
        let task = runtime.spawn(run(
            model.clone(),
            queue,
            incoming,
            batches,
            done,
            instances,
            Arc::clone(&waiting),
            stats,
        ));
        Scheduler {
            model,
            arrivals,
            waiting,
            policy,
            task,
        }
    }

    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// Requests admitted and not yet handed to an instance.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Admits a request or refuses it at once when the queue is full.
    pub fn submit(&self, entry: Entry<Job>) -> Result<(), InferError> {
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        if before >= self.policy.max_queue_size {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(InferError::QueueFull {
                model: self.model.clone(),
                capacity: self.policy.max_queue_size,
            });
        }
        self.arrivals.send(entry).map_err(|_| {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            InferError::ModelUnavailable {
                model: self.model.clone(),
                reason: "it is unloading".into(),
            }
        })
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Whatever still waits has no one left to serve it; the workers finish the
        // batches they hold once the task (and with it the batch sender) is gone.
        self.task.abort();
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
    waiting: Arc<AtomicUsize>,
    stats: Arc<ModelStats>,
) {
    let mut idle = instances;
    loop {
        let wake = queue.next_wake(Instant::now());
        tokio::select! {
            arrival = incoming.recv() => match arrival {
                Some(entry) => queue.push(entry),
                None => return,
            },
            Some(()) = done.recv() => idle += 1,
            () = async { sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {}
        }
        // Take every arrival already there before forming a batch from them.
        while let Ok(entry) = incoming.try_recv() {
            queue.push(entry);
        }
        let now = Instant::now();
        for left in queue.expire(now) {
            waiting.fetch_sub(1, Ordering::AcqRel);
            settle(&model, left, now, &stats);
        }
        while idle > 0 {
            let Some((batch, abandoned)) = queue.next_batch(now) else {
                break;
            };
            waiting.fetch_sub(batch.len() + abandoned.len(), Ordering::AcqRel);
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
