//! `[[listener]]`: names, addresses, TLS certificate pairs (checked
//! through [`super::Environment::load_pair`]), per-listener limits and
//! connection rates.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use super::observe::Cidr;
use super::raw::RawConfig;
use super::{Limits, Rate, Seg, Validator};

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// `[limits]` with this listener's `[listener.limits]` applied.
    pub limits: Limits,
    /// New connections accepted per unit of time; `None` = unlimited.
    pub max_connection_rate: Option<Rate>,
    /// `path_normalization = "on"` (the default): request paths are
    /// normalised before routing, caching and forwarding ([`crate::path`]);
    /// `"off"` keeps them as sent.
    pub normalize_paths: bool,
    /// `proxy_protocol = true`: every connection starts with a PROXY
    /// header (v1 or v2), accepted only from a peer in `trusted`.
    pub proxy_protocol: bool,
    /// Who may send a PROXY header; required with `proxy_protocol`.
    pub trusted: Vec<Cidr>,
    /// Peers whose `X-Forwarded-For` is believed ([`crate::client_addr`]);
    /// empty = nobody's. Shared with connections, so it is an `Arc`.
    pub trusted_forwarders: Arc<[Cidr]>,
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
/// [`super::Environment::load_pair`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairError {
    /// The file at fault; the error is reported at its key.
    pub part: PairPart,
    /// The whole message, as reported.
    pub message: String,
}

/// Whether two listening sockets cannot both be bound: the same port and
/// the same address, or a wildcard that covers the other (`0.0.0.0` covers
/// IPv4; `[::]` covers everything, as sluice binds it dual-stack). Port 0
/// (any free port) never clashes.
pub(super) fn addresses_clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    x == y || covers(x, y) || covers(y, x)
}

fn covers(wildcard: IpAddr, other: IpAddr) -> bool {
    match wildcard {
        IpAddr::V6(w) => w.is_unspecified(),
        IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
    }
}

impl Validator<'_> {
    pub(super) fn listeners(&mut self, raw: &RawConfig, base: &Limits) -> Vec<ListenerConfig> {
        if raw.listener.is_empty() {
            self.error(
                &[],
                "no [[listener]] is configured; add one with name and listen, e.g. listen = \"127.0.0.1:8080\"",
            );
        }
        let mut names = HashSet::new();
        let mut out: Vec<ListenerConfig> = Vec::new();
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
                    if let Some(other) = out.iter().find(|o| addresses_clash(a, o.listen)) {
                        self.error(
                            &at("listen"),
                            format!(
                                "{a} is used by another listener (\"{}\" on {})",
                                other.name, other.listen
                            ),
                        );
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
                        cert: self.file_path(&pair.cert),
                        key: self.file_path(&pair.key),
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
            let normalize_paths = match l.path_normalization.as_deref() {
                None | Some("on") => true,
                Some("off") => false,
                Some(other) => {
                    self.error(
                        &at("path_normalization"),
                        format!("unknown value \"{other}\"; use \"on\" or \"off\""),
                    );
                    true
                }
            };
            let trusted = self.cidr_list(&l.trusted, |j| {
                [
                    Seg::Key("listener"),
                    Seg::Index(i),
                    Seg::Key("trusted"),
                    Seg::Index(j),
                ]
            });
            if l.proxy_protocol && l.trusted.is_empty() {
                self.error(
                    &at("proxy_protocol"),
                    "needs the networks allowed to send a PROXY header, e.g. trusted = [\"10.0.0.0/8\"]",
                );
            } else if !l.proxy_protocol && !l.trusted.is_empty() {
                self.error(
                    &at("trusted"),
                    "lists who may send a PROXY header, but proxy_protocol is off; set proxy_protocol = true or remove trusted",
                );
            }
            let trusted_forwarders = self.cidr_list(&l.trusted_forwarders, |j| {
                [
                    Seg::Key("listener"),
                    Seg::Index(i),
                    Seg::Key("trusted_forwarders"),
                    Seg::Index(j),
                ]
            });
            out.push(ListenerConfig {
                name: l.name.clone(),
                listen,
                tls,
                limits,
                max_connection_rate,
                normalize_paths,
                proxy_protocol: l.proxy_protocol,
                trusted,
                trusted_forwarders: trusted_forwarders.into(),
            });
        }
        out
    }

    /// A list of networks ([`Cidr`]); each bad entry is reported at `at(index)`.
    fn cidr_list<const N: usize>(
        &mut self,
        list: &[String],
        at: impl Fn(usize) -> [Seg<'static>; N],
    ) -> Vec<Cidr> {
        let mut out = Vec::with_capacity(list.len());
        for (j, text) in list.iter().enumerate() {
            match Cidr::parse(text) {
                Ok(c) => out.push(c),
                Err(why) => self.error(&at(j), why),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::SocketAddr;
    use std::path::Path;

    use super::*;
    use crate::config::tests::{parse, Offline, MINIMAL};
    use crate::config::{Config, Environment, ResolverConfig, ServerAddr};

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

        fn log_file(&self, _: &Path) -> io::Result<()> {
            Ok(())
        }

        fn cache_dir(&self, _: &Path) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn listening_addresses_clash_when_one_socket_would_cover_the_other() {
        let clash = |a: &str, b: &str| addresses_clash(a.parse().unwrap(), b.parse().unwrap());
        assert!(clash("127.0.0.1:80", "127.0.0.1:80"));
        assert!(clash("0.0.0.0:80", "127.0.0.1:80"));
        assert!(clash("127.0.0.1:80", "[::]:80"));
        assert!(clash("[::]:80", "[::1]:80"));
        assert!(clash("[::ffff:127.0.0.1]:80", "127.0.0.1:80"));
        assert!(!clash("0.0.0.0:80", "[::1]:80"));
        assert!(!clash("127.0.0.1:80", "127.0.0.2:80"));
        assert!(!clash("127.0.0.1:80", "127.0.0.1:81"));
        assert!(!clash("127.0.0.1:0", "127.0.0.1:0"));
    }

    #[test]
    fn proxy_protocol_and_forwarder_networks_are_checked() {
        let with = |extra: &str| {
            MINIMAL.replace(
                "listen = \"127.0.0.1:8080\"\n",
                &format!("listen = \"127.0.0.1:8080\"\n{extra}\n"),
            )
        };
        let c = parse(&with(
            "proxy_protocol = true\ntrusted = [\"10.0.0.0/8\", \"::1\"]\ntrusted_forwarders = [\"192.0.2.0/24\"]",
        ))
        .expect("valid");
        let l = &c.listeners[0];
        assert!(l.proxy_protocol);
        assert_eq!(l.trusted.len(), 2);
        assert!(l.trusted_forwarders[0].contains("192.0.2.9".parse().unwrap()));
        let defaults = parse(MINIMAL).expect("valid");
        assert!(!defaults.listeners[0].proxy_protocol);
        assert!(defaults.listeners[0].trusted_forwarders.is_empty());

        let errors = |extra: &str| {
            Config::parse(Path::new("t.toml"), &with(extra), &Offline)
                .unwrap_err()
                .errors
                .into_iter()
                .map(|e| (e.key, e.position.is_some()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            errors("proxy_protocol = true"),
            [("listener[0].proxy_protocol".to_string(), true)]
        );
        assert_eq!(
            errors("trusted = [\"10.0.0.0/8\"]"),
            [("listener[0].trusted".to_string(), true)]
        );
        assert_eq!(
            errors("proxy_protocol = true\ntrusted = [\"10.0.0.0/33\"]"),
            [("listener[0].trusted[0]".to_string(), true)]
        );
        assert_eq!(
            errors("trusted_forwarders = [\"10.0.0.0/8\", \"nonsense\"]"),
            [("listener[0].trusted_forwarders[1]".to_string(), true)]
        );
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
}
