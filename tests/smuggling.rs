//! Request smuggling and framing, end to end on raw TCP (RFC 9112 §6-7,
//! RFC 9113 §8.3.1): hostile payloads against the real daemon in front of
//! origins that count what reaches them. Every refused payload gets a 400
//! (never a 5xx), the connection is closed, and the origin sees nothing (or,
//! where a valid request precedes the garbage, exactly that one request).
//! Pipelined requests stay separate, ordered, and are each forwarded once,
//! re-framed by sluice. Upstream responses with malformed or ambiguous heads
//! get the client a 502, and their connection is never reused.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// --------------------------------------------------------------- helpers --

/// How long a refused connection may stay open after its response.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// One response parsed off a raw socket.
#[derive(Debug)]
struct RawReply {
    status: u16,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What came back on one connection.
#[derive(Debug)]
struct Exchange {
    replies: Vec<RawReply>,
    /// The daemon closed the connection (EOF or reset).
    closed: bool,
    /// Everything received, for failure messages.
    text: String,
}

/// Parses one complete response from the front of `buf`, returning it and
/// its length; `None` while incomplete. `eof` completes a body delimited by
/// the connection closing.
fn parse_reply(buf: &[u8], eof: bool) -> Option<(RawReply, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let (status, fields) = parse_head(&head)?;
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let start = end + 4;
    if let Some(len) = get("content-length") {
        let len: usize = len.parse().ok()?;
        let body = buf.get(start..start + len)?.to_vec();
        return Some((
            RawReply {
                status,
                fields,
                body,
            },
            start + len,
        ));
    }
    if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        let mut at = start;
        let mut body = Vec::new();
        loop {
            let line_end = at + find(&buf[at..], b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[at..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                let trailers_end = at + find(&buf[at..], b"\r\n")?;
                // Trailer lines are not expected here; the final CRLF is.
                return Some((
                    RawReply {
                        status,
                        fields,
                        body,
                    },
                    trailers_end + 2,
                ));
            }
            body.extend_from_slice(buf.get(at..at + size)?);
            at += size + 2;
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Some((
            RawReply {
                status,
                fields,
                body: Vec::new(),
            },
            start,
        ));
    }
    eof.then(|| {
        (
            RawReply {
                status,
                fields,
                body: buf[start..].to_vec(),
            },
            buf.len(),
        )
    })
}

/// Reads responses off `stream` until `want` have arrived and then, with
/// `to_close`, until the daemon closes the connection.
async fn read_replies(stream: &mut TcpStream, want: usize, to_close: bool) -> Exchange {
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut consumed = 0;
    let mut closed = false;
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            while let Some((reply, len)) = parse_reply(&buf[consumed..], false) {
                replies.push(reply);
                consumed += len;
            }
            if replies.len() >= want && !to_close {
                return;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    closed = true;
                    if let Some((reply, len)) = parse_reply(&buf[consumed..], true) {
                        replies.push(reply);
                        consumed += len;
                    }
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let limit = if to_close {
        PATIENCE.min(CLOSE_WITHIN * 2)
    } else {
        PATIENCE
    };
    let _ = tokio::time::timeout(limit, read).await;
    Exchange {
        replies,
        closed,
        text: String::from_utf8_lossy(&buf).into_owned(),
    }
}

/// Writes `bytes` in one go on a fresh connection (tolerating an early
/// close) and reads until the daemon closes it.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(bytes).await;
    read_replies(&mut stream, usize::MAX, true).await
}

/// An origin that answers `<method> <path> <body>`, counting the bodies it
/// received completely.
async fn echo_origin() -> (Origin, Arc<AtomicUsize>) {
    let complete = Arc::new(AtomicUsize::new(0));
    let c = complete.clone();
    let origin = Origin::serve(move |req: Request<Incoming>, _| {
        let c = c.clone();
        async move {
            let head = format!("{} {}", req.method(), req.uri().path());
            match req.into_body().collect().await {
                Ok(body) => {
                    c.fetch_add(1, Ordering::SeqCst);
                    let body = body.to_bytes();
                    Response::new(full(format!("{head} {}", String::from_utf8_lossy(&body))))
                }
                Err(e) => Response::new(full(format!("{head} body error: {e}"))),
            }
        }
    })
    .await;
    (origin, complete)
}

/// Asserts what every refused payload must produce: exactly one response,
/// a 400 (a short plain-text message with `Connection: close`), and the
/// connection closed.
fn assert_refused(what: &str, x: &Exchange) {
    assert_eq!(
        x.replies.len(),
        1,
        "{what}: expected one response:\n{}",
        x.text
    );
    let r = &x.replies[0];
    assert_eq!(r.status, 400, "{what}:\n{}", x.text);
    assert!(x.closed, "{what}: connection left open:\n{}", x.text);
}

// ------------------------------------------------------ hostile payloads --

/// `POST /x` with `fields` and then `body`.
fn post(fields: &str, body: &str) -> Vec<u8> {
    format!("POST /x HTTP/1.1\r\nHost: a\r\n{fields}\r\n\r\n{body}").into_bytes()
}

fn hostile_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let chunked = "Transfer-Encoding: chunked";
    vec![
        (
            "CL then TE",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked",
                "0\r\n\r\n",
            ),
        ),
        (
            "TE then CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 5",
                "0\r\n\r\n",
            ),
        ),
        (
            "CL and TE with extra OWS",
            post(
                "Content-Length: 5\r\nTransfer-Encoding:   chunked ",
                "0\r\n\r\n",
            ),
        ),
        (
            "CL and TE in other case",
            post(
                "content-length: 5\r\ntransfer-encoding: CHUNKED",
                "0\r\n\r\n",
            ),
        ),
        (
            "TE xchunked",
            post("Transfer-Encoding: xchunked", "0\r\n\r\n"),
        ),
        (
            "TE chunked, identity",
            post("Transfer-Encoding: chunked, identity", "0\r\n\r\n"),
        ),
        ("TE identity", post("Transfer-Encoding: identity", "hello")),
        (
            "TE gzip, chunked",
            post("Transfer-Encoding: gzip, chunked", "0\r\n\r\n"),
        ),
        (
            "TE twice",
            post(&format!("{chunked}\r\n{chunked}"), "0\r\n\r\n"),
        ),
        (
            "TE with space before the colon",
            post("Transfer-Encoding : chunked", "0\r\n\r\n"),
        ),
        (
            "TE folded onto the previous line",
            post("X-A: b\r\n Transfer-Encoding: chunked", "0\r\n\r\n"),
        ),
        (
            "TE behind a vertical tab",
            post("Transfer-Encoding:\x0bchunked", "0\r\n\r\n"),
        ),
        (
            "TE quoted",
            post("Transfer-Encoding: \"chunked\"", "0\r\n\r\n"),
        ),
        (
            "TE in HTTP/1.0",
            b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "duplicate CL differing",
            post("Content-Length: 5\r\nContent-Length: 6", "hello!"),
        ),
        ("CL list differing", post("Content-Length: 5, 6", "hello!")),
        ("CL +5", post("Content-Length: +5", "hello")),
        ("CL -1", post("Content-Length: -1", "")),
        (
            "CL huge",
            post("Content-Length: 99999999999999999999999", "hello"),
        ),
        ("CL hex", post("Content-Length: 0x5", "hello")),
        (
            "whitespace before colon",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n".to_vec(),
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  c\r\n\r\n".to_vec(),
        ),
        (
            "bare CR in a value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n".to_vec(),
        ),
        (
            "NUL in a value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n".to_vec(),
        ),
        (
            "DEL in a value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n".to_vec(),
        ),
        (
            "bad chunk size zz",
            post(chunked, "zz\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "overflowing chunk size",
            post(chunked, "10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "negative chunk size",
            post(chunked, "-5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk data longer than declared",
            post(chunked, "3\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "missing CRLF after chunk data",
            post(chunked, "5\r\nhello0\r\n\r\n"),
        ),
        (
            "bare LF after chunk size",
            post(chunked, "5\nhello\r\n0\r\n\r\n"),
        ),
        (
            "obs-fold in trailers",
            post(chunked, "5\r\nhello\r\n0\r\nX-T: 1\r\n folded\r\n\r\n"),
        ),
        (
            "invalid method",
            b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        ),
        (
            "control character in method",
            b"G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        ),
        (
            "invalid target (no slash)",
            b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        ),
        (
            "invalid target (space)",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        ),
        (
            "invalid target (asterisk with GET)",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        ),
        (
            "invalid target (DEL)",
            b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        ),
        (
            "invalid version",
            b"GET / HTTP/1.2\r\nHost: a\r\n\r\n".to_vec(),
        ),
        ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        (
            "two Host fields",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
        ),
        (
            "absolute-form and Host disagreeing",
            b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n".to_vec(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_get_400_and_close_and_never_reach_the_origin() {
    let (origin, _) = echo_origin().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let addr = d.addr("http");
    for (what, bytes) in hostile_payloads() {
        let x = exchange(addr, &bytes).await;
        assert_refused(what, &x);
        assert_eq!(origin.hits(), 0, "{what} reached the origin");
    }
    // The daemon still serves: a well-framed request on a fresh connection.
    let r = get(addr, "/fine").await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_a_short_plain_text_message() {
    let (origin, _) = echo_origin().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let x = exchange(
        d.addr("http"),
        &post(
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
            "0\r\n\r\n",
        ),
    )
    .await;
    assert_refused("CL and TE", &x);
    let r = &x.replies[0];
    assert_eq!(r.header("connection"), Some("close"), "{}", x.text);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{}",
        x.text
    );
    assert!(
        r.text().contains("Content-Length") && r.body.len() < 200,
        "{}",
        x.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_framing_broken_after_forwarding_began_gets_400_not_502() {
    let (origin, complete) = echo_origin().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let mut stream = TcpStream::connect(d.addr("http")).await.unwrap();
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
    // Wait until the head has been forwarded, so the break arrives while
    // the body is streaming upstream.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while origin.hits() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "head never forwarded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stream.write_all(b"zz\r\n").await.unwrap();
    let x = read_replies(&mut stream, 1, true).await;
    assert_refused("bad chunk size mid-body", &x);
    assert!(x.replies[0].status < 500);
    // The origin saw the head but never a complete body.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(complete.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_cut_short_is_not_blamed_on_the_upstream() {
    let (origin, complete) = echo_origin().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let mut stream = TcpStream::connect(d.addr("http")).await.unwrap();
    stream
        .write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly part")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while origin.hits() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "head never forwarded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The client stops sending (half-close): the body can never complete.
    stream.shutdown().await.unwrap();
    let x = read_replies(&mut stream, 1, true).await;
    assert!(x.closed, "{}", x.text);
    for r in &x.replies {
        assert!(r.status < 500, "a truncated upload got a 5xx:\n{}", x.text);
    }
    assert_eq!(complete.load(Ordering::SeqCst), 0);
}

// ------------------------------------------------------------ pipelining --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_each_forwarded_once() {
    let (origin, complete) = echo_origin().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let mut stream = TcpStream::connect(d.addr("http")).await.unwrap();
    let bytes = [
        &b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n222",
        b"POST /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"2;ext=1\r\n33\r\n3\r\n333\r\n0\r\nX-Trailer: t\r\n\r\n",
    ]
    .concat();
    stream.write_all(&bytes).await.unwrap();
    let x = read_replies(&mut stream, 3, false).await;
    let bodies: Vec<String> = x.replies.iter().map(RawReply::text).collect();
    assert_eq!(
        bodies,
        ["GET /one ", "POST /two 222", "POST /three 33333"],
        "{}",
        x.text
    );
    assert!(x.replies.iter().all(|r| r.status == 200), "{}", x.text);

    let seen = origin.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.uri.path()).collect();
    assert_eq!(paths, ["/one", "/two", "/three"]);
    assert_eq!(complete.load(Ordering::SeqCst), 3);
    // Re-framed by sluice: each request upstream carries one framing of
    // sluice's choosing, never both, never the client's Transfer-Encoding
    // list.
    for s in &seen {
        let cl = s.headers.get_all("content-length").iter().count();
        let te: Vec<_> = s.headers.get_all("transfer-encoding").iter().collect();
        assert!(cl + te.len() <= 1, "ambiguous framing upstream: {s:?}");
        assert!(te.iter().all(|v| *v == "chunked"), "{s:?}");
    }
    assert!(!seen[0].headers.contains_key("transfer-encoding"));
    assert!(
        seen[1].headers.contains_key("content-length")
            || seen[1].headers.contains_key("transfer-encoding")
    );
    assert!(
        seen[2].headers.contains_key("content-length")
            || seen[2].headers.contains_key("transfer-encoding")
    );

    // The connection is still usable afterwards.
    stream
        .write_all(b"GET /four HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let x = read_replies(&mut stream, 1, false).await;
    assert_eq!(x.replies[0].text(), "GET /four ", "{}", x.text);
    assert_eq!(origin.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_smuggling_attempt_is_refused_after_the_valid_request() {
    let (origin, _) = echo_origin().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let addr = d.addr("http");
    let cases: [(&str, &[u8]); 3] = [
        (
            "CL.TE",
            b"POST /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "TE.TE obfuscated",
            b"POST /smuggle HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "broken chunk",
            b"POST /smuggle HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
    ];
    for (i, (what, attack)) in cases.into_iter().enumerate() {
        let bytes = [&b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"[..], attack].concat();
        let x = exchange(addr, &bytes).await;
        assert_eq!(x.replies.len(), 2, "{what}:\n{}", x.text);
        assert_eq!(x.replies[0].status, 200, "{what}:\n{}", x.text);
        assert_eq!(x.replies[0].text(), "GET /first ");
        assert_eq!(x.replies[1].status, 400, "{what}:\n{}", x.text);
        assert!(x.closed, "{what}: connection left open");
        assert_eq!(origin.hits(), i + 1, "{what}");
        assert_eq!(origin.seen().last().unwrap().uri.path(), "/first");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_request_then_garbage_reaches_the_origin_once() {
    let (origin, _) = echo_origin().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    for (i, garbage) in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = [
            &b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok"[..],
            garbage,
        ]
        .concat();
        let x = exchange(d.addr("http"), &bytes).await;
        assert_eq!(x.replies.len(), 2, "{}", x.text);
        assert_eq!(x.replies[0].text(), "POST /first ok");
        assert_eq!(x.replies[1].status, 400, "{}", x.text);
        assert!(x.closed);
        assert_eq!(origin.hits(), i + 1);
    }
}

// ------------------------------------------------------------ HTTP/2 --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9113_8_3_1_authority_and_host_must_agree() {
    let (origin, _) = echo_origin().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let mut h2 = h2c_conn(d.addr("http")).await;

    let mut req = h2_request(Method::GET, "http://a.example/x", empty());
    req.headers_mut()
        .insert("host", "b.example".parse().unwrap());
    let r = h2_send(&mut h2, req).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(origin.hits(), 0);

    // The same entity spelled differently is the same authority.
    let mut req = h2_request(Method::GET, "http://a.example/x", empty());
    req.headers_mut()
        .insert("host", "A.example:80".parse().unwrap());
    let r = h2_send(&mut h2, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_passes_the_framing_guard() {
    let (origin, _) = echo_origin().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let mut h2 = h2c_conn(d.addr("http")).await;
    for i in 0..3 {
        let r = h2_send(
            &mut h2,
            h2_request(
                Method::POST,
                "http://a.example/h2",
                full(format!("body {i}")),
            ),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("POST /h2 body {i}"));
    }
}

// -------------------------------------------------------------- upstream --

/// A raw TCP origin: the first request it ever receives is answered with
/// `first`, verbatim; every later one with `ok <connection number>`.
/// Connections stay open, so reuse is visible.
struct RawOrigin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Connection number of each request, in arrival order.
    requests: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_origin(first: &'static [u8]) -> RawOrigin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (c, r) = (connections.clone(), requests.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let conn = c.fetch_add(1, Ordering::SeqCst) + 1;
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Requests from sluice here have no body.
                    while let Some(end) = find(&buf, b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let n = {
                            let mut r = r.lock().unwrap();
                            r.push(conn);
                            r.len()
                        };
                        let reply = if n == 1 {
                            first.to_vec()
                        } else {
                            let body = format!("ok {conn}");
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .into_bytes()
                        };
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    RawOrigin {
        addr,
        connections,
        requests,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_ambiguous_upstream_responses_get_502_and_a_closed_connection() {
    let cases: [(&str, &'static [u8]); 9] = [
        (
            "CL and TE, with a smuggled response after the chunked end",
            b"HTTP/1.1 200 OK\r\nContent-Length: 48\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
        ),
        (
            "TE then CL",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "TE other than chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot really gzip",
        ),
        (
            "bad status line",
            b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nhi",
        ),
        ("not HTTP", b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
        (
            "invalid header",
            b"HTTP/1.1 200 OK\r\nBad Header\r\nContent-Length: 2\r\n\r\nhi",
        ),
        (
            "obs-fold",
            b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\nhi",
        ),
        (
            "whitespace before colon",
            b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nhi",
        ),
        (
            "differing Content-Lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi!",
        ),
    ];
    for (what, first) in cases {
        let origin = raw_origin(first).await;
        // Upstream connections are pooled per worker thread: one worker
        // makes the connection counts exact.
        let d = Daemon::start(&one_worker(&simple_config(&[origin.addr], "")));
        let r = get(d.addr("http"), "/bad").await;
        assert_eq!(r.status, 502, "{what}: {}", r.text());
        assert!(!r.text().contains("smuggled"), "{what}");

        // The next request goes out on a new connection: the one that
        // carried the bad response was closed, not pooled.
        let r = get(d.addr("http"), "/next").await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(r.text(), "ok 2", "{what}: reused the bad connection");
        assert_eq!(*origin.requests.lock().unwrap(), [1, 2], "{what}");
        assert_eq!(origin.connections.load(Ordering::SeqCst), 2, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_upstream_connections_are_still_reused() {
    // Control for the test above: without a bad response, one connection
    // serves every request.
    let origin = raw_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst").await;
    // Upstream connections are pooled per worker thread: one worker
    // makes the connection counts exact.
    let d = Daemon::start(&one_worker(&simple_config(&[origin.addr], "")));
    assert_eq!(get(d.addr("http"), "/1").await.text(), "first");
    assert_eq!(get(d.addr("http"), "/2").await.text(), "ok 1");
    assert_eq!(get(d.addr("http"), "/3").await.text(), "ok 1");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_body_with_broken_chunks_is_not_relayed_as_complete() {
    let origin = raw_origin(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
    )
    .await;
    // Upstream connections are pooled per worker thread: one worker
    // makes the connection counts exact.
    let d = Daemon::start(&one_worker(&simple_config(&[origin.addr], "")));
    let mut stream = TcpStream::connect(d.addr("http")).await.unwrap();
    stream
        .write_all(b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let x = read_replies(&mut stream, usize::MAX, true).await;
    assert!(x.closed, "{}", x.text);
    // The head was already on its way; the body must not end cleanly.
    assert!(
        x.replies.is_empty(),
        "a complete response was relayed:\n{}",
        x.text
    );
    assert!(!x.text.contains("more"), "{}", x.text);

    let r = get(d.addr("http"), "/next").await;
    assert_eq!(r.text(), "ok 2");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);
}

// ------------------------------------------------------- TLS and upgrades --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_over_tls_is_guarded_too() {
    let (origin, _) = echo_origin().await;
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = pki.issue(dir.path(), "a", &["a.test"]);
    let config = format!(
        r#"
[[listener]]
name = "https"
listen = "127.0.0.1:0"
[listener.tls]
certs = [ {{ cert = '{}', key = '{}' }} ]

[[route]]
name = "main"
pool = "app"

[pool.app]
servers = [ {{ addr = "{}" }} ]
"#,
        cert.display(),
        key.display(),
        origin.addr
    );
    let d = Daemon::start_in(dir, &config);
    let versions = &[&rustls::version::TLS13];
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let conn = tls_connect(d.addr("https"), "a.test", pki.client_config(alpn, versions))
            .await
            .expect("handshake");
        let mut stream = conn.stream;
        stream
            .write_all(
                &[
                    &b"GET /first HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
                    b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n",
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                ]
                .concat(),
            )
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let mut statuses = Vec::new();
        let mut at = 0;
        while let Some((reply, len)) = parse_reply(&buf[at..], true) {
            statuses.push(reply.status);
            at += len;
        }
        assert_eq!(statuses, [200, 400], "{alpn:?}: {text}");
    }
    assert_eq!(origin.hits(), 2, "only the two valid requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_answered_without_switching_keeps_the_connection_usable() {
    // The origin ignores Upgrade and answers 200: the connection stays
    // HTTP/1.1 and the guard follows it again.
    let (origin, _) = echo_origin().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let mut stream = TcpStream::connect(d.addr("http")).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let x = read_replies(&mut stream, 1, false).await;
    assert_eq!(x.replies[0].status, 200, "{}", x.text);
    assert_eq!(x.replies[0].header("connection"), None, "{}", x.text);
    stream
        .write_all(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let x = read_replies(&mut stream, 1, false).await;
    assert_eq!(x.replies[0].status, 200, "{}", x.text);
    assert_eq!(x.replies[0].text(), "GET /after ");
    stream
        .write_all(&post(
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
            "0\r\n\r\n",
        ))
        .await
        .unwrap();
    let x = read_replies(&mut stream, 1, true).await;
    assert_refused("smuggling after a declined upgrade", &x);
    assert_eq!(origin.hits(), 2);
}
