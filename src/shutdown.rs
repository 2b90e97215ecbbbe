//! The drain: one handle that tells every part the server is stopping and joins every
//! background task, and the count of admitted requests that shutdown waits for, no longer
//! than the grace period.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The one drain handle. Every background task is spawned through it and ends once
/// `signaled` resolves (each finishing its part of the drain first); `start` signals,
/// `joined` waits for them all.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    signal: CancellationToken,
    tasks: TaskTracker,
}

impl Drain {
    /// Runs `task` as one of the server's background tasks, joined by `joined`.
    pub fn spawn<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.tasks.spawn(task)
    }

    /// Resolves once the drain has started.
    pub async fn signaled(&self) {
        self.signal.cancelled().await
    }

    pub fn is_signaled(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// From now on new requests are refused and background tasks wind down.
    pub fn start(&self) {
        self.signal.cancel();
        self.tasks.close();
    }

    /// Resolves when every background task has ended, or after `within`; true if all did.
    pub async fn joined(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok()
    }
}

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
        // Only `drained` waits, and only for zero: a rise wakes nobody.
        self.count.send_if_modified(|n| {
            *n += 1;
            false
        });
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
        self.0.send_if_modified(|n| {
            *n -= 1;
            *n == 0
        });
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
