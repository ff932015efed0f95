//! Upstream resilience end to end, as `GET /upstreams` reports it: slow
//! start after a member recovers (never at boot), and the issue's "killed,
//! erroring, hanging" scenario where retries and passive ejection keep every
//! GET a 200 while the bad members are taken out of rotation.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::Response;
use http_body_util::BodyExt;
use serde_json::Value;

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number: {v}"))
}

/// Listener, one route to pool `app` with `servers` (`addr`, `weight`),
/// `pool_extra` appended to `[pool.app]`, and an admin listener.
fn config(servers: &[(SocketAddr, u32)], pool_extra: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(a, w)| format!("{{ addr = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "main"
pool = "app"

[pool.app]
servers = [ {} ]
{pool_extra}

[admin]
listen = "127.0.0.1:0"
"#,
        list.join(", ")
    )
}

/// An origin answering 200 to everything except `/healthz`, which answers
/// 200 or 500 as `healthy` says.
async fn flappable(healthy: Arc<AtomicBool>) -> Origin {
    Origin::serve(move |req, addr: SocketAddr| {
        let healthy = healthy.clone();
        async move {
            let status = if req.uri().path() == "/healthz" && !healthy.load(Ordering::SeqCst) {
                500
            } else {
                200
            };
            let _ = req.into_body().collect().await;
            Response::builder()
                .status(status)
                .header("x-origin", addr.to_string())
                .body(full("ok"))
                .unwrap()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_recovered_member_through_the_daemon() {
    let a_healthy = Arc::new(AtomicBool::new(true));
    let a = flappable(a_healthy.clone()).await;
    let b = flappable(Arc::new(AtomicBool::new(true))).await;
    let d = Daemon::start(&config(
        &[(a.addr, 4), (b.addr, 4)],
        r#"policy = "weighted"
slow_start = "30s"

[pool.app.health]
kind = "http"
path = "/healthz"
interval = "100ms"
timeout = "100ms"
rise = 1
fall = 1
"#,
    ));
    let admin = d.addr("admin");

    // At boot slow start does not apply: everyone has the full weight.
    let v = upstreams(admin).await;
    for m in [member(&v, a.addr), member(&v, b.addr)] {
        assert_eq!(m["state"], "up", "{v}");
        assert_eq!(m["weight"], 4, "{v}");
        assert_eq!(num(&m, "effective_weight"), 4.0, "{v}");
    }
    // Traffic flows to both at boot.
    for _ in 0..4 {
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
    }

    a_healthy.store(false, Ordering::SeqCst);
    d.log_count(&change(a.addr, "up", "down"), 1).await;
    let v = upstreams(admin).await;
    assert_eq!(member(&v, a.addr)["state"], "down", "{v}");

    a_healthy.store(true, Ordering::SeqCst);
    d.log_count(&change(a.addr, "down", "up"), 1).await;
    let v = upstreams(admin).await;
    let (ma, mb) = (member(&v, a.addr), member(&v, b.addr));
    assert_eq!(ma["state"], "up", "{v}");
    assert_eq!(ma["weight"], 4, "{v}");
    let ramped = num(&ma, "effective_weight");
    assert!(
        ramped > 0.0 && ramped < 4.0,
        "a recovered member ramps up: {v}"
    );
    assert_eq!(mb["state"], "up", "{v}");
    assert_eq!(
        num(&mb, "effective_weight"),
        4.0,
        "the member that never left keeps its weight: {v}"
    );
    // Requests still succeed while the member ramps.
    for _ in 0..4 {
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_killed_erroring_hanging_get_sees_no_errors() {
    let killed = dead_addr();
    let healthy = answering_with(200, "status 200").await;
    let erroring = answering_with(503, "status 503").await;
    let hangs = silent().await;
    // Round-robin order: dead, healthy, erroring, hanging. Whatever member
    // a request starts on, at most two bad members come before the healthy
    // one once earlier failures have ejected their member, so `retries = 2`
    // always reaches it.
    let servers = [
        (killed, 1),
        (healthy.addr, 1),
        (erroring.addr, 1),
        (hangs.addr, 1),
    ];
    let d = Daemon::start(&config(
        &servers,
        r#"retries = 2
retry_on = ["connect", "reset", "timeout", "502", "503", "504"]
response_timeout = "300ms"

[pool.app.outlier]
consecutive_failures = 1
failures = ["connect", "5xx"]
eject_for = "60s"
max_eject_for = "60s"
max_ejected_percent = 75
"#,
    ));
    let addr = d.addr("http");

    let mut bad = Vec::new();
    for i in 0..50 {
        let r = get(addr, &format!("/item/{i}")).await;
        if r.status != 200 || r.header("x-origin") != Some(healthy.addr.to_string().as_str()) {
            bad.push((i, r.status, r.header("x-origin").map(str::to_string)));
        }
    }
    assert!(bad.is_empty(), "client saw errors: {bad:?}\n{}", d.log());
    assert_eq!(healthy.hits(), 50);
    assert!(erroring.hits() >= 1, "the erroring member was tried");
    assert!(hangs.hits() >= 1, "the hanging member was tried");

    for m in [killed, erroring.addr, hangs.addr] {
        d.log_count(&change(m, "up", "ejected"), 1).await;
    }
    let v = upstreams(d.addr("admin")).await;
    for m in [killed, erroring.addr, hangs.addr] {
        let state = member(&v, m)["state"].clone();
        assert!(
            state == "ejected" || state == "down",
            "{m} should be out of rotation: {v}"
        );
    }
    assert_eq!(member(&v, healthy.addr)["state"], "up", "{v}");
    let pool = &v["pools"][0];
    assert_eq!(pool["healthy"], 1, "{v}");
    assert_eq!(pool["total"], 4, "{v}");
    // Ejected for 60 s: once they are out, no more attempts reach them.
    let (e, h) = (erroring.hits(), hangs.hits());
    for _ in 0..5 {
        assert_eq!(get(addr, "/").await.status, 200);
    }
    assert_eq!((erroring.hits(), hangs.hits()), (e, h));
}
