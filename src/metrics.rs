//! Prometheus metrics: every `sluice_*` metric declared once, in one
//! registry, and the pre-resolved handles the request path records into.
//!
//! Recording must not lock or allocate. A labelled child (`with_label_values`)
//! costs a lock and a hash lookup, so the request path never asks for one:
//! - per listener and route, [`RequestMetrics`] holds a fixed
//!   `[method][status class]` array of counters, each resolved the first time
//!   it is used and then read with one atomic load;
//! - per pool member, [`MemberMetrics`] does the same for upstream attempts;
//! - per listener, [`ListenerMetrics`] holds the connection and TLS handles.
//!
//! The per-request series (requests, durations, cache lookups, upstream
//! attempts) are kept [`PerWorker`]: each worker thread counts into its own
//! copy, and a scrape sums the copies.
//!
//! Member state (up, in flight, ejections, health checks) and pool retries
//! live in the pools themselves; [`UpstreamCollector`] reads them from the
//! current snapshot at scrape time, so they cost nothing per request.
//!
//! The cache and compression record their own counters: cache lookups
//! through [`SnapshotMetrics::cache_lookup`], compressed bytes through
//! handles resolved once in [`crate::compress::counters`].

use std::collections::btree_map::{BTreeMap, Entry};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use http::Method;
use prometheus::core::{Collector, Desc};
use prometheus::{
    proto, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::Config;
use crate::upstream::pool::Pool;
use crate::workers;

/// Histogram buckets in seconds, from 100 µs to 30 s in 1-2.5-5 steps: fine
/// enough for p50/p95/p99 from microsecond cache hits to slow origins.
pub(crate) const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// `status_class` label values; index with [`class_index`].
pub(crate) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `method` label values; index with [`method_index`].
pub(crate) const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "other",
];

/// Cache lookup results (`sluice_cache_lookups_total{result}`).
pub(crate) const CACHE_RESULTS: [&str; 6] =
    ["hit", "miss", "stale", "revalidated", "bypass", "coalesced"];

/// Compression algorithms (`sluice_compression_bytes_*_total{algorithm}`).
pub(crate) const ALGORITHMS: [&str; 3] = ["br", "zstd", "gzip"];

/// Connection protocols (`sluice_connections_*{protocol}`).
pub(crate) const PROTOCOLS: [&str; 2] = ["h1", "h2"];

pub fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

/// 1xx..5xx as 0..4; anything above 599 counts as 5xx.
pub fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// The process-wide metrics. Created on first use.
pub struct Metrics {
    pub registry: Registry,
    pub requests: PerWorker<IntCounterVec>,
    pub request_duration: PerWorker<HistogramVec>,
    pub upstream_requests: PerWorker<IntCounterVec>,
    pub upstream_response: PerWorker<HistogramVec>,
    pub connections_active: IntGaugeVec,
    pub connections_total: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub tls_handshake_errors: IntCounterVec,
    pub proxy_protocol_rejected: IntCounterVec,
    pub cache_lookups: PerWorker<IntCounterVec>,
    pub cache_entries: IntGauge,
    pub cache_bytes: IntGauge,
    pub cache_evictions: IntCounter,
    pub cache_fill_bytes: IntGauge,
    pub cache_fill_budget_exceeded: IntCounterVec,
    pub cache_purges_published: IntCounter,
    pub cache_purges_received: IntCounter,
    pub cache_purge_resubscribe_flushes: IntCounter,
    pub cache_tier_lookups: IntCounterVec,
    pub cache_tier_duration: HistogramVec,
    pub cache_tier_store_dropped: IntCounterVec,
    pub cache_tier_bytes: IntGaugeVec,
    pub cache_tier_objects: IntGaugeVec,
    pub cache_tier_errors: IntCounterVec,
    pub cache_tier_circuit_open: IntGaugeVec,
    pub compression_in: IntCounterVec,
    pub compression_out: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub access_log_dropped: IntCounter,
    pub build_info: IntGaugeVec,
    upstreams: Arc<OnceLock<PoolSource>>,
}

/// Where the scrape-time upstream collector finds the live pools (the
/// current snapshot's); set once at start.
pub(crate) type PoolSource = Box<dyn Fn() -> Vec<Arc<Pool>> + Send + Sync>;

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric")
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            requests: PerWorker::new(|| {
                counter_vec(
                    "sluice_requests_total",
                    "Requests answered on proxy listeners, by listener, route, method and status class.",
                    &["listener", "route", "method", "status_class"],
                )
            }),
            request_duration: PerWorker::new(|| {
                histogram_vec(
                    "sluice_request_duration_seconds",
                    "Time from request head to the end of the response body, by listener and route.",
                    &["listener", "route"],
                )
            }),
            upstream_requests: PerWorker::new(|| {
                counter_vec(
                    "sluice_upstream_requests_total",
                    "Upstream attempts that received a response head, by pool, member and status class.",
                    &["pool", "member", "status_class"],
                )
            }),
            upstream_response: PerWorker::new(|| {
                histogram_vec(
                    "sluice_upstream_response_seconds",
                    "Time from sending a request to a member to its response head.",
                    &["pool", "member"],
                )
            }),
            connections_active: gauge_vec(
                "sluice_connections_active",
                "Open client connections, by listener and protocol.",
                &["listener", "protocol"],
            ),
            connections_total: counter_vec(
                "sluice_connections_total",
                "Client connections accepted, by listener and protocol.",
                &["listener", "protocol"],
            ),
            tls_handshakes: counter_vec(
                "sluice_tls_handshakes_total",
                "Completed TLS handshakes, by listener.",
                &["listener"],
            ),
            tls_handshake_errors: counter_vec(
                "sluice_tls_handshake_errors_total",
                "TLS handshakes that failed or timed out, by listener.",
                &["listener"],
            ),
            proxy_protocol_rejected: counter_vec(
                "sluice_proxy_protocol_rejected_total",
                "Connections closed because of their PROXY header (or its absence), by listener and reason.",
                &["listener", "reason"],
            ),
            cache_lookups: PerWorker::new(|| {
                counter_vec(
                    "sluice_cache_lookups_total",
                    "Cache lookups by route and result.",
                    &["route", "result"],
                )
            }),
            cache_entries: IntGauge::new("sluice_cache_entries", "Entries in the cache.")
                .expect("valid metric"),
            cache_bytes: IntGauge::new("sluice_cache_bytes", "Bytes held by the cache.")
                .expect("valid metric"),
            cache_evictions: IntCounter::new(
                "sluice_cache_evictions_total",
                "Entries evicted from the cache.",
            )
            .expect("valid metric"),
            cache_fill_bytes: IntGauge::new(
                "sluice_cache_fill_bytes",
                "Bytes held by cache fills in flight (bounded by max_fill_memory).",
            )
            .expect("valid metric"),
            cache_fill_budget_exceeded: counter_vec(
                "sluice_cache_fill_budget_exceeded_total",
                "Fills that streamed on uncached because in-flight fills held max_fill_memory, by route.",
                &["route"],
            ),
            cache_purges_published: IntCounter::new(
                "sluice_cache_purges_published_total",
                "Purges this instance published for the others ([cache.purge] fanout).",
            )
            .expect("valid metric"),
            cache_purges_received: IntCounter::new(
                "sluice_cache_purges_received_total",
                "Purges received from other instances and applied here.",
            )
            .expect("valid metric"),
            cache_purge_resubscribe_flushes: IntCounter::new(
                "sluice_cache_purge_resubscribe_flushes_total",
                "Times the memory tier was emptied because the purge subscription was lost (purges may have been missed).",
            )
            .expect("valid metric"),
            cache_tier_lookups: counter_vec(
                "sluice_cache_tier_lookups_total",
                "Cache lookups per tier (memory, then the second tier), by result.",
                &["tier", "result"],
            ),
            cache_tier_duration: histogram_vec(
                "sluice_cache_tier_duration_seconds",
                "Time a second-tier lookup took, hit or miss.",
                &["tier"],
            ),
            cache_tier_store_dropped: counter_vec(
                "sluice_cache_tier_store_dropped_total",
                "Stores to a second tier dropped because its queue was full.",
                &["tier"],
            ),
            cache_tier_bytes: gauge_vec(
                "sluice_cache_tier_bytes",
                "Bytes held by a cache tier.",
                &["tier"],
            ),
            cache_tier_objects: gauge_vec(
                "sluice_cache_tier_objects",
                "Objects (responses and Vary markers) held by a cache tier.",
                &["tier"],
            ),
            cache_tier_errors: counter_vec(
                "sluice_cache_tier_errors_total",
                "Second-tier operations that failed, by reason (io, checksum, truncated, malformed, ...).",
                &["tier", "reason"],
            ),
            cache_tier_circuit_open: gauge_vec(
                "sluice_cache_tier_circuit_open",
                "1 while a tier's circuit breaker is open (the tier is not asked), else 0.",
                &["tier"],
            ),
            compression_in: counter_vec(
                "sluice_compression_bytes_in_total",
                "Bytes fed to the compressor, by algorithm.",
                &["algorithm"],
            ),
            compression_out: counter_vec(
                "sluice_compression_bytes_out_total",
                "Bytes produced by the compressor, by algorithm.",
                &["algorithm"],
            ),
            config_reloads: counter_vec(
                "sluice_config_reloads_total",
                "Config reloads (SIGHUP or POST /reload), by result.",
                &["result"],
            ),
            access_log_dropped: IntCounter::new(
                "sluice_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind.",
            )
            .expect("valid metric"),
            build_info: gauge_vec(
                "sluice_build_info",
                "Always 1; the version label names the running build.",
                &["version"],
            ),
            upstreams: Arc::new(OnceLock::new()),
        };
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.upstream_requests.clone()),
            Box::new(m.upstream_response.clone()),
            Box::new(m.connections_active.clone()),
            Box::new(m.connections_total.clone()),
            Box::new(m.tls_handshakes.clone()),
            Box::new(m.tls_handshake_errors.clone()),
            Box::new(m.proxy_protocol_rejected.clone()),
            Box::new(m.cache_lookups.clone()),
            Box::new(m.cache_entries.clone()),
            Box::new(m.cache_bytes.clone()),
            Box::new(m.cache_evictions.clone()),
            Box::new(m.cache_fill_bytes.clone()),
            Box::new(m.cache_fill_budget_exceeded.clone()),
            Box::new(m.cache_purges_published.clone()),
            Box::new(m.cache_purges_received.clone()),
            Box::new(m.cache_purge_resubscribe_flushes.clone()),
            Box::new(m.cache_tier_lookups.clone()),
            Box::new(m.cache_tier_duration.clone()),
            Box::new(m.cache_tier_store_dropped.clone()),
            Box::new(m.cache_tier_bytes.clone()),
            Box::new(m.cache_tier_objects.clone()),
            Box::new(m.cache_tier_errors.clone()),
            Box::new(m.cache_tier_circuit_open.clone()),
            Box::new(m.compression_in.clone()),
            Box::new(m.compression_out.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.access_log_dropped.clone()),
            Box::new(m.build_info.clone()),
            Box::new(UpstreamCollector::new(m.upstreams.clone())),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric registered once");
        }
        // Series that exist from the start, at 0, so that dashboards and
        // rate() see them before the first event.
        for a in ALGORITHMS {
            m.compression_in.with_label_values(&[a]);
            m.compression_out.with_label_values(&[a]);
        }
        for r in ["ok", "error"] {
            m.config_reloads.with_label_values(&[r]);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// Lets the scrape-time upstream collector read the live pools.
    pub(crate) fn watch_upstreams(&self, pools: PoolSource) {
        let _ = self.upstreams.set(pools);
    }

    /// The registry in Prometheus text exposition format 0.0.4.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts one config reload.
    pub(crate) fn reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }
}

// ------------------------------------------------------------ per request --

/// Request counters and the duration histogram of one listener and route,
/// each resolved on first use.
pub struct RequestMetrics {
    listener: Box<str>,
    /// Empty for requests that matched no route.
    route: Box<str>,
    /// Each worker's handles, into its own [`PerWorker`] copy; made on the
    /// worker's first request here (a config's listeners times routes times
    /// workers would otherwise hold 0.8 KB each from the start).
    workers: Box<[OnceLock<Box<RequestHandles>>]>,
}

struct RequestHandles {
    total: [[OnceLock<IntCounter>; CLASSES.len()]; METHODS.len()],
    duration: OnceLock<Histogram>,
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics")
            .field("listener", &self.listener)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl RequestMetrics {
    fn new(listener: &str, route: &str) -> RequestMetrics {
        RequestMetrics {
            listener: listener.into(),
            route: route.into(),
            workers: (0..workers::count()).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Counts one answered request. `method` and `class` come from
    /// [`method_index`] and [`class_index`].
    pub fn record(&self, method: usize, class: usize, elapsed: Duration) {
        let method = method.min(METHODS.len() - 1);
        let class = class.min(CLASSES.len() - 1);
        let (w, mine) = worker_slot(&self.workers);
        let mine = mine.get_or_init(|| {
            Box::new(RequestHandles {
                total: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
                duration: OnceLock::new(),
            })
        });
        mine.total[method][class]
            .get_or_init(|| {
                get().requests.of(w).with_label_values(&[
                    &self.listener,
                    &self.route,
                    METHODS[method],
                    CLASSES[class],
                ])
            })
            .inc();
        mine.duration
            .get_or_init(|| {
                get()
                    .request_duration
                    .of(w)
                    .with_label_values(&[&self.listener, &self.route])
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// Upstream attempt counters and response-time histogram of one member.
pub(crate) struct MemberMetrics {
    pool: Box<str>,
    addr: SocketAddr,
    member: Box<str>,
    /// Each worker's handles, into its own [`PerWorker`] copy.
    workers: Box<[MemberHandles]>,
}

struct MemberHandles {
    total: [OnceLock<IntCounter>; CLASSES.len()],
    response: OnceLock<Histogram>,
}

impl std::fmt::Debug for MemberMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberMetrics")
            .field("pool", &self.pool)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl MemberMetrics {
    fn new(pool: &str, addr: SocketAddr) -> MemberMetrics {
        MemberMetrics {
            pool: pool.into(),
            addr,
            member: addr.to_string().into(),
            workers: (0..workers::count())
                .map(|_| MemberHandles {
                    total: std::array::from_fn(|_| OnceLock::new()),
                    response: OnceLock::new(),
                })
                .collect(),
        }
    }

    /// Counts one attempt that got a response head with `status` after
    /// `elapsed`.
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        let class = class_index(status);
        let (w, mine) = worker_slot(&self.workers);
        mine.total[class]
            .get_or_init(|| {
                get().upstream_requests.of(w).with_label_values(&[
                    &self.pool,
                    &self.member,
                    CLASSES[class],
                ])
            })
            .inc();
        mine.response
            .get_or_init(|| {
                get()
                    .upstream_response
                    .of(w)
                    .with_label_values(&[&self.pool, &self.member])
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// The handles of one snapshot: `[listener][route]` request metrics and
/// `[pool][member]` upstream metrics, built with the snapshot.
#[derive(Debug)]
pub struct SnapshotMetrics {
    /// Routes plus one slot (the last) for requests no route answered.
    slots: usize,
    requests: Box<[RequestMetrics]>,
    members: Box<[Box<[MemberMetrics]>]>,
    /// `sluice_cache_lookups_total` per worker and route, by
    /// [`CACHE_RESULTS`] index.
    cache: Box<[Box<[[IntCounter; CACHE_RESULTS.len()]]>]>,
}

impl SnapshotMetrics {
    pub fn build(config: &Config, pools: &[Arc<Pool>]) -> SnapshotMetrics {
        let slots = config.routes.len() + 1;
        let mut requests = Vec::with_capacity(config.listeners.len() * slots);
        for l in &config.listeners {
            for r in &config.routes {
                requests.push(RequestMetrics::new(&l.name, &r.name));
            }
            requests.push(RequestMetrics::new(&l.name, ""));
        }
        // Cache lookup series exist at 0 for every route from the start.
        let m = get();
        for r in config.routes.iter().filter(|r| r.cache.is_some()) {
            m.cache_fill_budget_exceeded.with_label_values(&[&r.name]);
        }
        let cache = (0..workers::count())
            .map(|w| {
                let lookups = m.cache_lookups.of(w);
                config
                    .routes
                    .iter()
                    .map(|r| {
                        CACHE_RESULTS.map(|result| lookups.with_label_values(&[&r.name, result]))
                    })
                    .collect()
            })
            .collect();
        let members = pools
            .iter()
            .map(|p| {
                let set = p.members();
                set.active
                    .iter()
                    .chain(&set.draining)
                    .map(|mem| MemberMetrics::new(&p.name, mem.addr))
                    .collect()
            })
            .collect();
        SnapshotMetrics {
            slots,
            requests: requests.into(),
            members,
            cache,
        }
    }

    /// The request metrics of listener `listener` (its index in the config)
    /// and route `route` (its index; `None` when no route answered).
    pub fn requests(&self, listener: usize, route: Option<usize>) -> Option<&RequestMetrics> {
        let slot = route.unwrap_or(self.slots - 1).min(self.slots - 1);
        self.requests.get(listener * self.slots + slot)
    }

    /// Counts one cache lookup of route `route` with `result` (one of
    /// [`CACHE_RESULTS`]).
    pub(crate) fn cache_lookup(&self, route: usize, result: &str) {
        let mine = worker_slot(&self.cache).1;
        if let (Some(counters), Some(i)) = (
            mine.get(route),
            CACHE_RESULTS.iter().position(|r| *r == result),
        ) {
            counters[i].inc();
        }
    }

    /// Records one upstream attempt on member `addr` of pool `pool` (its
    /// index). A member the snapshot does not know (DNS changed the pool's
    /// members since it was built) takes the slow path, which locks.
    pub fn upstream(
        &self,
        pool: usize,
        pool_name: &str,
        addr: SocketAddr,
        status: u16,
        elapsed: Duration,
    ) {
        let known = self
            .members
            .get(pool)
            .and_then(|p| p.iter().find(|m| m.addr == addr));
        match known {
            Some(m) => m.record(status, elapsed),
            None => MemberMetrics::new(pool_name, addr).record(status, elapsed),
        }
    }
}

// ------------------------------------------------------ per-worker copies --

/// The calling worker's index and its slot of `slots`: one per worker, so
/// never empty ([`workers::count`] is at least 1). Should a thread's index
/// be out of range (a second daemon in one test process, with more
/// workers), it shares a slot: still counted, only contended.
fn worker_slot<T>(slots: &[T]) -> (usize, &T) {
    let w = workers::index() % slots.len();
    (w, &slots[w])
}

/// A metric vector kept as one copy per worker thread and summed at scrape
/// time. Workers counting into one shared counter pass its cache line back
/// and forth on every request (measured: 1.4% of a cached hit's throughput
/// with two workers); each now writes only to its own copy. Clones share
/// the copies.
#[derive(Clone)]
pub struct PerWorker<V> {
    make: fn() -> V,
    desc: Vec<Desc>,
    copies: Arc<Mutex<Vec<V>>>,
}

impl<V: Collector + Clone> PerWorker<V> {
    fn new(make: fn() -> V) -> PerWorker<V> {
        let first = make();
        let desc = first.desc().into_iter().cloned().collect();
        PerWorker {
            make,
            desc,
            copies: Arc::new(Mutex::new(vec![first])),
        }
    }

    /// Worker `worker`'s copy, made on first use. It locks: for resolving
    /// handles once, not for recording.
    pub(crate) fn of(&self, worker: usize) -> V {
        let mut copies = self.copies.lock().unwrap_or_else(PoisonError::into_inner);
        while copies.len() <= worker {
            copies.push((self.make)());
        }
        copies[worker].clone()
    }
}

impl<V: Collector + Clone> Collector for PerWorker<V> {
    fn desc(&self) -> Vec<&Desc> {
        self.desc.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let copies = self
            .copies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        sum_families(copies.iter().flat_map(|c| c.collect()))
            .into_iter()
            .collect()
    }
}

/// One family whose series are the sums of the same-labelled series of
/// `families` (copies of one metric).
fn sum_families(
    families: impl Iterator<Item = proto::MetricFamily>,
) -> Option<proto::MetricFamily> {
    let mut first: Option<proto::MetricFamily> = None;
    let mut series: BTreeMap<Vec<(String, String)>, proto::Metric> = BTreeMap::new();
    for mut family in families {
        let kind = family.get_field_type();
        for m in family.take_metric() {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.get_name().to_owned(), l.get_value().to_owned()))
                .collect();
            match series.entry(labels) {
                Entry::Vacant(slot) => {
                    slot.insert(m);
                }
                Entry::Occupied(mut slot) => add_into(slot.get_mut(), &m, kind),
            }
        }
        first.get_or_insert(family);
    }
    let mut family = first?;
    family.set_metric(series.into_values().collect());
    Some(family)
}

/// Adds `m`'s values to `sum` (same labels, same metric type `kind`).
fn add_into(sum: &mut proto::Metric, m: &proto::Metric, kind: proto::MetricType) {
    match kind {
        proto::MetricType::COUNTER => {
            let mut c = sum.get_counter().clone();
            c.set_value(c.get_value() + m.get_counter().get_value());
            sum.set_counter(c);
        }
        proto::MetricType::GAUGE => {
            let mut g = sum.get_gauge().clone();
            g.set_value(g.get_value() + m.get_gauge().get_value());
            sum.set_gauge(g);
        }
        proto::MetricType::HISTOGRAM => {
            let mut h = sum.get_histogram().clone();
            let more = m.get_histogram();
            h.set_sample_count(h.get_sample_count() + more.get_sample_count());
            h.set_sample_sum(h.get_sample_sum() + more.get_sample_sum());
            let buckets = h
                .get_bucket()
                .iter()
                .zip(more.get_bucket())
                .map(|(a, b)| {
                    let mut bucket = a.clone();
                    bucket
                        .set_cumulative_count(a.get_cumulative_count() + b.get_cumulative_count());
                    bucket
                })
                .collect();
            h.set_bucket(buckets);
            sum.set_histogram(h);
        }
        // Not kept per worker.
        proto::MetricType::SUMMARY | proto::MetricType::UNTYPED => {}
    }
}

/// Connection and TLS handles of one listener.
#[derive(Debug)]
pub(crate) struct ListenerMetrics {
    /// The listener's position in the config (stable across reloads).
    pub index: usize,
    name: String,
    active: [IntGauge; 2],
    total: [IntCounter; 2],
    tls_ok: IntCounter,
    tls_failed: IntCounter,
}

impl ListenerMetrics {
    pub(crate) fn new(name: &str, index: usize) -> ListenerMetrics {
        let m = get();
        ListenerMetrics {
            index,
            name: name.to_string(),
            active: PROTOCOLS.map(|p| m.connections_active.with_label_values(&[name, p])),
            total: PROTOCOLS.map(|p| m.connections_total.with_label_values(&[name, p])),
            tls_ok: m.tls_handshakes.with_label_values(&[name]),
            tls_failed: m.tls_handshake_errors.with_label_values(&[name]),
        }
    }

    /// A connection speaking `h2` (or HTTP/1.x) opened.
    pub(crate) fn opened(&self, h2: bool) {
        self.total[usize::from(h2)].inc();
        self.active[usize::from(h2)].inc();
    }

    /// A connection counted by [`ListenerMetrics::opened`] closed.
    pub(crate) fn closed(&self, h2: bool) {
        self.active[usize::from(h2)].dec();
    }

    /// A connection that closed before its protocol was known: counted
    /// as HTTP/1.x, never active.
    pub(crate) fn closed_unknown(&self) {
        self.total[0].inc();
    }

    /// A connection closed over its PROXY header; `reason` is one of a
    /// few fixed words, so the series stay bounded.
    pub(crate) fn proxy_rejected(&self, reason: &'static str) {
        get()
            .proxy_protocol_rejected
            .with_label_values(&[&self.name, reason])
            .inc();
    }

    pub(crate) fn tls_handshake(&self, ok: bool) {
        if ok {
            self.tls_ok.inc();
        } else {
            self.tls_failed.inc();
        }
    }
}

// ------------------------------------------------------------- upstreams --

/// Reads member and pool state from the current snapshot at scrape time.
struct UpstreamCollector {
    pools: Arc<OnceLock<PoolSource>>,
    templates: Vec<Box<dyn Collector>>,
    descs: Vec<Desc>,
}

const MEMBER_UP: (&str, &str) = (
    "sluice_upstream_member_up",
    "1 when the member takes traffic (state up), else 0.",
);
const IN_FLIGHT: (&str, &str) = (
    "sluice_upstream_in_flight",
    "Requests being proxied to the member now.",
);
const EJECTIONS: (&str, &str) = (
    "sluice_upstream_ejections_total",
    "Times the member was ejected by passive outlier detection.",
);
const HEALTH_CHECKS: (&str, &str) = (
    "sluice_health_checks_total",
    "Active health checks of the member, by result.",
);
const BODY_ERRORS: (&str, &str) = (
    "sluice_upstream_body_errors_total",
    "Response bodies from the member that failed or ended early after their head.",
);
const TLS_ERRORS: (&str, &str) = (
    "sluice_upstream_tls_errors_total",
    "TLS connections to the member that failed, by reason (certificate, handshake, timeout).",
);
const RETRIES: (&str, &str) = (
    "sluice_upstream_retries_total",
    "Retries (attempts after the first) made in the pool.",
);

/// Fresh, unregistered vectors with the upstream metric names.
struct UpstreamVecs {
    up: IntGaugeVec,
    in_flight: IntGaugeVec,
    ejections: IntCounterVec,
    checks: IntCounterVec,
    body_errors: IntCounterVec,
    tls_errors: IntCounterVec,
    retries: IntCounterVec,
}

impl UpstreamVecs {
    fn new() -> UpstreamVecs {
        UpstreamVecs {
            up: gauge_vec(MEMBER_UP.0, MEMBER_UP.1, &["pool", "member"]),
            in_flight: gauge_vec(IN_FLIGHT.0, IN_FLIGHT.1, &["pool", "member"]),
            ejections: counter_vec(EJECTIONS.0, EJECTIONS.1, &["pool", "member"]),
            checks: counter_vec(
                HEALTH_CHECKS.0,
                HEALTH_CHECKS.1,
                &["pool", "member", "result"],
            ),
            body_errors: counter_vec(BODY_ERRORS.0, BODY_ERRORS.1, &["pool", "member"]),
            tls_errors: counter_vec(TLS_ERRORS.0, TLS_ERRORS.1, &["pool", "member", "reason"]),
            retries: counter_vec(RETRIES.0, RETRIES.1, &["pool"]),
        }
    }

    fn into_collectors(self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.up),
            Box::new(self.in_flight),
            Box::new(self.ejections),
            Box::new(self.checks),
            Box::new(self.body_errors),
            Box::new(self.tls_errors),
            Box::new(self.retries),
        ]
    }
}

impl UpstreamCollector {
    fn new(pools: Arc<OnceLock<PoolSource>>) -> UpstreamCollector {
        let templates = UpstreamVecs::new().into_collectors();
        let descs = templates
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned())
            .collect();
        UpstreamCollector {
            pools,
            templates,
            descs,
        }
    }
}

/// What the pools expose about one member, read at scrape time.
struct MemberSeen {
    up: bool,
    ejections: u64,
    checks_ok: u64,
    checks_failed: u64,
    body_errors: u64,
}

impl MemberSeen {
    fn of(m: &crate::upstream::member::Member) -> MemberSeen {
        MemberSeen {
            up: m.state() == crate::upstream::member::MemberState::Up,
            ejections: m.ejections_total(),
            checks_ok: m.health_checks_ok(),
            checks_failed: m.health_checks_fail(),
            body_errors: m.body_errors_total(),
        }
    }
}

fn pool_retries(pool: &Pool) -> u64 {
    pool.retries_total()
}

impl Collector for UpstreamCollector {
    fn desc(&self) -> Vec<&Desc> {
        let _ = &self.templates;
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let v = UpstreamVecs::new();
        if let Some(pools) = self.pools.get() {
            for pool in &pools() {
                let set = pool.members();
                for m in set.active.iter().chain(&set.draining) {
                    let addr = m.addr.to_string();
                    let labels = [pool.name.as_str(), addr.as_str()];
                    let seen = MemberSeen::of(m);
                    v.up.with_label_values(&labels).set(i64::from(seen.up));
                    v.in_flight
                        .with_label_values(&labels)
                        .set(i64::try_from(m.in_flight()).unwrap_or(i64::MAX));
                    v.ejections
                        .with_label_values(&labels)
                        .inc_by(seen.ejections);
                    v.body_errors
                        .with_label_values(&labels)
                        .inc_by(seen.body_errors);
                    for (result, n) in [("ok", seen.checks_ok), ("fail", seen.checks_failed)] {
                        v.checks
                            .with_label_values(&[labels[0], labels[1], result])
                            .inc_by(n);
                    }
                }
                if let Some(tls) = pool.tls() {
                    for (addr, reason, n) in tls.errors() {
                        let addr = addr.to_string();
                        v.tls_errors
                            .with_label_values(&[
                                pool.name.as_str(),
                                addr.as_str(),
                                reason.as_str(),
                            ])
                            .inc_by(n);
                    }
                }
                v.retries
                    .with_label_values(&[&pool.name])
                    .inc_by(pool_retries(pool));
            }
        }
        v.into_collectors()
            .iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_methods() {
        assert_eq!(class_index(101), 0);
        assert_eq!(class_index(204), 1);
        assert_eq!(class_index(304), 2);
        assert_eq!(class_index(404), 3);
        assert_eq!(class_index(502), 4);
        assert_eq!(class_index(999), 4);
        assert_eq!(METHODS[method_index(&Method::PATCH)], "PATCH");
        let odd = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(METHODS[method_index(&odd)], "other");
    }

    #[test]
    fn per_worker_copies_sum_at_scrape() {
        let counters = PerWorker::new(|| counter_vec("t_total", "t", &["route"]));
        counters.of(0).with_label_values(&["a"]).inc_by(2);
        counters.of(1).with_label_values(&["a"]).inc_by(3);
        counters.of(1).with_label_values(&["b"]).inc();
        let families = counters.collect();
        assert_eq!(families.len(), 1);
        let series: Vec<(String, f64)> = families[0]
            .get_metric()
            .iter()
            .map(|m| {
                (
                    m.get_label()[0].get_value().to_owned(),
                    m.get_counter().get_value(),
                )
            })
            .collect();
        assert_eq!(series, [("a".to_owned(), 5.0), ("b".to_owned(), 1.0)]);

        let durations = PerWorker::new(|| histogram_vec("t_seconds", "t", &["route"]));
        durations.of(0).with_label_values(&["a"]).observe(0.0002);
        durations.of(2).with_label_values(&["a"]).observe(0.002);
        durations.of(2).with_label_values(&["a"]).observe(20.0);
        let families = durations.collect();
        let h = families[0].get_metric()[0].get_histogram();
        assert_eq!(h.get_sample_count(), 3);
        assert!((h.get_sample_sum() - 20.0022).abs() < 1e-9);
        let cumulative: Vec<u64> = h
            .get_bucket()
            .iter()
            .map(|b| b.get_cumulative_count())
            .collect();
        // 0.0001, 0.00025, 0.0005, 0.001, 0.0025, ... 10, 30
        assert_eq!(cumulative[..5], [0, 1, 1, 1, 2]);
        assert_eq!(cumulative[cumulative.len() - 2..], [2, 3]);
    }

    #[test]
    fn exposition_has_every_family() {
        let text = get().render();
        for name in [
            "sluice_build_info",
            "sluice_config_reloads_total",
            "sluice_compression_bytes_in_total",
            "sluice_cache_entries",
            "sluice_cache_bytes",
            "sluice_cache_evictions_total",
            "sluice_access_log_dropped_total",
            "sluice_cache_purges_published_total",
            "sluice_cache_purges_received_total",
            "sluice_cache_purge_resubscribe_flushes_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}:\n{text}");
        }
    }
}
