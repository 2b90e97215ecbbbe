//! The CPUs this process may use, which every thread count is sized from.

/// Its affinity mask (`taskset`, a pod's cpuset) and its cgroup's CPU quota (a pod's
/// `limits.cpu`, rounded down, at least 1), whichever is fewer; std's
/// `available_parallelism` reads both. Never the host's core count: a pod limited to one
/// CPU on a 64-core node gets 1.
pub fn available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
