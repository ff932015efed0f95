//! A pool's connections to its members, kept per worker thread: a request
//! and its upstream connection live on the same thread, and taking or
//! giving back a connection is a short uncontended lock, never a task or a
//! channel of its own.
//!
//! HTTP/1.1 connections carry one exchange at a time, driven by the
//! request's own task ([`super::h1`]). A connection goes back on its
//! member's list once its response body has been read to the end (see
//! [`ResponseBody`]), and [`Client::send`] takes the most recently used
//! one that the member has not closed meanwhile. A sweep (every quarter of
//! `idle_timeout`) closes those idle for `idle_timeout`, and beyond
//! `max_idle_per_server` per member and worker, the least recently used:
//! a burst keeps its connections until it has passed.
//!
//! An HTTP/2 member gets one connection per worker that every request
//! shares; the h2 crate keeps the streams within the member's
//! `MAX_CONCURRENT_STREAMS` (the others wait their turn). A `GOAWAY` closes
//! the connection to new streams while those in flight finish; the next
//! request opens a new one. A request the member refused unprocessed (its
//! stream above `GOAWAY`'s last stream id, or reset with `REFUSED_STREAM`)
//! is sent again when it has no body (after `REFUSED_STREAM` on the same
//! connection, which carries on; after `GOAWAY` on a new one), and otherwise
//! reported as not having reached the member, so the proxy may retry it.

use std::collections::HashMap;
use std::error::Error as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::{header, Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;

use super::connect::{Connector, Sender};
use super::h1;
use super::pool::UpstreamError;
use crate::body::{BoxError, ProxyBody};
use crate::config::UpstreamProtocol;

/// One worker's connections to one member.
#[derive(Default)]
struct Conns {
    /// Idle HTTP/1.1 connections, most recently used last.
    h1: Vec<H1>,
    /// The shared HTTP/2 connection, once the member has spoken h2.
    h2: Option<http2::SendRequest<ProxyBody>>,
    /// Whether the member picked HTTP/2 (by ALPN, or `h2c`).
    speaks_h2: bool,
    /// Taken by the one request connecting to an HTTP/2 member.
    gate: Option<Arc<tokio::sync::Mutex<()>>>,
}

struct H1 {
    conn: h1::Conn,
    /// When a sweep first saw it idle.
    idle_since: Option<Instant>,
}

/// The connections of one pool, per worker.
pub(crate) struct Client {
    connector: Connector,
    idle_timeout: Duration,
    max_idle: usize,
    workers: Box<[Mutex<ByMember>]>,
}

/// One worker's connections, by member address.
type ByMember = HashMap<SocketAddr, Conns, BuildHasherDefault<AddrHasher>>;

/// A multiply-rotate hash for member addresses, which come from the
/// config and DNS, never from a client, so need no defence against
/// chosen collisions. SipHash, the default, cost more than the rest of
/// taking a connection and giving it back (twice per request).
#[derive(Default)]
struct AddrHasher(u64);

impl AddrHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        // A product's low bits depend only on the low bits of its factors:
        // the high half, well mixed, is folded into them.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(u64::from(b));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// What an exchange with a member comes to: its response head, or why not.
pub(crate) type Exchanged = Result<Response<ResponseBody>, UpstreamError>;

/// A connection taken for one request.
enum Taken {
    H1(h1::Conn),
    H2(http2::SendRequest<ProxyBody>),
}

impl Client {
    pub(crate) fn new(connector: Connector, idle_timeout: Duration, max_idle: usize) -> Client {
        Client {
            connector,
            idle_timeout,
            max_idle,
            workers: (0..crate::workers::count())
                .map(|_| Mutex::new(ByMember::default()))
                .collect(),
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, ByMember> {
        let slot = &self.workers[crate::workers::index() % self.workers.len()];
        slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ready connection to `addr`, if the worker has one.
    fn take(&self, addr: SocketAddr) -> Option<Taken> {
        let mut map = self.conns();
        let conns = map.get_mut(&addr)?;
        if let Some(h2) = &conns.h2 {
            if h2.is_ready() {
                return Some(Taken::H2(h2.clone()));
            }
            conns.h2 = None;
        }
        // The most recently used first; one the member closed (or sent
        // something on, unasked) while idle is dropped.
        while let Some(mut c) = conns.h1.pop() {
            if c.conn.is_open_and_quiet() {
                return Some(Taken::H1(c.conn));
            }
        }
        None
    }

    /// Keeps an HTTP/1.1 connection whose exchange is done, as the most
    /// recently used. Beyond `max_idle` too: while more requests than that
    /// are in flight to the member, closing the surplus on its return would
    /// make the next request connect again (a burst of 256 against 64 kept
    /// opened a connection for every third request); the sweep closes the
    /// least recently used beyond `max_idle` instead.
    fn give_back(&self, addr: SocketAddr, conn: h1::Conn) {
        if self.max_idle == 0 {
            return;
        }
        self.conns().entry(addr).or_default().h1.push(H1 {
            conn,
            idle_since: None,
        });
    }

    /// Sends the request `out` with `body` to the member at `addr` on a
    /// pooled connection, or a new one, and waits for the response head.
    ///
    /// This future is part of every proxied request's, which is copied
    /// whole into its box: an async block, whose captures are kept once (an
    /// async fn keeps its arguments twice, as passed and as the body's
    /// locals), with only the pooled HTTP/1.1 exchange awaited inline.
    /// HTTP/2's retry state and a new connection's handshake are boxed,
    /// each in a statement of its own (a temporary lives to the end of its
    /// statement, awaits included).
    #[allow(clippy::manual_async_fn)] // the captures, kept once (above)
    pub(crate) fn send<'a>(
        self: &'a Arc<Self>,
        addr: SocketAddr,
        out: Outgoing<'a>,
        body: ProxyBody,
    ) -> impl Future<Output = Exchanged> + 'a {
        async move {
            // One await for every other case: a value kept across two
            // awaits is kept beside the HTTP/1.1 exchange too.
            let conn = match self.take(addr) {
                Some(Taken::H1(conn)) => conn,
                taken => {
                    let h2 = match taken {
                        Some(Taken::H2(send)) => Some(send),
                        _ => None,
                    };
                    return self.elsewhere(addr, h2, out, body).await;
                }
            };
            let body = match h1::send(conn, &out, body, true).await {
                Ok(resp) => return Ok(self.h1_response(addr, resp, true)),
                // Closed before the request was written (the member
                // closed the idle connection as it was taken): the request
                // is untouched and goes on a new connection.
                Err(h1::Failed {
                    unsent: Some(body), ..
                }) => body,
                Err(h1::Failed { error, .. }) => return Err(self.h1_failure(addr, &error)),
            };
            let fresh = Box::pin(self.send_new(addr, out, body));
            fresh.await
        }
    }

    /// Sends on the member's shared HTTP/2 connection `h2`, or on a new
    /// connection; boxed, the pooled HTTP/1.1 exchange being the common
    /// case.
    fn elsewhere<'a>(
        self: &'a Arc<Self>,
        addr: SocketAddr,
        h2: Option<http2::SendRequest<ProxyBody>>,
        out: Outgoing<'a>,
        body: ProxyBody,
    ) -> Either<
        Pin<Box<impl Future<Output = Exchanged> + 'a>>,
        Pin<Box<impl Future<Output = Exchanged> + 'a>>,
    > {
        match h2 {
            Some(send) => Either::Left(Box::pin(self.send_h2(addr, send, out, body))),
            None => Either::Right(Box::pin(self.send_new(addr, out, body))),
        }
    }

    /// Sends on a new connection. Requests that find no connection to an
    /// HTTP/2 member wait for the first of them to make one, and then
    /// share it.
    async fn send_new(
        self: &Arc<Self>,
        addr: SocketAddr,
        out: Outgoing<'_>,
        body: ProxyBody,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let gate = self.h2_gate(addr);
        let _turn = match gate {
            Some(gate) => {
                let turn = gate.lock_owned().await;
                if let Some(Taken::H2(send)) = self.take(addr) {
                    drop(turn);
                    return self.send_h2(addr, send, out, body).await;
                }
                Some(turn)
            }
            None => None,
        };
        // A connect (TLS handshake included) is a large future: boxed, so
        // that the common case below does not carry its space.
        let connect = Box::pin(self.connector.connect(addr, &[]));
        let sender = connect.await?;
        match sender {
            Sender::H1(conn) => self.send_h1_new(addr, conn, out, body, true).await,
            Sender::H2(send) => {
                self.keep_h2(addr, &send);
                drop(_turn);
                self.send_h2(addr, send, out, body).await
            }
        }
    }

    /// For a member that speaks HTTP/2 (`h2c`, or it picked `h2` before),
    /// the lock that lets one request at a time connect to it.
    fn h2_gate(&self, addr: SocketAddr) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let mut map = self.conns();
        let conns = map.entry(addr).or_default();
        if self.connector.protocol != UpstreamProtocol::H2c && !conns.speaks_h2 {
            return None;
        }
        Some(conns.gate.get_or_insert_with(Default::default).clone())
    }

    /// Keeps a new HTTP/2 connection for the worker's next requests.
    fn keep_h2(&self, addr: SocketAddr, send: &http2::SendRequest<ProxyBody>) {
        let mut map = self.conns();
        let conns = map.entry(addr).or_default();
        conns.speaks_h2 = true;
        if self.max_idle > 0 {
            conns.h2 = Some(send.clone());
        }
    }

    /// An HTTP/1.1 exchange's response; with `pooled`, its connection goes
    /// back on the worker's list once the body has been read to its end.
    fn h1_response(
        self: &Arc<Self>,
        addr: SocketAddr,
        resp: Response<h1::Body>,
        pooled: bool,
    ) -> Response<ResponseBody> {
        let (parts, mut body) = resp.into_parts();
        let mut home = pooled.then(|| Home {
            client: self.clone(),
            addr,
        });
        if body.is_end_stream() {
            // No body (a 204, a HEAD): the connection is free now.
            if let (Some(home), Some(conn)) = (home.take(), body.take_reusable()) {
                home.client.give_back(home.addr, conn);
            }
        }
        Response::from_parts(parts, ResponseBody::H1(Box::new(H1Body { body, home })))
    }

    /// What a failed HTTP/1.1 exchange comes to: a TLS alert on the first
    /// read is a connect failure (see [`failure`]), a response with
    /// ambiguous framing a bad response, anything else a failure before
    /// the response.
    fn h1_failure(&self, addr: SocketAddr, error: &h1::Error) -> UpstreamError {
        match error {
            h1::Error::Framing(violation) => UpstreamError::BadResponse {
                addr,
                reason: violation.to_string(),
            },
            h1::Error::Read(e) | h1::Error::Write(e) => self
                .connector
                .refused_by_tls(addr, e)
                .unwrap_or_else(|| UpstreamError::BeforeResponse {
                    addr,
                    reason: error.to_string(),
                }),
            _ => UpstreamError::BeforeResponse {
                addr,
                reason: error.to_string(),
            },
        }
    }

    /// Sends on a new HTTP/1.1 connection (with `pooled`, kept once the
    /// response is done): one that closes before taking the request is a
    /// failure, not a reason to try another.
    async fn send_h1_new(
        self: &Arc<Self>,
        addr: SocketAddr,
        conn: h1::Conn,
        out: Outgoing<'_>,
        body: ProxyBody,
        pooled: bool,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        match h1::send(conn, &out, body, false).await {
            Ok(resp) => Ok(self.h1_response(addr, resp, pooled)),
            Err(h1::Failed { error, .. }) => Err(self.h1_failure(addr, &error)),
        }
    }

    /// Sends on an HTTP/2 connection, and refuses a response whose framing
    /// is ambiguous (see [`checked`]). A bodiless request the member
    /// refused unprocessed is sent once more: on the same connection after
    /// `REFUSED_STREAM`, on a new one when the connection is going away.
    async fn send_h2(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut send: http2::SendRequest<ProxyBody>,
        out: Outgoing<'_>,
        body: ProxyBody,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let req = h2_form(addr, out.to_request(body))?;
        let again = req.body().is_end_stream().then(|| {
            let mut copy = Request::new(crate::body::empty());
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.headers_mut() = req.headers().clone();
            copy
        });
        let (req, going_away) = match send.try_send_request(req).await {
            Ok(resp) => return checked(addr, resp),
            Err(mut e) => {
                let unsent = e.take_message();
                let going_away = went_away(e.error());
                let e = failure(addr, e.error(), &self.connector);
                match (unsent, again) {
                    // Nothing of it went out: the connection was closing.
                    (Some(req), _) => (req, true),
                    (None, Some(req)) if refused(&e) => (req, going_away),
                    _ => return Err(e),
                }
            }
        };
        if !going_away && send.is_ready() {
            // One stream refused (REFUSED_STREAM: say, beyond the member's
            // stream limit before its SETTINGS had arrived) on a connection
            // that carries on: the request goes on it again.
            return self.send_h2_again(addr, &mut send, req).await;
        }
        // The connection is going away: forget it, and use a new one.
        self.forget_h2(addr, &send);
        let connect = Box::pin(self.connector.connect(addr, &[]));
        let sender = connect.await?;
        match sender {
            Sender::H2(mut send) => {
                self.keep_h2(addr, &send);
                self.send_h2_again(addr, &mut send, req).await
            }
            Sender::H1(conn) => {
                // The member now speaks HTTP/1.1: the head as the proxy
                // made it. Boxed: rare, and inline it would be part of
                // every h2 request's state.
                let first = Box::pin(self.send_h1_new(addr, conn, out, req.into_body(), true));
                first.await
            }
        }
    }

    /// The second and last try of a request [`send_h2`](Self::send_h2)
    /// got back unprocessed.
    async fn send_h2_again(
        &self,
        addr: SocketAddr,
        send: &mut http2::SendRequest<ProxyBody>,
        req: Request<ProxyBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        match send.try_send_request(req).await {
            Ok(resp) => checked(addr, resp),
            Err(e) => Err(failure(addr, e.error(), &self.connector)),
        }
    }

    /// One request on a new connection that starts with `preamble` (a
    /// PROXY header), never pooled: the connection closes once the
    /// response (or an upgraded tunnel) is done with it.
    pub(crate) async fn send_once(
        self: &Arc<Self>,
        addr: SocketAddr,
        preamble: &[u8],
        out: Outgoing<'_>,
        body: ProxyBody,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        match self.connector.connect(addr, preamble).await? {
            Sender::H1(conn) => self.send_h1_new(addr, conn, out, body, false).await,
            Sender::H2(mut send) => match send
                .send_request(h2_form(addr, out.to_request(body))?)
                .await
            {
                Ok(resp) => checked(addr, resp),
                Err(e) => Err(failure(addr, &e, &self.connector)),
            },
        }
    }

    fn forget_h2(&self, addr: SocketAddr, send: &http2::SendRequest<ProxyBody>) {
        let mut map = self.conns();
        if let Some(conns) = map.get_mut(&addr) {
            if conns
                .h2
                .as_ref()
                .is_some_and(|h2| h2.is_closed() || !send.is_ready())
            {
                conns.h2 = None;
            }
        }
    }

    /// Closes connections idle for `idle_timeout` and those the member
    /// closed; beyond `max_idle` idle connections per member, the least
    /// recently used go.
    fn sweep(&self, now: Instant) {
        for slot in self.workers.iter() {
            let mut map = slot.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, conns| {
                if conns.h2.as_ref().is_some_and(|h2| h2.is_closed()) {
                    conns.h2 = None;
                }
                let mut excess = conns.h1.len().saturating_sub(self.max_idle);
                conns.h1.retain_mut(|c| {
                    if excess > 0 {
                        excess -= 1;
                        return false;
                    }
                    let since = *c.idle_since.get_or_insert(now);
                    now.duration_since(since) < self.idle_timeout && c.conn.is_open_and_quiet()
                });
                conns.h2.is_some() || !conns.h1.is_empty() || conns.speaks_h2
            });
        }
    }
}

/// Sweeps `client`'s idle connections until it is dropped.
pub(crate) async fn sweep(client: Weak<Client>, every: Duration) {
    let every = every.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        match client.upgrade() {
            Some(c) => c.sweep(Instant::now()),
            None => return,
        }
    }
}

/// A response body from a member, read on the request's own task over
/// HTTP/1.1 (the connection goes back to the worker's list at its end), or
/// hyper's over HTTP/2.
pub(crate) enum ResponseBody {
    /// Boxed: the connection and the exchange's state are a few hundred
    /// bytes, and a response is moved a few times on its way out.
    H1(Box<H1Body>),
    H2(Incoming),
}

/// An HTTP/1.1 response body and, for a pooled connection, where the
/// connection goes once the body has been read to its end.
pub(crate) struct H1Body {
    body: h1::Body,
    home: Option<Home>,
}

/// The pool and member an HTTP/1.1 connection belongs to.
struct Home {
    client: Arc<Client>,
    addr: SocketAddr,
}

impl ResponseBody {
    /// After a `101`: the member's connection, switched to the new
    /// protocol (`None` over HTTP/2, which has no `101`).
    pub(crate) fn upgraded(self) -> Option<h1::Upgraded> {
        match self {
            ResponseBody::H1(b) => b.body.into_upgraded(),
            ResponseBody::H2(_) => None,
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::H1(b) => {
                let polled = Pin::new(&mut b.body).poll_frame(cx);
                if !matches!(polled, Poll::Pending) && b.body.is_end_stream() {
                    if let Some(home) = b.home.take() {
                        if let Some(conn) = b.body.take_reusable() {
                            home.client.give_back(home.addr, conn);
                        }
                    }
                }
                polled.map_err(BoxError::from)
            }
            ResponseBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::H1(b) => b.body.is_end_stream(),
            ResponseBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::H1(b) => b.body.size_hint(),
            ResponseBody::H2(b) => b.size_hint(),
        }
    }
}

/// Refuses an HTTP/2 response head with ambiguous framing (an HTTP/1.1
/// one is refused as it is read, see [`h1`]).
fn checked(
    addr: SocketAddr,
    resp: Response<Incoming>,
) -> Result<Response<ResponseBody>, UpstreamError> {
    match crate::framing::check_response_head(resp.headers()) {
        Ok(()) => Ok(resp.map(ResponseBody::H2)),
        Err(violation) => Err(UpstreamError::BadResponse {
            addr,
            reason: violation.to_string(),
        }),
    }
}

/// A request head as the proxy forwards it, borrowed: every attempt, and a
/// second try on a new connection, sends the same head without a copy of
/// it, and over HTTP/1.1 it is encoded straight from the proxy's.
#[derive(Clone, Copy)]
pub(crate) struct Outgoing<'a> {
    pub method: &'a http::Method,
    /// The target in origin form (RFC 9112 §3.2.1); an HTTP/2 member's
    /// authority is made from `Host` (see [`h2_form`]).
    pub target: &'a http::uri::PathAndQuery,
    /// `Host` naming the site, the client's fields, and the rest.
    pub headers: &'a http::HeaderMap,
    /// The fields this hop sets (forwarding, `Via`, request id), sent in
    /// place of the fields of the same names in `headers`; none when
    /// `headers` has them already.
    pub added: Option<&'a crate::headers::Added>,
}

impl Outgoing<'_> {
    /// The request, owned, for hyper's HTTP/2 client.
    fn to_request(self, body: ProxyBody) -> Request<ProxyBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = Uri::from(self.target.clone());
        *req.headers_mut() = self.headers.clone();
        if let Some(added) = self.added {
            added.clone().apply(req.headers_mut());
        }
        req
    }
}

/// An HTTP/2 request names its site in `:authority` (from the client's
/// `Host`) rather than in a `Host` field. HTTP/2 has no `101`, so an
/// `Upgrade` request cannot be sent at all.
fn h2_form(
    addr: SocketAddr,
    mut req: Request<ProxyBody>,
) -> Result<Request<ProxyBody>, UpstreamError> {
    if req.headers().contains_key(header::UPGRADE) {
        return Err(UpstreamError::Unsupported {
            addr,
            reason: "an Upgrade request cannot go to an HTTP/2 member",
        });
    }
    let host = req.headers_mut().remove(header::HOST);
    let scheme = req.uri().scheme_str().unwrap_or("http");
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let uri = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .and_then(|h| Uri::try_from(format!("{scheme}://{h}{target}")).ok());
    match uri {
        Some(uri) => *req.uri_mut() = uri,
        // No valid authority in `Host`: the member's, and the field kept.
        None => {
            if req.uri().authority().is_none() {
                let member = Uri::try_from(format!("{scheme}://{addr}{target}")).map_err(|e| {
                    UpstreamError::BeforeResponse {
                        addr,
                        reason: e.to_string(),
                    }
                })?;
                *req.uri_mut() = member;
            }
            if let Some(host) = host {
                req.headers_mut().insert(header::HOST, host);
            }
        }
    }
    Ok(req)
}

/// Whether `e` came from the member's `GOAWAY`: its connection takes no
/// new streams.
fn went_away(e: &hyper::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_go_away();
        }
        source = s.source();
    }
    false
}

/// Whether the member refused the request without processing it.
fn refused(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::Refused { .. })
}

/// What a failed exchange comes to. A TLS alert on the first read is a
/// connect failure: in TLS 1.3 a member that refuses our client certificate
/// says so only after the client's side of the handshake is done, and such
/// a member has seen no request. An HTTP/2 stream refused unprocessed is
/// [`UpstreamError::Refused`].
fn failure(addr: SocketAddr, e: &hyper::Error, connector: &Connector) -> UpstreamError {
    if let Some(e) = connector.refused_by_tls(addr, e) {
        return e;
    }
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason = s.to_string();
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            // A graceful GOAWAY (NO_ERROR) fails only the streams above
            // its last stream id, which the member promises it ignored.
            let unprocessed = h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR));
            if unprocessed {
                return UpstreamError::Refused { addr, reason };
            }
        }
        source = s.source();
    }
    UpstreamError::BeforeResponse { addr, reason }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    /// hashbrown picks a bucket by the low bits and a tag by the top 7:
    /// member addresses that differ in a port or an octet must spread
    /// over both.
    #[test]
    fn member_addresses_spread_over_buckets_and_tags() {
        let build = BuildHasherDefault::<AddrHasher>::default();
        let addrs: Vec<SocketAddr> = (0..128u16)
            .map(|i| SocketAddr::from(([10, 0, (i % 4) as u8, (i / 4) as u8], 8080 + i % 3)))
            .collect();
        let hashes: Vec<u64> = addrs.iter().map(|a| build.hash_one(a)).collect();
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 127).collect();
        assert!(tags.len() >= 48, "{} tags", tags.len());
        assert!(buckets.len() >= 48, "{} buckets", buckets.len());
    }
}
