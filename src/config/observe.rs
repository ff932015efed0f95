//! The observability keys: `[admin]` (the admin listener), `[access_log]`
//! and `[log]`, from their raw TOML form to validated types.
//!
//! `[admin]` and `[access_log]` are off unless their table is present; a
//! present table gets the defaults below for every key it leaves out.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use super::listeners::addresses_clash;
use super::{ListenerConfig, Seg, Validator};

/// `[admin]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    #[serde(default = "admin_listen")]
    pub listen: String,
    pub token: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `[access_log]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    #[serde(default = "json")]
    pub format: String,
    #[serde(default = "stdout")]
    pub path: String,
}

/// `[log]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

fn admin_listen() -> String {
    "127.0.0.1:9090".to_string()
}
fn json() -> String {
    "json".to_string()
}
fn stdout() -> String {
    "stdout".to_string()
}

/// The admin listener: where it listens and who may use it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Required as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// Client networks allowed to connect; empty = any.
    pub allow: Vec<Cidr>,
}

/// An IP network such as `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix`, or a bare address (a single host).
    pub(crate) fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("\"{text}\" is not a network such as \"10.0.0.0/8\" or \"::1\"");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(format!(
                "\"{text}\": the prefix length must be at most {max}"
            ));
        }
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses count
    /// as IPv4).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Json,
    Combined,
}

impl AccessLogFormat {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AccessLogFormat::Json => "json",
            AccessLogFormat::Combined => "combined",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub format: AccessLogFormat,
    pub target: AccessLogTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `[log]`: the daemon's own diagnostics on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `sluice=debug`;
    /// `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Pretty,
        }
    }
}

impl Validator<'_> {
    pub(super) fn admin(&mut self, raw: Option<&RawAdmin>) -> Option<AdminConfig> {
        let raw = raw?;
        let at = |k| [Seg::Key("admin"), Seg::Key(k)];
        let listen = match raw.listen.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.error(
                    &at("listen"),
                    format!(
                        "\"{}\" is not an IP:port address such as \"127.0.0.1:9090\"",
                        raw.listen
                    ),
                );
                return None;
            }
        };
        if raw.token.as_deref() == Some("") {
            self.error(
                &at("token"),
                "must not be empty; remove the key to require no token",
            );
        }
        let mut allow = Vec::new();
        for (i, a) in raw.allow.iter().enumerate() {
            match Cidr::parse(a) {
                Ok(c) => allow.push(c),
                Err(why) => self.error(&[Seg::Key("admin"), Seg::Key("allow"), Seg::Index(i)], why),
            }
        }
        Some(AdminConfig {
            listen,
            token: raw.token.clone(),
            allow,
        })
    }

    /// The admin listener is bound beside the proxy listeners: an address
    /// one of them holds would fail at start.
    pub(super) fn admin_apart(
        &mut self,
        admin: Option<&AdminConfig>,
        listeners: &[ListenerConfig],
    ) {
        let Some(admin) = admin else {
            return;
        };
        if let Some(l) = listeners
            .iter()
            .find(|l| addresses_clash(admin.listen, l.listen))
        {
            self.error(
                &[Seg::Key("admin"), Seg::Key("listen")],
                format!(
                    "{} is used by listener \"{}\" ({}); the admin API needs an address of its own",
                    admin.listen, l.name, l.listen
                ),
            );
        }
    }

    pub(super) fn access_log(&mut self, raw: Option<&RawAccessLog>) -> Option<AccessLogConfig> {
        let raw = raw?;
        let format = match raw.format.as_str() {
            "json" => AccessLogFormat::Json,
            "combined" => AccessLogFormat::Combined,
            other => {
                self.error(
                    &[Seg::Key("access_log"), Seg::Key("format")],
                    super::diagnostics::with_suggestion(
                        format!("unknown format \"{other}\"; use json or combined"),
                        other,
                        &["json", "combined"],
                    ),
                );
                AccessLogFormat::Json
            }
        };
        let target = match raw.path.as_str() {
            "stdout" => AccessLogTarget::Stdout,
            "" => {
                self.error(
                    &[Seg::Key("access_log"), Seg::Key("path")],
                    "must be \"stdout\" or a file path",
                );
                AccessLogTarget::Stdout
            }
            p => {
                let path = self.file_path(p);
                if let Err(e) = self.env.log_file(&path) {
                    self.error(
                        &[Seg::Key("access_log"), Seg::Key("path")],
                        format!(
                            "the access log cannot be opened at \"{}\": {e}",
                            path.display()
                        ),
                    );
                }
                AccessLogTarget::File(path)
            }
        };
        Some(AccessLogConfig { format, target })
    }

    pub(super) fn log(&mut self, raw: &RawLog) -> LogConfig {
        let mut out = LogConfig::default();
        if let Some(level) = &raw.level {
            if tracing_subscriber::EnvFilter::try_new(level).is_err() || level.trim().is_empty() {
                self.error(
                    &[Seg::Key("log"), Seg::Key("level")],
                    format!(
                        "\"{level}\" is not a level (error, warn, info, debug, trace) or filter such as \"sluice=debug\""
                    ),
                );
            } else {
                out.level = level.clone();
            }
        }
        if let Some(format) = &raw.format {
            out.format = match format.as_str() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                other => {
                    self.error(
                        &[Seg::Key("log"), Seg::Key("format")],
                        super::diagnostics::with_suggestion(
                            format!("unknown format \"{other}\"; use pretty or json"),
                            other,
                            &["pretty", "json"],
                        ),
                    );
                    LogFormat::Pretty
                }
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let host = Cidr::parse("::1").unwrap();
        assert!(host.contains("::1".parse().unwrap()));
        assert!(!host.contains("::2".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense/8").is_err());
    }
}
