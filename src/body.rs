//! Body types that stream through the proxy without being held whole:
//! the boxed body both sides speak, the upload wrapper that enforces
//! `max_body_bytes` and reports when the request has been sent in full, and
//! the download wrapper that keeps a member's in-flight count until the
//! response body ends.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::oneshot;

use crate::upstream::member::InFlight;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type used for every request and response the proxy produces.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The request body exceeded `[limits] max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// Streams a client's request body upstream, failing once more than `limit`
/// bytes have passed and signalling `sent` when the last frame went out (the
/// upstream response timeout starts then).
pub struct UploadBody<B> {
    inner: B,
    limit: u64,
    seen: u64,
    exceeded: Arc<AtomicBool>,
    sent: Option<oneshot::Sender<()>>,
}

impl<B> UploadBody<B> {
    pub fn new(inner: B, limit: u64, exceeded: Arc<AtomicBool>, sent: oneshot::Sender<()>) -> Self {
        UploadBody {
            inner,
            limit,
            seen: 0,
            exceeded,
            sent: Some(sent),
        }
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
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
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

/// Streams an upstream response body to the client while holding the
/// member's in-flight guard, so `least_conn` sees the whole transfer.
pub struct DownloadBody<B> {
    inner: B,
    _in_flight: Option<InFlight>,
}

impl<B> DownloadBody<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        DownloadBody {
            inner,
            _in_flight: Some(in_flight),
        }
    }
}

impl<B> Body for DownloadBody<B>
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
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = polled {
            this._in_flight = None;
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
