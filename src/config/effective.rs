//! The effective config (`GET /config` on the admin listener): a validated
//! [`Config`] rendered back as TOML with every default filled in, in the
//! same keys and units the parser reads, and with secrets (private key
//! paths, the admin token) redacted.

use std::time::Duration;

use super::{Config, Limits, PoolConfig};

const REDACTED: &str = "<redacted>";

/// A duration the config parser reads back: whole seconds or milliseconds.
fn duration(d: Duration) -> toml::Value {
    let ms = d.as_millis();
    let text = if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    };
    toml::Value::String(text)
}

fn int(n: impl TryInto<i64>) -> toml::Value {
    toml::Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

fn string(s: impl Into<String>) -> toml::Value {
    toml::Value::String(s.into())
}

fn table<const N: usize>(entries: [(&str, toml::Value); N]) -> toml::Table {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn limits_table(l: &Limits) -> toml::Table {
    table([
        ("max_header_bytes", int(l.max_header_bytes)),
        ("max_uri_bytes", int(l.max_uri_bytes)),
        ("max_body_bytes", int(l.max_body_bytes)),
        ("max_header_count", int(l.max_header_count)),
        ("header_read_timeout", duration(l.header_read_timeout)),
        ("keepalive_timeout", duration(l.keepalive_timeout)),
        ("min_body_rate", int(l.min_body_rate)),
        ("body_rate_grace", duration(l.body_rate_grace)),
        ("max_connections", int(l.max_connections)),
        (
            "max_connections_per_client",
            int(l.max_connections_per_client),
        ),
        (
            "h2_max_concurrent_streams",
            int(l.h2_max_concurrent_streams),
        ),
        ("h2_max_frame_size", int(l.h2_max_frame_size)),
        (
            "h2_max_pending_accept_reset_streams",
            int(l.h2_max_pending_accept_reset_streams),
        ),
        (
            "h2_max_local_error_reset_streams",
            int(l.h2_max_local_error_reset_streams),
        ),
    ])
}

fn pool_table(p: &PoolConfig) -> toml::Table {
    use toml::Value;
    let servers = p
        .servers
        .iter()
        .map(|s| {
            let key = match s.addr {
                crate::config::ServerAddr::Srv { .. } => "srv",
                _ => "addr",
            };
            Value::Table(table([
                (key, string(s.addr.to_string())),
                ("weight", int(s.weight)),
                ("max_connections", int(s.max_connections)),
            ]))
        })
        .collect();
    let flags = |list: &[(bool, &str)]| {
        Value::Array(
            list.iter()
                .filter(|(on, _)| *on)
                .map(|(_, name)| string(*name))
                .collect(),
        )
    };
    let r = &p.retry_on;
    let mut t = table([
        ("policy", string(p.policy.as_str())),
        ("servers", Value::Array(servers)),
        ("connect_timeout", duration(p.connect_timeout)),
        ("response_timeout", duration(p.response_timeout)),
        ("idle_timeout", duration(p.idle_timeout)),
        ("max_idle_per_server", int(p.max_idle_per_server)),
        ("retries", int(p.retries)),
        (
            "retry_on",
            flags(&[
                (r.connect, "connect"),
                (r.reset, "reset"),
                (r.timeout, "timeout"),
                (r.status_502, "502"),
                (r.status_503, "503"),
                (r.status_504, "504"),
            ]),
        ),
        ("retry_backoff", duration(p.retry_backoff)),
        ("retry_budget", Value::Float(p.retry_budget)),
        ("min_retries_per_second", int(p.min_retries_per_second)),
        ("max_pending", int(p.max_pending)),
        ("panic_threshold", Value::Float(p.panic_threshold)),
        ("slow_start", duration(p.slow_start)),
        ("resolve_interval", duration(p.resolve_interval)),
        (
            "send_proxy_protocol",
            string(p.send_proxy_protocol.as_str()),
        ),
    ]);
    match p.policy {
        crate::config::Policy::Hash => {
            t.insert("hash_key".into(), string(p.hash_key.to_string()));
            t.insert("balance_factor".into(), Value::Float(p.balance_factor));
        }
        crate::config::Policy::StickyCookie => {
            let s = &p.sticky;
            t.insert(
                "sticky".into(),
                Value::Table(table([
                    ("cookie", string(&s.cookie)),
                    ("ttl", duration(s.ttl)),
                    ("secure", Value::Boolean(s.secure)),
                    ("http_only", Value::Boolean(s.http_only)),
                ])),
            );
        }
        _ => {}
    }
    if let Some(h) = &p.health {
        let ranges: Vec<String> = h
            .expect_status
            .iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        let kind = match h.kind {
            crate::config::HealthKind::Http => "http",
            crate::config::HealthKind::Tcp => "tcp",
        };
        t.insert(
            "health".into(),
            Value::Table(table([
                ("kind", string(kind)),
                ("path", string(&h.path)),
                ("expect_status", string(ranges.join(","))),
                ("interval", duration(h.interval)),
                ("timeout", duration(h.timeout)),
                ("rise", int(h.rise)),
                ("fall", int(h.fall)),
            ])),
        );
    }
    if let Some(tls) = &p.tls {
        let mut u = table([
            ("verify", Value::Boolean(tls.verify)),
            ("alpn", Value::Array(tls.alpn.iter().map(string).collect())),
        ]);
        if let Some(name) = &tls.server_name {
            u.insert("server_name".into(), string(name));
        }
        if let Some(ca) = &tls.ca {
            u.insert("ca".into(), string(ca.display().to_string()));
        }
        if let Some(pair) = &tls.client {
            u.insert("cert".into(), string(pair.cert.display().to_string()));
            u.insert("key".into(), string(pair.key.display().to_string()));
        }
        t.insert("tls".into(), Value::Table(u));
    }
    let o = &p.outlier;
    t.insert(
        "outlier".into(),
        Value::Table(table([
            ("consecutive_failures", int(o.consecutive_failures)),
            (
                "failures",
                flags(&[(o.count_connect, "connect"), (o.count_5xx, "5xx")]),
            ),
            ("eject_for", duration(o.eject_for)),
            ("max_eject_for", duration(o.max_eject_for)),
            ("max_ejected_percent", int(o.max_ejected_percent)),
        ])),
    );
    t
}

/// The running config with every default filled in, as TOML. Private key
/// paths and the admin token are replaced by `<redacted>`.
/// A route's rules, as its table's keys.
fn rules_into(t: &mut toml::Table, r: &super::rules::RouteRules) {
    use toml::Value;
    let networks = |list: &[super::observe::Cidr]| {
        Value::Array(list.iter().map(|n| string(n.to_string())).collect())
    };
    if !r.allow.is_empty() {
        t.insert("allow".into(), networks(&r.allow));
    }
    if !r.deny.is_empty() {
        t.insert("deny".into(), networks(&r.deny));
    }
    if let Some(redirect) = &r.redirect {
        t.insert(
            "redirect".into(),
            Value::Table(table([
                ("to", string(redirect.to.as_str())),
                ("status", int(redirect.status.as_u16())),
            ])),
        );
    }
    if let Some(n) = r.max_body_bytes {
        t.insert("max_body_bytes".into(), int(n));
    }
    if let Some(rewrite) = &r.rewrite {
        t.insert(
            "rewrite".into(),
            Value::Table(table([
                ("pattern", string(rewrite.pattern())),
                ("to", string(rewrite.to())),
            ])),
        );
    }
    if let Some(prefix) = &r.strip_prefix {
        t.insert("strip_prefix".into(), string(&**prefix));
    }
    if let Some(host) = r.upstream_host.as_ref().and_then(|h| h.to_str().ok()) {
        t.insert("upstream_host".into(), string(host));
    }
    for (key, edits) in [
        ("request_headers", &r.request_headers),
        ("response_headers", &r.response_headers),
    ] {
        if edits.is_empty() {
            continue;
        }
        let values = |list: &[(http::HeaderName, super::rules::Template)]| {
            Value::Table(
                list.iter()
                    .map(|(n, v)| (n.to_string(), string(v.as_str())))
                    .collect(),
            )
        };
        t.insert(
            key.into(),
            Value::Table(table([
                ("set", values(&edits.set)),
                ("add", values(&edits.add)),
                (
                    "remove",
                    Value::Array(edits.remove.iter().map(|h| string(h.as_str())).collect()),
                ),
            ])),
        );
    }
}

pub(crate) fn effective_toml(c: &Config) -> String {
    use toml::Value;
    let mut root = toml::Table::new();
    root.insert(
        "server".into(),
        Value::Table(table([
            ("workers", int(c.server.workers)),
            ("drain_timeout", duration(c.server.drain_timeout)),
        ])),
    );
    let listeners = c
        .listeners
        .iter()
        .map(|l| {
            let mut t = table([
                ("name", string(&l.name)),
                ("listen", string(l.listen.to_string())),
            ]);
            if let Some(tls) = &l.tls {
                let certs = tls
                    .certs
                    .iter()
                    .map(|p| {
                        Value::Table(table([
                            ("cert", string(p.cert.display().to_string())),
                            ("key", string(REDACTED)),
                        ]))
                    })
                    .collect();
                t.insert(
                    "tls".into(),
                    Value::Table(table([("certs", Value::Array(certs))])),
                );
            }
            if let Some(r) = &l.max_connection_rate {
                t.insert(
                    "max_connection_rate".into(),
                    Value::Table(table([
                        ("connections", int(r.count)),
                        ("per", duration(r.per)),
                        ("burst", int(r.burst)),
                    ])),
                );
            }
            t.insert(
                "path_normalization".into(),
                string(if l.normalize_paths { "on" } else { "off" }),
            );
            t.insert("proxy_protocol".into(), Value::Boolean(l.proxy_protocol));
            let nets = |list: &[crate::config::Cidr]| {
                Value::Array(list.iter().map(|c| string(c.to_string())).collect())
            };
            t.insert("trusted".into(), nets(&l.trusted));
            t.insert("trusted_forwarders".into(), nets(&l.trusted_forwarders));
            t.insert("limits".into(), Value::Table(limits_table(&l.limits)));
            Value::Table(t)
        })
        .collect();
    root.insert("listener".into(), Value::Array(listeners));
    let routes = c
        .routes
        .iter()
        .map(|r| {
            let mut t = table([("name", string(&r.name))]);
            if !r.hosts.is_empty() {
                t.insert(
                    "hosts".into(),
                    Value::Array(r.hosts.iter().map(string).collect()),
                );
            }
            t.insert("path_prefix".into(), string(&r.path_prefix));
            if let Some(pool) = &r.pool {
                t.insert("pool".into(), string(pool));
            }
            if let Some(rl) = &r.rate_limit {
                let key = match &rl.key {
                    crate::config::RateKey::ClientIp => "client_ip".to_string(),
                    crate::config::RateKey::Header(h) => format!("header:{h}"),
                };
                t.insert(
                    "rate_limit".into(),
                    Value::Table(table([
                        ("requests", int(rl.rate.count)),
                        ("per", duration(rl.rate.per)),
                        ("burst", int(rl.rate.burst)),
                        ("key", string(key)),
                    ])),
                );
            }
            if r.compress {
                t.insert("compress".into(), Value::Boolean(true));
            }
            if r.pool.is_some() {
                t.insert(
                    "strip_request_headers".into(),
                    Value::Array(
                        r.strip_request_headers
                            .iter()
                            .map(|h| string(h.as_str()))
                            .collect(),
                    ),
                );
            }
            if let Some(rules) = &r.rules {
                rules_into(&mut t, rules);
            }
            if let Some(spec) = &r.cache {
                t.insert("cache".into(), Value::Boolean(true));
                let strings = |v: Vec<String>| Value::Array(v.into_iter().map(string).collect());
                t.insert(
                    "cache_key_headers".into(),
                    strings(spec.headers.iter().map(|h| h.to_string()).collect()),
                );
                t.insert("cache_key_cookies".into(), strings(spec.cookies.clone()));
                let ignored = match &spec.ignore_params {
                    crate::config::IgnoreParams::None => Vec::new(),
                    crate::config::IgnoreParams::Named(n) => n.clone(),
                    crate::config::IgnoreParams::All => vec!["*".to_string()],
                };
                t.insert("cache_key_ignore_params".into(), strings(ignored));
            }
            Value::Table(t)
        })
        .collect();
    root.insert("route".into(), Value::Array(routes));
    let pools = c
        .pools
        .iter()
        .map(|p| (p.name.clone(), Value::Table(pool_table(p))))
        .collect();
    root.insert("pool".into(), Value::Table(pools));
    root.insert("limits".into(), Value::Table(limits_table(&c.limits)));
    if let Some(a) = &c.admin {
        let mut t = table([("listen", string(a.listen.to_string()))]);
        if a.token.is_some() {
            t.insert("token".into(), string(REDACTED));
        }
        t.insert(
            "allow".into(),
            Value::Array(a.allow.iter().map(|n| string(n.to_string())).collect()),
        );
        root.insert("admin".into(), Value::Table(t));
    }
    if let Some(al) = &c.access_log {
        let path = match &al.target {
            crate::config::AccessLogTarget::Stdout => "stdout".to_string(),
            crate::config::AccessLogTarget::File(p) => p.display().to_string(),
        };
        root.insert(
            "access_log".into(),
            Value::Table(table([
                ("format", string(al.format.as_str())),
                ("path", string(path)),
            ])),
        );
    }
    root.insert(
        "resolver".into(),
        Value::Table(table([(
            "nameservers",
            Value::Array(
                c.resolver
                    .nameservers
                    .iter()
                    .map(|a| string(a.to_string()))
                    .collect(),
            ),
        )])),
    );
    let cache = &c.cache;
    root.insert(
        "cache".into(),
        Value::Table(table([
            ("max_size", int(cache.max_size)),
            ("max_object_size", int(cache.max_object_size)),
            ("max_fill_memory", int(cache.max_fill_memory)),
            ("status_header", Value::Boolean(cache.status_header)),
            ("lock_timeout", duration(cache.lock_timeout)),
            ("serve_stale_on_error", duration(cache.serve_stale_on_error)),
            ("stale_if_unreachable", duration(cache.stale_if_unreachable)),
            (
                "targeted_fields",
                Value::Array(
                    cache
                        .targeted_fields
                        .iter()
                        .map(|h| string(h.as_str().to_string()))
                        .collect(),
                ),
            ),
            ("store_set_cookie", Value::Boolean(cache.store_set_cookie)),
            (
                "purge_allow",
                Value::Array(
                    cache
                        .purge_allow
                        .iter()
                        .map(|n| string(n.to_string()))
                        .collect(),
                ),
            ),
        ])),
    );
    if let (Some(l2), Some(Value::Table(t))) = (&cache.l2, root.get_mut("cache")) {
        t.insert("l2".into(), Value::Table(cache_l2(l2)));
    }
    let z = &c.compression;
    root.insert(
        "compression".into(),
        Value::Table(table([
            (
                "algorithms",
                Value::Array(z.algorithms.iter().map(|a| string(a.as_str())).collect()),
            ),
            ("min_size", int(z.min_size)),
            ("types", Value::Array(z.types.iter().map(string).collect())),
            ("level", string(z.level.as_str())),
        ])),
    );
    let log_format = match c.log.format {
        crate::config::LogFormat::Pretty => "pretty",
        crate::config::LogFormat::Json => "json",
    };
    root.insert(
        "log".into(),
        Value::Table(table([
            ("level", string(&c.log.level)),
            ("format", string(log_format)),
        ])),
    );
    toml::to_string(&root).unwrap_or_else(|e| format!("# cannot render the config: {e}\n"))
}

/// `[cache.l2]`: the kind's own keys and the shared ones.
fn cache_l2(l2: &crate::config::L2Config) -> toml::Table {
    let mut t = table([
        ("kind", string(l2.kind.name())),
        ("max_object_size", int(l2.max_object_size)),
        ("store_queue", int(l2.store_queue as u64)),
    ]);
    match &l2.kind {
        crate::config::L2Kind::Disk(d) => {
            t.insert("path".into(), string(d.path.display().to_string()));
            t.insert("max_size".into(), int(d.max_size));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::Offline;

    #[test]
    fn effective_config_reads_back_and_hides_secrets() {
        let text = r#"
[[listener]]
name = "http"
listen = "127.0.0.1:8080"

[[route]]
pool = "app"
rate_limit = { requests = 5 }

[pool.app]
servers = [ { addr = "127.0.0.1:9001" } ]
connect_timeout = "250ms"

[admin]
token = "s3cret"
allow = ["10.0.0.0/8"]
"#;
        let env = Offline;
        let c = Config::parse(std::path::Path::new("t.toml"), text, &env).unwrap();
        let out = effective_toml(&c);
        assert!(!out.contains("s3cret"), "{out}");
        assert!(out.contains(REDACTED), "{out}");
        assert!(out.contains("connect_timeout = \"250ms\""), "{out}");
        let again = Config::parse(std::path::Path::new("t.toml"), &out, &env)
            .unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(again.pools, c.pools);
        assert_eq!(again.listeners, c.listeners);
        assert_eq!(again.limits, c.limits);
    }
}
