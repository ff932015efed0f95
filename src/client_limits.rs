//! Per-connection client limits that hyper does not provide in the form the
//! config promises:
//!
//! - [`PerClient`]: `max_connections_per_client`, open connections per
//!   client IP on one listener. Entries exist only while a client has a
//!   connection open, so memory follows the number of open connections,
//!   never the number of clients ever seen.
//! - [`Activity`] and [`ClientIo`]: `header_read_timeout` and
//!   `keepalive_timeout`. hyper's own header timer also runs while an
//!   HTTP/1.1 connection waits for its next request, which would make the
//!   idle limit the smaller of the two keys; instead the connection's socket
//!   is wrapped and one deadline is kept, chosen by what the connection is
//!   doing:
//!   - before its first request: accept time + `header_read_timeout`;
//!   - a request in flight (head received, response not yet fully sent):
//!     none (body and upstream limits apply instead);
//!   - HTTP/1.1, idle, and the first byte of the next head has arrived:
//!     that byte's arrival + `header_read_timeout`;
//!   - otherwise idle: end of the last response + `keepalive_timeout`.
//!
//!   At the deadline the socket reads as closed (an error while a head was
//!   being received), so hyper ends the connection.
//!
//!   [`Activity`] also tells the HTTP/1.1 server loop
//!   ([`crate::listener`]) when a connection has been idle long enough to
//!   be parked, and whether its hyper session may be picked up again.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::body::{End, ProxyBody, Watch};
use http_body::Body as _;

// ------------------------------------------------------------ per client --

/// Open connections per client IP, for one listener.
#[derive(Debug, Default)]
pub(crate) struct PerClient {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    pub(crate) fn new() -> Arc<PerClient> {
        Arc::new(PerClient::default())
    }

    /// Takes one of `ip`'s `max` slots (`max` 0 = unlimited, not tracked);
    /// `None` when all are taken.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        if max == 0 {
            return Some(ClientSlot { owner: None });
        }
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: Some((self.clone(), ip)),
        })
    }

    /// Clients with at least one tracked connection open.
    #[cfg(test)]
    pub(crate) fn clients(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One connection's slot; released on drop.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    owner: Option<(Arc<PerClient>, IpAddr)>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some((owner, ip)) = self.owner.take() {
            let mut open = owner.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

// -------------------------------------------------------------- activity --

/// Why a connection was closed by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request head did not arrive in `header_read_timeout`.
    Head,
    /// No request for `keepalive_timeout`.
    Idle,
    /// Idle long enough to be parked (not an expiry: nothing is closed).
    Park,
}

/// What one client connection is doing, shared between its socket wrapper
/// ([`ClientIo`]) and its request handlers ([`Activity::begin`]).
#[derive(Debug)]
pub(crate) struct Activity {
    header_read_timeout: Duration,
    keepalive_timeout: Duration,
    /// HTTP/1.1: idle this long, the connection is parked; `None` never.
    park_after: Option<Duration>,
    /// The shorter of `keepalive_timeout` and `park_after`: no idle
    /// deadline comes sooner after the end of a response.
    least_idle: Duration,
    /// `State::park_due`, readable without the lock: the server loop asks
    /// after every poll of hyper, and the answer is almost always no.
    park_hint: AtomicBool,
    state: Mutex<State>,
}

/// One hyper HTTP/1.1 session: the requests served since the connection
/// was last parked.
#[derive(Debug, Default, Clone, Copy)]
struct Session {
    requests: u32,
    /// A request or response asked for the connection to close (or hyper
    /// might have decided so): the session is never parked.
    closing: bool,
    /// A request had a body, which hyper may not have read to its end.
    body: bool,
}

#[derive(Debug)]
struct State {
    /// Requests whose response has not been sent completely.
    in_flight: usize,
    /// Requests received so far.
    requests: u64,
    /// HTTP/1.1: what the current hyper session has served.
    session: Session,
    /// The park delay has passed on an idle HTTP/1.1 connection.
    park_due: bool,
    /// Times the connection was parked.
    parks: u64,
    /// The hyper session is winding down to park the connection: the
    /// socket must not be shut down.
    parking: bool,
    /// Accept time, then the end of the latest response.
    idle_since: Instant,
    /// HTTP/1.1 only: when the first byte after `idle_since` arrived.
    head_since: Option<Instant>,
    h2: bool,
    /// After a protocol switch the socket belongs to the tunnel.
    upgraded: bool,
    /// The task reading the socket, woken when the deadline moves earlier.
    reader: Option<Waker>,
    /// The reader's own timer will wake `reader` by this time: the end of
    /// a request need not wake it when its new deadline is no earlier
    /// (the timer going off early only makes the reader re-arm it).
    reader_timer: Option<Instant>,
}

impl Activity {
    pub(crate) fn new(
        header_read_timeout: Duration,
        keepalive_timeout: Duration,
        park_after: Option<Duration>,
    ) -> Arc<Activity> {
        Arc::new(Activity {
            header_read_timeout,
            keepalive_timeout,
            park_after,
            least_idle: park_after.map_or(keepalive_timeout, |p| p.min(keepalive_timeout)),
            park_hint: AtomicBool::new(false),
            state: Mutex::new(State {
                in_flight: 0,
                requests: 0,
                session: Session::default(),
                park_due: false,
                parks: 0,
                parking: false,
                idle_since: Instant::now(),
                head_since: None,
                h2: false,
                upgraded: false,
                reader: None,
                reader_timer: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request head arrived; the connection is busy until the returned
    /// guard is dropped (see [`InFlight::attach`]).
    #[cfg(test)]
    pub(crate) fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        self.enter(version, true, false)
    }

    /// [`Activity::begin`] for `req`, noting whether its connection could
    /// carry another request after it.
    pub(crate) fn begin_request<B: http_body::Body>(
        self: &Arc<Self>,
        req: &Request<B>,
    ) -> InFlight {
        let keeps_alive = crate::headers::keeps_alive(req.version(), req.headers());
        self.enter(req.version(), keeps_alive, !req.body().is_end_stream())
    }

    /// A request answered while no hyper session runs (the listener's hit
    /// lane: HTTP/1.1, no body, kept alive): in flight like any other, but
    /// not part of a session, so that the connection stays parked.
    pub(crate) fn begin_unparked(self: &Arc<Self>) -> InFlight {
        let mut s = self.lock();
        s.in_flight += 1;
        s.requests += 1;
        s.head_since = None;
        InFlight {
            activity: Some(self.clone()),
        }
    }

    fn enter(self: &Arc<Self>, version: Version, keeps_alive: bool, body: bool) -> InFlight {
        let mut s = self.lock();
        s.in_flight += 1;
        s.requests += 1;
        s.head_since = None;
        s.h2 = version == Version::HTTP_2;
        s.session.requests = s.session.requests.saturating_add(1);
        s.session.closing |= !keeps_alive;
        s.session.body |= body;
        InFlight {
            activity: Some(self.clone()),
        }
    }

    /// A response said `Connection` (`close`, most likely): this session
    /// ends the way hyper decides.
    fn closing(&self) {
        self.lock().session.closing = true;
    }

    /// Whether the connection should be parked now; if so, it is from here
    /// on marked as parking (see [`Activity::parking`]).
    pub(crate) fn take_park(&self) -> bool {
        if !self.park_hint.load(Ordering::Relaxed) {
            return false;
        }
        let mut s = self.lock();
        if !s.park_due || !s.parkable() {
            return false;
        }
        s.park_due = false;
        self.park_hint.store(false, Ordering::Relaxed);
        s.parking = true;
        true
    }

    /// Requests whose response has not been sent completely.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// The hyper session is ending to park the connection.
    pub(crate) fn parking(&self) -> bool {
        self.lock().parking
    }

    /// The parked hyper session is gone; the socket is the server loop's
    /// until the next session.
    pub(crate) fn parked(&self) {
        let mut s = self.lock();
        s.session = Session::default();
        s.park_due = false;
        self.park_hint.store(false, Ordering::Relaxed);
        s.parking = false;
        s.parks += 1;
    }

    /// Times the connection was parked so far.
    #[cfg(test)]
    pub(crate) fn parks(&self) -> u64 {
        self.lock().parks
    }

    /// Whether a request of the current session had a body.
    pub(crate) fn session_had_body(&self) -> bool {
        self.lock().session.body
    }

    fn end(&self) {
        let waker = {
            let mut s = self.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight > 0 {
                return;
            }
            s.idle_since = Instant::now();
            s.head_since = None;
            // The reader may be parked with no deadline; let it arm one,
            // unless its timer wakes it by the new deadline anyway. Waking
            // the connection's task from within its own poll (where an
            // HTTP/1.1 response usually ends) costs it a second poll.
            // Idle now, the deadline is at least `idle_since` plus the
            // shorter of the idle delays: that bound is checked first.
            let in_time = |by: Instant| {
                by <= s.idle_since + self.least_idle
                    || self
                        .next_deadline(&s)
                        .is_some_and(|(deadline, _)| by <= deadline)
            };
            if !s.upgraded && s.reader_timer.is_some_and(in_time) {
                None
            } else {
                s.reader_timer = None;
                s.reader.take()
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn upgraded(&self) {
        self.lock().upgraded = true;
    }

    fn bytes_arrived(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 && s.requests > 0 && !s.h2 && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
        }
    }

    fn park_due(&self) {
        let mut s = self.lock();
        s.park_due = true;
        self.park_hint.store(true, Ordering::Relaxed);
    }

    /// The current deadline, remembering `waker` as the reader to wake.
    #[cfg(test)]
    fn deadline(&self, waker: &Waker) -> Option<(Instant, Expiry)> {
        let mut s = self.lock();
        s.note_reader(waker);
        self.next_deadline(&s)
    }

    /// The deadline in state `s`: see the module's documentation.
    fn next_deadline(&self, s: &State) -> Option<(Instant, Expiry)> {
        if s.upgraded || s.in_flight > 0 {
            None
        } else if s.requests == 0 {
            Some((s.idle_since + self.header_read_timeout, Expiry::Head))
        } else if let Some(t) = s.head_since {
            Some((t + self.header_read_timeout, Expiry::Head))
        } else {
            let idle = s.idle_since + self.keepalive_timeout;
            match self.park_after {
                Some(after) if !s.park_due && s.parkable() && s.idle_since + after < idle => {
                    Some((s.idle_since + after, Expiry::Park))
                }
                _ => Some((idle, Expiry::Idle)),
            }
        }
    }
}

impl State {
    /// Remembers `waker` as the reader to wake. A new one forgets the
    /// reader's timer, which holds the former waker until polled again.
    fn note_reader(&mut self, waker: &Waker) {
        if !self.reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.reader = Some(waker.clone());
            self.reader_timer = None;
        }
    }

    /// An HTTP/1.1 connection between requests whose hyper session is
    /// known to keep it alive.
    fn parkable(&self) -> bool {
        !self.h2
            && !self.upgraded
            && !self.parking
            && self.in_flight == 0
            && self.head_since.is_none()
            && self.session.requests > 0
            && !self.session.closing
    }
}

/// Marks one request as in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    activity: Option<Arc<Activity>>,
}

impl InFlight {
    /// Keeps the request in flight until `resp`'s body has been sent (or
    /// dropped), in a body wrapper of its own: for the listener's tests,
    /// which serve without the proxy. The proxy keeps it in the wrapper
    /// that records the request ([`InFlight::sent`]).
    #[cfg(test)]
    pub(crate) fn attach(self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        use http_body_util::BodyExt;
        match self.sent(&resp) {
            Some(in_flight) => {
                resp.map(|inner| crate::body::Watched::new(inner, in_flight).boxed())
            }
            None => resp,
        }
    }

    /// The response head is out: what stays in flight while its body is
    /// sent, to be dropped when the body ends. `None` when the request
    /// ends here: nothing left to send (a 304, a HEAD, an empty body), or
    /// a protocol switch, which hands the connection to the tunnel that
    /// these timers no longer govern.
    pub(crate) fn sent(self, resp: &Response<ProxyBody>) -> Option<InFlight> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(a) = &self.activity {
                a.upgraded();
            }
            return None;
        }
        if crate::headers::contains(resp.headers(), &http::header::CONNECTION) {
            if let Some(a) = &self.activity {
                a.closing();
            }
        }
        (!resp.body().is_end_stream()).then_some(self)
    }

    fn release(&mut self) {
        if let Some(a) = self.activity.take() {
            a.end();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.release();
    }
}

/// The guard ends with the response body: dropping it is the release.
impl Watch for InFlight {
    fn end(self, _: End) {}
}

// -------------------------------------------------------------------- io --

/// A client socket that reads as closed once its [`Activity`] deadline
/// passes without a byte arriving.
pub(crate) struct ClientIo<S> {
    inner: S,
    activity: Arc<Activity>,
    timer: Timer,
}

impl<S> ClientIo<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        ClientIo {
            inner,
            activity,
            timer: None,
        }
    }

    /// The activity this socket reports to.
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

/// A [`ClientIo`]'s timer: when it is set to go off, and the sleep.
type Timer = Option<(Instant, Pin<Box<Sleep>>)>;

/// Whether `deadline` has passed; otherwise arms `timer` to wake `cx` by
/// then.
///
/// A timer armed for an earlier moment is left as it is: the deadline
/// moves later with every request (the idle clock restarts), and moving a
/// timer costs more than the early wake-up, which finds the deadline not
/// yet due and moves the timer then, once.
fn expired(timer: &mut Timer, deadline: Instant, cx: &mut Context<'_>) -> bool {
    if Instant::now() >= deadline {
        return true;
    }
    let (at, sleep) =
        timer.get_or_insert_with(|| (deadline, Box::pin(tokio::time::sleep_until(deadline))));
    if *at > deadline {
        sleep.as_mut().reset(deadline);
        *at = deadline;
    }
    if sleep.as_mut().poll(cx).is_ready() {
        // An early timer went off: on to the deadline itself.
        sleep.as_mut().reset(deadline);
        *at = deadline;
        return sleep.as_mut().poll(cx).is_ready();
    }
    false
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => loop {
                let mut s = this.activity.lock();
                s.note_reader(cx.waker());
                let Some((deadline, why)) = this.activity.next_deadline(&s) else {
                    // No deadline while a request is in flight; the timer
                    // may have gone off meanwhile, taking the waker.
                    if this.timer.as_ref().is_none_or(|(_, t)| t.is_elapsed()) {
                        s.reader_timer = None;
                    }
                    return Poll::Pending;
                };
                if !expired(&mut this.timer, deadline, cx) {
                    // Out of budget, tokio's timer may have returned
                    // without taking the waker; with budget left after a
                    // pending poll (which gives its unit back), it took it.
                    let registered = tokio::task::coop::has_budget_remaining();
                    s.reader_timer = this
                        .timer
                        .as_ref()
                        .map(|(at, _)| *at)
                        .filter(|_| registered);
                    return Poll::Pending;
                }
                drop(s);
                return match why {
                    Expiry::Park => {
                        // The server loop sees this once hyper's poll
                        // returns; the timer moves on to the idle deadline.
                        this.activity.park_due();
                        continue;
                    }
                    Expiry::Idle => {
                        tracing::debug!("keepalive_timeout: closing idle client connection");
                        // End of stream: hyper closes an idle connection quietly.
                        Poll::Ready(Ok(()))
                    }
                    Expiry::Head => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "header_read_timeout: request head not received in time",
                    ))),
                };
            },
        }
    }
}

crate::io::forward_async_write!(ClientIo);

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::AsyncReadExt;

    #[test]
    fn per_client_slots_are_capped_and_forgotten_at_zero() {
        let map = PerClient::new();
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let s1 = map.try_acquire(a, 2).expect("first");
        let s2 = map.try_acquire(a, 2).expect("second");
        assert!(map.try_acquire(a, 2).is_none(), "third over the cap");
        let other = map.try_acquire(b, 2).expect("another client");
        assert_eq!(map.clients(), 2);
        drop(s1);
        let s3 = map.try_acquire(a, 2).expect("a slot came free");
        drop((s2, s3, other));
        assert_eq!(map.clients(), 0, "no entry outlives its connections");
        // Unlimited: nothing is tracked.
        let free: Vec<_> = (0..1000).map(|_| map.try_acquire(a, 0).unwrap()).collect();
        assert_eq!(map.clients(), 0);
        drop(free);
        // An IPv4-mapped IPv6 address is the same client.
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let _x = map.try_acquire(a, 1).unwrap();
        assert!(map.try_acquire(mapped, 1).is_none());
    }

    const HOUR: Duration = Duration::from_secs(3600);
    const SHORT: Duration = Duration::from_millis(50);

    /// Reads once, failing the test instead of hanging.
    async fn read_once(io: &mut ClientIo<tokio::io::DuplexStream>) -> io::Result<usize> {
        let mut buf = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(20), io.read(&mut buf))
            .await
            .expect("the deadline fired")
    }

    fn noop_waker() -> Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Waker::from(Arc::new(Noop))
    }

    #[tokio::test]
    async fn idle_connection_reads_eof_after_keepalive_timeout() {
        let activity = Activity::new(HOUR, SHORT, None);
        let (_client, server) = tokio::io::duplex(64);
        let mut io = ClientIo::new(server, activity.clone());
        drop(activity.begin(Version::HTTP_11));
        assert_eq!(read_once(&mut io).await.expect("a clean end"), 0);
    }

    #[tokio::test]
    async fn first_head_and_later_heads_get_header_read_timeout() {
        use tokio::io::AsyncWriteExt;
        let activity = Activity::new(SHORT, HOUR, None);
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = ClientIo::new(server, activity.clone());
        let e = read_once(&mut io).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        // A request in flight has no deadline.
        let guard = activity.begin(Version::HTTP_11);
        assert!(activity.deadline(&noop_waker()).is_none());
        drop(guard);
        assert_eq!(activity.deadline(&noop_waker()).unwrap().1, Expiry::Idle);
        // The first byte of the next head starts the header timer.
        client.write_all(b"G").await.unwrap();
        assert_eq!(read_once(&mut io).await.unwrap(), 1);
        assert_eq!(activity.deadline(&noop_waker()).unwrap().1, Expiry::Head);
        let e = read_once(&mut io).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn http2_bytes_while_idle_do_not_start_the_header_timer() {
        use tokio::io::AsyncWriteExt;
        let activity = Activity::new(HOUR, SHORT, None);
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = ClientIo::new(server, activity.clone());
        drop(activity.begin(Version::HTTP_2));
        client.write_all(b"ping").await.unwrap();
        assert_eq!(read_once(&mut io).await.unwrap(), 4);
        assert_eq!(
            read_once(&mut io)
                .await
                .expect("idle end, not a head timeout"),
            0
        );
    }

    /// A waker that counts its wake-ups and signals each.
    #[derive(Default)]
    struct Counting {
        wakes: std::sync::atomic::AtomicUsize,
        woken: tokio::sync::Notify,
    }

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            self.woken.notify_one();
        }
    }

    impl Counting {
        fn wakes(&self) -> usize {
            self.wakes.load(Ordering::SeqCst)
        }
    }

    /// Polls one read of `io` with `waker`; true when it is pending.
    fn pending_read(io: &mut ClientIo<tokio::io::DuplexStream>, waker: &Waker) -> bool {
        let mut bytes = [0u8; 8];
        let mut buf = ReadBuf::new(&mut bytes);
        let mut cx = Context::from_waker(waker);
        Pin::new(io).poll_read(&mut cx, &mut buf).is_pending()
    }

    #[tokio::test]
    async fn a_reader_whose_timer_goes_off_in_time_is_not_woken_when_a_request_ends() {
        let (_client, server) = tokio::io::duplex(64);
        let counting = Arc::new(Counting::default());
        let waker = Waker::from(counting.clone());
        // The first head's deadline (an hour) comes before the idle one
        // (two hours): the timer armed for it wakes the reader in time.
        let activity = Activity::new(HOUR, 2 * HOUR, None);
        let mut io = ClientIo::new(server, activity.clone());
        assert!(pending_read(&mut io, &waker));
        let guard = activity.begin(Version::HTTP_11);
        assert!(pending_read(&mut io, &waker));
        drop(guard);
        assert_eq!(counting.wakes(), 0);
        assert_eq!(activity.deadline(&waker).unwrap().1, Expiry::Idle);

        // An idle deadline before the timer: the reader is woken to move it.
        let activity = Activity::new(HOUR, SHORT, None);
        let (_client, server) = tokio::io::duplex(64);
        let mut io = ClientIo::new(server, activity.clone());
        assert!(pending_read(&mut io, &waker));
        drop(activity.begin(Version::HTTP_11));
        assert_eq!(counting.wakes(), 1);

        // So is a park delay before the timer.
        let activity = Activity::new(HOUR, 2 * HOUR, Some(SHORT));
        let (_client, server) = tokio::io::duplex(64);
        let mut io = ClientIo::new(server, activity.clone());
        assert!(pending_read(&mut io, &waker));
        drop(activity.begin(Version::HTTP_11));
        assert_eq!(counting.wakes(), 2);
        assert_eq!(activity.deadline(&waker).unwrap().1, Expiry::Park);
    }

    #[tokio::test]
    async fn a_reader_whose_timer_went_off_during_a_request_is_woken_when_it_ends() {
        let (_client, server) = tokio::io::duplex(64);
        let counting = Arc::new(Counting::default());
        let waker = Waker::from(counting.clone());
        let activity = Activity::new(Duration::from_millis(1), HOUR, None);
        let mut io = ClientIo::new(server, activity.clone());
        assert!(pending_read(&mut io, &waker));
        let guard = activity.begin(Version::HTTP_11);
        // The head's timer goes off while the request is in flight...
        counting.woken.notified().await;
        assert_eq!(counting.wakes(), 1);
        // ... and the reader, polled then, has no deadline to arm.
        assert!(pending_read(&mut io, &waker));
        drop(guard);
        assert_eq!(counting.wakes(), 2, "woken to arm the idle deadline");
    }

    #[tokio::test]
    async fn ending_a_request_wakes_a_parked_reader() {
        let activity = Activity::new(HOUR, SHORT, None);
        let (_client, server) = tokio::io::duplex(64);
        let mut io = ClientIo::new(server, activity.clone());
        let guard = activity.begin(Version::HTTP_2);
        let reader = tokio::spawn(async move { read_once(&mut io).await });
        // Let the reader park with no deadline, then end the request.
        while activity.lock().reader.is_none() {
            tokio::task::yield_now().await;
        }
        drop(guard);
        assert_eq!(reader.await.unwrap().unwrap(), 0);
    }
}
