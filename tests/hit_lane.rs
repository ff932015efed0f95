//! The hit lane of the real daemon: a plain HTTP/1.1 cache hit written by
//! sluice itself (no hyper) must be byte for byte what hyper writes for the
//! same hit, in order with what hyper answers on the same connection, over
//! TCP and TLS, and logged and counted the same way.
//!
//! A request with `Connection: keep-alive` (meaningless in HTTP/1.1, so
//! answered the same) is left to hyper: it gives the reference answer.

mod common;
use common::raw::{find, parse_head};
use common::*;

use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "lane.test";

/// An origin answering `/big*` with 64 KiB, `/nostore*` uncacheable, and
/// anything else with a small cacheable body naming its path.
async fn origin() -> Origin {
    Origin::serve(|req: Request<Incoming>, _| async move {
        let path = req.uri().path().to_string();
        let (body, cc) = if path.starts_with("/big") {
            ("b".repeat(64 << 10), "max-age=600")
        } else if path.starts_with("/nostore") {
            (format!("fresh {path}"), "no-store")
        } else {
            (format!("cached {path}"), "max-age=600")
        };
        Response::builder()
            .header("cache-control", cc)
            .header("etag", "\"v1\"")
            .header("x-origin", "one")
            .header("x-origin", "two")
            .body(full(body))
            .unwrap()
    })
    .await
}

fn config(origin: SocketAddr, log: &std::path::Path) -> String {
    admin_route_config(
        origin,
        "cache = true",
        &format!(
            "[access_log]\nformat = \"json\"\npath = \"{}\"",
            log.display()
        ),
    )
}

/// The daemon of [`config`], and its access log (in a temp dir).
fn started(o: &Origin) -> (Daemon, (tempfile::TempDir, std::path::PathBuf)) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    (Daemon::start(&config(o.addr, &log)), (dir, log))
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: lane-test\r\n{extra}\r\n")
        .into_bytes()
}

/// A client connection that reads responses one at a time, keeping what
/// arrived of the next ones (pipelined answers come together).
struct Client<S> {
    stream: S,
    read: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(stream: S) -> Client<S> {
        Client {
            stream,
            read: Vec::new(),
        }
    }

    async fn send(&mut self, request: &[u8]) {
        self.stream.write_all(request).await.unwrap();
    }

    /// The next response: its head (as text) and its body.
    async fn response(&mut self) -> (String, Vec<u8>) {
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            if let Some(end) = find(&self.read, b"\r\n\r\n") {
                let head = String::from_utf8(self.read[..end].to_vec()).expect("an ASCII head");
                let len = field(&head, "content-length").map_or(0, |v| v.parse().unwrap());
                if self.read.len() >= end + 4 + len {
                    let body = self.read[end + 4..end + 4 + len].to_vec();
                    self.read.drain(..end + 4 + len);
                    return (head, body);
                }
            }
            let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("a response in time")
                .unwrap();
            assert_ne!(n, 0, "closed mid-response");
            self.read.extend_from_slice(&chunk[..n]);
        }
    }

    async fn get(&mut self, path: &str) -> (String, Vec<u8>) {
        self.send(&get(path, "")).await;
        self.response().await
    }
}

/// One request on a new connection.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
    let mut client = Client::new(TcpStream::connect(addr).await.unwrap());
    client.send(request).await;
    client.response().await
}

/// Requests `path` until it is a hit: its first answer is stored once its
/// body is whole, a moment after the client has it.
async fn primed(addr: SocketAddr, path: &str) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (head, _) = exchange(addr, &get(path, "")).await;
        if field(&head, "cache-status").is_some_and(|s| s.contains("hit")) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{path} never stored");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `head`'s value of `name`, trimmed.
fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// `head` with its request id blanked.
fn without_id(head: &str) -> String {
    let id = field(head, "x-request-id").expect("a request id");
    head.replace(id, "ID")
}

#[tokio::test]
async fn a_lane_hit_is_byte_for_byte_what_hyper_writes() {
    let o = origin().await;
    let (d, _log) = started(&o);
    let addr = d.addr("http");
    // A request directive that leaves the entry fresh changes nothing.
    for (path, extra) in [
        ("/a", ""),
        ("/big", ""),
        ("/a", "Cache-Control: max-age=3600\r\n"),
    ] {
        primed(addr, path).await;
        // Both within one second of age (the head is built per second):
        // tried again only if a second turned in between.
        let mut same_second = false;
        for _ in 0..5 {
            let (lane, lane_body) = exchange(addr, &get(path, extra)).await;
            let kept_alive = format!("{extra}Connection: keep-alive\r\n");
            let (hyper, hyper_body) = exchange(addr, &get(path, &kept_alive)).await;
            assert!(
                field(&lane, "cache-status").unwrap().contains("hit"),
                "{lane}"
            );
            assert_eq!(lane_body, hyper_body, "{path}");
            if field(&lane, "age") != field(&hyper, "age") {
                continue;
            }
            assert_eq!(without_id(&lane), without_id(&hyper), "{path}");
            assert_eq!(
                field(&lane, "x-request-id").map(str::len),
                Some(36),
                "{lane}"
            );
            assert_ne!(field(&lane, "x-request-id"), field(&hyper, "x-request-id"));
            same_second = true;
            break;
        }
        assert!(same_second, "{path}: five pairs, each across a second");
    }
    assert_eq!(o.hits(), 2, "every other request was a hit");
}

#[tokio::test]
async fn pipelined_requests_go_in_order_through_the_lane_and_hyper() {
    let o = origin().await;
    let (d, _log) = started(&o);
    let addr = d.addr("http");
    primed(addr, "/p").await;
    let mut client = Client::new(TcpStream::connect(addr).await.unwrap());
    // A hit, a pass (hyper), a range of the hit (hyper), a hit, a miss, a
    // hit with the client's own id, in one write.
    let mut batch = get("/p", "");
    batch.extend(get("/nostore", ""));
    batch.extend(get("/p", "Range: bytes=0-5\r\n"));
    batch.extend(get("/p", ""));
    batch.extend(get("/q", ""));
    batch.extend(get("/p", "X-Request-Id: mine-7\r\n"));
    client.send(&batch).await;
    let expected: [(u16, &str); 6] = [
        (200, "cached /p"),
        (200, "fresh /nostore"),
        (206, "cached"),
        (200, "cached /p"),
        (200, "cached /q"),
        (200, "cached /p"),
    ];
    let mut ids = std::collections::HashSet::new();
    for (i, (status, body)) in expected.iter().enumerate() {
        let (head, got) = client.response().await;
        let (code, _) = parse_head(&head).expect("a status line");
        assert_eq!(
            (code, String::from_utf8_lossy(&got).as_ref()),
            (*status, *body),
            "#{i}: {head}"
        );
        ids.insert(field(&head, "x-request-id").unwrap().to_string());
        if i == 5 {
            assert_eq!(field(&head, "x-request-id"), Some("mine-7"));
        }
    }
    assert_eq!(ids.len(), 6, "each answer its own id");
    // The connection goes on, through the lane again.
    let (head, body) = client.get("/p").await;
    assert!(
        field(&head, "cache-status").unwrap().contains("hit"),
        "{head}"
    );
    assert_eq!(body, b"cached /p");
    assert_eq!(o.hits(), 3, "/p, /nostore and /q went upstream once each");
}

#[tokio::test]
async fn lane_hits_are_logged_and_counted_as_hits() {
    let o = origin().await;
    let (d, (_dir, log)) = started(&o);
    let addr = d.addr("http");
    primed(addr, "/m?x=1").await;
    let counts = |samples: &[exposition::Sample]| {
        let lookups = |result| {
            exposition::value(
                samples,
                "sluice_cache_lookups_total",
                &[("route", "main"), ("result", result)],
            )
        };
        let requests = exposition::value(
            samples,
            "sluice_requests_total",
            &[
                ("listener", "http"),
                ("route", "main"),
                ("method", "GET"),
                ("status_class", "2xx"),
            ],
        );
        (lookups("hit"), lookups("miss"), requests)
    };
    // Each request is counted (and logged) once its response has ended,
    // a moment after the client has it: every one of them looked up once.
    let (_, before) = exposition::scrape_until(d.addr("admin"), |s| {
        let (hits, misses, requests) = counts(s);
        hits >= 1.0 && hits + misses == requests
    })
    .await;
    let (hits, misses, requests) = counts(&before);
    let logged = file_lines(&log, requests as usize).len();
    let mut client = Client::new(TcpStream::connect(addr).await.unwrap());
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (head, body) = client.get("/m?x=1").await;
        assert_eq!(body, b"cached /m");
        ids.push(field(&head, "x-request-id").unwrap().to_string());
    }
    let (_, after) =
        exposition::scrape_until(d.addr("admin"), |s| counts(s).2 >= requests + 3.0).await;
    assert_eq!(counts(&after), (hits + 3.0, misses, requests + 3.0));
    let lines = file_lines(&log, logged + 3);
    assert_eq!(lines.len(), logged + 3, "{lines:#?}");
    for id in &ids {
        let line = lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} in {lines:#?}"));
        assert_eq!(line["cache"], "hit", "{line}");
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], 9);
        assert_eq!(line["path"], "/m?x=1");
        assert_eq!(line["host"], HOST);
        assert_eq!(line["proto"], "HTTP/1.1");
        assert_eq!(line["client"], "127.0.0.1");
    }
}

#[tokio::test]
async fn lane_hits_over_tls_http11() {
    let o = origin().await;
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.issue(dir.path(), "lane", &[HOST]);
    // The route of `tls_admin_config`, caching.
    let config = tls_admin_config(&cert, &key, o.addr)
        .replace("pool = \"app\"\n", "pool = \"app\"\ncache = true\n");
    assert!(config.contains("cache = true"));
    let d = Daemon::start_in(dir, &config);
    let connect = || async {
        let config = pki.client_config(&[b"http/1.1"], &[&rustls::version::TLS13]);
        tls_connect(d.addr("tls"), HOST, config)
            .await
            .unwrap()
            .stream
    };
    let connect = || async { Client::new(connect().await) };
    for path in ["/t", "/big-tls"] {
        // Stored once its body is whole, a moment after the client has it.
        let mut client = connect().await;
        let (first, body) = client.get(path).await;
        assert!(
            field(&first, "cache-status").unwrap().contains("fwd=miss"),
            "{first}"
        );
        let deadline = std::time::Instant::now() + PATIENCE;
        while !field(&client.get(path).await.0, "cache-status")
            .unwrap()
            .contains("hit")
        {
            assert!(std::time::Instant::now() < deadline, "{path} never stored");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // A new connection: its hits never meet hyper.
        let mut client = connect().await;
        for _ in 0..3 {
            let (head, again) = client.get(path).await;
            assert!(
                field(&head, "cache-status").unwrap().contains("hit"),
                "{head}"
            );
            assert_eq!(again, body, "{path}");
        }
    }
    assert_eq!(o.hits(), 2);
}

/// After a lane hit the connection's timers run as after any response:
/// `keepalive_timeout` ends it idle, `header_read_timeout` a head begun
/// and never finished.
#[tokio::test]
async fn the_connection_timers_run_after_lane_hits() {
    let o = origin().await;
    let timers = |keepalive: &str, head: &str| {
        admin_route_config(
            o.addr,
            "cache = true",
            &format!(
                "[limits]\nkeepalive_timeout = \"{keepalive}\"\nheader_read_timeout = \"{head}\""
            ),
        )
    };
    let until_closed = |mut stream: TcpStream| async move {
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
            .await
            .expect("closed by the daemon")
            .ok();
        rest
    };
    for (keepalive, head, partial) in [("200ms", "1h", false), ("1h", "200ms", true)] {
        let d = Daemon::start(&timers(keepalive, head));
        let addr = d.addr("http");
        primed(addr, "/k").await;
        let mut client = Client::new(TcpStream::connect(addr).await.unwrap());
        for _ in 0..2 {
            let (head, _) = client.get("/k").await;
            assert!(
                field(&head, "cache-status").unwrap().contains("hit"),
                "{head}"
            );
        }
        if partial {
            client.send(b"GET /k HTTP/1.1\r\nHost: la").await;
        }
        let rest = until_closed(client.stream).await;
        assert!(
            !String::from_utf8_lossy(&rest).contains(" 200 "),
            "{keepalive} {head}"
        );
    }
}
