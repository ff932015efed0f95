//! The disk tier (`[cache.l2] kind = "disk"`): entries survive `kill -9`
//! and a restart, with `Age` counting the downtime; a truncated or altered
//! record is a miss, never a short body; objects too large for memory go
//! to and from disk as streams; purges reach the disk.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::exposition::{scrape_until, value, Sample};
use common::*;
use http::{Method, Request, Response};
use hyper::body::Incoming;

const HOST: &str = "example.com";

/// One proxy listener, a caching route and an admin listener, with the
/// disk tier in `l2/` beside the config file.
fn config(origin: std::net::SocketAddr, cache: &str, l2: &str) -> String {
    admin_route_config(
        origin,
        "cache = true",
        &format!("[cache]\n{cache}\n\n[cache.l2]\nkind = \"disk\"\npath = \"l2\"\n{l2}\n"),
    )
}

/// A body whose every byte depends on its position.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// An origin answering every path with `pattern(len)` (`len` from the
/// path's last segment), fresh for ten minutes, tagged with the path's
/// first segment.
async fn origin() -> Origin {
    Origin::serve(|req: Request<Incoming>, _| async move {
        let path = req.uri().path().to_string();
        let len: usize = path
            .rsplit('/')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10);
        let tag = path.split('/').nth(1).unwrap_or("").to_string();
        Response::builder()
            .header("cache-control", "max-age=600")
            .header("surrogate-key", tag)
            .body(full(pattern(len)))
            .unwrap()
    })
    .await
}

async fn fetch(d: &Daemon, path: &str) -> Reply {
    h1(d.addr("http"), request(Method::GET, path, HOST, empty())).await
}

fn status_of(r: &Reply) -> &str {
    r.header("cache-status").unwrap_or("")
}

/// Waits until the disk tier holds `n` objects (stores are off the
/// request path).
async fn disk_objects(d: &Daemon, n: f64) -> Vec<Sample> {
    let labels = [("tier", "disk")];
    let (text, samples) = scrape_until(d.addr("admin"), |s| {
        value(s, "sluice_cache_tier_objects", &labels) == n
    })
    .await;
    assert_eq!(
        value(&samples, "sluice_cache_tier_objects", &labels),
        n,
        "{text}"
    );
    samples
}

/// Kills the daemon with SIGKILL and starts a new one on the same
/// directory and config.
fn kill_and_restart(mut d: Daemon, config: &str) -> Daemon {
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    d.signal("KILL");
    d.wait_exit();
    drop(d);
    Daemon::start_in(dir, config)
}

/// The record files of the disk tier.
fn records(d: &Daemon) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(d.dir.path().join("l2/v1")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files
}

fn only_record(d: &Daemon) -> PathBuf {
    let files = records(d);
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

fn age(r: &Reply) -> u64 {
    r.header("age").and_then(|a| a.parse().ok()).expect("Age")
}

#[tokio::test]
async fn a_page_cached_before_kill_9_is_a_hit_after_restart_counting_the_downtime() {
    let o = origin().await;
    let cfg = config(o.addr, "", "");
    let d = Daemon::start(&cfg);
    let first = fetch(&d, "/page/1000").await;
    assert_eq!(first.body, pattern(1000));
    let stored = Instant::now();
    disk_objects(&d, 1.0).await;

    // The downtime is what Age must count: two seconds of it.
    let mut d = d;
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    d.signal("KILL");
    d.wait_exit();
    drop(d);
    std::thread::sleep(Duration::from_secs(2));
    let d = Daemon::start_in(dir, &cfg);

    let after = fetch(&d, "/page/1000").await;
    assert_eq!(after.status, 200);
    assert_eq!(after.body, pattern(1000));
    assert!(
        status_of(&after).starts_with("sluice; hit") && status_of(&after).contains("detail=l2"),
        "{}",
        status_of(&after)
    );
    let downtime = stored.elapsed().as_secs();
    assert!(
        age(&after) >= downtime.max(2),
        "Age {} after {downtime}s",
        age(&after)
    );
    assert_eq!(o.hits(), 1, "answered from disk, not the origin");

    // Promoted: the next hit is memory's.
    let again = fetch(&d, "/page/1000").await;
    assert!(
        is_hit(&again) && !status_of(&again).contains("l2"),
        "{}",
        status_of(&again)
    );
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn vary_variants_come_back_from_disk_each_to_its_own_requests() {
    let o = Origin::serve(|req: Request<Incoming>, _| async move {
        let lang = req
            .headers()
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        Response::builder()
            .header("cache-control", "max-age=600")
            .header("vary", "accept-language")
            .body(full(format!("page in {lang}")))
            .unwrap()
    })
    .await;
    let cfg = config(o.addr, "", "");
    let d = Daemon::start(&cfg);
    let ask = |d: &Daemon, lang: &'static str| {
        let addr = d.addr("http");
        async move {
            h1(
                addr,
                request_with_headers(Method::GET, "/v", HOST, &[("accept-language", lang)]),
            )
            .await
        }
    };
    ask(&d, "en").await;
    ask(&d, "fr").await;
    // Two variants and the Vary marker under the URL.
    disk_objects(&d, 3.0).await;
    let d = kill_and_restart(d, &cfg);
    for lang in ["fr", "en"] {
        let r = ask(&d, lang).await;
        assert_eq!(r.text(), format!("page in {lang}"));
        assert!(
            status_of(&r).contains("detail=l2"),
            "{lang}: {}",
            status_of(&r)
        );
    }
    assert_eq!(o.hits(), 2);
    let other = ask(&d, "de").await;
    assert_eq!(other.text(), "page in de");
    assert_eq!(o.hits(), 3, "a variant not stored goes to the origin");
}

#[tokio::test]
async fn a_truncated_or_altered_record_is_a_miss_never_a_short_body() {
    let o = origin().await;
    let size = 200_000;
    let path = format!("/t/{size}");
    let cfg = config(o.addr, "", "");
    let d = Daemon::start(&cfg);
    fetch(&d, &path).await;
    disk_objects(&d, 1.0).await;

    // Truncated while sluice was down: removed when the index is rebuilt.
    let file = only_record(&d);
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let d = kill_and_restart(d, &cfg);
    d.wait_for_log("disk cache indexed");
    assert!(!file.exists(), "a truncated record is removed at start");
    let miss = fetch(&d, &path).await;
    assert!(!is_hit(&miss), "{}", status_of(&miss));
    assert_eq!(miss.body, pattern(size));
    assert_eq!(o.hits(), 2);
    disk_objects(&d, 1.0).await;

    // Altered under a running sluice (memory emptied by a restart first).
    let d = kill_and_restart(d, &cfg);
    d.wait_for_log("disk cache indexed");
    let file = only_record(&d);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let miss = fetch(&d, &path).await;
    assert!(!is_hit(&miss), "{}", status_of(&miss));
    assert_eq!(miss.body, pattern(size), "the whole body, from the origin");
    assert_eq!(o.hits(), 3);
    let (_, samples) = scrape_until(d.addr("admin"), |s| {
        value(
            s,
            "sluice_cache_tier_errors_total",
            &[("tier", "disk"), ("reason", "checksum")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        value(
            &samples,
            "sluice_cache_tier_errors_total",
            &[("tier", "disk"), ("reason", "checksum")]
        ),
        1.0
    );
}

#[tokio::test]
async fn an_object_too_large_for_memory_goes_to_disk_and_back_as_a_stream() {
    const SIZE: usize = 40 << 20;
    let o = origin().await;
    let cfg = config(
        o.addr,
        "max_object_size = \"1MiB\"\nmax_fill_memory = \"4MiB\"",
        "max_object_size = \"64MiB\"",
    );
    let d = Daemon::start(&cfg);
    let path = format!("/big/{SIZE}");
    let baseline = d.rss_bytes();
    let first = fetch(&d, &path).await;
    assert_eq!(first.body.len(), SIZE);
    assert!(first.body == pattern(SIZE));
    let samples = disk_objects(&d, 1.0).await;
    assert_eq!(
        value(&samples, "sluice_cache_tier_objects", &[("tier", "memory")]),
        0.0
    );

    let hit = fetch(&d, &path).await;
    assert!(status_of(&hit).contains("detail=l2"), "{}", status_of(&hit));
    assert_eq!(
        hit.header("content-length"),
        Some(SIZE.to_string().as_str())
    );
    assert!(hit.body == pattern(SIZE), "the body read back from disk");
    assert_eq!(o.hits(), 1);

    // A range, read from the blocks that hold it.
    let ranged = h1(
        d.addr("http"),
        request_with_headers(
            Method::GET,
            &path,
            HOST,
            &[("range", "bytes=1000000-1199999")],
        ),
    )
    .await;
    assert_eq!(ranged.status, 206);
    assert!(ranged.body[..] == pattern(SIZE)[1_000_000..1_200_000]);
    assert_eq!(o.hits(), 1);

    // Never held whole: the process grew by far less than the object.
    let grown = d.rss_bytes().saturating_sub(baseline);
    assert!(grown < (SIZE / 2) as u64, "RSS grew by {grown} bytes");
}

#[tokio::test]
async fn purges_by_url_prefix_tag_and_all_reach_the_disk() {
    let o = origin().await;
    let cfg = config(o.addr, "", "");
    let d = Daemon::start(&cfg);
    for p in ["/a/10", "/b/11", "/c/12", "/d/13"] {
        fetch(&d, p).await;
    }
    disk_objects(&d, 4.0).await;
    for (query, left) in [
        ("url=http://example.com/a/10", 3.0),
        ("prefix=http://example.com/b/", 2.0),
        ("tag=c", 1.0),
        ("all=true", 0.0),
    ] {
        let answer = admin_post(&d, &format!("/cache/purge?{query}")).await;
        assert!(
            answer.text().contains("\"purged\":1,\"l2_purged\":")
                && !answer.text().contains("\"l2_purged\":0"),
            "{query}: {}",
            answer.text()
        );
        disk_objects(&d, left).await;
    }
    // Nothing comes back after a restart either.
    let d = kill_and_restart(d, &cfg);
    d.wait_for_log("disk cache indexed");
    let before = o.hits();
    let r = fetch(&d, "/a/10").await;
    assert!(!is_hit(&r), "{}", status_of(&r));
    assert_eq!(o.hits(), before + 1);
}

#[tokio::test]
async fn a_soft_purge_leaves_disk_entries_stale_not_gone() {
    let o = origin().await;
    let cfg = config(o.addr, "", "");
    let d = Daemon::start(&cfg);
    fetch(&d, "/s/10").await;
    disk_objects(&d, 1.0).await;
    let answer = admin_post(&d, "/cache/purge?url=http://example.com/s/10&soft=true").await;
    assert!(
        answer.text().contains("\"l2_purged\":1"),
        "{}",
        answer.text()
    );
    let d = kill_and_restart(d, &cfg);
    d.wait_for_log("disk cache indexed");
    disk_objects(&d, 1.0).await;
    // Stale: revalidated with the origin, not served as a hit.
    let r = fetch(&d, "/s/10").await;
    assert!(!is_hit(&r), "{}", status_of(&r));
    assert_eq!(o.hits(), 2);
}
