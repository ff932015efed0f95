//! `[[route]]`: host patterns and path prefixes, the pool each route
//! sends to, its `rate_limit`, and the `cache` and `compress` switches.

use std::collections::HashSet;

use super::raw::RawConfig;
use super::{cache, KeySpec, PoolConfig, Rate, Seg, Validator};

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Lower-cased host patterns: exact names or `*.suffix`. Empty = any host.
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub pool: String,
    pub rate_limit: Option<RateLimitConfig>,
    /// `cache = true`: what goes into this route's cache keys.
    pub cache: Option<KeySpec>,
    /// `compress = true`: responses are compressed per `[compression]`.
    pub compress: bool,
}

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
    pub(super) fn routes(&mut self, raw: &RawConfig, pools: &[PoolConfig]) -> Vec<RouteConfig> {
        if raw.route.is_empty() {
            self.error(
                &[],
                "no [[route]] is configured; add one with pool = \"<name of a [pool.NAME] table>\"",
            );
        }
        let mut out = Vec::new();
        let mut names = HashSet::new();
        for (i, r) in raw.route.iter().enumerate() {
            let at = |k| [Seg::Key("route"), Seg::Index(i), Seg::Key(k)];
            let name = r.name.clone().unwrap_or_else(|| i.to_string());
            if !names.insert(name.clone()) {
                self.error(&at("name"), format!("duplicate route name \"{name}\""));
            }
            match pools.iter().find(|p| p.name == r.pool) {
                None => self.error(
                    &at("pool"),
                    format!(
                        "no pool named \"{}\"; define it as [pool.{}]",
                        r.pool, r.pool
                    ),
                ),
                Some(p) if p.servers.is_empty() && raw.pool[&r.pool].servers.is_empty() => self
                    .error(
                        &[Seg::Key("pool"), Seg::Key(&r.pool)],
                        format!("pool \"{}\" is used by a route but has no servers", r.pool),
                    ),
                Some(_) => {}
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
            });
        }
        out
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
}
