//! The async runtime the whole process runs on, sized from `runtime.worker_threads`.
//!
//! Why not tokio's default (one worker per CPU): lapin reads the broker's socket on an I/O
//! thread of its own, so a worker on every CPU leaves that thread competing with a full set of
//! busy workers. On a small machine that the database and the broker share, every extra
//! worker also costs wake-ups and work stealing between threads. Measured on 2 cores during
//! backlog drains (README, "Storm benchmark"): one worker spent about 11% less CPU per event
//! than two; the drain rates themselves were within the machine's noise.

use crate::config::RuntimeSettings;

/// The worker count for the settings: the configured one, or for 0 one fewer than the CPUs
/// this process may use (`available_parallelism` counts the container's CPU quota), at least 1.
pub fn worker_threads(settings: &RuntimeSettings, available_cpus: usize) -> usize {
    match settings.worker_threads {
        0 => available_cpus.saturating_sub(1).max(1),
        n => n,
    }
}

/// The CPUs this process may use (1 when the system cannot say).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Builds the multi-threaded runtime with `workers` worker threads.
pub fn build(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("cdr-worker")
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_leaves_a_cpu_for_the_broker_client_thread() {
        let auto = RuntimeSettings { worker_threads: 0 };
        assert_eq!(worker_threads(&auto, 1), 1);
        assert_eq!(worker_threads(&auto, 2), 1);
        assert_eq!(worker_threads(&auto, 8), 7);
        let fixed = RuntimeSettings { worker_threads: 3 };
        assert_eq!(worker_threads(&fixed, 2), 3);
        assert_eq!(worker_threads(&fixed, 64), 3);
    }

    #[test]
    fn built_runtime_has_the_requested_workers() {
        let runtime = build(3).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 3);
    }
}
