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
//!
//! [`send_once`] is the other way to a member, for pools that send PROXY
//! headers: one request on a new connection that starts with the header,
//! never pooled.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};

use crate::body::{BoxError, ProxyBody};

use super::pool::UpstreamError;

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

/// Sends `req` on a new connection to `addr` that starts with `header` (a
/// PROXY header), and waits for the response head. The connection closes
/// once the response (or an upgraded tunnel) is done with it.
pub(crate) async fn send_once(
    addr: std::net::SocketAddr,
    connect_timeout: std::time::Duration,
    header: Vec<u8>,
    mut req: http::Request<ProxyBody>,
) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
    use tokio::io::AsyncWriteExt;
    let connecting = tokio::net::TcpStream::connect(addr);
    let mut stream = match tokio::time::timeout(connect_timeout, connecting).await {
        Err(_) => return Err(UpstreamError::ConnectTimeout { addr }),
        Ok(Err(e)) => {
            return Err(UpstreamError::Connect {
                addr,
                reason: e.to_string(),
            })
        }
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    // Nothing of the request has been sent yet: a failure here is still a
    // failure to connect, as far as retries are concerned.
    stream
        .write_all(&header)
        .await
        .map_err(|e| UpstreamError::Connect {
            addr,
            reason: format!("sending the PROXY header: {e}"),
        })?;
    let before_response = |e: hyper::Error| UpstreamError::BeforeResponse {
        addr,
        reason: e.to_string(),
    };
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(before_response)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(member = %addr, error = %e, "upstream connection ended with an error");
        }
    });
    // On a connection of its own, the target is origin-form (RFC 9112
    // §3.2.1), as the pooled client writes it.
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse::<http::Uri>()
        .map_err(|e| UpstreamError::BeforeResponse {
            addr,
            reason: e.to_string(),
        })?;
    *req.uri_mut() = target;
    send.send_request(req).await.map_err(before_response)
}
