//! The admin listener (`[admin]`): a small HTTP/1.1 API for operators and
//! their scripts, separate from the proxy listeners and never counted in
//! the request metrics.
//!
//! | endpoint | method | answer |
//! |---|---|---|
//! | `/metrics` | GET | Prometheus text format |
//! | `/healthz` | GET | 200 while the process runs |
//! | `/readyz` | GET | 200 once every listener is bound, 503 while draining |
//! | `/upstreams` | GET | pools and member states as JSON |
//! | `/config` | GET | the effective config as TOML, secrets redacted |
//! | `/reload` | POST | reloads the config file, as SIGHUP does |
//! | `/cache/purge?url=U` | POST | removes every cached response of URL `U` |
//! | `/cache/purge?prefix=P` | POST | ... of every URL starting with `P` |
//! | `/cache/purge?tag=T` | POST | ... tagged `T` (`Surrogate-Key` / `Cache-Tag`) |
//! | `/cache/purge?all=true` | POST | ... everything |
//!
//! A purge answers `{"purged": N}`, the number of responses removed.
//!
//! Clients outside `allow` get 403; with a `token`, requests without
//! `Authorization: Bearer <token>` get 401 (except `/healthz` and
//! `/readyz`, which probes use and which reveal nothing); unknown paths get
//! 404 and a wrong method 405.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::config::{AdminConfig, Config, Limits, PoolConfig};
use crate::proxy::State;

/// Readiness as `/readyz` reports it, flipped by the lifecycle.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// Every listener is bound and serving.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// A stop signal arrived: no longer ready.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }
}

/// What the admin endpoints need from the running daemon.
pub struct Admin {
    pub state: State,
    pub health: Arc<Health>,
    /// The config file, for `POST /reload`.
    pub config_path: PathBuf,
}

type AdminBody = Full<Bytes>;

/// Serves the admin API on `socket` for as long as the process runs: it
/// keeps answering during a drain (so `/readyz` can say 503), and its
/// connections are not waited for.
pub async fn serve(socket: TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, client) = match socket.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(listener = %"admin", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, client, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(client = %client, error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn typed(body: String, content_type: &'static str) -> Response<AdminBody> {
    let mut resp = text(StatusCode::OK, body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Compares without stopping at the first differing byte.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(config: &AdminConfig, req: &Request<Incoming>) -> bool {
    let Some(token) = &config.token else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()))
}

/// The endpoints and the one method each accepts.
const ENDPOINTS: [(&str, Method); 7] = [
    ("/metrics", Method::GET),
    ("/healthz", Method::GET),
    ("/readyz", Method::GET),
    ("/upstreams", Method::GET),
    ("/config", Method::GET),
    ("/reload", Method::POST),
    ("/cache/purge", Method::POST),
];

async fn handle(admin: &Admin, client: SocketAddr, req: Request<Incoming>) -> Response<AdminBody> {
    let snap = admin.state.load_full();
    let Some(config) = snap.config.admin.as_ref() else {
        return text(StatusCode::NOT_FOUND, "admin API disabled\n");
    };
    if !config.allow.is_empty() && !config.allow.iter().any(|c| c.contains(client.ip())) {
        return text(StatusCode::FORBIDDEN, "forbidden\n");
    }
    let path = req.uri().path();
    let open = matches!(path, "/healthz" | "/readyz");
    if !open && !authorized(config, &req) {
        let mut resp = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sluice admin\""),
        );
        return resp;
    }
    let Some((_, allowed)) = ENDPOINTS.iter().find(|(p, _)| *p == path) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let method = req.method();
    let head_ok = *allowed == Method::GET && method == Method::HEAD;
    if method != allowed && !head_ok {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        let allow = if *allowed == Method::GET {
            "GET, HEAD"
        } else {
            allowed.as_str()
        };
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        return resp;
    }
    match path {
        "/metrics" => {
            snap.cache.refresh_gauges();
            typed(
                crate::metrics::get().render(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        "/cache/purge" => {
            let target = purge_target(req.uri().query().unwrap_or(""));
            let _ = req.into_body().collect().await;
            match target {
                Ok(target) => {
                    let purged = crate::cache::purge::purge(snap.cache.store.as_ref(), &target);
                    tracing::info!(?target, purged, "cache purge");
                    typed(format!("{{\"purged\":{purged}}}\n"), "application/json")
                }
                Err(why) => text(StatusCode::BAD_REQUEST, why + "\n"),
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if admin.health.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/upstreams" => typed(upstreams_json(&snap.pools), "application/json"),
        "/config" => typed(effective_toml(&snap.config), "application/toml"),
        "/reload" => {
            // Drain the (ignored) body so the connection stays usable.
            let _ = req.into_body().collect().await;
            let state = admin.state.clone();
            let path = admin.config_path.clone();
            let result =
                tokio::task::spawn_blocking(move || crate::lifecycle::reload(&path, &state)).await;
            match result {
                Ok(Ok(())) => text(StatusCode::OK, "config reloaded\n"),
                Ok(Err(errors)) => text(StatusCode::UNPROCESSABLE_ENTITY, errors + "\n"),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reload failed: {e}\n"),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The purge a `/cache/purge` query names: exactly one of `url`, `prefix`,
/// `tag` or `all=true`, percent-encoded.
fn purge_target(query: &str) -> Result<crate::cache::purge::Target, String> {
    use crate::cache::purge::{canonical_url, Target};
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| format!("{name}: bad percent-encoding"))?;
        let target = match name {
            "url" => Target::Url(canonical_url(&value)?),
            "prefix" if value.is_empty() => return Err("prefix: must not be empty".into()),
            "prefix" => Target::Prefix(value),
            "tag" if value.is_empty() => return Err("tag: must not be empty".into()),
            "tag" => Target::Tag(value),
            "all" if value == "true" || value == "1" => Target::All,
            "all" => return Err("all: use all=true".into()),
            other => {
                return Err(format!(
                    "unknown parameter \"{other}\"; use url, prefix, tag or all"
                ))
            }
        };
        if found.replace(target).is_some() {
            return Err("give exactly one of url, prefix, tag or all".into());
        }
    }
    found.ok_or_else(|| "give one of url=, prefix=, tag= or all=true".into())
}

/// `%XX` escapes decoded; `None` for a broken escape or non-UTF-8 result.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `GET /upstreams`: the contract's JSON, pretty-printed.
fn upstreams_json(pools: &[Arc<crate::upstream::pool::Pool>]) -> String {
    let value = crate::upstream::status::upstreams_json(pools);
    let mut out = serde_json::to_string_pretty(&value).unwrap_or_default();
    out.push('\n');
    out
}

// ----------------------------------------------------------------- /config --

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
    ]);
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
pub fn effective_toml(c: &Config) -> String {
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
            t.insert("pool".into(), string(&r.pool));
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
            ("status_header", Value::Boolean(cache.status_header)),
            ("lock_timeout", duration(cache.lock_timeout)),
            ("serve_stale_on_error", duration(cache.serve_stale_on_error)),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let env = crate::environment::System;
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

    #[test]
    fn secrets_compare() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
    }
}
