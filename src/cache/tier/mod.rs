//! The cache's second tier (`[cache.l2]`), behind the memory tier.
//!
//! A lookup asks memory first, then the second tier, then the origin. What
//! the second tier answers goes through the same RFC 9111 rules as a
//! memory entry (its head and times are stored, so `Age` counts the time
//! since it was stored, restarts included); a response small enough for
//! memory is promoted there, a larger one is streamed from the tier.
//!
//! The request path never waits for a store: [`L2::offer`] puts the entry
//! on a bounded queue that a task of the tier's own drains; when the queue
//! is full the store is dropped and counted. Removals and purges go
//! through the same queue (they wait for room instead of being dropped),
//! so that a purge is applied after every store offered before it.
//!
//! - [`record`]: the bytes a tier keeps per key (lengths and checksums).
//! - [`disk`]: `kind = "disk"`, record files in a directory.
//! - [`redis`]: `kind = "redis"`, records in Redis (or a Redis Cluster)
//!   shared by every instance, behind a [`breaker`].
//!
//! A tier is a [`Tier`]: get, put, remove, purge and its size. Its work
//! runs on the tier runtime ([`runtime`]), a thread pool apart from the
//! workers, whose blocking pool takes file I/O.

pub(crate) mod breaker;
pub(crate) mod disk;
pub(crate) mod record;
pub(crate) mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{Histogram, IntCounter};
use tokio::sync::{mpsc, oneshot};

use super::filling::Head;
use super::purge::Target;
use super::store::{Entry, Object};
use crate::body::ProxyBody;
use crate::config::{L2Config, L2Kind};
use record::RecordError;

/// What a tier's operations return.
pub(crate) type TierFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, TierError>> + Send + 'a>>;

/// Why a tier operation failed. The request path treats each as a miss.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TierError {
    #[error("bad record: {0}")]
    Record(#[from] RecordError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the tier did not answer in time")]
    Timeout,
    /// The tier's task is gone (the runtime is shutting down).
    #[error("the tier is closed")]
    Closed,
    /// A remote tier cannot be asked: not connected, refused, or its
    /// circuit breaker is open.
    #[error("the tier is unavailable: {0}")]
    Unavailable(&'static str),
}

impl TierError {
    /// The `reason` label of `sluice_cache_tier_errors_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            TierError::Record(e) => e.reason(),
            TierError::Io(_) => "io",
            TierError::Timeout => "timeout",
            TierError::Closed => "closed",
            TierError::Unavailable(_) => "unavailable",
        }
    }
}

/// What a tier found for a key.
// Short-lived (one per lookup), so the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Fetched {
    /// Held whole: a `Vary` marker, or a response with its body.
    Object(Arc<Object>),
    /// A response too large to hold whole: its head, and its body streamed
    /// from the tier.
    Streamed(Box<Streamed>),
}

/// A response whose body stays in the tier.
pub(crate) struct Streamed {
    /// The stored head (its `body` empty).
    pub entry: Entry,
    pub length: u64,
    pub body: Arc<dyn BodySource>,
}

/// A stored body that can be read as a stream, whole or a byte range.
pub(crate) trait BodySource: Send + Sync + fmt::Debug {
    /// Bytes `from..to` as a body; a part that turns out bad ends the body
    /// with an error (never a short body that looks whole).
    fn open(&self, from: u64, to: u64) -> ProxyBody;
}

/// What a tier holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TierStats {
    pub bytes: u64,
    pub objects: u64,
}

/// A second tier.
pub(crate) trait Tier: Send + Sync + fmt::Debug {
    /// The object stored under `key`. A bad record is a miss and is
    /// removed (the error says why, for the metrics).
    fn get<'a>(&'a self, key: &'a str) -> TierFuture<'a, Option<Fetched>>;
    /// Stores `object` under `key` (called only by the store task).
    fn put<'a>(&'a self, key: &'a str, object: &'a Object) -> TierFuture<'a, ()>;
    /// Whether `key` was there.
    fn remove<'a>(&'a self, key: &'a str) -> TierFuture<'a, bool>;
    /// Removes (or with `soft`, marks stale as of `now`) what `target`
    /// names; how many responses it named.
    fn purge<'a>(&'a self, target: &'a Target, soft: bool, now: SystemTime) -> TierFuture<'a, u64>;
    fn stats(&self) -> TierStats;
    /// A writer for a response too large to hold whole, its body written as
    /// it arrives; `None` when this tier does not take bodies as streams.
    /// Called on a blocking thread.
    fn spill(&self, _key: &str, _entry: &Entry) -> Option<Box<dyn SpillWriter>> {
        None
    }
}

/// A record being written as its body arrives (blocking I/O; called on a
/// blocking thread). Dropped without [`SpillWriter::commit`], it leaves
/// nothing behind.
pub(crate) trait SpillWriter: Send {
    fn write(&mut self, data: &[u8]) -> Result<(), TierError>;
    /// The body is whole: the record becomes visible under its key.
    fn commit(self: Box<Self>) -> Result<(), TierError>;
}

/// The runtime tier work runs on: one thread for the store task and the
/// tier's clients, and a blocking pool for file I/O. Never dropped (a
/// runtime cannot be dropped from inside another).
pub(crate) fn runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(64)
                .thread_name("sluice-l2")
                .enable_all()
                .build()
                .expect("the tier runtime starts (threads available)")
        })
        .handle()
}

/// One job for the store task.
enum Job {
    Put(String, Arc<Object>),
    Remove(String),
    Purge {
        target: Target,
        soft: bool,
        now: SystemTime,
        done: oneshot::Sender<Result<u64, TierError>>,
    },
}

/// The metric handles of one tier.
#[derive(Debug, Clone)]
pub(crate) struct TierMetrics {
    name: &'static str,
    hit: IntCounter,
    miss: IntCounter,
    error: IntCounter,
    timeout: IntCounter,
    duration: Histogram,
    dropped: IntCounter,
}

impl TierMetrics {
    pub(crate) fn new(name: &'static str) -> TierMetrics {
        let m = crate::metrics::get();
        let lookups = |r| m.cache_tier_lookups.with_label_values(&[name, r]);
        TierMetrics {
            name,
            hit: lookups("hit"),
            miss: lookups("miss"),
            error: lookups("error"),
            timeout: lookups("timeout"),
            duration: m.cache_tier_duration.with_label_values(&[name]),
            dropped: m.cache_tier_store_dropped.with_label_values(&[name]),
        }
    }

    /// Counts a failed operation by its reason.
    pub(crate) fn failed(&self, e: &TierError) {
        crate::metrics::get()
            .cache_tier_errors
            .with_label_values(&[self.name, e.reason()])
            .inc();
    }
}

/// The second tier as the cache uses it: the tier, its store queue and its
/// metrics.
pub(crate) struct L2 {
    tier: Arc<dyn Tier>,
    queue: mpsc::Sender<Job>,
    metrics: TierMetrics,
    /// The config it was opened with (a reload keeps the tier; a change
    /// takes a restart).
    pub config: L2Config,
    /// Responses larger than this are not stored in the tier.
    max_object_size: u64,
    /// A lookup slower than this is a miss.
    timeout: Option<Duration>,
}

impl fmt::Debug for L2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L2")
            .field("tier", &self.tier)
            .field("max_object_size", &self.max_object_size)
            .finish_non_exhaustive()
    }
}

impl L2 {
    /// Opens the tier `config` names; responses up to `whole` bytes are
    /// read whole (and promoted to memory), larger ones streamed.
    pub(crate) fn open(config: &L2Config, whole: u64) -> Result<Arc<L2>, TierError> {
        let name = config.kind.name();
        let metrics = TierMetrics::new(name);
        let tier: Arc<dyn Tier> = match &config.kind {
            L2Kind::Disk(d) => disk::DiskTier::open(d, whole, metrics.clone())?,
            // Its timeout is its own (the breaker must see it).
            L2Kind::Redis(r) => redis::RedisTier::open(r),
        };
        Ok(L2::start(tier, config.clone(), metrics, None))
    }

    /// Starts the store task for `tier`.
    pub(crate) fn start(
        tier: Arc<dyn Tier>,
        config: L2Config,
        metrics: TierMetrics,
        timeout: Option<Duration>,
    ) -> Arc<L2> {
        let (queue, jobs) = mpsc::channel(config.store_queue.max(1));
        runtime().spawn(drain(tier.clone(), jobs, metrics.clone()));
        Arc::new(L2 {
            tier,
            queue,
            metrics,
            max_object_size: config.max_object_size,
            config,
            timeout,
        })
    }

    /// The tier's name (`disk`, `redis`).
    pub(crate) fn name(&self) -> &'static str {
        self.metrics.name
    }

    pub(crate) fn max_object_size(&self) -> u64 {
        self.max_object_size
    }

    /// Queues `object` to be stored under `key`, unless it is too large
    /// for the tier; dropped (and counted) when the queue is full.
    pub(crate) fn offer(&self, key: &str, object: &Arc<Object>) {
        if let Object::Response(e) = &**object {
            let copies: u64 = crate::config::Coding::ALL
                .into_iter()
                .filter_map(|c| e.copies.get(c))
                .map(|b| b.len() as u64)
                .sum();
            if e.body.len() as u64 + copies > self.max_object_size {
                return;
            }
        }
        match self
            .queue
            .try_send(Job::Put(key.to_string(), object.clone()))
        {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.dropped.inc(),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Queues the entry a fill stored (and its `Vary` marker).
    pub(crate) fn offer_fill(&self, head: &Head, entry: &Arc<Object>) {
        if let Some((names, id)) = &head.vary {
            let marker = Arc::new(Object::Vary {
                names: names.clone(),
                id: *id,
            });
            self.offer(&head.primary, &marker);
        }
        self.offer(&head.key, entry);
    }

    /// The object stored under `key`: `None` on a miss, an error or a
    /// timeout (each counted).
    pub(crate) async fn get(&self, key: &str) -> Option<Fetched> {
        let started = Instant::now();
        let lookup = self.tier.get(key);
        let result = match self.timeout {
            Some(t) => tokio::time::timeout(t, lookup)
                .await
                .unwrap_or(Err(TierError::Timeout)),
            None => lookup.await,
        };
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Some(found)) => {
                self.metrics.hit.inc();
                Some(found)
            }
            Ok(None) => {
                self.metrics.miss.inc();
                None
            }
            Err(e) => {
                if matches!(e, TierError::Timeout) {
                    self.metrics.timeout.inc();
                } else {
                    self.metrics.error.inc();
                }
                self.metrics.failed(&e);
                tracing::debug!(tier = self.name(), error = %e, "cache tier lookup failed");
                None
            }
        }
    }

    /// Removes `key` from the tier, after the stores queued before.
    pub(crate) fn invalidate(&self, key: String) {
        let queue = self.queue.clone();
        runtime().spawn(async move {
            let _ = queue.send(Job::Remove(key)).await;
        });
    }

    /// Purges what `target` names from the tier, after the stores queued
    /// before; how many responses it named.
    pub(crate) async fn purge(&self, target: &Target, soft: bool) -> Result<u64, TierError> {
        let (done, answer) = oneshot::channel();
        let job = Job::Purge {
            target: target.clone(),
            soft,
            now: SystemTime::now(),
            done,
        };
        self.queue.send(job).await.map_err(|_| TierError::Closed)?;
        answer.await.unwrap_or(Err(TierError::Closed))
    }

    /// A writer for a response too large for memory, when the tier takes
    /// bodies as streams and `length` (if known) fits.
    pub(crate) fn spill(&self, head: &Head) -> Option<Spill> {
        if head.length.is_some_and(|n| n > self.max_object_size) {
            return None;
        }
        Some(Spill::start(self, head))
    }

    pub(crate) fn stats(&self) -> TierStats {
        self.tier.stats()
    }

    /// Updates `sluice_cache_tier_bytes` and `sluice_cache_tier_objects`.
    pub(crate) fn refresh_gauges(&self) {
        let m = crate::metrics::get();
        let stats = self.stats();
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        m.cache_tier_bytes
            .with_label_values(&[self.name()])
            .set(gauge(stats.bytes));
        m.cache_tier_objects
            .with_label_values(&[self.name()])
            .set(gauge(stats.objects));
    }
}

/// The store task: applies the queued jobs in order.
async fn drain(tier: Arc<dyn Tier>, mut jobs: mpsc::Receiver<Job>, metrics: TierMetrics) {
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Put(key, object) => {
                if let Err(e) = tier.put(&key, &object).await {
                    metrics.failed(&e);
                    tracing::debug!(tier = metrics.name, error = %e, "cache tier store failed");
                }
            }
            Job::Remove(key) => {
                if let Err(e) = tier.remove(&key).await {
                    metrics.failed(&e);
                }
            }
            Job::Purge {
                target,
                soft,
                now,
                done,
            } => {
                let result = tier.purge(&target, soft, now).await;
                if let Err(e) = &result {
                    metrics.failed(e);
                }
                let _ = done.send(result);
            }
        }
    }
}

/// Bytes a spill may have waiting for the disk; beyond them the fill waits
/// for the disk (it reads the origin no faster than the disk writes).
const SPILL_QUEUE_BYTES: usize = 16 << 20;

/// A fill's body on its way to the tier as a stream: frames go through a
/// queue of at most [`SPILL_QUEUE_BYTES`] to a writer on the blocking pool.
pub(crate) struct Spill {
    frames: Option<mpsc::UnboundedSender<SpillFrame>>,
    /// Room in the queue, in bytes: each frame holds its share until
    /// written.
    room: Arc<tokio::sync::Semaphore>,
    max_object_size: u64,
    written: u64,
}

enum SpillFrame {
    Data(bytes::Bytes, tokio::sync::OwnedSemaphorePermit),
    Commit,
}

/// The tier's side of a [`Spill`]: what is queued is written in one call
/// on the blocking pool (frames are small; a call each would fall behind
/// the network), holding no thread while it waits for more (a slow origin
/// must not pin the pool).
async fn write_spill(
    tier: Arc<dyn Tier>,
    key: String,
    entry: Entry,
    mut frames: mpsc::UnboundedReceiver<SpillFrame>,
    metrics: TierMetrics,
) {
    let opened = runtime()
        .spawn_blocking(move || tier.spill(&key, &entry))
        .await;
    let Ok(Some(mut writer)) = opened else {
        return;
    };
    let mut batch = Vec::new();
    loop {
        let Some(first) = frames.recv().await else {
            return;
        };
        let mut commit = false;
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            match frame {
                SpillFrame::Data(data, permit) => batch.push((data, permit)),
                SpillFrame::Commit => {
                    commit = true;
                    break;
                }
            }
            next = frames.try_recv().ok();
        }
        let step = runtime()
            .spawn_blocking(move || {
                let step = batch.iter().try_for_each(|(d, _)| writer.write(d));
                // Written: the room goes back to the fill.
                batch.clear();
                (writer, batch, step)
            })
            .await;
        match step {
            Ok((w, b, Ok(()))) => {
                writer = w;
                batch = b;
            }
            Ok((_, _, Err(e))) => {
                metrics.failed(&e);
                return;
            }
            Err(_) => return,
        }
        if commit {
            let committed = runtime().spawn_blocking(move || writer.commit()).await;
            if let Ok(Err(e)) = committed {
                metrics.failed(&e);
            }
            return;
        }
    }
}

impl Spill {
    fn start(l2: &L2, head: &Head) -> Spill {
        let (tx, rx) = mpsc::unbounded_channel();
        let tier = l2.tier.clone();
        let metrics = l2.metrics.clone();
        let key = head.key.clone();
        let entry = head.entry.clone();
        runtime().spawn(write_spill(tier, key, entry, rx, metrics));
        Spill {
            frames: Some(tx),
            room: Arc::new(tokio::sync::Semaphore::new(SPILL_QUEUE_BYTES)),
            max_object_size: l2.max_object_size,
            written: 0,
        }
    }

    /// Passes on the next bytes of the body, once the queue has room for
    /// them.
    pub(crate) async fn write(&mut self, data: bytes::Bytes) {
        if self.frames.is_none() {
            return;
        }
        self.written += data.len() as u64;
        if self.written > self.max_object_size {
            self.frames = None;
            return;
        }
        let share = u32::try_from(data.len().min(SPILL_QUEUE_BYTES)).unwrap_or(u32::MAX);
        let Ok(permit) = self.room.clone().acquire_many_owned(share).await else {
            self.frames = None;
            return;
        };
        let sent = self
            .frames
            .as_ref()
            .is_some_and(|f| f.send(SpillFrame::Data(data, permit)).is_ok());
        if !sent {
            // The writer gave up (an error, counted there).
            self.frames = None;
        }
    }

    /// The body ended whole: the record is committed once written.
    pub(crate) fn commit(mut self) {
        if let Some(frames) = self.frames.take() {
            let _ = frames.send(SpillFrame::Commit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A tier whose stores wait until the test lets them go.
    #[derive(Debug, Default)]
    struct Gate {
        open: tokio::sync::Notify,
        stored: Mutex<Vec<String>>,
    }

    impl Tier for Gate {
        fn get<'a>(&'a self, _: &'a str) -> TierFuture<'a, Option<Fetched>> {
            Box::pin(async { Ok(None) })
        }
        fn put<'a>(&'a self, key: &'a str, _: &'a Object) -> TierFuture<'a, ()> {
            Box::pin(async move {
                self.open.notified().await;
                self.stored.lock().unwrap().push(key.to_string());
                Ok(())
            })
        }
        fn remove<'a>(&'a self, _: &'a str) -> TierFuture<'a, bool> {
            Box::pin(async { Ok(false) })
        }
        fn purge<'a>(&'a self, _: &'a Target, _: bool, _: SystemTime) -> TierFuture<'a, u64> {
            Box::pin(async { Ok(0) })
        }
        fn stats(&self) -> TierStats {
            TierStats::default()
        }
    }

    fn marker() -> Arc<Object> {
        Arc::new(Object::Vary {
            names: Box::new([]),
            id: 1,
        })
    }

    #[test]
    fn a_full_queue_drops_and_counts_stores() {
        let gate = Arc::new(Gate::default());
        let config = L2Config {
            kind: L2Kind::Disk(crate::config::DiskConfig {
                path: "unused".into(),
                max_size: 1 << 20,
            }),
            max_object_size: 1 << 20,
            store_queue: 2,
        };
        let metrics = TierMetrics::new("test-queue");
        let l2 = L2::start(gate.clone(), config, metrics.clone(), None);
        // One store is taken by the task (waiting at the gate), two wait in
        // the queue; the rest are dropped.
        for i in 0..10 {
            l2.offer(&format!("k{i}"), &marker());
        }
        let dropped = metrics.dropped.get();
        assert!((7..=8).contains(&dropped), "{dropped} dropped");
    }
}
