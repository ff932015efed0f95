//! Responses sluice makes itself, and the one map from every reason to
//! refuse or fail a request to its status code and message.
//!
//! The request path ([`crate::proxy`]) and the cache name *what* went wrong
//! as a [`Refusal`]; only [`Refusal::reply`] decides the status, the text and
//! the extra fields (`Retry-After`, `Connection: close`).

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, ProxyBody};

/// Marks a response sluice generated itself (an error page, not the
/// upstream's answer), so that the cache never stores it and an unsafe
/// method's "success" never invalidates anything.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Generated;

/// Why a request is answered by sluice rather than by an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The request's framing or syntax is in doubt: 400, and the
    /// connection closes (what follows cannot be trusted).
    BadRequest(&'static str),
    /// The `Host` / authority is unusable: 400 with the parser's reason.
    BadAuthority(String),
    /// The request target is longer than `max_uri_bytes`: 414.
    UriTooLong,
    /// The head is over `max_header_bytes` or `max_header_count`: 431.
    HeadersTooLarge,
    /// CONNECT (tunnelling) is not offered: 405.
    ConnectNotAllowed,
    /// The body is over `max_body_bytes`: 413.
    BodyTooLarge,
    /// The body arrives slower than `min_body_rate`: 408; an HTTP/1.x
    /// connection closes, as the rest of the body will not be read.
    BodyTooSlow { close: bool },
    /// No route matches the host and path: 404.
    NoRoute,
    /// The route's `allow` / `deny` refuses the client's address: 403.
    Forbidden,
    /// A route rule could not make a valid request or reply from this one
    /// (a rewrite or redirect target that is not a valid URI): 500.
    RuleFailed(&'static str),
    /// The route's rate limit refused the request: 429.
    RateLimited,
    /// `Cache-Control: only-if-cached` and nothing usable stored: 504
    /// (RFC 9111 §5.2.1.7).
    NotCached,
    /// Every member is down, ejected or draining: 503, with `Retry-After`
    /// when one may be back.
    NoMember { retry_after: u64 },
    /// Every member is at `max_connections` and `max_pending` requests
    /// already wait: 503 (circuit breaking).
    AtCapacity,
    /// No member could be tried at all: 503.
    NoServers,
    /// The upstream failed (a malformed answer, or its body broke before
    /// the response could be made): 502.
    UpstreamFailed,
    /// No member could be reached: every attempt was refused, timed out
    /// connecting, or was reset before a response head: 502.
    Unreachable,
    /// The upstream did not answer within `response_timeout`: 504.
    UpstreamTimedOut,
    /// The last attempt's retryable status (502/503/504), passed on after
    /// retries ran out.
    UpstreamStatus(StatusCode),
}

impl Refusal {
    /// The response for this refusal: a short plain-text body, marked
    /// [`Generated`].
    pub(crate) fn reply(&self) -> Response<ProxyBody> {
        let (status, message) = match self {
            Refusal::BadRequest(m) => (StatusCode::BAD_REQUEST, *m),
            Refusal::BadAuthority(m) => (StatusCode::BAD_REQUEST, m.as_str()),
            Refusal::UriTooLong => (StatusCode::URI_TOO_LONG, "request target too long"),
            Refusal::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header fields too large",
            ),
            Refusal::ConnectNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported")
            }
            Refusal::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            Refusal::BodyTooSlow { .. } => (StatusCode::REQUEST_TIMEOUT, "request body too slow"),
            Refusal::NoRoute => (StatusCode::NOT_FOUND, "no route for this host and path"),
            Refusal::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Refusal::RuleFailed(m) => (StatusCode::INTERNAL_SERVER_ERROR, *m),
            Refusal::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "too many requests"),
            Refusal::NotCached => (StatusCode::GATEWAY_TIMEOUT, "not in cache (only-if-cached)"),
            Refusal::NoMember { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "no usable upstream server")
            }
            Refusal::AtCapacity => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream servers at capacity",
            ),
            Refusal::NoServers => (StatusCode::SERVICE_UNAVAILABLE, "no upstream servers"),
            Refusal::UpstreamFailed | Refusal::Unreachable => {
                (StatusCode::BAD_GATEWAY, "upstream failed")
            }
            Refusal::UpstreamTimedOut => (StatusCode::GATEWAY_TIMEOUT, "upstream timed out"),
            Refusal::UpstreamStatus(status) => (*status, "upstream failed"),
        };
        let mut resp = text(status, message);
        if self.origin_unreachable() {
            resp.extensions_mut().insert(OriginUnreachable);
        }
        if matches!(self, Refusal::UpstreamTimedOut) {
            resp.extensions_mut().insert(UpstreamTimedOut);
        }
        let headers = resp.headers_mut();
        match self {
            Refusal::BadRequest(_) | Refusal::BadAuthority(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Refusal::BodyTooSlow { close: true } => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Refusal::NoMember { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Refusal::AtCapacity => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

impl Refusal {
    /// The origin could not be reached at all (RFC 9111 §4.2.4's
    /// "disconnected"), as opposed to answering badly or being busy.
    fn origin_unreachable(&self) -> bool {
        matches!(
            self,
            Refusal::Unreachable
                | Refusal::UpstreamTimedOut
                | Refusal::NoMember { .. }
                | Refusal::NoServers
        )
    }
}

/// Marks the 504 sluice answers itself when a member took too long
/// (`response_timeout`, a gRPC deadline): the access log's `error` says
/// `upstream_timeout`, which a member's own 504 does not.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamTimedOut;

/// Marks a generated reply that stands for an unreachable origin, for which
/// the cache may serve a stale entry (`stale_if_unreachable`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OriginUnreachable;

/// Whether `resp` stands for an origin sluice could not reach.
pub(crate) fn origin_unreachable<B>(resp: &Response<B>) -> bool {
    resp.extensions().get::<OriginUnreachable>().is_some()
}

/// The text of a reply sluice made, for answers that carry it in a field
/// rather than the body (a gRPC call's `grpc-message`).
#[derive(Debug, Clone)]
struct Message(Box<str>);

/// The text [`text`] put in `resp`, if it made it.
pub(crate) fn message<B>(resp: &Response<B>) -> Option<&str> {
    resp.extensions().get::<Message>().map(|m| &*m.0)
}

/// A short plain-text response generated by sluice itself.
pub(crate) fn text(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(Generated);
    resp.extensions_mut().insert(Message(message.into()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A JSON answer generated by sluice itself (the PURGE method's reply).
pub(crate) fn json(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(format!("{text}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.extensions_mut().insert(Generated);
    resp
}

/// Whether sluice made `resp` itself.
pub(crate) fn is_generated<B>(resp: &Response<B>) -> bool {
    resp.extensions().get::<Generated>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(resp: &Response<ProxyBody>, name: header::HeaderName) -> Option<&str> {
        resp.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn every_refusal_maps_to_one_status() {
        let table = [
            (Refusal::BadRequest("x"), 400),
            (Refusal::BadAuthority("x".into()), 400),
            (Refusal::UriTooLong, 414),
            (Refusal::HeadersTooLarge, 431),
            (Refusal::ConnectNotAllowed, 405),
            (Refusal::BodyTooLarge, 413),
            (Refusal::BodyTooSlow { close: false }, 408),
            (Refusal::NoRoute, 404),
            (Refusal::RateLimited, 429),
            (Refusal::NotCached, 504),
            (Refusal::NoMember { retry_after: 3 }, 503),
            (Refusal::AtCapacity, 503),
            (Refusal::NoServers, 503),
            (Refusal::UpstreamFailed, 502),
            (Refusal::Unreachable, 502),
            (Refusal::UpstreamTimedOut, 504),
            (
                Refusal::UpstreamStatus(StatusCode::SERVICE_UNAVAILABLE),
                503,
            ),
        ];
        for (refusal, status) in table {
            let resp = refusal.reply();
            assert_eq!(resp.status().as_u16(), status, "{refusal:?}");
            assert!(is_generated(&resp), "{refusal:?}");
        }
    }

    #[test]
    fn malformed_requests_close_the_connection() {
        let resp = Refusal::BadRequest("bad").reply();
        assert_eq!(field(&resp, header::CONNECTION), Some("close"));
        let resp = Refusal::BodyTooSlow { close: true }.reply();
        assert_eq!(field(&resp, header::CONNECTION), Some("close"));
        let resp = Refusal::BodyTooSlow { close: false }.reply();
        assert_eq!(field(&resp, header::CONNECTION), None);
    }

    #[test]
    fn unavailable_pools_say_when_to_retry() {
        let resp = Refusal::NoMember { retry_after: 7 }.reply();
        assert_eq!(field(&resp, header::RETRY_AFTER), Some("7"));
        let resp = Refusal::AtCapacity.reply();
        assert_eq!(field(&resp, header::RETRY_AFTER), Some("1"));
    }
}
