//! Several sluice instances sharing one Redis: the Redis tier
//! (`[cache.l2] kind = "redis"`) makes a page fetched through one instance a
//! hit on the others; purges published by one instance reach the others
//! (`[cache.purge] fanout`), and an instance that lost its subscription
//! empties its memory tier when it subscribes again; Redis stopped, paused
//! or holding garbage costs no client an error. A three-node Redis Cluster
//! does the same. Real `redis-server` processes, real sluice processes, one
//! real origin.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{Redis, RedisCluster};
use common::*;
use http::{Method, Response};

const HOST: &str = "example.com";

/// An origin whose every page may be cached for ten minutes; each answer
/// carries its number in `x-answer`, so that a copy can be told from a
/// newer one.
async fn cacheable_origin() -> Origin {
    let answers = Arc::new(AtomicUsize::new(0));
    Origin::serve(move |req, _| {
        let n = answers.fetch_add(1, Ordering::SeqCst);
        async move {
            Response::builder()
                .header("cache-control", "max-age=600")
                .header("x-answer", n.to_string())
                .header("surrogate-key", "shop")
                .body(full(format!("page {}", req.uri().path())))
                .unwrap()
        }
    })
    .await
}

/// A caching route to `origin` with an admin listener, plus `tables`.
fn config(origin: std::net::SocketAddr, tables: &str) -> String {
    admin_route_config(origin, "cache = true", tables)
}

/// A Redis tier on `endpoint` (`url = "..."` or `cluster = [...]`); the
/// purge fan-out comes with it.
fn tier_table(endpoint: &str) -> String {
    format!("[cache.l2]\nkind = \"redis\"\n{endpoint}\ntimeout = \"200ms\"\n")
}

fn fanout_table(redis_url: &str) -> String {
    format!("[cache.purge]\nfanout = \"redis\"\nurl = \"{redis_url}\"\n")
}

async fn fetch(d: &Daemon, path: &str) -> Reply {
    h1(d.addr("http"), request(Method::GET, path, HOST, empty())).await
}

async fn admin_post(d: &Daemon, path: &str) -> Reply {
    h1(
        d.addr("admin"),
        request(Method::POST, path, "admin", empty()),
    )
    .await
}

/// Polls `path` until its answer is not the copy numbered `old`.
async fn until_new_answer(d: &Daemon, path: &str, old: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = fetch(d, path).await;
        if r.header("x-answer").is_some_and(|n| n != old) {
            return;
        }
        assert!(Instant::now() < deadline, "{path}: still answer {old}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `keys` (Redis's count of keys) reaches `n`.
fn until_keys(keys: impl Fn() -> u64, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    while keys() < n {
        assert!(Instant::now() < deadline, "Redis never held {n} keys");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn from_l2(r: &Reply) -> bool {
    is_hit(r)
        && r.header("cache-status")
            .is_some_and(|s| s.contains("detail=l2"))
}

/// Polls `path` until the cache no longer answers it from storage, or
/// panics at the deadline. Each poll that misses refills the cache, so
/// callers look at the first miss only.
async fn until_miss(d: &Daemon, path: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = fetch(d, path).await;
        if !is_hit(&r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} is still cached: {:?}",
            r.header("cache-status")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metric(d: &Daemon, name: &str) -> f64 {
    let (_, samples) = scrape(d.addr("admin")).await;
    value(&samples, name, &[])
}

#[tokio::test]
async fn a_purge_sent_to_one_instance_reaches_the_others() {
    let redis = Redis::start();
    let origin = cacheable_origin().await;
    let text = config(
        origin.addr,
        &format!(
            "[cache]\npurge_allow = [\"127.0.0.1/32\"]\n{}",
            fanout_table(&redis.url())
        ),
    );
    let instances: Vec<Daemon> = (0..3).map(|_| Daemon::start(&text)).collect();
    for d in &instances {
        d.wait_for_log("purge fan-out subscribed");
        fetch(d, "/a").await;
        fetch(d, "/b").await;
        assert!(is_hit(&fetch(d, "/a").await));
    }
    let (a, b, c) = (&instances[0], &instances[1], &instances[2]);

    let url = admin_post(c, "/cache/purge?url=http%3A%2F%2Fexample.com%2Fa").await;
    assert_eq!(url.status, 200);
    assert_eq!(url.text().trim(), r#"{"purged":1,"published":true}"#);
    assert!(!is_hit(&fetch(c, "/a").await), "purged locally at once");
    until_miss(a, "/a").await;
    until_miss(b, "/a").await;
    assert!(is_hit(&fetch(b, "/b").await), "other pages stay");

    let tag = admin_post(a, "/cache/purge?tag=shop").await;
    assert_eq!(tag.text().trim(), r#"{"purged":2,"published":true}"#);
    until_miss(b, "/b").await;
    until_miss(c, "/b").await;

    // A PURGE request on a proxy listener goes out too.
    fetch(a, "/b").await;
    assert!(is_hit(&fetch(a, "/b").await));
    let method = Method::from_bytes(b"PURGE").unwrap();
    let purge = h1(b.addr("http"), request(method, "/b", HOST, empty())).await;
    assert_eq!(purge.text().trim(), r#"{"purged":1,"published":true}"#);
    until_miss(a, "/b").await;

    // Each published one purge and applied the two others', not its own.
    for d in [a, b, c] {
        assert_eq!(metric(d, "sluice_cache_purges_published_total").await, 1.0);
        let received = scrape_until(d.addr("admin"), |s| {
            value(s, "sluice_cache_purges_received_total", &[]) >= 2.0
        })
        .await
        .1;
        assert_eq!(
            value(&received, "sluice_cache_purges_received_total", &[]),
            2.0
        );
    }
}

#[tokio::test]
async fn an_instance_that_lost_its_subscription_empties_its_memory() {
    let mut redis = Redis::start();
    let origin = cacheable_origin().await;
    let d = Daemon::start(&config(origin.addr, &fanout_table(&redis.url())));
    d.wait_for_log("purge fan-out subscribed");
    fetch(&d, "/kept").await;
    assert!(is_hit(&fetch(&d, "/kept").await));

    redis.stop();
    d.wait_for_log("purge fan-out subscription lost");
    // The purge cannot go out: said so, and applied here all the same.
    fetch(&d, "/other").await;
    let purge = admin_post(&d, "/cache/purge?url=http%3A%2F%2Fexample.com%2Fother").await;
    assert_eq!(purge.text().trim(), r#"{"purged":1,"published":false}"#);
    assert!(
        is_hit(&fetch(&d, "/kept").await),
        "serving on without Redis"
    );

    redis.restart();
    d.wait_for_log("emptied the memory tier");
    assert!(!is_hit(&fetch(&d, "/kept").await), "dropped on resubscribe");
    assert_eq!(
        metric(&d, "sluice_cache_purge_resubscribe_flushes_total").await,
        1.0
    );
}

#[test]
fn redis_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let origin = "127.0.0.1:9";
    for (tables, key, says) in [
        (
            "[cache.purge]\nfanout = \"redis\"\n",
            "cache.purge.fanout",
            "needs url or cluster",
        ),
        (
            "[cache.purge]\nfanout = \"gossip\"\nurl = \"redis://127.0.0.1:1\"\n",
            "cache.purge.fanout",
            "not a fan-out",
        ),
        (
            "[cache.purge]\nfanout = \"redis\"\nurl = \"http://127.0.0.1:1\"\n",
            "cache.purge.url",
            "not a Redis URL",
        ),
        (
            "[cache.purge]\nurl = \"redis://127.0.0.1:1\"\n",
            "cache.purge.url",
            "has no effect without fanout",
        ),
        (
            "[cache.l2]\nkind = \"redis\"\n",
            "cache.l2.url",
            "needs url or cluster",
        ),
        (
            "[cache.l2]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\npath = \"x\"\n",
            "cache.l2.path",
            "belongs to kind = \"disk\"",
        ),
        (
            "[cache.l2]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\ncluster = [\"redis://127.0.0.1:2\"]\n",
            "cache.l2.cluster",
            "either url or cluster",
        ),
        (
            "[cache.l2]\nkind = \"redis\"\ncluster = [\"redis://127.0.0.1:2\"]\ntimeout = \"0s\"\n",
            "cache.l2.timeout",
            "more than 0s",
        ),
    ] {
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, config(origin.parse().unwrap(), tables)).unwrap();
        let (code, out, err) =
            run_cli(&["--check", "--config", path.to_str().unwrap()], dir.path());
        assert_ne!(code, 0, "{tables}");
        let text = format!("{out}{err}");
        assert!(text.contains(key) && text.contains(says), "{tables}: {text}");
    }
}

/// With a Redis tier and no `[cache.purge]`, purges fan out through the
/// tier's Redis; `fanout = "none"` turns that off. Nothing needs Redis to
/// be up at start, and `/config` hides the password.
#[tokio::test]
async fn the_redis_tier_brings_the_fanout_along() {
    let origin = cacheable_origin().await;
    let dead = "redis://:s3cret@127.0.0.1:1/0";
    let on = Daemon::start(&config(
        origin.addr,
        &tier_table(&format!("url = \"{dead}\"")),
    ));
    on.wait_for_log("cache tier cannot connect to Redis yet");
    let effective = get(on.addr("admin"), "/config").await.text();
    assert!(!effective.contains("s3cret"), "{effective}");
    let purge_table = &effective[effective.find("[cache.purge]").expect("[cache.purge]")..];
    assert!(
        purge_table.contains("fanout = \"redis\"")
            && purge_table.contains("redis://:<redacted>@127.0.0.1:1/0"),
        "{effective}"
    );
    // Served without Redis, and the purge answer says it did not go out.
    assert_eq!(fetch(&on, "/x").await.status, 200);
    let purge = admin_post(&on, "/cache/purge?all=true").await;
    assert!(
        purge.text().contains("\"published\":false"),
        "{}",
        purge.text()
    );

    let off = Daemon::start(&config(
        origin.addr,
        &format!(
            "{}\n[cache.purge]\nfanout = \"none\"\n",
            tier_table(&format!("url = \"{dead}\""))
        ),
    ));
    let purge = admin_post(&off, "/cache/purge?all=true").await;
    assert!(!purge.text().contains("published"), "{}", purge.text());
}

/// One page fetched through A, then asked of B and C: each answers it from
/// Redis (`detail=l2`), and the origin saw one request. A purge sent to C
/// is gone from A and B, and from Redis.
async fn shared_then_purged(instances: &[Daemon], origin: &Origin, keys: impl Fn() -> u64) {
    let (a, b, c) = (&instances[0], &instances[1], &instances[2]);
    let first = fetch(a, "/page").await;
    assert_eq!(
        (first.status.as_u16(), first.text()),
        (200, "page /page".into())
    );
    assert!(!is_hit(&first));
    let stored = first.header("x-answer").expect("x-answer").to_string();
    // The entry and its tag set, stored off the request path.
    until_keys(&keys, 2);
    for d in [b, c] {
        let r = fetch(d, "/page").await;
        assert!(from_l2(&r), "{:?}", r.header("cache-status"));
        assert_eq!(r.text(), "page /page");
        assert!(r.header("age").is_some());
        assert!(is_hit(&fetch(d, "/page").await), "promoted to memory");
    }
    assert_eq!(origin.hits(), 1, "one origin request for three instances");

    let purge = admin_post(c, "/cache/purge?url=http%3A%2F%2Fexample.com%2Fpage").await;
    let answer = purge.text();
    assert!(
        answer.contains("\"purged\":1")
            && answer.contains("\"l2_purged\":1")
            && answer.contains("\"published\":true"),
        "{answer}"
    );
    // Gone everywhere: the next answer is a new one from the origin (the
    // first instance to ask shares it through Redis again).
    for d in [a, b, c] {
        until_new_answer(d, "/page", &stored).await;
    }
    // The new copy and the tag set.
    until_keys(&keys, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_fetched_through_one_instance_is_a_hit_on_the_others() {
    let redis = Redis::start();
    let origin = cacheable_origin().await;
    let text = config(
        origin.addr,
        &tier_table(&format!("url = \"{}\"", redis.url())),
    );
    let instances: Vec<Daemon> = (0..3).map(|_| Daemon::start(&text)).collect();
    for d in &instances {
        d.wait_for_log("purge fan-out subscribed");
        d.wait_for_log("cache tier connected to Redis");
    }
    shared_then_purged(&instances, &origin, || redis.dbsize()).await;
    let (_, samples) = scrape(instances[1].addr("admin")).await;
    assert!(
        value(
            &samples,
            "sluice_cache_tier_lookups_total",
            &[("tier", "redis"), ("result", "hit")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &samples,
            "sluice_cache_tier_circuit_open",
            &[("tier", "redis")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_serves_as_the_tier() {
    let cluster = RedisCluster::start(3);
    let origin = cacheable_origin().await;
    let text = config(
        origin.addr,
        &tier_table(&format!("cluster = {}", cluster.toml_list())),
    );
    let instances: Vec<Daemon> = (0..3).map(|_| Daemon::start(&text)).collect();
    for d in &instances {
        d.wait_for_log("purge fan-out subscribed");
        d.wait_for_log("cache tier connected to Redis");
    }
    shared_then_purged(&instances, &origin, || cluster.dbsize()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_paused_or_holding_garbage_costs_no_client_an_error() {
    let mut redis = Redis::start();
    let origin = cacheable_origin().await;
    let text = config(
        origin.addr,
        &tier_table(&format!("url = \"{}\"", redis.url())),
    );
    let a = Daemon::start(&text);
    let b = Daemon::start(&text);
    a.wait_for_log("cache tier connected to Redis");
    b.wait_for_log("cache tier connected to Redis");

    // Garbage under a page's key is a miss (and is deleted), never served.
    redis.command(&["SET", "sluice:http://example.com/garbage", "not a record"]);
    let r = fetch(&a, "/garbage").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "page /garbage".into()));
    assert!(!is_hit(&r));

    // Stopped while requests flow: every request is answered.
    redis.stop();
    for i in 0..40 {
        let path = format!("/down/{i}");
        for d in [&a, &b] {
            let r = fetch(d, &path).await;
            assert_eq!((r.status.as_u16(), r.text()), (200, format!("page {path}")));
        }
    }
    let (_, samples) = scrape(a.addr("admin")).await;
    assert_eq!(
        value(
            &samples,
            "sluice_cache_tier_circuit_open",
            &[("tier", "redis")]
        ),
        1.0,
        "repeated failures open the circuit"
    );

    // Restarted: filling again, and shared again. Each instance finds out
    // on its own (a probe a second while its circuit is open): new pages
    // until one stored through A is served to B from Redis.
    redis.restart();
    let deadline = Instant::now() + PATIENCE;
    for i in 0.. {
        let path = format!("/back/{i}");
        assert_eq!(fetch(&a, &path).await.status, 200);
        let key = format!("sluice:http://example.com{path}");
        let stored = Instant::now() + Duration::from_millis(500);
        while redis.command(&["EXISTS", &key]).trim() != ":1" && Instant::now() < stored {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = fetch(&b, &path).await;
        assert_eq!(r.status, 200);
        if from_l2(&r) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tier never filled and shared again"
        );
    }

    // Paused (DEBUG SLEEP): requests go on, answered by memory and origin.
    let pause = common::redis::send_command(redis.port, &["DEBUG", "SLEEP", "2"])
        .expect("send DEBUG SLEEP");
    for i in 0..10 {
        let path = format!("/paused/{i}");
        for d in [&a, &b] {
            let r = fetch(d, &path).await;
            assert_eq!((r.status.as_u16(), r.text()), (200, format!("page {path}")));
        }
    }
    let slept = common::redis::read_reply(pause).expect("DEBUG SLEEP answers");
    assert!(slept.starts_with("+OK"), "{slept}");
}

/// A soft purge rewrites the copy in Redis as stale (keeping it): an
/// instance that reads it from there does not serve it as fresh, and goes
/// back to the origin.
#[tokio::test]
async fn a_soft_purge_leaves_the_redis_copy_stale() {
    let redis = Redis::start();
    let origin = cacheable_origin().await;
    let text = config(
        origin.addr,
        &tier_table(&format!("url = \"{}\"", redis.url())),
    );
    let a = Daemon::start(&text);
    a.wait_for_log("cache tier connected to Redis");
    fetch(&a, "/soft").await;
    until_keys(|| redis.dbsize(), 2);

    let purge = admin_post(
        &a,
        "/cache/purge?url=http%3A%2F%2Fexample.com%2Fsoft&soft=true",
    )
    .await;
    let answer = purge.text();
    assert!(
        answer.contains("\"soft\":true") && answer.contains("\"l2_purged\":1"),
        "{answer}"
    );
    assert_eq!(redis.dbsize(), 2, "kept, not removed");

    let b = Daemon::start(&text);
    b.wait_for_log("cache tier connected to Redis");
    let r = fetch(&b, "/soft").await;
    assert_eq!(r.status, 200);
    assert!(!is_hit(&r), "{:?}", r.header("cache-status"));
    assert_eq!(origin.hits(), 2, "the stale copy was not served as fresh");
}
