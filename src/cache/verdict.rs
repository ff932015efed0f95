//! sluice's own verdicts on an upstream response, layered over the RFC 9111
//! rules in [`super::policy`]: Surrogate-Control (Edge Architecture 1.0)
//! speaks for this cache when it targets it, then the first RFC 9213
//! targeted field the operator lists ([`super::targeted`]), then
//! `Cache-Control` (and `Expires`); then the operator's `max_object_size`.
//! Pure functions of the heads, tested one rule at a time below.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode};

use super::key;
use super::policy::{self, NotStorable, StoreRules};
use super::surrogate::SurrogateControl;
use crate::headers::cache_control::CacheControl;
use crate::headers::content_length;

/// May the response to a fill be stored? `req` is the client's request
/// head, `req_cc` its Cache-Control, `resp` the upstream's head, and the
/// directives that apply to it ([`directives`]: a targeted field's when
/// `targeted`, else its Cache-Control, parsed once for the fill).
/// Surrogate-Control `no-store` refuses; its `max-age` makes Cache-Control
/// irrelevant to storing (only what §3 needs to match a response again
/// remains); a targeted field's `no-store` or `private` refuses, and
/// otherwise it too leaves Cache-Control out; else RFC 9111 §3 decides. A
/// `Content-Length` over `max_object_size` is refused whatever the fields
/// say.
pub(crate) fn storable(
    req: &HeaderMap,
    req_cc: &CacheControl,
    status: StatusCode,
    resp: &HeaderMap,
    (resp_cc, targeted): (&CacheControl, bool),
    rules: &StoreRules,
    max_object_size: u64,
) -> Result<(), NotStorable> {
    if req_cc.no_store {
        return Err(NotStorable::NoStore);
    }
    match (SurrogateControl::parse(resp), targeted.then_some(resp_cc)) {
        (Some(sc), _) if sc.no_store => return Err(NotStorable::NoStore),
        (
            Some(SurrogateControl {
                max_age: Some(_), ..
            }),
            _,
        ) => surrogate_storable(status, resp)?,
        (_, Some(t)) if t.no_store => return Err(NotStorable::NoStore),
        (_, Some(t)) if t.private => return Err(NotStorable::Private),
        (_, Some(t)) => {
            policy::shareable(req, t, resp, rules)?;
            surrogate_storable(status, resp)?
        }
        _ => policy::storable_parsed(&Method::GET, req, req_cc, status, resp, resp_cc, rules)?,
    }
    if content_length(resp).is_some_and(|n| n > max_object_size) {
        return Err(NotStorable::TooLarge);
    }
    Ok(())
}

/// What remains of RFC 9111 §3 when Surrogate-Control gives a lifetime: a
/// final, complete response that can be matched again.
fn surrogate_storable(status: StatusCode, head: &HeaderMap) -> Result<(), NotStorable> {
    if status.is_informational() || status == StatusCode::NOT_MODIFIED {
        return Err(NotStorable::Status);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        return Err(NotStorable::Partial);
    }
    if key::vary_names(head).is_none() {
        return Err(NotStorable::VaryStar);
    }
    Ok(())
}

/// The freshness lifetime of a stored head: Surrogate-Control's max-age
/// when it speaks to sluice; else, when `cc` came from a targeted field,
/// its `s-maxage` or `max-age` (no Expires, no heuristics: none given is
/// stale at once); else RFC 9111 §4.2.1.
pub(crate) fn lifetime(
    status: StatusCode,
    head: &HeaderMap,
    cc: &CacheControl,
    targeted: bool,
    response_time: SystemTime,
) -> Duration {
    match SurrogateControl::parse(head).and_then(|sc| sc.max_age) {
        Some(secs) => Duration::from_secs(secs),
        None if targeted => Duration::from_secs(cc.s_maxage.or(cc.max_age).unwrap_or(0)),
        None => policy::freshness_lifetime(status, head, cc, response_time),
    }
}

/// The directives this cache applies to a stored head, and whether they
/// came from a targeted field.
pub(crate) fn directives(head: &HeaderMap, fields: &[http::HeaderName]) -> (CacheControl, bool) {
    match super::targeted::directives(head, fields) {
        Some(cc) => (cc, true),
        None => (CacheControl::parse(head), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as head;

    const MAX: u64 = 1 << 20;

    fn verdict(
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
    ) -> Result<(), NotStorable> {
        let req = head(req);
        let resp = head(resp);
        let (cc, targeted) =
            directives(&resp, &[http::HeaderName::from_static("cdn-cache-control")]);
        storable(
            &req,
            &CacheControl::parse(&req),
            StatusCode::from_u16(status).expect("test status"),
            &resp,
            (&cc, targeted),
            &StoreRules::default(),
            MAX,
        )
    }

    #[test]
    fn rfc9213_a_targeted_field_overrides_cache_control_for_storing() {
        let cdn_fresh = [
            ("cdn-cache-control", "max-age=60"),
            ("cache-control", "no-store"),
        ];
        assert_eq!(verdict(&[], 200, &cdn_fresh), Ok(()));
        for refusing in ["no-store", "private"] {
            let resp = [
                ("cdn-cache-control", refusing),
                ("cache-control", "max-age=600"),
            ];
            assert!(verdict(&[], 200, &resp).is_err(), "{refusing}");
        }
        let invalid = [
            ("cdn-cache-control", "max-age=60, &&"),
            ("cache-control", "no-store"),
        ];
        assert_eq!(verdict(&[], 200, &invalid), Err(NotStorable::NoStore));
        // Surrogate-Control targeted at sluice comes first.
        let surrogate = [
            ("surrogate-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
        ];
        assert_eq!(verdict(&[], 200, &surrogate), Err(NotStorable::NoStore));
    }

    #[test]
    fn rfc9213_a_targeted_field_sets_the_lifetime_without_expires() {
        let now = SystemTime::now();
        let fields = [http::HeaderName::from_static("cdn-cache-control")];
        let life = |pairs: &[(&str, &str)]| {
            let resp = head(pairs);
            let (cc, targeted) = directives(&resp, &fields);
            lifetime(StatusCode::OK, &resp, &cc, targeted, now)
        };
        assert_eq!(
            life(&[
                ("cdn-cache-control", "max-age=0"),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT")
            ]),
            Duration::ZERO
        );
        assert_eq!(
            life(&[
                ("cdn-cache-control", "max-age=1"),
                ("cache-control", "max-age=3600")
            ]),
            Duration::from_secs(1)
        );
        assert_eq!(
            life(&[
                ("cdn-cache-control", "no-cache"),
                ("cache-control", "max-age=3600")
            ]),
            Duration::ZERO
        );
    }

    #[test]
    fn rfc9111_3_cache_control_decides_without_surrogate_control() {
        assert_eq!(
            verdict(&[], 200, &[("cache-control", "max-age=60")]),
            Ok(())
        );
        assert_eq!(
            verdict(&[], 200, &[("cache-control", "private, max-age=60")]),
            Err(NotStorable::Private)
        );
    }

    #[test]
    fn rfc9111_5_2_1_5_request_no_store_refuses_even_with_surrogate_max_age() {
        assert_eq!(
            verdict(
                &[("cache-control", "no-store")],
                200,
                &[("surrogate-control", "max-age=60")]
            ),
            Err(NotStorable::NoStore)
        );
    }

    #[test]
    fn surrogate_no_store_refuses_a_cacheable_response() {
        assert_eq!(
            verdict(
                &[],
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("surrogate-control", "no-store")
                ]
            ),
            Err(NotStorable::NoStore)
        );
    }

    #[test]
    fn surrogate_max_age_stores_what_cache_control_refuses() {
        assert_eq!(
            verdict(
                &[],
                200,
                &[
                    ("cache-control", "private, no-store"),
                    ("surrogate-control", "max-age=60")
                ]
            ),
            Ok(())
        );
    }

    #[test]
    fn surrogate_max_age_keeps_the_rules_that_let_a_response_match_again() {
        let sc = ("surrogate-control", "max-age=60");
        assert_eq!(verdict(&[], 206, &[sc]), Err(NotStorable::Partial));
        assert_eq!(verdict(&[], 304, &[sc]), Err(NotStorable::Status));
        assert_eq!(
            verdict(&[], 200, &[sc, ("vary", "*")]),
            Err(NotStorable::VaryStar)
        );
    }

    #[test]
    fn a_content_length_over_max_object_size_is_not_stored() {
        let big = (MAX + 1).to_string();
        assert_eq!(
            verdict(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("content-length", &big)]
            ),
            Err(NotStorable::TooLarge)
        );
        let fits = MAX.to_string();
        assert_eq!(
            verdict(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("content-length", &fits)]
            ),
            Ok(())
        );
    }

    #[test]
    fn surrogate_max_age_sets_the_lifetime_over_cache_control() {
        let resp = head(&[
            ("cache-control", "max-age=5"),
            ("surrogate-control", "max-age=600"),
        ]);
        let cc = CacheControl::parse(&resp);
        let now = SystemTime::now();
        assert_eq!(
            lifetime(StatusCode::OK, &resp, &cc, false, now),
            Duration::from_secs(600)
        );
        let resp = head(&[("cache-control", "max-age=5")]);
        let cc = CacheControl::parse(&resp);
        assert_eq!(
            lifetime(StatusCode::OK, &resp, &cc, false, now),
            Duration::from_secs(5)
        );
    }
}
