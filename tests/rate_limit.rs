//! Rate limiting end to end: a route's `rate_limit` answers 429 with
//! `Retry-After` and `RateLimit-*` fields to the client over its limit while
//! other clients (by address or by API key) and other routes are served as
//! usual; memory stays bounded under many distinct keys; a listener's
//! `max_connection_rate` closes the connections beyond it.
//!
//! Limits use `per = "1h"` so that no token is refilled while a test runs;
//! the one refill test only asserts that a request is eventually allowed.

mod common;
use common::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HOME: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const NEIGHBOUR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// One listener `http` in front of `origin`, with `routes` (each naming
/// pool `app`) and `listener_extra` added to the listener.
fn config(origin: SocketAddr, listener_extra: &str, routes: &str) -> String {
    format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"
{listener_extra}

{routes}

[pool.app]
servers = [ {{ addr = "{origin}" }} ]
"#
    )
}

/// An HTTP/1.1 connection to `addr` from the local address `from`.
async fn conn_from(from: IpAddr, addr: SocketAddr) -> SendRequest<TestBody> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind client");
    let stream = socket.connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    send
}

/// `GET path` on an open connection, with extra `fields`.
async fn get_on(send: &mut SendRequest<TestBody>, path: &str, fields: &[(&str, &str)]) -> Reply {
    let mut req = request(Method::GET, path, "localhost", empty());
    for (k, v) in fields {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let reply = async {
        send.ready().await.expect("connection ready");
        let resp = send.send_request(req).await.expect("response");
        collect(resp).await
    };
    tokio::time::timeout(PATIENCE, reply)
        .await
        .expect("reply in time")
}

fn number(reply: &Reply, name: &str) -> u64 {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("no {name}: {reply:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number: {reply:?}"))
}

/// An allowed request on a limited route: served, with the quota fields.
fn assert_allowed(reply: &Reply, limit: u64, remaining: u64) {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(number(reply, "ratelimit-limit"), limit, "{reply:?}");
    assert_eq!(number(reply, "ratelimit-remaining"), remaining, "{reply:?}");
    assert!(number(reply, "ratelimit-reset") >= 1, "{reply:?}");
    assert!(reply.header("retry-after").is_none(), "{reply:?}");
}

/// A refused request: 429 with `Retry-After` (at most `max_wait` seconds)
/// and the quota fields. Returns `Retry-After`.
fn assert_limited(reply: &Reply, limit: u64, max_wait: u64) -> u64 {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    let wait = number(reply, "retry-after");
    assert!((1..=max_wait).contains(&wait), "{reply:?}");
    assert_eq!(number(reply, "ratelimit-limit"), limit, "{reply:?}");
    assert_eq!(number(reply, "ratelimit-remaining"), 0, "{reply:?}");
    assert_eq!(number(reply, "ratelimit-reset"), wait, "{reply:?}");
    wait
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_limit_gets_429_while_another_address_is_served() {
    let origin = Origin::hello().await;
    let daemon = Daemon::start(&config(
        origin.addr,
        "",
        r#"
[[route]]
name = "api"
pool = "app"
rate_limit = { requests = 3, burst = 3, per = "1h" }
"#,
    ));
    let addr = daemon.addr("http");
    // One token per 20 minutes: no refill during the test.
    let per_token = 1200;

    let mut hammer = conn_from(HOME, addr).await;
    for remaining in [2, 1, 0] {
        assert_allowed(&get_on(&mut hammer, "/", &[]).await, 3, remaining);
    }
    for _ in 0..50 {
        assert_limited(&get_on(&mut hammer, "/", &[]).await, 3, per_token);
    }
    assert_eq!(origin.hits(), 3, "refused requests never reach the origin");

    // Another client address on the same route has its own bucket.
    let mut neighbour = conn_from(NEIGHBOUR, addr).await;
    for remaining in [2, 1, 0] {
        assert_allowed(&get_on(&mut neighbour, "/", &[]).await, 3, remaining);
    }
    assert_eq!(origin.hits(), 6);

    // The limit follows the address, not the connection or the protocol.
    let mut again = conn_from(HOME, addr).await;
    assert_limited(&get_on(&mut again, "/", &[]).await, 3, per_token);
    let mut h2 = h2c_conn(addr).await;
    let reply = h2_send(
        &mut h2,
        h2_request(Method::GET, "http://localhost/", empty()),
    )
    .await;
    assert_limited(&reply, 3, per_token);
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(origin.hits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_limited_independently_and_requests_without_one_by_address() {
    let origin = Origin::hello().await;
    let daemon = Daemon::start(&config(
        origin.addr,
        "",
        r#"
[[route]]
name = "api"
pool = "app"
rate_limit = { requests = 2, burst = 2, per = "1h", key = "header:x-api-key" }
"#,
    ));
    let addr = daemon.addr("http");
    let mut c = conn_from(HOME, addr).await;
    let alpha = [("x-api-key", "alpha")];
    let beta = [("x-api-key", "beta")];

    assert_allowed(&get_on(&mut c, "/", &alpha).await, 2, 1);
    assert_allowed(&get_on(&mut c, "/", &alpha).await, 2, 0);
    assert_limited(&get_on(&mut c, "/", &alpha).await, 2, 1800);
    // Same address, another key: a full bucket.
    assert_allowed(&get_on(&mut c, "/", &beta).await, 2, 1);
    assert_allowed(&get_on(&mut c, "/", &beta).await, 2, 0);
    assert_limited(&get_on(&mut c, "/", &beta).await, 2, 1800);
    // The key, not the address, is what counts.
    let mut other = conn_from(NEIGHBOUR, addr).await;
    assert_limited(&get_on(&mut other, "/", &alpha).await, 2, 1800);
    assert_allowed(
        &get_on(&mut other, "/", &[("x-api-key", "gamma")]).await,
        2,
        1,
    );
    // Without the header, the client address is the key.
    assert_allowed(&get_on(&mut c, "/", &[]).await, 2, 1);
    assert_allowed(&get_on(&mut c, "/", &[]).await, 2, 0);
    assert_limited(&get_on(&mut c, "/", &[]).await, 2, 1800);
    assert_allowed(&get_on(&mut other, "/", &[]).await, 2, 1);
    assert_eq!(origin.hits(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_rate_limit_is_unaffected() {
    let origin = Origin::hello().await;
    let daemon = Daemon::start(&config(
        origin.addr,
        "",
        r#"
[[route]]
name = "limited"
path_prefix = "/limited/"
pool = "app"
rate_limit = { requests = 1, burst = 1, per = "1h" }

[[route]]
name = "open"
pool = "app"
"#,
    ));
    let mut c = conn_from(HOME, daemon.addr("http")).await;
    assert_allowed(&get_on(&mut c, "/limited/a", &[]).await, 1, 0);
    assert_limited(&get_on(&mut c, "/limited/a", &[]).await, 1, 3600);
    for i in 0..100 {
        let reply = get_on(&mut c, &format!("/open/{i}"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
            assert!(reply.header(name).is_none(), "{name} on an open route");
        }
    }
    assert_limited(&get_on(&mut c, "/limited/b", &[]).await, 1, 3600);
    assert_eq!(origin.hits(), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_distinct_keys_keep_memory_bounded() {
    let origin = Origin::hello().await;
    let daemon = Daemon::start(&config(
        origin.addr,
        "",
        r#"
[[route]]
name = "api"
pool = "app"
rate_limit = { requests = 1, burst = 1, per = "1h", key = "header:x-api-key" }
"#,
    ));
    let addr = daemon.addr("http");
    // Long keys: what is stored per key must not depend on their length
    // (storing these 10,000 values alone would take 40 MB, beyond the bound;
    // the limiter's own cost is a few hundred bytes a key).
    let pad = "k".repeat(4000);
    let send_keys = |prefix: &'static str, count: usize| {
        let pad = pad.clone();
        async move {
            let lanes = 8;
            let mut tasks = Vec::new();
            for lane in 0..lanes {
                let pad = pad.clone();
                tasks.push(tokio::spawn(async move {
                    let mut c = conn_from(HOME, addr).await;
                    for i in (lane..count).step_by(lanes) {
                        let key = format!("{prefix}-{i}-{pad}");
                        let reply = get_on(&mut c, "/", &[("x-api-key", &key)]).await;
                        // A key never seen before has a full bucket.
                        assert_allowed(&reply, 1, 0);
                    }
                }));
            }
            for t in tasks {
                t.await.expect("lane");
            }
        }
    };
    send_keys("warm", 1_000).await;
    let before = daemon.rss_bytes();
    send_keys("key", 10_000).await;
    let after = daemon.rss_bytes();
    let growth = after.saturating_sub(before);
    assert!(
        growth < 32 << 20,
        "RSS grew by {} KiB for 10,000 keys ({} -> {} KiB)",
        growth >> 10,
        before >> 10,
        after >> 10
    );
    // Every key is still remembered, and the daemon still serves new ones.
    let mut c = conn_from(HOME, addr).await;
    let first = format!("key-0-{pad}");
    assert_limited(
        &get_on(&mut c, "/", &[("x-api-key", &first)]).await,
        1,
        3600,
    );
    assert_allowed(&get_on(&mut c, "/", &[("x-api-key", "fresh")]).await, 1, 0);
}

/// Opens a connection, sends one request and returns every byte that
/// came back before the daemon closed it.
async fn raw_exchange(addr: SocketAddr) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The daemon may already have closed it: a failed write is fine.
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "connection neither answered nor closed");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_listener_rate_are_closed_without_a_response() {
    let origin = Origin::hello().await;
    let text = config(
        origin.addr,
        r#"max_connection_rate = { connections = 3, burst = 3, per = "1h" }

[[listener]]
name = "other"
listen = "127.0.0.1:0""#,
        r#"
[[route]]
pool = "app"
"#,
    );
    let daemon = Daemon::start(&text);
    let limited = daemon.addr("http");

    let mut kept = Vec::new();
    for _ in 0..3 {
        let mut c = conn_from(HOME, limited).await;
        let reply = get_on(&mut c, "/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        kept.push(c);
    }
    for _ in 0..5 {
        let got = raw_exchange(limited).await;
        assert!(
            got.is_empty(),
            "a connection over the rate got a response: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(origin.hits(), 3);
    // Connections already accepted keep working: only new ones count.
    for c in &mut kept {
        let reply = get_on(c, "/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    // Another listener has no such limit.
    for _ in 0..10 {
        let reply = get(daemon.addr("other"), "/").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_client_is_allowed_again_once_tokens_refill() {
    let origin = Origin::hello().await;
    let daemon = Daemon::start(&config(
        origin.addr,
        "",
        r#"
[[route]]
name = "api"
pool = "app"
rate_limit = { requests = 1, burst = 1, per = "1s" }
"#,
    ));
    let mut c = conn_from(HOME, daemon.addr("http")).await;
    // Hammer until refused (a refill between two requests just means
    // another round).
    let mut wait = None;
    for _ in 0..1_000 {
        let reply = get_on(&mut c, "/", &[]).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            wait = Some(assert_limited(&reply, 1, 1));
            break;
        }
        assert_allowed(&reply, 1, 0);
    }
    let wait = wait.expect("never refused");
    // Then, waiting as Retry-After says, it is served again.
    let deadline = Instant::now() + PATIENCE;
    loop {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let reply = get_on(&mut c, "/", &[]).await;
        if reply.status == StatusCode::OK {
            assert_allowed(&reply, 1, 0);
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_survive_a_reload_unless_the_limit_changes() {
    let origin = Origin::hello().await;
    let routes = |requests: u32| {
        format!(
            r#"
[[route]]
name = "other"
path_prefix = "/other/"
pool = "app"

[[route]]
name = "api"
pool = "app"
rate_limit = {{ requests = {requests}, burst = {requests}, per = "1h" }}
"#
        )
    };
    let daemon = Daemon::start(&config(origin.addr, "", &routes(1)));
    let addr = daemon.addr("http");
    let mut c = conn_from(HOME, addr).await;
    assert_allowed(&get_on(&mut c, "/", &[]).await, 1, 0);
    assert_limited(&get_on(&mut c, "/", &[]).await, 1, 3600);

    // Another route changes; this one's limit does not: still limited.
    let changed_elsewhere = config(origin.addr, "", &routes(1)).replace("/other/", "/else/");
    daemon.write_config(&changed_elsewhere);
    daemon.signal("HUP");
    daemon.log_count("config reloaded", 1).await;
    assert_limited(&get_on(&mut c, "/", &[]).await, 1, 3600);

    // A new limit starts from a full bucket.
    daemon.write_config(&config(origin.addr, "", &routes(2)));
    daemon.signal("HUP");
    daemon.log_count("config reloaded", 2).await;
    assert_allowed(&get_on(&mut c, "/", &[]).await, 2, 1);
}
