//! The config file exactly as TOML spells it: serde structs with defaults and
//! `deny_unknown_fields` so that a typo is an error, never silently ignored.
//!
//! Nothing here is used at run time; [`super::validate`] turns it into the
//! typed [`super::Config`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::units::{de_duration, de_size};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    #[serde(default)]
    pub pool: BTreeMap<String, RawPool>,
    #[serde(default)]
    pub limits: RawLimits,
    pub admin: Option<super::observe::RawAdmin>,
    pub access_log: Option<super::observe::RawAccessLog>,
    #[serde(default)]
    pub log: super::observe::RawLog,
    pub cache: Option<super::cache::RawCache>,
    pub compression: Option<super::compress::RawCompression>,
    pub resolver: Option<RawResolver>,
}

/// `[resolver]`: which DNS servers resolve server names and SRV records.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResolver {
    #[serde(default)]
    pub nameservers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    #[serde(default)]
    pub workers: usize,
    #[serde(default = "d_30s", deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            workers: 0,
            drain_timeout: d_30s(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub name: String,
    pub listen: String,
    pub tls: Option<RawTls>,
    /// `[listener.limits]`: overrides of `[limits]` keys for this listener.
    pub limits: Option<RawLimits>,
    pub max_connection_rate: Option<RawConnectionRate>,
    pub path_normalization: Option<String>,
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default)]
    pub trusted: Vec<String>,
    #[serde(default)]
    pub trusted_forwarders: Vec<String>,
}

/// `[[listener]] max_connection_rate = { connections, per, burst }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConnectionRate {
    #[serde(default = "hundred")]
    pub connections: u32,
    #[serde(default = "d_1s", deserialize_with = "de_duration")]
    pub per: Duration,
    /// Defaults to `connections`.
    pub burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub certs: Vec<RawCertPair>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertPair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Option<String>,
    pub hosts: Option<Vec<String>>,
    #[serde(default = "slash")]
    pub path_prefix: String,
    /// Required unless the route has a `redirect`.
    pub pool: Option<String>,
    pub rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub cache: bool,
    pub cache_key_headers: Option<Vec<String>>,
    pub cache_key_cookies: Option<Vec<String>>,
    pub cache_key_ignore_params: Option<Vec<String>>,
    #[serde(default)]
    pub compress: bool,
    pub strip_request_headers: Option<Vec<String>>,
    // The route's rules, checked and compiled in `super::rules`.
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub redirect: Option<super::rules::RawRedirect>,
    #[serde(default, deserialize_with = "opt_size")]
    pub max_body_bytes: Option<u64>,
    pub rewrite: Option<super::rules::RawRewrite>,
    pub strip_prefix: Option<String>,
    pub upstream_host: Option<String>,
    pub request_headers: Option<super::rules::RawHeaderEdits>,
    pub response_headers: Option<super::rules::RawHeaderEdits>,
}

/// `[[route]] rate_limit = { requests, per, burst, key }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    #[serde(default = "hundred")]
    pub requests: u32,
    #[serde(default = "d_1s", deserialize_with = "de_duration")]
    pub per: Duration,
    /// Defaults to `requests`.
    pub burst: Option<u32>,
    #[serde(default = "client_ip")]
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    #[serde(default = "round_robin")]
    pub policy: String,
    #[serde(default)]
    pub servers: Vec<RawServerEntry>,
    #[serde(default = "d_2s", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(default = "d_30s", deserialize_with = "de_duration")]
    pub response_timeout: Duration,
    #[serde(default = "d_90s", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    #[serde(default = "sixty_four")]
    pub max_idle_per_server: usize,
    #[serde(default = "two")]
    pub retries: u32,
    #[serde(default = "retry_on")]
    pub retry_on: Vec<String>,
    #[serde(default = "d_10ms", deserialize_with = "de_duration")]
    pub retry_backoff: Duration,
    #[serde(default = "point_two")]
    pub retry_budget: f64,
    #[serde(default = "ten")]
    pub min_retries_per_second: u32,
    #[serde(default = "thousand")]
    pub max_pending: usize,
    #[serde(default)]
    pub panic_threshold: f64,
    #[serde(default, deserialize_with = "de_duration")]
    pub slow_start: Duration,
    #[serde(default = "d_30s", deserialize_with = "de_duration")]
    pub resolve_interval: Duration,
    pub send_proxy_protocol: Option<String>,
    pub protocol: Option<String>,
    /// `[pool.NAME.health]`: active checks; absent = none.
    pub health: Option<RawHealth>,
    /// `[pool.NAME.outlier]`: passive ejection, on by default.
    #[serde(default)]
    pub outlier: RawOutlier,
    /// With `policy = "hash"`: what is hashed.
    pub hash_key: Option<String>,
    /// With `policy = "hash"`: no member takes more than this times the
    /// average load.
    pub balance_factor: Option<f64>,
    /// `[pool.NAME.sticky]`: the cookie of `policy = "sticky_cookie"`.
    pub sticky: Option<RawSticky>,
    /// `[pool.NAME.tls]`: TLS to the members; absent = plain HTTP.
    pub tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub server_name: Option<String>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    #[serde(default = "yes")]
    pub verify: bool,
    #[serde(default = "upstream_alpn")]
    pub alpn: Vec<String>,
}

fn upstream_alpn() -> Vec<String> {
    vec!["h2".to_string(), "http/1.1".to_string()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSticky {
    #[serde(default = "srv")]
    pub cookie: String,
    #[serde(default, deserialize_with = "de_duration")]
    pub ttl: Duration,
    #[serde(default)]
    pub secure: bool,
    #[serde(default = "yes")]
    pub http_only: bool,
}

impl Default for RawSticky {
    fn default() -> Self {
        RawSticky {
            cookie: srv(),
            ttl: Duration::ZERO,
            secure: false,
            http_only: yes(),
        }
    }
}

fn srv() -> String {
    "srv".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    #[serde(default = "http")]
    pub kind: String,
    #[serde(default = "healthz")]
    pub path: String,
    /// The service a `grpc` check asks about; `""` is the server as a whole.
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default = "status_200_399")]
    pub expect_status: String,
    #[serde(default = "d_2s", deserialize_with = "de_duration")]
    pub interval: Duration,
    #[serde(default = "d_1s", deserialize_with = "de_duration")]
    pub timeout: Duration,
    #[serde(default = "two")]
    pub rise: u32,
    #[serde(default = "three")]
    pub fall: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    #[serde(default = "five")]
    pub consecutive_failures: u32,
    #[serde(default = "connect")]
    pub failures: Vec<String>,
    #[serde(default = "d_10s", deserialize_with = "de_duration")]
    pub eject_for: Duration,
    #[serde(default = "d_300s", deserialize_with = "de_duration")]
    pub max_eject_for: Duration,
    #[serde(default = "fifty")]
    pub max_ejected_percent: u32,
}

impl Default for RawOutlier {
    fn default() -> Self {
        RawOutlier {
            consecutive_failures: five(),
            failures: connect(),
            eject_for: d_10s(),
            max_eject_for: d_300s(),
            max_ejected_percent: fifty(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerEntry {
    /// `IP:port` or `name:port`; exclusive with `srv`.
    pub addr: Option<String>,
    /// An SRV record name such as `_http._tcp.app.internal`.
    pub srv: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_connections: usize,
}

/// `[limits]`, and the same keys in a listener's `[listener.limits]`
/// sub-table. Every key is optional here: validation starts from the
/// built-in defaults, applies `[limits]`, then a listener's own table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    #[serde(default, deserialize_with = "opt_size")]
    pub max_header_bytes: Option<u64>,
    #[serde(default, deserialize_with = "opt_size")]
    pub max_uri_bytes: Option<u64>,
    #[serde(default, deserialize_with = "opt_size")]
    pub max_body_bytes: Option<u64>,
    pub max_header_count: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub header_read_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub keepalive_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_rate")]
    pub min_body_rate: Option<u64>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub body_rate_grace: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub h2_max_concurrent_streams: Option<u32>,
    #[serde(default, deserialize_with = "opt_size")]
    pub h2_max_frame_size: Option<u64>,
    pub h2_max_pending_accept_reset_streams: Option<usize>,
    pub h2_max_local_error_reset_streams: Option<usize>,
}

fn opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// A byte rate: a size per second, written `"1KiB"` or `"1KiB/s"` (or a
/// plain integer of bytes).
fn opt_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::{self, Visitor};
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes per second such as 1024, \"1KiB\" or \"1KiB/s\"")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("a rate cannot be negative"))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            let size = v.trim().strip_suffix("/s").unwrap_or(v);
            super::units::parse_size(size).map_err(E::custom)
        }
    }
    d.deserialize_any(V).map(Some)
}

fn d_1s() -> Duration {
    Duration::from_secs(1)
}
fn hundred() -> u32 {
    100
}
fn client_ip() -> String {
    "client_ip".to_string()
}
fn d_2s() -> Duration {
    Duration::from_secs(2)
}
fn d_30s() -> Duration {
    Duration::from_secs(30)
}
fn d_90s() -> Duration {
    Duration::from_secs(90)
}
fn slash() -> String {
    "/".to_string()
}
fn round_robin() -> String {
    "round_robin".to_string()
}
fn sixty_four() -> usize {
    64
}
fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn five() -> u32 {
    5
}
fn ten() -> u32 {
    10
}
fn fifty() -> u32 {
    50
}
fn thousand() -> usize {
    1000
}
fn point_two() -> f64 {
    0.2
}
fn d_10ms() -> Duration {
    Duration::from_millis(10)
}
fn d_10s() -> Duration {
    Duration::from_secs(10)
}
fn d_300s() -> Duration {
    Duration::from_secs(300)
}
fn retry_on() -> Vec<String> {
    vec!["connect".to_string(), "reset".to_string()]
}
fn connect() -> Vec<String> {
    vec!["connect".to_string()]
}
fn http() -> String {
    "http".to_string()
}
fn healthz() -> String {
    "/healthz".to_string()
}
fn status_200_399() -> String {
    "200-399".to_string()
}

fn yes() -> bool {
    true
}
