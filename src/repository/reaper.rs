//! Where a version's engine side is dropped once its last holder lets go: on a thread of
//! its own, because dropping it joins its worker threads, and the last holder is often a
//! request on an async thread that must not block.

use std::sync::{Condvar, Mutex, PoisonError};

use tracing::warn;

/// Drops handed over and not yet done, process-wide, so that shutdown can wait for them.
static PENDING: Mutex<usize> = Mutex::new(0);
static DONE: Condvar = Condvar::new();

/// Runs `drop` (which drops what it owns, then says so) on a thread of its own.
pub fn reap(drop: impl FnOnce() + Send + 'static) {
    *PENDING.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    let done = Done;
    let spawned = std::thread::Builder::new()
        .name("wharf-unload".into())
        .spawn(move || {
            let _done = done;
            drop();
        });
    if let Err(e) = spawned {
        // The closure was dropped with the thread that never started: what it held was
        // dropped here.
        warn!(error = %e, "cannot start an unload thread; unloaded on this one");
    }
}

/// Counts a handed-over drop as done when it goes, run, panicked or never started.
struct Done;

impl Drop for Done {
    fn drop(&mut self) {
        *PENDING.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        DONE.notify_all();
    }
}

/// Blocks until every drop handed over so far (and any that those hand over) is done.
pub fn flush() {
    let pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
    drop(DONE.wait_while(pending, |pending| *pending > 0));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{atomic::AtomicBool, atomic::Ordering, Arc};

    #[test]
    fn flush_waits_for_drops_and_the_drops_they_start() {
        let inner = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&inner);
        reap(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            reap(move || seen.store(true, Ordering::SeqCst));
        });
        flush();
        assert!(inner.load(Ordering::SeqCst));
    }
}
