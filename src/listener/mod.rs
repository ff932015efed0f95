//! Accept loops: every worker thread runs one task per listener, all
//! accepting from the same listening socket (bounded together by
//! `max_connections`); each connection then lives on the worker that
//! accepted it. TLS is terminated where configured, and HTTP/1.1 and HTTP/2
//! (ALPN over TLS, prior knowledge on plain TCP) are served with hyper.
//! HTTP/1.1 bytes pass through the framing guard ([`crate::framing`]) on
//! their way to hyper, and idle HTTP/1.1 connections are parked
//! ([`http1`]).
//!
//! On a listener with `proxy_protocol = true`, a connection from a peer
//! outside `trusted` is closed at once; from a trusted one, its PROXY
//! header ([`crate::proxy_protocol`]) is read first, before TLS, and names
//! the client.

mod batch;
mod hit_lane;
mod http1;
mod streams;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1 as h1, http2 as h2};
use hyper::service::{service_fn, HttpService};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

use crate::body::ProxyBody;
use crate::client_limits::{Activity, ClientIo, PerClient};
use crate::config::{Cidr, Limits};
use crate::framing::{FramingGuard, GuardLimits, Verdicts};
use crate::metrics::ListenerMetrics;
use crate::proxy::{self, ConnInfo};
use crate::proxy_protocol;
use crate::snapshot::State;

/// A busier worker waits up to this many rounds of [`ACCEPT_DEFER`] before
/// accepting anyway.
const ACCEPT_DEFER_ROUNDS: usize = 2;
const ACCEPT_DEFER: Duration = Duration::from_millis(1);

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/1.1 connection idle this long between requests is parked
/// ([`http1`]): long enough that a busy connection never is, short enough
/// that thousands of idle ones cost next to nothing soon after their last
/// response.
const PARK_AFTER: Duration = Duration::from_millis(10);

/// What an HTTP/2 connection with prior knowledge starts with.
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 receive windows (hyper's defaults, set explicitly): per stream and
/// per connection, the most a client can send before sluice reads it.
const H2_STREAM_WINDOW: u32 = 1 << 20;
const H2_CONNECTION_WINDOW: u32 = 1 << 20;
/// HTTP/2 response bytes buffered per stream while the client does not read
/// (the h2 crate's default, set explicitly).
const H2_SEND_BUFFER: usize = 400 << 10;

/// One bound listener and what it needs to serve.
pub(crate) struct Listener {
    pub name: Arc<str>,
    pub socket: TcpListener,
    pub tls: bool,
}

impl Listener {
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Binds `addr` with `SO_REUSEADDR` so a restart does not wait on TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// hyper settings for one connection, per protocol.
struct Builders {
    h1: h1::Builder,
    h2: h2::Builder<streams::FirstPollInline>,
}

/// hyper settings for one connection. `header_read_timeout` and
/// `keepalive_timeout` are not hyper's: [`ClientIo`] enforces them.
fn http_builders(limits: &Limits) -> Builders {
    let mut h1 = h1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(h1_max_buf(limits))
        .max_headers(limits.max_header_count)
        .keep_alive(true);
    let mut h2 = h2::Builder::new(streams::FirstPollInline);
    // The h2 crate's own defaults differ (unlimited pending resets in hyper,
    // 1024 local error resets, 200 streams); every abuse bound is set here.
    // A CONTINUATION flood is cut off by h2 once a header block spans more
    // frames than max_header_list_size / max_frame_size (+25%, at least 5)
    // could need: GOAWAY ENHANCE_YOUR_CALM.
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_frame_size(limits.h2_max_frame_size)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER);
    Builders { h1, h2 }
}

/// Room in hyper's buffer beyond `max_uri_bytes` for the method and the
/// head the framing guard completes an overlong target with.
const TARGET_CUT_ROOM: usize = 1024;

/// hyper's HTTP/1.1 read buffer limit (at least its 8 KiB minimum), which
/// bounds a request head. It also holds a request line cut short at
/// `max_uri_bytes` ([`crate::framing`]), so that an overlong target gets
/// 414 even when `max_header_bytes` is smaller; the exact head limit is
/// then the proxy's check.
fn h1_max_buf(limits: &Limits) -> usize {
    limits
        .max_header_bytes
        .max(limits.max_uri_bytes.saturating_add(TARGET_CUT_ROOM))
        .max(8192)
}

/// The framing guard buffers at most a head hyper could still parse: hyper's
/// buffer limit plus one initial read (8 KiB) it may overshoot it by.
fn guard_limits(limits: &Limits) -> GuardLimits {
    GuardLimits {
        max_head_bytes: h1_max_buf(limits) + 8192,
        max_headers: limits.max_header_count,
        max_target_bytes: limits.max_uri_bytes,
    }
}

/// What the accept loops of one listener share across worker threads: the
/// connection slots, the per-client counts and the metrics handles.
#[derive(Clone)]
pub(crate) struct Shared {
    permits: Arc<Semaphore>,
    per_client: Arc<PerClient>,
    metrics: Arc<ListenerMetrics>,
}

impl Shared {
    pub(crate) fn new(name: &str, state: &State, limits: &Limits) -> Shared {
        // Listener names and order never change on reload.
        let index = state
            .load()
            .config
            .listeners
            .iter()
            .position(|l| *l.name == *name)
            .unwrap_or(0);
        Shared {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_client: PerClient::new(),
            metrics: Arc::new(ListenerMetrics::new(name, index)),
        }
    }
}

/// Accepts connections until `stop` flips, handing each to its own task on
/// the calling worker. Every connection watches `drain` so a stop can drain
/// it.
pub(crate) async fn serve(
    listener: Listener,
    state: State,
    shared: Shared,
    drain: Arc<Drain>,
    mut stop: watch::Receiver<bool>,
) {
    let Shared {
        permits,
        per_client,
        metrics,
    } = shared;
    let ctx = Context {
        name: listener.name.clone(),
        tls: listener.tls,
        state: state.clone(),
        per_client,
        metrics: metrics.clone(),
    };
    // hyper settings, rebuilt only when a reload changes the limits.
    let mut settings: Option<(Limits, Arc<Builders>)> = None;
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        // Leave new connections to a less loaded worker for a moment, but
        // never for long: that worker may be stuck or gone.
        for _ in 0..ACCEPT_DEFER_ROUNDS {
            if !crate::workers::busier_than_others() {
                break;
            }
            tokio::time::sleep(ACCEPT_DEFER).await;
        }
        let (stream, peer) = tokio::select! {
            r = listener.socket.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %listener.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        if let Some(rate) = state.load().connection_rates.get(&*listener.name) {
            if !rate.allow() {
                // Dropping the stream closes it before anything is read.
                tracing::debug!(listener = %listener.name, client = %peer, "new-connection rate exceeded; closing");
                continue;
            }
        }
        // The rest of the connection-level settings follow reloads: a new
        // connection gets the current ones.
        let (limits, proxy_protocol, forwarders, want_local) = {
            let snap = state.load();
            let config = snap.config.listener(&listener.name);
            let limits = config.map_or(&snap.config.limits, |l| &l.limits).clone();
            let proxy_protocol = match config {
                Some(l) if l.proxy_protocol => {
                    Some(l.trusted.iter().any(|net| net.contains(peer.ip())))
                }
                _ => None,
            };
            let forwarders = config
                .map(|l| l.trusted_forwarders.clone())
                .filter(|f| !f.is_empty());
            (
                limits,
                proxy_protocol,
                forwarders,
                snap.sends_proxy_protocol,
            )
        };
        if proxy_protocol == Some(false) {
            // Not a balancer we know: its header, if any, would be a lie.
            metrics.proxy_rejected("untrusted");
            tracing::warn!(listener = %listener.name, peer = %peer, reason = "untrusted", "PROXY header not accepted from this peer; closing");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let builders = match &settings {
            Some((built_for, builders)) if *built_for == limits => builders.clone(),
            _ => {
                let builders = Arc::new(http_builders(&limits));
                settings = Some((limits.clone(), builders.clone()));
                builders
            }
        };
        // The head timer starts now: a PROXY header is read within it too.
        let activity = Activity::new(
            limits.header_read_timeout,
            limits.keepalive_timeout,
            Some(PARK_AFTER),
        );
        let accepted = Accepted {
            stream,
            peer,
            permit,
            open: crate::workers::OpenConnection::new(),
            draining: drain.watch(),
            activity,
            builders,
            guard: guard_limits(&limits),
            max_per_client: limits.max_connections_per_client,
            forwarders,
        };
        if proxy_protocol.is_none() {
            let local = if want_local {
                accepted.stream.local_addr().ok()
            } else {
                None
            };
            start(accepted, peer, local, &ctx);
            continue;
        }
        // The header is read on the connection's own task, never holding
        // up the accept loop; the per-client cap then counts the client it
        // names.
        let ctx = ctx.clone();
        let timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let mut accepted = accepted;
            let read = tokio::time::timeout(timeout, proxy_protocol::read(&mut accepted.stream));
            let header = match read.await {
                Ok(Ok(header)) => header,
                Ok(Err(e)) => {
                    ctx.metrics.proxy_rejected(e.reason());
                    tracing::warn!(listener = %ctx.name, peer = %accepted.peer, reason = e.reason(), error = %e, "PROXY header refused; closing");
                    return;
                }
                Err(_) => {
                    ctx.metrics.proxy_rejected("timeout");
                    tracing::warn!(listener = %ctx.name, peer = %accepted.peer, reason = "timeout", "no PROXY header within header_read_timeout; closing");
                    return;
                }
            };
            let (client, local) = match header.addresses {
                Some(a) => (a.source, Some(a.destination)),
                // LOCAL / UNKNOWN: the balancer speaks for itself.
                None => (
                    accepted.peer,
                    accepted.stream.local_addr().ok().filter(|_| want_local),
                ),
            };
            start(accepted, client, local, &ctx);
        });
    }
}

/// What starting a connection needs from its listener.
#[derive(Clone)]
struct Context {
    name: Arc<str>,
    tls: bool,
    state: State,
    per_client: Arc<PerClient>,
    metrics: Arc<ListenerMetrics>,
}

/// An accepted connection, before its client is known for certain.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    open: crate::workers::OpenConnection,
    draining: Draining,
    activity: Arc<Activity>,
    builders: Arc<Builders>,
    guard: GuardLimits,
    max_per_client: usize,
    /// The listener's `trusted_forwarders`, when it has any.
    forwarders: Option<Arc<[Cidr]>>,
}

/// Serves `accepted` on a task of its own, now that its client is known:
/// `client` is the address a PROXY header named, else the TCP peer, and is
/// what `max_connections_per_client` counts; `local` is the address the
/// client connected to, when a pool needs it for its own PROXY headers.
fn start(accepted: Accepted, client: SocketAddr, local: Option<SocketAddr>, ctx: &Context) {
    let Accepted {
        stream,
        peer,
        permit,
        open,
        draining,
        activity,
        builders,
        guard,
        max_per_client,
        forwarders,
    } = accepted;
    let Some(slot) = ctx.per_client.try_acquire(client.ip(), max_per_client) else {
        // Closed before anything is read; counted per listener.
        tracing::debug!(listener = %ctx.name, client = %client, "max_connections_per_client reached; closing");
        return;
    };
    // Decided once per connection: a request on a connection from anyone
    // else pays nothing for the listener's trusted_forwarders.
    let forwarders = forwarders.filter(|nets| nets.iter().any(|n| n.contains(client.ip())));
    let stream = ClientIo::new(stream, activity.clone());
    let conn = Arc::new(ConnInfo {
        client,
        peer,
        local,
        forwarders,
        listener: ctx.name.clone(),
        https: ctx.tls,
        framing: Verdicts::new(),
        metrics: ctx.metrics.clone(),
        protocol: Default::default(),
        last_authority: Default::default(),
        last_forwarding: Default::default(),
    });
    let service = service(
        ctx.state.clone(),
        conn.clone(),
        activity.clone(),
        draining.flag(),
    );
    let held = Held {
        _open: open,
        _permit: permit,
        _slot: slot,
        conn: conn.clone(),
    };
    // One task per connection, of a different type per kind: a plain
    // connection's task is the HTTP/1.1 loop itself, and reserves nothing
    // for TLS or HTTP/2.
    if ctx.tls {
        let state = ctx.state.clone();
        tokio::spawn(Box::pin(serve_tls(
            stream, held, state, builders, service, draining, guard,
        )));
    } else {
        // Plain TCP: HTTP/1.1 or h2c prior knowledge; the guard steps
        // aside after the HTTP/2 preface.
        tokio::spawn(serve_http1(
            stream,
            activity,
            ctx.state.clone(),
            service,
            builders,
            draining,
            held,
            guard,
            true,
        ));
    }
}

/// What a connection holds for its lifetime; dropped when it ends.
struct Held {
    _open: crate::workers::OpenConnection,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _slot: crate::client_limits::ClientSlot,
    conn: Arc<ConnInfo>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.conn.protocol.closed(&self.conn.metrics);
    }
}

/// What serves a connection's requests ([`service`]): one name for the
/// bounds hyper's HTTP/1.1 and HTTP/2 connections put on it.
trait Handler:
    HttpService<
        Incoming,
        ResBody = ProxyBody,
        Error = std::convert::Infallible,
        Future: Send + Unpin,
    > + Unpin
    + Send
    + 'static
{
}

impl<T> Handler for T where
    T: HttpService<
            Incoming,
            ResBody = ProxyBody,
            Error = std::convert::Infallible,
            Future: Send + Unpin,
        > + Unpin
        + Send
        + 'static
{
}

/// The request handler of one client connection: each request is in flight
/// (for [`Activity`]) until its response body has been sent.
fn service(
    state: State,
    conn: Arc<ConnInfo>,
    activity: Arc<Activity>,
    draining: Arc<AtomicBool>,
) -> impl Handler {
    service_fn(move |req: hyper::Request<Incoming>| {
        let sendoff = proxy::Sendoff {
            in_flight: activity.begin_request(&req),
            draining: (req.version() < http::Version::HTTP_2).then(|| draining.clone()),
        };
        // Boxed once here: hyper moves the service's future into its
        // dispatcher (HTTP/1.1) or into a task per stream (HTTP/2), and a
        // boxed request future is a pointer to move, not kilobytes to copy
        // on every request; an idle HTTP/1.1 connection also keeps only a
        // pointer-sized slot for the next one.
        Answer::first_poll(boxed(|| {
            proxy::handle(state.clone(), conn.clone(), req, sendoff)
        }))
    })
}

/// A request's answer as hyper gets it from the service: already made, or
/// the wait for it.
///
/// The service polls the request's future once before handing it over, so
/// that a cache hit is answered, and its request dropped, inside `call`.
/// hyper reads ahead on the connection right after `call`, before it polls
/// the future: while the request's head (which borrows hyper's read
/// buffer) was alive then, every request made hyper allocate a new 8 KiB
/// buffer. The first poll's waker wakes nothing ([`proxy::poll_first`]);
/// hyper polls a pending future again with its own at once, and every
/// future on the request path registers its waker anew on each poll. What
/// has to wait starts only on hyper's poll ([`proxy::first_poll_ends`]).
enum Answer<F: Future> {
    Ready(Option<F::Output>),
    Wait(std::pin::Pin<Box<F>>),
}

impl<F: Future> Answer<F> {
    fn first_poll(mut fut: std::pin::Pin<Box<F>>) -> Self {
        match proxy::poll_first(fut.as_mut()) {
            std::task::Poll::Ready(out) => Answer::Ready(Some(out)),
            std::task::Poll::Pending => Answer::Wait(fut),
        }
    }
}

impl<F: Future> Future for Answer<F>
where
    F::Output: Unpin,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        match self.get_mut() {
            Answer::Ready(out) => match out.take() {
                Some(out) => std::task::Poll::Ready(out),
                // hyper never polls a finished future; pending (never
                // woken) rather than a panic if something did.
                None => std::task::Poll::Pending,
            },
            Answer::Wait(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// `make()`'s future, built in its box. `Box::pin(make())` builds it on the
/// stack and then copies all of it into the box, kilobytes (the size of its
/// largest state) where only its arguments are set; writing it into a box
/// allocated first lets it be built in place.
fn boxed<F: Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// HTTP/2 after its prior-knowledge preface, behind one pointer: its state
/// is kilobytes, which an HTTP/1.1 connection's task should not reserve.
fn h2_boxed<S, Svc, K>(
    io: http1::Parkable<FramingGuard<S>>,
    builders: Arc<Builders>,
    service: Svc,
    draining: Draining,
    held: K,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Handler,
    K: Send + 'static,
{
    // Built here, not in the async block, which would otherwise keep room
    // for the stream it was handed beside the connection that took it.
    let conn = h2_connection(io, &builders.h2, service);
    Box::pin(async move {
        serve_h2(conn, &draining).await;
        drop(held);
    })
}

/// Terminates TLS, then serves HTTP/2 or HTTP/1.1 by ALPN.
///
/// Kept small, as it is the connection's task for as long as it lives: the
/// handshake (a TLS session and a timer) is boxed until it is done, and the
/// protocol's state is boxed at its exact size. Inline, they were reserved
/// side by side for the whole connection, beside a second copy of the
/// arguments: a 5.9 KiB task per idle HTTP/2 connection.
#[allow(clippy::manual_async_fn)]
fn serve_tls<Svc>(
    stream: ClientIo<TcpStream>,
    held: Held,
    state: State,
    builders: Arc<Builders>,
    service: Svc,
    draining: Draining,
    guard: GuardLimits,
) -> impl std::future::Future<Output = ()>
where
    Svc: Handler,
{
    // A block, not an `async fn`, which would keep its arguments twice.
    async move {
        let conn = held.conn.clone();
        let Some(config) = state.load().tls.get(&*conn.listener).cloned() else {
            tracing::error!(listener = %conn.listener, "no TLS settings for listener");
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshake = Box::pin(tokio::time::timeout(
            TLS_HANDSHAKE_TIMEOUT,
            acceptor.accept(stream),
        ));
        // The session is bound inside the match only: a binding of the
        // block's (it is borrowed) would keep its kilobyte reserved in this
        // task for the whole connection, though moved out at once.
        let next = match handshake.await {
            Ok(Ok(tls)) => {
                conn.metrics.tls_handshake(true);
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let version = if h2 {
                    http::Version::HTTP_2
                } else {
                    http::Version::HTTP_11
                };
                conn.protocol.learn(version, &conn.metrics);
                if h2 {
                    AfterTls::H2(h2_connection(tls, &builders.h2, service), draining, held)
                } else {
                    // HTTP/1.1 (or no ALPN).
                    let activity = tls.get_ref().0.activity().clone();
                    AfterTls::H1(Box::pin(serve_http1(
                        tls, activity, state, service, builders, draining, held, guard, false,
                    )))
                }
            }
            Ok(Err(e)) => {
                conn.metrics.tls_handshake(false);
                tracing::debug!(listener = %conn.listener, client = %conn.client, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                conn.metrics.tls_handshake(false);
                tracing::debug!(listener = %conn.listener, client = %conn.client, "TLS handshake timed out");
                return;
            }
        };
        match next {
            AfterTls::H2(h2, draining, held) => {
                serve_h2(h2, &draining).await;
                drop(held);
            }
            AfterTls::H1(serve) => serve.await,
        }
    }
}

/// The HTTP/1.1 loop over `stream` (plain TCP, or TLS once its handshake
/// is done): the framing guard reads what the client sends, idle spells
/// park the connection, and the hit lane sees each request head first.
/// `h2_preface`: plain TCP, where HTTP/2 may start by prior knowledge.
#[allow(clippy::too_many_arguments)]
fn serve_http1<S, Svc>(
    stream: S,
    activity: Arc<Activity>,
    state: State,
    service: Svc,
    builders: Arc<Builders>,
    draining: Draining,
    held: Held,
    guard: GuardLimits,
    h2_preface: bool,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Handler,
{
    let conn = &held.conn;
    let lane = hit_lane::HitLane::new(state, conn.clone(), activity.clone(), draining.flag());
    let io = http1::Parkable::new(
        FramingGuard::new(stream, conn.framing.clone(), guard),
        activity,
    );
    http1::serve(
        io,
        service,
        builders,
        draining,
        held,
        h2_preface,
        Some(lane),
    )
}

/// What a TLS connection serves once its handshake is done: HTTP/2 (with
/// what it holds until it ends), or HTTP/1.1 behind one pointer (its loop
/// holds the stream, the drain and the rest itself).
enum AfterTls<H2, H1> {
    H2(H2, Draining, Held),
    H1(std::pin::Pin<Box<H1>>),
}

/// hyper's HTTP/2 connection over a batched stream.
type HyperH2<I, Svc> = h2::Connection<TokioIo<batch::Batched<I>>, Svc, streams::FirstPollInline>;

/// An HTTP/2 connection: hyper's, boxed at its exact size (kilobytes: the
/// h2 crate's codec and stream store, and the stream it serves), with what
/// it writes in one poll sent together when the poll returns
/// ([`batch`]).
struct H2Connection<I, Svc>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Handler,
{
    conn: std::pin::Pin<Box<HyperH2<I, Svc>>>,
    batch: batch::Batch<I>,
}

fn h2_connection<I, Svc>(
    io: I,
    builder: &h2::Builder<streams::FirstPollInline>,
    service: Svc,
) -> H2Connection<I, Svc>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Handler,
{
    let (io, batch) = batch::batched(io);
    H2Connection {
        conn: Box::pin(builder.serve_connection(TokioIo::new(io), service)),
        batch,
    }
}

/// Why an HTTP/2 connection ended early.
#[derive(Debug, thiserror::Error)]
enum H2Ended {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("cannot write to the client: {0}")]
    Write(#[from] std::io::Error),
}

impl<I, Svc> std::future::Future for H2Connection<I, Svc>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Handler,
{
    type Output = Result<(), H2Ended>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        self.batch.begin_poll();
        // An ended connection has sent what it holds (hyper shuts the
        // stream down) or has nobody left to send it to.
        if let Poll::Ready(ended) = self.conn.as_mut().poll(cx) {
            return Poll::Ready(ended.map_err(H2Ended::from));
        }
        match self.batch.poll_send(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            // Pending: the socket wakes this task when it has room.
            Poll::Ready(Ok(())) | Poll::Pending => Poll::Pending,
        }
    }
}

/// Serves HTTP/2 until the client leaves or the server has drained it.
async fn serve_h2<I, Svc>(mut conn: H2Connection<I, Svc>, draining: &Draining)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Handler,
{
    let ended = tokio::select! {
        ended = &mut conn => ended,
        _ = draining.signalled_busy() => {
            conn.conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// Graceful stop for client connections: [`Drain::stop`] tells every
/// connection to finish what it is doing and close, and waits until all
/// have.
#[derive(Debug)]
pub(crate) struct Drain {
    /// Sends nothing: each connection holds a receiver, and the drain ends
    /// when the last one is dropped.
    tx: watch::Sender<()>,
    /// Set once the drain starts; read by the request path on every
    /// response, and by a waiting connection on every wake.
    now: Arc<AtomicBool>,
    /// Wakes the connections waiting for the drain.
    notify: Arc<Notify>,
}

impl Drain {
    pub(crate) fn new() -> Drain {
        Drain {
            tx: watch::Sender::new(()),
            now: Arc::default(),
            notify: Arc::default(),
        }
    }

    /// A connection's view of the drain; the drain waits for it to be
    /// dropped.
    fn watch(&self) -> Draining {
        Draining {
            _live: self.tx.subscribe(),
            now: self.now.clone(),
            notify: self.notify.clone(),
        }
    }

    /// Signals every connection, then waits until all have closed.
    pub(crate) async fn stop(&self) {
        // The flag first: a connection that starts waiting after the
        // notification below finds it set.
        self.now.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.tx.closed().await;
    }
}

/// A drain that goes away unstopped lets its connections go as a stop
/// would: nothing is left to tell them later.
impl Drop for Drain {
    fn drop(&mut self) {
        self.now.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// How long a drain leaves an idle HTTP/1.1 keep-alive connection open for
/// the client's next request (answered, with `Connection: close`) before
/// closing it. A client may have sent that request already: closing under
/// it would lose it, and a client cannot tell whether a request that got
/// no answer was processed.
pub(crate) const DRAIN_IDLE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Held by one connection for its lifetime.
struct Draining {
    _live: watch::Receiver<()>,
    now: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Draining {
    /// The flag the request path reads: responses on HTTP/1.x then carry
    /// `Connection: close`.
    fn flag(&self) -> Arc<AtomicBool> {
        self.now.clone()
    }

    /// Resolves once the server drains (at once if it already does). For a
    /// wait polled seldom, a parked connection's: the smallest future, a
    /// `Notify` waiter.
    async fn signalled(&self) {
        let mut notified = std::pin::pin!(self.notify.notified());
        notified.as_mut().enable();
        if !self.now.load(Ordering::SeqCst) {
            notified.await;
        }
    }

    /// [`signalled`](Self::signalled), for a wait polled beside hyper on
    /// every wake of a serving connection's task: once the wait is
    /// registered with this task's waker, a poll reads only the flag
    /// instead of taking the waiter lock (the registered waker is the one
    /// the drain wakes).
    async fn signalled_busy(&self) {
        let mut notified = std::pin::pin!(self.notify.notified());
        notified.as_mut().enable();
        let mut registered: Option<std::task::Waker> = None;
        std::future::poll_fn(|cx| {
            if self.now.load(Ordering::SeqCst) {
                return std::task::Poll::Ready(());
            }
            if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return std::task::Poll::Pending;
            }
            let polled = notified.as_mut().poll(cx);
            if polled.is_pending() {
                registered = Some(cx.waker().clone());
            }
            polled
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use super::*;

    /// Polls `fut` once with the task's own waker: whether it is pending.
    async fn pending<F: Future + Unpin>(fut: &mut F) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *fut).poll(cx).is_pending()))
            .await
    }

    /// A request answered in the service's first poll is handed to hyper
    /// made; one still waiting is polled by hyper with its own waker, and
    /// what wakes it then reaches hyper's task.
    #[tokio::test]
    async fn an_answer_is_made_in_the_first_poll_or_waits_for_hyper() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = |polls: &Arc<std::sync::atomic::AtomicUsize>| {
            let polls = polls.clone();
            std::future::poll_fn(move |_| {
                polls.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(7)
            })
        };
        let mut ready = Answer::first_poll(Box::pin(counted(&polls)));
        assert!(matches!(ready, Answer::Ready(Some(7))));
        assert_eq!(polls.load(Ordering::Relaxed), 1, "answered inside call");
        assert!(!pending(&mut ready).await);

        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut waiting = Answer::first_poll(Box::pin(async move { rx.await.unwrap_or(0) }));
        assert!(matches!(waiting, Answer::Wait(_)));
        assert!(pending(&mut waiting).await, "registers this task's waker");
        let sender = tokio::spawn(async move { tx.send(9) });
        let got = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken through the waker of hyper's poll");
        assert_eq!(got, 9);
        sender.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_wait_polled_on_every_wake_still_hears_the_drain() {
        let drain = Arc::new(Drain::new());
        let draining = drain.watch();
        let mut signalled = Box::pin(draining.signalled_busy());
        for _ in 0..3 {
            assert!(pending(&mut signalled).await, "no drain yet");
        }
        let stop = tokio::spawn({
            let drain = drain.clone();
            async move { drain.stop().await }
        });
        tokio::time::timeout(Duration::from_secs(10), signalled)
            .await
            .expect("the drain was heard");
        // Heard at once by a wait that starts after the drain, too.
        assert!(!pending(&mut Box::pin(draining.signalled())).await);
        assert!(!pending(&mut Box::pin(draining.signalled_busy())).await);
        drop(draining);
        stop.await
            .expect("the drain ended once the connection let go");
    }

    #[tokio::test]
    async fn a_wait_ends_when_the_drain_goes_away() {
        let drain = Drain::new();
        let draining = drain.watch();
        let mut signalled = Box::pin(draining.signalled());
        assert!(pending(&mut signalled).await);
        assert!(pending(&mut signalled).await);
        drop(drain);
        tokio::time::timeout(Duration::from_secs(10), signalled)
            .await
            .expect("a closed channel ends the wait");
    }
}
