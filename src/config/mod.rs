//! Configuration: the TOML file is read once, checked completely, and turned
//! into validated types (`SocketAddr`, `Duration`, enums). The running proxy
//! only ever sees a [`Config`]; an invalid file yields every problem at once,
//! each naming the file, the key path and, where known, the line and column.

mod cache;
mod compress;
mod observe;
mod raw;
pub mod units;

pub use cache::{CacheConfig, IgnoreParams, KeySpec};
pub use compress::{Coding, CompressionConfig, Level};
pub use observe::{
    AccessLogConfig, AccessLogFormat, AccessLogTarget, AdminConfig, Cidr, LogConfig, LogFormat,
};

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raw::RawConfig;

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from; relative certificate paths resolve
    /// against the working directory, as nginx and HAProxy do.
    pub source: PathBuf,
    pub server: ServerConfig,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub pools: Vec<PoolConfig>,
    pub limits: Limits,
    /// `[admin]`: the admin listener; `None` = no admin listener.
    pub admin: Option<AdminConfig>,
    /// `[access_log]`; `None` = no access log.
    pub access_log: Option<AccessLogConfig>,
    /// `[log]`: level and format of the daemon's own log.
    pub log: LogConfig,
    /// `[cache]`: the shared response cache (used by routes with `cache = true`).
    pub cache: CacheConfig,
    /// `[compression]`: used by routes with `compress = true`.
    pub compression: CompressionConfig,
    /// `[resolver]`: the DNS servers for server names and SRV records.
    pub resolver: ResolverConfig,
}

/// Where server names are looked up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Empty = the system's resolver (`/etc/hosts`, `/etc/resolv.conf`).
    /// Otherwise these DNS servers only, asked over UDP (TCP when an
    /// answer is truncated), without `/etc/hosts`, like nginx's `resolver`.
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Tokio worker threads; 0 = one per core.
    pub workers: usize,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// `[limits]` with this listener's `[listener.limits]` applied.
    pub limits: Limits,
    /// New connections accepted per unit of time; `None` = unlimited.
    pub max_connection_rate: Option<Rate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// The first pair is the default when SNI matches nothing.
    pub certs: Vec<CertPair>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which file of a `{ cert, key }` pair a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairPart {
    Cert,
    Key,
}

/// Why a `{ cert, key }` pair cannot be used, as
/// [`Environment::load_pair`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairError {
    /// The file at fault; the error is reported at its key.
    pub part: PairPart,
    /// The whole message, as reported.
    pub message: String,
}

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

/// `count` events per `per`, in bursts of up to `burst`: a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    Weighted,
    LeastConn,
    IpHash,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::Weighted => "weighted",
            Policy::LeastConn => "least_conn",
            Policy::IpHash => "ip_hash",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub policy: Policy,
    pub servers: Vec<ServerEntry>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_server: usize,
    /// Extra attempts on other members for retryable failures; 0 = off.
    pub retries: u32,
    pub retry_on: RetryOn,
    /// Base of the exponential backoff between attempts (full jitter,
    /// capped at 10x the base).
    pub retry_backoff: Duration,
    /// Retries may add at most this share of the pool's recent request rate...
    pub retry_budget: f64,
    /// ...but this many per second are always allowed.
    pub min_retries_per_second: u32,
    /// Requests that may wait for a member below its `max_connections`;
    /// beyond it, 503 at once.
    pub max_pending: usize,
    /// 0 = off; otherwise, when fewer than this share of the members are
    /// healthy, balance over all of them.
    pub panic_threshold: f64,
    /// 0 = off; a member that comes back up ramps its weight over this.
    pub slow_start: Duration,
    /// How often names in `servers[].addr` and `servers[].srv` are
    /// resolved again.
    pub resolve_interval: Duration,
    /// A copy of `[resolver]`, so a pool re-resolves on its own.
    pub resolver: ResolverConfig,
    pub health: Option<HealthConfig>,
    pub outlier: OutlierConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerEntry {
    pub addr: ServerAddr,
    pub weight: u32,
    /// Requests in flight to one resolved address at once; 0 = unlimited.
    pub max_connections: usize,
}

/// A server's address as written: an IP:port, a name, or an SRV record
/// name; names are re-resolved every `resolve_interval` (each resolved
/// address becomes a member).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    Ip(SocketAddr),
    Name {
        host: String,
        port: u16,
    },
    /// `srv = "_http._tcp.app.internal"`: targets and ports from DNS.
    Srv {
        name: String,
    },
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Ip(a) => write!(f, "{a}"),
            ServerAddr::Name { host, port } => write!(f, "{host}:{port}"),
            ServerAddr::Srv { name } => f.write_str(name),
        }
    }
}

impl ServerAddr {
    /// Whether DNS decides this server's members.
    pub fn is_name(&self) -> bool {
        !matches!(self, ServerAddr::Ip(_))
    }
}

/// Which failures of one attempt may be retried on another member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    /// Connection refused or connect timeout.
    pub connect: bool,
    /// The connection dropped before any response byte.
    pub reset: bool,
    /// No response head within `response_timeout`.
    pub timeout: bool,
    pub status_502: bool,
    pub status_503: bool,
    pub status_504: bool,
}

impl RetryOn {
    /// Whether an upstream response with `status` may be retried.
    pub fn status(&self, status: u16) -> bool {
        match status {
            502 => self.status_502,
            503 => self.status_503,
            504 => self.status_504,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    Http,
    Tcp,
}

/// `[pool.NAME.health]`: active checks.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub path: String,
    /// Inclusive ranges of statuses that pass.
    pub expect_status: Vec<(u16, u16)>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that mark a down member up.
    pub rise: u32,
    /// Consecutive failures that mark an up member down.
    pub fall: u32,
}

impl HealthConfig {
    pub fn expects(&self, status: u16) -> bool {
        self.expect_status
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// `[pool.NAME.outlier]`: passive ejection.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row that eject a member; 0 = off.
    pub consecutive_failures: u32,
    /// Whether 5xx responses count as failures (connection errors always do
    /// when `failures` lists "connect").
    pub count_connect: bool,
    pub count_5xx: bool,
    pub eject_for: Duration,
    pub max_eject_for: Duration,
    pub max_ejected_percent: u32,
}

/// Client limits: `[limits]`, and per listener with `[listener.limits]`
/// overriding single keys (see [`Config::limits_for`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    /// Header fields in one request; more gets 431.
    pub max_header_count: usize,
    /// A request head must arrive completely within this, counted from the
    /// connection's accept (first request) or from the first byte of the
    /// head (later HTTP/1.1 requests).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub keepalive_timeout: Duration,
    /// Bytes per second a request body must average once `body_rate_grace`
    /// of waiting has passed; 0 = off.
    pub min_body_rate: u64,
    pub body_rate_grace: Duration,
    /// Open connections per listener.
    pub max_connections: usize,
    /// Open connections per client IP per listener; 0 = unlimited.
    pub max_connections_per_client: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_frame_size: u32,
    pub h2_max_pending_accept_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 << 10,
            max_uri_bytes: 8 << 10,
            max_body_bytes: 100 << 20,
            max_header_count: 100,
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            min_body_rate: 1 << 10,
            body_rate_grace: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_client: 4096,
            h2_max_concurrent_streams: 128,
            h2_max_frame_size: 16 << 10,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 256,
        }
    }
}

/// One problem in a config file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// TOML key path such as `pool.app.servers[1].addr`; empty for the whole file.
    pub key: String,
    /// 1-based line and column, when the TOML document locates the key.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some((line, col)) = e.position {
                write!(f, ":{line}:{col}")?;
            }
            if e.key.is_empty() {
                write!(f, ": {}", e.message)?;
            } else {
                write!(f, ": {}: {}", e.key, e.message)?;
            }
        }
        Ok(())
    }
}

/// What validation checks outside the file: that every TLS `{ cert, key }`
/// pair loads, and that every server name resolves now (like nginx, a name
/// that does not resolve is an error at `--check` and at start).
///
/// `config` itself reads no certificate and asks no DNS server: the caller
/// passes the real checks (`crate::environment::System`, which uses
/// `crate::tls` and `crate::upstream::dns`), and tests pass a fake.
pub trait Environment {
    /// Loads the certificate chain and private key of `pair` and checks
    /// that they match.
    fn load_pair(&self, pair: &CertPair) -> Result<(), PairError>;

    /// The addresses `addr` stands for now, asked of `resolver`.
    fn resolve(&self, resolver: &ResolverConfig, addr: &ServerAddr) -> io::Result<Vec<SocketAddr>>;
}

impl Config {
    /// Reads and validates `path`, checking certificate pairs and server
    /// names against `env`; with the real environment, a config that
    /// passes here will start.
    pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.to_path_buf(),
            errors: vec![ConfigError {
                key: String::new(),
                position: None,
                message: format!("cannot read file: {e}"),
            }],
        })?;
        Config::parse(path, &text, env)
    }

    /// Validates `text` as if read from `path`, checking certificate pairs
    /// and server names against `env`.
    pub fn parse(path: &Path, text: &str, env: &dyn Environment) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            file: path.to_path_buf(),
            errors,
        };
        let (raw, mut errors) = deserialize(text);
        let Some(raw) = raw else {
            return Err(fail(errors));
        };
        let mut v = Validator {
            text,
            doc: text.parse::<toml_edit::ImDocument<String>>().ok(),
            env,
            errors: Vec::new(),
        };
        let config = v.validate(path, raw);
        // Keys already reported as malformed were dropped before validation;
        // do not report their stand-in defaults a second time.
        let reported: Vec<String> = errors.iter().map(|e| e.key.clone()).collect();
        errors.extend(v.errors.into_iter().filter(|e| {
            !reported
                .iter()
                .any(|r| !r.is_empty() && (e.key == *r || e.key.starts_with(&format!("{r}."))))
        }));
        if errors.is_empty() {
            Ok(config)
        } else {
            // In file order; errors without a position (whole-file ones) last.
            errors.sort_by_key(|e| e.position.unwrap_or((usize::MAX, 0)));
            Err(fail(errors))
        }
    }

    /// The limits that apply on listener `name`: its own `[listener.limits]`
    /// over `[limits]`.
    pub fn limits_for(&self, name: &str) -> &Limits {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map_or(&self.limits, |l| &l.limits)
    }
}

/// Deserializes the raw config, collecting every key-level error rather than
/// stopping at the first: a key that fails (a typo, a bad duration, a wrong
/// type) is reported, removed from a working copy of the document, and the
/// rest is read again. Returns the raw config when the remainder reads
/// cleanly, and the errors found on the way.
fn deserialize(text: &str) -> (Option<RawConfig>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut doc = match text.parse::<toml_edit::DocumentMut>() {
        Ok(doc) => doc,
        Err(e) => {
            errors.push(ConfigError {
                key: String::new(),
                position: e.span().map(|s| line_col(text, s.start)),
                message: e.message().trim().to_string(),
            });
            return (None, errors);
        }
    };
    let original = text.parse::<toml_edit::ImDocument<String>>().ok();
    let mut current = text.to_string();
    for _ in 0..64 {
        let e = match serde_path_to_error::deserialize(toml::Deserializer::new(&current)) {
            Ok(raw) => return (Some(raw), errors),
            Err(e) => e,
        };
        let segs = owned_segments(e.path());
        let key = path_string(e.path());
        let inner = e.into_inner();
        let message = inner.message().trim().to_string();
        // A required key that is missing because an earlier error removed
        // it: already reported, and nothing more can be read safely.
        let cascade = message.starts_with("missing field")
            && errors.iter().any(|r: &ConfigError| r.key.starts_with(&key));
        if !cascade {
            let unknown_key = message.starts_with("unknown field");
            let position = original
                .as_ref()
                .and_then(|d| locate(d, &segs, unknown_key))
                .map(|offset| line_col(text, offset))
                .or_else(|| {
                    // Only the first pass reads the original text.
                    (errors.is_empty())
                        .then(|| inner.span().map(|s| line_col(text, s.start)))
                        .flatten()
                });
            errors.push(ConfigError {
                key,
                position,
                message,
            });
        }
        if cascade || !remove(&mut doc, &segs) {
            return (None, errors);
        }
        current = doc.to_string();
    }
    (None, errors)
}

fn owned_segments(path: &serde_path_to_error::Path) -> Vec<OwnedSeg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|seg| match seg {
            Segment::Seq { index } => Some(OwnedSeg::Index(*index)),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                Some(OwnedSeg::Key(key.clone()))
            }
            Segment::Unknown => None,
        })
        .collect()
}

#[derive(Debug, Clone)]
enum OwnedSeg {
    Key(String),
    Index(usize),
}

/// Removes the key at `segs` (never an array element, whose removal would
/// renumber its siblings). Returns whether something was removed.
fn remove(doc: &mut toml_edit::DocumentMut, segs: &[OwnedSeg]) -> bool {
    let Some((OwnedSeg::Key(last), parents)) = segs.split_last() else {
        return false;
    };
    let mut item: &mut toml_edit::Item = doc.as_item_mut();
    for seg in parents {
        let next = match seg {
            OwnedSeg::Key(k) => item.get_mut(k.as_str()),
            OwnedSeg::Index(i) => item.get_mut(*i),
        };
        match next {
            Some(n) => item = n,
            None => return false,
        }
    }
    if let Some(t) = item.as_table_like_mut() {
        t.remove(last).is_some()
    } else {
        false
    }
}

/// Byte offset of the key or value at `segs` in `doc`.
/// With `at_key`, the position of the last key itself (for unknown keys);
/// otherwise that of its value.
fn locate(doc: &toml_edit::ImDocument<String>, segs: &[OwnedSeg], at_key: bool) -> Option<usize> {
    let mut item: &toml_edit::Item = doc.as_item();
    let mut found = None;
    for (i, seg) in segs.iter().enumerate() {
        if let (OwnedSeg::Key(k), true) = (seg, at_key && i + 1 == segs.len()) {
            if let Some(t) = item.as_table_like() {
                if let Some((key, _)) = t.get_key_value(k) {
                    if let Some(span) = key.span() {
                        return Some(span.start);
                    }
                }
            }
        }
        item = match seg {
            OwnedSeg::Key(k) => item.get(k.as_str())?,
            OwnedSeg::Index(i) => item.get(*i)?,
        };
        found = item
            .span()
            .or_else(|| item.as_value().and_then(|v| v.span()))
            .map(|s| s.start)
            .or(found);
    }
    found
}

fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    if out == "?" {
        out.clear();
    }
    out
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// One step of a key path.
#[derive(Clone)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

struct Validator<'t> {
    text: &'t str,
    doc: Option<toml_edit::ImDocument<String>>,
    /// Where certificate pairs are loaded and server names resolved.
    env: &'t dyn Environment,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        let mut key = String::new();
        for seg in path {
            match seg {
                Seg::Key(k) => {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(k);
                }
                Seg::Index(i) => key.push_str(&format!("[{i}]")),
            }
        }
        let segs: Vec<OwnedSeg> = path
            .iter()
            .map(|seg| match seg {
                Seg::Key(k) => OwnedSeg::Key((*k).to_string()),
                Seg::Index(i) => OwnedSeg::Index(*i),
            })
            .collect();
        let position = self
            .doc
            .as_ref()
            .and_then(|d| locate(d, &segs, false))
            .map(|offset| line_col(self.text, offset));
        self.errors.push(ConfigError {
            key,
            position,
            message: message.into(),
        });
    }

    fn validate(&mut self, path: &Path, raw: RawConfig) -> Config {
        let limits = self.limits(&Limits::default(), &raw.limits, &[Seg::Key("limits")]);
        let listeners = self.listeners(&raw, &limits);
        let resolver = self.resolver(raw.resolver.as_ref());
        let pools = self.pools(&raw, &resolver);
        let routes = self.routes(&raw, &pools);
        let admin = self.admin(raw.admin.as_ref());
        let access_log = self.access_log(raw.access_log.as_ref());
        let log = self.log(&raw.log);
        let cache = self.cache(raw.cache.as_ref());
        let compression = self.compression(raw.compression.as_ref());
        if raw.server.workers > 1024 {
            self.error(
                &[Seg::Key("server"), Seg::Key("workers")],
                "must be between 0 (one per core) and 1024",
            );
        }
        Config {
            source: path.to_path_buf(),
            server: ServerConfig {
                workers: raw.server.workers,
                drain_timeout: raw.server.drain_timeout,
            },
            listeners,
            routes,
            pools,
            limits,
            admin,
            access_log,
            log,
            cache,
            compression,
            resolver,
        }
    }

    fn resolver(&mut self, raw: Option<&raw::RawResolver>) -> ResolverConfig {
        let mut out = ResolverConfig::default();
        for (i, text) in raw
            .map(|r| r.nameservers.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let at = [Seg::Key("resolver"), Seg::Key("nameservers"), Seg::Index(i)];
            // A bare IP means port 53, as in resolv.conf.
            let parsed = text.parse::<SocketAddr>().or_else(|_| {
                text.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Ok(a) if a.port() != 0 => out.nameservers.push(a),
                _ => self.error(
                    &at,
                    format!("\"{text}\" is not a DNS server address such as \"10.0.0.2\" or \"127.0.0.1:5353\""),
                ),
            }
        }
        out
    }

    fn listeners(&mut self, raw: &RawConfig, base: &Limits) -> Vec<ListenerConfig> {
        if raw.listener.is_empty() {
            self.error(
                &[],
                "no [[listener]] is configured; add one with name and listen, e.g. listen = \"127.0.0.1:8080\"",
            );
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut out = Vec::new();
        for (i, l) in raw.listener.iter().enumerate() {
            let at = |k| [Seg::Key("listener"), Seg::Index(i), Seg::Key(k)];
            if l.name.is_empty() {
                self.error(&at("name"), "must not be empty");
            } else if !names.insert(l.name.as_str()) {
                self.error(
                    &at("name"),
                    format!("duplicate listener name \"{}\"", l.name),
                );
            }
            let listen = match l.listen.parse::<SocketAddr>() {
                Ok(a) => {
                    if a.port() != 0 && !addrs.insert(a) {
                        self.error(&at("listen"), format!("{a} is used by another listener"));
                    }
                    a
                }
                Err(_) => {
                    self.error(
                        &at("listen"),
                        format!(
                            "\"{}\" is not an IP:port address such as \"127.0.0.1:8080\" or \"[::]:443\"",
                            l.listen
                        ),
                    );
                    continue;
                }
            };
            let tls = l.tls.as_ref().map(|t| {
                if t.certs.is_empty() {
                    self.error(
                        &[
                            Seg::Key("listener"),
                            Seg::Index(i),
                            Seg::Key("tls"),
                            Seg::Key("certs"),
                        ],
                        "a TLS listener needs at least one { cert, key } pair",
                    );
                }
                let mut certs = Vec::new();
                for (j, pair) in t.certs.iter().enumerate() {
                    let pair = CertPair {
                        cert: PathBuf::from(&pair.cert),
                        key: PathBuf::from(&pair.key),
                    };
                    if let Err(e) = self.env.load_pair(&pair) {
                        let field = match e.part {
                            PairPart::Cert => "cert",
                            PairPart::Key => "key",
                        };
                        self.error(
                            &[
                                Seg::Key("listener"),
                                Seg::Index(i),
                                Seg::Key("tls"),
                                Seg::Key("certs"),
                                Seg::Index(j),
                                Seg::Key(field),
                            ],
                            e.message,
                        );
                    }
                    certs.push(pair);
                }
                TlsConfig { certs }
            });
            let max_connection_rate = l.max_connection_rate.as_ref().map(|r| {
                let at = [
                    Seg::Key("listener"),
                    Seg::Index(i),
                    Seg::Key("max_connection_rate"),
                ];
                self.rate(&at, "connections", r.connections, r.per, r.burst)
            });
            let limits = match &l.limits {
                Some(own) => self.limits(
                    base,
                    own,
                    &[Seg::Key("listener"), Seg::Index(i), Seg::Key("limits")],
                ),
                None => base.clone(),
            };
            out.push(ListenerConfig {
                name: l.name.clone(),
                listen,
                tls,
                limits,
                max_connection_rate,
            });
        }
        out
    }

    fn pools(&mut self, raw: &RawConfig, resolver: &ResolverConfig) -> Vec<PoolConfig> {
        let mut out = Vec::new();
        for (name, p) in &raw.pool {
            let at = |k| [Seg::Key("pool"), Seg::Key(name), Seg::Key(k)];
            let policy = match p.policy.as_str() {
                "round_robin" => Policy::RoundRobin,
                "weighted" => Policy::Weighted,
                "least_conn" => Policy::LeastConn,
                "ip_hash" => Policy::IpHash,
                other => {
                    self.error(
                        &at("policy"),
                        format!(
                            "unknown policy \"{other}\"; use round_robin, weighted, least_conn or ip_hash"
                        ),
                    );
                    Policy::RoundRobin
                }
            };
            let mut servers = Vec::new();
            let mut seen = HashSet::new();
            for (i, s) in p.servers.iter().enumerate() {
                let at = |k| {
                    [
                        Seg::Key("pool"),
                        Seg::Key(name),
                        Seg::Key("servers"),
                        Seg::Index(i),
                        Seg::Key(k),
                    ]
                };
                let (key, parsed) = match (&s.addr, &s.srv) {
                    (Some(a), None) => ("addr", parse_server_addr(a)),
                    (None, Some(n)) => ("srv", parse_srv_name(n)),
                    (Some(_), Some(_)) => {
                        self.error(&at("srv"), "give either addr or srv, not both");
                        continue;
                    }
                    (None, None) => {
                        self.error(
                            &at("addr"),
                            "missing: give addr = \"IP:port\" or \"name:port\", or srv = \"_service._tcp.name\"",
                        );
                        continue;
                    }
                };
                let addr = match parsed {
                    Ok(addr) => addr,
                    Err(why) => {
                        self.error(&at(key), why);
                        continue;
                    }
                };
                if !seen.insert(addr.clone()) {
                    self.error(&at(key), format!("{addr} is listed twice in this pool"));
                }
                // Like nginx: a name that does not resolve now is an error
                // at --check and at start.
                if addr.is_name() {
                    match self.env.resolve(resolver, &addr) {
                        Ok(found) if !found.is_empty() => {}
                        Ok(_) => self.error(&at(key), format!("\"{addr}\" resolves to no address")),
                        Err(e) => self.error(&at(key), format!("cannot resolve \"{addr}\": {e}")),
                    }
                }
                if s.weight == 0 || s.weight > 10_000 {
                    self.error(&at("weight"), "must be between 1 and 10000");
                }
                servers.push(ServerEntry {
                    addr,
                    weight: s.weight.clamp(1, 10_000),
                    max_connections: s.max_connections,
                });
            }
            let retry_on = self.retry_on(name, &p.retry_on);
            let mut share = |v: f64, k: &'static str| {
                if !(0.0..=1.0).contains(&v) {
                    self.error(&at(k), "must be between 0.0 and 1.0");
                }
                if v.is_nan() {
                    0.0
                } else {
                    v.clamp(0.0, 1.0)
                }
            };
            let retry_budget = share(p.retry_budget, "retry_budget");
            let panic_threshold = share(p.panic_threshold, "panic_threshold");
            if p.retries > 100 {
                self.error(&at("retries"), "must be between 0 and 100");
            }
            if p.resolve_interval.is_zero() {
                self.error(&at("resolve_interval"), "must be greater than zero");
            }
            let health = p.health.as_ref().map(|h| self.health(name, h));
            let outlier = self.outlier(name, &p.outlier);
            if p.connect_timeout.is_zero() {
                self.error(&at("connect_timeout"), "must be greater than zero");
            }
            if p.response_timeout.is_zero() {
                self.error(&at("response_timeout"), "must be greater than zero");
            }
            out.push(PoolConfig {
                name: name.clone(),
                policy,
                servers,
                connect_timeout: p.connect_timeout,
                response_timeout: p.response_timeout,
                idle_timeout: p.idle_timeout,
                max_idle_per_server: p.max_idle_per_server,
                retries: p.retries.min(100),
                retry_on,
                retry_backoff: p.retry_backoff,
                retry_budget,
                min_retries_per_second: p.min_retries_per_second,
                max_pending: p.max_pending,
                panic_threshold,
                slow_start: p.slow_start,
                resolve_interval: p.resolve_interval.max(Duration::from_millis(1)),
                resolver: resolver.clone(),
                health,
                outlier,
            });
        }
        out
    }

    fn routes(&mut self, raw: &RawConfig, pools: &[PoolConfig]) -> Vec<RouteConfig> {
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

impl Validator<'_> {
    /// Checks a token-bucket rate found at `at` (a `rate_limit` or
    /// `max_connection_rate` table) whose count is called `count_key`.
    /// `burst` defaults to twice the count (the issue's sample: 100 per
    /// second with bursts of 200).
    fn rate(
        &mut self,
        at: &[Seg],
        count_key: &'static str,
        count: u32,
        per: Duration,
        burst: Option<u32>,
    ) -> Rate {
        let key = |k: &'static str| {
            let mut path = at.to_vec();
            path.push(Seg::Key(k));
            path
        };
        if count == 0 {
            self.error(&key(count_key), "must be at least 1");
        }
        if per.is_zero() {
            self.error(&key("per"), "must be greater than zero");
        }
        if burst == Some(0) {
            self.error(&key("burst"), "must be at least 1");
        }
        Rate {
            count: count.max(1),
            per: per.max(Duration::from_millis(1)),
            burst: burst.unwrap_or(count.saturating_mul(2)).max(1),
        }
    }
}

impl Validator<'_> {
    /// `retry_on`: which failures are retried.
    fn retry_on(&mut self, pool: &str, list: &[String]) -> RetryOn {
        let mut out = RetryOn::default();
        for (i, v) in list.iter().enumerate() {
            match v.as_str() {
                "connect" => out.connect = true,
                "reset" => out.reset = true,
                "timeout" => out.timeout = true,
                "502" => out.status_502 = true,
                "503" => out.status_503 = true,
                "504" => out.status_504 = true,
                other => self.error(
                    &[
                        Seg::Key("pool"),
                        Seg::Key(pool),
                        Seg::Key("retry_on"),
                        Seg::Index(i),
                    ],
                    format!(
                        "unknown retry condition \"{other}\"; use connect, reset, timeout, 502, 503 or 504"
                    ),
                ),
            }
        }
        out
    }

    /// `[pool.NAME.health]`.
    fn health(&mut self, pool: &str, h: &raw::RawHealth) -> HealthConfig {
        let at = |k| {
            [
                Seg::Key("pool"),
                Seg::Key(pool),
                Seg::Key("health"),
                Seg::Key(k),
            ]
        };
        let kind = match h.kind.as_str() {
            "http" => HealthKind::Http,
            "tcp" => HealthKind::Tcp,
            other => {
                self.error(
                    &at("kind"),
                    format!("unknown check kind \"{other}\"; use http or tcp"),
                );
                HealthKind::Tcp
            }
        };
        if !h.path.starts_with('/') || http::uri::PathAndQuery::try_from(h.path.as_str()).is_err() {
            self.error(&at("path"), "must be a path starting with \"/\"");
        }
        let expect_status = parse_status_ranges(&h.expect_status).unwrap_or_else(|why| {
            self.error(&at("expect_status"), why);
            vec![(200, 399)]
        });
        if h.interval.is_zero() {
            self.error(&at("interval"), "must be greater than zero");
        }
        if h.timeout.is_zero() {
            self.error(&at("timeout"), "must be greater than zero");
        }
        if h.rise == 0 {
            self.error(&at("rise"), "must be at least 1");
        }
        if h.fall == 0 {
            self.error(&at("fall"), "must be at least 1");
        }
        HealthConfig {
            kind,
            path: h.path.clone(),
            expect_status,
            interval: h.interval.max(Duration::from_millis(1)),
            timeout: h.timeout.max(Duration::from_millis(1)),
            rise: h.rise.max(1),
            fall: h.fall.max(1),
        }
    }

    /// `[pool.NAME.outlier]`.
    fn outlier(&mut self, pool: &str, o: &raw::RawOutlier) -> OutlierConfig {
        let at = |k| {
            [
                Seg::Key("pool"),
                Seg::Key(pool),
                Seg::Key("outlier"),
                Seg::Key(k),
            ]
        };
        let (mut count_connect, mut count_5xx) = (false, false);
        for (i, f) in o.failures.iter().enumerate() {
            match f.as_str() {
                "connect" => count_connect = true,
                "5xx" => count_5xx = true,
                other => self.error(
                    &[
                        Seg::Key("pool"),
                        Seg::Key(pool),
                        Seg::Key("outlier"),
                        Seg::Key("failures"),
                        Seg::Index(i),
                    ],
                    format!("unknown failure kind \"{other}\"; use connect or 5xx"),
                ),
            }
        }
        if o.eject_for.is_zero() {
            self.error(&at("eject_for"), "must be greater than zero");
        }
        if o.max_eject_for < o.eject_for {
            self.error(&at("max_eject_for"), "must be at least eject_for");
        }
        if o.max_ejected_percent > 100 {
            self.error(&at("max_ejected_percent"), "must be between 0 and 100");
        }
        OutlierConfig {
            consecutive_failures: o.consecutive_failures,
            count_connect,
            count_5xx,
            eject_for: o.eject_for.max(Duration::from_millis(1)),
            max_eject_for: o.max_eject_for.max(o.eject_for),
            max_ejected_percent: o.max_ejected_percent.min(100),
        }
    }
}

/// `IP:port` or `name:port`.
fn parse_server_addr(text: &str) -> Result<ServerAddr, String> {
    match text.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => Err(format!("\"{text}\" needs a port other than 0")),
        Ok(a) => Ok(ServerAddr::Ip(a)),
        Err(_) => parse_host_port(text),
    }
}

/// An SRV record name: DNS labels that may start with `_`, as in
/// `_http._tcp.app.internal` (RFC 2782); no port, since DNS gives it.
fn parse_srv_name(text: &str) -> Result<ServerAddr, String> {
    let name = text.to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name);
    let valid = dns_labels_ok(name, |label| {
        label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if valid {
        Ok(ServerAddr::Srv {
            name: name.to_string(),
        })
    } else {
        Err(format!(
            "\"{text}\" is not an SRV record name such as \"_http._tcp.app.internal\" (no port: DNS gives it)"
        ))
    }
}

/// `host:port` with a DNS name (an IP:port is parsed before this).
fn parse_host_port(text: &str) -> Result<ServerAddr, String> {
    let usage =
        format!("\"{text}\" is not an address such as \"127.0.0.1:9001\" or \"app.internal:8080\"");
    let (host, port) = text.rsplit_once(':').ok_or_else(|| usage.clone())?;
    let port: u16 = port.parse().map_err(|_| usage.clone())?;
    if port == 0 {
        return Err(format!("\"{text}\" needs a port other than 0"));
    }
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host).to_string();
    if check_host_pattern(&host).is_err() || host.starts_with("*.") {
        return Err(usage);
    }
    Ok(ServerAddr::Name { host, port })
}

/// `"200-399"`, `"200"` or a comma-separated list of both.
fn parse_status_ranges(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let usage =
        format!("\"{text}\" is not a status range such as \"200-399\" or \"200,204,300-399\"");
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: u16 = lo.trim().parse().map_err(|_| usage.clone())?;
        let hi: u16 = hi.trim().parse().map_err(|_| usage.clone())?;
        if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
            return Err(usage);
        }
        out.push((lo, hi));
    }
    Ok(out)
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
fn dns_labels_ok(name: &str, label_ok: impl Fn(&str) -> bool) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| !label.is_empty() && label_ok(label))
}

/// A host pattern is a DNS name (no port) or `*.` followed by one.
fn check_host_pattern(h: &str) -> Result<(), String> {
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

impl Validator<'_> {
    /// `base` with the keys set in `raw` applied, each checked; problems are
    /// reported under `prefix` (`limits` or `listener[i].limits`).
    fn limits(&mut self, base: &Limits, raw: &raw::RawLimits, prefix: &[Seg]) -> Limits {
        let at = |k: &'static str| {
            let mut path = prefix.to_vec();
            path.push(Seg::Key(k));
            path
        };
        let mut out = base.clone();
        if let Some(v) = raw.max_header_bytes {
            if v < 1024 {
                self.error(&at("max_header_bytes"), "must be at least 1024 bytes");
            }
            out.max_header_bytes = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = raw.max_uri_bytes {
            if v == 0 {
                self.error(&at("max_uri_bytes"), "must be greater than zero");
            }
            out.max_uri_bytes = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = raw.max_body_bytes {
            out.max_body_bytes = v;
        }
        if let Some(v) = raw.max_header_count {
            if !(1..=10_000).contains(&v) {
                self.error(&at("max_header_count"), "must be between 1 and 10000");
            }
            out.max_header_count = v.clamp(1, 10_000);
        }
        let mut positive = |v: Option<Duration>, k: &'static str, field: &mut Duration| {
            if let Some(v) = v {
                if v.is_zero() {
                    self.error(&at(k), "must be greater than zero");
                }
                *field = v;
            }
        };
        positive(
            raw.header_read_timeout,
            "header_read_timeout",
            &mut out.header_read_timeout,
        );
        positive(
            raw.keepalive_timeout,
            "keepalive_timeout",
            &mut out.keepalive_timeout,
        );
        positive(
            raw.body_rate_grace,
            "body_rate_grace",
            &mut out.body_rate_grace,
        );
        if let Some(v) = raw.min_body_rate {
            out.min_body_rate = v;
        }
        if let Some(v) = raw.max_connections {
            if v == 0 {
                self.error(&at("max_connections"), "must be greater than zero");
            }
            out.max_connections = v.max(1);
        }
        if let Some(v) = raw.max_connections_per_client {
            out.max_connections_per_client = v;
        }
        if let Some(v) = raw.h2_max_concurrent_streams {
            if v == 0 {
                self.error(&at("h2_max_concurrent_streams"), "must be at least 1");
            }
            out.h2_max_concurrent_streams = v.max(1);
        }
        if let Some(v) = raw.h2_max_frame_size {
            // RFC 9113 section 6.5.2: from 2^14 to 2^24 - 1.
            let range = 16_384..=16_777_215;
            if !range.contains(&v) {
                self.error(
                    &at("h2_max_frame_size"),
                    "must be between 16KiB and 16777215 bytes (16MiB - 1), as HTTP/2 requires",
                );
            }
            out.h2_max_frame_size = u32::try_from(v.clamp(16_384, 16_777_215)).unwrap_or(16_384);
        }
        if let Some(v) = raw.h2_max_pending_accept_reset_streams {
            out.h2_max_pending_accept_reset_streams = v;
        }
        if let Some(v) = raw.h2_max_local_error_reset_streams {
            out.h2_max_local_error_reset_streams = v;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads no certificate file and asks no DNS server: every pair loads,
    /// IP addresses stand for themselves, `localhost` is 127.0.0.1 and
    /// every other name fails to resolve.
    pub(super) struct Offline;

    impl Environment for Offline {
        fn load_pair(&self, _: &CertPair) -> Result<(), PairError> {
            Ok(())
        }

        fn resolve(&self, _: &ResolverConfig, addr: &ServerAddr) -> io::Result<Vec<SocketAddr>> {
            match addr {
                ServerAddr::Ip(a) => Ok(vec![*a]),
                ServerAddr::Name { host, port } if host == "localhost" => {
                    Ok(vec![SocketAddr::from(([127, 0, 0, 1], *port))])
                }
                _ => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such name in the offline test environment",
                )),
            }
        }
    }

    pub(super) fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("test.toml"), text, &Offline)
    }

    const MINIMAL: &str = r#"
[[listener]]
name = "http"
listen = "127.0.0.1:8080"

[[route]]
pool = "app"

[pool.app]
servers = [ { addr = "127.0.0.1:9001" } ]
"#;

    #[test]
    fn minimal_config_gets_contract_defaults() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.server.workers, 0);
        assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
        let p = &c.pools[0];
        assert_eq!(p.policy, Policy::RoundRobin);
        assert_eq!(p.connect_timeout, Duration::from_secs(2));
        assert_eq!(p.response_timeout, Duration::from_secs(30));
        assert_eq!(p.idle_timeout, Duration::from_secs(90));
        assert_eq!(p.max_idle_per_server, 64);
        assert_eq!(p.servers[0].weight, 1);
        assert_eq!(c.routes[0].name, "0");
        assert_eq!(c.routes[0].path_prefix, "/");
        assert_eq!(c.limits.max_header_bytes, 65536);
        assert_eq!(c.limits.max_uri_bytes, 8192);
        assert_eq!(c.limits.max_body_bytes, 100 << 20);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.max_connections_per_client, 4096);
        assert_eq!(c.limits.max_header_count, 100);
        assert_eq!(c.limits.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(c.limits.min_body_rate, 1024);
        assert_eq!(c.limits.body_rate_grace, Duration::from_secs(10));
        assert_eq!(c.limits.h2_max_concurrent_streams, 128);
        assert_eq!(c.limits.h2_max_frame_size, 16384);
        assert_eq!(c.limits.h2_max_pending_accept_reset_streams, 20);
        assert_eq!(c.limits.h2_max_local_error_reset_streams, 256);
        assert_eq!(c.listeners[0].limits, c.limits);
    }

    #[test]
    fn listener_limits_override_single_keys() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"\n",
            "listen = \"127.0.0.1:8080\"\n\n[listener.limits]\nmax_header_count = 10\nmin_body_rate = \"2KiB/s\"\n\n[[listener]]\nname = \"other\"\nlisten = \"127.0.0.1:8081\"\n",
        ) + "\n[limits]\nmax_header_count = 50\nkeepalive_timeout = \"5s\"\n";
        let c = parse(&text).expect("valid");
        let own = c.limits_for("http");
        assert_eq!(own.max_header_count, 10);
        assert_eq!(own.min_body_rate, 2048);
        assert_eq!(own.keepalive_timeout, Duration::from_secs(5), "inherited");
        let other = c.limits_for("other");
        assert_eq!(other.max_header_count, 50);
        assert_eq!(other.min_body_rate, 1024);
        assert_eq!(c.limits.max_header_count, 50);
    }

    #[test]
    fn bad_limits_name_their_key_once() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"\n",
            "listen = \"127.0.0.1:8080\"\n\n[listener.limits]\nh2_max_frame_size = \"1KiB\"\nkeepalive_timeout = \"0s\"\n",
        ) + "\n[limits]\nmax_header_count = 0\nbody_rate_grace = \"0s\"\n";
        let e = parse(&text).unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listener[0].limits.h2_max_frame_size",
                "listener[0].limits.keepalive_timeout",
                "limits.max_header_count",
                "limits.body_rate_grace",
            ],
            "{e}"
        );
        assert!(e.errors.iter().all(|e| e.position.is_some()), "{e}");
        let e = parse(&(MINIMAL.to_string() + "\n[limits]\nmax_header_cont = 5\n")).unwrap_err();
        assert!(e.errors[0].key.starts_with("limits"), "{e}");
        assert!(e.errors[0].message.contains("max_header_cont"), "{e}");
        let e =
            parse(&(MINIMAL.to_string() + "\n[limits]\nmin_body_rate = \"fast\"\n")).unwrap_err();
        assert_eq!(e.errors[0].key, "limits.min_body_rate", "{e}");
    }

    #[test]
    fn unknown_key_is_an_error_with_path_and_position() {
        let text = MINIMAL
            .replace("policy", "x")
            .replace("servers = [", "polcy = \"weighted\"\nservers = [");
        let e = parse(&text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("test.toml:"), "{msg}");
        assert!(msg.contains("polcy"), "{msg}");
        assert!(e.errors[0].key.starts_with("pool.app"), "{msg}");
        assert!(e.errors[0].position.is_some(), "{msg}");
    }

    #[test]
    fn bad_server_addr_names_the_index() {
        let text = MINIMAL.replace(
            "{ addr = \"127.0.0.1:9001\" }",
            "{ addr = \"127.0.0.1:9001\" }, { addr = \"nonsense\" }",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].key, "pool.app.servers[1].addr");
        let (line, _) = e.errors[0].position.expect("position");
        assert_eq!(line, 10);
    }

    #[test]
    fn every_semantic_error_is_reported() {
        let text = r#"
[[listener]]
name = "a"
listen = "nowhere"

[[route]]
pool = "missing"
path_prefix = "api"

[pool.app]
policy = "fastest"
servers = [ { addr = "127.0.0.1:9001", weight = 0 } ]
"#;
        let e = parse(text).unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"listener[0].listen"), "{keys:?}");
        assert!(keys.contains(&"route[0].pool"), "{keys:?}");
        assert!(keys.contains(&"route[0].path_prefix"), "{keys:?}");
        assert!(keys.contains(&"pool.app.policy"), "{keys:?}");
        assert!(keys.contains(&"pool.app.servers[0].weight"), "{keys:?}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let text = MINIMAL.replace(
            "servers = [",
            "connect_timeout = \"2 fortnights\"\nservers = [",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.errors[0].key, "pool.app.connect_timeout");
        assert!(e.errors[0].message.contains("unknown unit"), "{e}");
    }

    #[test]
    fn empty_file_explains_what_is_missing() {
        let e = parse("").unwrap_err();
        assert_eq!(e.errors.len(), 2);
        assert!(e.to_string().contains("[[listener]]"));
        assert!(e.to_string().contains("[[route]]"));
    }

    #[test]
    fn resilience_keys_get_contract_defaults() {
        let p = &parse(MINIMAL).expect("valid").pools[0];
        assert_eq!(p.retries, 2);
        assert_eq!(
            p.retry_on,
            RetryOn {
                connect: true,
                reset: true,
                ..RetryOn::default()
            }
        );
        assert_eq!(p.retry_backoff, Duration::from_millis(10));
        assert_eq!(p.retry_budget, 0.2);
        assert_eq!(p.min_retries_per_second, 10);
        assert_eq!(p.max_pending, 1000);
        assert_eq!(p.panic_threshold, 0.0);
        assert_eq!(p.slow_start, Duration::ZERO);
        assert_eq!(p.resolve_interval, Duration::from_secs(30));
        assert_eq!(p.servers[0].max_connections, 0);
        assert_eq!(p.health, None);
        let o = &p.outlier;
        assert_eq!(o.consecutive_failures, 5);
        assert!(o.count_connect && !o.count_5xx);
        assert_eq!(o.eject_for, Duration::from_secs(10));
        assert_eq!(o.max_eject_for, Duration::from_secs(300));
        assert_eq!(o.max_ejected_percent, 50);
        let c = parse(&(MINIMAL.to_string() + "\n[pool.app.health]\n")).expect("valid");
        let h = c.pools[0].health.as_ref().expect("health");
        assert_eq!(h.kind, HealthKind::Http);
        assert_eq!(h.path, "/healthz");
        assert_eq!(h.expect_status, [(200, 399)]);
        assert_eq!(h.interval, Duration::from_secs(2));
        assert_eq!(h.timeout, Duration::from_secs(1));
        assert_eq!((h.rise, h.fall), (2, 3));
    }

    #[test]
    fn bad_resilience_keys_name_their_key() {
        let text = MINIMAL.replace(
            "servers = [",
            "retry_on = [\"connect\", \"500\"]\nretry_budget = 1.5\npanic_threshold = -1.0\nresolve_interval = \"0s\"\nservers = [",
        ) + "\n[pool.app.health]\nkind = \"udp\"\npath = \"healthz\"\nexpect_status = \"200-700\"\nrise = 0\n\n[pool.app.outlier]\nfailures = [\"4xx\"]\neject_for = \"20s\"\nmax_eject_for = \"10s\"\nmax_ejected_percent = 101\n";
        let e = parse(&text).unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "pool.app.retry_on[1]",
                "pool.app.retry_budget",
                "pool.app.panic_threshold",
                "pool.app.resolve_interval",
                "pool.app.health.kind",
                "pool.app.health.path",
                "pool.app.health.expect_status",
                "pool.app.health.rise",
                "pool.app.outlier.failures[0]",
                "pool.app.outlier.max_eject_for",
                "pool.app.outlier.max_ejected_percent",
            ],
            "{e}"
        );
        let e = parse(&(MINIMAL.to_string() + "\n[pool.app.health]\nintervall = \"1s\"\n"))
            .unwrap_err();
        assert!(e.errors[0].message.contains("intervall"), "{e}");
    }

    #[test]
    fn server_names_are_accepted_and_resolved() {
        let c = parse(&MINIMAL.replace("127.0.0.1:9001", "LocalHost:9001")).expect("valid");
        assert_eq!(
            c.pools[0].servers[0].addr,
            ServerAddr::Name {
                host: "localhost".into(),
                port: 9001
            }
        );
        for bad in [
            "localhost",
            "localhost:0",
            "local_host:80",
            "*.x:80",
            "a..b:80",
        ] {
            let e = parse(&MINIMAL.replace("127.0.0.1:9001", bad)).unwrap_err();
            assert_eq!(e.errors[0].key, "pool.app.servers[0].addr", "{bad}: {e}");
        }
        let e = parse(&MINIMAL.replace("127.0.0.1:9001", "no-such-host.invalid:80")).unwrap_err();
        assert!(e.errors[0].message.contains("cannot resolve"), "{e}");
    }

    /// Like [`Offline`], but every private key is at fault.
    struct BadKeys;

    impl Environment for BadKeys {
        fn load_pair(&self, pair: &CertPair) -> Result<(), PairError> {
            Err(PairError {
                part: PairPart::Key,
                message: format!("private key {} cannot be used", pair.key.display()),
            })
        }

        fn resolve(&self, r: &ResolverConfig, addr: &ServerAddr) -> io::Result<Vec<SocketAddr>> {
            Offline.resolve(r, addr)
        }
    }

    #[test]
    fn tls_pair_problems_are_reported_at_the_file_at_fault() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"\n",
            "listen = \"127.0.0.1:8080\"\ntls = { certs = [ { cert = \"a.pem\", key = \"a.key\" } ] }\n",
        );
        let c = parse(&text).expect("valid");
        assert_eq!(c.listeners[0].tls.as_ref().map(|t| t.certs.len()), Some(1));
        let e = Config::parse(Path::new("test.toml"), &text, &BadKeys).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert_eq!(e.errors[0].key, "listener[0].tls.certs[0].key");
        assert_eq!(e.errors[0].message, "private key a.key cannot be used");
        assert!(e.errors[0].position.is_some(), "{e}");
    }

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_ranges("200-399"), Ok(vec![(200, 399)]));
        assert_eq!(
            parse_status_ranges("200, 204,300-302"),
            Ok(vec![(200, 200), (204, 204), (300, 302)])
        );
        for bad in ["", "2xx", "399-200", "99", "200-600", "200,"] {
            assert!(parse_status_ranges(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_patterns() {
        assert!(check_host_pattern("example.com").is_ok());
        assert!(check_host_pattern("*.example.com").is_ok());
        assert!(check_host_pattern("example.com:80").is_err());
        assert!(check_host_pattern("*").is_err());
        assert!(check_host_pattern("a..b").is_err());
    }
}
