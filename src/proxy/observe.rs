//! What the request path records about each request once it is answered:
//! `sluice_requests_total` and `sluice_request_duration_seconds`, the
//! access log line, and each connection's protocol for the connection
//! metrics. Recording happens when the response body ends (or is dropped),
//! so the duration and byte count cover the whole response.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;

use crate::access_log::{self, Entry};
use crate::body::{End, ProxyBody, Watch, Watched};
use crate::client_limits::InFlight;
use crate::config::AccessLogFormat;
use crate::metrics::{self, ListenerMetrics};
use crate::snapshot::Snapshot;

/// What the proxy found out while answering: filled in as it goes.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The request's id, for the upstream request (set before routing) and
    /// then the access log.
    pub request_id: Option<HeaderValue>,
    /// The route's index in the config, once routed.
    pub route: Option<usize>,
    /// The member that answered (the last attempted one).
    pub upstream: Option<SocketAddr>,
    pub upstream_time: Option<Duration>,
    /// The cache lookup result, on caching routes.
    pub cache: Option<&'static str>,
    /// The path and query sent upstream, when the route's `rewrite` or
    /// `strip_prefix` changed them.
    pub upstream_path: Option<Box<str>>,
}

impl Outcome {
    /// Times one upstream attempt and records it: the member's
    /// `sluice_upstream_*` metrics when a response head arrived, and the
    /// member and time for the access log either way.
    ///
    /// `send` is pinned by the caller and taken by reference: a future
    /// taken by value would be stored twice in this one's state (the
    /// parameter and the awaited value), and the exchange is kilobytes.
    pub(crate) async fn attempt<T, E, F>(
        &mut self,
        snap: &Snapshot,
        pool: usize,
        pool_name: &str,
        addr: SocketAddr,
        send: std::pin::Pin<&mut F>,
    ) -> Result<Response<T>, E>
    where
        F: std::future::Future<Output = Result<Response<T>, E>>,
    {
        tracing::Span::current().record("member", tracing::field::display(addr));
        let started = Instant::now();
        let result = send.await;
        let elapsed = started.elapsed();
        self.upstream = Some(addr);
        self.upstream_time = Some(elapsed);
        if let Ok(resp) = &result {
            snap.metrics
                .upstream(pool, pool_name, addr, resp.status().as_u16(), elapsed);
        }
        result
    }
}

/// A connection's protocol, learnt from its TLS ALPN or its first request.
#[derive(Debug, Default)]
pub(crate) struct ConnProtocol(AtomicU8);

const UNKNOWN: u8 = 0;
const H1: u8 = 1;
const H2: u8 = 2;

impl ConnProtocol {
    /// Counts the connection as opened with `version` unless it already is.
    pub(crate) fn learn(&self, version: Version, metrics: &ListenerMetrics) {
        if self.0.load(Ordering::Relaxed) != UNKNOWN {
            return;
        }
        let h2 = version == Version::HTTP_2;
        let code = if h2 { H2 } else { H1 };
        if self
            .0
            .compare_exchange(UNKNOWN, code, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            metrics.opened(h2);
        }
    }

    /// The connection closed.
    pub(crate) fn closed(&self, metrics: &ListenerMetrics) {
        match self.0.swap(UNKNOWN, Ordering::Relaxed) {
            H1 => metrics.closed(false),
            H2 => metrics.closed(true),
            _ => metrics.closed_unknown(),
        }
    }
}

/// The start of one request's record, taken before the proxy consumes it.
pub(crate) struct Start {
    started: Instant,
    method: Method,
    listener: usize,
    /// Present when the access log is on.
    entry: Option<Box<Entry>>,
}

impl Start {
    pub(crate) fn new<B>(
        req: &Request<B>,
        started: Instant,
        client: IpAddr,
        peer: IpAddr,
        listener: usize,
        access_log: Option<AccessLogFormat>,
    ) -> Start {
        let entry = access_log.map(|format| {
            // Only the combined format shows Referer and User-Agent; a
            // JSON line spares looking them up.
            let combined = format == AccessLogFormat::Combined;
            let h = req.headers();
            Box::new(Entry {
                ts: access_log::wall_clock(started),
                client,
                peer,
                method: req.method().clone(),
                uri: req.uri().clone(),
                host_header: match req.uri().authority() {
                    Some(_) => None,
                    None => h.get(header::HOST).cloned(),
                },
                version: req.version(),
                status: 0,
                bytes: 0,
                duration: Duration::ZERO,
                upstream: None,
                upstream_time: None,
                cache: None,
                upstream_path: None,
                error: None,
                // Moved in from the outcome at the end: no clone to count.
                request_id: HeaderValue::from_static(""),
                referer: combined.then(|| h.get(header::REFERER).cloned()).flatten(),
                user_agent: combined
                    .then(|| h.get(header::USER_AGENT).cloned())
                    .flatten(),
            })
        });
        Start {
            started,
            method: req.method().clone(),
            listener,
            entry,
        }
    }

    /// Attaches the recording to `resp`: done now for an empty body, else
    /// when its body ends or is dropped.
    ///
    /// `in_flight` is the connection's hold on the request
    /// ([`InFlight::sent`]), released with the record: one body wrapper
    /// for both.
    pub(crate) fn finish(
        self,
        snap: Arc<Snapshot>,
        outcome: Outcome,
        resp: Response<ProxyBody>,
        in_flight: InFlight,
    ) -> Response<ProxyBody> {
        let in_flight = in_flight.sent(&resp);
        let fill = resp.extensions().get::<crate::cache::FillReport>().cloned();
        let mut done = self.done(snap, outcome, resp.status(), fill, in_flight);
        if resp
            .extensions()
            .get::<crate::reply::UpstreamTimedOut>()
            .is_some()
        {
            done.error(UPSTREAM_TIMEOUT);
        }
        if resp.body().is_end_stream() {
            done.record();
            return resp;
        }
        resp.map(|inner| Watched::new(inner, done).boxed())
    }

    /// The record of a response the listener writes itself (the hit lane):
    /// its `bytes` counted as sent once its head is ready, as a body
    /// wrapper counts what it passes on, and recorded when dropped, once
    /// the response is out (or could not be).
    pub(crate) fn written(
        self,
        snap: Arc<Snapshot>,
        outcome: Outcome,
        status: StatusCode,
        bytes: u64,
        in_flight: InFlight,
    ) -> Written {
        let mut done = self.done(snap, outcome, status, None, Some(in_flight));
        done.bytes = bytes;
        Written(Some(done))
    }

    fn done(
        self,
        snap: Arc<Snapshot>,
        outcome: Outcome,
        status: StatusCode,
        fill: Option<crate::cache::FillReport>,
        in_flight: Option<InFlight>,
    ) -> Done {
        let mut done = Done {
            _in_flight: in_flight,
            snap,
            listener: self.listener,
            route: outcome.route,
            method: metrics::method_index(&self.method),
            status: status.as_u16(),
            bodiless: self.method == Method::HEAD || crate::headers::status_has_no_content(status),
            started: self.started,
            bytes: 0,
            entry: self.entry,
            fill,
        };
        if let (Some(route), Some(result)) = (outcome.route, outcome.cache) {
            done.snap.metrics.cache_lookup(route, result);
        }
        if let Some(e) = &mut done.entry {
            if let Some(id) = outcome.request_id {
                e.request_id = id;
            }
            e.upstream = outcome.upstream;
            e.upstream_time = outcome.upstream_time;
            e.cache = outcome.cache;
            e.upstream_path = outcome.upstream_path;
        }
        done
    }
}

/// A response the listener writes itself, recorded when dropped
/// ([`Start::written`]).
pub(crate) struct Written(Option<Done>);

impl Written {
    /// The answer could not be written whole: the client went away.
    pub(crate) fn client_abort(&mut self) {
        if let Some(done) = &mut self.0 {
            done.error(CLIENT_ABORT);
        }
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done.record();
        }
    }
}

struct Done {
    /// Released (dropped) with the record.
    _in_flight: Option<InFlight>,
    snap: Arc<Snapshot>,
    listener: usize,
    route: Option<usize>,
    method: usize,
    status: u16,
    /// No body goes out (HEAD, 1xx, 204, 304): hyper drops it unread.
    bodiless: bool,
    started: Instant,
    bytes: u64,
    entry: Option<Box<Entry>>,
    /// A fill's leader: what became of the fill, for the `cache` field.
    fill: Option<crate::cache::FillReport>,
}

/// The access log's `error` words (the contract's names).
const UPSTREAM_BODY: &str = "upstream_body";
const CLIENT_ABORT: &str = "client_abort";
const UPSTREAM_TIMEOUT: &str = "upstream_timeout";

impl Done {
    fn error(&mut self, word: &'static str) {
        if let Some(e) = &mut self.entry {
            e.error = Some(word);
        }
    }

    /// The log line before the request metrics: a scrape that counts this
    /// request then also counts its line if it was dropped.
    fn record(self) {
        let elapsed = self.started.elapsed();
        if let (Some(mut e), Some(log)) = (self.entry, &self.snap.config.access_log) {
            e.status = self.status;
            e.bytes = self.bytes;
            if let (Some(fill), Some(result)) = (&self.fill, e.cache) {
                e.cache = Some(fill.cache_field(result));
            }
            e.duration = elapsed;
            access_log::send(&e, log.format);
        }
        if let Some(m) = self.snap.metrics.requests(self.listener, self.route) {
            m.record(self.method, metrics::class_index(self.status), elapsed);
        }
    }
}

/// A response body records its request when it ends or is dropped.
impl Watch for Done {
    fn data(&mut self, data: &Bytes) {
        self.bytes += data.len() as u64;
    }

    fn end(mut self, end: End) {
        match end {
            // The head went out; the body broke on the way (the upstream's
            // ended early or failed).
            End::Failed => self.error(UPSTREAM_BODY),
            // Dropped before its end by a connection that ended (or an
            // HTTP/2 stream the client reset): the client went away.
            End::Dropped if !self.bodiless => self.error(CLIENT_ABORT),
            End::Dropped | End::Complete => {}
        }
        self.record();
    }
}
