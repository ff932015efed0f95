//! Prometheus metrics of the real daemon: known traffic (2xx, origin 404s,
//! unrouted 404s, 502s, HTTP/2, TLS handshakes) is sent, `/metrics` is
//! scraped from the admin listener and every counter must equal what was
//! sent, exactly; histogram counts must equal request counts; the text must
//! parse as Prometheus exposition format (and pass `promtool check metrics`
//! when promtool is installed).

mod common;
use common::*;

use std::net::SocketAddr;

use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;

/// Runs `promtool check metrics` on `text` when promtool is installed.
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed; skipping promtool check metrics");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // promtool exits 1 for lint findings (style hints) as well as for
    // errors; only parse errors fail this test.
    assert!(
        !report.contains("error while linting") && !report.contains("text format parsing error"),
        "promtool: {report}"
    );
}

// ----------------------------------------------------------------- tests --

fn config(app: SocketAddr, dead: SocketAddr) -> String {
    format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "main"
hosts = ["app.test"]
pool = "app"

[[route]]
name = "broken"
hosts = ["broken.test"]
pool = "dead"

[pool.app]
servers = [ {{ addr = "{app}" }} ]

[pool.dead]
servers = [ {{ addr = "{dead}" }} ]

[admin]
listen = "127.0.0.1:0"
"#
    )
}

/// Answers 404 under `/nf`, `200 hello` otherwise.
async fn origin() -> Origin {
    Origin::serve(|req, _| async move {
        let nf = req.uri().path().starts_with("/nf");
        let _ = req.into_body().collect().await;
        let status = if nf {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        Response::builder()
            .status(status)
            .body(full("hello"))
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_the_traffic_sent() {
    let app = origin().await;
    let dead = dead_addr();
    let d = Daemon::start(&config(app.addr, dead));
    let (http, admin) = (d.addr("http"), d.addr("admin"));

    for _ in 0..5 {
        let r = h1(http, request(Method::GET, "/", "app.test", empty())).await;
        assert_eq!(r.status, 200);
    }
    for i in 0..3 {
        let r = h1(
            http,
            request(Method::GET, &format!("/nf/{i}"), "app.test", empty()),
        )
        .await;
        assert_eq!(r.status, 404);
    }
    for _ in 0..2 {
        let r = h1(http, request(Method::POST, "/", "app.test", full("body"))).await;
        assert_eq!(r.status, 200);
    }
    let r = h1(http, request(Method::HEAD, "/", "app.test", empty())).await;
    assert_eq!(r.status, 200);
    for _ in 0..4 {
        let r = h1(http, request(Method::GET, "/", "broken.test", empty())).await;
        assert_eq!(r.status, 502, "{r:?}");
    }
    for _ in 0..2 {
        let r = h1(http, request(Method::GET, "/", "nowhere.test", empty())).await;
        assert_eq!(r.status, 404);
    }
    // Two requests on one HTTP/2 connection.
    let mut h2 = h2c_conn(http).await;
    for _ in 0..2 {
        let r = h2_send(
            &mut h2,
            h2_request(Method::GET, "http://app.test/", empty()),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    drop(h2);
    // The admin API's own requests are never counted.
    assert_eq!(get(admin, "/healthz").await.status, 200);

    let total = 5 + 3 + 2 + 1 + 4 + 2 + 2;
    let (text, s) = scrape_until(admin, |s| {
        sum(s, "sluice_requests_total", &[]) >= total as f64
            && sum(s, "sluice_connections_active", &[]) == 0.0
    })
    .await;
    let req = |route, method, class| {
        value(
            &s,
            "sluice_requests_total",
            &[
                ("listener", "http"),
                ("route", route),
                ("method", method),
                ("status_class", class),
            ],
        )
    };
    assert_eq!(req("main", "GET", "2xx"), 7.0, "{text}");
    assert_eq!(req("main", "GET", "4xx"), 3.0, "{text}");
    assert_eq!(req("main", "POST", "2xx"), 2.0, "{text}");
    assert_eq!(req("main", "HEAD", "2xx"), 1.0, "{text}");
    assert_eq!(req("broken", "GET", "5xx"), 4.0, "{text}");
    assert_eq!(req("", "GET", "4xx"), 2.0, "{text}");
    assert_eq!(
        sum(&s, "sluice_requests_total", &[]),
        total as f64,
        "{text}"
    );
    assert_eq!(
        sum(&s, "sluice_requests_total", &[("listener", "admin")]),
        0.0
    );

    // Histogram counts equal request counts, per route.
    let count = |route| {
        value(
            &s,
            "sluice_request_duration_seconds_count",
            &[("listener", "http"), ("route", route)],
        )
    };
    assert_eq!(count("main"), 13.0, "{text}");
    assert_eq!(count("broken"), 4.0, "{text}");
    assert_eq!(count(""), 2.0, "{text}");

    // Upstream attempts: only those that got a response head.
    let member = app.addr.to_string();
    let up = |class| {
        value(
            &s,
            "sluice_upstream_requests_total",
            &[
                ("pool", "app"),
                ("member", &member),
                ("status_class", class),
            ],
        )
    };
    assert_eq!(up("2xx"), 10.0, "{text}");
    assert_eq!(up("4xx"), 3.0, "{text}");
    assert_eq!(
        value(
            &s,
            "sluice_upstream_response_seconds_count",
            &[("pool", "app"), ("member", &member)]
        ),
        13.0,
        "{text}"
    );
    assert_eq!(
        sum(&s, "sluice_upstream_requests_total", &[("pool", "dead")]),
        0.0
    );
    let labels = [("pool", "app"), ("member", member.as_str())];
    assert_eq!(value(&s, "sluice_upstream_member_up", &labels), 1.0);
    assert_eq!(value(&s, "sluice_upstream_in_flight", &labels), 0.0);
    assert_eq!(value(&s, "sluice_upstream_ejections_total", &labels), 0.0);
    assert_eq!(
        value(&s, "sluice_upstream_retries_total", &[("pool", "app")]),
        0.0
    );

    // One connection per HTTP/1.1 request, one HTTP/2 connection.
    let conns = |proto| {
        value(
            &s,
            "sluice_connections_total",
            &[("listener", "http"), ("protocol", proto)],
        )
    };
    assert_eq!(conns("h1"), 17.0, "{text}");
    assert_eq!(conns("h2"), 1.0, "{text}");

    // Registered from the start: cache and compression at 0, build info.
    assert_eq!(
        value(
            &s,
            "sluice_cache_lookups_total",
            &[("route", "main"), ("result", "hit")]
        ),
        0.0
    );
    assert!(text.contains("# TYPE sluice_cache_entries gauge"), "{text}");
    assert!(text.contains("# TYPE sluice_compression_bytes_out_total counter"));
    assert_eq!(
        value(&s, "sluice_config_reloads_total", &[("result", "ok")]),
        0.0
    );
    assert_eq!(value(&s, "sluice_access_log_dropped_total", &[]), 0.0);
    assert_eq!(
        value(
            &s,
            "sluice_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    promtool_check(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_counted_by_result() {
    let app = origin().await;
    let d = Daemon::start(&config(app.addr, dead_addr()));
    let admin = d.addr("admin");
    d.signal("HUP");
    d.wait_for_log("config reloaded");
    d.write_config("[[listener]]\nname = 1\n");
    d.signal("HUP");
    d.wait_for_log("reload refused");
    let (text, s) = scrape_until(admin, |s| {
        sum(s, "sluice_config_reloads_total", &[("result", "error")]) >= 1.0
    })
    .await;
    assert_eq!(
        value(&s, "sluice_config_reloads_total", &[("result", "ok")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&s, "sluice_config_reloads_total", &[("result", "error")]),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_and_failures_are_counted() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.issue(dir.path(), "site", &["localhost"]);
    let app = origin().await;
    let config = tls_admin_config(&cert, &key, app.addr);
    let d = Daemon::start_in(dir, &config);
    let (tls, admin) = (d.addr("tls"), d.addr("admin"));
    let client = pki.client_config(&[b"h2"], &[&rustls::version::TLS13]);
    let conn = tls_connect(tls, "localhost", client)
        .await
        .expect("handshake");
    let r = tls_send(conn, h2_request(Method::GET, "https://localhost/", empty())).await;
    assert_eq!(r.status, 200);
    // Not TLS at all: a failed handshake.
    let _ = raw(tls, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;

    let (text, s) = scrape_until(admin, |s| {
        sum(s, "sluice_tls_handshake_errors_total", &[]) >= 1.0
            && sum(s, "sluice_connections_active", &[]) == 0.0
    })
    .await;
    let l = [("listener", "tls")];
    assert_eq!(value(&s, "sluice_tls_handshakes_total", &l), 1.0, "{text}");
    assert_eq!(
        value(&s, "sluice_tls_handshake_errors_total", &l),
        1.0,
        "{text}"
    );
    let h2 = [("listener", "tls"), ("protocol", "h2")];
    assert_eq!(value(&s, "sluice_connections_total", &h2), 1.0, "{text}");
    assert_eq!(
        value(
            &s,
            "sluice_requests_total",
            &[("listener", "tls"), ("route", "0"), ("status_class", "2xx")]
        ),
        1.0,
        "{text}"
    );
}

#[test]
fn the_parser_rejects_malformed_exposition() {
    assert!(parse_exposition("# TYPE a counter\na 1\n").is_ok());
    assert!(parse_exposition("a 1\n").is_err(), "no TYPE");
    assert!(parse_exposition("# TYPE a counter\na{b=\"c} 1\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na one\n").is_err());
    assert!(parse_exposition("# TYPE 1a counter\n1a 1\n").is_err());
    let h =
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n";
    assert!(parse_exposition(h).is_err(), "not cumulative");
}
