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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

static COUNT: OnceLock<usize> = OnceLock::new();
/// Open client connections per worker, to spread new ones evenly.
static OPEN: OnceLock<Box<[AtomicUsize]>> = OnceLock::new();
/// How many more connections than the least loaded worker a worker may hold
/// before it leaves new ones to the others for a moment.
const SLACK: usize = 2;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The number of worker threads: `workers`, or one per core when 0.
pub(crate) fn resolve(workers: usize) -> usize {
    if workers > 0 {
        workers
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Records the worker count for the process (first call wins).
pub(crate) fn set_count(n: usize) {
    let n = n.max(1);
    let _ = COUNT.set(n);
    let _ = OPEN.set((0..n).map(|_| AtomicUsize::new(0)).collect());
}

/// The worker count, 1 until [`set_count`] runs.
pub(crate) fn count() -> usize {
    COUNT.get().copied().unwrap_or(1)
}

/// The calling thread's worker index (0 on any non-worker thread).
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Counts an open client connection on the calling worker until dropped.
pub(crate) struct OpenConnection(usize);

impl OpenConnection {
    pub(crate) fn new() -> OpenConnection {
        let me = index();
        if let Some(slot) = OPEN.get().and_then(|o| o.get(me)) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        OpenConnection(me)
    }
}

impl Default for OpenConnection {
    fn default() -> Self {
        OpenConnection::new()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(slot) = OPEN.get().and_then(|o| o.get(self.0)) {
            slot.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether the calling worker holds clearly more open connections than the
/// least loaded one. All workers accept from the same sockets and whichever
/// wakes first wins, so a burst of new connections can land on one worker
/// while another idles; a busier worker briefly leaves the accept to the
/// others (as nginx's accept_disabled does).
pub(crate) fn busier_than_others() -> bool {
    let Some(open) = OPEN.get() else {
        return false;
    };
    let me = index();
    let mine = open.get(me).map_or(0, |c| c.load(Ordering::Relaxed));
    let least = open
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .map(|(_, c)| c.load(Ordering::Relaxed))
        .min();
    least.is_some_and(|least| mine > least + SLACK)
}

/// Starts worker `index`: a thread with its own current-thread runtime that
/// runs `work` to completion.
pub(crate) fn spawn<F, Fut>(index: usize, work: F) -> std::io::Result<std::thread::JoinHandle<()>>
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
