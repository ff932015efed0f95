//! Header rules of an HTTP intermediary (RFC 9110 §7.6): hop-by-hop fields
//! removed in both directions, a route's list of client fields removed,
//! `X-Forwarded-*`, `Forwarded` (RFC 7239) and `Via` added, and the
//! request's authority extracted and normalised for routing.
//!
//! Pure functions of a header map, tested below one rule at a time.
//!
//! The submodules hold the field grammar that the cache and compression
//! share, so neither has to reach into the other:
//! - [`cache_control`]: the Cache-Control field (RFC 9111 §5.2);
//! - [`conditional`]: entity-tags and conditional requests (RFC 9110 §13).

pub(crate) mod cache_control;
pub(crate) mod conditional;
pub(crate) mod grammar;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// A request's id (see [`crate::request_id`]).
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Field lines up to which [`values`] and [`contains`] look a name up by
/// walking the map rather than hashing the name: a request or response
/// head has a handful of fields, and comparing each name (a one-byte tag
/// for a standard name) costs less than `HeaderMap`'s hash and probe.
const SCAN_UP_TO: usize = 8;

/// The values of field `name` in order, as `headers.get_all(name)` gives
/// them. In a small map with no repeated field the name is looked for
/// among the fields' names, and the field at its place is the one value.
/// Always inlined, with the hashed lookup out of line: at each call site
/// the name is a constant (a standard name compares as one byte), and the
/// walk costs a few instructions per field, less than a call that has to
/// make room for both ways.
#[inline(always)]
pub(crate) fn values<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Values<'h> {
    if headers.len() <= SCAN_UP_TO && headers.keys_len() == headers.len() {
        let at = headers.keys().position(|key| key == name);
        return Values::One(at.and_then(|at| headers.values().nth(at)));
    }
    hashed(headers, name)
}

#[inline(never)]
fn hashed<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Values<'h> {
    Values::Hashed(headers.get_all(name).iter())
}

/// [`values`]' first, as `headers.get(name)`.
#[inline]
pub(crate) fn first<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    values(headers, name).next()
}

/// Whether `headers` has field `name`, as `headers.contains_key(name)`.
pub(crate) fn contains(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.len() > SCAN_UP_TO {
        return headers.contains_key(name);
    }
    headers.keys().any(|key| key == name)
}

/// Sets field `name` to `value` alone, as `headers.insert(name, value)`:
/// in a small map with no repeated field where `name` is present, by
/// overwriting its value in place, without hashing the name.
pub(crate) fn replace(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    if headers.len() <= SCAN_UP_TO && headers.keys_len() == headers.len() {
        if let Some(at) = headers.keys().position(|key| key == name) {
            if let Some(slot) = headers.values_mut().nth(at) {
                *slot = value;
                return;
            }
        }
    }
    headers.insert(name.clone(), value);
}

/// The iterator [`values`] returns.
pub(crate) enum Values<'h> {
    /// At most one value, found without hashing.
    One(Option<&'h HeaderValue>),
    Hashed(header::ValueIter<'h, HeaderValue>),
}

impl<'h> Iterator for Values<'h> {
    type Item = &'h HeaderValue;

    fn next(&mut self) -> Option<&'h HeaderValue> {
        match self {
            Values::One(value) => value.take(),
            Values::Hashed(values) => values.next(),
        }
    }
}

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1).
fn fixed_hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
    ]
}

/// The protocol token named by `Upgrade` when the request asks to switch
/// protocols (`Connection: upgrade` plus `Upgrade: <token>`), HTTP/1.1 only.
pub(crate) fn upgrade_request(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let wants = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    if !wants {
        return None;
    }
    first(headers, &header::UPGRADE).cloned()
}

/// The value of cookie `name` in the request's `Cookie` fields.
pub(crate) fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n == name).then_some(v.trim())
        })
}

/// Joins an HTTP/2 (or HTTP/3) request's `cookie` fields into one
/// `Cookie` line, pairs separated by `"; "`, for an HTTP/1.1 upstream
/// (RFC 9113 §8.2.3): HTTP/2 clients may send each cookie as its own field,
/// and many HTTP/1.1 servers read only the first `Cookie` line.
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = Vec::with_capacity(first.len() * 4);
    for (i, v) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Each part was a valid field value, and so is "; ".
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Whether an HTTP/1.1 request lets its connection carry another one after
/// it: HTTP/1.1, and no `Connection` token that says otherwise (`close`, an
/// upgrade) or that cannot be read. Errs on the side of "no".
pub(crate) fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && values(headers, &header::CONNECTION).all(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .map(str::trim)
                    .all(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("upgrade"))
            })
        })
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    values(headers, &header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes `Connection`, every field it names, and the fixed hop-by-hop set.
/// When `upgrade` is given, `Connection: upgrade` and `Upgrade` are put back
/// so the switch reaches the other side.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    // Most messages carry none of them (`Connection` included): one pass
    // over the field names, compared with the fixed set (standard names by
    // their tag), finds that out without a hash lookup per name. Every
    // forwarded request and response comes through here.
    let fixed = fixed_hop_by_hop();
    let present = headers
        .keys()
        .fold(0u8, |present, k| match fixed.iter().position(|f| *f == k) {
            Some(i) => present | 1 << i,
            None => present,
        });
    if present != 0 {
        // Only tokens beyond the fixed set and `close` name more fields:
        // the `Connection: keep-alive` that nginx and most origins send on
        // every response allocates nothing here.
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| {
                !t.eq_ignore_ascii_case("close")
                    && !fixed.iter().any(|f| t.eq_ignore_ascii_case(f.as_str()))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        for (i, name) in fixed.into_iter().enumerate() {
            if present & 1 << i != 0 {
                headers.remove(name);
            }
        }
    }
    if let Some(token) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, token.clone());
    }
}

/// Removes the client's `fields` (a route's `strip_request_headers`).
/// Usually none is present: one pass over the request's field names, each
/// first checked against the lengths in the list (one bit test), finds
/// that without a hash lookup per listed name; nothing is allocated.
pub(crate) fn strip_fields(headers: &mut HeaderMap, fields: &[HeaderName]) {
    fn length_bit(name: &HeaderName) -> u64 {
        1 << name.as_str().len().min(63)
    }
    let lengths = fields.iter().fold(0, |m, f| m | length_bit(f));
    let present = headers
        .keys()
        .any(|k| lengths & length_bit(k) != 0 && fields.contains(k));
    if present {
        for name in fields {
            headers.remove(name);
        }
    }
}

/// Who a request came from, for the forwarding fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hops {
    /// Whoever sent us the request: the connection's client (a PROXY
    /// header's source, else the TCP peer). Appended to `X-Forwarded-For`,
    /// as every proxy on the way does.
    pub previous: IpAddr,
    /// The client itself, found behind trusted forwarders; equal to
    /// `previous` otherwise. Named in `Forwarded: for=`.
    pub client: IpAddr,
}

/// The forwarding fields' values a connection's requests last got. Its
/// requests nearly all come from one client and name one authority: the
/// values are formatted (addresses as text, `Forwarded`) and checked once,
/// and each request takes copies, a reference count each. Boxed: every
/// connection has one, most never forward (all hits, or idle), and inline
/// it made an idle HTTP/1.1 connection 0.25 KiB larger.
#[derive(Debug, Default)]
pub(crate) struct LastForwarding(Mutex<Option<Box<Forwarding>>>);

impl LastForwarding {
    /// The fields for a client head `headers` (see [`Added`]): the previous
    /// hop appended to `X-Forwarded-For` (the chain as received is kept),
    /// `X-Forwarded-Proto` and `X-Forwarded-Host`, this hop's `Forwarded`
    /// element naming the client ([`forwarded_element`]) in place of any
    /// other, and this hop appended to `Via`; with the values this
    /// connection last used when they are for the same hops, scheme and
    /// authority.
    pub(crate) fn fields(
        &self,
        headers: &HeaderMap,
        hops: Hops,
        https: bool,
        authority: &str,
        version: Version,
    ) -> Added {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &*last {
            Some(known) if known.is_for(hops, https, authority) => known.fields(headers, version),
            _ => {
                let fresh = Forwarding::new(hops, https, authority);
                let added = fresh.fields(headers, version);
                *last = Some(Box::new(fresh));
                added
            }
        }
    }
}

/// The fields this hop sets on a request on its way upstream: the
/// forwarding fields, `Via`, and the request id. Kept beside the client's
/// head rather than put into its map: an HTTP/1.1 member's head is written
/// from both, the client's fields of these names left out
/// ([`replaces`](Self::replaces)). That spares every forwarded request
/// five or six insertions into the map and the growth they need, about
/// 5% of a proxied request's instructions. HTTP/2 members and
/// routes with header rules get them in the map ([`apply`](Self::apply)).
#[derive(Debug, Clone)]
pub(crate) struct Added {
    /// `X-Forwarded-For`: the chain received, the previous hop appended.
    forwarded_for: Option<HeaderValue>,
    https: bool,
    /// `X-Forwarded-Host`; none drops the client's.
    forwarded_host: Option<HeaderValue>,
    /// `Forwarded`; none drops the client's.
    forwarded: Option<HeaderValue>,
    /// The client's version, which `Via` names; appended to its `Via`.
    version: Version,
    /// `X-Request-Id`, in place of the client's, when the request has one.
    request_id: Option<HeaderValue>,
}

impl Added {
    /// These fields with the request id `id`.
    pub(crate) fn with_request_id(self, id: Option<HeaderValue>) -> Added {
        Added {
            request_id: id,
            ..self
        }
    }

    /// Whether a client's field named `name` gives way to these.
    pub(crate) fn replaces(&self, name: &HeaderName) -> bool {
        (self.forwarded_for.is_some() && name == X_FORWARDED_FOR)
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || name == header::FORWARDED
            || (self.request_id.is_some() && name == X_REQUEST_ID)
    }

    /// Calls `put` with each field, after the client's own.
    pub(crate) fn each(&self, mut put: impl FnMut(&HeaderName, &HeaderValue)) {
        if let Some(v) = &self.forwarded_for {
            put(&X_FORWARDED_FOR, v);
        }
        put(&X_FORWARDED_PROTO, &proto(self.https));
        if let Some(v) = &self.forwarded_host {
            put(&X_FORWARDED_HOST, v);
        }
        if let Some(v) = &self.forwarded {
            put(&header::FORWARDED, v);
        }
        put(&header::VIA, &via(self.version));
        if let Some(v) = &self.request_id {
            put(&X_REQUEST_ID, v);
        }
    }

    /// The first value of `name` a member is sent with the client's head
    /// `head`: what `get` on `head` with these applied would give.
    pub(crate) fn first(&self, head: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
        if !self.replaces(name) {
            return match head.get(name) {
                Some(v) => Some(v.clone()),
                None => (name == header::VIA).then(|| via(self.version)),
            };
        }
        let mut first = None;
        self.each(|n, v| {
            if first.is_none() && n == name {
                first = Some(v.clone());
            }
        });
        first
    }

    /// Puts the fields into the client's head `headers`: what a member
    /// gets from [`each`](Self::each) after the fields not
    /// [`replaced`](Self::replaces).
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        // Room for the fields added here and after (Host), made at once
        // rather than by growing the map field by field.
        headers.reserve(7);
        if let Some(v) = self.forwarded_for {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        headers.insert(X_FORWARDED_PROTO.clone(), proto(self.https));
        // (`insert` replaces every value the client sent; `remove` is for
        // when there is nothing to put in their place.)
        match self.forwarded_host {
            Some(v) => {
                headers.insert(X_FORWARDED_HOST.clone(), v);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
        match self.forwarded {
            Some(v) => {
                headers.insert(header::FORWARDED, v);
            }
            None => {
                headers.remove(header::FORWARDED);
            }
        }
        headers.append(header::VIA, via(self.version));
        if let Some(id) = self.request_id {
            headers.insert(X_REQUEST_ID.clone(), id);
        }
    }
}

fn proto(https: bool) -> HeaderValue {
    HeaderValue::from_static(if https { "https" } else { "http" })
}

/// This hop's forwarding values for one client, scheme and authority.
#[derive(Debug)]
struct Forwarding {
    hops: Hops,
    https: bool,
    authority: Box<str>,
    /// The previous hop's address: what `X-Forwarded-For` gets appended
    /// (always text that makes a field value).
    previous: Option<HeaderValue>,
    /// `X-Forwarded-Host`; none without an authority.
    host: Option<HeaderValue>,
    forwarded: Option<HeaderValue>,
}

impl Forwarding {
    fn new(hops: Hops, https: bool, authority: &str) -> Forwarding {
        let client = ip_text(hops.client.to_canonical());
        // Formatted once when they are one address (no trusted forwarder).
        let previous = (hops.previous.to_canonical() != hops.client.to_canonical())
            .then(|| ip_text(hops.previous.to_canonical()));
        // Without an authority (HTTP/1.0 with no Host) there is nothing to
        // report; never pass on a value the client made up.
        let host = (!authority.is_empty())
            .then(|| HeaderValue::from_str(authority).ok())
            .flatten();
        Forwarding {
            hops,
            https,
            authority: authority.into(),
            previous: HeaderValue::from_str(previous.as_deref().unwrap_or(&client))
                .ok()
                .map(shared),
            host: host.map(shared),
            forwarded: forwarded_element(&client, https, authority).map(shared),
        }
    }

    fn is_for(&self, hops: Hops, https: bool, authority: &str) -> bool {
        self.hops == hops && self.https == https && *self.authority == *authority
    }

    /// The fields for a client head `headers` (see
    /// [`LastForwarding::fields`]). The client's own `Forwarded` elements
    /// are claims nobody checked, as its `X-Forwarded-Host` and `-Proto`
    /// are: they are dropped, and the origin sees only what sluice saw.
    fn fields(&self, headers: &HeaderMap, version: Version) -> Added {
        Added {
            forwarded_for: self.previous.as_ref().and_then(|p| chain(headers, p)),
            https: self.https,
            forwarded_host: self.host.clone(),
            forwarded: self.forwarded.clone(),
            version,
            request_id: None,
        }
    }
}

/// `X-Forwarded-For` as received (its values trimmed, empty ones left
/// out) with `previous` appended.
fn chain(headers: &HeaderMap, previous: &HeaderValue) -> Option<HeaderValue> {
    let mut received = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if received.peek().is_none() {
        return Some(previous.clone());
    }
    let mut xff = Vec::new();
    for v in received {
        if let Ok(v) = v.to_str() {
            let v = v.trim();
            if !v.is_empty() {
                xff.extend_from_slice(v.as_bytes());
                xff.extend_from_slice(b", ");
            }
        }
    }
    xff.extend_from_slice(previous.as_bytes());
    HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)).ok()
}

/// `value`, to be copied for many requests: its bytes are shared now (the
/// first copy of a value made from a `Vec` moves them to a shared
/// allocation), so that every request's copy is a reference count.
fn shared(value: HeaderValue) -> HeaderValue {
    drop(value.clone());
    value
}

/// `ip` as text, an IPv4 address without `core::fmt` (whose padding and
/// width handling cost ten times as much, on every forwarded request).
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(digits.format(octet));
            }
            text
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

/// This hop's `Forwarded` element (RFC 7239 §4): `for` (the client's
/// address), `proto` and, when the request named one, `host`. A value that
/// is not a token is a quoted-string: an IPv6 address always is, in
/// brackets (§6), as is a host with a port.
fn forwarded_element(client: &str, https: bool, authority: &str) -> Option<HeaderValue> {
    let mut v = Vec::with_capacity(32 + client.len() + authority.len());
    v.extend_from_slice(b"for=");
    if client.contains(':') {
        v.extend_from_slice(b"\"[");
        v.extend_from_slice(client.as_bytes());
        v.extend_from_slice(b"]\"");
    } else {
        v.extend_from_slice(client.as_bytes());
    }
    v.extend_from_slice(if https {
        b";proto=https"
    } else {
        b";proto=http"
    });
    if !authority.is_empty() {
        v.extend_from_slice(b";host=");
        push_token_or_quoted(&mut v, authority);
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
}

/// `value` as a token when it is one, otherwise as a quoted-string (RFC
/// 9110 §5.6.4), `"` and `\` escaped.
fn push_token_or_quoted(out: &mut Vec<u8>, value: &str) {
    if !value.is_empty() && value.bytes().all(grammar::is_tchar) {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    out.push(b'"');
    for b in value.bytes() {
        if matches!(b, b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// This hop's `Via` entry: the protocol version received, then our name.
pub(crate) fn via(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_10 => "1.0 sluice",
        Version::HTTP_2 => "2 sluice",
        Version::HTTP_3 => "3 sluice",
        _ => "1.1 sluice",
    })
}

/// Why a request's authority was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    #[error("more than one Host field")]
    DuplicateHost,
    #[error("invalid Host")]
    InvalidHost,
    #[error("request target and Host name different hosts")]
    Mismatch,
}

/// The request's authority: [`host`](Authority::host) lower-cased without
/// port for routing, and [`authority`](Authority::authority) (host plus any
/// non-default port) to forward as `Host`. One string: the host is its
/// start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// Shared: a connection's requests nearly all name one authority
    /// ([`LastAuthority`]).
    text: Arc<str>,
    host_len: usize,
}

impl Authority {
    pub fn host(&self) -> &str {
        self.text.get(..self.host_len).unwrap_or_default()
    }

    pub fn authority(&self) -> &str {
        &self.text
    }
}

/// Extracts the authority from the target URI and the Host field (RFC 9112
/// §3.2, RFC 9113 §8.3.1). HTTP/1.1 requires Host; when the target is in
/// absolute form (or HTTP/2 sends `:authority`), the two must agree.
pub fn authority(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    https: bool,
) -> Result<Authority, AuthorityError> {
    authority_by(version, uri, headers, |raw| normalise(raw, https))
}

/// The authority a connection's requests last named, with the bytes it was
/// read from. The requests on one connection (keep-alive, or HTTP/2
/// streams) nearly always name the same site: a request naming the same
/// bytes takes the checked result instead of checking them again.
#[derive(Debug, Default)]
pub(crate) struct LastAuthority(Mutex<Option<(Box<[u8]>, Authority)>>);

impl LastAuthority {
    /// [`authority`], for a request on this connection.
    pub(crate) fn authority(
        &self,
        version: Version,
        uri: &Uri,
        headers: &HeaderMap,
        https: bool,
    ) -> Result<Authority, AuthorityError> {
        authority_by(version, uri, headers, |raw| self.normalise(raw, https))
    }

    fn normalise(&self, raw: &[u8], https: bool) -> Result<Authority, AuthorityError> {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((bytes, known)) = &*last {
            if **bytes == *raw {
                return Ok(known.clone());
            }
        }
        let fresh = normalise(raw, https)?;
        *last = Some((raw.into(), fresh.clone()));
        Ok(fresh)
    }
}

fn authority_by(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    mut normalise: impl FnMut(&[u8]) -> Result<Authority, AuthorityError>,
) -> Result<Authority, AuthorityError> {
    let mut hosts = values(headers, &header::HOST);
    let host_field = hosts.next();
    if hosts.next().is_some() {
        return Err(AuthorityError::DuplicateHost);
    }
    let from_field = match host_field {
        Some(v) => Some(normalise(v.as_bytes())?),
        None => None,
    };
    let from_uri = match uri.authority() {
        Some(a) => Some(normalise(a.as_str().as_bytes())?),
        None => None,
    };
    match (from_uri, from_field) {
        (Some(u), Some(f)) if u != f => Err(AuthorityError::Mismatch),
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) if version == Version::HTTP_10 || version == Version::HTTP_09 => {
            Ok(Authority {
                text: Arc::from(""),
                host_len: 0,
            })
        }
        (None, None) => Err(AuthorityError::MissingHost),
    }
}

/// A Host value (or a target's authority) checked and normalised: the host
/// lower-cased without trailing dots, the port dropped when it is the
/// scheme's default.
///
/// A registered name or IPv4 address, as every request has, is read in one
/// pass: host characters up to a colon, then the port's digits; any other
/// byte (`@`, a second colon, non-ASCII) makes it invalid.
fn normalise(raw: &[u8], https: bool) -> Result<Authority, AuthorityError> {
    if raw.first() == Some(&b'[') {
        return bracketed(raw, https);
    }
    let split = raw
        .iter()
        .position(|&b| !is_host_byte(b))
        .unwrap_or(raw.len());
    let (host, rest) = raw.split_at(split);
    let port = match rest.split_first() {
        None => None,
        Some((b':', digits)) => Some(port_of(digits)?),
        Some(_) => return Err(AuthorityError::InvalidHost),
    };
    finish(host, port, https)
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

/// An IPv6 literal: "[::1]" or "[::1]:8080".
fn bracketed(raw: &[u8], https: bool) -> Result<Authority, AuthorityError> {
    let text = std::str::from_utf8(raw).map_err(|_| AuthorityError::InvalidHost)?;
    if text.contains('@') {
        return Err(AuthorityError::InvalidHost);
    }
    let end = text.find(']').ok_or(AuthorityError::InvalidHost)?;
    text[1..end]
        .parse::<std::net::Ipv6Addr>()
        .map_err(|_| AuthorityError::InvalidHost)?;
    let port = match &raw[end + 1..] {
        [] => None,
        [b':', digits @ ..] => Some(port_of(digits)?),
        _ => return Err(AuthorityError::InvalidHost),
    };
    finish(&raw[..=end], port, https)
}

/// A port: one or more digits (leading zeros allowed), at most 65535.
fn port_of(digits: &[u8]) -> Result<u16, AuthorityError> {
    if digits.is_empty() {
        return Err(AuthorityError::InvalidHost);
    }
    digits.iter().try_fold(0u16, |n, &d| {
        if !d.is_ascii_digit() {
            return Err(AuthorityError::InvalidHost);
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u16::from(d - b'0')))
            .ok_or(AuthorityError::InvalidHost)
    })
}

/// The authority of `host` (checked ASCII) and `port`, in one string.
fn finish(host: &[u8], port: Option<u16>, https: bool) -> Result<Authority, AuthorityError> {
    let default = if https { 443 } else { 80 };
    let port = port.filter(|&p| p != default);
    let trimmed = host.len() - host.iter().rev().take_while(|&&b| b == b'.').count();
    let host = std::str::from_utf8(&host[..trimmed]).map_err(|_| AuthorityError::InvalidHost)?;
    if host.is_empty() {
        // Empty, or only dots: nothing left to route on.
        return Err(AuthorityError::InvalidHost);
    }
    let mut text = String::with_capacity(host.len() + 6);
    text.push_str(host);
    text.make_ascii_lowercase();
    let host_len = text.len();
    if let Some(p) = port {
        text.push(':');
        text.push_str(itoa::Buffer::new().format(p));
    }
    Ok(Authority {
        text: Arc::from(text),
        host_len,
    })
}

/// Whether a response with `status` carries no content whatever its
/// fields say: 1xx, 204 and 304 (RFC 9110 §6.4.1).
pub(crate) fn status_has_no_content(status: http::StatusCode) -> bool {
    status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
}

/// A message's `Content-Length` as a number (`None` when absent or not one).
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Methods whose repetition has the same effect as one call (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A header map of `pairs`, in order (repeated names append), for unit
/// tests across the crate.
#[cfg(test)]
pub(crate) fn test_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::test_map as map;
    use super::*;

    /// Every map of up to 11 field lines over a few names (standard and
    /// custom, repeated or not, appended in any order): [`values`],
    /// [`first`], [`contains`] and [`replace`] do as `get_all`, `get`,
    /// `contains_key` and `insert`, on both sides of [`SCAN_UP_TO`].
    #[test]
    fn lookups_by_walking_agree_with_hashing() {
        let names = ["host", "connection", "x-request-id", "x-other"];
        let mut seed = 0x9e37_79b9_u32;
        for len in 0..12 {
            for _ in 0..200 {
                let pairs: Vec<(&str, String)> = (0..len)
                    .map(|i| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        (names[seed as usize % names.len()], format!("v{i}"))
                    })
                    .collect();
                let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let h = map(&refs);
                for name in names.iter().chain(&["absent"]) {
                    let name = HeaderName::from_static(name);
                    let want: Vec<_> = h.get_all(&name).iter().collect();
                    assert_eq!(values(&h, &name).collect::<Vec<_>>(), want, "{h:?} {name}");
                    assert_eq!(first(&h, &name), h.get(&name));
                    assert_eq!(contains(&h, &name), h.contains_key(&name));
                    let (mut replaced, mut inserted) = (h.clone(), h.clone());
                    replace(&mut replaced, &name, HeaderValue::from_static("new"));
                    inserted.insert(&name, HeaderValue::from_static("new"));
                    let fields = |m: &HeaderMap| -> Vec<(HeaderName, HeaderValue)> {
                        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
                    };
                    assert_eq!(fields(&replaced), fields(&inserted), "{h:?} {name}");
                }
            }
        }
    }

    #[test]
    fn rfc9110_7_6_1_connection_and_named_fields_are_removed() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn rfc9110_7_6_1_tokens_naming_the_fixed_set_or_close_still_strip_the_rest() {
        let mut h = map(&[
            ("connection", "Keep-Alive, CLOSE, te, X-Named"),
            ("keep-alive", "timeout=5"),
            ("x-named", "1"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn rfc9110_7_6_1_each_fixed_field_alone_is_removed() {
        for name in fixed_hop_by_hop() {
            let mut h = map(&[(name.as_str(), "x"), ("x-kept", "yes")]);
            strip_hop_by_hop(&mut h, None);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
            assert_eq!(h["x-kept"], "yes");
        }
        let mut h = map(&[("host", "a"), ("x-kept", "yes"), ("x-kept", "too")]);
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 3, "nothing hop-by-hop: {h:?}");
    }

    #[test]
    fn addresses_are_written_as_displayed() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.3.45",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn rfc9113_8_2_3_cookie_fields_are_joined() {
        let mut h = map(&[
            ("cookie", "a=1"),
            ("x-other", "y"),
            ("cookie", "b=2"),
            ("cookie", "c=3"),
        ]);
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        assert_eq!(h["x-other"], "y");
        // One field (or none) is left as it is.
        let mut h = map(&[("cookie", "a=1; b=2")]);
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut h = map(&[("x-other", "y")]);
        join_cookies(&mut h);
        assert!(!h.contains_key("cookie"));
    }

    #[test]
    fn keeps_alive_only_for_plain_http11_requests() {
        type Case<'a> = (Version, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            (Version::HTTP_11, &[], true),
            (Version::HTTP_11, &[("connection", "keep-alive")], true),
            (
                Version::HTTP_11,
                &[("connection", "Keep-Alive, X-Trace")],
                true,
            ),
            (Version::HTTP_11, &[("connection", "close")], false),
            (Version::HTTP_11, &[("connection", "x, CLOSE")], false),
            (Version::HTTP_11, &[("connection", "upgrade")], false),
            (Version::HTTP_10, &[], false),
            (Version::HTTP_10, &[("connection", "keep-alive")], false),
            (Version::HTTP_2, &[], false),
        ];
        for (version, fields, expected) in cases {
            let h = map(fields);
            assert_eq!(
                keeps_alive(*version, &h),
                *expected,
                "{version:?} {fields:?}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"\xffclose").unwrap(),
        );
        assert!(!keeps_alive(Version::HTTP_11, &h), "an unreadable value");
    }

    #[test]
    fn rfc9110_7_8_upgrade_survives_when_tunnelling() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let token = upgrade_request(Version::HTTP_11, &h).expect("upgrade");
        strip_hop_by_hop(&mut h, Some(&token));
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn upgrade_needs_connection_token_and_http11() {
        let h = map(&[("upgrade", "websocket")]);
        assert!(upgrade_request(Version::HTTP_11, &h).is_none());
        let h = map(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(upgrade_request(Version::HTTP_11, &h).is_some());
        assert!(upgrade_request(Version::HTTP_2, &h).is_none());
    }

    #[test]
    fn forwarding_headers_append_and_set() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("via", "1.0 fred"),
        ]);
        let ip = "::ffff:127.0.0.9".parse().unwrap();
        forward(&mut h, ip, ip, false, "example.com");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        let via: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(via, ["1.0 fred", "1.1 sluice"]);
    }

    /// Behind a trusted forwarder, the chain as received gets that
    /// forwarder appended, and `Forwarded` names the client it found.
    #[test]
    fn forwarding_behind_a_trusted_forwarder_names_the_client() {
        let mut h = map(&[("x-forwarded-for", "192.0.2.7")]);
        forward(
            &mut h,
            "10.0.0.5".parse().unwrap(),
            "192.0.2.7".parse().unwrap(),
            false,
            "example.com",
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.7, 10.0.0.5");
        assert_eq!(h["forwarded"], "for=192.0.2.7;proto=http;host=example.com");
    }

    #[test]
    fn the_clients_x_forwarded_host_is_replaced_or_dropped() {
        for (authority, expected) in [("example.com", &["example.com"][..]), ("", &[])] {
            let mut h = map(&[("x-forwarded-host", "evil"), ("x-forwarded-host", "evil2")]);
            let ip = "10.0.0.1".parse().unwrap();
            forward(&mut h, ip, ip, false, authority);
            let sent: Vec<_> = h.get_all("x-forwarded-host").iter().collect();
            assert_eq!(sent, expected, "authority {authority:?}");
        }
    }

    impl LastForwarding {
        /// The fields put into the head, as HTTP/2 members get them.
        fn add_to(
            &self,
            headers: &mut HeaderMap,
            hops: Hops,
            https: bool,
            authority: &str,
            version: Version,
        ) {
            self.fields(headers, hops, https, authority, version)
                .apply(headers);
        }
    }

    /// The forwarding fields for an HTTP/1.1 request from `client`,
    /// received from `previous`, on a new connection.
    fn forward(h: &mut HeaderMap, previous: IpAddr, client: IpAddr, https: bool, authority: &str) {
        LastForwarding::default().add_to(
            h,
            Hops { previous, client },
            https,
            authority,
            Version::HTTP_11,
        );
    }

    /// The forwarding fields as they were added before a connection kept
    /// their values (formatted for every request), kept as the oracle for
    /// [`LastForwarding`].
    fn reference_forwarding(
        headers: &mut HeaderMap,
        hops: Hops,
        https: bool,
        authority: &str,
        version: Version,
    ) {
        let client = ip_text(hops.client.to_canonical());
        let previous = (hops.previous.to_canonical() != hops.client.to_canonical())
            .then(|| ip_text(hops.previous.to_canonical()));
        let client = client.as_str();
        let mut xff = String::new();
        for v in headers.get_all(&X_FORWARDED_FOR).iter() {
            if let Ok(v) = v.to_str() {
                let v = v.trim();
                if !v.is_empty() {
                    xff.push_str(v);
                    xff.push_str(", ");
                }
            }
        }
        xff.push_str(previous.as_deref().unwrap_or(client));
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if https { "https" } else { "http" }),
        );
        let host = (!authority.is_empty())
            .then(|| HeaderValue::from_str(authority).ok())
            .flatten();
        match host {
            Some(v) => {
                headers.insert(X_FORWARDED_HOST.clone(), v);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
        match forwarded_element(client, https, authority) {
            Some(v) => {
                headers.insert(header::FORWARDED, v);
            }
            None => {
                headers.remove(header::FORWARDED);
            }
        }
        headers.append(header::VIA, via(version));
    }

    /// A connection's kept values give every request the fields the
    /// per-request formatting gave, whatever the order of its requests'
    /// clients, schemes and authorities: IPv4, IPv6 and IPv4-mapped
    /// clients, trusted chains, a received `X-Forwarded-For` (odd values
    /// included), `Forwarded` and `X-Forwarded-Host` to replace, no
    /// authority.
    #[test]
    fn kept_forwarding_values_agree_with_formatting_them_each_time() {
        let ips: [IpAddr; 4] = [
            "192.0.2.7".parse().unwrap(),
            "::ffff:10.0.0.9".parse().unwrap(),
            "2001:db8::17".parse().unwrap(),
            "10.0.0.9".parse().unwrap(),
        ];
        let received: [&[(&str, &str)]; 6] = [
            &[],
            &[("x-forwarded-for", "203.0.113.1")],
            &[
                ("x-forwarded-for", " 203.0.113.1 , 198.51.100.2"),
                ("x-forwarded-for", ""),
                ("x-forwarded-for", "2001:db8::1"),
            ],
            &[
                ("forwarded", "for=6.6.6.6"),
                ("x-forwarded-host", "evil"),
                ("x-forwarded-proto", "https"),
                ("via", "1.0 fred"),
            ],
            &[("x-forwarded-for", "unknown"), ("host", "a.example")],
            &[
                ("x-request-id", "from-the-client"),
                ("via", "1.0 a"),
                ("via", "1.1 b"),
            ],
        ];
        let authorities = ["example.com", "example.com:8080", "[::1]:8443", ""];
        let versions = [Version::HTTP_11, Version::HTTP_10, Version::HTTP_2];
        let last = LastForwarding::default();
        let mut cases = 0;
        for round in 0..2 {
            for (i, &previous) in ips.iter().enumerate() {
                for &client in &ips[i..] {
                    for https in [false, true] {
                        for authority in authorities {
                            for fields in received {
                                let version = versions[cases % versions.len()];
                                let hops = Hops { previous, client };
                                let mut expected = map(fields);
                                reference_forwarding(
                                    &mut expected,
                                    hops,
                                    https,
                                    authority,
                                    version,
                                );
                                let mut got = map(fields);
                                last.add_to(&mut got, hops, https, authority, version);
                                assert_eq!(
                                    got.iter().collect::<Vec<_>>(),
                                    expected.iter().collect::<Vec<_>>(),
                                    "round {round}: {hops:?} https={https} {authority:?} {fields:?}"
                                );
                                // An HTTP/1.1 member is sent the client's
                                // fields not replaced, then the added ones:
                                // the same fields as the map gets, each
                                // name's values in the same order.
                                let head = map(fields);
                                let added = last
                                    .fields(&head, hops, https, authority, version)
                                    .with_request_id(Some(HeaderValue::from_static("id-1")));
                                let mut written: Vec<(String, String)> = head
                                    .iter()
                                    .filter(|(name, _)| !added.replaces(name))
                                    .map(|(n, v)| (n.to_string(), format!("{v:?}")))
                                    .collect();
                                added.each(|n, v| written.push((n.to_string(), format!("{v:?}"))));
                                let mut applied = map(fields);
                                added.clone().apply(&mut applied);
                                for name in [
                                    "x-forwarded-for",
                                    "x-forwarded-proto",
                                    "x-forwarded-host",
                                    "forwarded",
                                    "via",
                                    "x-request-id",
                                    "host",
                                ] {
                                    let name = HeaderName::from_static(name);
                                    assert_eq!(
                                        added.first(&head, &name).as_ref(),
                                        applied.get(&name),
                                        "{name} {fields:?}"
                                    );
                                }
                                let mut applied: Vec<(String, String)> = applied
                                    .iter()
                                    .map(|(n, v)| (n.to_string(), format!("{v:?}")))
                                    .collect();
                                // Stable: each name's values keep their order.
                                written.sort_by(|a, b| a.0.cmp(&b.0));
                                applied.sort_by(|a, b| a.0.cmp(&b.0));
                                assert_eq!(written, applied, "{hops:?} {authority:?} {fields:?}");
                                assert!(written.iter().any(|(n, _)| n == "x-request-id"));
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(cases > 500);
    }

    fn forwarded_for(client: &str, https: bool, authority: &str, sent: &[&str]) -> Vec<String> {
        let pairs: Vec<(&str, &str)> = sent.iter().map(|v| ("forwarded", *v)).collect();
        let mut h = map(&pairs);
        let ip = client.parse().unwrap();
        forward(&mut h, ip, ip, https, authority);
        h.get_all("forwarded")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn rfc7239_4_the_clients_forwarded_is_replaced_by_this_hops_element() {
        assert_eq!(
            forwarded_for(
                "192.0.2.60",
                false,
                "example.com",
                &["for=6.6.6.6", "for=unknown;host=evil"]
            ),
            ["for=192.0.2.60;proto=http;host=example.com"]
        );
        assert_eq!(
            forwarded_for("::ffff:10.0.0.1", true, "a.example", &[]),
            ["for=10.0.0.1;proto=https;host=a.example"]
        );
        // Without an authority (HTTP/1.0 without Host): no host parameter.
        assert_eq!(
            forwarded_for("10.0.0.1", false, "", &[]),
            ["for=10.0.0.1;proto=http"]
        );
    }

    #[test]
    fn rfc7239_6_ipv6_and_non_token_values_are_quoted() {
        // §6: an IPv6 address is bracketed, and so quoted.
        assert_eq!(
            forwarded_for("2001:db8:cafe::17", false, "example.com", &[]),
            ["for=\"[2001:db8:cafe::17]\";proto=http;host=example.com"]
        );
        // §5.3: a host with a port, or an IPv6 literal, is not a token.
        assert_eq!(
            forwarded_for("10.0.0.1", false, "example.com:8080", &[]),
            ["for=10.0.0.1;proto=http;host=\"example.com:8080\""]
        );
        assert_eq!(
            forwarded_for("::1", false, "[::1]:8080", &[]),
            ["for=\"[::1]\";proto=http;host=\"[::1]:8080\""]
        );
        let mut quoted = Vec::new();
        push_token_or_quoted(&mut quoted, "a\"b\\c");
        assert_eq!(quoted, b"\"a\\\"b\\\\c\"");
    }

    #[test]
    fn a_routes_strip_list_removes_exactly_those_fields() {
        let mut h = map(&[
            ("x-original-url", "/admin"),
            ("X-Real-IP", "6.6.6.6"),
            ("x-kept", "yes"),
        ]);
        let list = [
            HeaderName::from_static("x-original-url"),
            HeaderName::from_static("x-real-ip"),
        ];
        strip_fields(&mut h, &list);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    fn auth(version: Version, uri: &str, host: &[&str]) -> Result<Authority, AuthorityError> {
        let pairs: Vec<(&str, &str)> = host.iter().map(|h| ("host", *h)).collect();
        authority(version, &uri.parse().unwrap(), &map(&pairs), false)
    }

    #[test]
    fn rfc9112_3_2_http11_requires_host() {
        assert_eq!(
            auth(Version::HTTP_11, "/", &[]),
            Err(AuthorityError::MissingHost)
        );
        assert!(auth(Version::HTTP_10, "/", &[]).is_ok());
    }

    #[test]
    fn rfc9112_3_2_duplicate_or_invalid_host_rejected() {
        assert_eq!(
            auth(Version::HTTP_11, "/", &["a.com", "b.com"]),
            Err(AuthorityError::DuplicateHost)
        );
        for bad in [
            "a b.com",
            "a.com:80x",
            "a.com:",
            "user@a.com",
            "a/b",
            "[::1",
            "[zz]:80",
            "a.com:99999",
        ] {
            assert_eq!(
                auth(Version::HTTP_11, "/", &[bad]),
                Err(AuthorityError::InvalidHost),
                "{bad}"
            );
        }
    }

    #[test]
    fn authority_is_normalised() {
        let a = auth(Version::HTTP_11, "/", &["Example.COM:80"]).unwrap();
        assert_eq!(a.host(), "example.com");
        assert_eq!(a.authority(), "example.com");
        let a = auth(Version::HTTP_11, "/", &["example.com:8080"]).unwrap();
        assert_eq!(a.host(), "example.com");
        assert_eq!(a.authority(), "example.com:8080");
        let a = auth(Version::HTTP_11, "/", &["[::1]:80"]).unwrap();
        assert_eq!(a.host(), "[::1]");
    }

    #[test]
    fn fuzz_regression_host_of_only_dots_is_invalid() {
        // Found by fuzz/authority: ".:8464" normalised to the empty host
        // with authority ":8464", which itself did not normalise.
        for bad in [".", "..", ".:8464", "...:80"] {
            assert_eq!(
                auth(Version::HTTP_11, "/", &[bad]),
                Err(AuthorityError::InvalidHost),
                "{bad}"
            );
        }
        assert_eq!(
            auth(Version::HTTP_2, "http://.:8080/", &[]),
            Err(AuthorityError::InvalidHost)
        );
        assert_eq!(auth(Version::HTTP_11, "/", &["a.."]).unwrap().host(), "a");
    }

    /// The authority check as it was written before its one-pass form
    /// (string splitting), kept as the oracle for it.
    fn reference(raw: &[u8], https: bool) -> Result<(String, usize), AuthorityError> {
        let text = std::str::from_utf8(raw).map_err(|_| AuthorityError::InvalidHost)?;
        if text.is_empty() || text.contains('@') {
            return Err(AuthorityError::InvalidHost);
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let end = rest.find(']').ok_or(AuthorityError::InvalidHost)?;
            rest[..end]
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| AuthorityError::InvalidHost)?;
            let after = &rest[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(AuthorityError::InvalidHost),
            };
            (&text[..end + 2], port)
        } else {
            match text.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (text, None),
            }
        };
        if !host.starts_with('[') && (host.is_empty() || !host.bytes().all(is_host_byte)) {
            return Err(AuthorityError::InvalidHost);
        }
        let port = match port {
            None => None,
            Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(AuthorityError::InvalidHost)
            }
            Some(p) => Some(p.parse::<u16>().map_err(|_| AuthorityError::InvalidHost)?),
        };
        let port = port.filter(|&p| p != if https { 443 } else { 80 });
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err(AuthorityError::InvalidHost);
        }
        let host_len = host.len();
        Ok(match port {
            Some(p) => (format!("{host}:{p}"), host_len),
            None => (host, host_len),
        })
    }

    #[test]
    fn one_pass_authority_agrees_with_the_reference_on_every_one_byte_edit() {
        let seeds: [&[u8]; 10] = [
            b"Example.COM:8080",
            b"a.b-c_d:80",
            b"127.0.0.1:443",
            b"[::1]:8080",
            b"[2001:DB8::1]",
            b"host..:65535",
            b"h:0080",
            b"x",
            b"a:65536",
            b"user@host:80",
        ];
        let bytes = [
            b'a', b'Z', b'0', b'9', b':', b'.', b'-', b'_', b'@', b'[', b']', b' ', b'/', b'%',
            0x80, 0xff,
        ];
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for seed in seeds {
            inputs.push(seed.to_vec());
            for i in 0..=seed.len() {
                for &b in &bytes {
                    let mut v = seed.to_vec();
                    v.insert(i, b);
                    inputs.push(v);
                    if i < seed.len() {
                        let mut v = seed.to_vec();
                        v[i] = b;
                        inputs.push(v);
                    }
                }
                if i < seed.len() {
                    let mut v = seed.to_vec();
                    v.remove(i);
                    inputs.push(v);
                }
            }
        }
        for raw in &inputs {
            for https in [false, true] {
                let got = normalise(raw, https).map(|a| (a.text.to_string(), a.host_len));
                assert_eq!(
                    got,
                    reference(raw, https),
                    "{:?} https={https}",
                    String::from_utf8_lossy(raw)
                );
            }
        }
    }

    #[test]
    fn a_connection_remembers_its_last_authority_and_checks_a_new_one() {
        let last = LastAuthority::default();
        let ask = |host: &str| {
            last.authority(
                Version::HTTP_11,
                &"/".parse().unwrap(),
                &map(&[("host", host)]),
                false,
            )
        };
        let a = ask("Example.COM:80").unwrap();
        assert_eq!(a.authority(), "example.com");
        let again = ask("Example.COM:80").unwrap();
        assert!(Arc::ptr_eq(&a.text, &again.text), "the remembered answer");
        assert_eq!(
            ask("other.example:8080").unwrap().authority(),
            "other.example:8080"
        );
        assert_eq!(ask("bad host"), Err(AuthorityError::InvalidHost));
        // A refused one is not remembered; the last good one still is.
        assert_eq!(ask("bad host"), Err(AuthorityError::InvalidHost));
        let h2 = last.authority(
            Version::HTTP_2,
            &"https://other.example:8080/x".parse().unwrap(),
            &HeaderMap::new(),
            false,
        );
        assert_eq!(h2.unwrap().host(), "other.example");
        assert_eq!(
            last.authority(
                Version::HTTP_11,
                &"http://a.com/x".parse().unwrap(),
                &map(&[("host", "b.com")]),
                false
            ),
            Err(AuthorityError::Mismatch)
        );
    }

    #[test]
    fn absolute_form_must_agree_with_host() {
        assert!(auth(Version::HTTP_11, "http://a.com/x", &["A.com:80"]).is_ok());
        assert_eq!(
            auth(Version::HTTP_11, "http://a.com/x", &["b.com"]),
            Err(AuthorityError::Mismatch)
        );
    }

    #[test]
    fn rfc9113_8_3_1_authority_without_host_is_enough() {
        let a = auth(Version::HTTP_2, "https://a.com/x", &[]).unwrap();
        assert_eq!(a.host(), "a.com");
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&http::Method::GET));
        assert!(is_idempotent(&http::Method::PUT));
        assert!(!is_idempotent(&http::Method::POST));
        assert!(!is_idempotent(&http::Method::PATCH));
    }
}
