//! HTTP/1.1 to a member, driven by the request's own task: the request
//! written ([`write`]) and the response read ([`read`]) on a connection
//! that belongs to the worker's pool between requests and to one request
//! during its exchange. No task and no channel per connection: a miss
//! polled hyper's client dispatcher three times through its channels,
//! which cost more than the rest of the exchange.
//!
//! The request body streams while the response is read (a member may
//! answer before the upload ends). A connection can carry another request
//! only once the response body was read to its end, the request was
//! written whole, neither side asked to close, and the member sent nothing
//! past the response ([`Body::take_reusable`]); otherwise it is closed.

mod read;
mod write;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{Method, Response};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use super::client::Outgoing;
use super::connect::Stream;
use crate::body::{BoxError, ProxyBody};
use crate::framing::Violation;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("writing the request: {0}")]
    Write(#[source] io::Error),
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    #[error("connection closed before the response head")]
    Closed,
    #[error("request body: {0}")]
    Body(#[source] BoxError),
    #[error("request body ended {left} bytes short of its Content-Length")]
    BodyShort { left: u64 },
    #[error("invalid response head: {0}")]
    Head(String),
    #[error(
        "response head larger than {} bytes",
        super::connect::UPSTREAM_READ_BUF
    )]
    HeadTooLarge,
    /// The head parsed, but its framing is ambiguous or not relayable.
    #[error("{0}")]
    Framing(Violation),
    #[error("connection closed before the response body's end")]
    BodyCut,
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
}

/// A failed exchange; `unsent` is the request's body, unread, when none of
/// the request reached the member (a pooled connection found closed on the
/// first write), so that it can go on another connection.
pub(crate) struct Failed {
    pub error: Error,
    pub unsent: Option<ProxyBody>,
}

/// An HTTP/1.1 connection to a member, between exchanges or in one.
#[derive(Debug)]
pub(crate) struct Conn {
    io: Stream,
    /// Read and not yet consumed; empty between exchanges.
    rbuf: BytesMut,
    /// Encoded and not yet written; its space is kept for the next
    /// request.
    wbuf: BytesMut,
    /// How much a body read asks for (see `read::fill`).
    read_size: usize,
}

impl Conn {
    pub(crate) fn new(io: Stream) -> Conn {
        Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            read_size: read::FIRST_READ,
        }
    }

    /// Whether an idle connection can take a request: the member has
    /// neither closed it nor sent anything unasked. Without a readiness
    /// event on the socket this is a look at a flag, no system call.
    pub(crate) fn is_open_and_quiet(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match &self.io {
            // `try_read` returns `WouldBlock` from the readiness flag alone
            // (and registers no waker) until the socket has an event.
            Stream::Plain(tcp) => {
                matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            // TLS reads what the member sent after the handshake (session
            // tickets) without it being data: read through rustls.
            Stream::Tls(_) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut probe = ReadBuf::new(&mut byte);
                Pin::new(&mut self.io)
                    .poll_read(&mut cx, &mut probe)
                    .is_pending()
            }
        }
    }
}

/// Sends the request `out` with `body` on `conn` and reads the response
/// head. Its fields go out as they are (the body's framing fields aside,
/// see `write`). `reused`: the connection carried a request before, so a
/// first write that fails gives the body back.
pub(crate) async fn send(
    mut conn: Conn,
    out: &Outgoing<'_>,
    body: ProxyBody,
    reused: bool,
) -> Result<Response<Body>, Failed> {
    let mut up = write::Upload::new(out, body, &mut conn.wbuf);
    let asked_close = up.asked_close;
    let mut uploading = true;
    let mut write_failed = false;
    let head = poll_fn(|cx| {
        if uploading {
            match up.poll(&mut conn.io, &mut conn.wbuf, cx) {
                Poll::Ready(Ok(())) => uploading = false,
                // The member may have answered and closed before reading
                // the whole request (a 413): an answer already here is
                // taken, as hyper reads before it writes.
                Poll::Ready(Err(e @ Error::Write(_))) if up.wrote_any => {
                    uploading = false;
                    write_failed = true;
                    return match poll_head(&mut conn, out.method, cx) {
                        Poll::Ready(Ok(head)) => Poll::Ready(Ok(head)),
                        _ => Poll::Ready(Err(e)),
                    };
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        poll_head(&mut conn, out.method, cx)
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(error) => {
            let unsent = (reused && !up.wrote_any && matches!(error, Error::Write(_)))
                .then(|| up.into_body());
            return Err(Failed { error, unsent });
        }
    };
    let read::Head {
        parts: resp,
        decode,
        keep_alive,
        upgrade,
    } = head;
    let body = Body {
        failed: None,
        conn: Some(conn),
        decode,
        upload: uploading.then_some(up),
        keep_alive: keep_alive && !asked_close && !write_failed,
        upgrade,
        ext_seen: 0,
    };
    Ok(Response::from_parts(resp, body))
}

/// Reads until a final response head is in.
fn poll_head(
    conn: &mut Conn,
    method: &Method,
    cx: &mut Context<'_>,
) -> Poll<Result<read::Head, Error>> {
    loop {
        if let Some(head) = read::parse_head(&mut conn.rbuf, method)? {
            return Poll::Ready(Ok(head));
        }
        let want = if conn.rbuf.is_empty() {
            read::FIRST_READ
        } else {
            conn.rbuf.len()
        };
        match std::task::ready!(read::poll_fill(&mut conn.io, &mut conn.rbuf, want, cx)) {
            Ok(0) => return Poll::Ready(Err(Error::Closed)),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(Error::Read(e))),
        }
    }
}

/// A response body read from its connection; it also writes what is left
/// of the request body.
pub(crate) struct Body {
    /// `None` once taken back for the pool.
    conn: Option<Conn>,
    decode: read::Decode,
    /// The request, while not yet written whole.
    upload: Option<write::Upload>,
    keep_alive: bool,
    upgrade: bool,
    /// Chunk extension bytes seen in this body.
    ext_seen: usize,
    /// A failure to report on the next poll.
    failed: Option<Error>,
}

impl Body {
    /// Once the body has ended: its connection, when it can carry another
    /// request.
    pub(crate) fn take_reusable(&mut self) -> Option<Conn> {
        if !self.keep_alive || self.upload.is_some() || !self.decode.is_done() {
            return None;
        }
        let conn = self.conn.take()?;
        // Bytes past the response are nobody's answer: the connection
        // cannot be trusted with another request.
        conn.rbuf.is_empty().then_some(conn)
    }

    /// After a `101`: the connection, now the new protocol's, with what was
    /// read past the response head.
    pub(crate) fn into_upgraded(mut self) -> Option<Upgraded> {
        if !self.upgrade {
            return None;
        }
        let conn = self.conn.take()?;
        Some(Upgraded::new(conn.io, conn.rbuf.freeze()))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let Some(conn) = &mut this.conn else {
            return Poll::Ready(None);
        };
        if let Some(up) = &mut this.upload {
            match up.poll(&mut conn.io, &mut conn.wbuf, cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                Poll::Ready(Err(e)) => {
                    // The member answered; what is left of the upload is
                    // not needed for its answer, but the connection
                    // cannot carry another request.
                    tracing::debug!(error = %e, "request body not sent whole after the response head");
                    this.upload = None;
                    this.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        let polled = this.decode.poll_frame(
            &mut conn.io,
            &mut conn.rbuf,
            &mut conn.read_size,
            &mut this.ext_seen,
            cx,
        );
        match polled {
            Poll::Ready(Some(Err(e))) => {
                // A failure found in the same poll as the data before it
                // (the member sent some and closed) is reported on the
                // next poll: the reader first writes out what it has, as
                // it did when the failure came from another task.
                this.failed = Some(e);
                this.conn = None;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decode.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A member's connection after a `101`: the bytes read past the response
/// head first, then the connection itself.
pub(crate) type Upgraded = crate::io::Prefixed<Stream>;
