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
pub struct RawConfig {
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
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
pub struct RawListener {
    pub name: String,
    pub listen: String,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certs: Vec<RawCertPair>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub hosts: Option<Vec<String>>,
    #[serde(default = "slash")]
    pub path_prefix: String,
    pub pool: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerEntry {
    pub addr: String,
    #[serde(default = "one")]
    pub weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default = "header_bytes", deserialize_with = "de_size")]
    pub max_header_bytes: u64,
    #[serde(default = "uri_bytes", deserialize_with = "de_size")]
    pub max_uri_bytes: u64,
    #[serde(default = "body_bytes", deserialize_with = "de_size")]
    pub max_body_bytes: u64,
    #[serde(default = "d_10s", deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    #[serde(default = "max_connections")]
    pub max_connections: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_header_bytes: header_bytes(),
            max_uri_bytes: uri_bytes(),
            max_body_bytes: body_bytes(),
            header_read_timeout: d_10s(),
            max_connections: max_connections(),
        }
    }
}

fn d_2s() -> Duration {
    Duration::from_secs(2)
}
fn d_10s() -> Duration {
    Duration::from_secs(10)
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
fn header_bytes() -> u64 {
    65536
}
fn uri_bytes() -> u64 {
    8 * 1024
}
fn body_bytes() -> u64 {
    100 << 20
}
fn max_connections() -> usize {
    10_000
}
