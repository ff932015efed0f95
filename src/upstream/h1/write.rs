//! The request side of an HTTP/1.1 exchange: how the body is framed (the
//! rules hyper's client follows, so members see what they saw before),
//! the head encoded, and the body streamed from its [`ProxyBody`] one frame
//! at a time, each frame written with its framing in one vectored write.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, Method};
use http_body::Body as _;
use tokio::io::AsyncWrite;

use super::read::content_length;
use super::Error;
use crate::body::ProxyBody;
use crate::upstream::client::Outgoing;
use crate::upstream::connect::Stream;

/// How the request body is delimited on the wire.
#[derive(Debug)]
enum Framing {
    /// This many bytes are still to go; more from the body are dropped.
    Length(u64),
    /// Chunked; trailers go out only for the names its `Trailer` field
    /// lists (hyper's rule: a member is told which to expect).
    Chunked { trailers: Vec<HeaderName> },
}

/// Fields that never go in a trailer section (RFC 9110 §6.5.1), as hyper
/// leaves them out.
fn allowed_in_trailers(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

/// How the request goes out: the body's framing, and the head's framing
/// fields as they are written.
struct Plan {
    framing: Option<Framing>,
    /// The head's `Transfer-Encoding` fields are left out.
    drop_te: bool,
    /// The head's `Content-Length` fields are left out.
    drop_length: bool,
    /// A framing field written after the head's own.
    add: Option<Added>,
}

enum Added {
    Length(u64),
    Chunked,
}

/// Decides the body's framing from the head and the body, as hyper's
/// client did: an explicit `Transfer-Encoding` makes it chunked (and drops
/// `Content-Length`), else an explicit `Content-Length` is kept, else a
/// body of known size gets one, else the body is chunked, except after
/// `GET`, `HEAD` and `CONNECT`, which are sent without one. A body that has
/// already ended is sent as none.
fn plan(out: &Outgoing<'_>, body: &ProxyBody) -> Plan {
    let headers = out.headers;
    let mut plan = Plan {
        framing: None,
        drop_te: false,
        drop_length: false,
        add: None,
    };
    if body.is_end_stream() {
        plan.drop_te = true;
        return plan;
    }
    let length = content_length(headers).ok().flatten();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        plan.drop_length = length.is_some();
        if !super::read::is_chunked(headers) {
            plan.add = Some(Added::Chunked);
        }
        plan.framing = Some(Framing::Chunked {
            trailers: declared_trailers(headers),
        });
    } else if let Some(n) = length {
        plan.framing = Some(Framing::Length(n));
    } else if let Some(n) = body.size_hint().exact() {
        plan.add = Some(Added::Length(n));
        plan.framing = Some(Framing::Length(n));
    } else if matches!(*out.method, Method::GET | Method::HEAD | Method::CONNECT) {
        plan.framing = Some(Framing::Length(0));
    } else {
        plan.add = Some(Added::Chunked);
        plan.framing = Some(Framing::Chunked {
            trailers: declared_trailers(headers),
        });
    }
    plan
}

/// The field names a request's `Trailer` fields announce.
fn declared_trailers(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Encodes the request line and fields, framing fields as `plan` says;
/// whether a `Connection` field says `close`.
fn encode_head(out: &Outgoing<'_>, plan: &Plan, buf: &mut BytesMut) -> bool {
    let target = out.target.as_str();
    let method = out.method.as_str();
    // The buffer is the connection's, its room kept from one request to
    // the next: this reserves once per connection, not per request.
    buf.reserve(HEAD_ROOM);
    buf.put_slice(method.as_bytes());
    buf.put_u8(b' ');
    buf.put_slice(target.as_bytes());
    buf.put_slice(b" HTTP/1.1\r\n");
    let mut close = false;
    for (name, value) in out.headers {
        let dropped = (plan.drop_te && name == header::TRANSFER_ENCODING)
            || (plan.drop_length && name == header::CONTENT_LENGTH)
            || out.added.is_some_and(|added| added.replaces(name));
        if !dropped {
            put_field(name, value.as_bytes(), buf);
        }
        if name == header::CONNECTION {
            close |= super::read::lists(value, "close");
        }
    }
    if let Some(added) = out.added {
        added.each(|name, value| put_field(name, value.as_bytes(), buf));
    }
    match plan.add {
        Some(Added::Length(n)) => {
            put_field(
                &header::CONTENT_LENGTH,
                itoa::Buffer::new().format(n).as_bytes(),
                buf,
            );
        }
        Some(Added::Chunked) => put_field(&header::TRANSFER_ENCODING, b"chunked", buf),
        None => {}
    }
    buf.put_slice(b"\r\n");
    close
}

/// What a connection's write buffer is first given: most request heads
/// fit (a larger one grows it).
const HEAD_ROOM: usize = 2 << 10;

/// Appends `name: value` and its CRLF, room made once for the four parts.
fn put_field(name: &HeaderName, value: &[u8], buf: &mut BytesMut) {
    let name = name.as_str().as_bytes();
    buf.reserve(name.len() + value.len() + 4);
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

fn encode_fields(headers: &HeaderMap, buf: &mut BytesMut) {
    for (name, value) in headers {
        put_field(name, value.as_bytes(), buf);
    }
}

/// A request on its way out: what is encoded and not yet written, and the
/// body still to read.
pub(super) struct Upload {
    /// `None` once the body has ended (or there was none).
    body: Option<ProxyBody>,
    framing: Option<Framing>,
    /// A data frame being written, after the bytes in the connection's
    /// write buffer (head, chunk size line) and before `post`.
    data: Bytes,
    post: &'static [u8],
    /// Whether any byte has been written (before that, a failed write
    /// means the member saw nothing of the request).
    pub(super) wrote_any: bool,
    /// The request's `Connection` field says `close`.
    pub(super) asked_close: bool,
}

impl Upload {
    /// Frames the request, encodes its head into `buf`, and keeps the
    /// body to stream.
    pub(super) fn new(out: &Outgoing<'_>, body: ProxyBody, buf: &mut BytesMut) -> Upload {
        let plan = plan(out, &body);
        let asked_close = encode_head(out, &plan, buf);
        let framing = plan.framing;
        // A body with no room (`GET` with a body of unknown length) is
        // dropped unread, as hyper drops it.
        let body = match framing {
            None | Some(Framing::Length(0)) => None,
            Some(_) => Some(body),
        };
        Upload {
            body,
            framing,
            data: Bytes::new(),
            post: b"",
            wrote_any: false,
            asked_close,
        }
    }

    /// The body, unread but for the data frame not yet written, for a
    /// request that goes on another connection (nothing was written).
    pub(super) fn into_body(self) -> ProxyBody {
        use http_body_util::BodyExt;
        let rest = self.body.unwrap_or_else(crate::body::empty);
        if self.data.is_empty() {
            return rest;
        }
        Prepended {
            first: Some(self.data),
            rest,
        }
        .boxed()
    }

    /// Writes what is encoded and reads on from the body until the whole
    /// request is written and flushed (`Ready(Ok)`), or the body or the
    /// connection cannot go on now.
    pub(super) fn poll(
        &mut self,
        io: &mut Stream,
        out: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        loop {
            // The next frame is taken before what is encoded is written, so
            // that a frame that is ready goes out in the same write as what
            // precedes it (the head, for a small body).
            let mut waiting = false;
            if self.data.is_empty() && self.post.is_empty() {
                if let Some(body) = &mut self.body {
                    match Pin::new(body).poll_frame(cx) {
                        Poll::Pending => waiting = true,
                        Poll::Ready(None) => self.end(out)?,
                        Poll::Ready(Some(Err(e))) => {
                            self.body = None;
                            return Poll::Ready(Err(Error::Body(e)));
                        }
                        Poll::Ready(Some(Ok(frame))) => self.push_frame(frame, out)?,
                    }
                }
            }
            if !out.is_empty() || !self.data.is_empty() || !self.post.is_empty() {
                // A request without a body (most of them) is one buffer:
                // a plain write, which the kernel takes for less than a
                // vectored one (send against writev, about 0.15 µs).
                let n = if self.data.is_empty() && self.post.is_empty() {
                    ready!(Pin::new(&mut *io).poll_write(cx, out))
                } else {
                    let slices = [
                        IoSlice::new(out),
                        IoSlice::new(&self.data),
                        IoSlice::new(self.post),
                    ];
                    ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))
                }
                .map_err(Error::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(Error::Write(io::ErrorKind::WriteZero.into())));
                }
                self.wrote_any = true;
                let mut n = n;
                let k = n.min(out.len());
                out.advance(k);
                n -= k;
                let k = n.min(self.data.len());
                self.data.advance(k);
                n -= k;
                self.post = &self.post[n.min(self.post.len())..];
                if out.is_empty() {
                    out.clear();
                }
                continue;
            }
            if self.body.is_none() || waiting {
                // Whatever a TLS layer holds goes out, the request whole or
                // the body waiting for more.
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(Error::Write)?;
                if waiting {
                    return Poll::Pending;
                }
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Encodes one frame of the body (nothing is pending: the caller
    /// wrote all before taking it).
    fn push_frame(
        &mut self,
        frame: http_body::Frame<Bytes>,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        match frame.into_data() {
            Ok(data) => {
                self.push_data(data, out);
                if self.body.as_ref().is_some_and(|b| b.is_end_stream()) {
                    self.end(out)?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    self.push_trailers(&trailers, out);
                    self.end(out)?;
                }
            }
        }
        Ok(())
    }

    fn push_data(&mut self, mut data: Bytes, out: &mut BytesMut) {
        if data.is_empty() {
            return;
        }
        match &mut self.framing {
            Some(Framing::Length(left)) => {
                // More than the declared length: the rest is not sent, as
                // hyper does, and the body is not read on.
                if data.len() as u64 >= *left {
                    data.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left = 0;
                    self.body = None;
                    self.framing = None;
                } else {
                    *left -= data.len() as u64;
                }
                self.data = data;
            }
            Some(Framing::Chunked { .. }) => {
                use std::fmt::Write as _;
                let _ = write!(ByteWriter(out), "{:X}\r\n", data.len());
                self.data = data;
                self.post = b"\r\n";
            }
            None => {}
        }
    }

    fn push_trailers(&mut self, trailers: &HeaderMap, out: &mut BytesMut) {
        let Some(Framing::Chunked { trailers: declared }) = &self.framing else {
            return;
        };
        let mut kept = HeaderMap::new();
        for (name, value) in trailers {
            if declared.contains(name) && allowed_in_trailers(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        out.put_slice(b"0\r\n");
        encode_fields(&kept, out);
        out.put_slice(b"\r\n");
        self.framing = None;
        self.body = None;
    }

    /// The body ended: the last chunk, or a check that the declared length
    /// went out whole.
    fn end(&mut self, out: &mut BytesMut) -> Result<(), Error> {
        self.body = None;
        match self.framing.take() {
            // After a data frame still to write, the last chunk follows its
            // CRLF (anything in `out` goes before the data).
            Some(Framing::Chunked { .. }) if !self.data.is_empty() => {
                self.post = b"\r\n0\r\n\r\n";
            }
            Some(Framing::Chunked { .. }) => out.put_slice(b"0\r\n\r\n"),
            Some(Framing::Length(left)) if left > 0 => return Err(Error::BodyShort { left }),
            _ => {}
        }
        Ok(())
    }
}

/// `fmt::Write` into a `BytesMut`, for a chunk size line.
struct ByteWriter<'a>(&'a mut BytesMut);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// A data frame already read from a body, then the rest of that body.
struct Prepended {
    first: Option<Bytes>,
    rest: ProxyBody,
}

impl http_body::Body for Prepended {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(first))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let first = self.first.as_ref().map_or(0, |b| b.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + first);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + first);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field is its name, `": "`, its value and CRLF after what the
    /// buffer held, whether it fits in the room left or makes the buffer
    /// grow.
    #[test]
    fn fields_are_appended_whole() {
        let fields: [(HeaderName, &[u8]); 5] = [
            (header::HOST, b"example.com"),
            (
                HeaderName::from_static("x-forwarded-for"),
                b"192.0.2.7, 10.0.0.1",
            ),
            (header::ACCEPT, b""),
            (HeaderName::from_static("x"), b"\t v \xff"),
            (header::USER_AGENT, &[b'a'; 3000]),
        ];
        for room in [0, 1, 16, 40, 8 << 10] {
            let mut buf = BytesMut::with_capacity(room);
            buf.put_slice(b"GET / HTTP/1.1\r\n");
            let mut expected = b"GET / HTTP/1.1\r\n".to_vec();
            for (name, value) in &fields {
                put_field(name, value, &mut buf);
                expected.extend_from_slice(name.as_str().as_bytes());
                expected.extend_from_slice(b": ");
                expected.extend_from_slice(value);
                expected.extend_from_slice(b"\r\n");
                assert_eq!(&buf[..], &expected[..], "room {room}");
            }
        }
    }
}
