//! The wire side of the hit lane ([`crate::proxy::hit_lane`]). Between
//! hyper sessions (a new connection, or a parked one, see [`super::http1`])
//! the next request head is looked at here first: a plain GET whose answer
//! is a fresh cache hit is answered with the entry's encoded head and its
//! body, and the connection stays out of hyper. Anything else (a head not
//! complete in what was read, a body, a connection option, an upgrade, an
//! expectation, or whatever the request side leaves to the general path)
//! starts a hyper session on the same bytes, exactly as without the lane.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Uri, Version};
use http_body_util::Empty;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::client_limits::Activity;
use crate::proxy::hit_lane::Answered;
use crate::proxy::{self, ConnInfo};
use crate::snapshot::State;

/// Request fields on the stack; a head with more goes to hyper.
const MAX_FIELDS: usize = 32;

/// Below this, a body goes out in one write with its head on a stream
/// that cannot write vectors (TLS): one record, one system call.
const COPY_BODY_UNDER: usize = 16 << 10;

/// What one connection's lane needs: what its hyper service has too.
pub(super) struct HitLane {
    state: State,
    conn: Arc<ConnInfo>,
    activity: Arc<Activity>,
    draining: Arc<AtomicBool>,
}

impl HitLane {
    pub(super) fn new(
        state: State,
        conn: Arc<ConnInfo>,
        activity: Arc<Activity>,
        draining: Arc<AtomicBool>,
    ) -> HitLane {
        HitLane {
            state,
            conn,
            activity,
            draining,
        }
    }

    /// The answer to the head at the front of `read` if it is a plain hit,
    /// the head then taken from `read`; `None`, `read` untouched, for
    /// hyper to serve.
    pub(super) fn answer(&self, read: &mut Bytes) -> Option<Answered> {
        // While the server drains, every answer says `Connection: close`:
        // hyper's to write.
        if self.draining.load(Ordering::Relaxed) {
            return None;
        }
        let (req, len) = parse(read)?;
        let answered = proxy::hit_lane::answer(&self.state, &self.conn, &self.activity, &req)?;
        drop(req);
        read.advance(len);
        if read.is_empty() {
            // Frees the read, not just the view of it.
            *read = Bytes::new();
        }
        Some(answered)
    }
}

/// Fields that make a request more than a plain GET, for hyper to read: a
/// body, connection options, an upgrade, an expectation.
fn leaves_to_hyper(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || name == header::UPGRADE
        || name == header::EXPECT
        || name == header::TE
}

/// The complete HTTP/1.1 GET head at the front of `read` and its length,
/// its values sharing `read`'s bytes; `None` for anything else. httparse
/// at its strictest (the framing guard has judged the same bytes).
fn parse(read: &Bytes) -> Option<(Request<Empty<Bytes>>, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut head = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(len) = head.parse(read).ok()? else {
        return None;
    };
    if head.method != Some("GET") || head.version != Some(1) {
        return None;
    }
    let uri = Uri::from_maybe_shared(read.slice_ref(head.path?.as_bytes())).ok()?;
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for field in head.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        if leaves_to_hyper(&name) {
            return None;
        }
        let value = HeaderValue::from_maybe_shared(read.slice_ref(field.value)).ok()?;
        headers.append(name, value);
    }
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some((req, len))
}

/// Writes the answer: the head with the request id and the body, in one
/// write where the stream takes vectors (or the body is small), flushed;
/// then the request is recorded.
pub(super) async fn write<W: AsyncWrite + Unpin>(io: &mut W, answered: Answered) -> io::Result<()> {
    let Answered {
        wire,
        request_id,
        body,
        mut record,
    } = answered;
    let (before, after) = wire.bytes.split_at(wire.id_at);
    let small = !io.is_write_vectored() && body.len() < COPY_BODY_UNDER;
    let mut head = Vec::with_capacity(
        wire.bytes.len() + request_id.len() + if small { body.len() } else { 0 },
    );
    head.extend_from_slice(before);
    head.extend_from_slice(request_id.as_bytes());
    head.extend_from_slice(after);
    let written = if small {
        head.extend_from_slice(&body);
        io.write_all(&head).await
    } else {
        io.write_all_buf(&mut head.as_slice().chain(body)).await
    };
    let written = match written {
        Ok(()) => io.flush().await,
        Err(e) => Err(e),
    };
    if written.is_err() {
        record.client_abort();
    }
    drop(record);
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str) -> Option<(Request<Empty<Bytes>>, usize)> {
        parse(&Bytes::copy_from_slice(head.as_bytes()))
    }

    #[test]
    fn only_a_complete_plain_get_is_read_here() {
        let get = "GET /a?b=c HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nAccept: text/html\r\n\r\n";
        let (req, len) = parsed(get).expect("a plain GET");
        assert_eq!(len, get.len());
        assert_eq!(req.uri(), "/a?b=c");
        assert_eq!(req.headers()["host"], "x");
        assert_eq!(req.headers().get_all("accept").iter().count(), 2);
        // What follows the head is left where it is.
        let (_, len) = parsed(&format!("{get}GET /next HTTP/1.1\r\n")).unwrap();
        assert_eq!(len, get.len());
        for other in [
            "GET /a HTTP/1.1\r\nHost: x\r\n",
            "HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\n\r\n",
            "get /a HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\x7f\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(parsed(other).is_none(), "{other:?}");
        }
        let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(parsed(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")).is_none());
    }
}
