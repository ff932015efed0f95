//! Configuration: the TOML file is read once, checked completely, and turned
//! into validated types (`SocketAddr`, `Duration`, enums). The running proxy
//! only ever sees a [`Config`]; an invalid file yields every problem at once,
//! each naming the file, the key path and, where known, the line and column.
//!
//! One file per section: `listeners`, `limits`, `pools` (and `[resolver]`),
//! `routes` (and their `rules`), `cache`, `compress` and `observe` (admin and logs); the raw
//! TOML shapes are in `raw`, the units in [`units`], the error types and
//! their locations in `diagnostics`, and the rendering back to TOML (the
//! admin API's `/config`) in `effective`. This module holds [`Config`] and
//! the load and validate entry.

mod cache;
mod cache_tier;
mod compress;
mod diagnostics;
mod effective;
mod limits;
mod listeners;
mod observe;
mod pools;
mod raw;
mod redis;
mod routes;
mod rules;
pub(crate) mod units;

pub(crate) use self::redis::{redact_url, RedisEndpoint};
pub(crate) use cache::{CacheConfig, FanoutConfig};
pub use cache::{IgnoreParams, KeySpec};
pub(crate) use cache_tier::{DiskConfig, L2Config, L2Kind, RedisTierConfig};
pub(crate) use compress::CompressionConfig;
pub use compress::{Coding, Level};
pub(crate) use diagnostics::ConfigError;
pub use diagnostics::ConfigErrors;
pub(crate) use effective::effective_toml;
pub(crate) use limits::{Limits, Rate};
pub(crate) use listeners::{CertPair, ListenerConfig, PairError, PairPart, TlsConfig};
pub use observe::{AccessLogConfig, AccessLogFormat, AccessLogTarget};
pub(crate) use observe::{AdminConfig, Cidr, LogConfig, LogFormat};
pub use pools::Policy;
pub(crate) use pools::{
    HashKey, HealthConfig, HealthKind, OutlierConfig, PoolConfig, ResolverConfig, RetryOn,
    SendProxy, ServerAddr, ServerEntry, StickyConfig, UpstreamProtocol, UpstreamTlsConfig,
};
pub use routes::RouteConfig;
pub(crate) use routes::{RateKey, RateLimitConfig};
pub use rules::RouteRules;
pub(crate) use rules::Vars;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use diagnostics::{deserialize, Seg};
use raw::RawConfig;

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from. Relative file paths in it
    /// (certificates, keys, the access log) were resolved against its
    /// directory, so a unit or container may start sluice from any working
    /// directory.
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
    /// What works but is probably not what was meant (a route no request
    /// can reach, a pool nothing uses): printed by `--check`, logged at
    /// start and reload.
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// The warnings as `file:line:col: warning: key: message` lines.
    pub fn warnings_text(&self) -> String {
        let mut out = String::new();
        for w in &self.warnings {
            // Writing to a String cannot fail.
            let _ = w.write_line(&mut out, &self.source, "warning: ");
            out.push('\n');
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Tokio worker threads; 0 = one per core.
    pub workers: usize,
    pub drain_timeout: Duration,
}

/// What validation checks outside the file: that every TLS `{ cert, key }`
/// pair loads, that every server name resolves now (like nginx, a name
/// that does not resolve is an error at `--check` and at start), and that
/// the access log file can be opened.
///
/// `config` itself reads no certificate and asks no DNS server: the caller
/// passes the real checks (`crate::environment::System`, which uses
/// `crate::tls` and `crate::upstream::dns`), and tests pass a fake.
pub trait Environment {
    /// Loads the certificate chain and private key of `pair` and checks
    /// that they match.
    fn load_pair(&self, pair: &CertPair) -> Result<(), PairError>;

    /// Loads the trusted roots of a pool's `[pool.NAME.tls] ca` file: at
    /// least one PEM certificate. The message is reported at `ca`.
    fn load_ca(&self, _path: &Path) -> Result<(), String> {
        Ok(())
    }

    /// The addresses `addr` stands for now, asked of `resolver`.
    fn resolve(&self, resolver: &ResolverConfig, addr: &ServerAddr) -> io::Result<Vec<SocketAddr>>;

    /// Whether the access log can be opened at `path` (an existing file
    /// for appending, or a new one in an existing directory).
    fn log_file(&self, path: &Path) -> io::Result<()>;

    /// Creates the directory of a disk cache tier if needed and checks
    /// that sluice can write in it.
    fn cache_dir(&self, path: &Path) -> io::Result<()>;
}

impl Config {
    /// Reads and validates `path`, checking certificate pairs and server
    /// names against `env`; with the real environment, a config that
    /// passes here will start.
    pub(crate) fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigErrors> {
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
        let (raw, mut errors, read) = deserialize(text);
        let Some(raw) = raw else {
            return Err(fail(errors));
        };
        let mut v = Validator {
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            text,
            doc: read.parse::<toml_edit::ImDocument<String>>().ok(),
            env,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let mut config = v.validate(path, raw);
        v.warnings
            .sort_by_key(|w| w.position.unwrap_or((usize::MAX, 0)));
        config.warnings = std::mem::take(&mut v.warnings);
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

    /// Listener `name`'s settings.
    pub(crate) fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// The limits that apply on listener `name`: its own `[listener.limits]`
    /// over `[limits]`.
    pub(crate) fn limits_for(&self, name: &str) -> &Limits {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map_or(&self.limits, |l| &l.limits)
    }
}

/// One validation pass: the text and document that errors are located in,
/// the environment for checks outside the file, and the problems found.
/// Each section's checks are methods in that section's file.
struct Validator<'t> {
    /// The config file's directory, which relative file paths in it are
    /// resolved against (see [`Validator::file_path`]).
    base: PathBuf,
    text: &'t str,
    doc: Option<toml_edit::ImDocument<String>>,
    /// Where certificate pairs are loaded and server names resolved.
    env: &'t dyn Environment,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Validator<'_> {
    /// A file path as written in the config, resolved against the config
    /// file's directory when relative: the file and what it names move
    /// together, whatever the daemon's working directory is.
    fn file_path(&self, written: &str) -> PathBuf {
        self.base.join(written)
    }

    fn validate(&mut self, path: &Path, raw: RawConfig) -> Config {
        let limits = self.limits(&Limits::default(), &raw.limits, &[Seg::Key("limits")]);
        let listeners = self.listeners(&raw, &limits);
        let resolver = self.resolver(raw.resolver.as_ref());
        let pools = self.pools(&raw, &resolver);
        let routes = self.routes(&raw, &pools);
        self.unreachable(&routes, &pools);
        let admin = self.admin(raw.admin.as_ref());
        self.admin_apart(admin.as_ref(), &listeners);
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
            warnings: Vec::new(),
        }
    }
}

/// An RFC 6265 cookie name: a token (visible ASCII, no separators).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

#[cfg(test)]
pub(crate) mod tests {
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

        fn log_file(&self, _: &Path) -> io::Result<()> {
            Ok(())
        }

        fn cache_dir(&self, _: &Path) -> io::Result<()> {
            Ok(())
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("test.toml"), text, &Offline)
    }

    pub(crate) const MINIMAL: &str = r#"
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
    fn numbers_toml_cannot_hold_are_reported_with_their_keys() {
        let text = MINIMAL
            .replace(
                "pool = \"app\"",
                "pool = \"app\"\nname = 1e999\n\n[[route]]\npool = \"app\"\npath_prefix = -99999999999999999999",
            )
            .replace("servers = [", "retry_on = [\"connect\", 1e400]\nservers = [");
        let e = parse(&text).unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "route[0].name",
                "route[1].path_prefix",
                "pool.app.retry_on[1]"
            ],
            "{e}"
        );
        assert!(e.errors.iter().all(|e| e.position.is_some()), "{e}");
        assert!(e.errors[1].message.contains("integer out of range"), "{e}");
        // Everything else in the file is still checked.
        let text = text.replace("listen = \"127.0.0.1:8080\"", "listen = \"nowhere\"");
        let e = parse(&text).unwrap_err();
        assert!(
            e.errors.iter().any(|e| e.key == "listener[0].listen"),
            "{e}"
        );
    }

    #[test]
    fn relative_file_paths_resolve_against_the_config_files_directory() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\n[listener.tls]\ncerts = [ { cert = \"certs/a.pem\", key = \"/keys/a.key\" } ]",
        ) + "\n[access_log]\npath = \"../log/access.log\"\n";
        let c =
            Config::parse(Path::new("/etc/sluice/sluice.toml"), &text, &Offline).expect("valid");
        let pair = &c.listeners[0].tls.as_ref().expect("tls").certs[0];
        assert_eq!(pair.cert, Path::new("/etc/sluice/certs/a.pem"));
        assert_eq!(pair.key, Path::new("/keys/a.key"), "absolute paths stay");
        assert_eq!(
            c.access_log.expect("access log").target,
            AccessLogTarget::File(PathBuf::from("/etc/sluice/../log/access.log"))
        );
        // A config named without a directory: its directory is the working one.
        let c = Config::parse(Path::new("sluice.toml"), &text, &Offline).expect("valid");
        let pair = &c.listeners[0].tls.as_ref().expect("tls").certs[0];
        assert_eq!(pair.cert, Path::new("certs/a.pem"));
    }

    /// Like [`Offline`], but every name resolves (to one address), as the
    /// cluster's DNS would answer for a Kubernetes Service.
    struct AnyName;

    impl Environment for AnyName {
        fn load_pair(&self, _: &CertPair) -> Result<(), PairError> {
            Ok(())
        }

        fn resolve(&self, _: &ResolverConfig, _: &ServerAddr) -> io::Result<Vec<SocketAddr>> {
            Ok(vec![SocketAddr::from(([10, 0, 0, 1], 8080))])
        }

        fn log_file(&self, _: &Path) -> io::Result<()> {
            Ok(())
        }

        fn cache_dir(&self, _: &Path) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_kubernetes_configmaps_sluice_toml_is_valid() {
        let yaml = include_str!("../../deploy/kubernetes/configmap.yaml");
        let mut lines = yaml.lines().skip_while(|l| l.trim() != "sluice.toml: |");
        assert!(lines.next().is_some(), "no sluice.toml in the ConfigMap");
        let toml: String = lines
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
            .collect();
        let c = Config::parse(Path::new("/etc/sluice/sluice.toml"), &toml, &AnyName)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listeners[0].listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            c.admin.map(|a| a.listen),
            Some("0.0.0.0:9090".parse().unwrap())
        );
        assert!(matches!(
            &c.pools[0].servers[0].addr,
            ServerAddr::Srv { name } if name.starts_with("_http._tcp.app.")
        ));
    }

    #[test]
    fn empty_file_explains_what_is_missing() {
        let e = parse("").unwrap_err();
        assert_eq!(e.errors.len(), 2);
        assert!(e.to_string().contains("[[listener]]"));
        assert!(e.to_string().contains("[[route]]"));
    }
}
