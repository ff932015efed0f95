//! The cache keys: `[cache]` (the shared store and its rules) and each
//! route's `cache` / `cache_key_*` keys, from raw TOML to validated types.
//!
//! The store exists whether or not a route uses it; nothing is cached
//! unless a route sets `cache = true`.

use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::cache_tier::{L2Config, L2Kind};
use super::observe::Cidr;
use super::redis::RedisEndpoint;
use super::units::{de_duration, de_opt_size, de_size};
use super::{Seg, Validator};

/// `[cache]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    #[serde(default = "d_max_size", deserialize_with = "de_size")]
    pub max_size: u64,
    #[serde(default = "d_max_object_size", deserialize_with = "de_size")]
    pub max_object_size: u64,
    /// Absent: a quarter of `max_size`, and at least `max_object_size`.
    #[serde(default, deserialize_with = "de_opt_size")]
    pub max_fill_memory: Option<u64>,
    #[serde(default = "yes")]
    pub status_header: bool,
    #[serde(default = "d_5s", deserialize_with = "de_duration")]
    pub lock_timeout: Duration,
    #[serde(default, deserialize_with = "de_duration")]
    pub serve_stale_on_error: Duration,
    #[serde(default = "d_1h", deserialize_with = "de_duration")]
    pub stale_if_unreachable: Duration,
    #[serde(default)]
    pub store_set_cookie: bool,
    #[serde(default)]
    pub purge_allow: Vec<String>,
    #[serde(default = "d_targeted_fields")]
    pub targeted_fields: Vec<String>,
    #[serde(default)]
    pub purge: RawPurge,
    /// `[cache.l2]`: the second tier, if any.
    #[serde(default)]
    pub l2: Option<super::cache_tier::RawL2>,
}

/// `[cache.purge]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPurge {
    /// `"none"` (the default) or `"redis"`.
    #[serde(default)]
    pub fanout: Option<String>,
    pub url: Option<String>,
    #[serde(default)]
    pub cluster: Vec<String>,
    pub key_prefix: Option<String>,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            max_size: d_max_size(),
            max_object_size: d_max_object_size(),
            max_fill_memory: None,
            status_header: true,
            lock_timeout: d_5s(),
            serve_stale_on_error: Duration::ZERO,
            stale_if_unreachable: d_1h(),
            store_set_cookie: false,
            purge_allow: Vec::new(),
            targeted_fields: d_targeted_fields(),
            purge: RawPurge::default(),
            l2: None,
        }
    }
}

fn d_targeted_fields() -> Vec<String> {
    vec!["CDN-Cache-Control".to_string()]
}

fn d_max_size() -> u64 {
    256 << 20
}
fn d_max_object_size() -> u64 {
    8 << 20
}
fn d_5s() -> Duration {
    Duration::from_secs(5)
}
/// Long enough to ride out a deploy or a short outage of every origin;
/// short enough that nobody is served hour-old pages for long by surprise.
/// (Varnish's default grace, 10 s, is about coalescing, not outages;
/// Traffic Server's `max_stale_age`, a week, keeps serving long after
/// anyone would notice.)
fn d_1h() -> Duration {
    Duration::from_secs(3600)
}
fn yes() -> bool {
    true
}

/// The validated `[cache]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Bytes the store may hold (heads, bodies and keys).
    pub max_size: u64,
    /// Larger responses stream through without being stored.
    pub max_object_size: u64,
    /// Bytes all fills in flight may hold together; a fill beyond it
    /// streams on uncached (`detail=fill-budget`).
    pub max_fill_memory: u64,
    /// Send RFC 9211 `Cache-Status` on responses of caching routes.
    pub status_header: bool,
    /// How long a request waits for a concurrent identical miss before
    /// going upstream on its own.
    pub lock_timeout: Duration,
    /// Serve a stale entry this long past its freshness when the upstream
    /// fails, even without `stale-if-error`; zero = off.
    pub serve_stale_on_error: Duration,
    /// Serve a stale entry this long past its freshness when no member of
    /// the pool can be reached (connect refused or timed out, reset or no
    /// head in time, all down); zero = off. RFC 9111 §4.2.4 "disconnected".
    pub stale_if_unreachable: Duration,
    /// Store responses carrying `Set-Cookie` (the cookie itself is never
    /// stored or replayed).
    pub store_set_cookie: bool,
    /// Clients allowed to send `PURGE` on the public listeners.
    pub purge_allow: Vec<Cidr>,
    /// RFC 9213 targeted fields this cache obeys, in precedence order.
    pub targeted_fields: Vec<HeaderName>,
    /// `[cache.purge] fanout`: where purges are published so that every
    /// instance applies them; `None` = this instance only.
    pub fanout: Option<FanoutConfig>,
    /// The second tier (`[cache.l2]`), if any.
    pub(crate) l2: Option<super::cache_tier::L2Config>,
}

/// `[cache.purge] fanout = "redis"`: purges go out on a Redis channel and
/// come in from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutConfig {
    pub redis: RedisEndpoint,
    /// The Redis key prefix; the channel is `<key_prefix>purge`.
    pub key_prefix: String,
}

impl FanoutConfig {
    /// The pub/sub channel purges travel on.
    pub fn channel(&self) -> String {
        format!("{}purge", self.key_prefix)
    }
}

/// The default Redis key prefix (`key_prefix`).
pub(crate) const DEFAULT_KEY_PREFIX: &str = "sluice:";

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig::from_raw(
            &RawCache::default(),
            Vec::new(),
            vec![HeaderName::from_static("cdn-cache-control")],
            None,
            None,
        )
    }
}

impl CacheConfig {
    /// `raw`'s values, with `purge_allow`, `targeted_fields` and `l2`
    /// validated.
    fn from_raw(
        raw: &RawCache,
        purge_allow: Vec<Cidr>,
        targeted_fields: Vec<HeaderName>,
        fanout: Option<FanoutConfig>,
        l2: Option<super::cache_tier::L2Config>,
    ) -> CacheConfig {
        CacheConfig {
            max_size: raw.max_size,
            max_object_size: raw.max_object_size,
            max_fill_memory: raw
                .max_fill_memory
                .unwrap_or_else(|| (raw.max_size / 4).max(raw.max_object_size)),
            status_header: raw.status_header,
            lock_timeout: raw.lock_timeout,
            serve_stale_on_error: raw.serve_stale_on_error,
            stale_if_unreachable: raw.stale_if_unreachable,
            store_set_cookie: raw.store_set_cookie,
            purge_allow,
            targeted_fields,
            fanout,
            l2,
        }
    }
}

/// What goes into a route's cache key besides scheme, host, path and query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySpec {
    /// Request headers whose values are part of the key.
    pub headers: Vec<HeaderName>,
    /// Cookies (by name) whose values are part of the key.
    pub cookies: Vec<String>,
    /// Query parameters left out of the key.
    pub ignore_params: IgnoreParams,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IgnoreParams {
    /// The whole query is part of the key.
    #[default]
    None,
    /// These parameters are dropped from it.
    Named(Vec<String>),
    /// `["*"]`: the query is not part of the key at all.
    All,
}

/// The route keys of the cache, as written in `[[route]]`.
#[derive(Debug, Default)]
pub(crate) struct RawRouteCache<'a> {
    pub cache: bool,
    pub key_headers: Option<&'a [String]>,
    pub key_cookies: Option<&'a [String]>,
    pub key_ignore_params: Option<&'a [String]>,
}

/// Limits that keep one object's weight within what the store can count.
const MAX_OBJECT_LIMIT: u64 = 1 << 30;

impl Validator<'_> {
    pub(super) fn cache(&mut self, raw: Option<&RawCache>) -> CacheConfig {
        let default = RawCache::default();
        let raw = raw.unwrap_or(&default);
        let at = |k| [Seg::Key("cache"), Seg::Key(k)];
        if raw.max_size == 0 {
            self.error(&at("max_size"), "must be more than 0 bytes");
        }
        if raw.max_object_size == 0 || raw.max_object_size > MAX_OBJECT_LIMIT {
            self.error(&at("max_object_size"), "must be between 1 byte and 1GiB");
        } else if raw.max_object_size > raw.max_size {
            self.error(
                &at("max_object_size"),
                format!(
                    "{} bytes is more than max_size ({} bytes)",
                    raw.max_object_size, raw.max_size
                ),
            );
        }
        if let Some(budget) = raw.max_fill_memory {
            if budget < raw.max_object_size {
                self.error(
                    &at("max_fill_memory"),
                    format!(
                        "{budget} bytes is less than max_object_size ({} bytes): \
                         an object that large could never be stored",
                        raw.max_object_size
                    ),
                );
            }
        }
        if raw.lock_timeout.is_zero() {
            self.error(
                &at("lock_timeout"),
                "must be more than 0s (coalesced requests wait this long)",
            );
        }
        let mut purge_allow = Vec::new();
        for (i, a) in raw.purge_allow.iter().enumerate() {
            match Cidr::parse(a) {
                Ok(c) => purge_allow.push(c),
                Err(why) => self.error(
                    &[Seg::Key("cache"), Seg::Key("purge_allow"), Seg::Index(i)],
                    why,
                ),
            }
        }
        let mut targeted = Vec::new();
        for (i, f) in raw.targeted_fields.iter().enumerate() {
            let at = [
                Seg::Key("cache"),
                Seg::Key("targeted_fields"),
                Seg::Index(i),
            ];
            match HeaderName::from_bytes(f.as_bytes()) {
                Ok(name) if name == http::header::CACHE_CONTROL => self.error(
                    &at,
                    "Cache-Control is what targeted fields take precedence over",
                ),
                Ok(name) if targeted.contains(&name) => {
                    self.error(&at, format!("\"{f}\" is listed twice"))
                }
                Ok(name) => targeted.push(name),
                Err(_) => self.error(&at, format!("\"{f}\" is not a valid header name")),
            }
        }
        let mut l2 = self.cache_l2(raw.l2.as_ref());
        if let Some(L2Config {
            kind: L2Kind::Redis(r),
            ..
        }) = &mut l2
        {
            r.stale = raw.serve_stale_on_error.max(raw.stale_if_unreachable);
        }
        let fanout = self.fanout(&raw.purge, l2.as_ref());
        CacheConfig::from_raw(raw, purge_allow, targeted, fanout, l2)
    }

    /// `[cache.purge]`: the fan-out and the Redis it goes through. With a
    /// Redis tier, the fan-out is on unless `fanout = "none"`, and goes
    /// through the tier's Redis and `key_prefix` unless the table names
    /// others.
    fn fanout(&mut self, raw: &RawPurge, l2: Option<&L2Config>) -> Option<FanoutConfig> {
        let table = [Seg::Key("cache"), Seg::Key("purge")];
        let at = |k| [Seg::Key("cache"), Seg::Key("purge"), Seg::Key(k)];
        let tier = match l2.map(|l| &l.kind) {
            Some(L2Kind::Redis(r)) => Some(r),
            _ => None,
        };
        match (raw.fanout.as_deref(), tier) {
            (Some("redis"), _) | (None, Some(_)) => {}
            (None | Some("none"), _) => {
                for (key, set) in [
                    ("url", raw.url.is_some()),
                    ("cluster", !raw.cluster.is_empty()),
                    ("key_prefix", raw.key_prefix.is_some()),
                ] {
                    if set {
                        self.error(&at(key), "has no effect without fanout = \"redis\"");
                    }
                }
                return None;
            }
            (Some(other), _) => {
                self.error(
                    &at("fanout"),
                    format!("\"{other}\" is not a fan-out; use \"redis\" or \"none\""),
                );
                return None;
            }
        }
        let redis = if raw.url.is_none() && raw.cluster.is_empty() {
            let Some(tier) = tier else {
                self.error(
                    &at("fanout"),
                    "\"redis\" needs url or cluster here (or a [cache.l2] of kind = \"redis\")",
                );
                return None;
            };
            tier.endpoint.clone()
        } else {
            self.redis_endpoint(&table, raw.url.as_deref(), &raw.cluster)?
        };
        let key_prefix = raw
            .key_prefix
            .clone()
            .or_else(|| tier.map(|t| t.key_prefix.clone()))
            .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string());
        Some(FanoutConfig { redis, key_prefix })
    }

    /// A route's cache settings: `None` unless it sets `cache = true`.
    pub(super) fn route_cache(&mut self, route: usize, raw: &RawRouteCache) -> Option<KeySpec> {
        let at = |k| [Seg::Key("route"), Seg::Index(route), Seg::Key(k)];
        if !raw.cache {
            for (key, set) in [
                ("cache_key_headers", raw.key_headers.is_some()),
                ("cache_key_cookies", raw.key_cookies.is_some()),
                ("cache_key_ignore_params", raw.key_ignore_params.is_some()),
            ] {
                if set {
                    self.error(&at(key), "has no effect without cache = true on this route");
                }
            }
            return None;
        }
        let mut spec = KeySpec::default();
        for (j, h) in raw.key_headers.unwrap_or_default().iter().enumerate() {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => spec.headers.push(name),
                Err(_) => self.error(
                    &[
                        Seg::Key("route"),
                        Seg::Index(route),
                        Seg::Key("cache_key_headers"),
                        Seg::Index(j),
                    ],
                    format!("\"{h}\" is not a valid header name"),
                ),
            }
        }
        for (j, c) in raw.key_cookies.unwrap_or_default().iter().enumerate() {
            if super::is_cookie_name(c) {
                spec.cookies.push(c.clone());
            } else {
                self.error(
                    &[
                        Seg::Key("route"),
                        Seg::Index(route),
                        Seg::Key("cache_key_cookies"),
                        Seg::Index(j),
                    ],
                    format!("\"{c}\" is not a valid cookie name"),
                );
            }
        }
        if let Some(params) = raw.key_ignore_params {
            spec.ignore_params = if params.iter().any(|p| p == "*") {
                IgnoreParams::All
            } else if params.iter().any(String::is_empty) {
                self.error(
                    &at("cache_key_ignore_params"),
                    "parameter names must not be empty",
                );
                IgnoreParams::None
            } else {
                IgnoreParams::Named(params.to_vec())
            };
        }
        Some(spec)
    }
}
