//! gRPC through sluice, with a real tonic server and client: calls of
//! every kind with their trailers intact, sluice's own errors in the shape
//! a gRPC client reads (`grpc-status` 14 for a dead pool, 4 when the
//! call's `grpc-timeout` passes, 8 when rate limited), and `kind = "grpc"`
//! health checks following the standard health service.

mod common;
#[path = "common/grpc.rs"]
mod grpc_fixture;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use grpc_fixture::*;
use http::Method;
use tonic::Code;

/// An h2c-capable listener `http`, route `main` to pool `app` with
/// `servers`, `pool_extra` in `[pool.app]`, `route_extra` in the route,
/// and an admin listener.
fn config(servers: &[SocketAddr], pool_extra: &str, route_extra: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "main"
pool = "app"
{route_extra}

[pool.app]
servers = [ {} ]
{pool_extra}

[admin]
listen = "127.0.0.1:0"
"#,
        list.join(", ")
    )
}

/// A unary call's request as raw HTTP/2, for what a tonic client hides:
/// the HTTP status and whether `grpc-status` came in the head.
fn raw_call(addr: SocketAddr, extra: &[(&str, &str)]) -> http::Request<TestBody> {
    let mut req = h2_request(
        Method::POST,
        &format!("http://{addr}{UNARY}"),
        // One empty message: no compression, length 0.
        full(vec![0u8, 0, 0, 0, 0]),
    );
    let h = req.headers_mut();
    h.insert("content-type", "application/grpc".parse().unwrap());
    h.insert("te", "trailers".parse().unwrap());
    for (k, v) in extra {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    req
}

/// Asserts that `r` is a trailers-only gRPC answer with `code`.
fn assert_trailers_only(r: &Reply, code: Code) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/grpc"), "{r:?}");
    assert_eq!(
        r.header("grpc-status"),
        Some((code as i32).to_string().as_str()),
        "{r:?}"
    );
    assert!(r.header("grpc-message").is_some(), "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_grpc_pool_answers_unavailable() {
    let d = Daemon::start(&config(&[dead_addr()], "", ""));
    let addr = d.addr("http");

    let mut client = GrpcClient::connect(addr).await;
    let status = client
        .unary(UNARY, Note::text("anyone?"))
        .await
        .expect_err("no upstream");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "upstream failed", "{status:?}");

    let mut h2 = h2c_conn(addr).await;
    let r = h2_send(&mut h2, raw_call(addr, &[])).await;
    assert_trailers_only(&r, Code::Unavailable);

    // A request that is not gRPC still gets plain HTTP.
    let r = h2_send(
        &mut h2,
        h2_request(Method::GET, &format!("http://{addr}/"), empty()),
    )
    .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.header("grpc-status").is_none(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_timeout_shorter_than_the_pools_gives_deadline_exceeded() {
    // The member takes the call and never answers; the pool would wait
    // a minute, the call's own deadline is 300 ms.
    let origin = silent().await;
    let d = Daemon::start(&config(&[origin.addr], "response_timeout = \"60s\"", ""));
    let addr = d.addr("http");
    let mut h2 = h2c_conn(addr).await;
    let r = h2_send(&mut h2, raw_call(addr, &[("grpc-timeout", "300m")])).await;
    assert_trailers_only(&r, Code::DeadlineExceeded);
    assert_eq!(r.header("grpc-message"), Some("upstream timed out"));

    // A malformed grpc-timeout is ignored: only the pool's timeout counts.
    let origin = silent().await;
    let d = Daemon::start(&config(&[origin.addr], "response_timeout = \"300ms\"", ""));
    let addr = d.addr("http");
    let mut h2 = h2c_conn(addr).await;
    let r = h2_send(&mut h2, raw_call(addr, &[("grpc-timeout", "1 second")])).await;
    assert_trailers_only(&r, Code::DeadlineExceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_call_is_resource_exhausted() {
    let d = Daemon::start(&config(
        &[dead_addr()],
        "",
        "rate_limit = { requests = 1, per = \"1h\", burst = 1 }",
    ));
    let addr = d.addr("http");
    let mut h2 = h2c_conn(addr).await;
    // The first call uses the one token (and fails upstream).
    let first = h2_send(&mut h2, raw_call(addr, &[])).await;
    assert_trailers_only(&first, Code::Unavailable);
    let limited = h2_send(&mut h2, raw_call(addr, &[])).await;
    assert_trailers_only(&limited, Code::ResourceExhausted);
    assert_eq!(limited.header("grpc-message"), Some("too many requests"));
}

/// Polls `GET /upstreams` until member `addr` of pool `app` is in `state`
/// after at least one check, returning the member's object.
async fn until_state(admin: SocketAddr, addr: SocketAddr, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let m = member(&upstreams(admin).await, addr);
        if m["state"] == state && !m["last_check"].is_null() {
            return m;
        }
        assert!(Instant::now() < deadline, "never {state}: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_follow_the_serving_status() {
    let server = GrpcServer::start().await;
    let health = r#"
[pool.app.health]
kind = "grpc"
service = "test.Echo"
interval = "50ms"
timeout = "2s"
rise = 1
fall = 1
"#;
    let d = Daemon::start(&config(&[server.addr], health, ""));
    let admin = d.addr("admin");
    let up = until_state(admin, server.addr, "up").await;
    assert_eq!(up["last_check"]["ok"], true, "{up}");

    server.set_serving("test.Echo", false).await;
    let down = until_state(admin, server.addr, "down").await;
    let error = down["last_check"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("NOT_SERVING"), "{down}");

    server.set_serving("test.Echo", true).await;
    until_state(admin, server.addr, "up").await;

    // A service the server does not know is an error (NOT_FOUND): down.
    drop(d);
    let d = Daemon::start(&config(
        &[server.addr],
        &health.replace("test.Echo", "no.Such"),
        "",
    ));
    let down = until_state(d.addr("admin"), server.addr, "down").await;
    let error = down["last_check"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("grpc-status 5"), "{down}");
}
