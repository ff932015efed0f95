//! Config keys whose effect is not covered by a feature's own test file:
//! `server.workers`, `pool.*.idle_timeout`, `pool.*.max_idle_per_server`,
//! `limits.max_connections`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// An origin that counts TCP connections and reports each one's close.
struct CountingOrigin {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: mpsc::UnboundedReceiver<()>,
}

async fn counting_origin() -> CountingOrigin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, closed) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                let _ = tx.send(());
            });
        }
    });
    CountingOrigin {
        addr,
        accepted,
        closed,
    }
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sets_the_runtime_thread_count() {
    let origin = Origin::hello().await;
    let one = Daemon::start(&format!(
        "[server]\nworkers = 1\n{}",
        simple_config(&[origin.addr], "")
    ));
    let six = Daemon::start(&format!(
        "[server]\nworkers = 6\n{}",
        simple_config(&[origin.addr], "")
    ));
    assert_eq!(get(one.addr("http"), "/").await.status, 200);
    assert_eq!(get(six.addr("http"), "/").await.status, 200);
    let (t1, t6) = (threads_of(one.pid()), threads_of(six.pid()));
    // Main thread plus workers (blocking-pool threads only appear on demand).
    assert!(t6 >= 7, "workers = 6 gave {t6} threads");
    assert!(
        t6 >= t1 + 5,
        "workers = 1 gave {t1} threads, workers = 6 gave {t6}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_then_closed_after_idle_timeout() {
    let mut origin = counting_origin().await;
    // Idle connections are pooled per worker thread: one worker makes the
    // count exact.
    let d = Daemon::start(&one_worker(&simple_config(
        &[origin.addr],
        "idle_timeout = \"200ms\"",
    )));
    for _ in 0..5 {
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
    }
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );
    // The idle pooled connection is closed by sluice: the origin sees EOF.
    tokio::time::timeout(PATIENCE, origin.closed.recv())
        .await
        .expect("idle upstream connection closed")
        .unwrap();
    assert_eq!(get(d.addr("http"), "/").await.status, 200);
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        2,
        "a new connection after idle close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_idle_per_server_zero_disables_pooling() {
    let origin = counting_origin().await;
    let d = Daemon::start(&simple_config(&[origin.addr], "max_idle_per_server = 0"));
    for _ in 0..4 {
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
    }
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_further_clients_until_one_leaves() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&format!(
        "{}\n[limits]\nmax_connections = 1\n",
        simple_config(&[origin.addr], "")
    ));
    let addr = d.addr("http");
    // First client: a keep-alive connection that stays open.
    let mut first = h1_conn(addr).await;
    let r = first
        .send_request(request(http::Method::GET, "/", "localhost", empty()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Second client: connected by the kernel, but not served while the first
    // holds the only slot.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "second connection served while the first was open"
    );
    assert_eq!(origin.hits(), 1);

    drop(first);
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, second.read_to_end(&mut out))
        .await
        .expect("served after the first left")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(origin.hits(), 2);
}
