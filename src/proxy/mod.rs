//! The request path, top to bottom, in one place:
//!
//! 1. **admit** ([`begin`], [`admit`]): the framing guard's verdict,
//!    the URI and head limits, the authority;
//! 2. **route** ([`crate::router`]), the route's **rules** ([`rules`]:
//!    `allow` / `deny`, a `redirect`, `rewrite` and `strip_prefix`),
//!    **limit** ([`crate::ratelimit`]) and the body limit (the route's
//!    `max_body_bytes`, else the listener's);
//! 3. build the upstream request ([`Forward`]: hop-by-hop fields out,
//!    forwarding fields in, the route's `request_headers` and
//!    `upstream_host`);
//! 4. on a caching route, **cache lookup** ([`crate::cache::Cache::lookup`]):
//!    a hit is answered there; a miss comes back as a fill;
//! 5. **forward** ([`forward`]): members in the pool's order, retries;
//! 6. **fill**: the response goes back to the cache, which stores it as it
//!    streams ([`crate::cache::Fill::finish`]);
//! 7. **compress** ([`crate::compress::apply`]) on the way out, then the
//!    route's `response_headers`;
//! 8. **record** ([`observe`]): metrics and the access log when the body
//!    ends.
//!
//! Steps 1 to 4 are plain functions: a cache hit is answered without a
//! future of its own, and what has to wait is one boxed future
//! ([`Step::Wait`]) that [`handle`] awaits.
//!
//! Nothing below calls back into this module. Every refusal and failure is
//! a [`Refusal`], mapped to its status in [`crate::reply`].

pub(crate) mod hit_lane;
pub(crate) mod observe;
mod rules;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::body::{self, End, MinRateBody, ProxyBody, Reclaimable, UploadBody, Watch, Watched};
use crate::cache::{self, Looked, Lookup};
use crate::compress::Accepted;
use crate::config::{Limits, Vars};
use crate::framing::{Verdict, Verdicts, Violation};
use crate::headers;
use crate::metrics::ListenerMetrics;
use crate::ratelimit;
use crate::reply::Refusal;
use crate::router::Route;
use crate::snapshot::{Snapshot, State};
use crate::upstream::balance::PickContext;
use crate::upstream::client::{Outgoing, ResponseBody};
use crate::upstream::h1::Upgraded;
use crate::upstream::outlier::Outcome;
use crate::upstream::pool::Acquired;
use crate::upstream::retry;

/// What the proxy knows about the client connection a request came on.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// The connection's client: the source a PROXY header named, else the
    /// TCP peer. What `X-Forwarded-For` gets appended.
    pub client: SocketAddr,
    /// The TCP peer (the balancer, when a PROXY header named the client).
    pub peer: SocketAddr,
    /// The address the client connected to (a PROXY header's destination,
    /// else the socket's), known only when some pool sends PROXY headers.
    pub local: Option<SocketAddr>,
    /// The listener's `trusted_forwarders`, present only when `client` is
    /// one of them: its requests' `X-Forwarded-For` then names the client.
    pub forwarders: Option<Arc<[crate::config::Cidr]>>,
    pub listener: Arc<str>,
    pub https: bool,
    /// The framing guard's verdicts on this connection's HTTP/1.x requests.
    pub framing: Verdicts,
    /// This listener's connection metrics (and its index in the config).
    pub metrics: Arc<ListenerMetrics>,
    /// HTTP/1.x or HTTP/2, once known.
    pub protocol: observe::ConnProtocol,
    /// The authority this connection's requests last named.
    pub last_authority: headers::LastAuthority,
    /// The forwarding fields' values its requests last got.
    pub last_forwarding: headers::LastForwarding,
}

impl ConnInfo {
    /// The client a request on this connection comes from: behind a
    /// trusted forwarder, what its `X-Forwarded-For` says
    /// ([`crate::client_addr`]); otherwise the connection's client.
    /// Canonical (IPv4-mapped IPv6 as IPv4).
    pub(crate) fn client_for(&self, headers: &http::HeaderMap) -> IpAddr {
        match &self.forwarders {
            None => self.client.ip().to_canonical(),
            Some(trusted) => crate::client_addr::behind(self.client.ip(), headers, trusted),
        }
    }
}

/// Handles one client request. Never fails: every error becomes a response.
///
/// Every request gets an id ([`crate::request_id`]) and a tracing span (at
/// `debug`), and is counted in the metrics and the access log once its
/// response ends.
///
/// The path up to the first wait ([`begin`]) is plain code: a cache hit
/// is answered without a future of its own, and what must wait (a trip
/// upstream, a second-tier read) is one boxed future, so that this
/// request's future stays small (it is moved whole into hyper, and every
/// nested `async fn` would make it as large as its largest path).
#[allow(clippy::manual_async_fn)]
pub(crate) fn handle(
    state: State,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    sendoff: Sendoff,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> {
    // A block, not an `async fn`: that would keep its arguments twice, as
    // they were passed and as the body's own (the request, borrowed before
    // it is moved on, for the whole request).
    async move {
        let started = Instant::now();
        conn.protocol.learn(req.version(), &conn.metrics);
        let snap = state.load_full();
        let request_id = crate::request_id::of(req.headers());
        let client = conn.client_for(req.headers());
        let record = observe::Start::new(
            &req,
            started,
            client,
            conn.peer.ip(),
            conn.metrics.index,
            snap.config.access_log.as_ref().map(|c| c.format),
        );
        // A debug span: at the usual `info` it is disabled and costs nothing
        // (a span's fields are formatted when it is made, whether or not an
        // event inside it is ever logged). Warnings on the request path are
        // made inside an equal span of their own ([`request_span`]).
        let span = tracing::debug_span!(
            "request",
            id = %request_id.to_str().unwrap_or_default(),
            route = tracing::field::Empty,
            pool = tracing::field::Empty,
            member = tracing::field::Empty,
        );
        let mut outcome = observe::Outcome {
            request_id: Some(request_id.clone()),
            ..Default::default()
        };
        let mut held = None;
        let mut out = Outbound {
            grpc: crate::grpc::is_call(req.headers()),
            ..Default::default()
        };
        let resp = {
            let step = span
                .in_scope(|| begin(&snap, &conn, client, req, &mut held, &mut out, &mut outcome));
            match step {
                Step::Answer(resp) => resp,
                Step::Wait(wait) => {
                    first_poll_ends().await;
                    wait.instrument(span).await
                }
            }
        };
        let mut resp = out.apply(&conn, resp);
        crate::request_id::stamp(resp.headers_mut(), request_id);
        if sendoff.draining.is_some_and(|d| d.load(Ordering::Relaxed)) {
            // The server drains: this connection takes no further request
            // (hyper closes it after this response).
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(record.finish(snap, outcome, resp, sendoff.in_flight))
    }
}

/// Pending once (waking its waker), and after that for as long as it is
/// polled from [`poll_first`]; then ready. A request's future awaits it
/// before it starts what has to wait, so that the service's first poll
/// (`listener::Answer`) ends there, and so does an HTTP/2 stream's first
/// poll on its connection's task (`listener::streams`): started from
/// either, a trip upstream would do its first steps twice, once more when
/// it is polled with a waker that counts (measured: about 430
/// instructions more per proxied miss).
pub(crate) fn first_poll_ends() -> impl Future<Output = ()> {
    let mut polled = false;
    std::future::poll_fn(move |cx| {
        let first = FIRST_POLL
            .try_with(|w| w.data() == cx.waker().data())
            .unwrap_or(false);
        if std::mem::replace(&mut polled, true) && !first {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
}

/// Polls `fut` once with a waker that wakes nothing: for a caller that
/// either has the answer after this poll or hands `fut` on to something
/// that polls it again with its own waker at once.
pub(crate) fn poll_first<F: Future + ?Sized>(mut fut: Pin<&mut F>) -> std::task::Poll<F::Output> {
    match FIRST_POLL.try_with(|w| fut.as_mut().poll(&mut std::task::Context::from_waker(w))) {
        Ok(polled) => polled,
        // The thread's waker is gone only while the thread ends.
        Err(_) => fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())),
    }
}

thread_local! {
    /// [`poll_first`]'s waker, which [`first_poll_ends`] knows by its
    /// address: one per thread, so no other waker can share it (the
    /// standard no-op waker's address can differ from one use to another).
    static FIRST_POLL: std::task::Waker = std::task::Waker::from(Arc::new(WakesNothing));
}

struct WakesNothing;

impl std::task::Wake for WakesNothing {
    fn wake(self: Arc<Self>) {}
    fn wake_by_ref(self: &Arc<Self>) {}
}

/// What the client connection asks of each of its responses.
pub(crate) struct Sendoff {
    /// The request stays in flight for the connection's timers until its
    /// response body has been sent.
    pub in_flight: crate::client_limits::InFlight,
    /// On HTTP/1.x, the server's drain flag: while it drains, a response
    /// says `Connection: close`.
    pub draining: Option<Arc<AtomicBool>>,
}

/// A request answered at once, or the wait for its answer.
enum Step<'a> {
    Answer(Response<ProxyBody>),
    Wait(Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send + 'a>>),
}

/// What a request's answer gets on its way out, whatever produced it (a
/// hit, the pool, a refusal), set as the request goes through [`begin`].
#[derive(Default)]
struct Outbound<'a> {
    /// The route's rules, once the request reached them: their
    /// `response_headers`.
    ruled: Option<rules::Ruled<'a>>,
    /// A rate limit that allowed the request: the `RateLimit-*` fields.
    quota: Option<ratelimit::Decision>,
    /// An upgrade request ([`Verdict::AcceptUpgrade`]).
    upgrade: bool,
    /// A gRPC call ([`crate::grpc::is_call`]): sluice's own errors go out
    /// in the shape a gRPC client reads. Known before anything else, and
    /// read by [`proxy`] too.
    grpc: bool,
}

impl Outbound<'_> {
    fn apply(self, conn: &ConnInfo, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        let mut resp = match self.ruled {
            Some(ruled) => rules::after(ruled, resp),
            None => resp,
        };
        if let Some(quota) = self.quota {
            quota.apply(resp.headers_mut());
        }
        // An upgrade request answered without switching: the connection
        // stays HTTP/1.1 only if the guard can pick it up again.
        if self.upgrade
            && resp.status() != StatusCode::SWITCHING_PROTOCOLS
            && !conn.framing.resume()
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.grpc {
            resp = crate::grpc::answer(resp);
        }
        resp
    }
}

/// What a request's answer borrows that the request itself does not keep:
/// held by [`handle`] for as long as the answer takes.
struct Held {
    authority: headers::Authority,
    /// The values of the rules' variables, on a route with rules.
    request_uri: Option<http::uri::PathAndQuery>,
    request_id: Option<HeaderValue>,
    /// With `compress = true`: the method and the client's
    /// `Accept-Encoding`, for the response to be compressed (or decoded)
    /// for this client on its way out, whoever produced it.
    compression: Option<(Method, Accepted)>,
}

/// The request path up to its first wait: the framing guard's verdict,
/// then admit and route ([`proxy`]).
fn begin<'a>(
    snap: &'a Arc<Snapshot>,
    conn: &'a ConnInfo,
    client: IpAddr,
    req: Request<Incoming>,
    held: &'a mut Option<Held>,
    out: &mut Outbound<'a>,
    outcome: &'a mut observe::Outcome,
) -> Step<'a> {
    // One verdict per HTTP/1.x request, taken before anything else looks at
    // it: a request whose framing is in doubt is never routed.
    let verdict = match req.version() {
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11 => conn.framing.next(),
        _ => Verdict::Accept,
    };
    if let Verdict::Reject(violation) = verdict {
        tracing::debug!(%client, %violation, "request framing refused");
        if violation == Violation::TargetTooLong {
            // The guard cut the target short and asked hyper to close.
            return Step::Answer(Refusal::UriTooLong.reply());
        }
        return Step::Answer(Refusal::BadRequest(violation.message()).reply());
    }
    out.upgrade = verdict == Verdict::AcceptUpgrade;
    proxy(snap, conn, client, req, held, out, outcome)
        .unwrap_or_else(|refusal| Step::Answer(refusal.reply()))
}

/// Admit and route, then answer as [`routed`] does, inside the route's
/// rules when it has any ([`rules`]: `allow` / `deny` first, its
/// `response_headers` on whatever answers, through `out`).
fn proxy<'a>(
    snap: &'a Arc<Snapshot>,
    conn: &'a ConnInfo,
    client_ip: IpAddr,
    mut req: Request<Incoming>,
    held: &'a mut Option<Held>,
    out: &mut Outbound<'a>,
    outcome: &'a mut observe::Outcome,
) -> Result<Step<'a>, Refusal> {
    let listener = snap.config.listener(&conn.listener);
    let limits = listener.map_or(&snap.config.limits, |l| &l.limits);
    admit(&req, limits)?;
    let authority = (conn.last_authority)
        .authority(req.version(), req.uri(), req.headers(), conn.https)
        .map_err(|e| Refusal::BadAuthority(e.to_string()))?;
    if listener.is_none_or(|l| l.normalize_paths) {
        normalise_path(req.uri_mut())?;
    }
    let route = snap
        .router
        .lookup(authority.host(), req.uri().path())
        .ok_or(Refusal::NoRoute)?;
    outcome.route = Some(route.index);
    let span = tracing::Span::current();
    span.record("route", tracing::field::display(&route.name));
    let route_config = snap.config.routes.get(route.index);
    let rules = route_config.and_then(|r| r.rules.as_deref());
    // A gRPC call is never cached or compressed: its messages are framed
    // (and compressed, if at all) by gRPC itself, and its outcome is in
    // trailers that a stored copy would not replay.
    let grpc = out.grpc;
    let compression = route_config
        .filter(|r| r.compress && !grpc)
        .map(|_| (req.method().clone(), Accepted::parse(req.headers())));
    let held = &*held.insert(Held {
        authority,
        // The values of the rules' variables, taken before the path changes.
        request_uri: rules.and(req.uri().path_and_query().cloned()),
        request_id: rules.and(outcome.request_id.clone()),
        compression,
    });
    let leg = Leg {
        snap,
        route,
        limits,
        max_body_bytes: limits.max_body_bytes,
        ruled: None,
        grpc,
    };
    let client = Client {
        conn,
        ip: client_ip,
        authority: held.authority.authority(),
    };
    let compression = held.compression.as_ref();
    let Some(rules) = rules else {
        return routed(leg, client, req, compression, out, outcome);
    };
    let vars = Vars {
        request_id: held.request_id.as_ref().map_or(&[], |id| id.as_bytes()),
        client: client_ip,
        host: held.authority.host(),
        request_uri: held.request_uri.as_ref().map_or("/", |pq| pq.as_str()),
        https: conn.https,
    };
    let ruled = rules::Ruled { rules, vars };
    // Every answer on the route gets its response_headers, sluice's own
    // refusals included.
    out.ruled = Some(ruled);
    rules::admit(ruled)?;
    let leg = Leg {
        max_body_bytes: rules.max_body_bytes.unwrap_or(limits.max_body_bytes),
        ruled: Some(ruled),
        ..leg
    };
    routed(leg, client, req, compression, out, outcome)
}

/// A routed request, from its rate limit on: answered through the cache
/// or straight from the pool, compressed on the way out.
fn routed<'a>(
    leg: Leg<'a>,
    client: Client<'a>,
    mut req: Request<Incoming>,
    compression: Option<&'a (Method, Accepted)>,
    out: &mut Outbound<'a>,
    outcome: &'a mut observe::Outcome,
) -> Result<Step<'a>, Refusal> {
    let Leg { snap, route, .. } = leg;
    let client_ip = client.ip;
    if let Some(limiter) = snap.rate_limits.get(&route.name) {
        let decision = limiter.check(client_ip, req.headers());
        if !decision.allowed {
            tracing::debug!(route = %route.name, client = %client_ip, "rate limited");
            let mut resp = Refusal::RateLimited.reply();
            decision.apply(resp.headers_mut());
            return Ok(Step::Answer(resp));
        }
        out.quota = Some(decision);
    }
    if let Some(answer) = leg.ruled.and_then(rules::redirect) {
        return answer.map(Step::Answer);
    }
    if req.body().size_hint().lower() > leg.max_body_bytes {
        return Err(Refusal::BodyTooLarge);
    }
    let pool = route
        .pool
        .and_then(|p| snap.pools.get(p))
        .ok_or(Refusal::NoRoute)?;
    tracing::Span::current().record("pool", tracing::field::display(&pool.name));
    if let Some(r) = leg.ruled {
        rules::rewrite(r, req.uri_mut(), outcome)?;
    }

    let upgrade = headers::upgrade_request(req.version(), req.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (parts, incoming) = req.into_parts();
    let upgrade = match (client_upgrade, upgrade) {
        (Some(client), Some(token)) => Some(Upgrade { client, token }),
        _ => None,
    };
    let spec = snap
        .config
        .routes
        .get(route.index)
        .and_then(|r| r.cache.as_ref())
        .filter(|_| !leg.grpc);
    Ok(match (spec, upgrade) {
        (Some(spec), None) => {
            through_cache(leg, client, parts, incoming, spec, compression, outcome)
        }
        (_, upgrade) => {
            let token = upgrade.as_ref().map(|u| &u.token);
            let fwd = Forward::new(parts, leg, client, token, outcome);
            // The trip made here and boxed once, as it is: an `async`
            // block awaiting it would keep it twice (as captured, and
            // where it is polled), and one calling `forward` would keep
            // its arguments beside a second box.
            let trip = attempts(leg, fwd, Some(incoming), upgrade, outcome);
            Step::Wait(Box::pin(futures_util::FutureExt::map(
                trip,
                move |result| {
                    let resp = result.unwrap_or_else(|refusal| refusal.reply());
                    compressed(snap, compression, resp)
                },
            )))
        }
    })
}

/// The response compressed (or decoded) for the client, on a route with
/// `compress = true` ([`Held::compression`]).
fn compressed(
    snap: &Snapshot,
    compression: Option<&(Method, Accepted)>,
    resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    match compression {
        Some((method, accepted)) => {
            crate::compress::apply(&snap.config.compression, method, accepted, resp)
        }
        None => resp,
    }
}

/// Puts the normalised path ([`crate::path`]) in `uri`, query untouched,
/// so that routing, the cache key and the upstream request all use it.
/// The access log keeps the path as the client sent it.
fn normalise_path(uri: &mut Uri) -> Result<(), Refusal> {
    let path = crate::path::normalise(uri.path())
        .map_err(|_| Refusal::BadRequest("invalid percent-encoding in the path"))?;
    let std::borrow::Cow::Owned(path) = path else {
        return Ok(());
    };
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    set_target(uri, target).map_err(|()| Refusal::BadRequest("invalid path"))
}

/// Puts `target` (a path and query) in `uri`, keeping its scheme and
/// authority.
fn set_target(uri: &mut Uri, target: String) -> Result<(), ()> {
    let pq =
        http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(target)).map_err(|_| ())?;
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(pq);
    *uri = Uri::from_parts(parts).map_err(|_| ())?;
    Ok(())
}

/// The request's own limits, before routing: target length, head size and
/// field count, and the CONNECT method.
fn admit<B>(req: &Request<B>, limits: &Limits) -> Result<(), Refusal> {
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_bytes {
        return Err(Refusal::UriTooLong);
    }
    // hyper enforces the count for HTTP/1.1; HTTP/2 field lists end up here.
    if head_bytes(req) > limits.max_header_bytes || req.headers().len() > limits.max_header_count {
        return Err(Refusal::HeadersTooLarge);
    }
    if req.method() == Method::CONNECT {
        return Err(Refusal::ConnectNotAllowed);
    }
    Ok(())
}

/// The cached path: the cache decides on the client's request as it came
/// (a hit builds nothing for the upstream, and is answered here at once);
/// a miss or a pass is forwarded by the proxy, and a fill's response goes
/// back to the cache to store.
fn through_cache<'a>(
    leg: Leg<'a>,
    client: Client<'a>,
    parts: http::request::Parts,
    incoming: Incoming,
    spec: &crate::config::KeySpec,
    compression: Option<&'a (Method, Accepted)>,
    outcome: &'a mut observe::Outcome,
) -> Step<'a> {
    let set = settings(leg.snap, leg.route);
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let asked = cache::Request {
        primary: cache::key::primary(
            client.conn.https,
            client.authority,
            path_and_query,
            &parts.headers,
            spec,
        ),
        method: &parts.method,
        head: &parts.headers,
        has_body: !incoming.is_end_stream(),
        peer: client.ip,
        accepted: compression.map(|(_, a)| a),
    };
    let looked = match leg.snap.cache.lookup(set, asked) {
        Looked::Now(Lookup::Hit(answer)) => {
            outcome.cache = answer.result;
            return Step::Answer(compressed(leg.snap, compression, answer.resp));
        }
        looked => looked,
    };
    Step::Wait(Box::pin(async move {
        let lookup = match looked {
            Looked::Now(lookup) => lookup,
            Looked::Later(wait) => wait.await,
        };
        let answer = looked_up(leg, client, parts, incoming, lookup, outcome).await;
        outcome.cache = answer.result;
        compressed(leg.snap, compression, answer.resp)
    }))
}

/// What the cache decided, carried out: a miss forwarded and filled, a
/// pass forwarded, a stale answer's revalidation started off the request
/// path.
///
/// A plain fn: what needs no waiting is done here, and the future keeps
/// only what its wait needs (an async fn would keep its arguments twice,
/// as passed and as its locals, the lookup's 440 bytes among them).
fn looked_up<'a>(
    leg: Leg<'a>,
    client: Client<'_>,
    parts: http::request::Parts,
    incoming: Incoming,
    lookup: Lookup,
    outcome: &'a mut observe::Outcome,
) -> impl Future<Output = cache::Answer> + 'a {
    use futures_util::future::Either;
    let cache = &leg.snap.cache;
    let set = settings(leg.snap, leg.route);
    match lookup {
        Lookup::Hit(answer) => Either::Left(std::future::ready(answer)),
        Lookup::Stale { answer, refresh } => {
            if let Some(fill) = refresh {
                let fwd = Forward::new(parts, leg, client, None, outcome);
                refresh_in_background(leg.snap, leg.route, fill, fwd);
            }
            Either::Left(std::future::ready(answer))
        }
        Lookup::Miss(mut fill) => {
            let mut fwd = Forward::new(parts, leg, client, None, outcome);
            fill.prepare(&mut fwd.method, &mut fwd.head);
            let trip = forward(leg, fwd, None, None, outcome);
            Either::Right(Either::Left(async move {
                let resp = trip.await;
                // Boxed: the fill's future is large, and rarely waits.
                Box::pin(fill.finish(cache, set, resp)).await
            }))
        }
        Lookup::Pass(pass) => {
            let fwd = Forward::new(parts, leg, client, None, outcome);
            let trip = forward(leg, fwd, Some(incoming), None, outcome);
            Either::Right(Either::Right(async move {
                let resp = trip.await;
                pass.finish(cache, set, resp)
            }))
        }
    }
}

fn settings<'a>(snap: &'a Snapshot, route: &'a Route) -> cache::Settings<'a> {
    cache::Settings {
        cache: &snap.config.cache,
        compression: &snap.config.compression,
        route: &route.name,
    }
}

/// Revalidates a stale entry once, off the request path (RFC 5861 §3):
/// forwarded and filled like a miss, under the daemon-wide limits, its
/// body read to the end (which is what stores it).
fn refresh_in_background(snap: &Arc<Snapshot>, route: &Route, mut fill: cache::Fill, req: Forward) {
    let snap = snap.clone();
    let route = route.clone();
    tokio::spawn(async move {
        let mut req = req;
        fill.prepare(&mut req.method, &mut req.head);
        let limits = snap.config.limits.clone();
        let leg = Leg {
            snap: &snap,
            route: &route,
            limits: &limits,
            max_body_bytes: limits.max_body_bytes,
            ruled: None,
            grpc: false,
        };
        let mut outcome = observe::Outcome::default();
        let resp = forward(leg, req, None, None, &mut outcome).await;
        let answer = fill
            .finish(&snap.cache, settings(&snap, &route), resp)
            .await;
        if let Err(e) = answer.resp.into_body().collect().await {
            tracing::debug!(error = %e, "background revalidation failed");
        }
    });
}

/// Where a routed request goes: the snapshot it runs under, its route,
/// and the limits of the listener it came on.
#[derive(Clone, Copy)]
struct Leg<'a> {
    snap: &'a Arc<Snapshot>,
    route: &'a Route,
    limits: &'a Limits,
    /// The route's `max_body_bytes`, else the listener's.
    max_body_bytes: u64,
    /// The route's rules, when it has any.
    ruled: Option<rules::Ruled<'a>>,
    /// A gRPC call ([`crate::grpc::is_call`]): never cached or compressed.
    grpc: bool,
}

impl<'a> Leg<'a> {
    /// The client fields this route removes before forwarding.
    fn strip(&self) -> &'a [http::HeaderName] {
        self.snap
            .config
            .routes
            .get(self.route.index)
            .map_or(&[], |r| &r.strip_request_headers)
    }
}

/// Who sent the request: its connection, the client's address (behind any
/// trusted forwarders) and the authority it named.
#[derive(Clone, Copy)]
struct Client<'a> {
    conn: &'a ConnInfo,
    ip: IpAddr,
    authority: &'a str,
}

/// A request ready to go upstream: the client's head with hop-by-hop fields
/// removed and forwarding fields added. Owned, so that the cache can send it
/// again (a revalidation) or from a background task.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    pub method: Method,
    pub head: http::HeaderMap,
    /// The fields this hop sets, when they are not in `head` yet.
    pub added: Option<headers::Added>,
    pub path_and_query: http::uri::PathAndQuery,
    /// The client's HTTP version.
    pub received: Version,
    /// For `ip_hash` balancing.
    pub client_ip: IpAddr,
    /// For a pool's PROXY headers: the client (its port only when the
    /// connection is the client's own) and the address it connected to.
    pub proxied: Option<(SocketAddr, SocketAddr)>,
    /// A gRPC call ([`crate::grpc::is_call`]).
    pub grpc: bool,
}

impl Forward {
    /// The upstream request for a client's request head: hop-by-hop fields
    /// and the route's `strip_request_headers` removed, `X-Forwarded-*`,
    /// `Forwarded`, `Via` and the request id added, and for an HTTP/2
    /// request a `Host` (it carries `:authority` instead) and its `cookie`
    /// fields joined into one; then the route's `request_headers` and
    /// `upstream_host`, which have the last word.
    fn new(
        parts: http::request::Parts,
        leg: Leg<'_>,
        client: Client<'_>,
        upgrade: Option<&HeaderValue>,
        outcome: &observe::Outcome,
    ) -> Forward {
        let Client {
            conn,
            ip,
            authority,
        } = client;
        let received = parts.version;
        let mut head = parts.headers;
        headers::strip_hop_by_hop(&mut head, upgrade);
        headers::strip_fields(&mut head, leg.strip());
        if received >= Version::HTTP_2 {
            headers::join_cookies(&mut head);
        }
        let grpc = crate::grpc::is_call(&head);
        if grpc {
            // Hop-by-hop, but gRPC servers require it: it says the client
            // reads trailers, and sluice passes them on.
            head.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let added = conn
            .last_forwarding
            .fields(
                &head,
                headers::Hops {
                    previous: conn.client.ip(),
                    client: ip,
                },
                conn.https,
                authority,
                received,
            )
            .with_request_id(outcome.request_id.clone());
        if !authority.is_empty() && !head.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(authority) {
                head.insert(header::HOST, v);
            }
        }
        // A route's rules see (and may change) the head as it goes out.
        let added = match leg.ruled {
            Some(ruled) => {
                added.apply(&mut head);
                rules::forwarded(ruled, &mut head);
                None
            }
            None => Some(added),
        };
        Forward {
            method: parts.method,
            head,
            added,
            path_and_query: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            received,
            client_ip: ip,
            proxied: conn.local.map(|local| {
                let port = if ip == conn.client.ip().to_canonical() {
                    conn.client.port()
                } else {
                    0
                };
                (SocketAddr::new(ip, port), local)
            }),
            grpc,
        }
    }
}

/// A client's upgrade request (WebSocket and the like).
pub(crate) struct Upgrade {
    client: hyper::upgrade::OnUpgrade,
    token: HeaderValue,
}

/// Sends `req` to the route's pool: picks members in the pool's order,
/// retries idempotent requests after the failures `retry_on` lists, and any
/// request whose member refused the connection before anything was sent
/// ([`retry::after_error`]), and maps every failure to a [`Refusal`]. The
/// response's hop-by-hop fields are already removed.
#[allow(clippy::manual_async_fn)] // the boxed trip alone is kept (below)
fn forward<'a>(
    leg: Leg<'a>,
    req: Forward,
    incoming: Option<Incoming>,
    upgrade: Option<Upgrade>,
    outcome: &'a mut observe::Outcome,
) -> impl Future<Output = Response<ProxyBody>> + 'a {
    // Boxed: the retry loop's state is large, and a request's future is
    // moved (copied) a few times on its way into hyper; a cache hit should
    // not pay for the state of a trip it does not make. Made here, not in
    // an async fn, whose arguments would stay in its state (hundreds of
    // bytes) beside the box they were moved into.
    let trip = Box::pin(attempts(leg, req, incoming, upgrade, outcome));
    async move {
        match trip.await {
            Ok(resp) => resp,
            Err(refusal) => refusal.reply(),
        }
    }
}

/// The request's attempts on its pool's members, retries included. A
/// plain fn returning an async block, with the request taken apart and
/// what needs no waiting done first: what the block captures it keeps
/// once, where an async fn keeps its arguments twice (as passed, and as
/// the body's locals), and this future is part of every proxied request's.
fn attempts<'a>(
    leg: Leg<'a>,
    req: Forward,
    incoming: Option<Incoming>,
    mut upgrade: Option<Upgrade>,
    outcome: &'a mut observe::Outcome,
) -> impl std::future::Future<Output = Result<Response<ProxyBody>, Refusal>> + 'a {
    let Leg {
        snap,
        route,
        limits,
        max_body_bytes,
        ..
    } = leg;
    let Forward {
        method,
        mut head,
        added,
        path_and_query,
        received,
        client_ip,
        proxied,
        grpc,
    } = req;
    let request_id = RequestId(outcome.request_id.clone());
    // A gRPC call's own deadline, when it has one: it bounds every attempt
    // (the pool's response_timeout still applies when it is shorter).
    let deadline = grpc
        .then(|| crate::grpc::timeout(&head))
        .flatten()
        .map(|t| tokio::time::Instant::now() + t);
    // A gRPC call's request stream may rest between messages for as long
    // as the call lasts (a bidirectional chat, a subscription): it is not
    // an upload, and min_body_rate would cut it off.
    let min_body_rate = if grpc { 0 } else { limits.min_body_rate };
    let has_body = incoming.as_ref().is_some_and(|b| !b.is_end_stream());
    let idempotent = headers::is_idempotent(&method) && !has_body;
    // Only a request with a body pays for keeping it aside, and for the
    // flags its wrappers raise.
    let incoming = incoming.filter(|_| has_body).map(Reclaimable::slot);
    let failures = incoming.is_some().then(UploadFailures::default);
    async move {
        let pool_index = route.pool.ok_or(Refusal::NoRoute)?;
        let pool = snap.pools.get(pool_index).ok_or(Refusal::NoRoute)?;
        let pick = pick_context(
            &pool.config,
            client_ip,
            &head,
            added.as_ref(),
            path_and_query.as_str(),
        );
        let plan = match pool.plan(&pick) {
            Ok(plan) => plan,
            Err(unavailable) => {
                tracing::debug!(pool = %pool.name, "no usable upstream member");
                return Err(Refusal::NoMember {
                    retry_after: unavailable.retry_after,
                });
            }
        };
        let retry_on = pool.config.retry_on;
        let attempts = if upgrade.is_none() {
            1 + pool.config.retries as usize
        } else {
            1
        };
        // Whether `Host` in `head` is the member's (for an HTTP/1.0 client
        // without one), to be replaced by the next member's.
        let mut member_host = false;
        let mut last_error = None;
        let mut last_status = None;
        let mut next = 0;
        for attempt in 0..attempts {
            if attempt > 0 {
                let pause = retry::backoff(
                    pool.config.retry_backoff,
                    attempt as u32,
                    &mut fastrand::Rng::new(),
                );
                tokio::time::sleep(pause).await;
            }
            // The first attempt may wait for a member below its
            // max_connections; retries only take a free one.
            let (member, in_flight) = match pool.acquire(&plan, &mut next, attempt == 0).await {
                Acquired::Member(member, in_flight) => (member, in_flight),
                Acquired::Overloaded => {
                    tracing::warn!(pool = %pool.name, "upstream pool at capacity");
                    return Err(Refusal::AtCapacity);
                }
                Acquired::Exhausted => break,
            };
            let more = attempt + 1 < attempts && next < plan.len();
            // `sent` fires when the body has gone out; without one, the
            // request is sent once its head is, and no channel is needed.
            let (body, sent_rx) = match (&incoming, &failures) {
                (Some(slot), Some(failures)) => {
                    let (sent_tx, sent_rx) = oneshot::channel();
                    let b = MinRateBody::new(
                        Reclaimable::new(slot),
                        min_body_rate,
                        limits.body_rate_grace,
                        failures.too_slow.clone(),
                    );
                    let body =
                        UploadBody::new(b, max_body_bytes, failures.too_large.clone(), sent_tx)
                            .client_failed(failures.client_failed.clone())
                            .boxed();
                    (body, Some(sent_rx))
                }
                _ => (body::empty(), None),
            };
            // The target in origin form, as an HTTP/1.1 member reads it (RFC
            // 9112 §3.2.1); an HTTP/2 member's authority is made from `Host`
            // where it is sent. `*` (OPTIONS) has no origin form to send.
            if !path_and_query.as_str().starts_with('/') {
                return Err(Refusal::BadRequest("invalid request target"));
            }
            if member_host || !head.contains_key(header::HOST) {
                // An HTTP/1.0 client without Host: HTTP/1.1 upstreams need one,
                // the member's own (each attempt's).
                if let Ok(v) = HeaderValue::from_str(&member.addr.to_string()) {
                    head.insert(header::HOST, v);
                    member_host = true;
                }
            }
            // Borrowed, not copied: every attempt sends the same head.
            let up = Outgoing {
                method: &method,
                target: &path_and_query,
                headers: &head,
                added: added.as_ref(),
            };

            // Pinned here, once: the attempt's record takes it by reference.
            // A future passed on by value keeps its space in both states
            // (this one's is boxed, that is copied, for every request).
            let mut sending = std::pin::pin!(pool.send(member.addr, up, body, sent_rx, proxied));
            // The attempt's record is made in each arm's await: bound to a
            // name first, it would keep its space twice.
            let result = match deadline {
                None => {
                    outcome
                        .attempt(snap, pool_index, &pool.name, member.addr, sending.as_mut())
                        .await
                }
                // Boxed: only gRPC calls with a deadline take this path.
                Some(at) => match Box::pin(tokio::time::timeout_at(
                    at,
                    outcome.attempt(snap, pool_index, &pool.name, member.addr, sending.as_mut()),
                ))
                .await
                {
                    Ok(result) => result,
                    Err(_) => {
                        // The client's deadline, not the member's failure: not
                        // reported for ejection, and nothing is left to retry.
                        tracing::debug!(pool = %pool.name, member = %member.addr, "gRPC deadline passed");
                        return Err(Refusal::UpstreamTimedOut);
                    }
                },
            };
            match result {
                Ok(resp) => {
                    let status = resp.status();
                    pool.report(&member, Outcome::Response(status.as_u16()));
                    if idempotent && more && retry_on.status(status.as_u16()) && pool.take_retry() {
                        let _span = request_span(&request_id, route, &pool.name, member.addr);
                        tracing::warn!(
                            route = %route.name,
                            pool = %pool.name,
                            member = %member.addr,
                            error = %format_args!("answered {status}"),
                            retry = true,
                            "upstream attempt failed"
                        );
                        last_error = None;
                        last_status = Some(status);
                        continue;
                    }
                    if status == StatusCode::SWITCHING_PROTOCOLS {
                        if let Some(Upgrade { client, token }) = upgrade.take() {
                            let (parts, body) = resp.into_parts();
                            tokio::spawn(tunnel(client, body.upgraded(), in_flight));
                            return Ok(switching_protocols(parts, token));
                        }
                    }
                    let mut resp = respond(
                        resp,
                        UpstreamBody {
                            in_flight,
                            request_id,
                        },
                    );
                    if pool.policy == crate::config::Policy::StickyCookie {
                        if let Some(v) = sticky_cookie(&pool.config.sticky, pick.sticky, &member) {
                            resp.headers_mut().append(header::SET_COOKIE, v);
                        }
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    drop(in_flight);
                    if let Some(failures) = &failures {
                        if failures.too_large.load(Ordering::Relaxed) {
                            return Err(Refusal::BodyTooLarge);
                        }
                        if failures.too_slow.load(Ordering::Relaxed) {
                            return Err(Refusal::BodyTooSlow {
                                close: received < Version::HTTP_2,
                            });
                        }
                        if failures.client_failed.load(Ordering::Relaxed) {
                            // The client's body broke (bad chunked framing, or
                            // it ended early): the client's fault, not the
                            // member's.
                            return Err(Refusal::BadRequest(
                                "malformed or incomplete request body",
                            ));
                        }
                    }
                    let untouched = incoming.as_ref().is_none_or(Reclaimable::untouched);
                    let (kind, may_retry) =
                        retry::after_error(&e, &retry_on, idempotent, untouched);
                    pool.report(&member, kind);
                    let retry = more && may_retry && pool.take_retry();
                    let _span = request_span(&request_id, route, &pool.name, member.addr);
                    tracing::warn!(
                        route = %route.name,
                        pool = %pool.name,
                        member = %member.addr,
                        error = %e,
                        retry,
                        "upstream attempt failed"
                    );
                    last_error = Some(e);
                    last_status = None;
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(match (last_error, last_status) {
            (None, Some(status)) => Refusal::UpstreamStatus(status),
            (Some(e), _) if e.is_timeout() => Refusal::UpstreamTimedOut,
            (Some(crate::upstream::pool::UpstreamError::BadResponse { .. }), _)
            | (Some(_), Some(_)) => Refusal::UpstreamFailed,
            (Some(_), None) => Refusal::Unreachable,
            (None, None) => {
                tracing::warn!(pool = %pool.name, "no usable upstream member");
                Refusal::NoServers
            }
        })
    }
}

/// What an upload's wrappers report when an attempt fails: its body went
/// over `max_body_bytes`, came slower than `min_body_rate`, or broke on the
/// client's side.
#[derive(Default)]
struct UploadFailures {
    too_large: Arc<AtomicBool>,
    too_slow: Arc<AtomicBool>,
    client_failed: Arc<AtomicBool>,
}

/// The context for a warning about a request: the request's own span when
/// it is enabled (at `debug`), else a span with the same fields made now,
/// so a warning reads the same at any level without every request paying
/// for a span. Entered until dropped; never held across an `.await`.
fn request_span(
    id: &RequestId,
    route: &Route,
    pool: &str,
    member: SocketAddr,
) -> tracing::span::EnteredSpan {
    let current = tracing::Span::current();
    if !current.is_disabled() {
        return current.entered();
    }
    tracing::info_span!("request", id = %id, route = %route.name, pool = %pool, member = %member)
        .entered()
}

/// A request id for log fields, formatted only when an event is emitted.
struct RequestId(Option<HeaderValue>);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.as_ref().and_then(|v| v.to_str().ok());
        f.write_str(text.unwrap_or("-"))
    }
}

/// An upstream response body on its way to the client: the member stays in
/// flight until it ends, and a body that fails after the head went out
/// (the client's response is cut short) is counted and logged.
struct UpstreamBody {
    in_flight: crate::upstream::member::InFlight,
    request_id: RequestId,
}

impl Watch for UpstreamBody {
    fn end(self, end: End) {
        if end == End::Failed {
            let member = self.in_flight.member();
            tracing::warn!(
                request_id = %self.request_id,
                pool = %member.pool,
                member = %member.addr,
                "upstream body failed before its end; the client's response is cut short"
            );
        }
        self.in_flight.end(end);
    }
}

/// What the pool's policy looks at: the client, and for `hash` the
/// request's key, for `sticky_cookie` the member its cookie names.
fn pick_context(
    pool: &crate::config::PoolConfig,
    client_ip: std::net::IpAddr,
    head: &http::HeaderMap,
    added: Option<&headers::Added>,
    path_and_query: &str,
) -> PickContext {
    use crate::config::{HashKey, Policy};
    use crate::upstream::balance::{client_key_hash, key_hash};
    let mut ctx = PickContext::client(client_ip);
    match pool.policy {
        Policy::Hash => {
            ctx.key = match &pool.hash_key {
                HashKey::Uri => key_hash(path_and_query.as_bytes()),
                // The value the member is sent (a forwarding field or the
                // request id as this hop sets it).
                HashKey::Header(name) => {
                    let value = match added {
                        Some(added) => added.first(head, name),
                        None => head.get(name).cloned(),
                    };
                    key_hash(value.as_ref().map_or(&[][..], |v| v.as_bytes()))
                }
                HashKey::Cookie(name) => {
                    key_hash(headers::cookie_value(head, name).unwrap_or("").as_bytes())
                }
                HashKey::Client => client_key_hash(client_ip),
            };
        }
        Policy::StickyCookie => {
            ctx.sticky = headers::cookie_value(head, &pool.sticky.cookie)
                .and_then(|v| u64::from_str_radix(v, 16).ok());
        }
        _ => {}
    }
    ctx
}

/// The `Set-Cookie` that keeps a `sticky_cookie` client on `member`, unless
/// the request's cookie already named it.
fn sticky_cookie(
    sticky: &crate::config::StickyConfig,
    asked: Option<u64>,
    member: &crate::upstream::member::Member,
) -> Option<HeaderValue> {
    let token = crate::upstream::balance::member_token(member);
    if asked == Some(token) {
        return None;
    }
    let mut v = format!("{}={token:016x}; Path=/", sticky.cookie);
    if !sticky.ttl.is_zero() {
        v.push_str(&format!("; Max-Age={}", sticky.ttl.as_secs().max(1)));
    }
    if sticky.secure {
        v.push_str("; Secure");
    }
    if sticky.http_only {
        v.push_str("; HttpOnly");
    }
    HeaderValue::from_str(&v).ok()
}

/// Passes an upstream response to the client with hop-by-hop fields removed;
/// the member stays in flight until the body ends.
fn respond(resp: Response<ResponseBody>, in_flight: UpstreamBody) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, None);
    parts
        .headers
        .append(header::VIA, headers::via(parts.version));
    // The upstream body's errors are already boxed: no `map_err` layer.
    let body = Watched::new(body, in_flight);
    Response::from_parts(parts, body.boxed())
}

fn switching_protocols(
    mut parts: http::response::Parts,
    token: HeaderValue,
) -> Response<ProxyBody> {
    headers::strip_hop_by_hop(&mut parts.headers, Some(&token));
    parts
        .headers
        .append(header::VIA, headers::via(parts.version));
    Response::from_parts(parts, body::empty())
}

/// Copies bytes both ways between an upgraded client and member connection.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: Option<Upgraded>,
    _in_flight: crate::upstream::member::InFlight,
) {
    let Some(mut u) = upstream else {
        tracing::debug!("upgrade failed: the member's connection cannot be switched");
        return;
    };
    match client.await {
        Ok(c) => {
            let mut c = TokioIo::new(c);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

/// The size of the request head as sent: request line plus `name: value\r\n`
/// per field. hyper enforces `max_header_bytes` itself only down to its
/// minimum buffer size (8 KiB), so smaller configured limits are checked here.
fn head_bytes<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + target + " HTTP/1.1\r\n".len() + 1;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Waker};

    /// Pending once, having woken its waker (a caller that polls only on
    /// wake-ups is not left waiting), then ready.
    #[test]
    fn the_first_poll_ends_once() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let count = std::sync::Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut ends = std::pin::pin!(super::first_poll_ends());
        assert!(ends.as_mut().poll(&mut cx).is_pending());
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(ends.as_mut().poll(&mut cx).is_ready());
    }

    /// Polled from `poll_first` (the service's first poll, then an HTTP/2
    /// stream's first poll on its connection's task) it stays pending; the
    /// first poll with another waker ends it.
    #[test]
    fn the_first_poll_ends_under_a_waker_that_counts() {
        let mut ends = std::pin::pin!(super::first_poll_ends());
        assert!(super::poll_first(ends.as_mut()).is_pending());
        assert!(super::poll_first(ends.as_mut()).is_pending());
        let waker = Waker::from(std::sync::Arc::new(super::WakesNothing));
        assert!(ends
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready());
        // Not the standard no-op waker's doing: that one counts here.
        let mut again = std::pin::pin!(super::first_poll_ends());
        assert!(super::poll_first(again.as_mut()).is_pending());
        let mut noop = Context::from_waker(Waker::noop());
        assert!(again.as_mut().poll(&mut noop).is_ready());
    }
}
