//! Passive ejection through the real daemon: a member that fails
//! `consecutive_failures` requests in a row is taken out for `eject_for`,
//! doubling on each ejection in a row; at most `max_ejected_percent` of the
//! pool is out at once; 5xx responses count only when configured.

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn outlier(settings: &str) -> String {
    format!("[pool.app.outlier]\n{settings}\n")
}

fn attempts_on(log: &str, member: SocketAddr) -> usize {
    let needle = format!("member={member}");
    log.lines()
        .filter(|l| l.contains("upstream attempt failed") && l.contains(&needle))
        .count()
}

fn ejected(member: SocketAddr) -> String {
    format!("member={member} from=up to=ejected")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_eject_a_member() {
    let dead = dead_addr();
    let live = Origin::hello().await;
    let d = Daemon::start(&simple_config(
        &[dead, live.addr],
        &outlier("consecutive_failures = 2\neject_for = \"60s\""),
    ));
    // The dead member is first for every other request.
    for _ in 0..4 {
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
    }
    let log = d.log_count(&ejected(dead), 1).await;
    assert!(log.contains("eject_for=60s"), "{log}");
    for _ in 0..10 {
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
    }
    let log = d.log();
    assert_eq!(
        attempts_on(&log, dead),
        2,
        "no attempt on an ejected member:\n{log}"
    );
    assert_eq!(live.hits(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_ejections_double_the_time() {
    let dead = dead_addr();
    let live = Origin::hello().await;
    let d = Daemon::start(&simple_config(
        &[dead, live.addr],
        &outlier("consecutive_failures = 1\neject_for = \"100ms\"\nmax_eject_for = \"300ms\""),
    ));
    // Keep traffic flowing: each ejection ends, the member is probed back
    // in by a request, fails again and is ejected for longer.
    let deadline = Instant::now() + PATIENCE;
    while d.log().matches(&ejected(dead)).count() < 3 {
        assert!(Instant::now() < deadline, "{}", d.log());
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let log = d.log();
    let times: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&ejected(dead)))
        .map(|l| l.split("eject_for=").nth(1).unwrap_or("").trim())
        .collect();
    assert_eq!(times, ["100ms", "200ms", "300ms"], "{log}");
    assert!(
        log.contains(&format!("member={dead} from=ejected to=up")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_ejected_percent_of_the_pool_is_ejected() {
    let (a, b) = (dead_addr(), dead_addr());
    let d = Daemon::start(&simple_config(
        &[a, b],
        &outlier("consecutive_failures = 1\nmax_ejected_percent = 50\neject_for = \"60s\""),
    ));
    for _ in 0..6 {
        assert_eq!(get(d.addr("http"), "/").await.status, 502);
    }
    // Log lines may trail the responses: wait for them rather than race.
    let log = d.wait_for_log("to=ejected");
    let kept = if log.contains(&ejected(a)) { b } else { a };
    // The member that stayed in is still tried by every request.
    let log = d.wait_for_log_count(
        &format!("upstream attempt failed route=main pool=app member={kept}"),
        6,
    );
    let ejections = log.matches("to=ejected").count();
    assert_eq!(ejections, 1, "{log}");
    assert!(attempts_on(&log, kept) >= 6, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_xx_counts_only_when_configured() {
    let failing = answering(500).await;
    let live = Origin::hello().await;
    let d = Daemon::start(&simple_config(
        &[failing.addr, live.addr],
        &outlier("consecutive_failures = 2"),
    ));
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get(d.addr("http"), "/").await.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 500, 500, 500, 500]);
    assert!(!d.log().contains("to=ejected"));
    drop(d);

    let d = Daemon::start(&simple_config(
        &[failing.addr, live.addr],
        &outlier(
            "consecutive_failures = 2\nfailures = [\"connect\", \"5xx\"]\neject_for = \"60s\"",
        ),
    ));
    for _ in 0..4 {
        get(d.addr("http"), "/").await;
    }
    d.log_count(&ejected(failing.addr), 1).await;
    let before = failing.hits();
    for _ in 0..6 {
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
    }
    assert_eq!(failing.hits(), before);
}
