//! Small helpers for the IO wrappers around sockets: those between a
//! client socket and hyper ([`crate::client_limits::ClientIo`],
//! [`crate::framing::FramingGuard`]) watch what is read and pass writes
//! through untouched; [`Prefixed`] puts bytes already read back in front of
//! a stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};

/// Implements `tokio::io::AsyncWrite` for `$ty<S>` by forwarding every call
/// to its `inner` field, keeping vectored writes vectored. With
/// `shutdown = method`, `poll_shutdown` calls `Self::method` instead.
macro_rules! forward_async_write {
    ($ty:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> $ty<S> {
            fn forward_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }
        }
        $crate::io::forward_async_write!($ty, shutdown = forward_shutdown);
    };
    ($ty:ident, shutdown = $shutdown:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                Self::$shutdown(self, cx)
            }
        }
    };
}

pub(crate) use forward_async_write;

/// Serves a read from `prefix`, bytes already read from a stream that are
/// to be read again first: `false` when there are none. Emptied, it frees
/// its allocation, not just its view of it.
pub(crate) fn read_prefix(prefix: &mut Bytes, buf: &mut ReadBuf<'_>) -> bool {
    if prefix.is_empty() {
        return false;
    }
    let n = prefix.len().min(buf.remaining());
    buf.put_slice(&prefix[..n]);
    prefix.advance(n);
    if prefix.is_empty() {
        *prefix = Bytes::new();
    }
    true
}

/// A stream with bytes already read from it in front: those are read
/// first, then the stream; writes go straight to it.
pub(crate) struct Prefixed<S> {
    inner: S,
    prefix: Bytes,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(inner: S, prefix: Bytes) -> Prefixed<S> {
        Prefixed { inner, prefix }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if read_prefix(&mut this.prefix, buf) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

forward_async_write!(Prefixed);
