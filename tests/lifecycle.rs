//! Process lifecycle of the real daemon: SIGHUP reloads (good and bad
//! configs), SIGTERM/SIGINT drain and exit status.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Method, Response};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

/// Two pools, `app` over `app` and `other` over `other`, and route `main`
/// to `route_to`.
fn two_pool_config(app: SocketAddr, other: SocketAddr, route_to: &str) -> String {
    format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "main"
pool = "{route_to}"

[pool.app]
servers = [ {{ addr = "{app}" }} ]

[pool.other]
servers = [ {{ addr = "{other}" }} ]
"#
    )
}

/// `GET /` answered by `origin`.
async fn assert_served_by(addr: SocketAddr, origin: &Origin) {
    let r = get(addr, "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-origin"), Some(origin.addr.to_string().as_str()));
}

/// An origin whose first request reports that it arrived and then waits
/// for `release` before answering `200 slow done`; later requests are
/// answered at once.
async fn slow_origin(entered: oneshot::Sender<()>, release: oneshot::Receiver<()>) -> Origin {
    let slot = Arc::new(Mutex::new(Some((entered, release))));
    Origin::serve(move |req, _addr| {
        let held = slot.lock().unwrap().take();
        async move {
            let _ = req.into_body().collect().await;
            if let Some((entered, release)) = held {
                let _ = entered.send(());
                let _ = release.await;
            }
            Response::new(full("slow done"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_good_config_switches_to_the_new_origin() {
    let (a, b) = (Origin::hello().await, Origin::hello().await);
    let d = Daemon::start(&two_pool_config(a.addr, b.addr, "app"));
    let addr = d.addr("http");
    assert_served_by(addr, &a).await;

    d.write_config(&two_pool_config(a.addr, b.addr, "other"));
    d.signal("HUP");
    d.log_count("config reloaded", 1).await;
    for _ in 0..3 {
        assert_served_by(addr, &b).await;
    }
    assert_eq!((a.hits(), b.hits()), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_bad_config_is_refused_and_the_old_one_keeps_serving() {
    let (a, b) = (Origin::hello().await, Origin::hello().await);
    let d = Daemon::start(&two_pool_config(a.addr, b.addr, "app"));
    let addr = d.addr("http");

    // Not TOML at all.
    d.write_config("[[listener]\nname = ");
    d.signal("HUP");
    d.log_count("reload refused", 1).await;
    assert_served_by(addr, &a).await;

    // Valid TOML, but the route names a pool that does not exist.
    d.write_config(&two_pool_config(a.addr, b.addr, "nope"));
    d.signal("HUP");
    let log = d.log_count("reload refused", 2).await;
    assert!(log.contains("no pool named \"nope\""), "{log}");
    assert_served_by(addr, &a).await;

    // Valid, but listeners cannot change without a restart.
    d.write_config(
        &two_pool_config(a.addr, b.addr, "other").replace("name = \"http\"", "name = \"web\""),
    );
    d.signal("HUP");
    d.log_count("reload refused", 3).await;
    assert_served_by(addr, &a).await;
    assert!(!d.log().contains("config reloaded"), "{}", d.log());

    // The daemon still reloads a good file afterwards.
    d.write_config(&two_pool_config(a.addr, b.addr, "other"));
    d.signal("HUP");
    d.log_count("config reloaded", 1).await;
    assert_served_by(addr, &b).await;
    assert_eq!((a.hits(), b.hits()), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_request_finish_refuses_new_connections_and_exits_0() {
    let (entered_tx, entered_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let origin = slow_origin(entered_tx, release_rx).await;
    let mut d = Daemon::start(&simple_config(&[origin.addr], ""));
    let addr = d.addr("http");

    let in_flight = tokio::spawn(async move { get(addr, "/slow").await });
    tokio::time::timeout(PATIENCE, entered_rx)
        .await
        .expect("request reached the origin in time")
        .expect("entered");

    d.signal("TERM");
    d.log_count("stopping", 1).await;
    wait_refused(addr).await;

    // Only now does the origin answer.
    release_tx.send(()).expect("release");
    let r = in_flight.await.expect("in-flight request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "slow done");

    let status = d.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", d.log());
    let log = d.log_count("drained; exiting", 1).await;
    assert!(!log.contains("drain timeout reached"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_once_the_drain_timeout_passes() {
    let (entered_tx, entered_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let origin = slow_origin(entered_tx, release_rx).await;
    let mut d = Daemon::start(&simple_config(
        &[origin.addr],
        "\n[server]\ndrain_timeout = \"300ms\"",
    ));
    let addr = d.addr("http");

    let in_flight = tokio::spawn(async move {
        let mut send = h1_conn(addr).await;
        send.send_request(request(Method::GET, "/slow", "localhost", empty()))
            .await
            .map(|r| r.status())
    });
    tokio::time::timeout(PATIENCE, entered_rx)
        .await
        .expect("request reached the origin in time")
        .expect("entered");

    d.signal("TERM");
    d.log_count("drain timeout reached", 1).await;
    let status = d.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", d.log());
    assert!(!d.log().contains("drained; exiting"), "{}", d.log());

    // The request that outlasted the drain never got its response.
    let outcome = in_flight.await.expect("client task");
    assert!(outcome.is_err(), "cut-off request got {outcome:?}");
    let _ = release_tx.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_idle_keepalive_connections_drains_without_waiting() {
    let origin = Origin::hello().await;
    // A drain timeout longer than the harness's patience: if idle
    // connections held up the drain, waiting for "drained" would fail.
    let mut d = Daemon::start(&simple_config(
        &[origin.addr],
        "\n[server]\ndrain_timeout = \"120s\"",
    ));
    let addr = d.addr("http");

    let mut h1 = h1_conn(addr).await;
    let r = h1
        .send_request(request(Method::GET, "/", "localhost", empty()))
        .await
        .expect("h1 response");
    assert_eq!(r.status(), 200);
    let _ = r.into_body().collect().await;
    let mut h2 = h2c_conn(addr).await;
    let r = h2_send(
        &mut h2,
        h2_request(Method::GET, "http://localhost/", empty()),
    )
    .await;
    assert_eq!(r.status, 200);

    d.signal("TERM");
    d.log_count("drained; exiting", 1).await;
    let status = d.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", d.log());
    drop((h1, h2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_sent_right_after_ready_are_handled() {
    let origin = Origin::hello().await;
    // Several daemons, each signalled the moment it reports ready: a
    // handler installed only after "ready" would let SIGHUP kill it.
    for _ in 0..5 {
        let mut d = Daemon::start(&simple_config(&[origin.addr], ""));
        d.signal("HUP");
        d.log_count("config reloaded", 1).await;
        assert_served_by(d.addr("http"), &origin).await;
        d.signal("TERM");
        let status = d.wait_exit();
        assert_eq!(status.code(), Some(0), "{status:?}\n{}", d.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0() {
    let origin = Origin::hello().await;
    let mut d = Daemon::start(&simple_config(&[origin.addr], ""));
    assert_served_by(d.addr("http"), &origin).await;
    d.signal("INT");
    d.log_count("stopping", 1).await;
    let status = d.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", d.log());
    d.log_count("drained; exiting", 1).await;
}

/// Terminates a process this test did not start itself (the sluice a
/// handover started), when the test ends, however it ends.
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        signal(self.0, "KILL");
    }
}

/// Whether process `pid` still exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_the_listeners_to_a_new_process_without_losing_a_request() {
    let origin = Origin::hello().await;
    let mut d = Daemon::start(&admin_route_config(origin.addr, "", ""));
    let addr = d.addr("http");
    let admin = d.addr("admin");
    let old_pid = d.pid();

    // Clients keep asking through the whole handover: some with a new
    // connection for each request, some on keep-alive connections (a new
    // one only after a response said `Connection: close`, as wrk and
    // browsers do).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts = Arc::new(Mutex::new((0usize, Vec::new())));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, counts) = (stop.clone(), counts.clone());
        load.push(tokio::spawn(async move {
            let mut conn = None;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let result = async {
                    if conn.is_none() {
                        conn = Some(h1_conn(addr).await);
                    }
                    let send = conn.as_mut().expect("a connection");
                    send.ready().await?;
                    let resp = send
                        .send_request(request(Method::GET, "/", "localhost", empty()))
                        .await?;
                    let status = resp.status();
                    let close = resp
                        .headers()
                        .get("connection")
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                    resp.into_body().collect().await?;
                    if close {
                        conn = None;
                    }
                    Ok::<_, BoxError>(status)
                }
                .await;
                let mut c = counts.lock().unwrap();
                match result {
                    Ok(s) if s == 200 => c.0 += 1,
                    Ok(s) => c.1.push(format!("status {s}")),
                    Err(e) => {
                        c.1.push(format!("keep-alive: {e}"));
                        drop(c);
                        conn = None;
                    }
                }
            }
        }));
    }
    for _ in 0..4 {
        let (stop, counts) = (stop.clone(), counts.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let result = async {
                    let stream = tokio::net::TcpStream::connect(addr).await?;
                    let (mut send, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await?;
                    tokio::spawn(conn);
                    let resp = send
                        .send_request(request(Method::GET, "/", "localhost", empty()))
                        .await?;
                    let status = resp.status();
                    resp.into_body().collect().await?;
                    Ok::<_, BoxError>(status)
                }
                .await;
                let mut c = counts.lock().unwrap();
                match result {
                    Ok(s) if s == 200 => c.0 += 1,
                    Ok(s) => c.1.push(format!("status {s}")),
                    Err(e) => c.1.push(e.to_string()),
                }
            }
        }));
    }
    let served = |n: usize| {
        let counts = counts.clone();
        async move {
            let deadline = std::time::Instant::now() + PATIENCE;
            let start = counts.lock().unwrap().0;
            while counts.lock().unwrap().0 < start + n {
                assert!(std::time::Instant::now() < deadline, "requests stopped");
                tokio::task::yield_now().await;
            }
        }
    };
    served(50).await;

    d.signal("USR2");
    let log = d.log_count("this one stops accepting and drains", 1).await;
    let new_pid: u32 = log
        .lines()
        .filter(|l| l.contains("\"ready\"") || l.contains(" ready"))
        .filter_map(|l| l.split("pid=").nth(1))
        .filter_map(|p| p.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .find(|&p| p != old_pid)
        .expect("the new process logged ready with its pid");
    let _reaper = Reaper(new_pid);
    assert!(log.contains("using the inherited socket"), "{log}");
    assert!(d.wait_exit().success(), "the old sluice drains and exits 0");
    assert!(alive(new_pid));

    // The new process serves the same addresses, the admin API included.
    served(50).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = counts.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(get(admin, "/healthz").await.status, 200);

    signal(new_pid, "TERM");
    let deadline = std::time::Instant::now() + PATIENCE;
    while alive(new_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the new sluice did not exit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&admin_route_config(origin.addr, "", ""));
    let addr = d.addr("http");
    // The new process reads the config again: a broken one stops it.
    d.write_config("this is not toml [");
    d.signal("USR2");
    d.log_count("upgrade failed; this sluice keeps serving", 1)
        .await;
    assert_eq!(get(addr, "/").await.status, 200);
}
