//! HTTP/2 to upstreams through the real daemon, in front of real h2c
//! origins on 127.0.0.1: `protocol = "h2c"` multiplexes every request of a
//! worker over one connection within the member's
//! `MAX_CONCURRENT_STREAMS`, client HTTP/1.1 and HTTP/2 requests both map
//! onto it with `Host` as `:authority`, a `GOAWAY` drains the connection
//! while new requests go to a new one, a stream refused unprocessed is
//! sent again, and health checks speak h2 too. (h2 over TLS by ALPN is in
//! `upstream_tls.rs`.)

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// An HTTP/2-only (prior knowledge) origin answering `h2 origin` after a
/// short pause, counting connections and the most streams open at once.
struct H2Origin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(http::Version, String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Origin {
    /// `max_streams`: the SETTINGS_MAX_CONCURRENT_STREAMS it announces;
    /// `goaway_after`: with `Some(n)`, each connection is shut down
    /// gracefully (GOAWAY, in-flight streams finish) after its `n`th request.
    async fn start(max_streams: u32, goaway_after: Option<usize>) -> H2Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, p, s) = (connections.clone(), peak.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let open = Arc::new(AtomicUsize::new(0));
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (p, s, open) = (p.clone(), s.clone(), open.clone());
                tokio::spawn(async move {
                    let served = Arc::new(AtomicUsize::new(0));
                    let (drain_tx, mut drain_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(now, Ordering::SeqCst);
                        s.lock().unwrap().push((
                            req.version(),
                            req.uri()
                                .authority()
                                .map(|a| a.to_string())
                                .unwrap_or_default(),
                            req.uri().path().to_string(),
                        ));
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        if goaway_after == Some(n) {
                            let _ = drain_tx.send(());
                        }
                        let open = open.clone();
                        async move {
                            // Long enough for concurrent requests to overlap.
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            open.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(Response::new(full("h2 origin")))
                        }
                    });
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(max_streams)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    let mut draining = false;
                    loop {
                        tokio::select! {
                            _ = conn.as_mut() => break,
                            Some(()) = drain_rx.recv(), if !draining => {
                                draining = true;
                                conn.as_mut().graceful_shutdown();
                            }
                        }
                    }
                });
            }
        });
        H2Origin {
            addr,
            connections,
            peak,
            seen,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<(http::Version, String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

fn h2c_config(origin: SocketAddr, extra: &str) -> String {
    one_worker(&simple_config(
        &[origin],
        &format!("protocol = \"h2c\"\n{extra}"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_member_takes_100_concurrent_requests_over_one_connection_within_its_stream_limit() {
    let origin = H2Origin::start(10, None).await;
    let d = Daemon::start(&h2c_config(origin.addr, ""));
    let addr = d.addr("http");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..100 {
        calls.spawn(async move {
            let path = format!("/item/{i}");
            h1(addr, request(Method::GET, &path, "shop.example", empty())).await
        });
    }
    while let Some(r) = calls.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "h2 origin");
    }
    assert_eq!(origin.connections(), 1, "one multiplexed connection");
    let peak = origin.peak.load(Ordering::SeqCst);
    assert!(peak <= 10, "{peak} streams open at once, over the limit");
    let seen = origin.seen();
    assert_eq!(seen.len(), 100);
    for (version, authority, _) in &seen {
        assert_eq!(*version, http::Version::HTTP_2);
        assert_eq!(authority, "shop.example", "Host becomes :authority");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_and_an_h1_client_reach_the_same_h2c_member() {
    let origin = H2Origin::start(100, None).await;
    let d = Daemon::start(&h2c_config(origin.addr, ""));
    let addr = d.addr("http");
    let mut h2 = h2c_conn(addr).await;
    let r = h2_send(
        &mut h2,
        h2_request(Method::GET, &format!("http://api.example/{}", "a"), empty()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "h2 origin");
    let r = h1(addr, request(Method::POST, "/b", "api.example", full("up"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = origin.seen();
    let paths: Vec<&str> = seen.iter().map(|(_, _, p)| p.as_str()).collect();
    assert_eq!(paths, ["/a", "/b"]);
    assert!(seen
        .iter()
        .all(|(v, a, _)| *v == http::Version::HTTP_2 && a == "api.example"));
    assert_eq!(origin.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_drains_the_connection_and_later_requests_use_a_new_one() {
    // Each connection says GOAWAY after its third request.
    let origin = H2Origin::start(100, Some(3)).await;
    let d = Daemon::start(&h2c_config(origin.addr, ""));
    let addr = d.addr("http");
    for i in 0..9 {
        let r = get(addr, &format!("/seq/{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    // Concurrent requests across the drains too.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..30 {
        calls.spawn(async move { get(addr, &format!("/par/{i}")).await });
    }
    while let Some(r) = calls.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(
        origin.connections() >= 3,
        "{} connections: a drained connection was reused",
        origin.connections()
    );
}

/// An h2c origin built on the h2 crate, which refuses (`REFUSED_STREAM`)
/// the very first stream it is sent and answers every other one.
async fn refusing_origin() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let counted = answered.clone();
    let task = tokio::spawn(async move {
        let refused = Arc::new(AtomicBool::new(false));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (refused, counted) = (refused.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if !refused.swap(true, Ordering::SeqCst) {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let resp = http::Response::new(());
                    if let Ok(mut body) = respond.send_response(resp, false) {
                        let _ = body.send_data(bytes::Bytes::from_static(b"second try"), true);
                    }
                }
            });
        }
    });
    (addr, answered, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bodiless_request_refused_unprocessed_is_sent_again() {
    let (origin, answered, task) = refusing_origin().await;
    // No retries: the resend is the client's own, not the proxy's.
    let d = Daemon::start(&h2c_config(origin, "retries = 0"));
    let r = get(d.addr("http"), "/once").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "second try");
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_checks_speak_h2_to_an_h2c_pool() {
    let origin = H2Origin::start(100, None).await;
    let d = Daemon::start(&h2c_config(
        origin.addr,
        "[pool.app.health]\ninterval = \"50ms\"\npath = \"/healthz\"\nfall = 1\nrise = 1",
    ));
    let deadline = std::time::Instant::now() + PATIENCE;
    // An HTTP/1.1 check would never reach an h2c-only origin's handler.
    while origin
        .seen()
        .iter()
        .filter(|(_, _, p)| p == "/healthz")
        .count()
        < 3
    {
        assert!(std::time::Instant::now() < deadline, "no h2 health checks");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(origin
        .seen()
        .iter()
        .all(|(v, _, _)| *v == http::Version::HTTP_2));
    let r = get(d.addr("http"), "/after").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn check_refuses_h2c_with_tls_and_an_unknown_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (extra, message) in [
        (
            "protocol = \"h2c\"\n[pool.app.tls]\nverify = false",
            "h2c is HTTP/2 over plain TCP",
        ),
        ("protocol = \"h3\"", "unknown value \"h3\""),
    ] {
        std::fs::write(
            dir.path().join("sluice.toml"),
            simple_config(&[addr], extra),
        )
        .unwrap();
        let (code, _, err) = run_cli(&["--check", "--config", "sluice.toml"], dir.path());
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("pool.app.protocol") && err.contains(message),
            "{err}"
        );
    }
}
