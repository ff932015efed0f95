//! `[pool.NAME]`: the balancing policy, the servers (addresses, names and
//! SRV records, names checked through [`super::Environment::resolve`]),
//! timeouts, retries, `[pool.NAME.health]` and `[pool.NAME.outlier]`; and
//! `[resolver]`, the DNS servers pools resolve their names with.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{self, RawConfig};
use super::routes::{check_host_pattern, dns_labels_ok};
use super::{CertPair, PairPart, Seg, Validator};

/// Where server names are looked up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Empty = the system's resolver (`/etc/hosts`, `/etc/resolv.conf`).
    /// Otherwise these DNS servers only, asked over UDP (TCP when an
    /// answer is truncated), without `/etc/hosts`, like nginx's `resolver`.
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    Weighted,
    LeastConn,
    IpHash,
    /// Consistent hashing of [`HashKey`] with bounded loads.
    Hash,
    /// A cookie names the member; new clients are balanced as `weighted`.
    StickyCookie,
}

impl Policy {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::Weighted => "weighted",
            Policy::LeastConn => "least_conn",
            Policy::IpHash => "ip_hash",
            Policy::Hash => "hash",
            Policy::StickyCookie => "sticky_cookie",
        }
    }
}

/// What `policy = "hash"` hashes for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// Path and query as forwarded.
    Uri,
    /// A request header's value (absent: an empty key).
    Header(http::HeaderName),
    /// A cookie's value (absent: an empty key).
    Cookie(String),
    /// The client's address.
    Client,
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::Uri => f.write_str("uri"),
            HashKey::Header(h) => write!(f, "header:{h}"),
            HashKey::Cookie(c) => write!(f, "cookie:{c}"),
            HashKey::Client => f.write_str("client"),
        }
    }
}

/// `protocol`: how a pool speaks to its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over plain TCP; over TLS, what the member picks by ALPN.
    #[default]
    Auto,
    /// HTTP/2 by prior knowledge over plain TCP.
    H2c,
}

impl UpstreamProtocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Auto => "auto",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

/// `send_proxy_protocol`: whether each upstream connection starts with a
/// PROXY header naming the client, and in which version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendProxy {
    #[default]
    Off,
    V1,
    V2,
}

impl SendProxy {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SendProxy::Off => "off",
            SendProxy::V1 => "v1",
            SendProxy::V2 => "v2",
        }
    }

    /// The header version to send, if any.
    pub(crate) fn version(self) -> Option<crate::proxy_protocol::Version> {
        match self {
            SendProxy::Off => None,
            SendProxy::V1 => Some(crate::proxy_protocol::Version::V1),
            SendProxy::V2 => Some(crate::proxy_protocol::Version::V2),
        }
    }
}

/// `[pool.NAME.sticky]`: the cookie that keeps a client on its member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    pub cookie: String,
    /// `Max-Age`; zero = a session cookie.
    pub ttl: Duration,
    pub secure: bool,
    pub http_only: bool,
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
    /// `policy = "hash"`: what is hashed, and the load bound.
    pub hash_key: HashKey,
    pub balance_factor: f64,
    /// `policy = "sticky_cookie"`: the cookie.
    pub sticky: StickyConfig,
    /// Not `Off`: every request gets a new connection that starts with a
    /// PROXY header (connections are never shared between clients).
    pub send_proxy_protocol: SendProxy,
    /// `protocol`: HTTP/1.1 or ALPN's pick, or h2c.
    pub protocol: UpstreamProtocol,
    /// `[pool.NAME.tls]`: TLS (and mTLS) to every member.
    pub tls: Option<UpstreamTlsConfig>,
}

/// `[pool.NAME.tls]`, with paths resolved against the config file.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTlsConfig {
    /// SNI and the name verified; `None` = each server's configured host
    /// (or IP).
    pub server_name: Option<String>,
    /// Trusted roots (PEM); `None` = the system's.
    pub ca: Option<PathBuf>,
    /// The client certificate and key for mTLS.
    pub client: Option<CertPair>,
    /// `false` accepts any certificate (logged at start and reload).
    pub verify: bool,
    /// As written; only `http/1.1` is offered until h2 to upstreams lands.
    pub alpn: Vec<String>,
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
    pub(crate) fn is_name(&self) -> bool {
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
    pub(crate) fn status(&self, status: u16) -> bool {
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
    /// The standard `grpc.health.v1.Health/Check` over HTTP/2.
    Grpc,
}

/// `[pool.NAME.health]`: active checks.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub path: String,
    /// The service a `grpc` check names (`""`: the whole server).
    pub service: String,
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
    pub(crate) fn expects(&self, status: u16) -> bool {
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

impl Validator<'_> {
    pub(super) fn resolver(&mut self, raw: Option<&raw::RawResolver>) -> ResolverConfig {
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

    /// `hash_key` and `balance_factor`, which only `policy = "hash"` reads.
    fn hashing(&mut self, name: &str, p: &raw::RawPool, policy: Policy) -> (HashKey, f64) {
        let at = |k| [Seg::Key("pool"), Seg::Key(name), Seg::Key(k)];
        if policy != Policy::Hash {
            for (key, set) in [
                ("hash_key", p.hash_key.is_some()),
                ("balance_factor", p.balance_factor.is_some()),
            ] {
                if set {
                    self.error(&at(key), "has no effect unless policy = \"hash\"");
                }
            }
        }
        let key = match p.hash_key.as_deref().unwrap_or("uri") {
            "uri" => HashKey::Uri,
            "client" => HashKey::Client,
            other => match other.split_once(':') {
                Some(("header", h)) => match http::HeaderName::from_bytes(h.trim().as_bytes()) {
                    Ok(h) => HashKey::Header(h),
                    Err(_) => {
                        self.error(
                            &at("hash_key"),
                            format!("\"{h}\" is not a valid header name"),
                        );
                        HashKey::Uri
                    }
                },
                Some(("cookie", c)) if super::is_cookie_name(c.trim()) => {
                    HashKey::Cookie(c.trim().to_string())
                }
                Some(("cookie", c)) => {
                    self.error(
                        &at("hash_key"),
                        format!("\"{c}\" is not a valid cookie name"),
                    );
                    HashKey::Uri
                }
                _ => {
                    self.error(
                        &at("hash_key"),
                        format!("unknown hash key \"{other}\"; use \"uri\", \"client\", \"header:NAME\" or \"cookie:NAME\""),
                    );
                    HashKey::Uri
                }
            },
        };
        let factor = p.balance_factor.unwrap_or(1.25);
        if !(1.0..=100.0).contains(&factor) {
            self.error(
                &at("balance_factor"),
                "must be between 1.0 (every member at the average load) and 100.0",
            );
        }
        (
            key,
            if factor.is_finite() {
                factor.clamp(1.0, 100.0)
            } else {
                1.25
            },
        )
    }

    /// `[pool.NAME.sticky]`, which only `policy = "sticky_cookie"` reads.
    fn sticky(&mut self, name: &str, p: &raw::RawPool, policy: Policy) -> StickyConfig {
        let at = |k| {
            [
                Seg::Key("pool"),
                Seg::Key(name),
                Seg::Key("sticky"),
                Seg::Key(k),
            ]
        };
        let default = raw::RawSticky::default();
        if p.sticky.is_some() && policy != Policy::StickyCookie {
            self.error(
                &[Seg::Key("pool"), Seg::Key(name), Seg::Key("sticky")],
                "has no effect unless policy = \"sticky_cookie\"",
            );
        }
        let s = p.sticky.as_ref().unwrap_or(&default);
        if !super::is_cookie_name(&s.cookie) {
            self.error(
                &at("cookie"),
                format!("\"{}\" is not a valid cookie name", s.cookie),
            );
        }
        StickyConfig {
            cookie: s.cookie.clone(),
            ttl: s.ttl,
            secure: s.secure,
            http_only: s.http_only,
        }
    }

    pub(super) fn pools(&mut self, raw: &RawConfig, resolver: &ResolverConfig) -> Vec<PoolConfig> {
        let mut out = Vec::new();
        for (name, p) in &raw.pool {
            let at = |k| [Seg::Key("pool"), Seg::Key(name), Seg::Key(k)];
            let policy = match p.policy.as_str() {
                "round_robin" => Policy::RoundRobin,
                "weighted" => Policy::Weighted,
                "least_conn" => Policy::LeastConn,
                "ip_hash" => Policy::IpHash,
                "hash" => Policy::Hash,
                "sticky_cookie" => Policy::StickyCookie,
                other => {
                    self.error(
                        &at("policy"),
                        super::diagnostics::with_suggestion(
                            format!(
                                "unknown policy \"{other}\"; use round_robin, weighted, least_conn, ip_hash, hash or sticky_cookie"
                            ),
                            other,
                            &[
                                "round_robin",
                                "weighted",
                                "least_conn",
                                "ip_hash",
                                "hash",
                                "sticky_cookie",
                            ],
                        ),
                    );
                    Policy::RoundRobin
                }
            };
            let (hash_key, balance_factor) = self.hashing(name, p, policy);
            let sticky = self.sticky(name, p, policy);
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
            let send_proxy_protocol = match p.send_proxy_protocol.as_deref() {
                None | Some("off") => SendProxy::Off,
                Some("v1") => SendProxy::V1,
                Some("v2") => SendProxy::V2,
                Some(other) => {
                    self.error(
                        &at("send_proxy_protocol"),
                        format!("unknown value \"{other}\"; use \"off\", \"v1\" or \"v2\""),
                    );
                    SendProxy::Off
                }
            };
            let protocol = match p.protocol.as_deref() {
                None | Some("auto") => UpstreamProtocol::Auto,
                Some("h2c") if p.tls.is_some() => {
                    self.error(
                        &at("protocol"),
                        "h2c is HTTP/2 over plain TCP, but this pool has [tls]; over TLS, h2 is chosen by ALPN (tls.alpn)",
                    );
                    UpstreamProtocol::Auto
                }
                Some("h2c") => UpstreamProtocol::H2c,
                Some(other) => {
                    self.error(
                        &at("protocol"),
                        format!("unknown value \"{other}\"; use \"auto\" or \"h2c\""),
                    );
                    UpstreamProtocol::Auto
                }
            };
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
                hash_key,
                balance_factor,
                sticky,
                panic_threshold,
                slow_start: p.slow_start,
                resolve_interval: p.resolve_interval.max(Duration::from_millis(1)),
                resolver: resolver.clone(),
                health,
                outlier,
                send_proxy_protocol,
                protocol,
                tls: p.tls.as_ref().map(|t| self.upstream_tls(name, t)),
            });
        }
        out
    }
}

impl Validator<'_> {
    /// `[pool.NAME.tls]`: the CA file and the client pair are loaded (as
    /// listeners' pairs are), so `--check` catches what start would.
    fn upstream_tls(&mut self, pool: &str, t: &raw::RawUpstreamTls) -> UpstreamTlsConfig {
        let at = |k| {
            [
                Seg::Key("pool"),
                Seg::Key(pool),
                Seg::Key("tls"),
                Seg::Key(k),
            ]
        };
        if let Some(name) = &t.server_name {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                self.error(
                    &at("server_name"),
                    format!("\"{name}\" is not a DNS name or IP address"),
                );
            }
        }
        let ca = t.ca.as_ref().map(|c| self.file_path(c));
        if let Some(path) = &ca {
            if let Err(e) = self.env.load_ca(path) {
                self.error(&at("ca"), e);
            }
        }
        let client = match (&t.cert, &t.key) {
            (Some(cert), Some(key)) => {
                let pair = CertPair {
                    cert: self.file_path(cert),
                    key: self.file_path(key),
                };
                if let Err(e) = self.env.load_pair(&pair) {
                    let field = match e.part {
                        PairPart::Cert => "cert",
                        PairPart::Key => "key",
                    };
                    self.error(&at(field), e.message);
                }
                Some(pair)
            }
            (Some(_), None) => {
                self.error(&at("cert"), "a client certificate needs its key: add key");
                None
            }
            (None, Some(_)) => {
                self.error(&at("key"), "a client key needs its certificate: add cert");
                None
            }
            (None, None) => None,
        };
        for p in &t.alpn {
            if p != "h2" && p != "http/1.1" {
                self.error(
                    &at("alpn"),
                    format!("unknown protocol \"{p}\"; use \"h2\" or \"http/1.1\""),
                );
            }
        }
        UpstreamTlsConfig {
            server_name: t.server_name.clone(),
            ca,
            client,
            verify: t.verify,
            alpn: t.alpn.clone(),
        }
    }

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
            "grpc" => HealthKind::Grpc,
            other => {
                self.error(
                    &at("kind"),
                    super::diagnostics::with_suggestion(
                        format!("unknown check kind \"{other}\"; use http, tcp or grpc"),
                        other,
                        &["http", "tcp", "grpc"],
                    ),
                );
                HealthKind::Tcp
            }
        };
        if !h.path.starts_with('/') || http::uri::PathAndQuery::try_from(h.path.as_str()).is_err() {
            self.error(&at("path"), "must be a path starting with \"/\"");
        }
        // (After a misspelt kind, its own error says enough.)
        let known = matches!(h.kind.as_str(), "http" | "tcp" | "grpc");
        if h.service.is_some() && known && kind != HealthKind::Grpc {
            self.error(
                &at("service"),
                "only a kind = \"grpc\" check names a service",
            );
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
            service: h.service.clone().unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::tests::{parse, MINIMAL};

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
    fn grpc_checks_name_a_service_and_only_they_do() {
        let c = parse(&(MINIMAL.to_string() + "\n[pool.app.health]\nkind = \"grpc\"\n"))
            .expect("valid");
        let h = c.pools[0].health.as_ref().expect("health");
        assert_eq!((h.kind, h.service.as_str()), (HealthKind::Grpc, ""));
        let c = parse(
            &(MINIMAL.to_string()
                + "\n[pool.app.health]\nkind = \"grpc\"\nservice = \"shop.Cart\"\n"),
        )
        .expect("valid");
        assert_eq!(
            c.pools[0].health.as_ref().expect("health").service,
            "shop.Cart"
        );
        let e = parse(&(MINIMAL.to_string() + "\n[pool.app.health]\nservice = \"shop.Cart\"\n"))
            .unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["pool.app.health.service"]);
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
    fn upstream_tls_defaults_and_half_pairs() {
        let p = &parse(&format!("{MINIMAL}[pool.app.tls]\n"))
            .expect("valid")
            .pools[0];
        let tls = p.tls.as_ref().expect("tls");
        assert!(tls.verify);
        assert_eq!(tls.alpn, ["h2", "http/1.1"]);
        assert_eq!(
            (&tls.server_name, &tls.ca, &tls.client),
            (&None, &None, &None)
        );
        assert!(parse(&format!("{MINIMAL}[pool.app.tls]\nalpn = []\n")).is_ok());

        let e = parse(&format!("{MINIMAL}[pool.app.tls]\ncert = \"c.pem\"\n")).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].key, "pool.app.tls.cert");
        let e = parse(&format!("{MINIMAL}[pool.app.tls]\nkey = \"k.pem\"\n")).unwrap_err();
        assert_eq!(e.errors[0].key, "pool.app.tls.key");
        let e = parse(&format!("{MINIMAL}[pool.app.tls]\nalpn = [\"h3\"]\n")).unwrap_err();
        assert!(e.errors[0].message.contains("unknown protocol"), "{e:?}");
        let e = parse(&format!("{MINIMAL}[pool.app.tls]\nserver_name = \"a b\"\n")).unwrap_err();
        assert_eq!(e.errors[0].key, "pool.app.tls.server_name");
    }
}
