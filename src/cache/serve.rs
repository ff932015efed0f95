//! Answers built from a stored entry: the full response, HEAD, a 304 for a
//! matching client conditional (RFC 9110 §13), a single byte range (RFC 9110
//! §14), with `Age` (RFC 9111 §5.1) and RFC 9211 `Cache-Status`.

use std::time::Duration;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use bytes::Bytes;

use std::sync::{Arc, Mutex};

use super::filling::{self, Filling, Head};
use super::store::Entry;
use crate::body::{self, ProxyBody};
use crate::config::Coding;
use crate::headers::conditional;

pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// How the request was answered, for `Cache-Status` (RFC 9211 §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Status {
    /// Served from the cache; `ttl` is the remaining freshness in seconds
    /// (negative when served stale); `detail` says why a stale one was used.
    Hit {
        ttl: i64,
        detail: Option<&'static str>,
    },
    /// Went upstream: `fwd` is RFC 9211's reason (`miss`, `uri-miss`,
    /// `vary-miss`, `request`, `stale`, `method`, `bypass`), `fwd_status`
    /// the upstream's status when it differs from ours, `stored` whether
    /// the response was stored (said only once it is: a body still
    /// streaming may yet fail), `detail` why it was not (`fill-budget`).
    Forward {
        fwd: &'static str,
        fwd_status: Option<u16>,
        stored: bool,
        collapsed: bool,
        detail: Option<&'static str>,
    },
    /// Went upstream for a stale entry, which was then served anyway
    /// because the upstream failed: `detail` says why it was allowed.
    ForwardedStale { detail: &'static str },
}

impl Status {
    /// A trip upstream that was not collapsed into another.
    pub(crate) fn forward(fwd: &'static str, fwd_status: Option<u16>, stored: bool) -> Status {
        Status::Forward {
            fwd,
            fwd_status,
            stored,
            collapsed: false,
            detail: None,
        }
    }

    /// The field value, written straight into the bytes the header keeps
    /// (one allocation, no formatting machinery: it is on every hit).
    pub(crate) fn header_value(&self) -> HeaderValue {
        let mut t = Vec::with_capacity(64);
        let mut num = itoa::Buffer::new();
        match self {
            Status::Hit { ttl, detail } => {
                t.extend_from_slice(b"sluice; hit; ttl=");
                t.extend_from_slice(num.format(*ttl).as_bytes());
                if let Some(d) = detail {
                    t.extend_from_slice(b"; detail=");
                    t.extend_from_slice(d.as_bytes());
                }
            }
            Status::Forward {
                fwd,
                fwd_status,
                stored,
                collapsed,
                detail,
            } => {
                t.extend_from_slice(b"sluice; fwd=");
                t.extend_from_slice(fwd.as_bytes());
                if let Some(s) = fwd_status {
                    t.extend_from_slice(b"; fwd-status=");
                    t.extend_from_slice(num.format(*s).as_bytes());
                }
                if *stored {
                    t.extend_from_slice(b"; stored");
                }
                if *collapsed {
                    t.extend_from_slice(b"; collapsed");
                }
                if let Some(d) = detail {
                    t.extend_from_slice(b"; detail=");
                    t.extend_from_slice(d.as_bytes());
                }
            }
            Status::ForwardedStale { detail } => {
                t.extend_from_slice(b"sluice; fwd=stale; detail=");
                t.extend_from_slice(detail.as_bytes());
            }
        }
        HeaderValue::from_maybe_shared(bytes::Bytes::from(t))
            .unwrap_or_else(|_| HeaderValue::from_static("sluice"))
    }
}

/// Seconds of freshness left (negative once stale).
pub(crate) fn ttl(entry: &Entry, age: Duration) -> i64 {
    let life = i64::try_from(entry.lifetime.as_secs()).unwrap_or(i64::MAX);
    let age = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
    life.saturating_sub(age)
}

/// The response for `method` with request head `req` from `entry`, whose
/// current age is `age`; `encoded` is a compressed copy of its body to send
/// instead.
pub fn from_entry(
    entry: &Entry,
    method: &Method,
    req: &HeaderMap,
    age: Duration,
    encoded: Option<(Coding, Bytes)>,
) -> Response<ProxyBody> {
    let mut headers = head_of(entry, age);
    let negotiated = encoded.is_some();
    let bytes = match encoded {
        Some((coding, bytes)) => {
            crate::compress::transformed_head(&mut headers, Some(coding), Some(bytes.len()));
            bytes
        }
        None => entry.body.clone(),
    };
    let len = Some(bytes.len() as u64);
    let rangeable = !negotiated;
    let body = |range: Option<(u64, u64)>| {
        Some(body::full(match range {
            Some((first, last)) => bytes.slice(first as usize..=last as usize),
            None => bytes.clone(),
        }))
    };
    let mut resp = answer(entry, method, req, headers, len, rangeable, body)
        .unwrap_or_else(|| Response::new(body::empty()));
    if negotiated && resp.status() == entry.status {
        resp.extensions_mut().insert(crate::compress::Negotiated);
    }
    resp
}

/// The response from an entry still filling: its head now, its body read
/// from the fill as it arrives. `None` when the fill no longer keeps the
/// bytes this answer needs (it became a relay).
pub(crate) fn from_fill(
    head: &Head,
    filling: &Arc<Filling>,
    method: &Method,
    req: &HeaderMap,
    age: Duration,
) -> Option<Response<ProxyBody>> {
    let headers = head_of(&head.entry, age);
    let body = |range: Option<(u64, u64)>| {
        let reader = match range {
            Some((first, last)) => filling.reader(first, Some(last + 1), false),
            None => filling.reader(0, head.length, true),
        };
        reader.map(filling::boxed)
    };
    answer(&head.entry, method, req, headers, head.length, true, body)
}

/// The response from an entry whose body (`len` bytes) stays in a second
/// tier and is streamed from it.
pub(crate) fn from_source(
    entry: &Entry,
    len: u64,
    source: &Arc<dyn super::tier::BodySource>,
    method: &Method,
    req: &HeaderMap,
    age: Duration,
) -> Response<ProxyBody> {
    let headers = head_of(entry, age);
    let body = |range: Option<(u64, u64)>| {
        Some(match range {
            Some((first, last)) => source.open(first, last + 1),
            None => source.open(0, len),
        })
    };
    answer(entry, method, req, headers, Some(len), true, body)
        .unwrap_or_else(|| Response::new(body::empty()))
}

/// Whether a request for an entry is answered with the whole stored
/// response, nothing but `Age` and `Cache-Status` depending on it: a GET
/// with no range and no condition. One pass over the request's fields
/// rather than a lookup for each.
pub(crate) fn is_plain(method: &Method, req: &HeaderMap) -> bool {
    method == Method::GET
        && !req.keys().any(|name| {
            name == header::RANGE
                || name == header::IF_NONE_MATCH
                || name == header::IF_MODIFIED_SINCE
        })
}

/// The answer to a plain request ([`is_plain`]) for `entry`, whose age is
/// `age`, with `status` as its `Cache-Status` (unless that is off): what
/// [`from_entry`] would answer, with the head taken from the entry's
/// [`HitHead`] when one was made in the same second.
pub(crate) fn plain(entry: &Entry, age: Duration, status: Option<&Status>) -> Response<ProxyBody> {
    let secs = age.as_secs();
    let headers = match entry.hit_head.get(secs, status) {
        Some(headers) => headers,
        None => {
            let headers = plain_head(entry, age, status);
            entry.hit_head.set(secs, status, &headers);
            headers
        }
    };
    let mut resp = Response::new(body::full(entry.body.clone()));
    *resp.status_mut() = entry.status;
    *resp.headers_mut() = headers;
    resp
}

/// [`plain`]'s answer as HTTP/1.1 bytes, for sluice's own writer (the
/// listener's hit lane): the head from the entry's [`HitHead`], encoded
/// once per second of age, and the body. `None` when the memo is busy
/// (another worker holds it) or the head is one hyper would change on its
/// way out (see [`Wire`]): the request then takes the general path.
pub(crate) fn plain_wire(entry: &Entry, age: Duration, status: Option<&Status>) -> Option<Wire> {
    entry
        .hit_head
        .wire(age.as_secs(), status, entry.status, || {
            plain_head(entry, age, status)
        })
}

/// The head of a plain hit, built: the stored head with `Age`,
/// `Content-Length` and `Cache-Status`.
fn plain_head(entry: &Entry, age: Duration, status: Option<&Status>) -> HeaderMap {
    let mut headers = head_of(entry, age);
    set_length(&mut headers, Some(entry.body.len() as u64));
    if let Some(status) = status {
        headers.insert(CACHE_STATUS.clone(), status.header_value());
    }
    headers
}

/// A plain hit's head as hyper's HTTP/1.1 server writes it (the status
/// line, then `name: value` per field in the map's order), split where
/// the request id goes: `bytes[..id_at]` ends with `x-request-id: `, the
/// rest is the line's end, the fields after it and the blank line.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    pub bytes: Bytes,
    pub id_at: usize,
}

impl Wire {
    /// `None` for a head hyper would not write as it is: a status without
    /// its standard reason phrase or one that carries no body, no `Date`
    /// (hyper adds one), any field hyper reads itself (`Connection`,
    /// `Transfer-Encoding`, `Trailer`), or no `Content-Length`.
    fn encode(status: StatusCode, headers: &HeaderMap) -> Option<Wire> {
        let reason = status.canonical_reason()?;
        if crate::headers::status_has_no_content(status)
            || !headers.contains_key(header::DATE)
            || !headers.contains_key(header::CONTENT_LENGTH)
            || headers.contains_key(header::CONNECTION)
            || headers.contains_key(header::TRANSFER_ENCODING)
            || headers.contains_key(header::TRAILER)
        {
            return None;
        }
        let id = &crate::request_id::X_REQUEST_ID;
        if headers.get_all(id).iter().count() != 1 {
            return None;
        }
        let text: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        let mut out = Vec::with_capacity(text + 32);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut id_at = 0;
        for (name, value) in headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            if name == id {
                id_at = out.len();
            } else {
                out.extend_from_slice(value.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Some(Wire {
            bytes: Bytes::from(out),
            id_at,
        })
    }
}

/// The head of an entry's plain hits ([`plain`]) for one second of its
/// age. The hits within that second clone it rather than build `Age`,
/// `Content-Length` and `Cache-Status` again (with a cache hit on every
/// request, about 1,000 instructions each). It also has the slot for the
/// request id ([`crate::request_id::slot`]), so that stamping the id
/// replaces a value instead of growing the head.
///
/// Shared by every worker: one that finds it locked builds its own head.
#[derive(Debug, Default)]
pub struct HitHead(Mutex<Option<Memo>>);

#[derive(Debug)]
struct Memo {
    age: u64,
    status: Option<Status>,
    headers: HeaderMap,
    /// The head encoded for the hit lane, once a hit there asked for it
    /// (`Some(None)`: it cannot be, see [`Wire::encode`]).
    wire: Option<Option<Wire>>,
}

impl Memo {
    fn new(age: u64, status: Option<&Status>, mut headers: HeaderMap) -> Memo {
        headers.insert(
            crate::request_id::X_REQUEST_ID.clone(),
            crate::request_id::slot(),
        );
        Memo {
            age,
            status: status.cloned(),
            headers,
            wire: None,
        }
    }

    fn is_for(&self, age: u64, status: Option<&Status>) -> bool {
        self.age == age && self.status.as_ref() == status
    }
}

/// A copy of an entry (refreshed, or read from another tier) makes its
/// own.
impl Clone for HitHead {
    fn clone(&self) -> Self {
        HitHead::default()
    }
}

impl HitHead {
    /// What the memo of an entry with `fields` stored fields may hold
    /// besides the entry's own values (which it shares), counted in the
    /// entry's weight from the start: the map of the fields and the ones a
    /// hit adds, and the new values of `Age` and `Cache-Status`.
    ///
    /// With the head's text (`text`, names and values), its [`Wire`]
    /// encoding: that text, the separators, the status line and the
    /// fields a hit adds.
    pub(crate) fn allowance(fields: usize, text: usize) -> usize {
        const FIELD: usize = std::mem::size_of::<(HeaderName, HeaderValue)>() + 16;
        const WIRE_EXTRA: usize = 64 + HIT_FIELDS * 64;
        (fields + HIT_FIELDS) * FIELD + 128 + text + fields * 4 + WIRE_EXTRA
    }

    fn get(&self, age: u64, status: Option<&Status>) -> Option<HeaderMap> {
        let memo = self.0.try_lock().ok()?;
        let memo = memo.as_ref()?;
        memo.is_for(age, status).then(|| memo.headers.clone())
    }

    fn set(&self, age: u64, status: Option<&Status>, headers: &HeaderMap) {
        let Ok(mut memo) = self.0.try_lock() else {
            return;
        };
        *memo = Some(Memo::new(age, status, headers.clone()));
    }

    /// The memo's head for `age` as [`Wire`] bytes, making the memo with
    /// `build` first when it is for another second.
    fn wire(
        &self,
        age: u64,
        status: Option<&Status>,
        code: StatusCode,
        build: impl FnOnce() -> HeaderMap,
    ) -> Option<Wire> {
        let mut memo = self.0.try_lock().ok()?;
        let memo = match &mut *memo {
            Some(m) if m.is_for(age, status) => m,
            other => other.insert(Memo::new(age, status, build())),
        };
        memo.wire
            .get_or_insert_with(|| Wire::encode(code, &memo.headers))
            .clone()
    }
}

/// The head an entry is served with: `Age` set, `Surrogate-Control` gone.
/// The fields a hit adds to the stored head: Age, Content-Length,
/// Cache-Status, X-Request-Id, Via.
pub(crate) const HIT_FIELDS: usize = 5;

fn head_of(entry: &Entry, age: Duration) -> HeaderMap {
    let mut headers = entry.headers.clone();
    // Room for the fields every hit adds, made once rather than field by
    // field (the stored head has it already: [`super::fill::stored_head`]).
    headers.reserve(HIT_FIELDS);
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
    headers.remove(&super::surrogate::SURROGATE_CONTROL);
    headers
}

/// `Content-Length: len`, or none when the length is not known.
fn set_length(headers: &mut HeaderMap, len: Option<u64>) {
    match len {
        // The stored head usually has it right already.
        Some(len) if !says_length(headers, len) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        Some(_) => {}
        None => {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
}

/// Whether `headers` has exactly one Content-Length, reading `len` as
/// sluice would write it.
fn says_length(headers: &HeaderMap, len: u64) -> bool {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.as_bytes() == itoa::Buffer::new().format(len).as_bytes(),
        _ => false,
    }
}

/// A 304, a 206/416 (when `len` is known and `rangeable`), a HEAD or the
/// whole body; `body` makes the body for an inclusive byte range or the
/// whole (`None` when it cannot).
fn answer(
    entry: &Entry,
    method: &Method,
    req: &HeaderMap,
    mut headers: HeaderMap,
    len: Option<u64>,
    rangeable: bool,
    body: impl FnOnce(Option<(u64, u64)>) -> Option<ProxyBody>,
) -> Option<Response<ProxyBody>> {
    if entry.status.is_success() {
        if let Some(resp) = not_modified(entry, req, &headers) {
            return Some(resp);
        }
    }
    let head_only = method == Method::HEAD;
    if let (StatusCode::OK, false, true, Some(len)) = (entry.status, head_only, rangeable, len) {
        if let Some(resolved) = range(entry, req, len) {
            return ranged(headers, len, resolved, body);
        }
    }
    set_length(&mut headers, len);
    let body = if head_only {
        body::empty()
    } else {
        body(None)?
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = entry.status;
    *resp.headers_mut() = headers;
    Some(resp)
}
/// Fields a 304 carries (RFC 9110 §15.4.5): those a 200 would have sent
/// that describe the stored representation's metadata.
const NOT_MODIFIED_FIELDS: [HeaderName; 8] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
    header::AGE,
];

/// 304 when the client's If-None-Match (or, without it, If-Modified-Since)
/// says it already has this representation (RFC 9110 §13.2.2).
fn not_modified(
    entry: &Entry,
    req: &HeaderMap,
    headers: &HeaderMap,
) -> Option<Response<ProxyBody>> {
    let matched = if req.contains_key(header::IF_NONE_MATCH) {
        conditional::none_match(req, entry.headers.get(header::ETAG))
    } else {
        let ims = req.get(header::IF_MODIFIED_SINCE)?;
        conditional::not_modified_since(ims, &entry.headers)
    };
    if !matched {
        return None;
    }
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    for name in &NOT_MODIFIED_FIELDS {
        for v in headers.get_all(name) {
            resp.headers_mut().append(name.clone(), v.clone());
        }
    }
    Some(resp)
}

/// The client's single byte range resolved against `len`: `Some(Some)`
/// for 206, `Some(None)` for 416, `None` to send the whole body (no Range,
/// several ranges, another unit, or an If-Range that does not match: all
/// allowed by RFC 9110 §14.2).
fn range(entry: &Entry, req: &HeaderMap, len: u64) -> Option<Option<(u64, u64)>> {
    let spec = req.get(header::RANGE)?.to_str().ok()?;
    if let Some(if_range) = req.get(header::IF_RANGE) {
        if !if_range_matches(if_range, &entry.headers) {
            return None;
        }
    }
    parse_range(spec, len)
}

/// 206 with the range's bytes, or 416.
fn ranged(
    headers: HeaderMap,
    len: u64,
    resolved: Option<(u64, u64)>,
    body: impl FnOnce(Option<(u64, u64)>) -> Option<ProxyBody>,
) -> Option<Response<ProxyBody>> {
    let mut resp = Response::new(body::empty());
    *resp.headers_mut() = headers;
    match resolved {
        Some((first, last)) => {
            *resp.body_mut() = body(Some((first, last)))?;
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        None => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
        }
    }
    Some(resp)
}

/// RFC 9110 §13.1.5: an entity-tag If-Range matches only a strong, equal
/// ETag; a date matches only an equal Last-Modified.
fn if_range_matches(if_range: &HeaderValue, stored: &HeaderMap) -> bool {
    let given = if_range.as_bytes();
    if given.starts_with(b"\"") {
        stored
            .get(header::ETAG)
            .is_some_and(|etag| etag.as_bytes() == given)
    } else if given.starts_with(b"W/") {
        false
    } else {
        stored
            .get(header::LAST_MODIFIED)
            .is_some_and(|lm| lm.as_bytes() == given)
    }
}

/// One `bytes=` range resolved against `len`: `None` = ignore the field
/// (not bytes, several ranges, malformed), `Some(None)` = unsatisfiable,
/// `Some(Some((first, last)))` = the inclusive byte positions.
pub fn parse_range(spec: &str, len: u64) -> Option<Option<(u64, u64)>> {
    let (unit, set) = spec.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return None;
    }
    let (first, last) = set.trim().split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        if !digits(last) {
            return None;
        }
        let n: u64 = last.parse().unwrap_or(u64::MAX);
        if n == 0 || len == 0 {
            return Some(None);
        }
        return Some(Some((len.saturating_sub(n), len - 1)));
    }
    if !digits(first) || !(last.is_empty() || digits(last)) {
        return None;
    }
    let first: u64 = first.parse().unwrap_or(u64::MAX);
    let last: u64 = if last.is_empty() {
        u64::MAX
    } else {
        last.parse().unwrap_or(u64::MAX)
    };
    if last < first {
        return None;
    }
    if first >= len {
        return Some(None);
    }
    Some(Some((first, last.min(len - 1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_s14_1_2_byte_ranges() {
        assert_eq!(parse_range("bytes=0-4", 10), Some(Some((0, 4))));
        assert_eq!(parse_range("bytes=5-", 10), Some(Some((5, 9))));
        assert_eq!(parse_range("bytes=-3", 10), Some(Some((7, 9))));
        assert_eq!(parse_range("bytes=-30", 10), Some(Some((0, 9))));
        assert_eq!(parse_range("bytes=8-100", 10), Some(Some((8, 9))));
        assert_eq!(parse_range("bytes=10-", 10), Some(None));
        assert_eq!(parse_range("bytes=-0", 10), Some(None));
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
        assert_eq!(parse_range("bytes=4-1", 10), None);
        assert_eq!(parse_range("bytes=a-b", 10), None);
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 10),
            Some(None)
        );
    }

    #[test]
    fn rfc9211_cache_status_values() {
        let hit = Status::Hit {
            ttl: 30,
            detail: None,
        };
        assert_eq!(hit.header_value(), "sluice; hit; ttl=30");
        let stored = Status::Forward {
            fwd: "miss",
            fwd_status: None,
            stored: true,
            collapsed: false,
            detail: None,
        };
        assert_eq!(stored.header_value(), "sluice; fwd=miss; stored");
        let revalidated = Status::Forward {
            fwd: "stale",
            fwd_status: Some(304),
            stored: false,
            collapsed: false,
            detail: None,
        };
        assert_eq!(
            revalidated.header_value(),
            "sluice; fwd=stale; fwd-status=304"
        );
    }

    fn entry(
        status: StatusCode,
        fields: &[(&'static str, &'static str)],
        body: &'static str,
    ) -> Entry {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(*name, HeaderValue::from_static(value));
        }
        Entry::fresh(
            status,
            headers,
            Bytes::from_static(body.as_bytes()),
            Duration::from_secs(60),
        )
    }

    /// A plain hit's answer is the general one's, field for field, whether
    /// its head was built or taken from the memo; the memo is used only
    /// within the same second and `Cache-Status` setting, and carries the
    /// request id's slot.
    #[test]
    fn a_plain_hit_answers_as_the_general_path_does() {
        let entries = [
            entry(
                StatusCode::OK,
                &[
                    ("content-type", "text/plain"),
                    ("content-length", "5"),
                    ("etag", "\"v\""),
                ],
                "hello",
            ),
            // No length stored, a wrong one, two, and surrogate control.
            entry(StatusCode::OK, &[("cache-control", "max-age=60")], "hello"),
            entry(StatusCode::NOT_FOUND, &[("content-length", "9")], "gone"),
            entry(
                StatusCode::OK,
                &[
                    ("content-length", "5"),
                    ("content-length", "5"),
                    ("surrogate-control", "max-age=9"),
                ],
                "hello",
            ),
        ];
        let without_id = |h: &HeaderMap| {
            let mut h = h.clone();
            h.remove(&crate::request_id::X_REQUEST_ID);
            h
        };
        for e in &entries {
            for (secs, status) in [(3, true), (3, true), (3, false), (4, true), (4, true)] {
                let age = Duration::from_secs(secs);
                let st = Status::Hit {
                    ttl: ttl(e, age),
                    detail: None,
                };
                let st = status.then_some(&st);
                let memo_before = e.hit_head.get(secs, st).is_some();
                let plain = plain(e, age, st);
                let mut general = from_entry(e, &Method::GET, &HeaderMap::new(), age, None);
                if let Some(st) = st {
                    general
                        .headers_mut()
                        .insert(CACHE_STATUS.clone(), st.header_value());
                }
                assert_eq!(plain.status(), general.status());
                assert_eq!(
                    without_id(plain.headers()),
                    *general.headers(),
                    "{e:?} at {secs}"
                );
                // Built: no slot. From the memo: the slot, for the stamp.
                let slot = plain.headers().get(&crate::request_id::X_REQUEST_ID);
                assert_eq!(slot.is_some(), memo_before, "{e:?} at {secs} {status}");
                assert!(slot.is_none_or(|v| v.is_empty()));
            }
        }
        assert!(is_plain(&Method::GET, &HeaderMap::new()));
        assert!(!is_plain(&Method::HEAD, &HeaderMap::new()));
        for name in ["range", "if-none-match", "if-modified-since"] {
            let mut h = HeaderMap::new();
            h.insert("accept", HeaderValue::from_static("*/*"));
            h.insert(name, HeaderValue::from_static("x"));
            assert!(!is_plain(&Method::GET, &h), "{name}");
        }
    }

    #[test]
    fn a_wire_head_is_hyper_s_encoding_split_at_the_request_id() {
        let mut h = HeaderMap::new();
        h.insert(
            header::DATE,
            HeaderValue::from_static("Sun, 06 Dec 2026 10:00:00 GMT"),
        );
        h.append("x-multi", HeaderValue::from_static("1"));
        h.append("x-multi", HeaderValue::from_static("2"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert(&crate::request_id::X_REQUEST_ID, crate::request_id::slot());
        h.insert(header::AGE, HeaderValue::from_static("3"));
        let wire = Wire::encode(StatusCode::NOT_FOUND, &h).expect("encodable");
        let (before, after) = wire.bytes.split_at(wire.id_at);
        assert_eq!(
            before,
            b"HTTP/1.1 404 Not Found\r\ndate: Sun, 06 Dec 2026 10:00:00 GMT\r\n\
              x-multi: 1\r\nx-multi: 2\r\ncontent-length: 5\r\nx-request-id: "
        );
        assert_eq!(after, b"\r\nage: 3\r\n\r\n");
        // Heads hyper would change on the way out are left to hyper.
        for (status, drop, add) in [
            (StatusCode::NO_CONTENT, None, None),
            (StatusCode::NOT_MODIFIED, None, None),
            (StatusCode::from_u16(299).unwrap(), None, None),
            (StatusCode::OK, Some(header::DATE), None),
            (StatusCode::OK, Some(header::CONTENT_LENGTH), None),
            (
                StatusCode::OK,
                Some(crate::request_id::X_REQUEST_ID.clone()),
                None,
            ),
            (StatusCode::OK, None, Some(header::CONNECTION)),
            (StatusCode::OK, None, Some(header::TRANSFER_ENCODING)),
            (StatusCode::OK, None, Some(header::TRAILER)),
        ] {
            let mut h = h.clone();
            if let Some(name) = &drop {
                h.remove(name);
            }
            if let Some(name) = &add {
                h.insert(name, HeaderValue::from_static("x"));
            }
            assert!(
                Wire::encode(status, &h).is_none(),
                "{status} {drop:?} {add:?}"
            );
        }
    }
}
