//! The admin API of the real daemon: every endpoint, the bearer token
//! (401), unknown paths (404), wrong methods (405), the allow list (403),
//! `/readyz` turning 503 during a drain, and `POST /reload` with a good and
//! a bad config.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

const TOKEN: &str = "t0ken-for-tests";

fn config(app: SocketAddr, admin_extra: &str, route: &str) -> String {
    format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "{route}"
pool = "app"

[pool.app]
servers = [ {{ addr = "{app}" }} ]

[admin]
listen = "127.0.0.1:0"
{admin_extra}
"#
    )
}

fn admin_request(method: Method, path: &str, token: Option<&str>) -> Request<TestBody> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(empty()).unwrap()
}

async fn call(admin: SocketAddr, method: Method, path: &str, token: Option<&str>) -> Reply {
    h1(admin, admin_request(method, path, token)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_with_token_rules() {
    let app = Origin::hello().await;
    let d = Daemon::start(&config(app.addr, &format!("token = \"{TOKEN}\""), "main"));
    let admin = d.addr("admin");
    assert!(d.log().contains("listening listener=admin"), "{}", d.log());

    // Probes need no token.
    let r = call(admin, Method::GET, "/healthz", None).await;
    assert_eq!(r.status, 200);
    let r = call(admin, Method::GET, "/readyz", None).await;
    assert_eq!(r.status, 200, "{r:?}");

    // Everything else does.
    for path in ["/metrics", "/upstreams", "/config", "/nope"] {
        let r = call(admin, Method::GET, path, None).await;
        assert_eq!(r.status, 401, "{path}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        let r = call(admin, Method::GET, path, Some("wrong")).await;
        assert_eq!(r.status, 401, "{path}");
    }
    let r = call(admin, Method::POST, "/reload", None).await;
    assert_eq!(r.status, 401);

    let r = call(admin, Method::GET, "/metrics", Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    assert!(r.text().contains("sluice_build_info"));

    let r = call(admin, Method::GET, "/upstreams", Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let pool = &v["pools"][0];
    assert_eq!(pool["name"], "app");
    assert_eq!(pool["policy"], "round_robin");
    assert_eq!(pool["total"], 1);
    assert_eq!(pool["members"][0]["addr"], app.addr.to_string());
    assert_eq!(pool["members"][0]["state"], "up");

    let r = call(admin, Method::GET, "/config", Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(!text.contains(TOKEN), "{text}");
    assert!(text.contains("token = \"<redacted>\""), "{text}");
    let parsed: toml::Table = text.parse().expect("TOML");
    assert_eq!(parsed["server"]["drain_timeout"].as_str(), Some("30s"));
    assert_eq!(parsed["route"][0]["name"].as_str(), Some("main"));
    assert_eq!(
        parsed["pool"]["app"]["connect_timeout"].as_str(),
        Some("2s")
    );

    // 404 and 405.
    let r = call(admin, Method::GET, "/nope", Some(TOKEN)).await;
    assert_eq!(r.status, 404);
    let r = call(admin, Method::POST, "/metrics", Some(TOKEN)).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = call(admin, Method::GET, "/reload", Some(TOKEN)).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = call(admin, Method::DELETE, "/healthz", None).await;
    assert_eq!(r.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_key_paths_are_redacted() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.issue(dir.path(), "site", &["localhost"]);
    let app = Origin::hello().await;
    let config = tls_admin_config(&cert, &key, app.addr);
    let d = Daemon::start_in(dir, &config);
    let r = call(d.addr("admin"), Method::GET, "/config", None).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(!text.contains(&key.display().to_string()), "{text}");
    assert!(text.contains(&cert.display().to_string()), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_allow_are_refused() {
    let app = Origin::hello().await;
    let d = Daemon::start(&config(app.addr, "allow = [\"10.0.0.0/8\"]", "main"));
    let r = call(d.addr("admin"), Method::GET, "/metrics", None).await;
    assert_eq!(r.status, 403);
    let r = call(d.addr("admin"), Method::GET, "/healthz", None).await;
    assert_eq!(r.status, 403);

    let d = Daemon::start(&config(
        app.addr,
        "allow = [\"10.0.0.0/8\", \"127.0.0.1/32\"]",
        "main",
    ));
    let r = call(d.addr("admin"), Method::GET, "/metrics", None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_applies_or_explains() {
    let app = Origin::hello().await;
    let d = Daemon::start(&config(app.addr, "", "main"));
    let admin = d.addr("admin");

    d.write_config(&config(app.addr, "", "renamed"));
    let r = call(admin, Method::POST, "/reload", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    // The log line is written before the answer, but read by another thread.
    d.log_count("config reloaded", 1).await;
    let r = call(admin, Method::GET, "/config", None).await;
    assert!(r.text().contains("name = \"renamed\""), "{}", r.text());

    // A refused config answers with the validation errors and keeps serving.
    d.write_config(&config(app.addr, "", "main").replace("servers = [", "polcy = 1\nservers = ["));
    let r = call(admin, Method::POST, "/reload", None).await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.text().contains("pool.app"), "{}", r.text());
    assert!(r.text().contains("polcy"), "{}", r.text());
    assert_eq!(get(d.addr("http"), "/").await.status, 200);

    // Changing the admin address needs a restart.
    d.write_config(&config(app.addr, "", "main").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:1\"",
    ));
    let r = call(admin, Method::POST, "/reload", None).await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.text().contains("[admin] listen"), "{}", r.text());

    let m = call(admin, Method::GET, "/metrics", None).await.text();
    assert!(
        m.contains("sluice_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("sluice_config_reloads_total{result=\"error\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_draining() {
    let (entered_tx, entered_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let slot = Arc::new(Mutex::new(Some((entered_tx, release_rx))));
    let app = Origin::serve(move |req, _| {
        let held = slot.lock().unwrap().take();
        async move {
            let _ = req.into_body().collect().await;
            if let Some((entered, release)) = held {
                let _ = entered.send(());
                let _ = release.await;
            }
            Response::new(full("done"))
        }
    })
    .await;
    let mut d = Daemon::start(&config(app.addr, "", "main"));
    let (http, admin) = (d.addr("http"), d.addr("admin"));
    assert_eq!(call(admin, Method::GET, "/readyz", None).await.status, 200);

    let held = tokio::spawn(async move { get(http, "/").await });
    entered_rx.await.unwrap();
    d.signal("TERM");
    d.wait_for_log("stopping");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = call(admin, Method::GET, "/readyz", None).await;
        if r.status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "readyz stayed {}", r.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still alive while draining.
    assert_eq!(call(admin, Method::GET, "/healthz", None).await.status, 200);
    release_tx.send(()).unwrap();
    let r = held.await.unwrap();
    assert_eq!(r.status, 200);
    assert!(d.wait_exit().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_cache_and_compression_keys_and_reads_back() {
    let app = Origin::hello().await;
    let text = config(app.addr, "", "main").replace(
        "pool = \"app\"",
        "pool = \"app\"\ncache = true\ncompress = true\ncache_key_headers = [\"x-tenant\"]\ncache_key_ignore_params = [\"utm_source\"]",
    ) + "\n[cache]\nmax_size = \"32MiB\"\nstore_set_cookie = true\npurge_allow = [\"127.0.0.1\"]\nserve_stale_on_error = \"90s\"\n\n[compression]\nalgorithms = [\"gzip\", \"br\"]\nlevel = \"best\"\nmin_size = 2048\n";
    let d = Daemon::start(&text);
    let shown = call(d.addr("admin"), Method::GET, "/config", None)
        .await
        .text();
    for expected in [
        "cache = true",
        "compress = true",
        "cache_key_headers = [\"x-tenant\"]",
        "cache_key_ignore_params = [\"utm_source\"]",
        "max_size = 33554432",
        "store_set_cookie = true",
        "purge_allow = [\"127.0.0.1/32\"]",
        "serve_stale_on_error = \"90s\"",
        "algorithms = [\"gzip\", \"br\"]",
        "level = \"best\"",
        "min_size = 2048",
    ] {
        assert!(shown.contains(expected), "{expected} in\n{shown}");
    }
    // What /config shows is itself a valid config.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shown.toml");
    std::fs::write(&path, &shown).unwrap();
    let (code, out, err) = run_cli(&["--check", "--config", path.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{out}{err}\n{shown}");
}
