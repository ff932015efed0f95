//! Write batching for HTTP/2 connections: what the h2 crate writes while
//! its connection is polled is held, and sent as one write (over TLS, one
//! record of up to 16 KiB and one syscall) when that poll returns.
//!
//! Why: the h2 crate writes a DATA frame of 256 bytes or more beside its
//! own buffer and flushes before it encodes the next frame, so responses
//! that are ready together (ten streams of `h2load -m10`) would each cost a
//! TLS record, its encryption and a syscall of their own.
//!
//! [`batched`] splits a stream in two handles on one state: [`Batched`],
//! the stream hyper reads and writes, whose flush holds the bytes, and
//! [`Batch`], with which the connection's task sends them once hyper's poll
//! has returned ([`Batch::poll_send`]). Shutdown always sends what is held.
//!
//! Reads are cut short the same way: once the stream has nothing to read
//! during a poll, further reads in that poll say so at once
//! ([`Batch::begin_poll`] starts a poll). The h2 crate reads the stream
//! again each time hyper asks it for the next request, 13 times per ten
//! responses under `h2load -m10`, and each read that finds nothing went
//! down through the TLS session and the socket's timers for about 550
//! instructions.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Held bytes past which a write first sends them, in the middle of a poll:
/// a full TLS record's worth.
const HOLD_LIMIT: usize = 16 << 10;

struct Inner<S> {
    io: S,
    /// Written by hyper, not yet handed to `io`. Released once sent, so an
    /// idle connection holds no write buffer here.
    held: Vec<u8>,
    /// Bytes went to `io` since its last flush.
    unflushed: bool,
    /// `io` had nothing to read during the current poll of the
    /// connection's task. The read that found nothing left the task's
    /// waker with the socket (and its timers), so whatever arrives later
    /// wakes the task for another poll, which reads it; on a worker's
    /// single-threaded runtime nothing arrives during a poll anyway.
    read_blocked: bool,
}

/// The stream side: what hyper's HTTP/2 connection reads from and writes to.
pub(super) struct Batched<S>(Arc<Mutex<Inner<S>>>);

/// The connection task's side: sends what the stream side holds.
pub(super) struct Batch<S>(Arc<Mutex<Inner<S>>>);

/// Wraps `io` for an HTTP/2 connection; see the module docs.
pub(super) fn batched<S>(io: S) -> (Batched<S>, Batch<S>) {
    let inner = Arc::new(Mutex::new(Inner {
        io,
        held: Vec::new(),
        unflushed: false,
        read_blocked: false,
    }));
    (Batched(inner.clone()), Batch(inner))
}

/// Both handles live on one task and never hold the lock across an await,
/// so it is never contended. A panic while it is held ends that task and
/// both handles with it; a poisoned lock is taken anyway rather than
/// adding a panic path.
fn lock<S>(inner: &Mutex<Inner<S>>) -> MutexGuard<'_, Inner<S>> {
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S: AsyncWrite + Unpin> Inner<S> {
    /// Hands every held byte to `io`.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sent = 0;
        let result = loop {
            if sent == self.held.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.held[sent..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    sent += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        if sent == self.held.len() {
            self.held = Vec::new();
        } else {
            self.held.drain(..sent);
        }
        result
    }

    /// Hands every held byte to `io`, then flushes it (if it got any).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_held(cx))?;
        if self.unflushed {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Holds `bufs`, first sending what is held if that is a record's worth.
    fn poll_hold(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.held.len() >= HOLD_LIMIT {
            ready!(self.poll_write_held(cx))?;
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.held.capacity() == 0 {
            self.held.reserve(len.max(HOLD_LIMIT));
        }
        for buf in bufs {
            self.held.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }
}

impl<S> Batch<S> {
    /// Called as the connection's task starts a poll of hyper's
    /// connection: reads go to the stream again.
    pub(super) fn begin_poll(&self) {
        lock(&self.0).read_blocked = false;
    }
}

impl<S: AsyncWrite + Unpin> Batch<S> {
    /// Sends what hyper wrote during its last poll. Pending means the
    /// socket is full and will wake the task when it has room.
    pub(super) fn poll_send(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.0).poll_send(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Batched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.0);
        if inner.read_blocked {
            return Poll::Pending;
        }
        let read = Pin::new(&mut inner.io).poll_read(cx, buf);
        inner.read_blocked = read.is_pending();
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Batched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        lock(&self.0).poll_hold(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        lock(&self.0).poll_hold(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Holds: the connection's task sends once hyper's poll returns.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.0);
        ready!(inner.poll_send(cx))?;
        Pin::new(&mut inner.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Waker;

    /// A stream with nothing to read, counting the reads that reach it.
    struct Empty(Arc<AtomicUsize>);

    impl AsyncRead for Empty {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Poll::Pending
        }
    }

    #[test]
    fn an_empty_stream_is_read_once_per_poll() {
        let reads = Arc::new(AtomicUsize::new(0));
        let (mut stream, batch) = batched(Empty(reads.clone()));
        let mut cx = Context::from_waker(Waker::noop());
        let mut space = [0u8; 16];
        let mut read = || {
            let mut buf = ReadBuf::new(&mut space);
            Pin::new(&mut stream)
                .poll_read(&mut cx, &mut buf)
                .is_pending()
        };
        batch.begin_poll();
        assert!(read() && read() && read());
        assert_eq!(reads.load(Ordering::Relaxed), 1, "one read per poll");
        batch.begin_poll();
        assert!(read());
        assert_eq!(
            reads.load(Ordering::Relaxed),
            2,
            "the next poll reads again"
        );
    }
}
