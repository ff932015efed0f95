//! Small helpers for the IO wrappers that sit between a client socket and
//! hyper ([`crate::client_limits::ClientIo`], [`crate::framing::FramingGuard`]):
//! both watch what is read and pass writes through untouched.

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
