//! Proxy semantics end to end (RFC 9110 §7.6): hop-by-hop fields, forwarding
//! fields, HTTP/2 to HTTP/1.1, streaming in both directions, upgrades,
//! upstream connection reuse and routing. Every test runs the real daemon in
//! front of real origins on 127.0.0.1.

mod common;
use common::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

// --------------------------------------------------------------- helpers --

fn channel_body(capacity: usize) -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChanBody(rx).boxed())
}

/// All values of header `name`, joined with ", " (None when absent).
fn joined(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii header"))
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// The only request an origin saw.
fn only_seen(origin: &Origin) -> Seen {
    let seen = origin.seen();
    assert_eq!(seen.len(), 1, "origin saw {seen:#?}");
    seen.into_iter().next().unwrap()
}

/// A response read off a raw socket: status and lower-cased header fields.
struct RawHead {
    status: u16,
    fields: Vec<(String, String)>,
}

impl RawHead {
    fn parse(text: &str) -> RawHead {
        let head = text
            .split("\r\n\r\n")
            .next()
            .unwrap_or_else(|| panic!("no response head in {text:?}"));
        let (status, fields) = parse_head(head).unwrap_or_else(|| panic!("no status in {text:?}"));
        RawHead { status, fields }
    }

    fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == name)
    }

    fn values(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An order-sensitive checksum over a byte stream that may arrive split at
/// any boundary (processes 8-byte words, carrying partial words over).
#[derive(Default)]
struct Sum {
    len: u64,
    hash: u64,
    carry: Vec<u8>,
}

impl Sum {
    fn word(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(7) ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.carry.is_empty() {
            let need = (8 - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..need]);
            data = &data[need..];
            if self.carry.len() < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.carry[..].try_into().unwrap());
            self.carry.clear();
            self.word(w);
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().unwrap()));
        }
        self.carry.extend_from_slice(words.remainder());
    }

    fn finish(mut self) -> (u64, u64) {
        let mut last = [0u8; 8];
        last[..self.carry.len()].copy_from_slice(&self.carry);
        self.word(u64::from_le_bytes(last));
        self.word(self.len);
        (self.len, self.hash)
    }
}

const CHUNK: usize = 256 * 1024;
const CHUNKS: usize = 1024; // 256 MiB in all
const TOTAL: u64 = (CHUNK * CHUNKS) as u64;
const RSS_SLACK: u64 = 64 << 20;

/// Chunk `i` of the large test stream: a fixed pseudo-random block whose
/// first eight bytes carry the chunk number, so every chunk differs.
fn chunk(i: usize) -> Bytes {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    let block = BLOCK.get_or_init(|| {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        (0..CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    });
    let mut b = BytesMut::from(&block[..]);
    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    b.freeze()
}

/// The checksum of the whole large test stream, computed off the runtime.
async fn expected_sum() -> (u64, u64) {
    tokio::task::spawn_blocking(|| {
        let mut s = Sum::default();
        for i in 0..CHUNKS {
            s.update(&chunk(i));
        }
        s.finish()
    })
    .await
    .unwrap()
}

/// A config whose `[limits]` allow the large transfers.
fn big_body_config(origin: SocketAddr) -> String {
    simple_config(&[origin], "\n[limits]\nmax_body_bytes = \"1GiB\"\n")
}

// ------------------------------------------------------------ hop-by-hop --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_are_removed_in_both_directions() {
    let origin = Origin::serve(|req: Request<Incoming>, _| async move {
        let _ = req.into_body().collect().await;
        Response::builder()
            .header("connection", "x-foo")
            .header("x-foo", "connection-specific")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=\"origin\"")
            .header("x-kept-response", "yes")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));

    let reply = raw(
        d.addr("http"),
        b"GET /hop HTTP/1.1\r\n\
          Host: localhost\r\n\
          Connection: close, X-Secret\r\n\
          X-Secret: do-not-forward\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: trailers\r\n\
          Proxy-Authorization: Basic c2VjcmV0\r\n\
          Proxy-Connection: keep-alive\r\n\
          Upgrade: websocket\r\n\
          X-Kept-Request: yes\r\n\
          \r\n",
    )
    .await;

    let seen = only_seen(&origin);
    for name in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "origin received hop-by-hop {name}: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-kept-request"], "yes");

    let head = RawHead::parse(&reply);
    assert_eq!(head.status, 200, "{reply}");
    for name in ["x-foo", "keep-alive", "proxy-authenticate"] {
        assert!(
            !head.has(name),
            "client received hop-by-hop {name}:\n{reply}"
        );
    }
    for v in head.values("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-foo"),
            "origin's Connection leaked:\n{reply}"
        );
    }
    assert_eq!(head.values("x-kept-response"), ["yes"], "{reply}");
    assert!(reply.ends_with("ok"), "{reply}");
}

// ------------------------------------------------------------ forwarding --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_fields_are_added_and_host_is_kept() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));

    let mut req = request(Method::GET, "/fwd?q=1", "front.example:8080", empty());
    req.headers_mut()
        .insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
    req.headers_mut().insert("via", "1.0 fred".parse().unwrap());
    let r = h1(d.addr("http"), req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("via"), Some("1.1 sluice"), "{:?}", r.headers);

    let seen = only_seen(&origin);
    let h = &seen.headers;
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/fwd?q=1");
    assert_eq!(h["host"], "front.example:8080");
    assert_eq!(
        joined(h, "x-forwarded-for").as_deref(),
        Some("1.2.3.4, 127.0.0.1")
    );
    assert_eq!(joined(h, "x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        joined(h, "x-forwarded-host").as_deref(),
        Some("front.example:8080")
    );
    assert_eq!(joined(h, "via").as_deref(), Some("1.0 fred, 1.1 sluice"));
}

/// A client's `Forwarded` never reaches the origin: sluice's own element
/// replaces it (RFC 7239), as its `X-Forwarded-Host` and `-Proto` do; and
/// the fields some origins read as a URL, method or client address are
/// removed on every route unless the route lists its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_forwarded_and_override_fields_never_reach_the_origin() {
    let origin = Origin::hello().await;
    let config = simple_config(&[origin.addr], "")
        + r#"
[[route]]
name = "own-list"
path_prefix = "/own/"
pool = "app"
strip_request_headers = ["X-Secret"]
"#;
    // The catch-all route is first in the file: the own-list route needs
    // its own host to be reached.
    let config = config.replacen(
        "name = \"main\"\n",
        "name = \"main\"\nhosts = [\"front.example\"]\n",
        1,
    );
    let d = Daemon::start(&config);
    let claims = [
        ("forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
        ("x-original-url", "/admin/"),
        ("x-rewrite-url", "/admin/"),
        ("x-http-method-override", "DELETE"),
        ("x-real-ip", "6.6.6.6"),
        ("x-forwarded-port", "443"),
        ("x-secret", "s"),
    ];
    let with_claims = |path: &str, host: &str| {
        let mut req = request(Method::GET, path, host, empty());
        for (name, value) in claims {
            req.headers_mut().append(name, value.parse().unwrap());
        }
        req
    };
    let r = h1(d.addr("http"), with_claims("/x", "front.example")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = only_seen(&origin);
    let h = &seen.headers;
    assert_eq!(
        joined(h, "forwarded").as_deref(),
        Some("for=127.0.0.1;proto=http;host=front.example"),
        "{h:?}"
    );
    for name in [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-real-ip",
        "x-forwarded-port",
    ] {
        assert!(!h.contains_key(name), "{name} reached the origin: {h:?}");
    }
    assert_eq!(h["x-secret"], "s", "not on the default list");

    // Over HTTP/2, with a port in the authority (quoted, RFC 7239 §4).
    let mut h2 = h2c_conn(d.addr("http")).await;
    let mut req = h2_request(Method::GET, "http://front.example:8080/y", empty());
    req.headers_mut()
        .insert("forwarded", "for=\"[2001:db8::1]\"".parse().unwrap());
    assert_eq!(h2_send(&mut h2, req).await.status, 200);
    let seen = origin.seen();
    let h = &seen.last().expect("the h2 request").headers;
    assert_eq!(
        joined(h, "forwarded").as_deref(),
        Some("for=127.0.0.1;proto=http;host=\"front.example:8080\"")
    );

    // A route's own list replaces the default one.
    let r = h1(d.addr("http"), with_claims("/own/z", "other.example")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = origin.seen();
    let h = &seen.last().expect("the own-list request").headers;
    assert!(!h.contains_key("x-secret"), "{h:?}");
    assert_eq!(h["x-real-ip"], "6.6.6.6");
    assert_eq!(
        joined(h, "forwarded").as_deref(),
        Some("for=127.0.0.1;proto=http;host=other.example")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_forwarded_exactly_as_the_client_sent_it() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let r = h1(
        d.addr("http"),
        request(Method::GET, "/", "Mixed.Case.Example", empty()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = only_seen(&origin);
    assert_eq!(seen.headers["host"], "Mixed.Case.Example");
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "no client value: only this hop"
    );
    let xfh = seen.headers["x-forwarded-host"].to_str().unwrap();
    assert!(xfh.eq_ignore_ascii_case("mixed.case.example"), "{xfh}");
}

/// An idle keep-alive connection is parked (its hyper session shut down,
/// the socket kept) and answers its next request, twice over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http11_connection_is_parked_and_serves_the_next_request() {
    let origin = Origin::hello().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start_logging(
        dir,
        &simple_config(&[origin.addr], ""),
        "info,sluice::listener=trace",
    );
    let stream = tokio::net::TcpStream::connect(d.addr("http"))
        .await
        .unwrap();
    let (mut send, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1");
    let client = tokio::spawn(c);
    for round in 1..=3 {
        let req = request(Method::GET, "/parked", "front.example", empty());
        let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
            .await
            .expect("response in time")
            .expect("response");
        assert_eq!(collect(resp).await.status, 200, "round {round}");
        // The readiness signal: sluice logs each park (at trace).
        d.log_count("idle connection parked", round).await;
    }
    assert!(!client.is_finished(), "one connection served every round");
    assert_eq!(origin.hits(), 3);
}

// ---------------------------------------------------------------- HTTP/2 --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cookie_fields_reach_the_http11_origin_as_one_line() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let mut h2 = h2c_conn(d.addr("http")).await;
    let mut req = h2_request(Method::GET, "http://front.example/c", empty());
    for pair in ["a=1", "b=2", "session=xyz"] {
        req.headers_mut()
            .append(http::header::COOKIE, http::HeaderValue::from_static(pair));
    }
    let r = h2_send(&mut h2, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = only_seen(&origin);
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2; session=xyz"], "RFC 9113 §8.2.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_reach_the_http11_origin_with_host_from_authority() {
    let origin = Origin::serve(|req: Request<Incoming>, _| async move {
        let method = req.method().clone();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(format!("{method} {}", String::from_utf8_lossy(&body))))
    })
    .await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let mut h2 = h2c_conn(d.addr("http")).await;

    let r = h2_send(
        &mut h2,
        h2_request(Method::GET, "http://front.example/h2?x=1", empty()),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.text(), "GET ");
    assert_eq!(r.header("via"), Some("1.1 sluice"), "{:?}", r.headers);

    let r = h2_send(
        &mut h2,
        h2_request(
            Method::POST,
            "http://front.example/h2/post",
            full("posted over h2"),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "POST posted over h2");

    // A streamed body without a length: the origin gets it chunked.
    let (tx, body) = channel_body(2);
    let send = tokio::spawn(async move {
        for part in ["streamed ", "over ", "h2"] {
            tx.send(Bytes::from(part)).await.unwrap();
        }
    });
    let r = h2_send(
        &mut h2,
        h2_request(Method::POST, "http://front.example/h2/stream", body.boxed()),
    )
    .await;
    send.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "POST streamed over h2");

    let seen = origin.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.version, http::Version::HTTP_11, "{s:?}");
        assert_eq!(s.headers["host"], "front.example", "{s:?}");
        assert_eq!(joined(&s.headers, "via").as_deref(), Some("2 sluice"));
        assert_eq!(s.headers["x-forwarded-host"], "front.example");
        assert_eq!(s.headers["x-forwarded-proto"], "http");
        assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1");
    }
    assert_eq!(seen[0].uri.path_and_query().unwrap().as_str(), "/h2?x=1");
    assert_eq!(seen[1].method, Method::POST);
    assert_eq!(seen[2].uri.path(), "/h2/stream");
}

// ------------------------------------------------------------- streaming --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_to_the_origin_intact() {
    let (first_tx, first_rx) = oneshot::channel::<()>();
    let first_tx = Arc::new(Mutex::new(Some(first_tx)));
    let origin = Origin::serve(move |req: Request<Incoming>, _| {
        let first_tx = first_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut sum = Sum::default();
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => return Response::new(full(format!("body error: {e}"))),
                };
                if let Some(data) = frame.data_ref() {
                    sum.update(data);
                    if let Some(tx) = first_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                }
            }
            let (len, hash) = sum.finish();
            Response::new(full(format!("{len} {hash:016x}")))
        }
    })
    .await;
    let d = Daemon::start(&big_body_config(origin.addr));
    let expected = tokio::spawn(expected_sum());
    let base = d.rss_bytes();

    let (tx, body) = channel_body(2);
    let mut send = h1_conn(d.addr("http")).await;
    let response = tokio::spawn(send.send_request(request(
        Method::POST,
        "/upload",
        "localhost",
        body.boxed(),
    )));

    tx.send(chunk(0)).await.unwrap();
    // Nothing more is sent until the origin has the first chunk: a proxy that
    // buffered the body would never deliver it.
    tokio::time::timeout(PATIENCE, first_rx)
        .await
        .expect("origin received the first chunk before the rest was sent")
        .unwrap();
    let mut peak = d.rss_bytes();
    for i in 1..CHUNKS {
        tx.send(chunk(i)).await.expect("send chunk");
        if i % 32 == 0 {
            peak = peak.max(d.rss_bytes());
        }
    }
    drop(tx);

    let resp = tokio::time::timeout(PATIENCE * 4, response)
        .await
        .expect("upload response in time")
        .unwrap()
        .expect("upload response");
    peak = peak.max(d.rss_bytes());
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    let (len, hash) = expected.await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&text),
        format!("{len} {hash:016x}"),
        "origin's byte count and checksum"
    );
    assert_eq!(len, TOTAL);
    assert!(
        peak < base + RSS_SLACK,
        "sluice RSS grew from {base} to {peak} bytes during a {TOTAL}-byte upload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_to_the_client_intact() {
    let (gate_tx, gate_rx) = oneshot::channel::<()>();
    let gate_rx = Arc::new(Mutex::new(Some(gate_rx)));
    let (sent_tx, sent_rx) = oneshot::channel::<(u64, u64)>();
    let sent_tx = Arc::new(Mutex::new(Some(sent_tx)));
    let origin = Origin::serve(move |req: Request<Incoming>, _| {
        let gate = gate_rx.lock().unwrap().take();
        let sent = sent_tx.lock().unwrap().take();
        async move {
            let _ = req.into_body().collect().await;
            let (Some(gate), Some(sent)) = (gate, sent) else {
                return Response::builder()
                    .status(500)
                    .body(full("once only"))
                    .unwrap();
            };
            let (tx, body) = channel_body(2);
            tokio::spawn(async move {
                let mut sum = Sum::default();
                let first = chunk(0);
                sum.update(&first);
                if tx.send(first).await.is_err() {
                    return;
                }
                // The rest only goes out once the client has the first
                // chunk: a proxy that buffered the response would hang here.
                if gate.await.is_err() {
                    return;
                }
                for i in 1..CHUNKS {
                    let c = chunk(i);
                    sum.update(&c);
                    if tx.send(c).await.is_err() {
                        return;
                    }
                }
                let _ = sent.send(sum.finish());
            });
            Response::new(body.boxed())
        }
    })
    .await;
    let d = Daemon::start(&big_body_config(origin.addr));
    let base = d.rss_bytes();

    let mut send = h1_conn(d.addr("http")).await;
    let resp = tokio::time::timeout(
        PATIENCE,
        send.send_request(request(Method::GET, "/download", "localhost", empty())),
    )
    .await
    .expect("download head in time")
    .expect("download head");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();

    let first = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("first chunk arrives while the origin is still holding the rest")
        .expect("a frame")
        .expect("frame ok");
    let mut sum = Sum::default();
    sum.update(first.data_ref().expect("data frame"));
    gate_tx.send(()).unwrap();

    let mut peak = d.rss_bytes();
    let mut next_sample = 16u64 << 20;
    let rest = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("download frame");
            if let Some(data) = frame.data_ref() {
                sum.update(data);
                if sum.len >= next_sample {
                    peak = peak.max(d.rss_bytes());
                    next_sample += 16 << 20;
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE * 4, rest)
        .await
        .expect("download finished in time");
    peak = peak.max(d.rss_bytes());
    let got = sum.finish();
    let sent = tokio::time::timeout(PATIENCE, sent_rx)
        .await
        .expect("origin finished")
        .unwrap();
    assert_eq!(got.0, TOTAL);
    assert_eq!(
        got, sent,
        "client's byte count and checksum match the origin's"
    );
    assert!(
        peak < base + RSS_SLACK,
        "sluice RSS grew from {base} to {peak} bytes during a {TOTAL}-byte download"
    );
}

// --------------------------------------------------------------- upgrade --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_tunnels_bytes_both_ways() {
    let origin = Origin::serve(|mut req: Request<Incoming>, _| async move {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on.await else { return };
            let mut io = TokioIo::new(upgraded);
            if io.write_all(b"hello from origin\n").await.is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let mut echo = b"echo:".to_vec();
                        echo.extend_from_slice(&buf[..n]);
                        if io.write_all(&echo).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "test")
            .body(empty())
            .unwrap()
    })
    .await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));

    let mut send = h1_conn(d.addr("http")).await;
    let req = Request::builder()
        .uri("/ws")
        .header("host", "localhost")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .expect("101 in time")
        .expect("upgrade response");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    assert_eq!(resp.headers()["sec-websocket-accept"], "test");

    let seen = only_seen(&origin);
    assert!(
        seen.headers["connection"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("upgrade"),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.headers["upgrade"], "websocket");

    let upgraded = tokio::time::timeout(PATIENCE, hyper::upgrade::on(resp))
        .await
        .expect("upgrade in time")
        .expect("client side upgraded");
    let mut io = TokioIo::new(upgraded);
    let mut greeting = [0u8; 18];
    tokio::time::timeout(PATIENCE, io.read_exact(&mut greeting))
        .await
        .expect("greeting in time")
        .expect("greeting");
    assert_eq!(&greeting, b"hello from origin\n");

    for msg in [&b"ping through sluice"[..], b"and again"] {
        io.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len() + 5];
        tokio::time::timeout(PATIENCE, io.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(&back[..5], b"echo:");
        assert_eq!(&back[5..], msg);
    }
}

// ------------------------------------------------------------ keep-alive --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (a, r) = (accepts.clone(), requests.clone());
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            a.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    r.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(Response::new(full("kept alive")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let d = Daemon::start(&simple_config(&[origin], ""));

    const N: usize = 10;
    for i in 0..N {
        let r = get(d.addr("http"), &format!("/seq/{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "kept alive");
    }
    assert_eq!(requests.load(Ordering::SeqCst), N);
    let conns = accepts.load(Ordering::SeqCst);
    assert!(
        conns < N,
        "{N} sequential requests used {conns} upstream connections"
    );
    server.abort();
}

// --------------------------------------------------------------- routing --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_host_and_path_in_file_order() {
    let api = Origin::hello().await;
    let stat = Origin::hello().await;
    let wild = Origin::hello().await;
    let other = Origin::hello().await;
    let config = format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "api"
hosts = ["api.example.com"]
pool = "api"

[[route]]
name = "static"
path_prefix = "/static/"
pool = "static"

[[route]]
name = "wild"
hosts = ["*.example.com"]
pool = "wild"

[[route]]
name = "shadowed"
hosts = ["www.example.com"]
pool = "other"

[[route]]
name = "other"
hosts = ["other.test"]
path_prefix = "/app/"
pool = "other"

[pool.api]
servers = [ {{ addr = "{}" }} ]

[pool.static]
servers = [ {{ addr = "{}" }} ]

[pool.wild]
servers = [ {{ addr = "{}" }} ]

[pool.other]
servers = [ {{ addr = "{}" }} ]
"#,
        api.addr, stat.addr, wild.addr, other.addr
    );
    let d = Daemon::start(&config);
    let names = [
        (api.addr.port(), "api"),
        (stat.addr.port(), "static"),
        (wild.addr.port(), "wild"),
        (other.addr.port(), "other"),
    ];
    let cases = [
        ("api.example.com", "/", Some("api")),
        ("API.Example.COM:8080", "/x", Some("api")),
        ("api.example.com.", "/x", Some("api")),
        ("api.example.com", "/static/app.js", Some("api")),
        ("www.example.com", "/static/app.js", Some("static")),
        ("nomatch.org", "/static/a", Some("static")),
        ("nomatch.org", "/staticx", None),
        ("www.example.com", "/", Some("wild")),
        ("Deep.A.Example.Com:81", "/y", Some("wild")),
        ("example.com", "/", None),
        ("badexample.com", "/", None),
        ("other.test", "/app/1", Some("other")),
        ("other.test", "/", None),
        ("nomatch.org", "/", None),
    ];
    let mut expected_hits = [0usize; 4];
    for (host, path, want) in cases {
        let r = h1(d.addr("http"), request(Method::GET, path, host, empty())).await;
        match want {
            Some(pool) => {
                assert_eq!(r.status, 200, "{host} {path}: {}", r.text());
                let port: u16 = r
                    .text()
                    .strip_prefix("origin ")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("{host} {path}: {}", r.text()));
                let got = names.iter().find(|(p, _)| *p == port).map(|(_, n)| *n);
                assert_eq!(got, Some(pool), "{host} {path}");
                expected_hits[names.iter().position(|(_, n)| *n == pool).unwrap()] += 1;
            }
            None => {
                assert_eq!(r.status, 404, "{host} {path}: {}", r.text());
                assert!(!r.text().is_empty() && r.text().len() < 200, "{}", r.text());
                assert!(
                    r.header("content-type")
                        .is_some_and(|c| c.starts_with("text/plain")),
                    "{:?}",
                    r.headers
                );
            }
        }
    }
    let hits = [api.hits(), stat.hits(), wild.hits(), other.hits()];
    assert_eq!(
        hits, expected_hits,
        "hits per origin (api, static, wild, other)"
    );
}

/// One raw HTTP/1.1 request for `target` (sent byte for byte, as no HTTP
/// library would); the status and body of the answer.
async fn raw_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let (buf, complete) = read_raw_response(&mut stream, NoLength::UntilClose).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (end, _) = complete.unwrap_or_else(|| panic!("{target}: no whole response: {text:?}"));
    let (status, _) = parse_head(&text[..end]).unwrap_or_else(|| panic!("{text:?}"));
    (status, text[end + 4..].to_string())
}

/// Every spelling of a path lands on the route its normalised form names,
/// and the origin is sent that normalised form (query untouched), so that
/// a `path_prefix` is a boundary proxy and origin agree on. Case stays
/// significant. `path_normalization = "off"` keeps paths as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_routing_and_forwarding() {
    let admin = Origin::hello().await;
    let app = Origin::hello().await;
    let config = format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[listener]]
name = "literal"
listen = "127.0.0.1:0"
path_normalization = "off"

[[route]]
name = "admin"
path_prefix = "/admin/"
pool = "admin"

[[route]]
name = "app"
pool = "app"

[pool.admin]
servers = [ {{ addr = "{}" }} ]

[pool.app]
servers = [ {{ addr = "{}" }} ]
"#,
        admin.addr, app.addr
    );
    let d = Daemon::start(&config);
    let is = |origin: &Origin| format!("origin {}", origin.addr.port());
    let cases = [
        ("/admin/", &admin, "/admin/"),
        ("//admin/", &admin, "/admin/"),
        ("/x/../admin/", &admin, "/admin/"),
        ("/%61dmin/", &admin, "/admin/"),
        ("/x/%2e%2E/admin/./users", &admin, "/admin/users"),
        ("/Admin/", &app, "/Admin/"),
        ("/admin/../x", &app, "/x"),
        ("/admin%2F..%2Fx", &app, "/admin%2F..%2Fx"),
        (
            "/x/../admin/?next=/../%2e%2e",
            &admin,
            "/admin/?next=/../%2e%2e",
        ),
    ];
    for (target, origin, sent) in cases {
        let before = origin.seen().len();
        let (status, body) = raw_get(d.addr("http"), target).await;
        assert_eq!(status, 200, "{target}: {body}");
        assert_eq!(body, is(origin), "{target} went to the wrong pool");
        let seen = origin.seen();
        assert_eq!(seen.len(), before + 1, "{target}");
        let got = seen
            .last()
            .unwrap()
            .uri
            .path_and_query()
            .unwrap()
            .as_str()
            .to_string();
        assert_eq!(got, sent, "{target}: what the origin was sent");
    }
    // Not a percent-encoding: refused, not guessed at.
    let (status, _) = raw_get(d.addr("http"), "/admin/%zz").await;
    assert_eq!(status, 400);

    // With normalisation off, the path is routed and sent as it came.
    let (status, body) = raw_get(d.addr("literal"), "/x/../admin/").await;
    assert_eq!((status, body), (200, is(&app)));
    let sent = app.seen().last().unwrap().uri.to_string();
    assert_eq!(sent, "/x/../admin/");
}

/// An upstream response head must fit in about 64 KiB, the most sluice buffers
/// of an upstream connection (as much as a client's request head may be):
/// a larger one is a bad response (502), never a partial one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_head_beyond_64_kib_is_a_502() {
    let origin = Origin::serve(|req: Request<Incoming>, _| async move {
        let size: usize = req.uri().path()[1..].parse().unwrap_or(0);
        Response::builder()
            .header("x-big", "v".repeat(size))
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let d = Daemon::start(&simple_config(&[origin.addr], "retries = 0"));
    let addr = d.addr("http");
    let fits = get(addr, &format!("/{}", 60 << 10)).await;
    assert_eq!(fits.status, 200);
    assert_eq!(fits.header("x-big").map(str::len), Some(60 << 10));
    let too_big = get(addr, &format!("/{}", 200 << 10)).await;
    assert_eq!(too_big.status, 502);
}
