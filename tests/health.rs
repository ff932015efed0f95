//! Active health checks through the real daemon: members whose check fails
//! are marked down within `fall` intervals and skipped by every request,
//! come back within `rise` intervals, and when none is usable the client
//! gets 503 with `Retry-After` at once, or, past `panic_threshold`, the
//! pool balances over everyone.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use http_body_util::BodyExt;

/// An origin whose `/healthz` answers a status the test sets, counting
/// health probes and other requests apart.
struct Checked {
    origin: Origin,
    health: Arc<AtomicU16>,
    probes: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Checked {
    async fn start(status: u16) -> Checked {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Checked::on(listener, Arc::new(AtomicU16::new(status)))
    }

    fn on(listener: tokio::net::TcpListener, health: Arc<AtomicU16>) -> Checked {
        let probes = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (h, p, r) = (health.clone(), probes.clone(), requests.clone());
        let origin = Origin::serve_on(listener, move |req, addr: SocketAddr| {
            let (h, p, r) = (h.clone(), p.clone(), r.clone());
            async move {
                let status = if req.uri().path() == "/healthz" {
                    p.fetch_add(1, Ordering::SeqCst);
                    h.load(Ordering::SeqCst)
                } else {
                    r.fetch_add(1, Ordering::SeqCst);
                    200
                };
                let _ = req.into_body().collect().await;
                Response::builder()
                    .status(status)
                    .header("x-origin", addr.to_string())
                    .body(full("checked"))
                    .unwrap()
            }
        });
        Checked {
            origin,
            health,
            probes,
            requests,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.origin.addr
    }

    fn set(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }
}

fn health(kind: &str, interval_ms: u64, rise: u32, fall: u32, extra: &str) -> String {
    format!(
        "[pool.app.health]\nkind = \"{kind}\"\ninterval = \"{interval_ms}ms\"\ntimeout = \"{interval_ms}ms\"\nrise = {rise}\nfall = {fall}\n{extra}\n"
    )
}

/// Waits for `needle` in the daemon's log and returns how long that took.
async fn time_to(d: &Daemon, needle: &str) -> Duration {
    let t = Instant::now();
    d.log_count(needle, 1).await;
    t.elapsed()
}

/// Slack for a slow machine on top of the bound the issue sets.
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_marks_a_failing_member_down_and_back_up_within_bounds() {
    let a = Checked::start(200).await;
    let b = Checked::start(200).await;
    let interval = 100;
    let (rise, fall) = (2u32, 3u32);
    let d = Daemon::start(&simple_config(
        &[a.addr(), b.addr()],
        &health("http", interval, rise, fall, "path = \"/healthz\""),
    ));
    let addr = d.addr("http");
    // Both healthy: both take traffic.
    for _ in 0..4 {
        assert_eq!(get(addr, "/").await.status, 200);
    }
    assert_eq!(a.requests.load(Ordering::SeqCst), 2);

    a.set(500);
    let took = time_to(&d, &change(a.addr(), "up", "down")).await;
    let bound = Duration::from_millis(interval * u64::from(fall + 1));
    assert!(took < bound + SLACK, "down after {took:?}");
    let before = a.requests.load(Ordering::SeqCst);
    for _ in 0..6 {
        let r = get(addr, "/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-origin"), Some(b.addr().to_string().as_str()));
    }
    assert_eq!(
        a.requests.load(Ordering::SeqCst),
        before,
        "a down member gets no requests"
    );
    // The change is logged once, not once per failing probe.
    let probes = a.probes.load(Ordering::SeqCst);
    while a.probes.load(Ordering::SeqCst) < probes + 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = d.log();
    assert_eq!(
        log.matches(&change(a.addr(), "up", "down")).count(),
        1,
        "{log}"
    );
    assert!(log.contains("unexpected status 500"), "{log}");

    a.set(200);
    let took = time_to(&d, &change(a.addr(), "down", "up")).await;
    let bound = Duration::from_millis(interval * u64::from(rise + 1));
    assert!(took < bound + SLACK, "up after {took:?}");
    let mut from_a = 0;
    for _ in 0..4 {
        let r = get(addr, "/").await;
        assert_eq!(r.status, 200);
        if r.header("x-origin") == Some(a.addr().to_string().as_str()) {
            from_a += 1;
        }
    }
    assert_eq!(from_a, 2, "back in rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_follows_a_member_that_stops_and_restarts() {
    let a = Checked::start(200).await;
    let b = Origin::hello().await;
    let a_addr = a.addr();
    let d = Daemon::start(&simple_config(
        &[a_addr, b.addr],
        &("max_idle_per_server = 0\n".to_string() + &health("tcp", 100, 1, 2, "")),
    ));
    let status = a.health.clone();
    a.origin.stop();
    d.log_count(&change(a_addr, "up", "down"), 1).await;
    for _ in 0..4 {
        let r = get(d.addr("http"), "/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-origin"), Some(b.addr.to_string().as_str()));
    }
    assert!(
        !d.log().contains("upstream attempt failed"),
        "no request went to the stopped member"
    );
    // The same port again (the aborted accept loop frees it shortly).
    let deadline = Instant::now() + PATIENCE;
    let listener = loop {
        match tokio::net::TcpListener::bind(a_addr).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot rebind {a_addr}: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let _again = Checked::on(listener, status);
    d.log_count(&change(a_addr, "down", "up"), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_status_decides_what_passes() {
    let no_content = Checked::start(204).await;
    let redirect = Checked::start(302).await;
    let d = Daemon::start(&simple_config(
        &[no_content.addr(), redirect.addr()],
        &health("http", 100, 1, 1, "expect_status = \"200-204, 206\""),
    ));
    d.log_count(&change(redirect.addr(), "up", "down"), 1).await;
    // The 204 member has been probed well past its fall count by now.
    let seen = no_content.probes.load(Ordering::SeqCst);
    while no_content.probes.load(Ordering::SeqCst) < seen + 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = d.log();
    assert!(
        !log.contains(&format!("member={} from=up", no_content.addr())),
        "{log}"
    );
    for _ in 0..3 {
        let r = get(d.addr("http"), "/").await;
        assert_eq!(
            r.header("x-origin"),
            Some(no_content.addr().to_string().as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_members_down_gives_503_with_retry_after_without_connecting() {
    let a = Checked::start(500).await;
    let b = Checked::start(503).await;
    let d = Daemon::start(&simple_config(
        &[a.addr(), b.addr()],
        &health("http", 100, 2, 1, ""),
    ));
    d.log_count(&change(a.addr(), "up", "down"), 1).await;
    d.log_count(&change(b.addr(), "up", "down"), 1).await;
    for _ in 0..5 {
        let r = get(d.addr("http"), "/").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
        let after: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!(after >= 1, "{after}");
    }
    assert_eq!(a.requests.load(Ordering::SeqCst), 0);
    assert_eq!(b.requests.load(Ordering::SeqCst), 0);
    assert!(!d.log().contains("upstream attempt failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_panic_threshold_the_pool_balances_over_all_members() {
    let a = Checked::start(500).await;
    let b = Checked::start(500).await;
    let c = Checked::start(200).await;
    let d = Daemon::start(&simple_config(
        &[a.addr(), b.addr(), c.addr()],
        &("panic_threshold = 0.5\n".to_string() + &health("http", 100, 1, 1, "")),
    ));
    d.log_count(&change(a.addr(), "up", "down"), 1).await;
    d.log_count(&change(b.addr(), "up", "down"), 1).await;
    // One of three healthy is under half: everyone takes traffic again
    // rather than the survivor taking it all.
    for _ in 0..6 {
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
    }
    assert_eq!(a.requests.load(Ordering::SeqCst), 2);
    assert_eq!(b.requests.load(Ordering::SeqCst), 2);
    assert_eq!(c.requests.load(Ordering::SeqCst), 2);
    d.log_count("below panic_threshold", 1).await;

    // Two of three healthy is above half: the down member is skipped.
    b.set(200);
    d.log_count(&change(b.addr(), "down", "up"), 1).await;
    for _ in 0..6 {
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
    }
    assert_eq!(a.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_stop_when_a_reload_removes_the_pool() {
    let old = Checked::start(200).await;
    let new = Checked::start(200).await;
    let d = Daemon::start(&simple_config(&[old.addr()], &health("http", 50, 1, 1, "")));
    while old.probes.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.write_config(&simple_config(&[new.addr()], &health("http", 50, 1, 1, "")));
    d.signal("HUP");
    d.log_count("config reloaded", 1).await;
    let at_reload = old.probes.load(Ordering::SeqCst);
    // Ten rounds of the new pool's checks later, the old pool's task has
    // had ample time to notice it is gone.
    let seen = new.probes.load(Ordering::SeqCst);
    while new.probes.load(Ordering::SeqCst) < seen + 10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = old.probes.load(Ordering::SeqCst);
    assert!(
        after <= at_reload + 1,
        "old pool still probed: {at_reload} -> {after}"
    );
}
