//! `[[route]]`: host patterns and path prefixes, the pool each route
//! sends to, its `rate_limit`, the `cache` and `compress` switches, the
//! client fields it strips before forwarding, and its rules (checked and
//! compiled in [`super::rules`]).

use std::collections::HashSet;
use std::sync::Arc;

use http::HeaderName;

use super::raw::RawConfig;
use super::rules::RouteRules;
use super::{cache, KeySpec, PoolConfig, Rate, Seg, Validator};

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Lower-cased host patterns: exact names or `*.suffix`. Empty = any host.
    pub hosts: Vec<String>,
    pub path_prefix: String,
    /// The pool requests go to; `None` only on a redirect route.
    pub pool: Option<String>,
    pub rate_limit: Option<RateLimitConfig>,
    /// `cache = true`: what goes into this route's cache keys.
    pub cache: Option<KeySpec>,
    /// `compress = true`: responses are compressed per `[compression]`.
    pub compress: bool,
    /// Client request fields removed before forwarding: the route's
    /// `strip_request_headers`, or [`DEFAULT_STRIP_REQUEST_HEADERS`].
    /// Parsed once here, so the request path only looks names up.
    pub strip_request_headers: Arc<[HeaderName]>,
    /// `allow`, `deny`, `redirect`, `rewrite` and the other rules; `None`
    /// when the route has none, so a plain route pays one check.
    pub rules: Option<Arc<RouteRules>>,
}

/// Client fields removed before forwarding unless a route says otherwise:
/// each makes some origin framework change the request's URL, method,
/// client address, scheme or port, none of them is sluice's to pass on,
/// and a response they shaped would be cached under the URL as sent.
pub(crate) const DEFAULT_STRIP_REQUEST_HEADERS: [&str; 14] = [
    // Path overrides (IIS URL Rewrite, Symfony, Laminas).
    "x-original-url",
    "x-rewrite-url",
    // Method overrides (Rails, Express method-override, Google APIs).
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    // Client address claims (nginx real_ip, Akamai, Rackspace).
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    // Scheme, port and prefix claims sluice does not set (Spring, Rails,
    // ASP.NET forwarded-header middleware).
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "front-end-https",
];

/// What a route's request rate is counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    /// The value of this request header; the client IP when it is absent.
    Header(http::HeaderName),
}

/// A route's `rate_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub rate: Rate,
    pub key: RateKey,
}

impl Validator<'_> {
    /// Warns of a route an earlier one always answers first (routes match
    /// in file order) and of a pool no route uses.
    pub(super) fn unreachable(&mut self, routes: &[RouteConfig], pools: &[PoolConfig]) {
        for (j, later) in routes.iter().enumerate() {
            if let Some(earlier) = routes[..j].iter().find(|e| shadows(e, later)) {
                self.warn(
                    &[Seg::Key("route"), Seg::Index(j)],
                    format!(
                        "route \"{}\" is never used: route \"{}\" before it matches every request it would (routes match in file order; put the narrower one first)",
                        later.name, earlier.name
                    ),
                );
            }
        }
        for pool in pools {
            if !routes
                .iter()
                .any(|r| r.pool.as_deref() == Some(pool.name.as_str()))
            {
                self.warn(
                    &[Seg::Key("pool"), Seg::Key(&pool.name)],
                    format!("no route uses pool \"{}\"", pool.name),
                );
            }
        }
    }

    pub(super) fn routes(&mut self, raw: &RawConfig, pools: &[PoolConfig]) -> Vec<RouteConfig> {
        if raw.route.is_empty() {
            self.error(
                &[],
                "no [[route]] is configured; add one with pool = \"<name of a [pool.NAME] table>\"",
            );
        }
        let mut out = Vec::new();
        let mut names = HashSet::new();
        // One list shared by every route that keeps the default.
        let default_strip: Arc<[HeaderName]> = DEFAULT_STRIP_REQUEST_HEADERS
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        for (i, r) in raw.route.iter().enumerate() {
            let at = |k| [Seg::Key("route"), Seg::Index(i), Seg::Key(k)];
            let name = r.name.clone().unwrap_or_else(|| i.to_string());
            if !names.insert(name.clone()) {
                self.error(&at("name"), format!("duplicate route name \"{name}\""));
            }
            match (&r.pool, &r.redirect) {
                (Some(_), Some(_)) => self.error(
                    &at("pool"),
                    "a redirect route sends nothing upstream; remove `pool` (or `redirect`)",
                ),
                (None, None) => self.error(
                    &[Seg::Key("route"), Seg::Index(i)],
                    "`pool` is required: the [pool.NAME] this route sends to \
                     (only a route with `redirect` has none)",
                ),
                (Some(pool), None) => self.route_pool(&at("pool"), pool, raw, pools),
                // Checked with the other rules.
                (None, Some(_)) => {}
            }
            if !r.path_prefix.starts_with('/') {
                self.error(&at("path_prefix"), "must start with \"/\"");
            }
            let mut hosts = Vec::new();
            if let Some(list) = &r.hosts {
                if list.is_empty() {
                    self.error(
                        &at("hosts"),
                        "an empty list matches nothing; remove the key to match any host",
                    );
                }
                for (j, h) in list.iter().enumerate() {
                    let h = h.to_ascii_lowercase();
                    if let Err(why) = check_host_pattern(&h) {
                        self.error(
                            &[
                                Seg::Key("route"),
                                Seg::Index(i),
                                Seg::Key("hosts"),
                                Seg::Index(j),
                            ],
                            why,
                        );
                    }
                    hosts.push(h);
                }
            }
            let rate_limit = r.rate_limit.as_ref().map(|rl| {
                let at = [Seg::Key("route"), Seg::Index(i), Seg::Key("rate_limit")];
                let rate = self.rate(&at, "requests", rl.requests, rl.per, rl.burst);
                let key = parse_rate_key(&rl.key).unwrap_or_else(|why| {
                    let mut path = at.to_vec();
                    path.push(Seg::Key("key"));
                    self.error(&path, why);
                    RateKey::ClientIp
                });
                RateLimitConfig { rate, key }
            });
            let cache = self.route_cache(
                i,
                &cache::RawRouteCache {
                    cache: r.cache,
                    key_headers: r.cache_key_headers.as_deref(),
                    key_cookies: r.cache_key_cookies.as_deref(),
                    key_ignore_params: r.cache_key_ignore_params.as_deref(),
                },
            );
            out.push(RouteConfig {
                name,
                hosts,
                path_prefix: r.path_prefix.clone(),
                pool: r.pool.clone(),
                rate_limit,
                cache,
                compress: r.compress,
                strip_request_headers: match &r.strip_request_headers {
                    Some(names) => self.strip_list(i, names),
                    None => default_strip.clone(),
                },
                rules: self.route_rules(i, r),
            });
        }
        out
    }
}

impl Validator<'_> {
    /// A route's `pool` names a pool with servers.
    fn route_pool(&mut self, at: &[Seg], pool: &str, raw: &RawConfig, pools: &[PoolConfig]) {
        match pools.iter().find(|p| p.name == pool) {
            None => self.error(
                at,
                format!("no pool named \"{pool}\"; define it as [pool.{pool}]"),
            ),
            Some(p) if p.servers.is_empty() && raw.pool[pool].servers.is_empty() => self.error(
                &[Seg::Key("pool"), Seg::Key(pool)],
                format!("pool \"{pool}\" is used by a route but has no servers"),
            ),
            Some(_) => {}
        }
    }

    /// A route's own `strip_request_headers`: valid field names, never
    /// `Host` (which the upstream request needs).
    fn strip_list(&mut self, route: usize, names: &[String]) -> Arc<[HeaderName]> {
        let mut out = Vec::with_capacity(names.len());
        for (j, name) in names.iter().enumerate() {
            let at = [
                Seg::Key("route"),
                Seg::Index(route),
                Seg::Key("strip_request_headers"),
                Seg::Index(j),
            ];
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) if h == http::header::HOST => self.error(
                    &at,
                    "Host cannot be stripped: the upstream request needs it",
                ),
                Ok(h) => {
                    if !out.contains(&h) {
                        out.push(h);
                    }
                }
                Err(_) => self.error(&at, format!("\"{name}\" is not a valid header name")),
            }
        }
        out.into()
    }
}

/// `client_ip`, or `header:` followed by a valid header field name.
fn parse_rate_key(key: &str) -> Result<RateKey, String> {
    if key == "client_ip" {
        return Ok(RateKey::ClientIp);
    }
    let usage = "use \"client_ip\" or \"header:<name>\" such as \"header:x-api-key\"";
    match key.strip_prefix("header:") {
        Some(name) => http::HeaderName::from_bytes(name.as_bytes())
            .map(RateKey::Header)
            .map_err(|_| format!("\"{name}\" is not a valid header name; {usage}")),
        None => Err(format!("unknown key \"{key}\"; {usage}")),
    }
}

/// `name` is at most 253 bytes of non-empty dot-separated labels, each of
/// which `label_ok` accepts.
pub(super) fn dns_labels_ok(name: &str, label_ok: impl Fn(&str) -> bool) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| !label.is_empty() && label_ok(label))
}

/// A host pattern is a DNS name (no port) or `*.` followed by one.
pub(super) fn check_host_pattern(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    let valid = dns_labels_ok(name, |label| {
        label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "\"{h}\" is not a host name or \"*.suffix\" pattern (no port, no scheme)"
        ))
    }
}

/// Whether `earlier` matches every request `later` matches: its prefix is
/// a prefix of `later`'s, and its hosts cover `later`'s.
fn shadows(earlier: &RouteConfig, later: &RouteConfig) -> bool {
    if !later.path_prefix.starts_with(&earlier.path_prefix) {
        return false;
    }
    if earlier.hosts.is_empty() {
        return true;
    }
    !later.hosts.is_empty()
        && later
            .hosts
            .iter()
            .all(|h| earlier.hosts.iter().any(|e| host_covers(e, h)))
}

/// Whether host pattern `a` matches every name pattern `b` matches
/// (lower-cased; `*.suffix` matches names below the suffix).
fn host_covers(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (None, None) => a == b,
        (None, Some(_)) => false,
        (Some(suffix), None) => b.len() > suffix.len() && b.ends_with(suffix),
        (Some(suffix), Some(below)) => below.ends_with(suffix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert!(check_host_pattern("example.com").is_ok());
        assert!(check_host_pattern("*.example.com").is_ok());
        assert!(check_host_pattern("example.com:80").is_err());
        assert!(check_host_pattern("*").is_err());
        assert!(check_host_pattern("a..b").is_err());
    }

    #[test]
    fn strip_request_headers_defaults_and_replaces() {
        use crate::config::tests::{parse, MINIMAL};
        let c = parse(MINIMAL).expect("valid");
        let default: Vec<&str> = c.routes[0]
            .strip_request_headers
            .iter()
            .map(|h| h.as_str())
            .collect();
        assert_eq!(default, DEFAULT_STRIP_REQUEST_HEADERS);
        let own = MINIMAL.replace(
            "pool = \"app\"\n",
            "pool = \"app\"\nstrip_request_headers = [\"X-Secret\", \"x-secret\", \"forwarded\"]\n",
        );
        let c = parse(&own).expect("valid");
        let list: Vec<&str> = c.routes[0]
            .strip_request_headers
            .iter()
            .map(|h| h.as_str())
            .collect();
        assert_eq!(list, ["x-secret", "forwarded"]);
        let none = MINIMAL.replace(
            "pool = \"app\"\n",
            "pool = \"app\"\nstrip_request_headers = []\n",
        );
        assert!(parse(&none).expect("valid").routes[0]
            .strip_request_headers
            .is_empty());
        let bad = MINIMAL.replace(
            "pool = \"app\"\n",
            "pool = \"app\"\nstrip_request_headers = [\"ok\", \"bad name\", \"Host\"]\n",
        );
        let e = parse(&bad).unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "route[0].strip_request_headers[1]",
                "route[0].strip_request_headers[2]"
            ],
            "{e}"
        );
    }
}
