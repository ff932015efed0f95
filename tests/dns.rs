//! Servers by name through the real daemon: `addr = "localhost:PORT"` is
//! resolved at start (every address a member), a name that does not
//! resolve is a config error, and a reload follows a name to a new port.
//! Draining on disappearance from DNS is unit-tested in `upstream::dns`.

mod common;
use common::*;

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// An origin on `localhost:PORT`: 127.0.0.1, and ::1 on the same port when
/// the machine has IPv6 loopback, since `localhost` may resolve to both.
async fn on_localhost() -> (u16, Vec<Origin>) {
    let v4 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = v4.local_addr().unwrap().port();
    let mut origins = vec![serve(v4)];
    if let Ok(v6) = TcpListener::bind(SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port))).await {
        origins.push(serve(v6));
    }
    (port, origins)
}

fn serve(l: TcpListener) -> Origin {
    Origin::serve_on(l, |req, addr| async move {
        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
        http::Response::builder()
            .header("x-origin", addr.to_string())
            .body(full(format!("origin {}", addr.port())))
            .unwrap()
    })
}

fn config(server: &str) -> String {
    format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
pool = "app"

[pool.app]
servers = [ {{ addr = "{server}" }} ]
resolve_interval = "100ms"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_name_is_resolved_at_start() {
    let (port, origins) = on_localhost().await;
    let d = Daemon::start(&config(&format!("localhost:{port}")));
    for _ in 0..4 {
        let r = get(d.addr("http"), "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), format!("origin {port}"));
    }
    assert_eq!(origins.iter().map(Origin::hits).sum::<usize>(), 4);
}

#[test]
fn a_name_that_does_not_resolve_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config("no-such-host.invalid:8080")).unwrap();
    let (code, _, err) = run_cli(&["--check", "--config", path.to_str().unwrap()], dir.path());
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("pool.app.servers[0].addr"), "{err}");
    assert!(err.contains("cannot resolve"), "{err}");
    std::fs::write(&path, config("bad name:8080")).unwrap();
    let (code, _, err) = run_cli(&["--check", "--config", path.to_str().unwrap()], dir.path());
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("pool.app.servers[0].addr"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_follows_a_name_to_another_port() {
    let (first, _a) = on_localhost().await;
    let (second, _b) = on_localhost().await;
    let d = Daemon::start(&config(&format!("localhost:{first}")));
    assert_eq!(
        get(d.addr("http"), "/").await.text(),
        format!("origin {first}")
    );
    d.write_config(&config(&format!("localhost:{second}")));
    d.signal("HUP");
    d.log_count("config reloaded", 1).await;
    for _ in 0..3 {
        assert_eq!(
            get(d.addr("http"), "/").await.text(),
            format!("origin {second}")
        );
    }
}
