//! One connection to a member: TCP (with an optional PROXY header first),
//! TLS over it when the pool has `[pool.NAME.tls]`, then the HTTP handshake
//! for the protocol the pool speaks: HTTP/2 when the member picked `h2` by
//! ALPN or the pool says `protocol = "h2c"`, HTTP/1.1 otherwise.
//! `connect_timeout` covers TCP and the TLS handshake.
//!
//! An HTTP/1.1 connection is ours to drive ([`super::h1`]): no task, no
//! handshake. An HTTP/2 one is hyper's, run by a task of its own.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Body;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::body::BoxError;
use crate::config::UpstreamProtocol;

use super::pool::UpstreamError;
use super::tls::UpstreamTls;

/// The most an upstream connection buffers of what it reads: a response
/// head must fit (64 KiB, as much as a client request head may be), and a
/// body is read no further ahead than this of a client that reads slowly.
pub(crate) const UPSTREAM_READ_BUF: usize = 64 << 10;

/// HTTP/2 flow-control windows towards members: how much one stream (and
/// all streams of a connection) may have in flight unread. hyper's client
/// defaults (2 MiB and 5 MiB) would let one stalled client pin megabytes;
/// these match the HTTP/1.1 read buffer's reach while keeping a fast
/// stream's throughput on a low-latency link.
const H2_STREAM_WINDOW: u32 = 256 << 10;
const H2_CONNECTION_WINDOW: u32 = 1 << 20;

/// A ready-to-use connection, by protocol: an HTTP/1.1 one itself, or an
/// HTTP/2 one's sending half.
pub(crate) enum Sender<B> {
    H1(super::h1::Conn),
    H2(http2::SendRequest<B>),
}

/// Makes connections to one pool's members.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    pub connect_timeout: Duration,
    pub tls: Option<Arc<UpstreamTls>>,
    pub protocol: UpstreamProtocol,
}

impl Connector {
    /// A new connection to `addr` that starts with `preamble` (a PROXY
    /// header, or nothing), handshaken for the pool's protocol. Failures
    /// before any request byte went out are connect failures.
    pub(crate) async fn connect<B>(
        &self,
        addr: SocketAddr,
        preamble: &[u8],
    ) -> Result<Sender<B>, UpstreamError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let stream = self.stream(addr, preamble, deadline).await?;
        let h2 = match &stream {
            Stream::Plain(_) => self.protocol == UpstreamProtocol::H2c,
            Stream::Tls(tls) => tls.io.get_ref().1.alpn_protocol() == Some(b"h2"),
        };
        if !h2 {
            return Ok(Sender::H1(super::h1::Conn::new(stream)));
        }
        let failed = |e: hyper::Error| {
            self.refused_by_tls(addr, &e)
                .unwrap_or_else(|| UpstreamError::Connect {
                    addr,
                    reason: format!("HTTP handshake: {e}"),
                })
        };
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_header_list_size(UPSTREAM_READ_BUF as u32)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(failed)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(member = %addr, error = %e, "upstream h2 connection ended with an error");
            }
        });
        Ok(Sender::H2(send))
    }

    /// A TLS alert from the member behind `e` (counted where it was
    /// read, see [`TlsIo`]), as a connect failure: in TLS 1.3 a member that
    /// refuses our client certificate says so only after the client's side
    /// of the handshake is done, on the first read, and such a member has
    /// seen no request.
    pub(crate) fn refused_by_tls(
        &self,
        addr: SocketAddr,
        e: &(dyn std::error::Error + 'static),
    ) -> Option<UpstreamError> {
        self.tls.as_ref()?;
        let mut source = Some(e);
        while let Some(s) = source {
            let typed = s
                .downcast_ref::<io::Error>()
                .and_then(super::tls::rustls_error);
            // HTTP/2 keeps an IO error's kind and text only.
            let alert = match typed {
                Some(alert @ rustls::Error::AlertReceived(_)) => Some(alert.to_string()),
                _ => s
                    .downcast_ref::<h2::Error>()
                    .filter(|h2| h2.is_io())
                    .map(ToString::to_string)
                    .filter(|text| text.contains("received fatal alert")),
            };
            if let Some(alert) = alert {
                return Some(UpstreamError::Connect {
                    addr,
                    reason: format!("TLS: {alert}"),
                });
            }
            source = s.source();
        }
        None
    }

    /// TCP, the preamble, and TLS when the pool has it, by `deadline`.
    pub(crate) async fn stream(
        &self,
        addr: SocketAddr,
        preamble: &[u8],
        deadline: tokio::time::Instant,
    ) -> Result<Stream, UpstreamError> {
        use tokio::io::AsyncWriteExt;
        let mut tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(UpstreamError::ConnectTimeout { addr }),
            Ok(Err(e)) => {
                return Err(UpstreamError::Connect {
                    addr,
                    reason: e.to_string(),
                })
            }
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        if !preamble.is_empty() {
            // Nothing of the request has been sent yet: a failure here is
            // still a failure to connect, as far as retries are concerned.
            tcp.write_all(preamble)
                .await
                .map_err(|e| UpstreamError::Connect {
                    addr,
                    reason: format!("sending the PROXY header: {e}"),
                })?;
        }
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        match tls.handshake(addr, tcp, deadline).await {
            Ok(stream) => Ok(Stream::Tls(Box::new(TlsIo {
                io: stream,
                tls: tls.clone(),
                addr,
            }))),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                Err(UpstreamError::ConnectTimeout { addr })
            }
            Err(e) => Err(UpstreamError::Connect {
                addr,
                reason: e.to_string(),
            }),
        }
    }
}

/// A connection to a member: plain TCP, or TLS over it.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS stream is over a kilobyte, plain TCP a few words.
    Tls(Box<TlsIo>),
}

/// A TLS connection to a member, which counts the alert that ends it.
#[derive(Debug)]
pub(crate) struct TlsIo {
    io: TlsStream<TcpStream>,
    tls: Arc<UpstreamTls>,
    addr: SocketAddr,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(t) => {
                let read = Pin::new(&mut t.io).poll_read(cx, buf);
                if let Poll::Ready(Err(e)) = &read {
                    // Counted here, where the error still has its type:
                    // over HTTP/2 only its text gets further.
                    if let Some(alert @ rustls::Error::AlertReceived(_)) =
                        super::tls::rustls_error(e)
                    {
                        t.tls.count(t.addr, super::tls::Reason::of(alert));
                    }
                }
                read
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(t) => Pin::new(&mut t.io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Stream::Tls(t) => Pin::new(&mut t.io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(io) => io.is_write_vectored(),
            Stream::Tls(t) => t.io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(t) => Pin::new(&mut t.io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(t) => Pin::new(&mut t.io).poll_shutdown(cx),
        }
    }
}
