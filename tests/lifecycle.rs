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
    let log = d.log();
    assert!(log.contains("drained; exiting"), "{log}");
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
    assert!(d.log().contains("drained; exiting"), "{}", d.log());
}
