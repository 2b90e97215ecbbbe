//! tract's optimised plans per input shape: built once, shared by every instance, and kept
//! within a count and a byte bound, the least recently used let go first.

use std::sync::{Arc, Mutex, OnceLock};

use lru::LruCache;

use crate::heap;

pub type InputShapes = Vec<Vec<usize>>;

/// A plan with the heap bytes its build kept, or why the graph rejects the shapes (kept
/// too, so that such shapes cost one attempt, not one per request).
type Built<T> = Result<(Arc<T>, u64), String>;
/// A plan being built or built.
type Cell<T> = Arc<OnceLock<Built<T>>>;

/// Plans of type `T` (tract's runnable model; anything in the tests).
pub struct Plans<T> {
    cache: Mutex<Cache<T>>,
    max_count: usize,
    max_bytes: u64,
}

struct Cache<T> {
    lru: LruCache<InputShapes, Cell<T>>,
    /// What the cached plans' builds kept, together.
    bytes: u64,
}

fn bytes_of<T>(cell: &Cell<T>) -> u64 {
    match cell.get() {
        Some(Ok((_, bytes))) => *bytes,
        _ => 0,
    }
}

impl<T> Plans<T> {
    pub fn new(max_count: usize, max_bytes: u64) -> Plans<T> {
        Plans {
            cache: Mutex::new(Cache {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            max_count,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache<T>> {
        self.cache.lock().expect("plan cache lock")
    }

    /// The plan for `shapes`, made by `build` on first use (outside the lock: other shapes
    /// stay servable while one compiles) and shared afterwards.
    pub fn get(
        &self,
        shapes: &InputShapes,
        build: impl FnOnce() -> Result<Arc<T>, String>,
    ) -> Result<Arc<T>, String> {
        let cell = {
            let mut cache = self.lock();
            match cache.lru.get(shapes) {
                Some(cell) => Arc::clone(cell),
                None => {
                    let cell: Cell<T> = Arc::default();
                    cache.lru.put(shapes.clone(), Arc::clone(&cell));
                    cell
                }
            }
        };
        let mut built_here = false;
        let built = cell.get_or_init(|| {
            built_here = true;
            let mut plan = None;
            let measured = heap::measure(|| plan = Some(build()));
            let kept = measured.bytes_current.max(0) as u64;
            plan.expect("the measured closure ran")
                .map(|plan| (plan, kept))
        });
        if built_here {
            self.account(shapes, &cell);
        }
        built.clone().map(|(plan, _)| plan)
    }

    /// Counts a plan just built, if it is still cached, and lets the least recently used
    /// others go while the cache is over either bound.
    fn account(&self, shapes: &InputShapes, cell: &Cell<T>) {
        let mut cache = self.lock();
        if !cache.lru.peek(shapes).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            return; // let go while it was being built
        }
        cache.bytes += bytes_of(cell);
        tracing::debug!(shapes = ?shapes, bytes = bytes_of(cell), cached_bytes = cache.bytes, "tract: plan kept");
        let mut newest = None;
        while cache.lru.len() > self.max_count || cache.bytes > self.max_bytes {
            let Some((key, old)) = cache.lru.pop_lru() else {
                break;
            };
            if key == *shapes {
                newest = Some((key, old)); // kept, whatever its size: it is wanted now
                continue;
            }
            cache.bytes -= bytes_of(&old);
            tracing::debug!(shapes = ?key, bytes = bytes_of(&old), "tract: plan let go");
        }
        if let Some((key, cell)) = newest {
            cache.lru.put(key, cell);
        }
    }

    /// Whether `plan` is the one cached for `shapes`: a run state of any other would keep
    /// a plan alive that the cache has let go.
    pub fn holds(&self, shapes: &InputShapes, plan: &Arc<T>) -> bool {
        let cache = self.lock();
        matches!(cache.lru.peek(shapes).and_then(|c| c.get()), Some(Ok((p, _))) if Arc::ptr_eq(p, plan))
    }

    /// Lets the plan for `shapes` go.
    pub fn forget(&self, shapes: &InputShapes) {
        let mut cache = self.lock();
        if let Some(cell) = cache.lru.pop(shapes) {
            cache.bytes -= bytes_of(&cell);
        }
    }

    /// The shapes planned, least recently used first, and their plans' bytes together.
    #[cfg(test)]
    pub fn contents(&self) -> (Vec<InputShapes>, u64) {
        let cache = self.lock();
        let shapes = cache.lru.iter().rev().map(|(k, _)| k.clone()).collect();
        (shapes, cache.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// A "plan" that keeps `size` bytes on the heap.
    fn build(size: usize) -> impl FnOnce() -> Result<Arc<Vec<u8>>, String> {
        move || Ok(Arc::new(vec![1u8; size]))
    }

    fn shape(n: usize) -> InputShapes {
        vec![vec![1, n]]
    }

    #[test]
    fn plans_are_let_go_least_recently_used_first_past_the_byte_bound() {
        let plans = Plans::new(16, 10 * MIB as u64);
        for n in 0..3 {
            plans.get(&shape(n), build(4 * MIB)).unwrap();
        }
        let (kept, bytes) = plans.contents();
        assert_eq!(kept, vec![shape(1), shape(2)]);
        assert!((8 * MIB as u64..9 * MIB as u64).contains(&bytes), "{bytes}");
        // Used again, 1 is kept over 2 when 3 comes.
        plans.get(&shape(1), build(0)).unwrap();
        plans.get(&shape(3), build(4 * MIB)).unwrap();
        assert_eq!(plans.contents().0, vec![shape(1), shape(3)]);
    }

    #[test]
    fn the_count_bounds_too_and_the_newest_stays_whatever_its_size() {
        let plans = Plans::new(2, 1 << 30);
        for n in 0..3 {
            plans.get(&shape(n), build(1000)).unwrap();
        }
        assert_eq!(plans.contents().0, vec![shape(1), shape(2)]);
        let small = Plans::new(16, MIB as u64);
        let big = small.get(&shape(9), build(2 * MIB)).unwrap();
        assert_eq!(small.contents().0, vec![shape(9)]);
        assert!(small.holds(&shape(9), &big));
    }

    #[test]
    fn a_plan_is_built_once_and_held_until_let_go() {
        let plans = Plans::new(16, 1 << 30);
        let first = plans.get(&shape(1), build(100)).unwrap();
        let again = plans.get(&shape(1), || panic!("built twice")).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert!(plans.holds(&shape(1), &first));
        assert!(!plans.holds(&shape(1), &Arc::new(vec![1u8; 100])));
        plans.forget(&shape(1));
        assert!(!plans.holds(&shape(1), &first));
        assert_eq!(plans.contents(), (vec![], 0));
    }

    #[test]
    fn a_rejected_shape_is_tried_once() {
        let plans: Plans<Vec<u8>> = Plans::new(16, 1 << 30);
        let err = plans.get(&shape(1), || Err("no".to_owned())).unwrap_err();
        assert_eq!(err, "no");
        let again = plans.get(&shape(1), || panic!("tried twice")).unwrap_err();
        assert_eq!(again, "no");
    }
}
