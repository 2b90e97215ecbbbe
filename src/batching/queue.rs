//! The waiting room of one model version: requests grouped by shape key, FIFO within a
//! priority level, and the rules that close a batch. Pure state, driven with explicit
//! instants, so every rule is testable without a clock.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::policy::{BatchPolicy, TimeoutAction};
use crate::job::ShapeKey;

/// What the queue needs to know of a waiting request's payload.
pub trait Waiting {
    /// Whether the caller has gone, so the request must not be computed.
    fn cancelled(&self) -> bool;
}

pub struct Entry<T> {
    pub key: ShapeKey,
    pub rows: usize,
    /// 1 is the highest.
    pub priority: u32,
    pub enqueued: Instant,
    /// Past it the request is answered DEADLINE_EXCEEDED instead of computed.
    pub deadline: Option<Instant>,
    pub payload: T,
}

struct Group<T> {
    key: ShapeKey,
    /// Index = priority level - 1; FIFO within each.
    levels: Vec<VecDeque<Entry<T>>>,
}

impl<T> Group<T> {
    fn entries(&self) -> impl Iterator<Item = &Entry<T>> {
        self.levels.iter().flatten()
    }

    fn is_empty(&self) -> bool {
        self.levels.iter().all(VecDeque::is_empty)
    }

    fn oldest(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|l| l.front())
            .map(|e| e.enqueued)
            .min()
    }

    /// The highest priority waiting here and the oldest arrival at that level.
    fn rank(&self) -> Option<(u32, Instant)> {
        self.levels
            .iter()
            .enumerate()
            .find_map(|(i, l)| l.front().map(|e| (i as u32 + 1, e.enqueued)))
    }
}

/// A batch closed by the queue, and the abandoned requests found while closing it.
pub struct Closed<T> {
    pub batch: Vec<Entry<T>>,
    pub abandoned: Vec<Entry<T>>,
}

/// What leaving the queue looks like.
pub enum Left<T> {
    Expired(Entry<T>),
    Cancelled(Entry<T>),
}

pub struct Queue<T> {
    policy: BatchPolicy,
    groups: Vec<Group<T>>,
    len: usize,
    /// No deadline falls before this; expiry scans are skipped until then.
    earliest_deadline: Option<Instant>,
}

impl<T: Waiting> Queue<T> {
    pub fn new(policy: BatchPolicy) -> Queue<T> {
        Queue {
            policy,
            groups: Vec::new(),
            len: 0,
            earliest_deadline: None,
        }
    }

    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, entry: Entry<T>) {
        if let Some(d) = entry.deadline {
            self.earliest_deadline = Some(self.earliest_deadline.map_or(d, |e| e.min(d)));
        }
        let levels = self.policy.priority_levels.max(1) as usize;
        let level = (entry.priority.clamp(1, levels as u32) - 1) as usize;
        let group = match self.groups.iter().position(|g| g.key == entry.key) {
            Some(i) => &mut self.groups[i],
            None => {
                self.groups.push(Group {
                    key: entry.key.clone(),
                    levels: (0..levels).map(|_| VecDeque::new()).collect(),
                });
                self.groups.last_mut().expect("just pushed")
            }
        };
        group.levels[level].push_back(entry);
        self.len += 1;
    }

    /// Removes what has expired by `now` (under REJECT) and what its caller abandoned.
    /// Cheap when no deadline is due: abandoned requests are otherwise skipped when a
    /// batch is formed.
    pub fn expire(&mut self, now: Instant) -> Vec<Left<T>> {
        let due = self.earliest_deadline.is_some_and(|d| d <= now);
        if !due {
            return Vec::new();
        }
        self.sweep(now)
    }

    /// Removes every expired or abandoned request, whatever the deadlines (also used when
    /// the queue is full, to make room that abandoned requests hold).
    pub fn sweep(&mut self, now: Instant) -> Vec<Left<T>> {
        let reject = self.policy.timeout_action == TimeoutAction::Reject;
        let mut left = Vec::new();
        let mut earliest: Option<Instant> = None;
        for group in &mut self.groups {
            for level in &mut group.levels {
                let mut kept = VecDeque::with_capacity(level.len());
                for entry in level.drain(..) {
                    if entry.payload.cancelled() {
                        left.push(Left::Cancelled(entry));
                    } else if reject && entry.deadline.is_some_and(|d| d <= now) {
                        left.push(Left::Expired(entry));
                    } else {
                        if let Some(d) = entry.deadline.filter(|_| reject) {
                            earliest = Some(earliest.map_or(d, |e| e.min(d)));
                        }
                        kept.push_back(entry);
                    }
                }
                *level = kept;
            }
        }
        self.groups.retain(|g| !g.is_empty());
        self.len -= left.len();
        self.earliest_deadline = earliest;
        left
    }

    /// The next instant at which something changes without a new arrival: a group's delay
    /// running out or a deadline passing.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let delays = self
            .groups
            .iter()
            .filter(|g| !self.ready(g, now))
            .filter_map(|g| g.oldest())
            .map(|o| o + self.policy.max_queue_delay);
        let deadline = self
            .earliest_deadline
            .filter(|_| self.policy.timeout_action == TimeoutAction::Reject);
        delays.chain(deadline).min()
    }

    /// The rows a batch would take from `group` now, in order: whole requests, by priority
    /// then arrival, while they fit. Returns (rows per request taken, whether the next one
    /// could not fit).
    fn prefix(&self, group: &Group<T>) -> (Vec<usize>, bool) {
        let max = if self.policy.enabled {
            self.policy.max_rows
        } else {
            0
        };
        let mut taken = Vec::new();
        let mut total = 0;
        for entry in group.entries() {
            if entry.payload.cancelled() {
                taken.push(0);
                continue;
            }
            // Unbatched: exactly one request per batch.
            if !self.policy.enabled {
                if total > 0 {
                    return (taken, true);
                }
                taken.push(entry.rows);
                total += entry.rows;
                continue;
            }
            // A request bigger than the formed batches (but within max_rows, as validated)
            // runs alone rather than waiting for ever.
            if total + entry.rows > max && total > 0 {
                return (taken, true);
            }
            taken.push(entry.rows);
            total += entry.rows;
        }
        (taken, false)
    }

    fn ready(&self, group: &Group<T>, now: Instant) -> bool {
        let (taken, blocked) = self.prefix(group);
        let rows: usize = taken.iter().sum();
        if rows == 0 {
            // Only abandoned requests: ready to be cleared away.
            return !taken.is_empty();
        }
        blocked
            || rows >= self.policy.full_rows()
            || group
                .oldest()
                .is_some_and(|o| now.duration_since(o) >= self.policy.max_queue_delay)
    }

    /// Closes the best ready batch, if any group is ready: groups rank by their highest
    /// waiting priority, then by the age of its oldest request, so no shape starves.
    /// Returns the requests to run together (in order) and those found abandoned.
    pub fn next_batch(&mut self, now: Instant) -> Option<Closed<T>> {
        let best = self
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| self.ready(g, now))
            .min_by_key(|(_, g)| g.rank())
            .map(|(i, _)| i)?;
        let (taken, _) = self.prefix(&self.groups[best]);
        // The largest preferred size the prefix reaches exactly; else all of it.
        let mut sums = Vec::with_capacity(taken.len());
        let mut total = 0;
        for rows in &taken {
            total += rows;
            sums.push(total);
        }
        let count = if self.policy.enabled {
            self.policy
                .preferred
                .iter()
                .rev()
                .find_map(|p| sums.iter().rposition(|s| s == p))
                .map_or(taken.len(), |i| i + 1)
        } else {
            taken.len()
        };
        let group = &mut self.groups[best];
        let mut batch = Vec::new();
        let mut abandoned = Vec::new();
        let mut remaining = count;
        for level in &mut group.levels {
            while remaining > 0 {
                let Some(entry) = level.pop_front() else {
                    break;
                };
                remaining -= 1;
                if entry.payload.cancelled() {
                    abandoned.push(entry);
                } else {
                    batch.push(entry);
                }
            }
        }
        if group.is_empty() {
            self.groups.swap_remove(best);
        }
        self.len -= batch.len() + abandoned.len();
        Some(Closed { batch, abandoned })
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, collections::HashSet, rc::Rc, time::Duration};

    use proptest::prelude::*;

    use super::*;
    use crate::tensor::DataType;

    /// What the test remembers of a pushed request: key, rows, cancel flag, deadline.
    type Pushed = (ShapeKey, usize, Rc<Cell<bool>>, Option<Instant>);

    struct Payload {
        id: usize,
        gone: Rc<Cell<bool>>,
    }

    impl Waiting for Payload {
        fn cancelled(&self) -> bool {
            self.gone.get()
        }
    }

    fn policy(max_rows: usize, preferred: &[usize], delay_ms: u64, levels: u32) -> BatchPolicy {
        BatchPolicy {
            enabled: true,
            max_rows,
            form_rows: max_rows,
            preferred: preferred.to_vec(),
            max_queue_delay: Duration::from_millis(delay_ms),
            max_queue_size: 1 << 20,
            default_timeout: None,
            allow_timeout_override: true,
            timeout_action: TimeoutAction::Reject,
            priority_levels: levels,
            default_priority: 1,
            direct: false,
        }
    }

    fn key(k: usize) -> ShapeKey {
        vec![(DataType::Fp32, vec![k])].into()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            key: usize,
            rows: usize,
            priority: u32,
            timeout_ms: Option<u64>,
        },
        Advance(u64),
        Cancel(usize),
        Dispatch,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, 1..=4usize, 1..=2u32, proptest::option::of(0..20u64))
                .prop_map(|(key, rows, priority, timeout_ms)| Op::Push { key, rows, priority, timeout_ms }),
            2 => (0..15u64).prop_map(Op::Advance),
            1 => (0..64usize).prop_map(Op::Cancel),
            3 => Just(Op::Dispatch),
        ]
    }

    proptest! {
        /// Any interleaving of arrivals, cancellations, timeouts and dispatches loses no
        /// request, answers none twice, and every answer belongs to its own request.
        #[test]
        fn no_request_is_lost_or_answered_twice(ops in proptest::collection::vec(op(), 1..120)) {
            let policy = policy(6, &[2, 4], 5, 2);
            let mut queue: Queue<Payload> = Queue::new(policy.clone());
            let start = Instant::now();
            let mut now = start;
            let mut pushed: Vec<Pushed> = Vec::new();
            let mut settled: HashSet<usize> = HashSet::new();
            let settle = |id: usize, settled: &mut HashSet<usize>| {
                prop_assert!(settled.insert(id), "request {} answered twice", id);
                Ok(())
            };
            let check_left = |left: Vec<Left<Payload>>, now: Instant, pushed: &[Pushed], settled: &mut HashSet<usize>| -> Result<(), TestCaseError> {
                for l in left {
                    match l {
                        Left::Expired(e) => {
                            prop_assert!(e.deadline.is_some_and(|d| d <= now));
                            prop_assert_eq!(pushed[e.payload.id].3, e.deadline);
                            settle(e.payload.id, settled)?;
                        }
                        Left::Cancelled(e) => {
                            prop_assert!(e.payload.gone.get());
                            settle(e.payload.id, settled)?;
                        }
                    }
                }
                Ok(())
            };
            for op in ops.iter().cloned().chain((0..40).flat_map(|_| [Op::Advance(10), Op::Dispatch])) {
                match op {
                    Op::Push { key: k, rows, priority, timeout_ms } => {
                        let gone = Rc::new(Cell::new(false));
                        let deadline = timeout_ms.map(|t| now + Duration::from_millis(t));
                        let id = pushed.len();
                        pushed.push((key(k), rows, Rc::clone(&gone), deadline));
                        queue.push(Entry { key: key(k), rows, priority, enqueued: now, deadline, payload: Payload { id, gone } });
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Cancel(i) => if let Some(p) = pushed.get(i) { p.2.set(true) },
                    Op::Dispatch => {
                        let left = queue.expire(now);
                        check_left(left, now, &pushed, &mut settled)?;
                        while let Some(Closed { batch, abandoned }) = queue.next_batch(now) {
                            prop_assert!(!batch.is_empty() || !abandoned.is_empty());
                            let rows: usize = batch.iter().map(|e| e.rows).sum();
                            prop_assert!(rows <= policy.max_rows, "batch of {} rows", rows);
                            for e in &batch {
                                let (k, r, gone, deadline) = &pushed[e.payload.id];
                                prop_assert_eq!(&e.key, k, "answer for the wrong request");
                                prop_assert_eq!(&batch[0].key, k, "mixed shapes in one batch");
                                prop_assert_eq!(e.rows, *r);
                                prop_assert!(!gone.get(), "computed for a caller who had gone");
                                prop_assert!(deadline.is_none_or(|d| d > now), "computed past its deadline");
                                settle(e.payload.id, &mut settled)?;
                            }
                            for e in abandoned {
                                prop_assert!(e.payload.gone.get());
                                settle(e.payload.id, &mut settled)?;
                            }
                        }
                    }
                }
            }
            prop_assert_eq!(settled.len(), pushed.len(), "requests lost");
            prop_assert!(queue.is_empty());
        }
    }

    fn entry(id: usize, k: usize, rows: usize, at: Instant) -> Entry<Payload> {
        Entry {
            key: key(k),
            rows,
            priority: 1,
            enqueued: at,
            deadline: None,
            payload: Payload {
                id,
                gone: Rc::new(Cell::new(false)),
            },
        }
    }

    fn ids(batch: &[Entry<Payload>]) -> Vec<usize> {
        batch.iter().map(|e| e.payload.id).collect()
    }

    #[test]
    fn whole_requests_are_packed_and_never_split() {
        let t = Instant::now();
        let mut q = Queue::new(policy(8, &[4, 8], 100, 0));
        for id in 0..3 {
            q.push(entry(id, 0, 3, t));
        }
        // 3 + 3 fit, the third would make 9 > 8: full at 6 rows, no waiting.
        let batch = q.next_batch(t).unwrap().batch;
        assert_eq!(ids(&batch), vec![0, 1]);
        assert!(
            q.next_batch(t).is_none(),
            "3 rows wait for more or for the delay"
        );
        assert_eq!(q.next_wake(t), Some(t + Duration::from_millis(100)));
    }

    #[test]
    fn the_largest_preferred_size_reached_is_taken() {
        let t = Instant::now();
        let mut q = Queue::new(policy(8, &[2, 4], 10, 0));
        for id in 0..3 {
            q.push(entry(id, 0, 1, t));
        }
        assert!(q.next_batch(t).is_none());
        let later = t + Duration::from_millis(10);
        let batch = q.next_batch(later).unwrap().batch;
        assert_eq!(
            ids(&batch),
            vec![0, 1],
            "3 rows waited: the preferred 2 go, 1 stays"
        );
    }
}
