//! Failover through the real daemon: members that refuse, reset, hang or go
//! away, and the status a client sees for each (retried GET → 200, 502, 504).

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

/// The log lines reporting a failed upstream attempt.
fn failures(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("upstream attempt failed"))
        .collect()
}

/// The one failure line naming `member`.
fn failure_for(log: &str, member: SocketAddr) -> String {
    let needle = format!("member={member}");
    let lines: Vec<&str> = failures(log)
        .into_iter()
        .filter(|l| l.contains(&needle))
        .collect();
    assert!(!lines.is_empty(), "no failure logged for {member}:\n{log}");
    lines[0].to_string()
}

/// An origin that answers `200` with the request body echoed back.
async fn echo() -> Origin {
    Origin::serve(|req, addr| async move {
        let body = req.into_body().collect().await.expect("body").to_bytes();
        Response::builder()
            .header("x-origin", addr.to_string())
            .body(full(body))
            .unwrap()
    })
    .await
}

/// An HTTP/1.1 origin that can be killed the way a crashed process goes
/// away: the listening socket and every accepted connection (idle
/// keep-alive ones included) are closed.
struct Killable {
    addr: SocketAddr,
    kill: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Killable {
    async fn start() -> Killable {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (kill, mut killed) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((stream, _)) = r else { continue };
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                            let _ = req.into_body().collect().await;
                            let resp = Response::builder()
                                .header("x-origin", addr.to_string())
                                .body(full("killable"))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        });
                        conns.spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    _ = killed.wait_for(|k| *k) => break,
                }
            }
            drop(listener);
            conns.shutdown().await;
        });
        Killable { addr, kill, task }
    }

    /// Closes the listener and every connection, returning once they are.
    async fn kill(self) {
        let _ = self.kill.send(true);
        self.task.await.expect("origin task");
    }
}

/// A listener whose accept queue is full: it is never accepted from and
/// already holds as many completed connections as the kernel will queue, so
/// further SYNs are dropped and connecting to it hangs.
struct Blackhole {
    addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    async fn start() -> Blackhole {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let listener = socket.listen(1).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut fillers = Vec::new();
        // Linux queues backlog + 1 connections and then drops SYNs. A
        // connect that does not complete on loopback within half a second
        // means its SYN was dropped: the queue is full.
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => fillers.push(s),
                Ok(Err(e)) => panic!("filling the backlog of {addr}: {e}"),
                Err(_) => {
                    return Blackhole {
                        addr,
                        _listener: listener,
                        _fillers: fillers,
                    }
                }
            }
        }
        panic!("the accept queue of {addr} never filled up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_member_is_skipped_for_get_and_the_failure_is_logged() {
    let dead = dead_addr();
    let live = Origin::hello().await;
    let d = Daemon::start(&simple_config(&[dead, live.addr], ""));
    // Round-robin puts the dead member first for every other request.
    for _ in 0..4 {
        let r = get(d.addr("http"), "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-origin"), Some(live.addr.to_string().as_str()));
    }
    assert_eq!(live.hits(), 4);
    let log = d.log_count("upstream attempt failed", 2).await;
    let line = failure_for(&log, dead);
    assert!(line.contains("route=main"), "{line}");
    assert!(line.contains("pool=app"), "{line}");
    assert!(line.contains("retry=true"), "{line}");
    assert_eq!(failures(&log).len(), 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_refusing_gives_502() {
    let (dead1, dead2) = (dead_addr(), dead_addr());
    let d = Daemon::start(&simple_config(&[dead1, dead2], ""));
    let r = get(d.addr("http"), "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    let log = d.log_count("upstream attempt failed", 2).await;
    // Both members were tried, the second attempt being the last.
    assert!(failure_for(&log, dead1).contains("pool=app"));
    assert!(failure_for(&log, dead2).contains("pool=app"));
    assert_eq!(failures(&log).len(), 2, "{log}");
    assert!(log.contains("retry=false"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_refused_at_connect_moves_to_another_member_once() {
    let dead = dead_addr();
    let live = echo().await;
    let d = Daemon::start(&simple_config(&[dead, live.addr], ""));
    // Round-robin alternates the first candidate, so half of these start
    // with the dead member. Its refusal means nothing was sent: like nginx,
    // the POST goes to the next member, body and all, exactly once.
    for i in 0..4 {
        let body = format!("payload {i}");
        let r = h1(
            d.addr("http"),
            request(Method::POST, "/submit", "localhost", full(body.clone())),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), body);
    }
    // A chunked body (no length known up front) is kept whole for the
    // next member too.
    for _ in 0..2 {
        let reply = raw(
            d.addr("http"),
            b"POST /submit HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("hello world"), "{reply}");
    }
    assert_eq!(live.hits(), 6, "each POST reached the live member once");
    assert!(live.seen().iter().all(|s| s.method == Method::POST));
    let log = d.log_count("upstream attempt failed", 3).await;
    assert!(
        failures(&log).iter().all(|l| l.contains("retry=true")),
        "{log}"
    );
    assert_eq!(failures(&log).len(), 3, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timeout_gives_504_and_is_not_retried() {
    let hung = silent().await;
    let live = Origin::hello().await;
    let d = Daemon::start(&simple_config(
        &[hung.addr, live.addr],
        "response_timeout = \"300ms\"",
    ));
    // One of the two starts with the hung member (round-robin): that one
    // times out with 504 and must not be resent to the live member.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(get(d.addr("http"), "/").await.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 504]);
    assert_eq!(hung.hits(), 1);
    assert_eq!(live.hits(), 1);
    let log = d.log_count("upstream attempt failed", 1).await;
    let line = failure_for(&log, hung.addr);
    assert!(line.contains("retry=false"), "{line}");
    assert!(line.contains("no response head"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_gives_504() {
    let hole = Blackhole::start().await;
    let d = Daemon::start(&simple_config(&[hole.addr], "connect_timeout = \"300ms\""));
    let r = get(d.addr("http"), "/").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{r:?}");
    let log = d.log_count("upstream attempt failed", 1).await;
    let line = failure_for(&log, hole.addr);
    assert!(line.contains("timed out"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_is_retried_for_get() {
    let hole = Blackhole::start().await;
    let live = Origin::hello().await;
    let d = Daemon::start(&simple_config(
        &[hole.addr, live.addr],
        "connect_timeout = \"300ms\"",
    ));
    for _ in 0..2 {
        let r = get(d.addr("http"), "/").await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(live.hits(), 2);
    let log = d.log_count("upstream attempt failed", 1).await;
    assert!(failure_for(&log, hole.addr).contains("timed out"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_stopped_mid_run_fails_over_without_client_errors() {
    let a = Origin::hello().await;
    let b = Origin::hello().await;
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    // No idle upstream connections: Origin::stop closes the listening
    // socket but not connections it already accepted, which would keep
    // serving pooled requests.
    let d = Daemon::start(&simple_config(&[a.addr, b.addr], "max_idle_per_server = 0"));
    let addr = d.addr("http");

    // A client sending GETs back to back for the whole test; any error
    // panics the task and ends the stream of replies.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = tokio::spawn(async move {
        loop {
            let r = get(addr, "/").await;
            if tx.send(r).is_err() {
                break;
            }
        }
    });
    let mut from = Vec::new();
    for _ in 0..10 {
        let r = rx.recv().await.expect("client failed before the stop");
        assert_eq!(r.status, 200, "{r:?}");
        from.push(r.header("x-origin").unwrap_or_default().to_string());
    }
    assert!(from.contains(&a_addr) && from.contains(&b_addr), "{from:?}");

    let stopped = a.addr;
    a.stop();
    wait_refused(stopped).await;
    // At most one request was under way when the port closed.
    let r = rx.recv().await.expect("client failed during the stop");
    assert_eq!(r.status, 200, "{r:?}");
    for i in 0..20 {
        let r = rx.recv().await.expect("client failed after the stop");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("x-origin"),
            Some(b_addr.as_str()),
            "request {i} after the stop"
        );
    }
    drop(rx);
    client.await.expect("client task");
    let log = d.log_count("upstream attempt failed", 1).await;
    assert!(failure_for(&log, stopped).contains("retry=true"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_killed_with_pooled_connections_fails_over_for_get() {
    let a = Killable::start().await;
    let b = Origin::hello().await;
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    // Default pooling: the daemon holds idle keep-alive connections to A
    // when A goes away.
    let d = Daemon::start(&simple_config(&[a.addr, b.addr], ""));
    let addr = d.addr("http");

    let mut from = Vec::new();
    for _ in 0..10 {
        let r = get(addr, "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        from.push(r.header("x-origin").unwrap_or_default().to_string());
    }
    assert!(from.contains(&a_addr) && from.contains(&b_addr), "{from:?}");

    // Requests one after another: once the kill returns, none is under way,
    // and the daemon still holds A's (now closed) pooled connections.
    let killed = a.addr;
    a.kill().await;
    for i in 0..20 {
        let r = get(addr, "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("x-origin"),
            Some(b_addr.as_str()),
            "request {i} after the kill"
        );
    }
    let log = d.log_count("upstream attempt failed", 1).await;
    assert!(failure_for(&log, killed).contains("retry=true"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_response_is_retried_for_get() {
    let resetter = Resetter::start().await;
    let live = Origin::hello().await;
    let d = Daemon::start(&simple_config(&[resetter.addr, live.addr], ""));
    for _ in 0..4 {
        let r = get(d.addr("http"), "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-origin"), Some(live.addr.to_string().as_str()));
    }
    assert_eq!(live.hits(), 4);
    assert!(resetter.accepted() >= 2);
    let log = d.log_count("upstream attempt failed", 2).await;
    let line = failure_for(&log, resetter.addr);
    assert!(line.contains("retry=true"), "{line}");
    assert!(line.contains("route=main"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_response_gives_502_for_post() {
    let resetter = Resetter::after_request().await;
    let live = echo().await;
    let d = Daemon::start(&simple_config(&[resetter.addr, live.addr], ""));
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let req = request(Method::POST, "/", "localhost", full("body"));
        statuses.push(h1(d.addr("http"), req).await.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 502]);
    assert_eq!(live.hits(), 1);
    assert_eq!(resetter.accepted(), 1);
}
