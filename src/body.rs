//! Body types that stream through the proxy without being held whole:
//! the boxed body both sides speak, the upload wrapper that enforces
//! `max_body_bytes` and reports when the request has been sent in full, and
//! [`Watched`], which streams a body unchanged and tells a [`Watch`] what
//! went by and how it ended (the seam for in-flight guards, request
//! recording and cache fills).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::oneshot;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type used for every request and response the proxy produces.
pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub(crate) fn full(data: impl Into<Bytes>) -> ProxyBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A client's request body kept aside for the attempts of one request.
/// An attempt takes it out on its first read, so after an attempt that
/// failed before reading it (the member refused the connection) it is
/// still here, untouched, for the next member.
pub(crate) struct Reclaimable<B> {
    slot: Arc<Mutex<Option<B>>>,
    taken: Option<B>,
    /// The body's size hint, so the upstream request is framed (length or
    /// chunked) before the body is taken; read from the slot when made.
    hint: SizeHint,
}

/// The body of one request, shared by its attempts.
pub(crate) type BodySlot<B> = Arc<Mutex<Option<B>>>;

impl<B: Body> Reclaimable<B> {
    pub(crate) fn slot(body: B) -> BodySlot<B> {
        Arc::new(Mutex::new(Some(body)))
    }

    /// Whether no attempt has read from the body (or there is none).
    pub(crate) fn untouched(slot: &BodySlot<B>) -> bool {
        slot.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    pub(crate) fn new(slot: &BodySlot<B>) -> Self {
        let hint = slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default();
        Reclaimable {
            slot: slot.clone(),
            taken: None,
            hint,
        }
    }
}

/// An attempt read a body that an earlier attempt had already read from.
#[derive(Debug, thiserror::Error)]
#[error("the request body was already sent to another member")]
pub(crate) struct BodyGone;

impl<B> Body for Reclaimable<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.taken.is_none() {
            this.taken = this
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
        match &mut this.taken {
            Some(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(Some(Err(Box::new(BodyGone)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.taken.as_ref().is_some_and(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

/// The request body exceeded `[limits] max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub(crate) struct BodyTooLarge {
    pub limit: u64,
}

/// Streams a client's request body upstream, failing once more than `limit`
/// bytes have passed and signalling `sent` when the last frame went out (the
/// upstream response timeout starts then). With [`UploadBody::client_failed`]
/// it also records when the client's own body stream fails (broken chunked
/// framing, a body cut short), so the proxy answers 400 rather than 502.
pub(crate) struct UploadBody<B> {
    inner: B,
    limit: u64,
    seen: u64,
    exceeded: Arc<AtomicBool>,
    sent: Option<oneshot::Sender<()>>,
    client_failed: Option<Arc<AtomicBool>>,
}

impl<B> UploadBody<B> {
    pub(crate) fn new(
        inner: B,
        limit: u64,
        exceeded: Arc<AtomicBool>,
        sent: oneshot::Sender<()>,
    ) -> Self {
        UploadBody {
            inner,
            limit,
            seen: 0,
            exceeded,
            sent: Some(sent),
            client_failed: None,
        }
    }

    /// Sets `flag` when reading the client's body fails.
    pub(crate) fn client_failed(mut self, flag: Arc<AtomicBool>) -> Self {
        self.client_failed = Some(flag);
        self
    }

    fn finish(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}

impl<B> Body for UploadBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.limit {
                        this.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(flag) = &this.client_failed {
                    flag.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a watched body finished (see [`Watch::end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Every frame was read.
    Complete,
    /// The body returned an error.
    Failed,
    /// The body was dropped before its end (the client went away).
    Dropped,
}

/// What a [`Watched`] body does as its frames go by and once when it ends:
/// release a guard, record the request, store the copy. The seam that lets
/// body wrappers differ only in what they do, not in how they poll.
pub(crate) trait Watch {
    /// A data frame is passing to the reader.
    fn data(&mut self, _data: &Bytes) {}
    /// The body ended (or was dropped); called exactly once.
    fn end(self, how: End);
}

/// A body that streams `inner` unchanged and tells its [`Watch`] about
/// each data frame and about the end (the last frame, an error, or a drop).
pub(crate) struct Watched<B, W: Watch> {
    inner: B,
    watch: Option<W>,
}

impl<B: Body, W: Watch> Watched<B, W> {
    /// Wraps `inner`; an already finished body (a 204, `Content-Length: 0`)
    /// is never polled, so it ends at once.
    pub(crate) fn new(inner: B, watch: W) -> Self {
        let mut body = Watched {
            inner,
            watch: Some(watch),
        };
        if body.inner.is_end_stream() {
            body.finish(End::Complete);
        }
        body
    }
}

impl<B, W: Watch> Watched<B, W> {
    fn finish(&mut self, how: End) {
        if let Some(w) = self.watch.take() {
            w.end(how);
        }
    }
}

impl<B, W> Body for Watched<B, W>
where
    B: Body<Data = Bytes> + Unpin,
    W: Watch + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(w), Some(data)) = (&mut this.watch, frame.data_ref()) {
                    w.data(data);
                }
                if this.inner.is_end_stream() {
                    this.finish(End::Complete);
                }
            }
            Poll::Ready(None) => this.finish(End::Complete),
            Poll::Ready(Some(Err(_))) => this.finish(End::Failed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, W: Watch> Drop for Watched<B, W> {
    fn drop(&mut self) {
        self.finish(End::Dropped);
    }
}

/// The request body arrived slower than `[limits] min_body_rate`.
#[derive(Debug, thiserror::Error)]
#[error("request body slower than {rate} bytes per second")]
pub(crate) struct BodyTooSlow {
    pub rate: u64,
}

/// Cuts off a request body that arrives slower than `rate` bytes per second
/// on average, once `grace` has passed.
///
/// Only time spent waiting on the client counts: from a poll that found no
/// data to the next frame. Time the upstream side spends not asking for more
/// (backpressure, a slow member) is not the client's, so a fast client is
/// never cut off because the member reads slowly. With `seen` bytes received
/// and `waited` spent waiting, the body fails once
/// `waited > max(grace, seen / rate)`; `too_slow` is set so the proxy can
/// answer 408.
pub(crate) struct MinRateBody<B> {
    inner: B,
    rate: u64,
    grace: std::time::Duration,
    seen: u64,
    waited: std::time::Duration,
    waiting_since: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    too_slow: Arc<AtomicBool>,
}

impl<B> MinRateBody<B> {
    /// `rate` 0 disables the check.
    pub(crate) fn new(
        inner: B,
        rate: u64,
        grace: std::time::Duration,
        too_slow: Arc<AtomicBool>,
    ) -> Self {
        MinRateBody {
            inner,
            rate,
            grace,
            seen: 0,
            waited: std::time::Duration::ZERO,
            waiting_since: None,
            timer: None,
            too_slow,
        }
    }

    /// How long the client may have kept us waiting in total so far.
    fn allowed_wait(&self) -> std::time::Duration {
        let earned = std::time::Duration::try_from_secs_f64(self.seen as f64 / self.rate as f64)
            .unwrap_or(std::time::Duration::MAX);
        self.grace.max(earned)
    }
}

impl<B> Body for MinRateBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if this.rate == 0 {
            return polled.map_err(Into::into);
        }
        let now = tokio::time::Instant::now();
        match polled {
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert(now);
                let left = this
                    .allowed_wait()
                    .saturating_sub(this.waited + (now - since));
                let deadline = now + left;
                let fired = !left.is_zero() && {
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                    std::future::Future::poll(timer.as_mut(), cx).is_ready()
                };
                if left.is_zero() || fired {
                    this.too_slow.store(true, Ordering::Relaxed);
                    this.rate_failed();
                    return Poll::Ready(Some(Err(Box::new(BodyTooSlow { rate: this.rate }))));
                }
                Poll::Pending
            }
            Poll::Ready(item) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += now - since;
                }
                if let Some(Ok(frame)) = &item {
                    if let Some(data) = frame.data_ref() {
                        this.seen = this.seen.saturating_add(data.len() as u64);
                    }
                }
                Poll::Ready(item.map(|r| r.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> MinRateBody<B> {
    fn rate_failed(&mut self) {
        self.timer = None;
        tracing::debug!(
            rate = self.rate,
            received = self.seen,
            waited = ?self.waited,
            "min_body_rate: request body too slow; cutting it off"
        );
    }
}

#[cfg(test)]
mod min_rate_tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;

    struct Chan(mpsc::Receiver<Bytes>);

    impl Body for Chan {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }

    fn body(
        rate: u64,
        grace: Duration,
    ) -> (mpsc::Sender<Bytes>, MinRateBody<Chan>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(16);
        let flag = Arc::new(AtomicBool::new(false));
        (
            tx,
            MinRateBody::new(Chan(rx), rate, grace, flag.clone()),
            flag,
        )
    }

    #[tokio::test]
    async fn a_stalled_client_is_cut_off_after_the_grace_period() {
        let (tx, mut b, flag) = body(1024, Duration::from_millis(50));
        tx.send(Bytes::from_static(b"a few bytes")).await.unwrap();
        assert!(b.frame().await.unwrap().is_ok());
        let e = tokio::time::timeout(Duration::from_secs(20), b.frame())
            .await
            .expect("cut off")
            .unwrap()
            .unwrap_err();
        assert!(e.is::<BodyTooSlow>(), "{e}");
        assert!(flag.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn time_the_upstream_side_does_not_poll_is_not_counted() {
        let (tx, mut b, flag) = body(1024, Duration::from_millis(20));
        tx.send(Bytes::from_static(b"one")).await.unwrap();
        tx.send(Bytes::from_static(b"two")).await.unwrap();
        drop(tx);
        // Nobody polls for far longer than the grace period (a slow member),
        // while the client's data sits ready.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(b.frame().await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(b.frame().await.unwrap().is_ok());
        assert!(b.frame().await.is_none());
        assert!(!flag.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn bytes_received_earn_waiting_time() {
        // 10 KiB at 1 KiB/s earns 10s of waiting: a short stall is fine.
        let (tx, mut b, flag) = body(1024, Duration::from_millis(10));
        tx.send(Bytes::from(vec![0u8; 10 << 10])).await.unwrap();
        assert!(b.frame().await.unwrap().is_ok());
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send(Bytes::from_static(b"more")).await.unwrap();
        });
        assert!(b.frame().await.unwrap().is_ok());
        sender.await.unwrap();
        assert!(!flag.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn rate_zero_is_off() {
        let (tx, mut b, _) = body(0, Duration::from_millis(1));
        let stalled = tokio::time::timeout(Duration::from_millis(100), b.frame()).await;
        assert!(stalled.is_err(), "still waiting, not cut off");
        drop(tx);
    }
}

#[cfg(test)]
mod trailer_tests {
    use super::*;

    /// A body of one data frame and then trailers, as a gRPC call's
    /// response (and a request with trailers) has.
    struct WithTrailers(Vec<Frame<Bytes>>);

    impl Body for WithTrailers {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let next = (!self.0.is_empty()).then(|| self.0.remove(0));
            Poll::Ready(next.map(Ok))
        }
    }

    fn call() -> WithTrailers {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("9"));
        trailers.insert("grpc-message", http::HeaderValue::from_static("no"));
        WithTrailers(vec![
            Frame::data(Bytes::from_static(b"\0\0\0\0\0")),
            Frame::trailers(trailers),
        ])
    }

    async fn trailers_of<B>(body: B) -> http::HeaderMap
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        let collected = body.collect().await.expect("body");
        collected
            .trailers()
            .cloned()
            .expect("trailers came through")
    }

    struct Nothing;
    impl Watch for Nothing {
        fn end(self, _how: End) {}
    }

    #[tokio::test]
    async fn every_wrapper_passes_trailers_on() {
        let t = trailers_of(Watched::new(call(), Nothing)).await;
        assert_eq!(t["grpc-status"], "9");
        assert_eq!(t["grpc-message"], "no");

        // The upload side: a request body kept for retries, under the
        // rate floor and the size limit.
        let slot = Reclaimable::slot(call());
        let rate = MinRateBody::new(
            Reclaimable::new(&slot),
            1024,
            std::time::Duration::from_secs(10),
            Arc::new(AtomicBool::new(false)),
        );
        let (sent, _sent_rx) = oneshot::channel();
        let upload = UploadBody::new(rate, 1 << 20, Arc::new(AtomicBool::new(false)), sent);
        let t = trailers_of(upload).await;
        assert_eq!(t["grpc-status"], "9");
    }
}
