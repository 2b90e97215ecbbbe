//! The in-flight byte budget: the request bytes that every request being served holds,
//! from arrival to answer, admitted against one limit, as queue slots are per model.

use std::sync::Arc;

use bytesize::ByteSize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A request's bytes refused: the budget holds too much already.
#[derive(Debug, thiserror::Error)]
#[error("a request of {bytes} was refused: requests in flight hold {held} of the {limit} budget (--max-inflight-bytes); retry later")]
pub struct OverBudget {
    pub bytes: ByteSize,
    pub held: ByteSize,
    pub limit: ByteSize,
}

/// Bytes are counted in KiB so that a budget of terabytes fits the semaphore's permits.
const UNIT: usize = 1024;

#[derive(Debug)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    limit: usize,
}

/// Bytes admitted against the budget, given back when dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] OwnedSemaphorePermit);

impl ByteBudget {
    pub fn new(limit_bytes: usize) -> ByteBudget {
        let units = (limit_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        ByteBudget {
            permits: Arc::new(Semaphore::new(units)),
            limit: units * UNIT,
        }
    }

    /// Admits `bytes` at once, or refuses them at once: a request never waits for room.
    pub fn try_hold(&self, bytes: usize) -> Result<Held, OverBudget> {
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        Arc::clone(&self.permits)
            .try_acquire_many_owned(units)
            .map(Held)
            .map_err(|_| OverBudget {
                bytes: ByteSize::b(bytes as u64),
                held: ByteSize::b(self.held() as u64),
                limit: ByteSize::b(self.limit as u64),
            })
    }

    /// Bytes held now (to the KiB).
    pub fn held(&self) -> usize {
        (self.limit / UNIT - self.permits.available_permits()) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_held_until_dropped_and_refused_past_the_limit() {
        let budget = ByteBudget::new(10 * 1024);
        let a = budget.try_hold(6 * 1024).unwrap();
        assert_eq!(budget.held(), 6 * 1024);
        let refused = budget.try_hold(5 * 1024).unwrap_err().to_string();
        assert_eq!(
            refused,
            "a request of 5.0 KiB was refused: requests in flight hold 6.0 KiB of the 10.0 KiB \
             budget (--max-inflight-bytes); retry later"
        );
        let _b = budget.try_hold(4 * 1024).unwrap();
        drop(a);
        assert_eq!(budget.held(), 4 * 1024);
        assert!(budget.try_hold(1).is_ok(), "a byte costs one unit");
        assert!(budget.try_hold(usize::MAX).is_err(), "no overflow");
    }
}
