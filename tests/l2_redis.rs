//! Several sluice instances sharing one Redis: purges published by one
//! instance reach the others (`[cache.purge] fanout = "redis"`), and an
//! instance that lost its subscription empties its memory tier when it
//! subscribes again. Real `redis-server` processes, real sluice processes,
//! one real origin.

mod common;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use http::{Method, Response};

const HOST: &str = "example.com";

/// An origin whose every page may be cached for ten minutes.
async fn cacheable_origin() -> Origin {
    Origin::serve(|req, _| async move {
        Response::builder()
            .header("cache-control", "max-age=600")
            .header("surrogate-key", "shop")
            .body(full(format!("page {}", req.uri().path())))
            .unwrap()
    })
    .await
}

/// A caching route to `origin` with an admin listener, plus `tables`.
fn config(origin: std::net::SocketAddr, tables: &str) -> String {
    admin_route_config(origin, "cache = true", tables)
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

/// Polls `path` until the cache no longer answers it from storage, or
/// panics at the deadline. Each poll that misses refills the cache, so
/// callers look at the first miss only.
async fn until_miss(d: &Daemon, path: &str) {
    let deadline = Instant::now() + PATIENCE;
    while is_hit(&fetch(d, path).await) {
        assert!(Instant::now() < deadline, "{path} is still cached");
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
    let text = config(origin.addr, &fanout_table(&redis.url()));
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

    assert_eq!(metric(a, "sluice_cache_purges_published_total").await, 1.0);
    assert_eq!(metric(c, "sluice_cache_purges_published_total").await, 1.0);
    assert_eq!(metric(b, "sluice_cache_purges_received_total").await, 2.0);
    assert_eq!(
        metric(a, "sluice_cache_purges_received_total").await,
        1.0,
        "its own purge is not applied twice"
    );
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
fn fanout_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let origin = "127.0.0.1:9";
    for (tables, says) in [
        (
            "[cache.purge]\nfanout = \"redis\"\n",
            "needs url or cluster",
        ),
        (
            "[cache.purge]\nfanout = \"gossip\"\nurl = \"redis://127.0.0.1:1\"\n",
            "not a fan-out",
        ),
        (
            "[cache.purge]\nfanout = \"redis\"\nurl = \"http://127.0.0.1:1\"\n",
            "not a Redis URL",
        ),
        (
            "[cache.purge]\nurl = \"redis://127.0.0.1:1\"\n",
            "has no effect without fanout",
        ),
    ] {
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, config(origin.parse().unwrap(), tables)).unwrap();
        let (code, out, err) =
            run_cli(&["--check", "--config", path.to_str().unwrap()], dir.path());
        assert_ne!(code, 0, "{tables}");
        let text = format!("{out}{err}");
        assert!(
            text.contains("cache.purge") && text.contains(says),
            "{tables}: {text}"
        );
    }
}
