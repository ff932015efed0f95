//! gRPC as the proxy sees it (gRPC over HTTP/2, `PROTOCOL-HTTP2.md` in the
//! gRPC repository): which requests are gRPC calls, the deadline a call
//! carries in `grpc-timeout`, and sluice's own errors in the shape a gRPC
//! client reads. sluice never decodes a call's messages: they and their
//! trailers (`grpc-status`, `grpc-message`) stream through untouched.
//!
//! A gRPC client reads the outcome of a call from `grpc-status`, not from
//! the HTTP status: a bare `503` reaches its application as "unknown
//! error", so sluice's own refusals become *trailers-only* responses
//! (HTTP 200, `content-type: application/grpc`, `grpc-status` and
//! `grpc-message` in the head, no body), as Envoy and nginx answer.

use std::time::Duration;

use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::body::{self, ProxyBody};

pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(crate) static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The gRPC status codes sluice answers with (the spec's `Code` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Code {
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    /// The code for a reply sluice made with HTTP status `status`: the
    /// gRPC project's HTTP-to-gRPC table (`http-grpc-status-mapping.md`),
    /// except that a timeout is `DEADLINE_EXCEEDED` rather than
    /// `UNAVAILABLE`, and a limit (rate, size) is `RESOURCE_EXHAUSTED`, as
    /// Envoy answers: a client must not retry those blindly.
    pub(crate) fn for_status(status: StatusCode) -> Code {
        match status.as_u16() {
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 | 405 => Code::Unimplemented,
            408 | 504 => Code::DeadlineExceeded,
            413 | 429 | 431 => Code::ResourceExhausted,
            400 | 414 | 500 => Code::Internal,
            502 | 503 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

/// Whether a request with these fields is a gRPC call: its content type
/// is `application/grpc`, or `application/grpc+proto` and the like.
pub(crate) fn is_call(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    crate::headers::first(headers, &header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= GRPC.len()
            && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
            && matches!(v.get(GRPC.len()), None | Some(b'+' | b';'))
    })
}

/// The call's deadline from its `grpc-timeout` field: 1 to 8 digits and a
/// unit (`H` hours, `M` minutes, `S` seconds, `m` milliseconds, `u`
/// microseconds, `n` nanoseconds). A malformed value is ignored, as Envoy
/// does: the field still goes upstream unchanged, whose server decides.
pub(crate) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_timeout(headers.get(&GRPC_TIMEOUT)?.as_bytes())
}

fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits: no overflow in u64 for any unit below.
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The answer to a gRPC call: `resp` itself, unless it is an error sluice
/// made (a [`crate::reply`] of 4xx or 5xx), which becomes
/// [`error_reply`]. A redirect a route's rules made stays as it is.
pub(crate) fn answer(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let status = resp.status();
    if !crate::reply::is_generated(&resp) || !(status.is_client_error() || status.is_server_error())
    {
        return resp;
    }
    let message = crate::reply::message(&resp)
        .or(status.canonical_reason())
        .unwrap_or("error")
        .to_owned();
    error_reply(resp, &message)
}

/// Reshapes an error reply sluice made (`resp`, with the text `message`)
/// for a gRPC client: HTTP 200, trailers-only, the code from
/// [`Code::for_status`] and the text in `grpc-message`. Its other fields
/// (`Retry-After`, the `RateLimit-*` fields) stay.
fn error_reply(resp: Response<ProxyBody>, message: &str) -> Response<ProxyBody> {
    let (mut parts, _text) = resp.into_parts();
    let code = Code::for_status(parts.status);
    parts.status = StatusCode::OK;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert(GRPC_STATUS.clone(), HeaderValue::from(code as u16));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        parts.headers.insert(GRPC_MESSAGE.clone(), v);
    }
    Response::from_parts(parts, body::empty())
}

/// `grpc-message`'s encoding: bytes outside printable ASCII, and `%`
/// itself, as `%XX` (upper-case hex).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn grpc_content_types_mark_a_call() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
            "Application/GRPC",
            "application/grpc; charset=utf-8",
        ] {
            assert!(is_call(&with("content-type", ct)), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/grpcx",
            "application/json",
            "text/plain",
        ] {
            assert!(!is_call(&with("content-type", ct)), "{ct}");
        }
        assert!(!is_call(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeout_units() {
        let table = [
            ("2H", Duration::from_secs(7200)),
            ("3M", Duration::from_secs(180)),
            ("10S", Duration::from_secs(10)),
            ("250m", Duration::from_millis(250)),
            ("99999999u", Duration::from_micros(99_999_999)),
            ("1n", Duration::from_nanos(1)),
            ("0m", Duration::ZERO),
        ];
        for (v, d) in table {
            assert_eq!(timeout(&with("grpc-timeout", v)), Some(d), "{v}");
        }
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        // Nine digits, no digits, no unit, an unknown unit, a sign, a space.
        for v in ["123456789m", "m", "100", "10s", "10x", "-5S", " 5S", "5 S"] {
            assert_eq!(timeout(&with("grpc-timeout", v)), None, "{v}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn http_statuses_map_to_grpc_codes() {
        let table = [
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::DeadlineExceeded),
            (429, Code::ResourceExhausted),
            (413, Code::ResourceExhausted),
            (404, Code::Unimplemented),
            (403, Code::PermissionDenied),
            (400, Code::Internal),
            (418, Code::Unknown),
        ];
        for (status, code) in table {
            assert_eq!(
                Code::for_status(StatusCode::from_u16(status).unwrap()),
                code,
                "{status}"
            );
        }
    }

    #[test]
    fn an_error_reply_becomes_trailers_only() {
        let mut resp = Response::new(body::full("upstream failed\n"));
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("16"));
        let resp = error_reply(resp, "no usable upstream server");
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(h[&GRPC_STATUS], "14");
        assert_eq!(h[&GRPC_MESSAGE], "no usable upstream server");
        assert_eq!(h[header::RETRY_AFTER], "3");
        assert!(h.get(header::CONTENT_LENGTH).is_none());
        assert!(http_body::Body::is_end_stream(resp.body()));
    }

    #[test]
    fn only_sluices_own_errors_are_reshaped() {
        let refused = answer(crate::reply::Refusal::UpstreamTimedOut.reply());
        assert_eq!(refused.headers()[&GRPC_STATUS], "4");
        assert_eq!(refused.headers()[&GRPC_MESSAGE], "upstream timed out");
        let limited = answer(crate::reply::Refusal::RateLimited.reply());
        assert_eq!(limited.headers()[&GRPC_STATUS], "8");
        // An upstream's own 503 is the upstream's answer: passed on.
        let mut upstream = Response::new(body::empty());
        *upstream.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let passed = answer(upstream);
        assert_eq!(passed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(passed.headers().get(&GRPC_STATUS).is_none());
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("plain text"), "plain text");
        assert_eq!(percent_encode("100% sure"), "100%25 sure");
        assert_eq!(percent_encode("caf\u{e9}\n"), "caf%C3%A9%0A");
    }
}
