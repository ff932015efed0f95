//! Per-route rules end to end: a redirect route answers without a pool,
//! `allow` / `deny` refuse by client address, a route's `max_body_bytes`
//! replaces the listener's, `request_headers` and `upstream_host` shape
//! what the origin sees (over HTTP/1.1 and h2c), `response_headers` apply
//! to every answer on the route, and `rewrite` then `strip_prefix` change
//! the path the origin, the cache key and the access log see. `--check`
//! reports each rule's mistakes with file, line and column.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::BodyExt;

/// A listener and a pool `app` on `origin`, then `routes` (TOML).
fn config(origin: SocketAddr, routes: &str) -> String {
    format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

{routes}

[pool.app]
servers = [ {{ addr = "{origin}" }} ]
"#
    )
}

/// All values of `name`, in order.
fn values<'h>(headers: &'h http::HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_route_answers_without_a_pool() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&config(
        origin.addr,
        r#"
[[route]]
name = "to-https"
hosts = ["example.com"]
redirect = { to = "https://example.com$request_uri" }

[[route]]
name = "moved"
hosts = ["old.example"]
redirect = { to = "$scheme://new.example/from/$host$request_uri", status = 301 }

[[route]]
name = "main"
pool = "app"
"#,
    ));
    let addr = d.addr("http");
    let r = h1(
        addr,
        request(Method::GET, "/a/b?c=d", "example.com", empty()),
    )
    .await;
    assert_eq!(r.status, 308, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some("https://example.com/a/b?c=d"),
        "{:?}",
        r.headers
    );
    assert!(r.body.is_empty());
    // The normalised path is what $request_uri holds.
    let r = h1(
        addr,
        request(Method::POST, "/x/../y", "old.example", full("body")),
    )
    .await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("http://new.example/from/old.example/y")
    );
    assert_eq!(origin.hits(), 0, "a redirect route never reaches a pool");
    // Other hosts still go to the pool.
    let r = h1(addr, request(Method::GET, "/a", "other.example", empty())).await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_refuse_by_client_address() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&config(
        origin.addr,
        r#"
[[route]]
name = "admin"
path_prefix = "/admin/"
pool = "app"
allow = ["10.0.0.0/8"]

[[route]]
name = "local"
path_prefix = "/local/"
pool = "app"
allow = ["127.0.0.0/8", "::1"]

[[route]]
name = "blocked"
path_prefix = "/blocked/"
pool = "app"
allow = ["127.0.0.0/8"]
deny = ["127.0.0.1"]

[[route]]
name = "main"
pool = "app"
deny = ["192.0.2.0/24"]
"#,
    ));
    let addr = d.addr("http");
    let r = get(addr, "/admin/panel").await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = get(addr, "/blocked/x").await;
    assert_eq!(r.status, 403, "deny wins over allow: {}", r.text());
    assert_eq!(origin.hits(), 0, "refused requests never reach the pool");
    assert_eq!(get(addr, "/local/x").await.status, 200);
    assert_eq!(get(addr, "/other").await.status, 200);
    assert_eq!(origin.hits(), 2);
}

/// A body sent in chunks, its length unknown up front.
fn streamed(chunks: &[&'static [u8]]) -> TestBody {
    let (tx, rx) = tokio::sync::mpsc::channel(chunks.len().max(1));
    for c in chunks {
        tx.try_send(Bytes::from_static(c))
            .expect("room for every chunk");
    }
    ChanBody(rx).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_max_body_bytes_replaces_the_listeners() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&format!(
        "{}\n[limits]\nmax_body_bytes = 1000\n",
        config(
            origin.addr,
            r#"
[[route]]
name = "uploads"
path_prefix = "/upload/"
pool = "app"
max_body_bytes = "64KiB"

[[route]]
name = "tiny"
path_prefix = "/tiny/"
pool = "app"
max_body_bytes = 10

[[route]]
name = "main"
pool = "app"
"#,
        )
    ));
    let addr = d.addr("http");
    let big = vec![b'x'; 50_000];
    let post = |path: &str, body: TestBody| request(Method::POST, path, "localhost", body);
    let r = h1(addr, post("/upload/a", full(big.clone()))).await;
    assert_eq!(
        r.status, 200,
        "over the listener's limit, under the route's"
    );
    let r = h1(addr, post("/other", full(big.clone()))).await;
    assert_eq!(r.status, 413, "other routes keep the listener's limit");
    let r = h1(addr, post("/tiny/a", full(vec![b'y'; 100]))).await;
    assert_eq!(r.status, 413, "Content-Length over the route's limit");
    // Without a length up front, the limit holds while the body streams.
    let r = h1(
        addr,
        post("/tiny/a", streamed(&[b"0123456789", b"0123456789"])),
    )
    .await;
    assert_eq!(r.status, 413, "chunked body over the route's limit");
    assert_eq!(h1(addr, post("/tiny/a", full("short"))).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_and_upstream_host_shape_what_the_origin_sees() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&config(
        origin.addr,
        r#"
[[route]]
name = "api"
pool = "app"
upstream_host = "api.internal"
request_headers = { set = { "X-Env" = "prod", "X-Seen" = "$client $scheme $host $request_uri", "X-Id" = "id-${request_id}" }, add = { "X-Multi" = "b" }, remove = ["X-Debug"] }
"#,
    ));
    let addr = d.addr("http");
    let sent = [
        ("x-debug", "1"),
        ("x-env", "dev"),
        ("x-multi", "a"),
        ("x-request-id", "req-1"),
    ];
    let r = h1(
        addr,
        request_with_headers(Method::GET, "/v1/x?q=1", "Front.Example:8080", &sent),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut h2 = h2c_conn(addr).await;
    let mut req = h2_request(Method::GET, "http://front.example/v2/y", empty());
    for (k, v) in sent {
        req.headers_mut().append(k, v.parse().unwrap());
    }
    let r = h2_send(&mut h2, req).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for (s, uri) in seen.iter().zip(["/v1/x?q=1", "/v2/y"]) {
        let h = &s.headers;
        assert_eq!(values(h, "host"), ["api.internal"], "{h:?}");
        assert_eq!(values(h, "x-env"), ["prod"], "set replaces: {h:?}");
        assert!(!h.contains_key("x-debug"), "{h:?}");
        assert_eq!(values(h, "x-multi"), ["a", "b"], "add appends: {h:?}");
        assert_eq!(
            values(h, "x-seen"),
            [format!("127.0.0.1 http front.example {uri}").as_str()]
        );
        assert_eq!(values(h, "x-id"), ["id-req-1"]);
        // The client's host is still what forwarding fields name.
        let forwarded_host = values(h, "x-forwarded-host").join(",");
        assert!(
            forwarded_host
                .to_ascii_lowercase()
                .starts_with("front.example"),
            "{h:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_apply_to_upstream_cache_and_sluices_own_answers() {
    let origin = Origin::serve(|_req, _addr| async move {
        Response::builder()
            .header("server", "origin/1.0")
            .header("cache-control", "max-age=60")
            .header("x-kept", "1")
            .body(full("cached body"))
            .unwrap()
    })
    .await;
    let dead = dead_addr();
    let d = Daemon::start(&format!(
        "{}\n[pool.gone]\nservers = [ {{ addr = \"{dead}\" }} ]\nretries = 0\n",
        config(
            origin.addr,
            r#"
[[route]]
name = "down"
path_prefix = "/down/"
pool = "gone"
response_headers = { set = { "Strict-Transport-Security" = "max-age=31536000" } }

[[route]]
name = "main"
pool = "app"
cache = true
response_headers = { set = { "Strict-Transport-Security" = "max-age=31536000" }, add = { "X-Kept" = "2", "X-Req" = "$request_id" }, remove = ["Server"] }
"#,
        )
    ));
    let addr = d.addr("http");
    for round in 0..2 {
        let r = get(addr, "/page").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(is_hit(&r), round == 1, "second is a hit: {:?}", r.headers);
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000")
        );
        assert!(!r.headers.contains_key("server"), "{:?}", r.headers);
        assert_eq!(values(&r.headers, "x-kept"), ["1", "2"]);
        assert_eq!(r.header("x-req"), r.header("x-request-id"));
        assert!(r.header("x-req").is_some());
    }
    assert_eq!(origin.hits(), 1);
    // sluice's own error on the route gets them too.
    let r = get(addr, "/down/x").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_and_strip_prefix_change_the_upstream_path_cache_key_and_log() {
    let origin = Origin::serve(|req, _addr| async move {
        Response::builder()
            .header("cache-control", "max-age=60")
            .body(full(format!("at {}", req.uri())))
            .unwrap()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let d = Daemon::start(&format!(
        "{}\n[access_log]\nformat = \"json\"\npath = \"{}\"\n",
        config(
            origin.addr,
            r#"
[[route]]
name = "api"
path_prefix = "/api/"
pool = "app"
cache = true
rewrite = { pattern = "^/api/old/(.*)$", to = "/api/new/$1" }
strip_prefix = "/api"

[[route]]
name = "search"
path_prefix = "/search/"
pool = "app"
rewrite = { pattern = "^/search/(?P<term>[a-z]+)$", to = "/find?q=${term}" }

[[route]]
name = "main"
pool = "app"
"#,
        ),
        log.display()
    ));
    let addr = d.addr("http");
    let r = get(addr, "/api/old/x?q=1").await;
    assert_eq!(r.text(), "at /new/x?q=1");
    // The same upstream path is the same cache key.
    let r = get(addr, "/api/new/x?q=1").await;
    assert!(is_hit(&r), "{:?}", r.headers);
    assert_eq!(r.text(), "at /new/x?q=1");
    let r = get(addr, "/api/v1/users").await;
    assert_eq!(r.text(), "at /v1/users");
    let r = get(addr, "/search/cats?page=2").await;
    assert_eq!(
        r.text(),
        "at /find?q=cats",
        "a query in `to` replaces the client's"
    );
    let r = get(addr, "/plain?x").await;
    assert_eq!(r.text(), "at /plain?x");
    let seen: Vec<String> = origin.seen().iter().map(|s| s.uri.to_string()).collect();
    assert_eq!(
        seen,
        ["/new/x?q=1", "/v1/users", "/find?q=cats", "/plain?x"]
    );

    let lines = access_lines(&log, 5);
    // Workers write their own buffers: lines come in any order.
    let mut fields: Vec<(String, Option<String>)> = lines
        .iter()
        .map(|v| {
            (
                v["path"].as_str().unwrap_or_default().to_string(),
                v.get("upstream_path")
                    .and_then(|p| p.as_str())
                    .map(str::to_string),
            )
        })
        .collect();
    let want = [
        ("/api/old/x?q=1", Some("/new/x?q=1")),
        ("/api/new/x?q=1", Some("/new/x?q=1")),
        ("/api/v1/users", Some("/v1/users")),
        ("/search/cats?page=2", Some("/find?q=cats")),
        ("/plain?x", None),
    ];
    let mut want: Vec<(String, Option<String>)> = want
        .iter()
        .map(|(p, u)| (p.to_string(), u.map(str::to_string)))
        .collect();
    fields.sort();
    want.sort();
    assert_eq!(fields, want);
}

/// The first `n` JSON access-log lines.
fn access_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    file_lines(path, n)
        .iter()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

// ------------------------------------------------------------ --check --

/// `--check` on `text`: the exit code and stderr.
fn check(text: &str) -> (std::path::PathBuf, i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, text).unwrap();
    let (code, _out, err) = run_cli(&["--check", "--config", path.to_str().unwrap()], dir.path());
    (path, code, err)
}

/// 1-based line and column of the first `needle` in `text`.
fn pos(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle:?}"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = at - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[test]
fn check_reports_each_rule_mistake_with_file_line_and_column() {
    let text = r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "api"
path_prefix = "/api/"
pool = "app"
rewrite = { pattern = "^/old/(.*$", to = "/new/$1" }
allow = ["10.0.0.0/8", "10.0.0.300"]
request_headers = { set = { "X Env" = "prod", "X-Id" = "$requestid" } }
response_headers = { set = { "X-Bad" = "caf\u00e9" }, remove = ["Content-Length"] }

[[route]]
name = "https"
hosts = ["example.com"]
pool = "app"
redirect = { to = "https://example.com$request_uri", status = 200 }

[[route]]
name = "groups"
path_prefix = "/g/"
pool = "app"
rewrite = { pattern = "^/g/(.*)$", to = "/h/$1a" }

[pool.app]
servers = [ { addr = "127.0.0.1:9001" } ]
"#;
    let (path, code, err) = check(text);
    assert_eq!(code, 1, "{err}");
    let expect = [
        (
            "rewrite = { pattern",
            "route[0].rewrite.pattern",
            "not a valid regular expression",
        ),
        ("\"10.0.0.300\"", "route[0].allow[1]", "is not a network"),
        (
            "\"X Env\"",
            "route[0].request_headers.set.X Env",
            "not a valid header name",
        ),
        (
            "\"X-Id\"",
            "route[0].request_headers.set.X-Id",
            "unknown variable \"$requestid\"",
        ),
        (
            "\"X-Bad\"",
            "route[0].response_headers.set.X-Bad",
            "cannot be in a header value",
        ),
        (
            "\"Content-Length\"",
            "route[0].response_headers.remove[0]",
            "content-length is sluice's to manage",
        ),
        ("pool = \"app\"\nredirect", "route[1].pool", "remove `pool`"),
        (
            "redirect = {",
            "route[1].redirect.status",
            "200 is not a redirect status",
        ),
        (
            "rewrite = { pattern = \"^/g/",
            "route[2].rewrite.to",
            "write ${1}a",
        ),
    ];
    for (needle, key, message) in expect {
        let (line, _) = pos(text, needle);
        let prefix = format!("{}:{line}:", path.display());
        assert!(
            err.lines().any(|l| l.starts_with(&prefix)
                && l.contains(&format!(": {key}: "))
                && l.contains(message)),
            "no line {prefix}..: {key}: ..{message}.. in:\n{err}"
        );
    }
    assert!(
        err.contains(&format!("config invalid: {} error(s)", expect.len())),
        "{err}"
    );
    // A redirect route needs no pool; any other route does.
    let text = r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
hosts = ["example.com"]
redirect = { to = "https://example.com$request_uri" }

[[route]]
path_prefix = "/x/"
"#;
    let (path, code, err) = check(text);
    assert_eq!(code, 1, "{err}");
    let (line, col) = pos(text, "[[route]]\npath_prefix");
    assert!(
        err.contains(&format!(
            "{}:{line}:{col}: route[1]: `pool` is required",
            path.display()
        )),
        "{err}"
    );
    assert!(err.contains("config invalid: 1 error(s)"), "{err}");
}
