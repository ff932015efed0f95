//! HTTP/1.1 connections that cost almost nothing while idle.
//!
//! hyper keeps a read buffer, a write buffer and its dispatcher for as long
//! as a connection lives, some 25 KiB, even while the client sends nothing
//! for minutes. So a connection here alternates between two states:
//!
//! - **serving**: a hyper session (`http1::Connection`) owns the socket;
//! - **parked**: once the connection has been idle for
//!   [`PARK_AFTER`](super::PARK_AFTER) between requests, the session is
//!   shut down gracefully without closing the socket, everything hyper
//!   allocated is freed, and the task waits for the next byte with no
//!   buffer. That byte (and whatever came with it) starts a new session.
//!
//! A session is parked only when hyper is known to keep the connection
//! alive (HTTP/1.1, no `Connection: close` or upgrade either way, see
//! [`Activity`]); one that read a request body is picked up again only when
//! the framing guard confirms the stream is at a message boundary, so a
//! body hyper left unread is never taken for a request.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::hit_lane::{self, HitLane};
use super::{h2_boxed, Builders, Draining, Handler, DRAIN_IDLE_GRACE, H2_PREFACE};
use crate::client_limits::Activity;
use crate::framing::FramingGuard;

/// The most read at once while parked: a typical request head, read on
/// the stack and kept (exactly sized) for hyper.
const PARKED_READ: usize = 4096;

/// A client stream with bytes already read in front of it, which also
/// knows when its hyper session is winding down to park (and must then not
/// shut the socket down).
pub(super) struct Parkable<S> {
    inner: S,
    prefix: Bytes,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> Parkable<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Parkable<S> {
        Parkable {
            inner,
            prefix: Bytes::new(),
            activity,
        }
    }

    /// Waits for the client's next bytes without holding a buffer, and
    /// keeps them in front of the stream. `false` at end of stream
    /// (including `keepalive_timeout`).
    pub(super) async fn read_ahead(&mut self) -> io::Result<bool> {
        poll_fn(|cx| {
            // Not zeroed: 4 KiB of memset per read would cost more than
            // everything else a hit in the lane does.
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); PARKED_READ];
            let mut read = ReadBuf::uninit(&mut buf);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(false));
            }
            let mut prefix = Vec::with_capacity(self.prefix.len() + read.filled().len());
            prefix.extend_from_slice(&self.prefix);
            prefix.extend_from_slice(read.filled());
            self.prefix = Bytes::from(prefix);
            Poll::Ready(Ok(true))
        })
        .await
    }
}

impl<S: AsyncWrite + Unpin> Parkable<S> {
    fn shutdown_unless_parking(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.parking() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Parkable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if crate::io::read_prefix(&mut this.prefix, buf) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

crate::io::forward_async_write!(Parkable, shutdown = shutdown_unless_parking);

/// One hyper session, which asks to be parked once its connection has
/// been idle long enough.
struct Session<C> {
    conn: Box<C>,
    activity: Arc<Activity>,
}

type Connection<S, Svc> = http1::UpgradeableConnection<TokioIo<Parkable<FramingGuard<S>>>, Svc>;

impl<S, Svc> Future for Session<Connection<S, Svc>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Handler,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let polled = Pin::new(&mut *this.conn).poll(cx);
            // Checked after hyper's poll: the park deadline fires inside
            // its read (see `ClientIo`), and a request it has just read has
            // already made the connection busy.
            if polled.is_pending() && this.activity.take_park() {
                // Idle: hyper closes the session at once, socket open.
                Pin::new(&mut *this.conn).graceful_shutdown();
                continue;
            }
            return polled;
        }
    }
}

/// Serves HTTP/1.1 on `io` until the client leaves, the connection breaks
/// or the server drains, parking the connection while it is idle, then
/// drops `held`. With `h2_preface`, a connection that opens with HTTP/2's
/// prior-knowledge preface is served as HTTP/2 instead.
///
/// A plain connection's task is this future, and a parked connection
/// holds nothing else, so it is kept small: what a session needs lives in
/// a box for the session's lifetime only, HTTP/2 in another.
///
/// Not an `async fn`: one keeps a copy of every argument beside the copy its
/// body works on, for the connection's lifetime; a block captures them
/// once.
#[allow(clippy::manual_async_fn, clippy::too_many_arguments)]
pub(super) fn serve<S, Svc, K>(
    mut io: Parkable<FramingGuard<S>>,
    mut service: Svc,
    builders: Arc<Builders>,
    draining: Draining,
    held: K,
    mut h2_preface: bool,
    lane: Option<HitLane>,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Handler,
    K: Send + 'static,
{
    async move {
        loop {
            if io.prefix.is_empty() || h2_preface {
                // A drain waiter per wait: one kept for the connection's
                // lifetime saved about 570 instructions per hit in the hit
                // lane, and cost every idle connection 0.12 KiB.
                tokio::select! {
                    biased;
                    _ = draining.signalled() => {
                        // Parked and the server drains: the client may have
                        // sent its next request already. Serve it if it comes
                        // soon (its response closes the connection).
                        // Boxed: rare, and inline its timer would be part of
                        // every parked connection.
                        let next = Box::pin(tokio::time::timeout(DRAIN_IDLE_GRACE, io.read_ahead()));
                        match next.await {
                            Ok(Ok(true)) => {}
                            _ => break,
                        }
                    }
                    read = io.read_ahead() => match read {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "client connection ended with an error");
                            return;
                        }
                    },
                }
            }
            if h2_preface {
                let n = io.prefix.len().min(H2_PREFACE.len());
                if io.prefix[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return h2_boxed(io, builders, service, draining, held).await;
                    }
                    continue;
                }
                h2_preface = false;
            }
            if let Some(answered) = lane.as_ref().and_then(|l| l.answer(&mut io.prefix)) {
                // Boxed: its state would otherwise be part of every
                // connection's task, idle ones too.
                if let Err(e) = Box::pin(hit_lane::write(&mut io.inner, answered)).await {
                    tracing::debug!(error = %e, "client connection ended with an error");
                    return;
                }
                continue;
            }
            match Box::pin(session(io, service, &builders.h1, &draining)).await {
                Some((parked, svc)) => (io, service) = (parked, svc),
                None => return,
            }
        }
        // Parked when the client left, the idle timeout passed or the server
        // drains: say goodbye properly (TLS close_notify, FIN).
        let _ = io.shutdown().await;
    }
}

/// One hyper session: until the connection is parked (the stream and the
/// service come back) or ends.
async fn session<S, Svc>(
    io: Parkable<FramingGuard<S>>,
    service: Svc,
    builder: &http1::Builder,
    draining: &Draining,
) -> Option<(Parkable<FramingGuard<S>>, Svc)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Handler,
{
    let activity = io.activity.clone();
    let mut session = Session {
        conn: Box::new(
            builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        ),
        activity: activity.clone(),
    };
    let ended = tokio::select! {
        ended = &mut session => ended,
        _ = draining.signalled_busy() => {
            // Idle between requests, the client's next one may be on its
            // way: wait a moment for it (every response now says
            // `Connection: close`, so hyper closes after it). Then hyper
            // closes an idle session at once, and a request in flight
            // finishes with `Connection: close`.
            let mut ended = None;
            if activity.in_flight() == 0 {
                let grace = tokio::time::sleep(DRAIN_IDLE_GRACE);
                tokio::select! {
                    e = &mut session => ended = Some(e),
                    () = grace => {}
                }
            }
            match ended {
                Some(e) => e,
                None => {
                    Pin::new(&mut *session.conn).graceful_shutdown();
                    (&mut session).await
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "client connection ended with an error");
        return None;
    }
    if !activity.parking() {
        // hyper ended the connection itself (and shut the socket down),
        // or handed it to an upgrade. After a 414 for a target the guard
        // cut short, the client may still be sending it.
        if let Some(parts) = session.conn.into_parts() {
            let mut io = parts.io.into_inner();
            if io.inner.was_cut() {
                io.inner.linger().await;
            }
        }
        return None;
    }
    let parts = session.conn.into_parts()?;
    let mut io = parts.io.into_inner();
    let had_body = activity.session_had_body();
    activity.parked();
    let at_boundary = io.inner.at_boundary();
    if had_body && !(parts.read_buf.is_empty() && at_boundary) {
        // hyper may have left part of a body unread: what follows is not
        // a request. Close as hyper would have.
        let _ = io.shutdown().await;
        return None;
    }
    // hyper's leftover is a view into its whole read buffer: keep a copy
    // of just the bytes (usually none), not the buffer.
    io.prefix = Bytes::copy_from_slice(&parts.read_buf);
    tracing::trace!("idle connection parked");
    Some((io, parts.service))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;
    use crate::client_limits::ClientIo;
    use crate::framing::{GuardLimits, Verdicts};
    use crate::listener::Drain;

    const HOUR: Duration = Duration::from_secs(3600);
    const PARK: Duration = Duration::from_millis(5);

    /// One served connection over an in-memory pipe: the client's end, the
    /// connection's activity, the paths the service saw, the drain and the
    /// server loop's task.
    struct Served {
        client: DuplexStream,
        activity: Arc<Activity>,
        paths: Arc<Mutex<Vec<String>>>,
        drain: Arc<Drain>,
        task: tokio::task::JoinHandle<()>,
    }

    /// Serves with a handler that answers `ok` and, when `read_bodies`,
    /// reads each request body first.
    fn serve_pipe(read_bodies: bool) -> Served {
        let (client, server) = tokio::io::duplex(1 << 16);
        let activity = Activity::new(HOUR, HOUR, Some(PARK));
        let limits = GuardLimits {
            max_head_bytes: 16 << 10,
            max_headers: 100,
            max_target_bytes: 8 << 10,
        };
        let guard = FramingGuard::new(
            ClientIo::new(server, activity.clone()),
            Verdicts::new(),
            limits,
        );
        let io = Parkable::new(guard, activity.clone());
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (seen, act) = (paths.clone(), activity.clone());
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let in_flight = act.begin_request(&req);
            seen.lock().unwrap().push(req.uri().path().to_string());
            Box::pin(async move {
                if read_bodies {
                    let _ = req.into_body().collect().await;
                }
                let resp = http::Response::new(crate::body::full("ok"));
                Ok::<_, std::convert::Infallible>(in_flight.attach(resp))
            })
        });
        let drain = Arc::new(Drain::new());
        let builders = Arc::new(super::super::http_builders(&Default::default()));
        let task = tokio::spawn(serve(io, service, builders, drain.watch(), (), false, None));
        Served {
            client,
            activity,
            paths,
            drain,
            task,
        }
    }

    /// Reads one response with a 2-byte body ("ok"); `None` at end of stream.
    async fn response(client: &mut DuplexStream) -> Option<String> {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut byte))
                .await
                .expect("a response or the end of the stream")
                .expect("read");
            if n == 0 {
                return None;
            }
            got.push(byte[0]);
            if got.ends_with(b"\r\n\r\nok") {
                return Some(String::from_utf8_lossy(&got).into_owned());
            }
        }
    }

    /// Waits until the connection has been parked `n` times.
    async fn parked(activity: &Activity, n: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while activity.parks() < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the connection was parked");
    }

    const GET: &[u8] = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n";

    #[tokio::test]
    async fn an_idle_connection_is_parked_and_picked_up_again() {
        let mut s = serve_pipe(true);
        for round in 1..=3 {
            s.client.write_all(GET).await.unwrap();
            let resp = response(&mut s.client).await.expect("answered");
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
            assert!(
                !resp.to_ascii_lowercase().contains("connection: close"),
                "{resp}"
            );
            parked(&s.activity, round).await;
        }
        // A head split around a park: its first bytes start the session.
        s.client.write_all(&GET[..5]).await.unwrap();
        s.client.flush().await.unwrap();
        tokio::task::yield_now().await;
        s.client.write_all(&GET[5..]).await.unwrap();
        assert!(response(&mut s.client).await.is_some());
        assert_eq!(s.paths.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn pipelined_requests_survive_parking() {
        let mut s = serve_pipe(true);
        let mut two = GET.to_vec();
        two.extend_from_slice(b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n");
        s.client.write_all(&two).await.unwrap();
        assert!(response(&mut s.client).await.is_some());
        assert!(response(&mut s.client).await.is_some());
        parked(&s.activity, 1).await;
        s.client.write_all(GET).await.unwrap();
        assert!(response(&mut s.client).await.is_some());
        assert_eq!(*s.paths.lock().unwrap(), ["/a", "/b", "/a"]);
    }

    #[tokio::test]
    async fn connection_close_is_honoured_not_parked() {
        let mut s = serve_pipe(true);
        s.client
            .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(response(&mut s.client).await.is_some());
        assert!(
            response(&mut s.client).await.is_none(),
            "closed after the response"
        );
        s.task.await.unwrap();
        assert_eq!(s.activity.parks(), 0);
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_still_allows_parking() {
        let mut s = serve_pipe(true);
        s.client
            .write_all(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        assert!(response(&mut s.client).await.is_some());
        parked(&s.activity, 1).await;
        s.client.write_all(GET).await.unwrap();
        assert!(response(&mut s.client).await.is_some());
        assert_eq!(*s.paths.lock().unwrap(), ["/p", "/a"]);
    }

    #[tokio::test]
    async fn an_unread_body_is_never_taken_for_a_request() {
        let mut s = serve_pipe(false);
        // The body looks like a request; the handler never reads it.
        let smuggled = b"GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
        let head = format!(
            "POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            smuggled.len() + 10
        );
        s.client.write_all(head.as_bytes()).await.unwrap();
        s.client.write_all(smuggled).await.unwrap();
        assert!(response(&mut s.client).await.is_some());
        // The rest of the body arrives after the answer (unless the
        // connection is closed already).
        let _ = s.client.write_all(b"0123456789").await;
        let _ = s.client.write_all(GET).await;
        // Either the connection closes or the next real request is served;
        // the body's contents never are.
        let _ = response(&mut s.client).await;
        drop(s.client);
        s.task.await.unwrap();
        let paths = s.paths.lock().unwrap().clone();
        assert!(!paths.iter().any(|p| p == "/smuggled"), "{paths:?}");
        assert_eq!(paths[0], "/p");
    }

    #[tokio::test]
    async fn a_drain_closes_a_parked_connection() {
        let mut s = serve_pipe(true);
        s.client.write_all(GET).await.unwrap();
        assert!(response(&mut s.client).await.is_some());
        parked(&s.activity, 1).await;
        tokio::time::timeout(Duration::from_secs(10), s.drain.stop())
            .await
            .expect("drained");
        assert!(response(&mut s.client).await.is_none());
    }
}
