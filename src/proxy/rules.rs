//! A route's rules on the request path, in the order they apply (the
//! rules themselves are compiled at load, in `crate::config`):
//!
//! 1. [`admit`]: `deny`, then `allow`, by the client's address (403);
//! 2. (the route's rate limit);
//! 3. [`redirect`]: the answer, without a pool;
//! 4. (`max_body_bytes`, in place of the listener's limit);
//! 5. [`rewrite`]: `rewrite`, then `strip_prefix`, on the path that the
//!    cache key, the upstream and the access log's `upstream_path` see;
//! 6. [`forwarded`]: `request_headers` (remove, set, add), then
//!    `upstream_host`, on the request sent upstream;
//! 7. [`after`]: `response_headers` (remove, set, add) on every response
//!    the route gives: the upstream's, the cache's, a redirect and
//!    sluice's own refusals.

use http::{header, HeaderMap, Response, Uri};

use crate::body::{self, ProxyBody};
use crate::config::{RouteRules, Vars};
use crate::reply::Refusal;

use super::observe;

/// A route's rules with what their variables stand for on this request.
#[derive(Clone, Copy)]
pub(super) struct Ruled<'a> {
    pub rules: &'a RouteRules,
    pub vars: Vars<'a>,
}

/// `allow` and `deny`, by the address the proxy knows the client by.
pub(super) fn admit(r: Ruled<'_>) -> Result<(), Refusal> {
    if r.rules.admits(r.vars.client) {
        Ok(())
    } else {
        tracing::debug!(client = %r.vars.client, "refused by the route's allow / deny");
        Err(Refusal::Forbidden)
    }
}

/// The redirect a redirect route answers with.
pub(super) fn redirect(r: Ruled<'_>) -> Option<Result<Response<ProxyBody>, Refusal>> {
    let redirect = r.rules.redirect.as_ref()?;
    let Some(location) = redirect.to.expand(&r.vars) else {
        return Some(Err(Refusal::RuleFailed("the redirect target is not valid")));
    };
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = redirect.status;
    resp.headers_mut().insert(header::LOCATION, location);
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("0"));
    resp.extensions_mut().insert(crate::reply::Generated);
    Some(Ok(resp))
}

/// `rewrite` then `strip_prefix` on `uri`'s path; the new path and query
/// go to the access log as `upstream_path` when they differ.
pub(super) fn rewrite(
    r: Ruled<'_>,
    uri: &mut Uri,
    outcome: &mut observe::Outcome,
) -> Result<(), Refusal> {
    let Some(target) = r.rules.upstream_path(uri.path(), uri.query()) else {
        return Ok(());
    };
    let logged: Box<str> = target.as_str().into();
    super::set_target(uri, target)
        .map_err(|()| Refusal::RuleFailed("the rewritten path is not valid"))?;
    outcome.upstream_path = Some(logged);
    Ok(())
}

/// `request_headers` then `upstream_host`, on the head sent upstream.
pub(super) fn forwarded(r: Ruled<'_>, head: &mut HeaderMap) {
    r.rules.request_headers.apply(head, &r.vars);
    if let Some(host) = &r.rules.upstream_host {
        head.insert(header::HOST, host.clone());
    }
}

/// `response_headers` on the response going to the client.
pub(super) fn after(r: Ruled<'_>, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    r.rules.response_headers.apply(resp.headers_mut(), &r.vars);
    resp
}
