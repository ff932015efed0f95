//! The decisions of a *shared* HTTP cache (RFC 9111), kept free of I/O and
//! clocks: callers pass the headers and the times, so every rule can be
//! tested on its own and the store and request flow only ask questions.
//!
//! - [`storable`]: may this response be stored at all (§3)?
//! - [`freshness_lifetime`], [`corrected_initial_age`], [`current_age`]:
//!   how long it stays fresh and how old it is (§4.2)
//! - [`usable`], [`stale_if_error`]: may a stored response answer this
//!   request, fresh or stale (§4.2.4, §5.2, RFC 5861)?
//! - [`update_headers`]: refresh a stored head from a 304 (§3.2, §4.3.4)
//! - [`none_match`], [`not_modified_since`], [`weaken_etag`]: conditional
//!   requests answered from the cache (RFC 9110 §13, §8.8.1)
//!
//! Every header value comes from the network: nothing here panics on any
//! input, and freshness information that does not parse errs towards
//! "stale", never towards serving longer.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderName};
use http::{HeaderMap, Method, StatusCode};

use crate::headers::cache_control::CacheControl;
#[cfg(test)]
use crate::headers::conditional::{none_match, not_modified_since, weaken_etag};
#[cfg(test)]
use crate::headers::grammar::DELTA_SECONDS_MAX;
use crate::headers::grammar::{date_or, delta_seconds, http_date, list_members, Date};

/// The largest heuristic lifetime (§4.2.2 leaves the cap to the cache).
pub const MAX_HEURISTIC: Duration = Duration::from_secs(86_400);

/// Why a response may not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    Method,
    Status,
    Partial,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    NoFreshness,
    VaryStar,
    MustUnderstand,
    /// Longer than the operator's `max_object_size`.
    TooLarge,
}

impl fmt::Display for NotStorable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::Partial => "partial",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::NoFreshness => "no-freshness",
            NotStorable::VaryStar => "vary-star",
            NotStorable::MustUnderstand => "must-understand",
            NotStorable::TooLarge => "too-large",
        })
    }
}

/// Operator choices that RFC 9111 leaves to the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreRules {
    /// Set-Cookie is usually per user: stored only when the operator says so.
    pub store_set_cookie: bool,
}

/// What a shared cache checks whatever field gives it its directives
/// (`resp_cc`): §3.5, only `public`, `s-maxage` or `must-revalidate` let it
/// reuse the answer to an authenticated request; and a response carrying
/// `Set-Cookie` only with `store_set_cookie`.
pub(crate) fn shareable(
    req: &HeaderMap,
    resp_cc: &CacheControl,
    resp: &HeaderMap,
    rules: &StoreRules,
) -> Result<(), NotStorable> {
    if req.contains_key(header::AUTHORIZATION)
        && !(resp_cc.public || resp_cc.s_maxage.is_some() || resp_cc.must_revalidate)
    {
        return Err(NotStorable::Authorization);
    }
    if resp.contains_key(header::SET_COOKIE) && !rules.store_set_cookie {
        return Err(NotStorable::SetCookie);
    }
    Ok(())
}

/// RFC 9111 §3 (+ §3.5 Authorization): may this response be stored by a
/// shared cache? `method` is the method of the request sent upstream (only
/// GET is stored; the caller turns HEAD misses into GET).
pub fn storable(
    method: &Method,
    req: &HeaderMap,
    status: StatusCode,
    resp: &HeaderMap,
    rules: &StoreRules,
) -> Result<(), NotStorable> {
    let (req_cc, resp_cc) = (CacheControl::parse(req), CacheControl::parse(resp));
    storable_parsed(method, req, &req_cc, status, resp, &resp_cc, rules)
}

/// [`storable`] with both heads' Cache-Control already parsed (`req_cc`
/// from `req`, `resp_cc` from `resp`), as a fill has them.
pub(crate) fn storable_parsed(
    method: &Method,
    req: &HeaderMap,
    req_cc: &CacheControl,
    status: StatusCode,
    resp: &HeaderMap,
    resp_cc: &CacheControl,
    rules: &StoreRules,
) -> Result<(), NotStorable> {
    if *method != Method::GET {
        return Err(NotStorable::Method);
    }
    match status.as_u16() {
        // §3.3: ranges are not stored or combined.
        206 => return Err(NotStorable::Partial),
        // A 304 only updates a stored response (§4.3.4); 1xx are not final.
        304 | 0..=199 => return Err(NotStorable::Status),
        _ => {}
    }
    // §5.2.2.3: must-understand limits storage to caches that know the status
    // and, for them, overrides no-store.
    if resp_cc.must_understand && !understood(status) {
        return Err(NotStorable::MustUnderstand);
    }
    // §5.2.1.5 (request) and §5.2.2.5 (response).
    if req_cc.no_store || (resp_cc.no_store && !resp_cc.must_understand) {
        return Err(NotStorable::NoStore);
    }
    if resp_cc.private {
        return Err(NotStorable::Private);
    }
    shareable(req, resp_cc, resp, rules)?;
    // RFC 9110 §12.5.5: `Vary: *` never matches a later request.
    if list_members(resp, header::VARY).any(|member| member == b"*") {
        return Err(NotStorable::VaryStar);
    }
    let explicit = resp_cc.public
        || resp_cc.max_age.is_some()
        || resp_cc.s_maxage.is_some()
        || resp.contains_key(header::EXPIRES);
    if !(explicit || heuristically_cacheable(status)) {
        return Err(NotStorable::NoFreshness);
    }
    Ok(())
}

/// RFC 9111 §5.4: a request's `Pragma: no-cache` asks for revalidation
/// like `Cache-Control: no-cache`, but only when the request carries no
/// Cache-Control field at all.
pub(crate) fn pragma_no_cache(req: &HeaderMap) -> bool {
    !req.contains_key(header::CACHE_CONTROL)
        && req.get_all(header::PRAGMA).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache"))
        })
}

/// §5.2.2.3: the statuses whose caching rules this cache implements.
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// RFC 9110 §15.1: statuses that may be given a heuristic lifetime (§4.2.2).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// RFC 9111 §4.2.1 freshness lifetime: s-maxage, then max-age, then Expires
/// minus Date, then the heuristic (§4.2.2: a tenth of Date minus
/// Last-Modified, capped at [`MAX_HEURISTIC`], only for heuristically
/// cacheable statuses or when `public` is set). `response_time` stands in
/// for a missing or invalid Date (RFC 9110 §6.6.1). An invalid or repeated
/// Expires means already expired (§5.3).
pub fn freshness_lifetime(
    status: StatusCode,
    resp: &HeaderMap,
    cc: &CacheControl,
    response_time: SystemTime,
) -> Duration {
    // A shared cache lets s-maxage win, and either one hides Expires (§5.3).
    if let Some(seconds) = cc.s_maxage.or(cc.max_age) {
        return Duration::from_secs(seconds);
    }
    let date = date_or(resp, response_time);
    match http_date(resp, header::EXPIRES) {
        Date::At(expires) => return expires.duration_since(date).unwrap_or(Duration::ZERO),
        Date::Invalid => return Duration::ZERO,
        Date::Absent => {}
    }
    if !(heuristically_cacheable(status) || cc.public) {
        return Duration::ZERO;
    }
    match http_date(resp, header::LAST_MODIFIED) {
        Date::At(modified) => {
            let since = date.duration_since(modified).unwrap_or(Duration::ZERO);
            (since / 10).min(MAX_HEURISTIC)
        }
        Date::Invalid | Date::Absent => Duration::ZERO,
    }
}

/// RFC 9111 §4.2.3 corrected_initial_age from the response's Date and Age
/// and the request/response times. An invalid Age makes the response stale
/// (§5.1), and so does a list or repeated Age: §5.1 would take the first
/// member, but a doubled singleton is a confused intermediary, and
/// revalidating is the safe reading. Age above 2147483648 clamps (§1.2.2).
pub fn corrected_initial_age(
    resp: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let date = date_or(resp, response_time);
    let apparent_age = response_time.duration_since(date).unwrap_or(Duration::ZERO);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    let corrected_age_value = Duration::from_secs(age_value(resp)).saturating_add(response_delay);
    apparent_age.max(corrected_age_value)
}

/// §4.2.3 current_age = corrected_initial_age + resident time (now minus
/// response_time, 0 if the clock went back).
pub fn current_age(
    corrected_initial_age: Duration,
    response_time: SystemTime,
    now: SystemTime,
) -> Duration {
    let resident_time = now.duration_since(response_time).unwrap_or(Duration::ZERO);
    corrected_initial_age.saturating_add(resident_time)
}

/// §5.1: the Age in seconds. A list (on one line or several) counts by its
/// first member, the rest discarded; a value that is not delta-seconds
/// (negative, fractional, not a number, empty) is ignored as if the field
/// were absent, which is 0; one beyond 2^31 counts as 2^31 (§1.2.2).
fn age_value(resp: &HeaderMap) -> u64 {
    list_members(resp, header::AGE)
        .next()
        .and_then(|first| delta_seconds(first.iter().copied()))
        .unwrap_or(0)
}

/// What a cache may do with a stored response for this request (§4.2.4,
/// §5.2.1, RFC 5861 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Fresh enough for this request: serve it.
    Fresh,
    /// Stale but the request's max-stale allows it: serve it (the caller
    /// should not revalidate).
    StaleAllowed,
    /// Stale within the response's stale-while-revalidate window: serve it
    /// and refresh in the background.
    StaleWhileRevalidate,
    /// Must be validated with the origin before use.
    Revalidate,
}

/// `req_cc` parsed from the request; `pragma_no_cache` is true when the
/// request has `Pragma: no-cache` AND no Cache-Control field (§5.4: HTTP/1.0
/// clients); `resp_cc` from the stored response. `lifetime` and `age` come
/// from [`freshness_lifetime`] and [`current_age`].
pub fn usable(
    req_cc: &CacheControl,
    pragma_no_cache: bool,
    resp_cc: &CacheControl,
    lifetime: Duration,
    age: Duration,
) -> Use {
    // §5.2.1.4, §5.4, §5.2.2.4: validation asked for by either side.
    if req_cc.no_cache || pragma_no_cache || resp_cc.no_cache {
        return Use::Revalidate;
    }
    // §5.2.1.1: the client accepts nothing older, whatever max-stale says.
    if req_cc
        .max_age
        .is_some_and(|max| age > Duration::from_secs(max))
    {
        return Use::Revalidate;
    }
    // §5.2.1.3: it must stay fresh for min-fresh more; a stale one never does.
    if let Some(min) = req_cc.min_fresh {
        match lifetime.checked_sub(age) {
            Some(left) if left >= Duration::from_secs(min) => {}
            _ => return Use::Revalidate,
        }
    }
    // §4.2: fresh while age < lifetime, so a zero lifetime is never fresh.
    if age < lifetime {
        return Use::Fresh;
    }
    // §5.2.2.2, §5.2.2.8, and §5.2.2.10 (s-maxage implies proxy-revalidate).
    if resp_cc.must_revalidate || resp_cc.proxy_revalidate || resp_cc.s_maxage.is_some() {
        return Use::Revalidate;
    }
    let staleness = age.saturating_sub(lifetime);
    if within(staleness, req_cc.max_stale) {
        return Use::StaleAllowed;
    }
    if within(staleness, resp_cc.stale_while_revalidate) {
        return Use::StaleWhileRevalidate;
    }
    Use::Revalidate
}

/// Is `staleness` inside a window of `seconds` (inclusive)?
fn within(staleness: Duration, seconds: Option<u64>) -> bool {
    seconds.is_some_and(|s| staleness <= Duration::from_secs(s))
}

/// RFC 5861 §4 stale-if-error, plus the operator's grace
/// (`serve_stale_on_error`, ZERO = off): may a stale response be served
/// because the origin failed or answered 5xx? Never when the stored response
/// has must-revalidate, proxy-revalidate, s-maxage or no-cache (§5.2.2.2:
/// such a response gets an error instead), or the request has no-cache /
/// pragma. A request's stale-if-error also counts.
pub fn stale_if_error(
    req_cc: &CacheControl,
    pragma_no_cache: bool,
    resp_cc: &CacheControl,
    staleness: Duration,
    grace: Duration,
) -> bool {
    if resp_cc.must_revalidate
        || resp_cc.proxy_revalidate
        || resp_cc.s_maxage.is_some()
        || resp_cc.no_cache
        || req_cc.no_cache
        || pragma_no_cache
    {
        return false;
    }
    within(staleness, resp_cc.stale_if_error)
        || within(staleness, req_cc.stale_if_error)
        || (!grace.is_zero() && staleness <= grace)
}

/// RFC 9111 §3.2 / §4.3.4: update a stored head with the fields of a 304
/// (or HEAD, §4.3.5) response: every field in `fresh` replaces all stored
/// lines of that name, except those §3.2 exempts: Content-Length; fields
/// never stored (§3.1: Connection and the fields it names, the other
/// hop-by-hop fields such as Transfer-Encoding, and the proxy's own
/// Proxy-Authenticate, Proxy-Authentication-Info, Proxy-Authorization);
/// Content-Encoding, which the stored body depends on; and Content-Range,
/// consumed on receipt; and the stored body's ETag and Content-MD5, which
/// the 304 confirmed.
pub fn update_headers(stored: &mut HeaderMap, fresh: &HeaderMap) {
    let connection_listed: Vec<&[u8]> = list_members(fresh, header::CONNECTION).collect();
    for name in fresh.keys() {
        if never_updated(name)
            || connection_listed
                .iter()
                .any(|listed| listed.eq_ignore_ascii_case(name.as_str().as_bytes()))
        {
            continue;
        }
        stored.remove(name);
        for value in fresh.get_all(name) {
            // Only fails past http's 32768-field limit: dropping is all we can do.
            let _ = stored.try_append(name.clone(), value.clone());
        }
    }
}

/// The fields §3.2 keeps from the stored response (names are lower case).
fn never_updated(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        // Framing, coding and identity of the stored body: the 304 just
        // confirmed the stored validator, so an ETag or digest it carries
        // cannot describe other bytes.
        "content-length"
            | "content-encoding"
            | "content-range"
            | "content-md5"
            | "etag"
            | "transfer-encoding"
            // Hop-by-hop (RFC 9110 §7.6.1).
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "upgrade"
            // Specific to a proxy (§3.1).
            | "proxy-authenticate"
            | "proxy-authentication-info"
            | "proxy-authorization"
    )
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use http::HeaderValue;

    use super::*;

    /// An arbitrary "now" for the tests, in whole seconds like HTTP dates.
    const T0: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test field name"),
                HeaderValue::from_str(value).expect("test field value"),
            );
        }
        map
    }

    fn cc(value: &str) -> CacheControl {
        CacheControl::parse(&headers(&[("cache-control", value)]))
    }

    fn store(status: u16, req: &[(&str, &str)], resp: &[(&str, &str)]) -> Result<(), NotStorable> {
        storable(
            &Method::GET,
            &headers(req),
            StatusCode::from_u16(status).expect("test status"),
            &headers(resp),
            &StoreRules::default(),
        )
    }

    fn lifetime(status: u16, resp: &[(&str, &str)]) -> Duration {
        let resp = headers(resp);
        let status = StatusCode::from_u16(status).expect("test status");
        freshness_lifetime(status, &resp, &CacheControl::parse(&resp), at(T0))
    }

    fn use_of(req: &str, resp: &str, lifetime: u64, age: u64) -> Use {
        usable(&cc(req), false, &cc(resp), s(lifetime), s(age))
    }

    // --- §5.2 parsing ---

    #[test]
    fn s5_2_directive_names_are_case_insensitive() {
        let parsed = cc("No-Store, MAX-AGE=5, Public, S-MaxAge=7");
        assert!(parsed.no_store && parsed.public);
        assert_eq!((parsed.max_age, parsed.s_maxage), (Some(5), Some(7)));
    }

    #[test]
    fn s5_2_one_list_across_field_lines() {
        let map = headers(&[
            ("cache-control", "public"),
            ("cache-control", "max-age=60, must-revalidate"),
        ]);
        let parsed = CacheControl::parse(&map);
        assert!(parsed.public && parsed.must_revalidate);
        assert_eq!(parsed.max_age, Some(60));
        assert_eq!(
            CacheControl::parse(&HeaderMap::new()),
            CacheControl::default()
        );
    }

    #[test]
    fn s5_2_quoted_string_arguments() {
        // A comma inside quotes does not end the member; quoted delta-seconds count.
        let parsed = cc(r#"no-cache="set-cookie, x-a", max-age="60", s-maxage="1\2""#);
        assert!(parsed.no_cache);
        assert!(!parsed.public);
        assert_eq!(parsed.max_age, Some(60));
        assert_eq!(parsed.s_maxage, Some(12));
        assert!(cc(r#"private="x, y", max-age=3"#).private);
        assert_eq!(cc(r#"private="x, y", max-age=3"#).max_age, Some(3));
    }

    #[test]
    fn s5_2_whitespace_tolerant() {
        let parsed = cc(" max-age = 60 ,\tpublic\t,, , no-transform ");
        assert_eq!(parsed.max_age, Some(60));
        assert!(parsed.public && parsed.no_transform);
    }

    #[test]
    fn s5_2_3_unknown_directives_ignored() {
        let parsed = cc(r#"foo, bar="a,b", community="UCI", max-age=5"#);
        assert_eq!(
            parsed,
            CacheControl {
                max_age: Some(5),
                ..CacheControl::default()
            }
        );
    }

    #[test]
    fn s4_2_1_first_occurrence_of_a_directive_wins() {
        assert_eq!(cc("max-age=10, max-age=20").max_age, Some(10));
        let map = headers(&[
            ("cache-control", "s-maxage=1"),
            ("cache-control", "s-maxage=2"),
        ]);
        assert_eq!(CacheControl::parse(&map).s_maxage, Some(1));
        // An invalid first max-age already made it stale; a later one does not undo that.
        assert_eq!(cc("max-age=x, max-age=20").max_age, Some(0));
    }

    #[test]
    fn s1_2_2_delta_seconds_clamped_to_2_pow_31() {
        let parsed = cc("max-age=99999999999999999999999, stale-if-error=2147483649");
        assert_eq!(parsed.max_age, Some(DELTA_SECONDS_MAX));
        assert_eq!(parsed.stale_if_error, Some(DELTA_SECONDS_MAX));
        assert_eq!(cc("max-age=2147483647").max_age, Some(2_147_483_647));
        assert_eq!(cc("max-age=000060").max_age, Some(60));
    }

    #[test]
    fn s4_2_1_invalid_max_age_is_stale() {
        for bad in [
            "max-age=abc",
            "max-age=",
            "max-age=-1",
            "max-age",
            "max-age=1.5",
            "max-age 60",
            r#"max-age="60"#,
        ] {
            assert_eq!(cc(bad).max_age, Some(0), "{bad}");
        }
        assert_eq!(cc("s-maxage=soon").s_maxage, Some(0));
    }

    #[test]
    fn rfc5861_invalid_extension_values_ignored() {
        let parsed = cc("stale-while-revalidate=x, stale-if-error, min-fresh=-1, max-stale=1h");
        assert_eq!(parsed, CacheControl::default());
        // The directive counts as absent, so a later valid one applies.
        assert_eq!(
            cc("stale-while-revalidate=, stale-while-revalidate=30").stale_while_revalidate,
            Some(30)
        );
    }

    #[test]
    fn s5_2_1_2_bare_max_stale_accepts_any_staleness() {
        assert_eq!(cc("max-stale").max_stale, Some(u64::MAX));
        assert_eq!(cc("max-stale=30").max_stale, Some(30));
        assert_eq!(cc("max-stale=thirty").max_stale, None);
    }

    #[test]
    fn s5_2_2_boolean_directives() {
        let parsed = cc(concat!(
            "no-store, must-revalidate, proxy-revalidate, no-transform, ",
            "must-understand, immutable, only-if-cached"
        ));
        assert!(parsed.no_store && parsed.must_revalidate && parsed.proxy_revalidate);
        assert!(parsed.no_transform && parsed.must_understand && parsed.immutable);
        assert!(parsed.only_if_cached);
        assert!(!parsed.no_cache && !parsed.private && !parsed.public);
    }

    #[test]
    fn s5_2_garbage_never_panics() {
        let junk = [
            "",
            ",",
            "=",
            "==",
            "\"",
            "\"\\",
            "max-age=\"",
            "max-age=\"\\\"",
            "no-cache=\"a,b",
            "\\,\\",
            "=max-age=5",
            "max-age==5",
            "\t",
            "W/",
            "max-age=5\"",
            "\"max-age=5\"",
        ];
        for value in junk {
            let map = headers(&[
                ("cache-control", value),
                ("expires", value),
                ("date", value),
                ("age", value),
                ("last-modified", value),
                ("if-none-match", value),
                ("etag", value),
            ]);
            let parsed = CacheControl::parse(&map);
            assert_eq!(parsed, CacheControl::parse(&map));
            let _ = freshness_lifetime(StatusCode::OK, &map, &parsed, at(T0));
            let _ = corrected_initial_age(&map, at(T0), at(T0));
            let _ = none_match(&map, map.get("etag"));
            let _ = store(
                200,
                &[("cache-control", value)],
                &[("cache-control", value)],
            );
        }
        // Bytes beyond ASCII are allowed in values (obs-text).
        let mut map = HeaderMap::new();
        let odd = HeaderValue::from_bytes(b"max-age=\xff, \"\xfe\", public").expect("obs-text");
        map.insert(header::CACHE_CONTROL, odd);
        assert!(CacheControl::parse(&map).public);
    }

    // --- §3 storing ---

    #[test]
    fn s3_only_get_is_stored() {
        let resp = headers(&[("cache-control", "max-age=60")]);
        for method in [Method::POST, Method::HEAD, Method::PUT, Method::OPTIONS] {
            let verdict = storable(
                &method,
                &HeaderMap::new(),
                StatusCode::OK,
                &resp,
                &StoreRules::default(),
            );
            assert_eq!(verdict, Err(NotStorable::Method), "{method}");
        }
        assert_eq!(store(200, &[], &[("cache-control", "max-age=60")]), Ok(()));
    }

    #[test]
    fn s3_status_must_be_final() {
        assert_eq!(
            store(103, &[], &[("cache-control", "max-age=60")]),
            Err(NotStorable::Status)
        );
        assert_eq!(
            store(304, &[], &[("cache-control", "max-age=60")]),
            Err(NotStorable::Status)
        );
    }

    #[test]
    fn s3_3_partial_content_not_stored() {
        assert_eq!(
            store(206, &[], &[("cache-control", "max-age=60")]),
            Err(NotStorable::Partial)
        );
    }

    #[test]
    fn s5_2_2_5_response_no_store() {
        assert_eq!(
            store(200, &[], &[("cache-control", "max-age=60, no-store")]),
            Err(NotStorable::NoStore)
        );
    }

    #[test]
    fn s5_2_1_5_request_no_store() {
        let verdict = store(
            200,
            &[("cache-control", "no-store")],
            &[("cache-control", "max-age=60")],
        );
        assert_eq!(verdict, Err(NotStorable::NoStore));
    }

    #[test]
    fn s5_2_2_7_private_never_stored_by_a_shared_cache() {
        assert_eq!(
            store(200, &[], &[("cache-control", "private, max-age=60")]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            store(
                200,
                &[],
                &[("cache-control", "private=\"x-user\", max-age=60")]
            ),
            Err(NotStorable::Private)
        );
    }

    #[test]
    fn s3_5_authorization_needs_public() {
        let auth = [("authorization", "Bearer abc")];
        assert_eq!(
            store(200, &auth, &[("cache-control", "max-age=60")]),
            Err(NotStorable::Authorization)
        );
        assert_eq!(
            store(
                200,
                &auth,
                &[("cache-control", "max-age=60, proxy-revalidate")]
            ),
            Err(NotStorable::Authorization)
        );
        assert_eq!(store(200, &auth, &[]), Err(NotStorable::Authorization));
        for allows in ["public", "s-maxage=60", "max-age=60, must-revalidate"] {
            assert_eq!(
                store(200, &auth, &[("cache-control", allows)]),
                Ok(()),
                "{allows}"
            );
        }
    }

    #[test]
    fn s3_set_cookie_needs_the_operator() {
        let resp = headers(&[("cache-control", "max-age=60"), ("set-cookie", "id=1")]);
        let refuse = StoreRules::default();
        let allow = StoreRules {
            store_set_cookie: true,
        };
        let get = |rules: &StoreRules| {
            storable(
                &Method::GET,
                &HeaderMap::new(),
                StatusCode::OK,
                &resp,
                rules,
            )
        };
        assert_eq!(get(&refuse), Err(NotStorable::SetCookie));
        assert_eq!(get(&allow), Ok(()));
    }

    #[test]
    fn rfc9110_s12_5_5_vary_star_not_stored() {
        let vary_star = [
            ("cache-control", "max-age=60"),
            ("vary", "accept"),
            ("vary", "accept-encoding, *"),
        ];
        assert_eq!(store(200, &[], &vary_star), Err(NotStorable::VaryStar));
        assert_eq!(store(200, &[], &[("vary", "accept-encoding")]), Ok(()));
    }

    #[test]
    fn s5_2_2_3_must_understand_needs_a_known_status() {
        let resp = [("cache-control", "must-understand, no-store, max-age=60")];
        assert_eq!(store(500, &[], &resp), Err(NotStorable::MustUnderstand));
        assert_eq!(store(418, &[], &resp), Err(NotStorable::MustUnderstand));
    }

    #[test]
    fn s5_2_2_3_must_understand_overrides_no_store() {
        let resp = [("cache-control", "must-understand, no-store, max-age=60")];
        assert_eq!(store(200, &[], &resp), Ok(()));
        assert_eq!(store(404, &[], &resp), Ok(()));
        // Not the request's no-store, though.
        assert_eq!(
            store(200, &[("cache-control", "no-store")], &resp),
            Err(NotStorable::NoStore)
        );
    }

    #[test]
    fn s3_needs_explicit_or_heuristic_freshness() {
        assert_eq!(store(302, &[], &[]), Err(NotStorable::NoFreshness));
        assert_eq!(store(500, &[], &[]), Err(NotStorable::NoFreshness));
        assert_eq!(store(302, &[], &[("expires", "0")]), Ok(()));
        assert_eq!(store(500, &[], &[("cache-control", "public")]), Ok(()));
        assert_eq!(store(503, &[], &[("cache-control", "max-age=5")]), Ok(()));
        for heuristic in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
            assert_eq!(store(heuristic, &[], &[]), Ok(()), "{heuristic}");
        }
    }

    #[test]
    fn s5_2_2_4_no_cache_response_is_storable() {
        assert_eq!(store(200, &[], &[("cache-control", "no-cache")]), Ok(()));
    }

    #[test]
    fn s3_not_storable_reasons_read_as_labels() {
        assert_eq!(NotStorable::NoStore.to_string(), "no-store");
        assert_eq!(NotStorable::VaryStar.to_string(), "vary-star");
        assert_eq!(NotStorable::NoFreshness.to_string(), "no-freshness");
    }

    // --- §4.2.1, §4.2.2, §5.3 freshness lifetime ---

    #[test]
    fn s4_2_1_s_maxage_wins_over_max_age() {
        let resp = [
            ("cache-control", "max-age=60, s-maxage=600"),
            ("expires", "0"),
        ];
        assert_eq!(lifetime(200, &resp), s(600));
    }

    #[test]
    fn s5_3_max_age_wins_over_expires() {
        let expires = date(T0 + 3600);
        let resp = [
            ("cache-control", "max-age=60"),
            ("date", &date(T0)),
            ("expires", &expires),
        ];
        assert_eq!(lifetime(200, &resp), s(60));
    }

    #[test]
    fn s4_2_1_expires_minus_date() {
        let resp = [("date", &*date(T0 - 100)), ("expires", &date(T0 + 200))];
        assert_eq!(lifetime(200, &resp), s(300));
        let past = [("date", &*date(T0)), ("expires", &date(T0 - 5))];
        assert_eq!(lifetime(200, &past), Duration::ZERO);
    }

    #[test]
    fn s4_2_1_missing_or_invalid_date_uses_response_time() {
        assert_eq!(lifetime(200, &[("expires", &date(T0 + 50))]), s(50));
        assert_eq!(
            lifetime(200, &[("date", "yesterday"), ("expires", &date(T0 + 50))]),
            s(50)
        );
    }

    #[test]
    fn s5_3_invalid_or_repeated_expires_is_expired() {
        assert_eq!(lifetime(200, &[("expires", "0")]), Duration::ZERO);
        assert_eq!(lifetime(200, &[("expires", "-1")]), Duration::ZERO);
        let twice = [("expires", &*date(T0 + 50)), ("expires", &date(T0 + 50))];
        assert_eq!(lifetime(200, &twice), Duration::ZERO);
        // An invalid Expires also blocks the heuristic.
        let with_lm = [("expires", "never"), ("last-modified", &*date(T0 - 1000))];
        assert_eq!(lifetime(200, &with_lm), Duration::ZERO);
    }

    #[test]
    fn s4_2_2_heuristic_is_a_tenth_since_last_modified() {
        let resp = [("date", &*date(T0)), ("last-modified", &date(T0 - 1000))];
        assert_eq!(lifetime(200, &resp), s(100));
        // RFC 850 and asctime dates are accepted too (RFC 9110 §5.6.7).
        let old = [
            ("date", "Sunday, 06-Nov-94 08:49:37 GMT"),
            ("last-modified", "Sun Nov  6 08:32:57 1994"),
        ];
        assert_eq!(lifetime(200, &old), s(100));
    }

    #[test]
    fn s4_2_2_heuristic_is_capped() {
        let resp = [
            ("date", &*date(T0)),
            ("last-modified", &date(T0 - 365 * 86_400)),
        ];
        assert_eq!(lifetime(200, &resp), MAX_HEURISTIC);
    }

    #[test]
    fn s4_2_2_heuristic_only_for_cacheable_status_or_public() {
        let lm = date(T0 - 1000);
        assert_eq!(lifetime(302, &[("last-modified", &lm)]), Duration::ZERO);
        assert_eq!(
            lifetime(302, &[("last-modified", &lm), ("cache-control", "public")]),
            s(100)
        );
    }

    #[test]
    fn s4_2_2_no_heuristic_without_a_usable_last_modified() {
        assert_eq!(lifetime(200, &[]), Duration::ZERO);
        assert_eq!(
            lifetime(200, &[("last-modified", "last week")]),
            Duration::ZERO
        );
        assert_eq!(
            lifetime(
                200,
                &[("date", &*date(T0)), ("last-modified", &date(T0 + 60))]
            ),
            Duration::ZERO
        );
    }

    // --- §4.2.3 age ---

    #[test]
    fn s4_2_3_apparent_age_from_date() {
        let resp = headers(&[("date", &date(T0 - 30))]);
        assert_eq!(corrected_initial_age(&resp, at(T0 - 1), at(T0)), s(30));
        // A Date in the future gives no negative age.
        let ahead = headers(&[("date", &date(T0 + 30))]);
        assert_eq!(
            corrected_initial_age(&ahead, at(T0), at(T0)),
            Duration::ZERO
        );
    }

    #[test]
    fn s4_2_3_age_plus_response_delay() {
        let resp = headers(&[("date", &date(T0)), ("age", "100")]);
        assert_eq!(corrected_initial_age(&resp, at(T0 - 2), at(T0)), s(102));
        // The clock going back between request and response adds nothing.
        assert_eq!(corrected_initial_age(&resp, at(T0 + 5), at(T0)), s(100));
    }

    #[test]
    fn s5_1_age_is_its_first_member_and_invalid_is_absent() {
        let lines = |fields: &[&str]| {
            let pairs: Vec<(&str, &str)> = fields.iter().map(|v| ("age", *v)).collect();
            age_value(&headers(&pairs))
        };
        let cases: &[(&[&str], u64)] = &[
            (&[], 0),
            (&["7"], 7),
            (&["000060"], 60),
            (&["0, 7200"], 0),
            (&["7200, 0"], 7200),
            (&["0", "7200"], 0),
            (&["7200", "0"], 7200),
            (&["-1"], 0),
            (&["1.5"], 0),
            (&["abc"], 0),
            (&[""], 0),
            (&["7;foo=1"], 0),
            (&["abc, 5"], 0),
            (&["abc", "5"], 0),
            (&["2147483648"], DELTA_SECONDS_MAX),
            (&["99999999999999999999"], DELTA_SECONDS_MAX),
        ];
        for (fields, expected) in cases {
            assert_eq!(lines(fields), *expected, "Age: {fields:?}");
        }
        // An ignored Age leaves the apparent age (from Date) in charge.
        let resp = headers(&[("date", &date(T0 - 30)), ("age", "old")]);
        assert_eq!(corrected_initial_age(&resp, at(T0), at(T0)), s(30));
    }

    #[test]
    fn s4_2_3_current_age_adds_resident_time() {
        assert_eq!(current_age(s(10), at(T0), at(T0 + 5)), s(15));
        assert_eq!(current_age(s(10), at(T0), at(T0 - 5)), s(10));
        assert_eq!(
            current_age(Duration::MAX, at(T0), at(T0 + 5)),
            Duration::MAX
        );
    }

    // --- §4.2.4, §5.2.1 reuse ---

    #[test]
    fn s4_2_fresh_strictly_before_lifetime() {
        assert_eq!(use_of("", "", 60, 59), Use::Fresh);
        assert_eq!(use_of("", "", 60, 60), Use::Revalidate);
        assert_eq!(use_of("", "", 0, 0), Use::Revalidate);
    }

    #[test]
    fn s5_2_1_4_request_no_cache_revalidates() {
        assert_eq!(use_of("no-cache", "", 60, 1), Use::Revalidate);
        assert_eq!(use_of("no-cache, max-stale", "", 60, 1), Use::Revalidate);
    }

    #[test]
    fn s5_4_pragma_no_cache_revalidates() {
        assert_eq!(
            usable(&CacheControl::default(), true, &cc(""), s(60), s(1)),
            Use::Revalidate
        );
    }

    #[test]
    fn s5_2_2_4_response_no_cache_revalidates() {
        assert_eq!(use_of("", "no-cache, max-age=60", 60, 1), Use::Revalidate);
        assert_eq!(
            use_of(
                "max-stale",
                "no-cache=\"x\", stale-while-revalidate=60",
                60,
                61
            ),
            Use::Revalidate
        );
    }

    #[test]
    fn s5_2_1_1_request_max_age() {
        assert_eq!(use_of("max-age=10", "", 60, 10), Use::Fresh);
        assert_eq!(use_of("max-age=10", "", 60, 11), Use::Revalidate);
        assert_eq!(use_of("max-age=10, max-stale", "", 5, 11), Use::Revalidate);
        assert_eq!(use_of("max-age=0", "", 60, 0), Use::Fresh);
    }

    #[test]
    fn s5_2_1_3_min_fresh() {
        assert_eq!(use_of("min-fresh=10", "", 60, 50), Use::Fresh);
        assert_eq!(use_of("min-fresh=10", "", 60, 51), Use::Revalidate);
        assert_eq!(
            use_of("min-fresh=0, max-stale", "", 60, 61),
            Use::Revalidate
        );
    }

    #[test]
    fn s5_2_1_2_max_stale_allows_stale() {
        assert_eq!(use_of("max-stale=10", "", 60, 70), Use::StaleAllowed);
        assert_eq!(use_of("max-stale=10", "", 60, 71), Use::Revalidate);
        assert_eq!(use_of("max-stale", "", 60, 1_000_000), Use::StaleAllowed);
    }

    #[test]
    fn s5_2_2_2_must_revalidate_forbids_stale_use() {
        for resp in ["must-revalidate", "proxy-revalidate", "s-maxage=60"] {
            let resp = format!("{resp}, stale-while-revalidate=600");
            assert_eq!(
                use_of("max-stale", &resp, 60, 61),
                Use::Revalidate,
                "{resp}"
            );
            assert_eq!(use_of("", &resp, 60, 59), Use::Fresh, "{resp}");
        }
    }

    #[test]
    fn rfc5861_s3_stale_while_revalidate_window() {
        let resp = "max-age=60, stale-while-revalidate=30";
        assert_eq!(use_of("", resp, 60, 90), Use::StaleWhileRevalidate);
        assert_eq!(use_of("", resp, 60, 91), Use::Revalidate);
        // The client's own max-stale is preferred: no background refresh needed.
        assert_eq!(use_of("max-stale=60", resp, 60, 70), Use::StaleAllowed);
    }

    #[test]
    fn s4_2_4_stale_is_revalidated_by_default() {
        assert_eq!(use_of("", "max-age=60", 60, 61), Use::Revalidate);
    }

    // --- RFC 5861 §4 stale-if-error ---

    #[test]
    fn rfc5861_s4_stale_if_error_window() {
        let resp = cc("max-age=60, stale-if-error=300");
        let none = CacheControl::default();
        assert!(stale_if_error(&none, false, &resp, s(300), Duration::ZERO));
        assert!(!stale_if_error(&none, false, &resp, s(301), Duration::ZERO));
        assert!(!stale_if_error(
            &none,
            false,
            &cc("max-age=60"),
            s(1),
            Duration::ZERO
        ));
    }

    #[test]
    fn rfc5861_s4_request_stale_if_error_counts() {
        let req = cc("stale-if-error=100");
        assert!(stale_if_error(
            &req,
            false,
            &cc("max-age=60"),
            s(100),
            Duration::ZERO
        ));
        assert!(!stale_if_error(
            &req,
            false,
            &cc("max-age=60"),
            s(101),
            Duration::ZERO
        ));
    }

    #[test]
    fn rfc5861_s4_operator_grace() {
        let none = CacheControl::default();
        assert!(stale_if_error(&none, false, &none, s(30), s(60)));
        assert!(!stale_if_error(&none, false, &none, s(61), s(60)));
        assert!(!stale_if_error(
            &none,
            false,
            &none,
            Duration::ZERO,
            Duration::ZERO
        ));
    }

    #[test]
    fn s5_2_2_2_no_stale_on_error_when_forbidden() {
        let none = CacheControl::default();
        for resp in [
            "must-revalidate",
            "proxy-revalidate",
            "s-maxage=60",
            "no-cache",
        ] {
            let resp = cc(&format!("{resp}, stale-if-error=600"));
            assert!(
                !stale_if_error(&none, false, &resp, s(1), s(600)),
                "{resp:?}"
            );
        }
        let resp = cc("stale-if-error=600");
        assert!(!stale_if_error(&cc("no-cache"), false, &resp, s(1), s(600)));
        assert!(!stale_if_error(&none, true, &resp, s(1), s(600)));
    }

    // --- §3.2, §4.3.4 updating a stored head ---

    #[test]
    fn s3_2_update_replaces_every_line_of_a_field() {
        let mut stored = headers(&[
            ("cache-control", "max-age=60"),
            ("cache-control", "public"),
            ("x-kept", "1"),
            ("date", &date(T0 - 600)),
        ]);
        let fresh = headers(&[
            ("cache-control", "max-age=120"),
            ("date", &date(T0)),
            ("x-new", "2"),
        ]);
        update_headers(&mut stored, &fresh);
        let lines: Vec<_> = stored.get_all(header::CACHE_CONTROL).iter().collect();
        assert_eq!(lines, ["max-age=120"]);
        assert_eq!(
            stored.get(header::DATE).map(|v| v.to_str().ok()),
            Some(Some(&*date(T0)))
        );
        assert_eq!(
            stored.get("x-kept").map(HeaderValue::as_bytes),
            Some(&b"1"[..])
        );
        assert_eq!(
            stored.get("x-new").map(HeaderValue::as_bytes),
            Some(&b"2"[..])
        );
    }

    #[test]
    fn s3_2_update_skips_exempt_fields() {
        let mut stored = headers(&[
            ("content-length", "10"),
            ("content-encoding", "gzip"),
            ("x-session", "stored"),
        ]);
        let fresh = headers(&[
            ("content-length", "0"),
            ("content-encoding", "br"),
            ("content-range", "bytes 0-1/2"),
            ("transfer-encoding", "chunked"),
            ("connection", "x-session, keep-alive"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("x-session", "hop"),
            ("proxy-authenticate", "Basic"),
            ("etag", "\"v2\""),
        ]);
        update_headers(&mut stored, &fresh);
        let expected = headers(&[
            ("content-length", "10"),
            ("content-encoding", "gzip"),
            ("x-session", "stored"),
        ]);
        assert_eq!(stored, expected);
    }

    #[test]
    fn s3_2_update_keeps_the_confirmed_etag_and_digest() {
        let mut stored = headers(&[("etag", "W/\"v1\""), ("content-md5", "a"), ("x-a", "1")]);
        update_headers(
            &mut stored,
            &headers(&[("etag", "\"v2\""), ("content-md5", "b"), ("x-a", "2")]),
        );
        assert_eq!(
            stored,
            headers(&[("etag", "W/\"v1\""), ("content-md5", "a"), ("x-a", "2")])
        );
    }

    // --- RFC 9110 §13.1 conditional requests, §8.8.1 weak validators ---

    fn inm(lines: &[&str], etag: &str) -> bool {
        let fields: Vec<(&str, &str)> = lines.iter().map(|line| ("if-none-match", *line)).collect();
        none_match(
            &headers(&fields),
            Some(&HeaderValue::from_str(etag).expect("test etag")),
        )
    }

    #[test]
    fn rfc9110_s13_1_2_weak_comparison() {
        assert!(inm(&["\"a\""], "\"a\""));
        assert!(inm(&["W/\"a\""], "\"a\""));
        assert!(inm(&["\"a\""], "W/\"a\""));
        assert!(!inm(&["\"a\""], "\"b\""));
        assert!(!inm(&[], "\"a\""));
    }

    #[test]
    fn rfc9110_s13_1_2_star_matches_any_stored_response() {
        assert!(inm(&["*"], "\"anything\""));
        assert!(none_match(&headers(&[("if-none-match", " * ")]), None));
        assert!(!none_match(&headers(&[("if-none-match", "\"a\"")]), None));
    }

    #[test]
    fn rfc9110_s13_1_2_lists_across_lines() {
        assert!(inm(&["\"x\", W/\"y\""], "\"y\""));
        assert!(inm(&["\"x\"", "\"z\" , \"y\""], "W/\"y\""));
        // A comma is a valid etagc, so it can sit inside a tag.
        assert!(inm(&["\"a,b\""], "\"a,b\""));
        assert!(!inm(&["\"a,b\""], "\"a\""));
    }

    #[test]
    fn rfc9110_s13_1_2_malformed_members_never_match() {
        assert!(!inm(&["a"], "a"));
        assert!(!inm(&["w/\"a\""], "\"a\""));
        assert!(!inm(&["\"a\"x"], "\"a\""));
        assert!(!inm(&["\"a"], "\"a\""));
        assert!(!inm(&["\"a b\""], "\"a b\""));
        assert!(!inm(&["*, \"a\""], "\"b\""));
        // Malformed members are skipped, not the whole list.
        assert!(inm(&["junk, \"a\""], "\"a\""));
        // A malformed stored tag matches nothing but `*`.
        assert!(!inm(&["\"a\""], "a"));
        assert!(inm(&["*"], "a"));
    }

    #[test]
    fn rfc9110_s13_1_3_not_modified_when_not_later() {
        let stored = headers(&[("last-modified", &date(T0))]);
        let since = |secs| HeaderValue::from_str(&date(secs)).expect("test date");
        assert!(not_modified_since(&since(T0), &stored));
        assert!(not_modified_since(&since(T0 + 1), &stored));
        assert!(!not_modified_since(&since(T0 - 1), &stored));
    }

    #[test]
    fn rfc9111_s4_3_2_if_modified_since_falls_back_to_date() {
        let since = HeaderValue::from_str(&date(T0)).expect("test date");
        assert!(not_modified_since(
            &since,
            &headers(&[("date", &date(T0 - 10))])
        ));
        assert!(!not_modified_since(
            &since,
            &headers(&[("date", &date(T0 + 10))])
        ));
        assert!(!not_modified_since(&since, &HeaderMap::new()));
    }

    #[test]
    fn rfc9110_s13_1_3_unparseable_dates_are_false() {
        let stored = headers(&[("last-modified", &date(T0))]);
        assert!(!not_modified_since(
            &HeaderValue::from_static("yesterday"),
            &stored
        ));
        let since = HeaderValue::from_str(&date(T0)).expect("test date");
        let broken = headers(&[("last-modified", "soon"), ("date", &date(T0 - 10))]);
        assert!(!not_modified_since(&since, &broken));
    }

    #[test]
    fn rfc9110_s8_8_1_weaken_etag() {
        let strong = HeaderValue::from_static("\"v1\"");
        assert_eq!(weaken_etag(&strong), HeaderValue::from_static("W/\"v1\""));
        let weak = HeaderValue::from_static("W/\"v1\"");
        assert_eq!(weaken_etag(&weak), weak);
        assert_eq!(weaken_etag(&weaken_etag(&strong)), weaken_etag(&strong));
    }

    #[test]
    fn rfc9111_5_4_pragma_no_cache_without_cache_control() {
        assert!(pragma_no_cache(&headers(&[("pragma", "no-cache")])));
        assert!(pragma_no_cache(&headers(&[("pragma", "No-Cache")])));
        assert!(pragma_no_cache(&headers(&[("pragma", "x, no-cache")])));
        assert!(pragma_no_cache(&headers(&[
            ("pragma", "x"),
            ("pragma", "no-cache")
        ])));
    }

    #[test]
    fn rfc9111_5_4_pragma_is_ignored_beside_cache_control() {
        assert!(!pragma_no_cache(&headers(&[
            ("pragma", "no-cache"),
            ("cache-control", "max-age=60")
        ])));
        assert!(!pragma_no_cache(&headers(&[])));
        assert!(!pragma_no_cache(&headers(&[("pragma", "x")])));
    }
}
