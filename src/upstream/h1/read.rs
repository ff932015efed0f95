//! The response side of an HTTP/1.1 exchange: the head parsed with
//! `httparse` (interim 1xx responses skipped, as hyper does), its framing
//! decided by RFC 9112 §6.3 as hyper's client decides it, and the body
//! decoded from the connection's read buffer, data frames split off it
//! without a copy.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{response, HeaderMap, Method, Response, StatusCode, Version};
use http_body::Frame;
use smallvec::SmallVec;

use super::Error;
use crate::upstream::connect::{Stream, UPSTREAM_READ_BUF};

/// Most fields in a response head or a trailer section (hyper's default).
const MAX_FIELDS: usize = 100;
/// Most bytes of chunk extensions in one body (hyper's limit).
const MAX_CHUNK_EXTENSIONS: usize = 16 << 10;
/// Most bytes of a trailer section (hyper's limit).
const MAX_TRAILERS: usize = 16 << 10;
/// The first read's size; a body read that fills the buffer doubles the
/// next, up to [`UPSTREAM_READ_BUF`].
pub(super) const FIRST_READ: usize = 8 << 10;

/// A response head and what follows it.
pub(super) struct Head {
    pub parts: response::Parts,
    pub decode: Decode,
    /// Neither the member nor the version says to close.
    pub keep_alive: bool,
    /// A `101` (or a `2xx` to `CONNECT`): the connection is the new
    /// protocol's from the next byte.
    pub upgrade: bool,
}

/// How the body is delimited, and how far it has been read.
#[derive(Debug)]
pub(super) enum Decode {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the member closes the connection.
    Eof,
    /// The body has ended (or there is none).
    Done,
}

#[derive(Debug)]
pub(super) enum Chunked {
    /// Before a chunk size line.
    Size,
    /// Inside a chunk: this many bytes are still to come.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, or the final CRLF.
    Trailers,
}

/// The values of every `Content-Length` field, which must agree (hyper's
/// rule, RFC 9110 §8.6): `Ok(None)` without one, `Err` when they disagree
/// or one is not a number.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .try_fold(None, add_length)
}

/// `length` (so far) with one more `Content-Length` field's value.
fn add_length(mut length: Option<u64>, value: &HeaderValue) -> Result<Option<u64>, ()> {
    for part in value.as_bytes().split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() {
            return Err(());
        }
        let mut n: u64 = 0;
        for &b in part {
            if !b.is_ascii_digit() {
                return Err(());
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .ok_or(())?;
        }
        if length.is_some_and(|l| l != n) {
            return Err(());
        }
        length = Some(n);
    }
    Ok(length)
}

/// Whether the last transfer coding is `chunked`.
pub(crate) fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a `Connection` field lists `token`.
pub(super) fn lists(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a `Connection` value names anything besides `close` and
/// `keep-alive`: fields to remove with it, or `upgrade`.
fn names_fields(value: &HeaderValue) -> bool {
    value.as_bytes().split(|&b| b == b',').any(|t| {
        let t = t.trim_ascii();
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
    })
}

/// Parses the first final response head in `buf`, consuming it and any
/// interim (1xx) responses before it; `Ok(None)` until a whole head is
/// there.
pub(super) fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        // Where each field's name and value are in the head (which is at
        // most 64 KiB); pushed, not a zeroed array of MAX_FIELDS.
        let mut at: SmallVec<[(u32, u32, u32, u32); 24]> = SmallVec::new();
        let mut res = httparse::Response::new(&mut []);
        let bytes: &[u8] = buf;
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            bytes,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) if len <= UPSTREAM_READ_BUF => len,
            Ok(httparse::Status::Complete(_)) => return Err(Error::HeadTooLarge),
            Ok(httparse::Status::Partial) => {
                if buf.len() >= UPSTREAM_READ_BUF {
                    return Err(Error::HeadTooLarge);
                }
                return Ok(None);
            }
            Err(e) => return Err(Error::Head(e.to_string())),
        };
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|e| Error::Head(e.to_string()))?;
        let version = if res.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let reason = res
            .reason
            .filter(|r| Some(*r) != status.canonical_reason())
            .map(|r| Bytes::copy_from_slice(r.as_bytes()));
        let base = bytes.as_ptr() as usize;
        let count = res.headers.len();
        for h in res.headers.iter() {
            // Within a buffer of at most UPSTREAM_READ_BUF bytes.
            let name = (h.name.as_ptr() as usize - base) as u32;
            let value = (h.value.as_ptr() as usize - base) as u32;
            at.push((
                name,
                name + h.name.len() as u32,
                value,
                value + h.value.len() as u32,
            ));
        }
        let head = buf.split_to(len).freeze();
        if status.is_informational() && code != 101 {
            // 100 Continue, 103 Early Hints: hyper passes none of them on.
            continue;
        }
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = status;
        parts.version = version;
        let mut keep_alive = version == Version::HTTP_11;
        let mut said_close = false;
        // The framing fields, noted on the way (no lookups after).
        let mut framing = Framing {
            chunked_or_coded: false,
            length: Ok(None),
        };
        let headers = &mut parts.headers;
        headers.reserve(count);
        for &(ns, ne, vs, ve) in &at {
            let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
            if head[ns..ne].eq_ignore_ascii_case(b"keep-alive") {
                // This hop's own (RFC 9112 §9.3 leaves it to each hop),
                // never passed on: not put in the head at all.
                continue;
            }
            let name = field_name(&head[ns..ne]).map_err(|e| Error::Head(e.to_string()))?;
            let value = field_value(head.slice(vs..ve)).map_err(|e| Error::Head(e.to_string()))?;
            if name == header::CONNECTION {
                if said_close || lists(&value, "close") {
                    said_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = lists(&value, "keep-alive");
                }
                // Read here, and never passed on: left out of the head
                // unless it names fields that must be removed with it (the
                // `Connection: keep-alive` nginx sends on every response
                // cost its removal about a thousand instructions).
                if !names_fields(&value) {
                    continue;
                }
            } else if name == header::CONTENT_LENGTH {
                framing.length = framing.length.and_then(|l| add_length(l, &value));
            } else if name == header::TRANSFER_ENCODING {
                framing.chunked_or_coded = true;
            }
            headers.append(name, value);
        }
        if let Some(reason) = reason {
            if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason) {
                parts.extensions.insert(reason);
            }
        }
        let (decode, upgrade) = decoder(&parts, method, framing)?;
        if framing.chunked_or_coded {
            crate::framing::check_response_head(&parts.headers).map_err(Error::Framing)?;
        }
        return Ok(Some(Head {
            parts,
            decode,
            keep_alive: keep_alive && !upgrade,
            upgrade,
        }));
    }
}

/// A field name from a parsed head, as [`HeaderName::from_bytes`] makes
/// it. The names nearly every response carries are found by their length
/// and first letter and one comparison of two words, without
/// `from_bytes`'s copy to lower case and its lookup among all the standard
/// names.
fn field_name(name: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    // `| 0x20` lowers a letter; any other byte matches no arm's letter but
    // by chance, which `same_name` then refuses.
    let first = name.first().map_or(0, |b| b | 0x20);
    let common = match (name.len(), first) {
        (3, b'a') => Some(&header::AGE),
        (4, b'd') => Some(&header::DATE),
        (4, b'e') => Some(&header::ETAG),
        (4, b'v') => Some(&header::VARY),
        (6, b's') => Some(&header::SERVER),
        (7, b'e') => Some(&header::EXPIRES),
        (8, b'l') => Some(&header::LOCATION),
        (10, b'c') => Some(&header::CONNECTION),
        (10, b's') => Some(&header::SET_COOKIE),
        (12, b'c') => Some(&header::CONTENT_TYPE),
        (13, b'a') => Some(&header::ACCEPT_RANGES),
        (13, b'c') => Some(&header::CACHE_CONTROL),
        (13, b'l') => Some(&header::LAST_MODIFIED),
        (14, b'c') => Some(&header::CONTENT_LENGTH),
        (16, b'c') => Some(&header::CONTENT_ENCODING),
        (17, b't') => Some(&header::TRANSFER_ENCODING),
        _ => None,
    };
    match common {
        Some(known) if same_name(name, known.as_str().as_bytes()) => Ok(known.clone()),
        _ => HeaderName::from_bytes(name),
    }
}

/// Whether `name` is `lower` (lower-case letters, digits and `-`, 4 to 16
/// bytes, as long as `name`) in any case: each word of `name` with the
/// case bit set where `lower` has a letter (the letters' `0x40` bit, moved
/// to `0x20`) must be `lower`'s word, so nothing but the other case of a
/// letter passes.
fn same_name(name: &[u8], lower: &[u8]) -> bool {
    fn words<const N: usize>(b: &[u8]) -> ([u8; N], [u8; N]) {
        let mut head = [0; N];
        let mut tail = [0; N];
        head.copy_from_slice(&b[..N]);
        tail.copy_from_slice(&b[b.len() - N..]);
        (head, tail)
    }
    fn folds(name: u64, lower: u64) -> bool {
        name | ((lower & 0x4040_4040_4040_4040) >> 1) == lower
    }
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    if (8..=16).contains(&n) {
        let ((nh, nt), (lh, lt)) = (words::<8>(name), words::<8>(lower));
        folds(u64::from_le_bytes(nh), u64::from_le_bytes(lh))
            && folds(u64::from_le_bytes(nt), u64::from_le_bytes(lt))
    } else if (4..8).contains(&n) {
        let ((nh, nt), (lh, lt)) = (words::<4>(name), words::<4>(lower));
        let widen = |w: [u8; 4]| u64::from(u32::from_le_bytes(w));
        folds(widen(nh), widen(lh)) && folds(widen(nt), widen(lt))
    } else {
        name.eq_ignore_ascii_case(lower)
    }
}

/// A field value from a parsed head. `httparse` let through only the bytes
/// a field value may hold (HTAB, visible ASCII, obs-text; line folding is
/// refused, as `ParserConfig::default` does), the set `HeaderValue`
/// accepts: an ASCII value is taken without checking each byte again, and
/// any other goes through the check.
fn field_value(value: Bytes) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    if value.is_ascii() {
        // SAFETY: ASCII is valid UTF-8, and httparse checked that every
        // byte is one a field value may hold.
        Ok(unsafe { HeaderValue::from_maybe_shared_unchecked(value) })
    } else {
        HeaderValue::from_maybe_shared(value)
    }
}

/// What a response head's framing fields say.
#[derive(Clone, Copy)]
struct Framing {
    /// It has a `Transfer-Encoding` field.
    chunked_or_coded: bool,
    /// Its `Content-Length` fields, `Err` when they disagree or one is not
    /// a number.
    length: Result<Option<u64>, ()>,
}

/// How the body of a final response is delimited (RFC 9112 §6.3, in
/// hyper's order), and whether the response upgrades the connection.
fn decoder(
    parts: &response::Parts,
    method: &Method,
    framing: Framing,
) -> Result<(Decode, bool), Error> {
    match parts.status.as_u16() {
        101 => return Ok((Decode::Done, true)),
        204 | 304 => return Ok((Decode::Done, false)),
        _ => {}
    }
    if *method == Method::HEAD {
        return Ok((Decode::Done, false));
    }
    if *method == Method::CONNECT && parts.status.is_success() {
        return Ok((Decode::Done, true));
    }
    if framing.chunked_or_coded {
        if parts.version == Version::HTTP_10 {
            return Err(Error::Head(
                "HTTP/1.0 response with Transfer-Encoding".into(),
            ));
        }
        if is_chunked(&parts.headers) {
            return Ok((Decode::Chunked(Chunked::Size), false));
        }
        return Ok((Decode::Eof, false));
    }
    match framing.length {
        Ok(Some(0)) => Ok((Decode::Done, false)),
        Ok(Some(n)) => Ok((Decode::Length(n), false)),
        Ok(None) => Ok((Decode::Eof, false)),
        Err(()) => Err(Error::Head("invalid Content-Length".into())),
    }
}

/// Reads more from `io` into `buf`, at least `want` bytes of room:
/// `Ready(Ok(0))` at the end of the stream.
pub(super) fn poll_fill(
    io: &mut Stream,
    buf: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

impl Decode {
    pub(super) fn is_done(&self) -> bool {
        matches!(self, Decode::Done)
    }

    /// The next frame of the body, read from `buf` and then from `io`.
    pub(super) fn poll_frame(
        &mut self,
        io: &mut Stream,
        buf: &mut BytesMut,
        read_size: &mut usize,
        ext_seen: &mut usize,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            match self {
                Decode::Done => return Poll::Ready(None),
                Decode::Length(left) => {
                    if !buf.is_empty() {
                        let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                        *left -= n as u64;
                        if *left == 0 {
                            *self = Decode::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(buf.split_to(n).freeze()))));
                    }
                    let want = usize::try_from(*left).unwrap_or(usize::MAX).min(*read_size);
                    if ready!(fill(io, buf, want, read_size, cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::BodyCut)));
                    }
                }
                Decode::Eof => {
                    if !buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                    }
                    if ready!(fill(io, buf, *read_size, read_size, cx))? == 0 {
                        *self = Decode::Done;
                    }
                }
                Decode::Chunked(state) => {
                    match step(state, buf, ext_seen) {
                        Step::Data(data) => {
                            // The last chunk's end, when already here, ends
                            // the body with its last data frame.
                            settle(self, buf, ext_seen);
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Step::Trailers(trailers) => {
                            *self = Decode::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Step::End => *self = Decode::Done,
                        Step::Again => {}
                        Step::More => {
                            if ready!(fill(io, buf, *read_size, read_size, cx))? == 0 {
                                return Poll::Ready(Some(Err(Error::BodyCut)));
                            }
                        }
                        Step::Bad(reason) => {
                            return Poll::Ready(Some(Err(Error::Chunked(reason))));
                        }
                    }
                }
            }
        }
    }

    /// A lower and, when known, an upper bound of what is still to come.
    pub(super) fn remaining(&self) -> Option<u64> {
        match self {
            Decode::Length(n) => Some(*n),
            Decode::Done => Some(0),
            _ => None,
        }
    }
}

/// Reads for a body: `want` bytes of room, and a read that fills all it
/// was given makes the next one twice as large.
fn fill(
    io: &mut Stream,
    buf: &mut BytesMut,
    want: usize,
    read_size: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<Result<usize, Error>> {
    let room = want.max(1);
    let n = ready!(poll_fill(io, buf, room, cx)).map_err(Error::Read)?;
    if n >= *read_size {
        *read_size = (*read_size * 2).min(UPSTREAM_READ_BUF);
    }
    Poll::Ready(Ok(n))
}

/// One step of chunked decoding on what is buffered.
enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// The state moved on; step again.
    Again,
    /// More bytes are needed.
    More,
    Bad(&'static str),
}

fn step(state: &mut Chunked, buf: &mut BytesMut, ext_seen: &mut usize) -> Step {
    match state {
        Chunked::Size => match size_line(buf, ext_seen) {
            Ok(Some((size, used))) => {
                buf.advance(used);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
                Step::Again
            }
            Ok(None) => Step::More,
            Err(reason) => Step::Bad(reason),
        },
        Chunked::Data(left) => {
            if buf.is_empty() {
                return Step::More;
            }
            let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
            *left -= n as u64;
            if *left == 0 {
                *state = Chunked::DataEnd;
            }
            Step::Data(buf.split_to(n).freeze())
        }
        Chunked::DataEnd => {
            if buf.len() < 2 {
                if buf.first().is_some_and(|&b| b != b'\r') {
                    return Step::Bad("invalid chunk body CR");
                }
                return Step::More;
            }
            if &buf[..2] != b"\r\n" {
                return Step::Bad("invalid chunk body CRLF");
            }
            buf.advance(2);
            *state = Chunked::Size;
            Step::Again
        }
        Chunked::Trailers => {
            if buf.len() < 2 {
                return Step::More;
            }
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Step::End;
            }
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if buf.len() > MAX_TRAILERS {
                    return Step::Bad("chunk trailers over limit");
                }
                return Step::More;
            };
            if end + 4 > MAX_TRAILERS {
                return Step::Bad("chunk trailers over limit");
            }
            match trailers(&buf[..end + 4]) {
                Ok(map) => {
                    buf.advance(end + 4);
                    Step::Trailers(map)
                }
                Err(reason) => Step::Bad(reason),
            }
        }
    }
}

/// After a data frame: steps on as far as the buffer allows without a
/// frame of its own, so that a body whose end is already here ends with
/// its last data frame. An error is left for the next poll to find.
fn settle(decode: &mut Decode, buf: &mut BytesMut, ext_seen: &mut usize) {
    let Decode::Chunked(state) = decode else {
        return;
    };
    loop {
        match state {
            // Either consumes a whole line (`Again`) or nothing at all.
            Chunked::DataEnd | Chunked::Size => {
                if !matches!(step(state, buf, ext_seen), Step::Again) {
                    return;
                }
            }
            Chunked::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    *decode = Decode::Done;
                }
                return;
            }
            Chunked::Data(_) => return,
        }
    }
}

/// A chunk size line at the front of `buf`: the size and the line's
/// length, `Ok(None)` while incomplete. Hex digits, optional whitespace,
/// optional extensions (ignored, but never a bare LF, and at most
/// [`MAX_CHUNK_EXTENSIONS`] bytes in a body), CRLF.
fn size_line(buf: &[u8], ext_seen: &mut usize) -> Result<Option<(u64, usize)>, &'static str> {
    let mut size: u64 = 0;
    let mut digits = 0;
    let mut i = 0;
    while let Some(&b) = buf.get(i) {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or("invalid chunk size: overflow")?;
        digits += 1;
        i += 1;
    }
    if i == buf.len() {
        return Ok(None);
    }
    if digits == 0 {
        return Err("invalid chunk size line: missing size digit");
    }
    while let Some(&b) = buf.get(i) {
        match b {
            b' ' | b'\t' => i += 1,
            _ => break,
        }
    }
    let mut ext = 0;
    if buf.get(i) == Some(&b';') {
        while let Some(&b) = buf.get(i) {
            match b {
                b'\r' => break,
                b'\n' => return Err("invalid chunk extension contains newline"),
                _ => {
                    ext += 1;
                    i += 1;
                    if *ext_seen + ext >= MAX_CHUNK_EXTENSIONS {
                        return Err("chunk extensions over limit");
                    }
                }
            }
        }
    }
    match (buf.get(i), buf.get(i + 1)) {
        (None, _) | (Some(b'\r'), None) => Ok(None),
        (Some(b'\r'), Some(b'\n')) => {
            *ext_seen += ext;
            Ok(Some((size, i + 2)))
        }
        (Some(b'\r'), Some(_)) => Err("invalid chunk size LF"),
        _ => Err("invalid chunk size line"),
    }
}

/// A trailer section (its final CRLF included) as fields.
fn trailers(section: &[u8]) -> Result<HeaderMap, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| "invalid trailer field name")?;
                let value =
                    HeaderValue::from_bytes(f.value).map_err(|_| "invalid trailer field value")?;
                map.append(name, value);
            }
            Ok(map)
        }
        Ok(httparse::Status::Partial) => Err("partial trailer section"),
        Err(httparse::Error::TooManyHeaders) => Err("too many trailer fields"),
        Err(_) => Err("invalid trailer section"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], method: Method) -> Result<Option<Head>, Error> {
        parse_head(&mut BytesMut::from(bytes), &method)
    }

    #[test]
    fn rfc9112_6_3_head_and_204_have_no_body() {
        let h = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert!(h.decode.is_done());
        let h = head(b"HTTP/1.1 204 No Content\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(h.decode.is_done());
    }

    #[test]
    fn rfc9112_6_3_no_length_reads_to_close() {
        let h = head(b"HTTP/1.1 200 OK\r\n\r\nabc", Method::GET)
            .unwrap()
            .unwrap();
        assert!(matches!(h.decode, Decode::Eof));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"[..],
        );
        let h = parse_head(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(h.parts.status, 200);
        assert_eq!(&buf[..], b"hi");
    }

    #[test]
    fn rfc9110_8_6_differing_lengths_are_refused() {
        let r = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            Method::GET,
        );
        assert!(matches!(r, Err(Error::Head(_))));
        let r = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
            Method::GET,
        );
        assert!(matches!(r.unwrap().unwrap().decode, Decode::Length(2)));
    }

    #[test]
    fn rfc9112_6_1_length_and_chunked_is_refused() {
        let r = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::GET,
        );
        assert!(matches!(r, Err(Error::Framing(_))));
    }

    #[test]
    fn http10_keeps_alive_only_when_asked() {
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(h.keep_alive);
        let h = head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn chunk_size_lines() {
        let mut seen = 0;
        assert_eq!(size_line(b"1a\r\n", &mut seen), Ok(Some((26, 4))));
        assert_eq!(size_line(b"1a ;x=y\r\n", &mut seen), Ok(Some((26, 9))));
        assert_eq!(size_line(b"1a", &mut seen), Ok(None));
        assert_eq!(size_line(b"1a\r", &mut seen), Ok(None));
        assert!(size_line(b"\r\n", &mut seen).is_err());
        assert!(size_line(b"1;a\nb\r\n", &mut seen).is_err());
        assert!(size_line(b"1\n", &mut seen).is_err());
        assert!(size_line(b"fffffffffffffffff\r\n", &mut seen).is_err());
    }

    #[test]
    fn a_chunked_body_ends_with_its_last_data_frame_when_the_end_is_buffered() {
        let mut decode = Decode::Chunked(Chunked::Size);
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\n"[..]);
        let mut seen = 0;
        let Decode::Chunked(state) = &mut decode else {
            unreachable!()
        };
        assert!(matches!(step(state, &mut buf, &mut seen), Step::Again));
        assert!(matches!(step(state, &mut buf, &mut seen), Step::Data(_)));
        settle(&mut decode, &mut buf, &mut seen);
        assert!(decode.is_done());
        assert!(buf.is_empty());
    }

    /// The common names' shortcut gives what `HeaderName::from_bytes`
    /// gives, in any case, for near misses of each length, and for names
    /// that are not common.
    #[test]
    fn field_names_agree_with_from_bytes() {
        let names = [
            "Age",
            "agE",
            "aga",
            "ETag",
            "etaG",
            "etah",
            "Vary",
            "Expires",
            "expirez",
            "Location",
            "Set-Cookie",
            "set-cookiE",
            "Accept-Ranges",
            "accept-rangez",
            "Last-Modified",
            "Content-Encoding",
            "content-encodinG",
            "Transfer-Encoding",
            "transfer-encodinf",
            "Date",
            "date",
            "DATE",
            "dAtE",
            "data",
            "dat\u{e9}",
            "etag",
            "vary",
            "Server",
            "server",
            "servers",
            "serveR",
            "Connection",
            "connectioN",
            "connexion",
            "Content-Type",
            "content-typf",
            "content_type",
            "Content-Typ",
            "Cache-Control",
            "cache-controL",
            "last-modified",
            "Content-Length",
            "content-lengtH",
            "content-range",
            "Set-Cookie",
            "X-Custom",
            "x-request-id",
            "transfer-encoding",
            "Location",
            // A byte one case bit away from a letter or from `-`.
            "D@te",
            "d`te",
            "content\rtype",
            "contentmtype",
            "CONTENT-TYPE",
            "cache\x0dcontrol",
            "Cache-ControL",
            "Content-Length1",
            "server\x00",
            "d\x01te",
            "DATE\u{80}",
            "a",
            "1234",
            "dat ",
            "dat:",
            "",
        ];
        for name in names {
            let fast = field_name(name.as_bytes()).map_err(|_| ());
            let general = HeaderName::from_bytes(name.as_bytes()).map_err(|_| ());
            assert_eq!(fast, general, "{name:?}");
        }
    }

    /// A value is taken unchecked only when it is ASCII; every byte that
    /// `httparse` lets into a value is one `HeaderValue` accepts, and a
    /// value with any byte at all comes out as the checked path makes it.
    #[test]
    fn field_values_agree_with_the_checked_path() {
        // What RFC 9110 §5.5 (and httparse) allow in a field value.
        let allowed = |b: u8| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80;
        for b in 0..=255u8 {
            let raw = [b'a', b, b'z'];
            if allowed(b) {
                let fast = field_value(Bytes::copy_from_slice(&raw)).map_err(|_| ());
                let checked = HeaderValue::from_bytes(&raw).map_err(|_| ());
                assert_eq!(fast, checked, "byte {b:#x}");
            }
            let head = [
                &b"HTTP/1.1 200 OK\r\nX-A: a"[..],
                &[b],
                &b"z\r\nContent-Length: 0\r\n\r\n"[..],
            ]
            .concat();
            let parsed = head_of(&head);
            let checked = HeaderValue::from_bytes(&raw).ok();
            match parsed {
                Ok(h) => {
                    let got = h.parts.headers.get("x-a").cloned();
                    assert_eq!(got, checked, "byte {b:#x}");
                    assert!(checked.is_some(), "byte {b:#x} let through");
                }
                Err(_) => assert!(!allowed(b), "byte {b:#x} refused"),
            }
        }
    }

    fn head_of(bytes: &[u8]) -> Result<Head, ()> {
        match head(bytes, Method::GET) {
            Ok(Some(h)) => Ok(h),
            _ => Err(()),
        }
    }

    /// Odd heads: repeated fields keep their order, names in any case,
    /// obs-text, and what the parser refuses (line folding, a space before
    /// the colon, a control byte) still fails the exchange.
    #[test]
    fn response_heads_parse_as_before() {
        let h = head_of(
            b"HTTP/1.1 200 OK\r\nDATE: x\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n\
              cache-CONTROL:  no-store \t\r\nX-Obs: caf\xe9\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let fields: Vec<(String, Vec<u8>)> = h
            .parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        let expected: Vec<(String, Vec<u8>)> = [
            ("date", &b"x"[..]),
            ("set-cookie", b"a=1"),
            ("set-cookie", b"b=2"),
            ("cache-control", b"no-store"),
            ("x-obs", b"caf\xe9"),
            ("content-length", b"0"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
        let mut sorted = fields.clone();
        sorted.sort();
        let mut want = expected.clone();
        want.sort();
        assert_eq!(sorted, want);
        for bad in [
            &b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX A: a\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad, Method::GET), Err(Error::Head(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn trailer_sections_parse() {
        let map = trailers(b"grpc-status: 0\r\nx-a: b\r\n\r\n").unwrap();
        assert_eq!(map["grpc-status"], "0");
        assert_eq!(map["x-a"], "b");
    }
}
