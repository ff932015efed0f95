//! The request path, top to bottom: check limits and authority, route, pick
//! members in the pool's order, forward (retrying requests that never
//! reached a member), and stream the response back.
//!
//! Every failure maps to one status here: 400/404/405/413/414/431 for the
//! client's request, 502/503/504 for the upstream's side.

pub mod headers;
pub mod observe;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::body::{self, DownloadBody, MinRateBody, ProxyBody, Reclaimable, UploadBody};
use crate::config::Limits;
use crate::framing::{Verdict, Verdicts};
use crate::metrics::ListenerMetrics;
use crate::ratelimit;
use crate::router::Route;
use crate::snapshot::Snapshot;
use crate::upstream::balance::PickContext;
use crate::upstream::outlier::Outcome;
use crate::upstream::pool::{Acquired, Pool, UpstreamError};
use crate::upstream::retry;

/// What the proxy knows about the client connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub listener: Arc<str>,
    pub https: bool,
    /// The framing guard's verdicts on this connection's HTTP/1.x requests.
    pub framing: Verdicts,
    /// This listener's connection metrics (and its index in the config).
    pub metrics: Arc<ListenerMetrics>,
    /// HTTP/1.x or HTTP/2, once known.
    pub protocol: observe::ConnProtocol,
}

/// Shared, swappable runtime state.
pub type State = Arc<ArcSwap<Snapshot>>;

/// Handles one client request. Never fails: every error becomes a response.
///
/// Every request gets an id ([`crate::request_id`]) and a tracing span, and
/// is counted in the metrics and the access log once its response ends.
pub async fn handle(
    state: State,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    conn.protocol.learn(req.version(), &conn.metrics);
    let snap = state.load_full();
    let request_id = crate::request_id::of(req.headers());
    let record = observe::Start::new(
        &req,
        started,
        conn.client,
        conn.metrics.index,
        snap.config.access_log.as_ref().map(|c| c.format),
    );
    let span = tracing::info_span!(
        "request",
        id = %request_id.to_str().unwrap_or_default(),
        route = tracing::field::Empty,
        pool = tracing::field::Empty,
        member = tracing::field::Empty,
        cache = tracing::field::Empty,
    );
    let mut outcome = observe::Outcome {
        request_id: Some(request_id.clone()),
        ..Default::default()
    };
    let mut resp = respond_to(&snap, &conn, req, &mut outcome)
        .instrument(span)
        .await;
    resp.headers_mut()
        .insert(crate::request_id::X_REQUEST_ID.clone(), request_id);
    Ok(record.finish(snap, outcome, resp))
}

async fn respond_to(
    snap: &Arc<Snapshot>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    outcome: &mut observe::Outcome,
) -> Response<ProxyBody> {
    // One verdict per HTTP/1.x request, taken before anything else looks at
    // it: a request whose framing is in doubt is never routed.
    let verdict = match req.version() {
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11 => conn.framing.next(),
        _ => Verdict::Accept,
    };
    if let Verdict::Reject(violation) = verdict {
        tracing::debug!(client = %conn.client, %violation, "request framing refused");
        return bad_request(violation.message());
    }
    let mut quota = None;
    let mut resp = proxy(snap, conn, req, &mut quota, outcome).await;
    if let Some(quota) = quota {
        quota.apply(resp.headers_mut());
    }
    // An upgrade request answered without switching: the connection stays
    // HTTP/1.1 only if the guard can pick it up again.
    if verdict == Verdict::AcceptUpgrade
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
        && !conn.framing.resume()
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// `quota` is set when the route has a rate limit that allowed the request,
/// so that whatever answers it carries the `RateLimit-*` fields.
async fn proxy(
    snap: &Arc<Snapshot>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    quota: &mut Option<ratelimit::Decision>,
    outcome: &mut observe::Outcome,
) -> Response<ProxyBody> {
    let limits = snap.config.limits_for(&conn.listener);
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_bytes {
        return local(StatusCode::URI_TOO_LONG, "request target too long");
    }
    // hyper enforces the count for HTTP/1.1; HTTP/2 field lists end up here.
    if head_bytes(&req) > limits.max_header_bytes || req.headers().len() > limits.max_header_count {
        return local(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large",
        );
    }
    if req.method() == Method::CONNECT {
        return local(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported");
    }
    let authority = match headers::authority(req.version(), req.uri(), req.headers(), conn.https) {
        Ok(a) => a,
        Err(e) => return bad_request(&e.to_string()),
    };
    if req.body().size_hint().lower() > limits.max_body_bytes {
        return local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let Some(route) = snap.router.lookup(&authority.host, req.uri().path()) else {
        return local(StatusCode::NOT_FOUND, "no route for this host and path");
    };
    let Some(pool) = snap.pools.get(route.pool) else {
        return local(StatusCode::NOT_FOUND, "no route for this host and path");
    };
    outcome.route = Some(route.index);
    let span = tracing::Span::current();
    span.record("route", tracing::field::display(&route.name));
    span.record("pool", tracing::field::display(&pool.name));
    if let Some(limiter) = snap.rate_limits.get(&route.name) {
        let decision = limiter.check(conn.client.ip().to_canonical(), req.headers());
        if !decision.allowed {
            tracing::debug!(route = %route.name, client = %conn.client, "rate limited");
            let mut resp = local(StatusCode::TOO_MANY_REQUESTS, "too many requests");
            decision.apply(resp.headers_mut());
            return resp;
        }
        *quota = Some(decision);
    }

    let upgrade = headers::upgrade_request(req.version(), req.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (parts, incoming) = req.into_parts();
    let received = parts.version;
    let mut head = parts.headers;
    headers::strip_hop_by_hop(&mut head, upgrade.as_ref());
    headers::add_forwarding(
        &mut head,
        conn.client.ip(),
        conn.https,
        &authority.authority,
        received,
    );
    if let Some(id) = &outcome.request_id {
        head.insert(crate::request_id::X_REQUEST_ID.clone(), id.clone());
    }
    if !authority.authority.is_empty() && !head.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&authority.authority) {
            head.insert(header::HOST, v);
        }
    }
    let fwd = Forward {
        method: parts.method,
        head,
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string(),
        received,
        client_ip: conn.client.ip().to_canonical(),
    };
    let upgrade = match (client_upgrade, upgrade) {
        (Some(client), Some(token)) => Some(Upgrade { client, token }),
        _ => None,
    };
    let route_config = snap.config.routes.get(route.index);
    // With `compress = true` the response is compressed (or decoded) for
    // this client on its way out, whoever produced it.
    let compression = route_config.filter(|r| r.compress).map(|_| {
        (
            fwd.method.clone(),
            crate::compress::Accepted::parse(&fwd.head),
        )
    });
    let resp = match (route_config.and_then(|r| r.cache.as_ref()), &upgrade) {
        (Some(spec), None) => {
            let key = crate::cache::key::primary(
                conn.https,
                &authority.authority,
                &fwd.path_and_query,
                &fwd.head,
                spec,
            );
            let peer = conn.client.ip();
            let accepted = compression.as_ref().map(|(_, a)| a.clone());
            crate::cache::respond(
                snap, route, key, peer, fwd, incoming, accepted, limits, outcome,
            )
            .await
        }
        _ => forward(snap, route, fwd, Some(incoming), upgrade, limits, outcome).await,
    };
    match compression {
        Some((method, accepted)) => {
            crate::compress::apply(&snap.config.compression, &method, &accepted, resp)
        }
        None => resp,
    }
}

/// A request ready to go upstream: the client's head with hop-by-hop fields
/// removed and forwarding fields added. Owned, so that the cache can send it
/// again (a revalidation) or from a background task.
#[derive(Debug, Clone)]
pub struct Forward {
    pub method: Method,
    pub head: http::HeaderMap,
    pub path_and_query: String,
    /// The client's HTTP version.
    pub received: Version,
    /// For `ip_hash` balancing.
    pub client_ip: std::net::IpAddr,
}

/// A client's upgrade request (WebSocket and the like).
pub struct Upgrade {
    client: hyper::upgrade::OnUpgrade,
    token: HeaderValue,
}

/// Sends `req` to the route's pool: picks members in the pool's order,
/// retries idempotent requests after the failures `retry_on` lists, and any
/// request whose member refused the connection before anything was sent, and
/// maps every failure to a status. The response's hop-by-hop fields are
/// already removed.
pub(crate) async fn forward(
    snap: &Snapshot,
    route: &Route,
    req: Forward,
    incoming: Option<Incoming>,
    upgrade: Option<Upgrade>,
    limits: &Limits,
    outcome: &mut observe::Outcome,
) -> Response<ProxyBody> {
    let Some(pool) = snap.pools.get(route.pool) else {
        return local(StatusCode::NOT_FOUND, "no route for this host and path");
    };
    let Forward {
        method,
        mut head,
        path_and_query,
        received,
        client_ip,
    } = req;
    let has_body = incoming.as_ref().is_some_and(|b| !b.is_end_stream());
    // Idempotent requests without a body may be retried after any listed
    // failure. Any other request only when its member refused the
    // connection before the body was read: nothing reached a member then,
    // which is also when nginx passes a POST to the next server.
    let idempotent = headers::is_idempotent(&method) && !has_body;
    let plan = match pool.plan(&PickContext { client_ip }) {
        Ok(plan) => plan,
        Err(unavailable) => return no_member(pool, unavailable.retry_after),
    };
    let retry_on = pool.config.retry_on;
    let attempts = if upgrade.is_none() {
        1 + pool.config.retries as usize
    } else {
        1
    };
    let too_large = Arc::new(AtomicBool::new(false));
    let too_slow = Arc::new(AtomicBool::new(false));
    let client_failed = Arc::new(AtomicBool::new(false));
    // Only a request with a body pays for keeping it aside.
    let incoming = incoming.filter(|_| has_body).map(Reclaimable::slot);
    let mut upgrade = upgrade;
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
            Acquired::Overloaded => return at_capacity(pool),
            Acquired::Exhausted => break,
        };
        let more = attempt + 1 < attempts && next < plan.len();
        let (sent_tx, sent_rx) = oneshot::channel();
        let body = if let Some(slot) = &incoming {
            let b = MinRateBody::new(
                Reclaimable::new(slot),
                limits.min_body_rate,
                limits.body_rate_grace,
                too_slow.clone(),
            );
            UploadBody::new(b, limits.max_body_bytes, too_large.clone(), sent_tx)
                .client_failed(client_failed.clone())
                .boxed()
        } else {
            let _ = sent_tx.send(());
            body::empty()
        };
        let uri = match Uri::try_from(format!("http://{}{}", member.addr, path_and_query)) {
            Ok(u) => u,
            Err(_) => return bad_request("invalid request target"),
        };
        let mut up = Request::new(body);
        *up.method_mut() = method.clone();
        *up.uri_mut() = uri;
        *up.version_mut() = Version::HTTP_11;
        *up.headers_mut() = if attempt + 1 < attempts {
            head.clone()
        } else {
            std::mem::take(&mut head)
        };
        if !up.headers().contains_key(header::HOST) {
            // An HTTP/1.0 client without Host: HTTP/1.1 upstreams need one.
            if let Ok(v) = HeaderValue::from_str(&member.addr.to_string()) {
                up.headers_mut().insert(header::HOST, v);
            }
        }

        let sent = pool.send(member.addr, up, sent_rx);
        match outcome
            .attempt(snap, route.pool, &pool.name, member.addr, sent)
            .await
        {
            Ok(mut resp) => {
                let status = resp.status();
                pool.report(&member, Outcome::Response(status.as_u16()));
                if idempotent && more && retry_on.status(status.as_u16()) && pool.take_retry() {
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
                        let upstream_side = hyper::upgrade::on(&mut resp);
                        tokio::spawn(tunnel(client, upstream_side, in_flight));
                        return switching_protocols(resp, token);
                    }
                }
                return respond(resp, in_flight);
            }
            Err(e) => {
                drop(in_flight);
                if too_large.load(Ordering::Relaxed) {
                    return local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
                }
                if too_slow.load(Ordering::Relaxed) {
                    let mut resp = local(StatusCode::REQUEST_TIMEOUT, "request body too slow");
                    if received < Version::HTTP_2 {
                        // The rest of the body will not be read: close after this.
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    return resp;
                }
                if client_failed.load(Ordering::Relaxed) {
                    // The client's body broke (bad chunked framing, or it
                    // ended early): the client's fault, not the member's.
                    return bad_request("malformed or incomplete request body");
                }
                let (kind, may_retry) = match e {
                    UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. } => {
                        (Outcome::ConnectFailure, retry_on.connect)
                    }
                    UpstreamError::BeforeResponse { .. } => {
                        (Outcome::ConnectFailure, retry_on.reset)
                    }
                    UpstreamError::ResponseTimeout { .. } => {
                        (Outcome::ConnectFailure, retry_on.timeout)
                    }
                    UpstreamError::BadResponse { .. } => (Outcome::Neutral, false),
                };
                pool.report(&member, kind);
                let may_retry = if idempotent {
                    may_retry
                } else {
                    let refused = matches!(
                        e,
                        UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. }
                    );
                    refused && may_retry && incoming.as_ref().is_none_or(Reclaimable::untouched)
                };
                let retry = more && may_retry && pool.take_retry();
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
    match (last_error, last_status) {
        (None, Some(status)) => local(status, "upstream failed"),
        (error, _) => upstream_failure(pool, error),
    }
}

/// 503 at once when no member is usable (all down, ejected or draining),
/// with `Retry-After` when one may be back.
fn no_member(pool: &Pool, retry_after: u64) -> Response<ProxyBody> {
    tracing::debug!(pool = %pool.name, "no usable upstream member");
    let mut resp = local(StatusCode::SERVICE_UNAVAILABLE, "no usable upstream server");
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    resp
}

/// 503 at once when every member is at `max_connections` and `max_pending`
/// requests already wait (circuit breaking).
fn at_capacity(pool: &Pool) -> Response<ProxyBody> {
    tracing::warn!(pool = %pool.name, "upstream pool at capacity");
    let mut resp = local(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream servers at capacity",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn upstream_failure(pool: &Pool, error: Option<UpstreamError>) -> Response<ProxyBody> {
    match error {
        Some(e) if e.is_timeout() => local(StatusCode::GATEWAY_TIMEOUT, "upstream timed out"),
        Some(_) => local(StatusCode::BAD_GATEWAY, "upstream failed"),
        None => {
            tracing::warn!(pool = %pool.name, "no usable upstream member");
            local(StatusCode::SERVICE_UNAVAILABLE, "no upstream servers")
        }
    }
}

/// Passes an upstream response to the client with hop-by-hop fields removed.
fn respond(
    resp: Response<Incoming>,
    in_flight: crate::upstream::member::InFlight,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, None);
    parts
        .headers
        .append(header::VIA, headers::via(parts.version));
    Response::from_parts(parts, DownloadBody::new(body, in_flight).boxed())
}

fn switching_protocols(resp: Response<Incoming>, token: HeaderValue) -> Response<ProxyBody> {
    let (mut parts, _) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, Some(&token));
    parts
        .headers
        .append(header::VIA, headers::via(parts.version));
    Response::from_parts(parts, body::empty())
}

/// Copies bytes both ways between an upgraded client and member connection.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _in_flight: crate::upstream::member::InFlight,
) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let mut c = TokioIo::new(c);
            let mut u = TokioIo::new(u);
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
fn head_bytes(req: &Request<Incoming>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + target + " HTTP/1.1\r\n".len() + 1;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Marks a response sluice generated itself (an error page, not the
/// upstream's answer), so that the cache never stores it.
#[derive(Debug, Clone, Copy)]
pub struct Generated;

/// A short plain-text response generated by sluice itself.
pub fn local(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(Generated);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A 400 that also closes an HTTP/1.1 connection: after a malformed request
/// the framing of whatever follows cannot be trusted.
fn bad_request(message: &str) -> Response<ProxyBody> {
    let mut resp = local(StatusCode::BAD_REQUEST, message);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
