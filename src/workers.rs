//! Thread-per-core workers: `[server] workers` OS threads, each running its
//! own single-threaded tokio runtime. A worker accepts connections from the
//! shared listening sockets and serves them to completion itself, and sends
//! to upstreams over its own connection pool, so a request never hops
//! between threads (the cross-thread wake-ups of a work-stealing runtime cost
//! about a fifth of the throughput on the proxy path).
//!
//! Everything else (signals, reloads, the admin API, health checks, DNS)
//! runs on the control thread's runtime.

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;

static COUNT: OnceLock<usize> = OnceLock::new();

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The number of worker threads: `workers`, or one per core when 0.
pub fn resolve(workers: usize) -> usize {
    if workers > 0 {
        workers
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Records the worker count for the process (first call wins).
pub fn set_count(n: usize) {
    let _ = COUNT.set(n.max(1));
}

/// The worker count, 1 until [`set_count`] runs.
pub fn count() -> usize {
    COUNT.get().copied().unwrap_or(1)
}

/// The calling thread's worker index (0 on any non-worker thread).
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Starts worker `index`: a thread with its own current-thread runtime that
/// runs `work` to completion.
pub fn spawn<F, Fut>(index: usize, work: F) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(format!("sluice-worker-{index}"))
        .spawn(move || {
            INDEX.with(|i| i.set(index));
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot start worker runtime");
                    return;
                }
            };
            rt.block_on(work());
        })
}
