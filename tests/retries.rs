//! Retries and circuit breaking through the real daemon: `retry_on` decides
//! which failures move an idempotent request to another member (502, 503
//! and 504 answers included when listed), a POST is never sent twice, the
//! retry budget caps upstream traffic in a full outage, and members at
//! `max_connections` with `max_pending` requests waiting get 503 at once.

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::watch;

/// An origin that holds every request until the gate opens.
async fn gated(gate: watch::Receiver<bool>) -> Origin {
    Origin::serve(move |req, addr: SocketAddr| {
        let mut gate = gate.clone();
        async move {
            let _ = req.into_body().collect().await;
            let _ = gate.wait_for(|open| *open).await;
            Response::builder()
                .header("x-origin", addr.to_string())
                .body(full("late"))
                .unwrap()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_statuses_are_retried_on_another_member() {
    for status in [502u16, 503, 504] {
        let failing = answering(status).await;
        let live = Origin::hello().await;
        let d = Daemon::start(&simple_config(
            &[failing.addr, live.addr],
            &format!("retry_on = [\"connect\", \"reset\", \"{status}\"]"),
        ));
        for _ in 0..4 {
            let r = get(d.addr("http"), "/").await;
            assert_eq!(r.status, 200, "{status}: {r:?}");
        }
        // Round-robin put the failing member first for half of them.
        assert_eq!(failing.hits(), 2, "{status}");
        assert_eq!(live.hits(), 4, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_passed_on_unless_listed() {
    let failing = answering(503).await;
    let live = Origin::hello().await;
    let d = Daemon::start(&simple_config(&[failing.addr, live.addr], ""));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(d.addr("http"), "/").await.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503]);
    assert_eq!(live.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_never_sent_twice() {
    let failing = answering(503).await;
    let resetter = Resetter::after_request().await;
    let live = Origin::hello().await;
    let d = Daemon::start(&simple_config(
        &[failing.addr, resetter.addr, live.addr],
        "retries = 2\nretry_on = [\"connect\", \"reset\", \"timeout\", \"502\", \"503\", \"504\"]",
    ));
    let mut statuses = Vec::new();
    for i in 0..6 {
        let req = request(Method::POST, "/", "localhost", full(format!("p{i}")));
        statuses.push(h1(d.addr("http"), req).await.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 502, 502, 503, 503]);
    // Each POST reached exactly one member once.
    assert_eq!(failing.hits() + resetter.accepted() + live.hits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_upstream_traffic_in_a_full_outage() {
    let members = [
        Resetter::start().await,
        Resetter::start().await,
        Resetter::start().await,
    ];
    let addrs: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
    let d = Daemon::start(&simple_config(
        &addrs,
        "retries = 2\nretry_backoff = \"1ms\"\nretry_budget = 0.2\nmin_retries_per_second = 0\n\
         [pool.app.outlier]\nconsecutive_failures = 0\n",
    ));
    let requests = 60;
    for _ in 0..requests {
        assert_eq!(
            get(d.addr("http"), "/").await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    let attempts: usize = members.iter().map(Resetter::accepted).sum();
    let retries = attempts - requests;
    // Without a budget every request would make three attempts.
    assert!(retries > 0, "retries happen at all");
    assert!(
        retries <= requests / 5 + 2,
        "{attempts} attempts for {requests} requests"
    );
    let log = d.log_count("retry=true", retries).await;
    assert_eq!(log.matches("retry=true").count(), retries, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_retries_per_second_lets_low_traffic_fail_over() {
    let resetter = Resetter::start().await;
    let live = Origin::hello().await;
    let d = Daemon::start(&simple_config(
        &[resetter.addr, live.addr],
        "retry_budget = 0.0\nmin_retries_per_second = 10",
    ));
    for _ in 0..4 {
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
    }
    assert_eq!(resetter.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_without_pending_room_gives_503_at_once() {
    let (open, gate) = watch::channel(false);
    let origin = gated(gate).await;
    let d = Daemon::start(&format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
pool = "app"

[pool.app]
max_pending = 0
servers = [ {{ addr = "{}", max_connections = 1 }} ]
"#,
        origin.addr
    ));
    let addr = d.addr("http");
    let first = tokio::spawn(async move { get(addr, "/").await });
    while origin.hits() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = get(addr, "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(origin.hits(), 1, "the refused request never went upstream");
    open.send(true).unwrap();
    assert_eq!(first.await.unwrap().status, 200);
    // The slot is free again.
    assert_eq!(get(addr, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_bounds_the_requests_waiting_for_a_slot() {
    let (open, gate) = watch::channel(false);
    let origin = gated(gate).await;
    let d = Daemon::start(&format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
pool = "app"

[pool.app]
max_pending = 1
connect_timeout = "30s"
servers = [ {{ addr = "{}", max_connections = 1 }} ]
"#,
        origin.addr
    ));
    let addr = d.addr("http");
    let first = tokio::spawn(async move { get(addr, "/").await });
    while origin.hits() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // One of these waits for the slot, the other finds the queue full.
    let second = tokio::spawn(async move { get(addr, "/").await.status.as_u16() });
    let third = tokio::spawn(async move { get(addr, "/").await.status.as_u16() });
    // Whichever was refused answers before the gate opens.
    let refused = loop {
        if second.is_finished() {
            break second.await.unwrap();
        }
        if third.is_finished() {
            break third.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(refused, 503);
    assert_eq!(origin.hits(), 1);
    open.send(true).unwrap();
    assert_eq!(first.await.unwrap().status, 200);
    let log = d.log_count("upstream pool at capacity", 1).await;
    assert_eq!(log.matches("upstream pool at capacity").count(), 1, "{log}");
    // The waiting one gets the slot once the first is done.
    while origin.hits() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
