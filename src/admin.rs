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
//! A purge answers `{"purged": N}`, the number of responses removed. With
//! `&soft=true` the responses are marked stale instead of removed
//! (`{"purged": N, "soft": true}`): they keep serving where stale content
//! is allowed while the next request revalidates them. With
//! `[cache.purge] fanout`, the purge is also published to the other
//! instances and the answer says whether that worked
//! (`"published": true`); `N` counts this instance's responses only.
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

use crate::config::AdminConfig;
use crate::snapshot::State;

/// Readiness as `/readyz` reports it, flipped by the lifecycle.
#[derive(Debug, Default)]
pub(crate) struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// Every listener is bound and serving.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// A stop signal arrived: no longer ready.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }
}

/// What the admin endpoints need from the running daemon.
pub(crate) struct Admin {
    pub state: State,
    pub health: Arc<Health>,
    /// The config file, for `POST /reload`.
    pub config_path: PathBuf,
}

type AdminBody = Full<Bytes>;

/// Serves the admin API on `socket` for as long as the process runs: it
/// keeps answering during a drain (so `/readyz` can say 503), and its
/// connections are not waited for.
pub(crate) async fn serve(socket: TcpListener, admin: Arc<Admin>) {
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
                Ok((target, soft)) => {
                    let mut answer = snap.cache.purge(&target, soft).await;
                    crate::cache::fanout::announce(&mut answer, &target, soft).await;
                    typed(answer + "\n", "application/json")
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
        "/config" => typed(
            crate::config::effective_toml(&snap.config),
            "application/toml",
        ),
        "/reload" => {
            // Drain the (ignored) body so the connection stays usable.
            let _ = req.into_body().collect().await;
            let state = admin.state.clone();
            let path = admin.config_path.clone();
            let result =
                tokio::task::spawn_blocking(move || crate::reload::reload(&path, &state)).await;
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
/// `tag` or `all=true`, percent-encoded, and whether it is soft
/// (`soft=true`).
fn purge_target(query: &str) -> Result<(crate::cache::purge::Target, bool), String> {
    use crate::cache::purge::{canonical_url, Target};
    let mut found = None;
    let mut soft = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| format!("{name}: bad percent-encoding"))?;
        let target = match name {
            "soft" if value == "true" || value == "1" => {
                soft = true;
                continue;
            }
            "soft" if value == "false" || value == "0" => continue,
            "soft" => return Err("soft: use soft=true".into()),
            "url" => Target::Url(canonical_url(&value)?),
            "prefix" if value.is_empty() => return Err("prefix: must not be empty".into()),
            "prefix" => Target::Prefix(value),
            "tag" if value.is_empty() => return Err("tag: must not be empty".into()),
            "tag" => Target::Tag(value),
            "all" if value == "true" || value == "1" => Target::All,
            "all" => return Err("all: use all=true".into()),
            other => {
                return Err(format!(
                    "unknown parameter \"{other}\"; use url, prefix, tag or all (and soft)"
                ))
            }
        };
        if found.replace(target).is_some() {
            return Err("give exactly one of url, prefix, tag or all".into());
        }
    }
    found
        .map(|t| (t, soft))
        .ok_or_else(|| "give one of url=, prefix=, tag= or all=true".into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
    }
}
