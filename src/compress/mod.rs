//! Response compression for routes with `compress = true`: gzip, brotli and
//! zstd negotiated per request (RFC 9110 §12.5.3), applied as the body
//! streams, and passed through or decoded when the upstream already
//! compressed. The cache stores one compressed copy per coding so that a hit
//! never compresses again (see [`crate::cache`]).

pub(crate) mod codec;
pub(crate) mod negotiate;

use std::sync::OnceLock;

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::body::ProxyBody;
use crate::config::{Coding, CompressionConfig};
use crate::headers::cache_control::CacheControl;
use crate::headers::conditional::weaken_etag;
use codec::{CodecBody, Counted};
pub use negotiate::Accepted;

/// Marks a response already encoded for this client (a cached compressed
/// copy): [`apply`] leaves it alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated;

/// The byte counters of one algorithm, resolved once (recording them on
/// the request path takes no lock).
pub(crate) fn counters(coding: Coding) -> Counted {
    static ALL: OnceLock<[Counted; 3]> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let m = crate::metrics::get();
        Coding::ALL.map(|c| Counted {
            bytes_in: m.compression_in.with_label_values(&[c.as_str()]),
            bytes_out: m.compression_out.with_label_values(&[c.as_str()]),
        })
    });
    let i = Coding::ALL.iter().position(|c| *c == coding).unwrap_or(0);
    all[i].clone()
}

/// Whether a response of this kind may be compressed at all (issue rules:
/// type listed, not too small, no `no-transform`, not a partial or empty
/// answer). `len` is the body length when known.
pub(crate) fn compressible(
    cfg: &CompressionConfig,
    status: StatusCode,
    headers: &HeaderMap,
    len: Option<u64>,
) -> bool {
    !CacheControl::parse(headers).no_transform && compressible_kind(cfg, status, headers, len)
}

/// [`compressible`] without the `no-transform` check, for callers that
/// parsed Cache-Control already (a cache entry).
pub(crate) fn compressible_kind(
    cfg: &CompressionConfig,
    status: StatusCode,
    headers: &HeaderMap,
    len: Option<u64>,
) -> bool {
    if crate::headers::status_has_no_content(status)
        || status == StatusCode::PARTIAL_CONTENT
        || headers.contains_key(header::CONTENT_RANGE)
    {
        return false;
    }
    if len.is_some_and(|n| n < cfg.min_size) {
        return false;
    }
    type_listed(cfg, headers)
}

/// Whether the response's media type is one of `[compression] types`.
fn type_listed(cfg: &CompressionConfig, headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((top, _)) = essence.split_once('/') else {
        return false;
    };
    cfg.types.iter().any(|t| match t.strip_suffix("/*") {
        Some(prefix) => prefix == top,
        None => *t == essence,
    })
}

/// The single content coding of a response, when it has one sluice knows:
/// `Some(None)` is identity, `None` a coding sluice cannot handle (or
/// several stacked).
pub(crate) fn content_coding(headers: &HeaderMap) -> Option<Option<Coding>> {
    let mut codings = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("identity"));
    match (codings.next(), codings.next()) {
        (None, _) => Some(None),
        (Some(one), None) => Coding::parse(one).map(Some),
        _ => None,
    }
}

/// Adds `Accept-Encoding` to `Vary` unless it (or `*`) is there already.
pub(crate) fn vary_accept_encoding(headers: &mut HeaderMap) {
    let present = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// The head of a response after its body is encoded with `coding`
/// (`None`: decoded to identity).
pub(crate) fn transformed_head(
    headers: &mut HeaderMap,
    coding: Option<Coding>,
    len: Option<usize>,
) {
    match coding {
        Some(c) => {
            headers.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(c.as_str()),
            );
        }
        None => {
            headers.remove(header::CONTENT_ENCODING);
        }
    }
    match len {
        Some(n) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        None => {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
    if let Some(etag) = headers.get(header::ETAG) {
        let weak = weaken_etag(etag);
        headers.insert(header::ETAG, weak);
    }
    vary_accept_encoding(headers);
}

/// Compresses (or decodes) a response on its way to the client, as the
/// route's `compress = true` asks. A HEAD answer gets the head a GET would
/// get (RFC 9110 §9.3.2), without a body to transform.
pub(crate) fn apply(
    cfg: &CompressionConfig,
    method: &Method,
    accepted: &Accepted,
    resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    if resp.extensions().get::<Negotiated>().is_some() {
        return resp;
    }
    let head_only = method == Method::HEAD;
    let (mut parts, body) = resp.into_parts();
    let len = crate::headers::content_length(&parts.headers);
    match content_coding(&parts.headers) {
        // Already encoded: pass it to a client that takes it, decode it
        // for one that does not.
        Some(Some(coding)) => {
            if matches!(
                parts.status,
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
            ) || parts.headers.contains_key(header::CONTENT_RANGE)
                || CacheControl::parse(&parts.headers).no_transform
            {
                return Response::from_parts(parts, body);
            }
            // Which bytes go out depends on Accept-Encoding either way.
            vary_accept_encoding(&mut parts.headers);
            if accepted.accepts(coding) {
                return Response::from_parts(parts, body);
            }
            transformed_head(&mut parts.headers, None, None);
            if head_only {
                return Response::from_parts(parts, body);
            }
            let body = http_body_util::BodyExt::boxed(CodecBody::decode(body, coding));
            Response::from_parts(parts, body)
        }
        Some(None) if compressible(cfg, parts.status, &parts.headers, len) => {
            let Some(coding) = accepted.choose(&cfg.algorithms) else {
                vary_accept_encoding(&mut parts.headers);
                return Response::from_parts(parts, body);
            };
            transformed_head(&mut parts.headers, Some(coding), None);
            if head_only {
                return Response::from_parts(parts, body);
            }
            let body = http_body_util::BodyExt::boxed(CodecBody::encode(
                body,
                coding,
                cfg.level,
                counters(coding),
            ));
            Response::from_parts(parts, body)
        }
        _ => Response::from_parts(parts, body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::headers::test_map as head;

    #[test]
    fn types_match_exactly_or_by_top_level() {
        let cfg = CompressionConfig::default();
        let ok =
            |ct: &str| compressible(&cfg, StatusCode::OK, &head(&[("content-type", ct)]), None);
        assert!(ok("text/html; charset=utf-8"));
        assert!(ok("TEXT/CSS"));
        assert!(ok("application/json"));
        assert!(ok("image/svg+xml"));
        assert!(!ok("image/png"));
        assert!(!ok("application/octet-stream"));
        assert!(!compressible(&cfg, StatusCode::OK, &HeaderMap::new(), None));
    }

    #[test]
    fn small_partial_and_no_transform_are_left_alone() {
        let cfg = CompressionConfig::default();
        let html = head(&[("content-type", "text/html")]);
        assert!(!compressible(&cfg, StatusCode::OK, &html, Some(100)));
        assert!(compressible(&cfg, StatusCode::OK, &html, Some(5000)));
        assert!(!compressible(
            &cfg,
            StatusCode::PARTIAL_CONTENT,
            &html,
            None
        ));
        assert!(!compressible(&cfg, StatusCode::NO_CONTENT, &html, None));
        assert!(!compressible(&cfg, StatusCode::NOT_MODIFIED, &html, None));
        let nt = head(&[
            ("content-type", "text/html"),
            ("cache-control", "public, no-transform"),
        ]);
        assert!(!compressible(&cfg, StatusCode::OK, &nt, None));
    }

    #[test]
    fn vary_is_merged_and_etag_weakened() {
        let mut h = head(&[
            ("vary", "Accept-Language"),
            ("etag", "\"x\""),
            ("content-length", "9"),
        ]);
        transformed_head(&mut h, Some(Coding::Br), None);
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept-Language", "Accept-Encoding"]);
        assert_eq!(h.get(header::ETAG).unwrap(), "W/\"x\"");
        assert!(h.get(header::CONTENT_LENGTH).is_none());
        assert_eq!(h.get(header::CONTENT_ENCODING).unwrap(), "br");
        let mut again = h.clone();
        vary_accept_encoding(&mut again);
        assert_eq!(again.get_all(header::VARY).iter().count(), 2);
    }

    #[test]
    fn content_coding_recognises_one_known_coding() {
        assert_eq!(content_coding(&HeaderMap::new()), Some(None));
        assert_eq!(
            content_coding(&head(&[("content-encoding", "identity")])),
            Some(None)
        );
        assert_eq!(
            content_coding(&head(&[("content-encoding", "GZIP")])),
            Some(Some(Coding::Gzip))
        );
        assert_eq!(
            content_coding(&head(&[("content-encoding", "deflate")])),
            None
        );
        assert_eq!(
            content_coding(&head(&[("content-encoding", "gzip, br")])),
            None
        );
    }
}
