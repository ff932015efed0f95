//! The access log of the real daemon: JSON and combined lines matched one
//! to one with the requests sent, the file reopened on SIGUSR1 after log
//! rotation renamed it, and request ids kept or generated as the contract
//! says (and the same id upstream, in the response and in the log).

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::Path;

use http::{Method, Request};

fn config(app: SocketAddr, format: &str, path: &Path) -> String {
    format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "main"
hosts = ["app.test"]
pool = "app"

[pool.app]
servers = [ {{ addr = "{app}" }} ]

[access_log]
format = "{format}"
path = "{}"
"#,
        path.display()
    )
}

fn with_id(method: Method, path: &str, host: &str, id: Option<&str>) -> Request<TestBody> {
    let mut req = request(method, path, host, empty());
    if let Some(id) = id {
        req.headers_mut()
            .insert("x-request-id", id.parse().unwrap());
    }
    req
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'4'
        && s.bytes()
            .enumerate()
            .all(|(i, c)| [8, 13, 18, 23].contains(&i) || c.is_ascii_hexdigit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_match_requests_one_to_one() {
    let app = Origin::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let d = Daemon::start(&config(app.addr, "json", &log));
    let http = d.addr("http");

    // (method, path, host, status, id sent)
    let sent: Vec<(Method, String, &str, u16, Option<&str>)> = vec![
        (
            Method::GET,
            "/a?x=1".into(),
            "app.test",
            200,
            Some("client-id-1"),
        ),
        (Method::POST, "/b".into(), "app.test", 200, None),
        (Method::GET, "/c".into(), "nowhere.test", 404, None),
        (Method::HEAD, "/d".into(), "app.test", 200, Some("bad id")),
    ];
    let mut replies = Vec::new();
    for (m, p, h, _, id) in &sent {
        replies.push(h1(http, with_id(m.clone(), p, h, *id)).await);
    }
    let mut h2 = h2c_conn(http).await;
    let h2_reply = h2_send(
        &mut h2,
        h2_request(Method::GET, "http://app.test/e", empty()),
    )
    .await;

    let lines = file_lines(&log, sent.len() + 1);
    assert_eq!(lines.len(), sent.len() + 1, "{lines:#?}");
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for ((method, path, host, status, id), reply) in sent.iter().zip(&replies) {
        assert_eq!(reply.status, *status);
        let matching: Vec<&serde_json::Value> = entries
            .iter()
            .filter(|e| e["path"] == path.as_str())
            .collect();
        assert_eq!(matching.len(), 1, "{path}: {lines:#?}");
        let e = matching[0];
        assert_eq!(e["method"], method.as_str());
        assert_eq!(e["host"], *host);
        assert_eq!(e["status"], *status);
        assert_eq!(e["proto"], "HTTP/1.1");
        assert_eq!(e["client"], "127.0.0.1");
        assert_eq!(e["bytes"], reply.body.len() as u64, "{e}");
        assert!(e["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(
            humantime::parse_rfc3339(e["ts"].as_str().unwrap()).is_ok(),
            "{e}"
        );
        assert!(e["cache"].is_null());
        // A whole answer (a HEAD's included, whose body is never read) has
        // nothing to report.
        assert!(e["error"].is_null(), "{e}");
        let rid = e["request_id"].as_str().unwrap();
        assert_eq!(Some(rid), reply.header("x-request-id"), "{e}");
        match id {
            Some(kept) if !kept.contains(' ') => assert_eq!(rid, *kept),
            _ => assert!(is_uuid_v4(rid), "{rid}"),
        }
        if *status == 404 {
            assert!(e["upstream"].is_null());
            assert!(e["upstream_ms"].is_null());
        } else {
            assert_eq!(e["upstream"], app.addr.to_string());
            assert!(e["upstream_ms"].as_f64().unwrap() >= 0.0);
        }
    }
    let e = entries.iter().find(|e| e["path"] == "/e").unwrap();
    assert_eq!(e["proto"], "HTTP/2");
    assert_eq!(e["host"], "app.test");
    assert_eq!(e["request_id"].as_str(), h2_reply.header("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_match_requests() {
    let app = Origin::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let d = Daemon::start(&config(app.addr, "combined", &log));
    let http = d.addr("http");
    let mut req = with_id(Method::GET, "/x?q=1", "app.test", Some("rid-7"));
    req.headers_mut()
        .insert("user-agent", "tester/1.0".parse().unwrap());
    req.headers_mut()
        .insert("referer", "http://ref.test/".parse().unwrap());
    let r = h1(http, req).await;
    assert_eq!(r.status, 200);
    let r404 = h1(http, with_id(Method::GET, "/y", "nowhere.test", None)).await;

    let lines = file_lines(&log, 2);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let first = &lines[0];
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    assert!(
        first.contains(" +0000] \"GET /x?q=1 HTTP/1.1\" 200 "),
        "{first}"
    );
    assert!(
        first.contains(&format!(" 200 {} ", r.body.len())),
        "{first}"
    );
    assert!(
        first.contains("\"http://ref.test/\" \"tester/1.0\""),
        "{first}"
    );
    assert!(first.contains(" host=\"app.test\" "), "{first}");
    assert!(
        first.contains(&format!(" upstream={} ", app.addr)),
        "{first}"
    );
    assert!(first.contains(" cache=- "), "{first}");
    assert!(first.ends_with(" request_id=rid-7"), "{first}");
    let second = &lines[1];
    assert!(second.contains("\"GET /y HTTP/1.1\" 404 "), "{second}");
    assert!(second.contains(" upstream=- upstream_ms=- "), "{second}");
    let rid = r404.header("x-request-id").unwrap();
    assert!(second.ends_with(&format!(" request_id={rid}")), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_after_rotation() {
    let app = Origin::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let d = Daemon::start(&config(app.addr, "json", &log));
    let http = d.addr("http");

    for i in 0..3 {
        h1(
            http,
            request(Method::GET, &format!("/before/{i}"), "app.test", empty()),
        )
        .await;
    }
    assert_eq!(file_lines(&log, 3).len(), 3);
    std::fs::rename(&log, &rotated).unwrap();
    d.signal("USR1");
    d.wait_for_log("access log reopened");
    for i in 0..2 {
        h1(
            http,
            request(Method::GET, &format!("/after/{i}"), "app.test", empty()),
        )
        .await;
    }
    let fresh = file_lines(&log, 2);
    assert_eq!(fresh.len(), 2, "{fresh:#?}");
    assert!(fresh.iter().all(|l| l.contains("/after/")), "{fresh:#?}");
    let old = file_lines(&rotated, 3);
    assert_eq!(old.len(), 3, "{old:#?}");
    assert!(old.iter().all(|l| l.contains("/before/")), "{old:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_or_generated_and_sent_upstream() {
    let app = Origin::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&config(app.addr, "json", &dir.path().join("a.log")));
    let http = d.addr("http");
    let long_ok = "a".repeat(128);
    let too_long = "a".repeat(129);
    let cases: Vec<(Option<&str>, bool)> = vec![
        (Some("abc.DEF_123:-"), true),
        (Some(long_ok.as_str()), true),
        (Some(too_long.as_str()), false),
        (Some("semi;colon"), false),
        (Some("has space"), false),
        (None, false),
    ];
    for (i, (id, kept)) in cases.iter().enumerate() {
        let r = h1(http, with_id(Method::GET, "/", "app.test", *id)).await;
        assert_eq!(r.status, 200);
        let returned = r.header("x-request-id").expect("id returned").to_string();
        let seen = app.seen();
        let upstream: Vec<_> = seen[i].headers.get_all("x-request-id").iter().collect();
        assert_eq!(upstream.len(), 1, "{upstream:?}");
        assert_eq!(upstream[0].to_str().unwrap(), returned);
        if *kept {
            assert_eq!(Some(returned.as_str()), *id);
        } else {
            assert!(is_uuid_v4(&returned), "{returned}");
        }
    }
    // Generated ids differ.
    let a = get(http, "/").await;
    let b = get(http, "/").await;
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
    // Locally generated answers carry one too.
    let r = h1(
        http,
        with_id(Method::GET, "/", "nowhere.test", Some("mine")),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-request-id"), Some("mine"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_the_request_span() {
    let dead = dead_addr();
    let config = format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "main"
pool = "app"

[pool.app]
servers = [ {{ addr = "{dead}" }} ]

[log]
level = "info"
"#
    );
    let d = Daemon::start(&config);
    let r = h1(
        d.addr("http"),
        with_id(Method::GET, "/", "localhost", Some("trace-me")),
    )
    .await;
    assert_eq!(r.status, 502);
    let log = d.wait_for_log("upstream attempt failed");
    let line = log
        .lines()
        .find(|l| l.contains("upstream attempt failed"))
        .unwrap();
    assert!(line.contains("request{id=trace-me"), "{line}");
    assert!(line.contains("route=main"), "{line}");
    assert!(line.contains("pool=app"), "{line}");
    assert!(line.contains(&format!("member={dead}")), "{line}");
}

/// The daemon started by hand with `config` (which must set `[log] format =
/// "json"`), to read its stdout; every stderr line must be a JSON object.
/// Returns the process (killed on drop), its stdout and the listeners'
/// addresses by name, once it is ready.
struct ByHand {
    child: std::process::Child,
    stdout: Option<std::process::ChildStdout>,
    addrs: std::collections::HashMap<String, SocketAddr>,
    _dir: tempfile::TempDir,
}

impl ByHand {
    fn signal_term(&self) {
        signal(self.child.id(), "TERM");
    }
}

impl Drop for ByHand {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_by_hand(config: &str) -> ByHand {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let stdout = child.stdout.take();
    let mut by_hand = ByHand {
        child,
        stdout,
        addrs: Default::default(),
        _dir: dir,
    };
    for line in stderr.lines() {
        let line = line.unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        let fields = &v["fields"];
        if fields["message"] == "listening" {
            let addr = fields["addr"].as_str().unwrap().parse().unwrap();
            let name = fields["listener"].as_str().unwrap_or("admin").to_string();
            by_hand.addrs.insert(name, addr);
        }
        if fields["message"] == "ready" {
            return by_hand;
        }
    }
    panic!("sluice exited before it was ready");
}

/// An upstream body that ends early after its head went out leaves a trace:
/// the access log's `error` field, `sluice_upstream_body_errors_total`, and
/// a warning with the request id (issue 23).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_by_the_upstream_leaves_a_trace() {
    // An origin that promises 100 bytes, sends 10 and closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let d =
        Daemon::start(&(config(origin, "json", &log) + "\n[admin]\nlisten = \"127.0.0.1:0\"\n"));
    let answer = raw(
        d.addr("http"),
        b"GET /cut HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: cut-1\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let line = file_lines(&log, 1).remove(0);
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["error"], "upstream_body", "{line}");
    assert_eq!(v["request_id"], "cut-1");
    let member = origin.to_string();
    let (_, samples) = scrape_until(d.addr("admin"), |s| {
        value(
            s,
            "sluice_upstream_body_errors_total",
            &[("pool", "app"), ("member", &member)],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        value(
            &samples,
            "sluice_upstream_body_errors_total",
            &[("pool", "app"), ("member", &member)]
        ),
        1.0
    );
    let logged = d.log_count("upstream body failed before its end", 1).await;
    assert!(logged.contains("cut-1"), "{logged}");
}

/// An origin that answers each request with a head and a first chunk,
/// then waits; the receiver hears when sluice closes a connection to it,
/// the sign that the answer's body was dropped.
async fn stalling_origin() -> (SocketAddr, tokio::sync::mpsc::Receiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let (closed_tx, closed) = tokio::sync::mpsc::channel::<()>(4);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
                    )
                    .await;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed_tx.send(()).await;
            });
        }
    });
    (origin, closed)
}

/// The one line of `log`, once the member's connection has closed.
async fn line_after_close(
    log: &std::path::Path,
    closed: &mut tokio::sync::mpsc::Receiver<()>,
) -> serde_json::Value {
    tokio::time::timeout(PATIENCE, closed.recv())
        .await
        .expect("the member's connection closed")
        .expect("origin alive");
    let line = file_lines(log, 1).remove(0);
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// A client that goes away while its answer's body is still coming is
/// logged with `error: client_abort`, and the member's connection, whose
/// body had stalled, is closed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_body_is_logged_as_client_abort() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (origin, mut closed) = stalling_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let d = Daemon::start(&config(origin, "json", &log));
    let mut client = tokio::net::TcpStream::connect(d.addr("http"))
        .await
        .unwrap();
    client
        .write_all(b"GET /stalled HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: gone-1\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("first") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(PATIENCE, client.read(&mut chunk))
            .await
            .expect("the first chunk in time")
            .unwrap();
        assert!(n > 0, "closed before the first chunk: {seen:?}");
        seen.extend_from_slice(&chunk[..n]);
    }
    drop(client);
    let v = line_after_close(&log, &mut closed).await;
    assert_eq!(v["error"], "client_abort", "{v}");
    assert_eq!(v["status"], 200);
    assert_eq!(v["request_id"], "gone-1");
}

/// The same over HTTP/2, where the client resets its stream and keeps the
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_reset_mid_body_is_logged_as_client_abort() {
    use http_body_util::BodyExt;
    let (origin, mut closed) = stalling_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let d = Daemon::start(&config(origin, "json", &log));
    let mut h2 = h2c_conn(d.addr("http")).await;
    let resp = tokio::time::timeout(
        PATIENCE,
        h2.send_request(h2_request(Method::GET, "http://app.test/stalled", empty())),
    )
    .await
    .expect("a head in time")
    .expect("a head");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("the first chunk in time")
        .expect("a frame")
        .expect("data");
    assert_eq!(first.data_ref().map(|d| &d[..]), Some(&b"first"[..]));
    // Dropping an unfinished body resets the stream (CANCEL).
    drop(body);
    let v = line_after_close(&log, &mut closed).await;
    assert_eq!(v["error"], "client_abort", "{v}");
    assert_eq!(v["proto"], "HTTP/2");
    assert!(!h2.is_closed(), "the connection stays open");
}

/// The 504 sluice answers when a member does not answer within
/// `response_timeout` is logged with `error: upstream_timeout`; a 504 the
/// member sent itself is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_timeout_is_logged_as_upstream_timeout() {
    let silent = silent().await;
    let own_504 = answering(504).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // The file's config (route `main`, app.test) with a short
    // response_timeout, and a second route to the member's own 504.
    let config = config(silent.addr, "json", &log)
        .replace("[pool.app]\n", "[pool.app]\nresponse_timeout = \"200ms\"\n")
        + &format!(
            r#"
[[route]]
name = "own"
hosts = ["own.test"]
pool = "own"

[pool.own]
servers = [ {{ addr = "{}" }} ]
"#,
            own_504.addr
        );
    let d = Daemon::start(&config);
    let http = d.addr("http");
    let timed_out = h1(http, request(Method::GET, "/t", "app.test", empty())).await;
    assert_eq!(timed_out.status, 504);
    let passed_on = h1(http, request(Method::GET, "/o", "own.test", empty())).await;
    assert_eq!(passed_on.status, 504);

    let lines = file_lines(&log, 2);
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let by_host = |host: &str| {
        entries
            .iter()
            .find(|e| e["host"] == host)
            .unwrap_or_else(|| panic!("{host}: {lines:#?}"))
    };
    assert_eq!(
        by_host("app.test")["error"],
        "upstream_timeout",
        "{lines:#?}"
    );
    assert!(by_host("own.test")["error"].is_null(), "{lines:#?}");
}

/// `[log] format = "json"` and `[access_log] path = "stdout"`: the daemon
/// started by hand to read both of its output streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_and_stdout_access_log() {
    use std::io::{BufRead, BufReader};

    let app = Origin::hello().await;
    let text = config(app.addr, "json", Path::new("stdout"))
        + "\n[log]\nformat = \"json\"\nlevel = \"info\"\n";
    let mut d = start_by_hand(&text);
    let addr = d.addrs["http"];
    let mut stdout = BufReader::new(d.stdout.take().unwrap());
    let r = h1(
        addr,
        with_id(Method::GET, "/json", "app.test", Some("json-1")),
    )
    .await;
    assert_eq!(r.status, 200);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["path"], "/json");
    assert_eq!(v["request_id"], "json-1");
    assert_eq!(v["status"], 200);
}

/// When the writer cannot keep up (here: nobody reads the daemon's stdout,
/// so the pipe is full and the writer blocks), requests still complete,
/// lines are dropped rather than queued without bound, and every request
/// is either a line or counted in `sluice_access_log_dropped_total`. The
/// daemon's stderr is closed meanwhile, and it still exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_falls_behind_drops_and_counts_lines() {
    use std::io::Read;

    let app = Origin::hello().await;
    let text = config(app.addr, "json", Path::new("stdout"))
        + "\n[log]\nformat = \"json\"\nlevel = \"info\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let mut d = start_by_hand(&text);
    let http = d.addrs["http"];
    // Long targets (under the 8 KiB limit) make long lines: about 1,200
    // fill a worker's 8 MiB buffer.
    let long = "x".repeat(7000);
    let sent = 4000;
    let mut conn = h1_conn(http).await;
    for i in 0..sent {
        let req = request(Method::GET, &format!("/{i}/{long}"), "app.test", empty());
        conn.ready().await.expect("connection ready");
        let r = conn.send_request(req).await.expect("request");
        assert_eq!(r.status(), 200);
        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
    }
    // A request is counted when the proxy sees its body end (a moment after
    // the client has it), after its line was kept or dropped.
    let (_, samples) = scrape_until(d.addrs["admin"], |s| {
        sum(s, "sluice_requests_total", &[]) >= sent as f64
    })
    .await;
    let dropped = value(&samples, "sluice_access_log_dropped_total", &[]) as u64;
    assert!(
        dropped > 0,
        "nothing dropped: the test did not fill the buffers"
    );

    // Read everything, then stop the daemon: it writes what it kept.
    let mut stdout = d.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        all
    });
    d.signal_term();
    let all = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let lines = all.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count() as u64;
    // Its stderr has had no reader since it was ready: logging to a broken
    // pipe loses the lines but must not crash the daemon.
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(lines + dropped, sent, "{lines} lines + {dropped} dropped");
}
