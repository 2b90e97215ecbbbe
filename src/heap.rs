//! The process's allocator (mimalloc) and the per-thread byte counts that a model's load
//! and its first call are measured by (`measure`).
//!
//! Counting is per thread and only while a `measure` runs on it: the request path pays one
//! thread-local read per allocation and nothing more. glibc's allocator, with its counting
//! wrapper, was about a sixth of the server's samples at concurrency 64 on a trivial model
//! (benches/README.md, issue 13).
#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout},
    cell::Cell,
};

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: Counting<MiMalloc> = Counting(MiMalloc);

/// mimalloc's options that keep the resident set near glibc's: freed memory goes back to
/// the OS after 100 ms (unless `MIMALLOC_PURGE_DELAY`, mimalloc's own variable, says
/// otherwise), and arenas reserved from now on are committed as they are used. With transparent huge pages off (the `no_thp` feature in Cargo.toml)
/// and `release_freed` after loading, PP-OCR rec on one instance holds 84 MiB under load
/// against glibc's 100, at the same throughput (benches/README.md); with mimalloc's
/// defaults it held about 50 MiB more than glibc once loaded. Call first thing in `main`.
///
/// A shorter delay is the edge's choice, not the default: `MIMALLOC_PURGE_DELAY=10` cuts
/// the cheque's peak at concurrency 4 on tract by ~40-60 MiB, and costs PP-OCR 6-10% of
/// its images/s and a trivial model 5-10% of its requests/s at concurrency 64, as freed
/// pages fault in again (benches/README.md, issue 33). Tried and not kept:
/// tensors over 1 MiB mapped from the OS for each call (~80 MiB lower, PP-OCR on tract a
/// third slower: the fresh pages' faults).
pub fn tune() {
    // SAFETY: plain setters of process-wide integers; called before any thread is started
    // (mimalloc's note: the setter is not thread safe).
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, 100);
        }
    }
}

// The option numbers of mimalloc 2 and 3 alike (mimalloc.h's mi_option_e, which the
// crate's bindings do not name).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory waits before it goes back to the OS, in milliseconds.
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: a plain getter of a process-wide integer.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

/// Hands freed memory back to the OS now (the calling thread's heap, and what other
/// threads left), instead of when a thread next allocates after the purge delay: after
/// loading, and when a worker goes idle after a heavy call, which would otherwise sit on
/// the largest working set that call had.
pub fn release_freed() {
    // SAFETY: takes no arguments; safe to call from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// What a closure allocated on its thread, net of what it freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// Still allocated at its end (negative where it freed more than it allocated).
    pub bytes_current: i64,
    /// The most it held at once.
    pub bytes_max: u64,
}

struct Counter {
    /// Open `measure` calls on this thread; nothing is counted at zero.
    depth: Cell<u32>,
    /// Net bytes allocated while counting.
    net: Cell<i64>,
    /// The highest `net` since the innermost `measure` began.
    peak: Cell<i64>,
}

thread_local! {
    // Const-initialised and without a destructor, so the allocator may touch it at any
    // point of a thread's life without allocating or recursing.
    static COUNTER: Counter = const {
        Counter { depth: Cell::new(0), net: Cell::new(0), peak: Cell::new(0) }
    };
}

fn count(delta: i64) {
    let _ = COUNTER.try_with(|c| {
        if c.depth.get() > 0 {
            let net = c.net.get() + delta;
            c.net.set(net);
            if net > c.peak.get() {
                c.peak.set(net);
            }
        }
    });
}

/// Runs `f` and returns what it allocated on this thread (allocations it makes on other
/// threads are not seen). Calls nest: an inner call's bytes count in the outer one too.
pub fn measure(f: impl FnOnce()) -> Measured {
    let (start, outer_peak) = COUNTER.with(|c| {
        c.depth.set(c.depth.get() + 1);
        let start = c.net.get();
        (start, c.peak.replace(start))
    });
    // Closes the count however `f` ends: a panic that a caller catches (an engine's, say)
    // must not leave the thread counting for good, nor lose an outer call's peak.
    struct Open {
        outer_peak: i64,
    }
    impl Drop for Open {
        fn drop(&mut self) {
            let _ = COUNTER.try_with(|c| {
                c.depth.set(c.depth.get() - 1);
                c.peak.set(c.peak.get().max(self.outer_peak));
            });
        }
    }
    let open = Open { outer_peak };
    f();
    let measured = COUNTER.with(|c| Measured {
        bytes_current: c.net.get() - start,
        bytes_max: (c.peak.get() - start).max(0) as u64,
    });
    drop(open);
    measured
}

struct Counting<A>(A);

// SAFETY: every call is forwarded unchanged to the wrapped allocator, which upholds the
// GlobalAlloc contract; the counting touches only a const thread-local of Cells (no
// allocation, no re-entry).
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        // SAFETY: as alloc.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as i64));
        // SAFETY: ptr came from this allocator with this layout, per the caller.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as i64 - layout.size() as i64);
        // SAFETY: ptr, layout and new_size as the caller guarantees for realloc.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_kept_and_the_peak() {
        let mut kept = Vec::new();
        let measured = measure(|| {
            let scratch = vec![0u8; 1 << 20];
            drop(std::hint::black_box(scratch));
            kept = vec![0u8; 1000];
        });
        assert_eq!(measured.bytes_current, 1000);
        assert!(measured.bytes_max >= 1 << 20, "{measured:?}");
        assert!(measured.bytes_max < (1 << 20) + 1000 + 4096, "{measured:?}");
        drop(kept);
    }

    #[test]
    fn nested_calls_count_in_the_outer_one() {
        let mut inner = None;
        let mut held = Vec::new();
        let outer = measure(|| {
            held = vec![0u8; 500];
            inner = Some(measure(|| drop(std::hint::black_box(vec![0u8; 4000]))));
        });
        let inner = inner.unwrap();
        assert_eq!(inner.bytes_current, 0);
        assert!(inner.bytes_max >= 4000, "{inner:?}");
        assert_eq!(outer.bytes_current, 500);
        assert!(outer.bytes_max >= 4500, "{outer:?}");
    }

    #[test]
    fn a_panic_inside_closes_the_count() {
        let outer = measure(|| {
            drop(std::hint::black_box(vec![0u8; 8000]));
            let caught = std::panic::catch_unwind(|| measure(|| panic!("engine fault")));
            assert!(caught.is_err());
        });
        assert!(
            outer.bytes_max >= 8000,
            "the outer peak survives: {outer:?}"
        );
        assert_eq!(
            COUNTER.with(|c| c.depth.get()),
            0,
            "still counting after the panic"
        );
    }

    #[test]
    fn other_threads_are_not_counted() {
        let measured = measure(|| {
            std::thread::scope(|s| {
                s.spawn(|| drop(std::hint::black_box(vec![0u8; 1 << 22])));
            });
        });
        assert!(measured.bytes_max < 1 << 22, "{measured:?}");
    }
}
