//! Request ids: the `X-Request-Id` a client sent is kept when it is 1 to 128
//! characters of `A-Z a-z 0-9 . _ : -`; otherwise (absent, malformed, or
//! repeated) sluice generates a UUID v4. The id goes upstream, back to the
//! client, into the access log and into the request's tracing span.

use std::cell::RefCell;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

pub(crate) use crate::headers::X_REQUEST_ID;

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
    crate::headers::replace(headers, &X_REQUEST_ID, id);
}

/// The value a response head is built with where the request id will go:
/// [`stamp`] then replaces it rather than adding a field (which grows the
/// head, a reallocation). Every response leaves `proxy::handle` stamped.
pub(crate) fn slot() -> HeaderValue {
    HeaderValue::from_static("")
}

/// The length of a UUID's text (8-4-4-4-12 hex digits).
const UUID_LEN: usize = 36;

/// Ids formatted at a time into one buffer, of which each request takes
/// its slice: one allocation per batch instead of one per id, and the
/// copies of an id (upstream request, response, access log) share it by a
/// reference count.
const BATCH: usize = 32;

thread_local! {
    /// This worker's ids formatted ahead, not yet taken.
    static AHEAD: RefCell<Bytes> = const { RefCell::new(Bytes::new()) };
}

/// A random UUID v4. The random bits come from `fastrand` (seeded once per
/// thread): unique enough for correlating logs, and no system call per
/// request.
pub fn generate() -> HeaderValue {
    let text = AHEAD.with(|ahead| {
        let mut ahead = ahead.borrow_mut();
        if ahead.is_empty() {
            let mut batch = Vec::with_capacity(BATCH * UUID_LEN);
            for _ in 0..BATCH {
                batch.extend_from_slice(&uuid_v4_text(fastrand::u128(..)));
            }
            *ahead = Bytes::from(batch);
        }
        ahead.split_to(UUID_LEN)
    });
    // SAFETY: `uuid_v4_text` writes only lowercase hex digits and hyphens,
    // visible ASCII that a field value may hold.
    unsafe { HeaderValue::from_maybe_shared_unchecked(text) }
}

/// The text of the UUID v4 made of `random` (RFC 9562 §5.4): its version
/// and variant bits set, the rest kept, in lowercase hex with hyphens.
fn uuid_v4_text(random: u128) -> [u8; UUID_LEN] {
    let version = 0xf << 76;
    let variant = 0b11 << 62;
    let n = (random & !version & !variant) | (0x4 << 76) | (0b10 << 62);
    let mut digits = [0u8; 32];
    for (i, part) in digits.as_chunks_mut::<8>().0.iter_mut().enumerate() {
        // Truncation keeps the 32 bits wanted, the highest part first.
        *part = hex_digits((n >> (96 - 32 * i)) as u32);
    }
    let mut text = [b'-'; UUID_LEN];
    text[..8].copy_from_slice(&digits[..8]);
    text[9..13].copy_from_slice(&digits[8..12]);
    text[14..18].copy_from_slice(&digits[12..16]);
    text[19..23].copy_from_slice(&digits[16..20]);
    text[24..].copy_from_slice(&digits[20..]);
    text
}

/// `x` as eight lowercase hex digits, all at once: each nibble spread to
/// a byte of its own, then turned into its digit.
fn hex_digits(x: u32) -> [u8; 8] {
    let x = u64::from(x);
    let x = (x | x << 16) & 0x0000_ffff_0000_ffff;
    let x = (x | x << 8) & 0x00ff_00ff_00ff_00ff;
    // Nibble k (counting from the lowest) is now byte k.
    let x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte of 10 or more: 6 more carries it into bit 4.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_id_is_never_indexed_by_hpack() {
        let mut h = HeaderMap::new();
        stamp(&mut h, generate());
        assert!(h[&X_REQUEST_ID].is_sensitive());
        h.insert(&X_REQUEST_ID, slot());
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

    /// The text agrees with the uuid crate's for the same random bits, on
    /// the edges (all zeros, all ones, each digit at each value) and on
    /// random values.
    #[test]
    fn uuid_text_agrees_with_the_uuid_crate() {
        let reference = |random: u128| {
            uuid::Builder::from_random_bytes(random.to_be_bytes())
                .into_uuid()
                .hyphenated()
                .to_string()
        };
        let mut cases = vec![0, u128::MAX];
        for digit in 0..32 {
            cases.extend((0..16u128).map(|v| v << (4 * digit)));
        }
        cases.extend((0..10_000).map(|_| fastrand::u128(..)));
        for random in cases {
            let text = uuid_v4_text(random);
            assert_eq!(std::str::from_utf8(&text).unwrap(), reference(random));
        }
    }

    #[test]
    fn generated_ids_are_distinct_uuid_v4s_across_batches() {
        let ids: Vec<HeaderValue> = (0..BATCH * 3 + 1).map(|_| generate()).collect();
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            let parsed = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
            assert!(is_well_formed(id.as_bytes()));
        }
    }
}
