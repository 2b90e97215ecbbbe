//! The autoscaling signal: the work a model version holds (queued and running, each
//! request estimated from the cost curves measured at warmup) over the work its instances
//! can finish within the latency objective, averaged over time.
//!
//! Why not Triton's average queue time: that is a per-request average over requests that
//! have *finished* waiting, so while a backlog grows the requests stuck in it are not yet
//! counted, a burst of fast requests dilutes it, and a queue that refuses work (full) looks
//! no worse than one that is merely busy (Triton #8979). Here every request counts from the
//! moment it arrives, the average is over time, and refusals push the value above 1.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::job::WorkToken;

/// How fast the smoothed value follows the instant one: after a step in load it has moved
/// 63% of the way in this time, 95% in three times it. Short beside the HPA's 15 s sync
/// and the scrape interval, long beside one batch.
pub const SMOOTHING: Duration = Duration::from_secs(5);

/// How often the server samples every backlog.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// One model version's outstanding work.
#[derive(Debug)]
pub struct Backlog {
    /// Estimated nanoseconds of engine time held by requests admitted and not answered.
    work_ns: Arc<AtomicU64>,
    arrived: AtomicU64,
    refused: AtomicU64,
    /// Nanoseconds of engine time the instances finish within the objective.
    capacity_ns: f64,
    /// Nanoseconds per row seen on the last engine call: the estimate when warmup measured
    /// nothing.
    observed_row_ns: AtomicU64,
    smoothed: Mutex<f64>,
}

impl Backlog {
    pub fn new(instances: usize, objective: Duration) -> Arc<Backlog> {
        Arc::new(Backlog {
            work_ns: Arc::new(AtomicU64::new(0)),
            arrived: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            capacity_ns: (instances.max(1) as f64 * objective.as_nanos() as f64).max(1.0),
            observed_row_ns: AtomicU64::new(0),
            smoothed: Mutex::new(0.0),
        })
    }

    /// A request arrives carrying `work_ns` of estimated engine time; the work leaves the
    /// backlog when the token is dropped, whichever way the request ends.
    pub fn arrive(self: &Arc<Self>, work_ns: u64) -> WorkToken {
        self.arrived.fetch_add(1, Ordering::Relaxed);
        WorkToken::hold(&self.work_ns, work_ns)
    }

    /// A request that arrived was turned away (queue full).
    pub fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_row_cost(&self, per_row: Duration) {
        self.observed_row_ns
            .store(per_row.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn observed_row_ns(&self) -> u64 {
        self.observed_row_ns.load(Ordering::Relaxed)
    }

    /// The ratio now: 1.0 means the last request admitted finishes right at the objective.
    pub fn instant(&self) -> f64 {
        self.work_ns.load(Ordering::Relaxed) as f64 / self.capacity_ns
    }

    /// Takes one sample, `elapsed` after the previous, and returns the smoothed ratio.
    /// Refusals since the previous sample lift it to at least 1 plus the refused share:
    /// a pod that turns work away is past saturation whatever its queue holds.
    pub fn sample(&self, elapsed: Duration) -> f64 {
        let arrived = self.arrived.swap(0, Ordering::Relaxed);
        let refused = self.refused.swap(0, Ordering::Relaxed);
        let mut now = self.instant();
        if refused > 0 {
            now = now.max(1.0 + refused as f64 / arrived.max(refused) as f64);
        }
        let alpha = 1.0 - (-elapsed.as_secs_f64() / SMOOTHING.as_secs_f64()).exp();
        let mut smoothed = self.smoothed.lock().expect("saturation lock");
        *smoothed += alpha * (now - *smoothed);
        *smoothed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_leaves_the_backlog_however_the_request_ends() {
        let backlog = Backlog::new(2, Duration::from_millis(100));
        let a = backlog.arrive(100_000_000);
        let b = backlog.arrive(60_000_000);
        assert!((backlog.instant() - 0.8).abs() < 1e-9);
        drop(a);
        assert!((backlog.instant() - 0.3).abs() < 1e-9);
        drop(b);
        assert_eq!(backlog.instant(), 0.0);
    }

    #[test]
    fn smoothed_value_rises_under_load_falls_after_and_refusals_lift_it_past_one() {
        let backlog = Backlog::new(1, Duration::from_millis(10));
        let held = backlog.arrive(20_000_000); // twice the objective
        let mut value = 0.0;
        for _ in 0..60 {
            value = backlog.sample(Duration::from_millis(250)); // 15 s = 3 time constants
        }
        assert!((1.85..=2.0).contains(&value), "{value}");
        drop(held);
        for _ in 0..60 {
            value = backlog.sample(Duration::from_millis(250));
        }
        assert!(value < 0.1, "{value}");
        // Half of the arrivals refused, with nothing queued: 1.5, approached over time.
        for _ in 0..60 {
            drop(backlog.arrive(0));
            drop(backlog.arrive(0));
            backlog.refuse();
            value = backlog.sample(Duration::from_millis(250));
        }
        assert!((1.4..=1.5).contains(&value), "{value}");
    }
}
