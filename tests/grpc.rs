//! gRPC through sluice, with a real tonic server and client: calls of
//! every kind (unary, client, server and bidirectional streaming) with
//! their trailers intact, over h2c and over the pool's TLS; sluice's own
//! errors in the shape a gRPC client reads (`grpc-status` 14 for a dead
//! pool, 4 when a deadline passes, 8 when rate limited); and
//! `kind = "grpc"` health checks following the standard health service.

mod common;
#[path = "common/grpc.rs"]
mod grpc_fixture;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use grpc_fixture::*;
use http::Method;
use tonic::Code;

/// A listener `http` (HTTP/1.1 and h2c), route `main` with `route_extra`
/// to pool `app` with the one server `server` and `pool_extra` keys, and
/// an admin listener.
fn config(server: SocketAddr, pool_extra: &str, route_extra: &str) -> String {
    admin_route_config(server, route_extra, pool_extra)
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

/// A pool that speaks HTTP/2 with prior knowledge, as gRPC servers do.
const H2C: &str = "protocol = \"h2c\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_every_kind_pass_through_with_their_trailers() {
    let server = GrpcServer::start().await;
    let d = Daemon::start(&config(server.addr, H2C, ""));
    let mut client = GrpcClient::connect(d.addr("http")).await;

    let answer = client
        .unary(UNARY, Note::text("hello"))
        .await
        .expect("unary");
    assert_eq!(answer.text, "echo: hello");

    // A failing call's status, message and other trailers all arrive.
    let status = client
        .unary(FAIL, Note::text("nope"))
        .await
        .expect_err("Fail fails");
    assert_eq!(status.code(), FAIL_CODE, "{status:?}");
    assert_eq!(status.message(), "refused: nope", "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get(FAIL_TRAILER)
            .and_then(|v| v.to_str().ok()),
        Some("kept"),
        "{status:?}"
    );

    let joined = client
        .collect(&["a", "b", "c"])
        .await
        .expect("client streaming");
    assert_eq!(joined, "a+b+c");

    let texts = client.stream("tick", 5).await.expect("server streaming");
    assert_eq!(texts, ["tick 0", "tick 1", "tick 2", "tick 3", "tick 4"]);

    // Each answer comes back before the next message is sent: the call
    // streams both ways at once through sluice.
    let mut chat = client.chat().await.expect("chat opens");
    for text in ["one", "two", "three"] {
        assert_eq!(
            chat.say(text).await.expect("answer"),
            format!("echo: {text}")
        );
    }
    chat.finish().await.expect("the call ends OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_may_rest_between_messages_longer_than_the_upload_grace() {
    let server = GrpcServer::start().await;
    let limits = "\n[limits]\nmin_body_rate = \"1KiB\"\nbody_rate_grace = \"100ms\"\n";
    let d = Daemon::start(&(config(server.addr, H2C, "") + limits));
    let mut client = GrpcClient::connect(d.addr("http")).await;
    let mut chat = client.chat().await.expect("chat opens");
    assert_eq!(chat.say("first").await.expect("answer"), "echo: first");
    // The client thinks for far longer than body_rate_grace, having sent
    // only a few bytes: an upload that slow would get 408.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(chat.say("second").await.expect("answer"), "echo: second");
    chat.finish().await.expect("the call ends OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_answers_are_never_compressed_or_cached() {
    let server = GrpcServer::start().await;
    let tables = "\n[compression]\ntypes = [\"application/*\"]\nmin_size = \"0B\"\n";
    let d = Daemon::start(&(config(server.addr, H2C, "compress = true\ncache = true") + tables));
    let addr = d.addr("http");
    let mut h2 = h2c_conn(addr).await;
    for _ in 0..2 {
        let req = raw_call(addr, &[("accept-encoding", "gzip")]);
        let resp = tokio::time::timeout(PATIENCE, h2.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        let (head, body) = resp.into_parts();
        assert_eq!(head.status, 200, "{head:?}");
        assert!(head.headers.get("content-encoding").is_none(), "{head:?}");
        assert!(head.headers.get("cache-status").is_none(), "{head:?}");
        let body = http_body_util::BodyExt::collect(body).await.expect("body");
        let trailers = body.trailers().cloned().unwrap_or_default();
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
        // "echo: " and an empty text: one framed message, uncompressed.
        let bytes = body.to_bytes();
        assert_eq!(&bytes[..5], [0, 0, 0, 0, 8], "{bytes:?}");
        assert_eq!(&bytes[5..], b"\x0a\x06echo: ", "{bytes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_grpc_pool_answers_unavailable() {
    let d = Daemon::start(&config(dead_addr(), H2C, ""));
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
async fn the_shorter_of_grpc_timeout_and_response_timeout_ends_the_call_deadline_exceeded() {
    // The member takes the call and never answers; the pool would wait
    // a minute, the call's own deadline is 300 ms.
    let origin = silent().await;
    let d = Daemon::start(&config(origin.addr, "response_timeout = \"60s\"", ""));
    let addr = d.addr("http");
    let mut h2 = h2c_conn(addr).await;
    // More calls than the outlier detector's consecutive_failures (5):
    // the client's deadline is not the member's failure.
    for _ in 0..6 {
        let r = h2_send(&mut h2, raw_call(addr, &[("grpc-timeout", "300m")])).await;
        assert_trailers_only(&r, Code::DeadlineExceeded);
        assert_eq!(r.header("grpc-message"), Some("upstream timed out"));
    }
    let m = member(&upstreams(d.addr("admin")).await, origin.addr);
    assert_eq!(m["state"], "up", "{m}");
    assert_eq!(m["consecutive_failures"], 0, "{m}");

    // Through an h2c pool to a real gRPC server: a call whose deadline is
    // longer than the pool's response_timeout ends at the pool's timeout,
    // also as DEADLINE_EXCEEDED. (A deadline shorter than the pool's is
    // not tried against tonic here: its client and server keep deadlines
    // too, and would race sluice to answer.)
    let server = GrpcServer::start().await;
    let pool = format!("{H2C}\nresponse_timeout = \"300ms\"");
    let d = Daemon::start(&config(server.addr, &pool, ""));
    let mut client = GrpcClient::connect(d.addr("http")).await;
    let mut req = tonic::Request::new(Note {
        text: "zzz".to_string(),
        delay_ms: 30_000,
        ..Note::default()
    });
    req.set_timeout(PATIENCE);
    let status = client
        .unary_request(SLOW, req)
        .await
        .expect_err("past the pool's timeout");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "upstream timed out", "{status:?}");

    // A malformed grpc-timeout is ignored: only the pool's timeout counts.
    let origin = silent().await;
    let d = Daemon::start(&config(origin.addr, "response_timeout = \"300ms\"", ""));
    let addr = d.addr("http");
    let mut h2 = h2c_conn(addr).await;
    let r = h2_send(&mut h2, raw_call(addr, &[("grpc-timeout", "1 second")])).await;
    assert_trailers_only(&r, Code::DeadlineExceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_call_is_resource_exhausted() {
    let d = Daemon::start(&config(
        dead_addr(),
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
    let d = Daemon::start(&config(server.addr, health, ""));
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
        server.addr,
        &health.replace("test.Echo", "no.Such"),
        "",
    ));
    let down = until_state(d.addr("admin"), server.addr, "down").await;
    let error = down["last_check"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("grpc-status 5"), "{down}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_grpc_health_checks_go_over_the_pools_tls() {
    let server = GrpcServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ca = pki.write_ca(dir.path(), "ca");
    let (cert, key) = pki.issue(dir.path(), "grpc", &["grpc.internal"]);
    let (front, _front) = tls_front(&cert, &key, server.addr).await;
    let pool = format!(
        r#"
[pool.app.tls]
server_name = "grpc.internal"
ca = '{}'
alpn = ["h2", "http/1.1"]

[pool.app.health]
kind = "grpc"
interval = "50ms"
timeout = "2s"
rise = 1
fall = 1
"#,
        ca.display()
    );
    let d = Daemon::start_in(dir, &config(front, &pool, ""));
    let admin = d.addr("admin");
    until_state(admin, front, "up").await;
    // Calls go the same way: h2, picked by ALPN, over the pool's TLS.
    let mut client = GrpcClient::connect(d.addr("http")).await;
    let answer = client
        .unary(UNARY, Note::text("over tls"))
        .await
        .expect("unary");
    assert_eq!(answer.text, "echo: over tls");
    let status = client
        .unary(FAIL, Note::text("tls"))
        .await
        .expect_err("fails");
    assert_eq!(
        (status.code(), status.message()),
        (FAIL_CODE, "refused: tls")
    );
    // The whole server (service "") goes NOT_SERVING.
    server.set_serving("", false).await;
    let down = until_state(admin, front, "down").await;
    let error = down["last_check"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("NOT_SERVING"), "{down}");
}
