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
//!
//! For a pool with `[pool.NAME.tls]`, both wrap the TCP connection in TLS
//! ([`super::tls`]); the request URI stays `http://member`, the pool's
//! config decides. `connect_timeout` covers TCP and the TLS handshake.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::body::{BoxError, ProxyBody};

use super::pool::UpstreamError;
use super::tls::UpstreamTls;

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

/// An `HttpConnector` whose connections are [`Closable`], over TLS when
/// the pool has it.
#[derive(Debug, Clone)]
pub(crate) struct ClosableConnector {
    inner: HttpConnector,
    tls: Option<Arc<UpstreamTls>>,
    connect_timeout: std::time::Duration,
}

impl ClosableConnector {
    pub(crate) fn new(
        inner: HttpConnector,
        tls: Option<Arc<UpstreamTls>>,
        connect_timeout: std::time::Duration,
    ) -> ClosableConnector {
        ClosableConnector {
            inner,
            tls,
            connect_timeout,
        }
    }
}

/// A connection to a member: plain TCP, or TLS over it.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TokioIo<TcpStream>),
    /// Boxed: a TLS stream is over a kilobyte, plain TCP a few words.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(io) => io.connected(),
            Stream::Tls(io) => io.inner().get_ref().0.connected(),
        }
    }
}

impl Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(io) => io.is_write_vectored(),
            Stream::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

type Connecting<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl tower_service::Service<Uri> for ClosableConnector {
    type Response = Closable<Stream>;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let connecting = self.inner.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?;
            let inner = match tls {
                None => Stream::Plain(tcp),
                Some(tls) => {
                    let addr = tcp.inner().peer_addr()?;
                    let stream = tls.handshake(addr, tcp.into_inner(), deadline).await?;
                    Stream::Tls(Box::new(TokioIo::new(stream)))
                }
            };
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
    tls: Option<&UpstreamTls>,
    header: Vec<u8>,
    req: http::Request<ProxyBody>,
) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
    use tokio::io::AsyncWriteExt;
    let deadline = tokio::time::Instant::now() + connect_timeout;
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
    match tls {
        None => send_on(addr, stream, req).await,
        Some(tls) => {
            let stream =
                tls.handshake(addr, stream, deadline)
                    .await
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::TimedOut => UpstreamError::ConnectTimeout { addr },
                        _ => UpstreamError::Connect {
                            addr,
                            reason: e.to_string(),
                        },
                    })?;
            send_on(addr, stream, req).await
        }
    }
}

/// Sends `req` as the only request on `stream`.
async fn send_on<S>(
    addr: std::net::SocketAddr,
    stream: S,
    mut req: http::Request<ProxyBody>,
) -> Result<http::Response<hyper::body::Incoming>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let before_response = |e: hyper::Error| UpstreamError::BeforeResponse {
        addr,
        reason: e.to_string(),
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
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
