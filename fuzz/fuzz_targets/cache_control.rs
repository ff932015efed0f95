//! Arbitrary Cache-Control, Expires, Date, Age, Last-Modified, If-None-Match
//! and ETag values through the cache policy: never a panic, and the rules
//! hold whatever the fields say (a zero lifetime is never fresh, forbidden
//! staleness is never served, parsing depends only on the list's members).

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use sluice::testing::cache::policy::{
    corrected_initial_age, current_age, freshness_lifetime, stale_if_error, storable,
    update_headers, usable, NotStorable, StoreRules, Use, MAX_HEURISTIC,
};
use sluice::testing::headers::cache_control::CacheControl;
use sluice::testing::headers::conditional::{none_match, not_modified_since, weaken_etag};

const STATUSES: [u16; 16] = [
    200, 203, 204, 206, 300, 301, 302, 304, 307, 308, 404, 410, 418, 500, 503, 103,
];

/// The fields the rest of the input is cut into, at `\n` (never valid in a
/// field value, so every piece is a candidate value).
const FIELDS: [HeaderName; 8] = [
    header::CACHE_CONTROL, // response
    header::CACHE_CONTROL, // request
    header::EXPIRES,
    header::DATE,
    header::AGE,
    header::LAST_MODIFIED,
    header::IF_NONE_MATCH,
    header::ETAG,
];

fuzz_target!(|data: &[u8]| {
    let [choice, flags, delay, resident, rest @ ..] = data else {
        return;
    };
    let status = StatusCode::from_u16(STATUSES[usize::from(choice % 16)]).expect("listed status");
    let mut values: [Option<HeaderValue>; 8] = Default::default();
    for (slot, piece) in values.iter_mut().zip(rest.split(|&b| b == b'\n')) {
        *slot = HeaderValue::from_bytes(piece).ok();
    }

    let mut req = HeaderMap::new();
    let mut resp = HeaderMap::new();
    for (i, value) in values.iter().enumerate() {
        let Some(value) = value else { continue };
        let target = if matches!(i, 1 | 6) {
            &mut req
        } else {
            &mut resp
        };
        target.append(FIELDS[i].clone(), value.clone());
    }
    if flags & 1 != 0 {
        req.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
    }
    if flags & 2 != 0 {
        resp.insert(header::SET_COOKIE, HeaderValue::from_static("id=1"));
    }
    let rules = StoreRules {
        store_set_cookie: flags & 4 != 0,
    };
    let pragma = flags & 8 != 0;

    // Parsing: deterministic, clamped, and the same for one list cut into
    // field lines as for the joined line (when no quoted-string spans them).
    let resp_cc = CacheControl::parse(&resp);
    let req_cc = CacheControl::parse(&req);
    assert_eq!(resp_cc, CacheControl::parse(&resp));
    for delta in [
        resp_cc.max_age,
        resp_cc.s_maxage,
        resp_cc.stale_while_revalidate,
        resp_cc.stale_if_error,
        resp_cc.min_fresh,
    ]
    .into_iter()
    .flatten()
    {
        assert!(delta <= 2_147_483_648, "{delta}");
    }
    if let (Some(a), Some(b)) = (&values[0], &values[1]) {
        if !a.as_bytes().contains(&b'"') {
            let mut split = HeaderMap::new();
            split.append(header::CACHE_CONTROL, a.clone());
            split.append(header::CACHE_CONTROL, b.clone());
            let joined_bytes = [a.as_bytes(), b", ", b.as_bytes()].concat();
            if let Ok(joined) = HeaderValue::from_bytes(&joined_bytes) {
                let mut one = HeaderMap::new();
                one.insert(header::CACHE_CONTROL, joined);
                assert_eq!(CacheControl::parse(&split), CacheControl::parse(&one));
            }
        }
    }

    // Storing.
    let post = storable(&Method::POST, &req, status, &resp, &rules);
    assert_eq!(post, Err(NotStorable::Method));
    if storable(&Method::GET, &req, status, &resp, &rules).is_ok() {
        assert!(status.as_u16() >= 200 && status.as_u16() != 206 && status.as_u16() != 304);
        assert!(!resp_cc.private && !req_cc.no_store);
        assert!(!resp_cc.no_store || resp_cc.must_understand);
    }

    // Freshness and age.
    let request_time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let response_time = request_time + Duration::from_secs(u64::from(*delay));
    let now = response_time + Duration::from_secs(u64::from(*resident) * 97);
    let lifetime = freshness_lifetime(status, &resp, &resp_cc, response_time);
    if let Some(explicit) = resp_cc.s_maxage.or(resp_cc.max_age) {
        assert_eq!(lifetime, Duration::from_secs(explicit));
    } else if !resp.contains_key(header::EXPIRES) {
        assert!(lifetime <= MAX_HEURISTIC);
    }
    let initial = corrected_initial_age(&resp, request_time, response_time);
    assert!(initial >= Duration::from_secs(u64::from(*delay)));
    let age = current_age(initial, response_time, now);
    assert!(age >= initial);

    // Reuse.
    for (lifetime, age) in [(lifetime, age), (Duration::ZERO, age), (lifetime, initial)] {
        let verdict = usable(&req_cc, pragma, &resp_cc, lifetime, age);
        if lifetime.is_zero() {
            assert_ne!(verdict, Use::Fresh);
        }
        if verdict == Use::Fresh {
            assert!(age < lifetime);
        }
        if verdict != Use::Revalidate {
            assert!(!req_cc.no_cache && !pragma && !resp_cc.no_cache);
        }
        if matches!(verdict, Use::StaleAllowed | Use::StaleWhileRevalidate) {
            assert!(age >= lifetime);
            assert!(!resp_cc.must_revalidate && !resp_cc.proxy_revalidate);
            assert!(resp_cc.s_maxage.is_none());
        }
        let staleness = age.saturating_sub(lifetime);
        if stale_if_error(
            &req_cc,
            pragma,
            &resp_cc,
            staleness,
            Duration::from_secs(60),
        ) {
            assert!(!resp_cc.must_revalidate && !resp_cc.proxy_revalidate);
            assert!(!resp_cc.no_cache && resp_cc.s_maxage.is_none());
        }
    }

    // Conditional requests: weak comparison ignores W/, and a tag matches a
    // list of itself whether that list holds it strong or weak.
    let etag = resp.get(header::ETAG);
    let matched = none_match(&req, etag);
    if let Some(etag) = etag {
        let weak = weaken_etag(etag);
        assert_eq!(weaken_etag(&weak), weak);
        assert_eq!(none_match(&req, Some(&weak)), matched);
        let mut itself = HeaderMap::new();
        itself.insert(header::IF_NONE_MATCH, etag.clone());
        // (A stored "ETag: *" is malformed: only the If-None-Match `*` matches it.)
        if etag.as_bytes().trim_ascii() != b"*" && none_match(&itself, Some(etag)) {
            itself.insert(header::IF_NONE_MATCH, weak);
            assert!(none_match(&itself, Some(etag)));
        }
    }
    if let Some(since) = &values[5] {
        let _ = not_modified_since(since, &resp);
    }

    // Updating a stored head: the stored framing survives, the rest is
    // replaced line for line.
    let mut stored = HeaderMap::new();
    stored.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    stored.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=1"));
    let mut fresh = resp.clone();
    fresh.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    update_headers(&mut stored, &fresh);
    assert_eq!(
        stored.get(header::CONTENT_LENGTH),
        Some(&HeaderValue::from_static("5"))
    );
    if fresh.contains_key(header::CACHE_CONTROL) {
        let got: Vec<_> = stored.get_all(header::CACHE_CONTROL).iter().collect();
        let want: Vec<_> = fresh.get_all(header::CACHE_CONTROL).iter().collect();
        assert_eq!(got, want);
    }
});
