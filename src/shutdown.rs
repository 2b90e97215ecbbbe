//! The drain: count admitted requests so that shutdown can wait for exactly those, and
//! no longer than the grace period.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

/// Counts requests admitted and not yet answered.
#[derive(Debug)]
pub struct InFlight {
    count: Arc<watch::Sender<usize>>,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            count: Arc::new(watch::channel(0).0),
        }
    }
}

impl InFlight {
    /// Counts one request (or an open stream) until the guard drops (answered, failed
    /// or abandoned).
    pub fn admit(&self) -> Admitted {
        self.count.send_modify(|n| *n += 1);
        Admitted(Arc::clone(&self.count))
    }

    pub fn count(&self) -> usize {
        *self.count.borrow()
    }

    /// Resolves when nothing is in flight, or after `grace`; true if drained in time.
    pub async fn drained(&self, grace: Duration) -> bool {
        let mut count = self.count.subscribe();
        let drained = tokio::time::timeout(grace, count.wait_for(|n| *n == 0)).await;
        drained.is_ok()
    }
}

pub struct Admitted(Arc<watch::Sender<usize>>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_the_last_guard_or_the_grace_period() {
        let in_flight = InFlight::default();
        assert!(in_flight.drained(Duration::from_secs(1)).await);
        let guard = in_flight.admit();
        assert_eq!(in_flight.count(), 1);
        assert!(!in_flight.drained(Duration::from_secs(1)).await);
        let (done, ()) = tokio::join!(in_flight.drained(Duration::from_secs(5)), async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(guard);
        });
        assert!(done);
    }
}
