//! The pools' connector: hyper-util's `HttpConnector`, with connections that
//! can be closed from outside.
//!
//! Every response carries a [`CloseHandle`] for the connection it came on
//! (through hyper-util's connection extras). When sluice refuses a response
//! head whose framing is ambiguous (see [`crate::framing::check_response_head`]),
//! it closes the connection with it: from then on the connection fails
//! every read and write, so hyper drops it instead of returning it to the
//! pool, even when it has already buffered the whole message and whatever
//! the member sent after it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};

use crate::body::BoxError;

/// Closes one upstream connection; found in the extensions of every
/// response the pool's client returns.
#[derive(Debug, Clone)]
pub(crate) struct CloseHandle(Arc<AtomicBool>);

impl CloseHandle {
    /// The connection fails all further IO and is never reused.
    pub(crate) fn close(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// An `HttpConnector` whose connections are [`Closable`].
#[derive(Debug, Clone)]
pub(crate) struct ClosableConnector {
    inner: HttpConnector,
}

impl ClosableConnector {
    pub(crate) fn new(inner: HttpConnector) -> ClosableConnector {
        ClosableConnector { inner }
    }
}

type Connecting<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl tower_service::Service<Uri> for ClosableConnector {
    type Response = Closable<<HttpConnector as tower_service::Service<Uri>>::Response>;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let inner = connecting.await?;
            Ok(Closable {
                inner,
                closed: Arc::new(AtomicBool::new(false)),
            })
        })
    }
}

/// A connection that fails all IO once its [`CloseHandle`] is used.
#[derive(Debug)]
pub(crate) struct Closable<T> {
    inner: T,
    closed: Arc<AtomicBool>,
}

impl<T> Closable<T> {
    fn check(&self) -> io::Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "upstream connection closed after a refused response",
            ))
        } else {
            Ok(())
        }
    }
}

impl<T: Connection> Connection for Closable<T> {
    fn connected(&self) -> Connected {
        self.inner
            .connected()
            .extra(CloseHandle(self.closed.clone()))
    }
}

impl<T: Read + Unpin> Read for Closable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Closable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
