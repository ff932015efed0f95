//! HTTP/1.1 to members, as sluice writes and reads it itself: response
//! framings (chunked with trailers, close-delimited, split into many small
//! writes), interim responses, a pooled connection the member closed, a
//! response with conflicting framing, and a request body streamed chunked.
//! Each origin here is raw TCP, so every byte the member sends is the
//! test's choice and every byte sluice sends is seen.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What a scripted origin does with one request.
struct Answer {
    bytes: Vec<u8>,
    /// Written one byte at a time, each its own segment.
    dribble: bool,
    /// The connection is closed once the answer is written.
    close: bool,
}

impl Answer {
    fn whole(bytes: &[u8]) -> Answer {
        Answer {
            bytes: bytes.to_vec(),
            dribble: false,
            close: false,
        }
    }
}

/// A request as the origin read it: the connection it came on (from 1),
/// its head, and its body decoded.
#[derive(Debug, Clone)]
struct Received {
    conn: usize,
    head: String,
    body: Vec<u8>,
}

/// A raw TCP origin that answers the `n`th request (from 1, over all
/// connections) with `script(n)`, and tells `closed` each time it closed a
/// connection after an answer.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
    closed: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    async fn wait_closed(&self) {
        let mut closed = self.closed.lock().await;
        tokio::time::timeout(PATIENCE, closed.recv())
            .await
            .expect("the origin closed a connection in time");
    }
}

async fn scripted(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    let script = Arc::new(script);
    let (c, r) = (connections.clone(), received.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let conn = c.fetch_add(1, Ordering::SeqCst) + 1;
            let (r, script, closed) = (r.clone(), script.clone(), closed_tx.clone());
            tokio::spawn(async move {
                serve(stream, conn, &r, &*script, &closed).await;
            });
        }
    });
    Scripted {
        addr,
        connections,
        received,
        closed: tokio::sync::Mutex::new(closed_rx),
        task,
    }
}

async fn serve(
    mut stream: TcpStream,
    conn: usize,
    received: &Mutex<Vec<Received>>,
    script: &(dyn Fn(usize) -> Answer + Send + Sync),
    closed: &mpsc::UnboundedSender<()>,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let n = {
            let mut r = received.lock().unwrap();
            r.push(Received {
                conn,
                head: req.0,
                body: req.1,
            });
            r.len()
        };
        let answer = script(n);
        if answer.dribble {
            for b in &answer.bytes {
                if stream.write_all(&[*b]).await.is_err() {
                    return;
                }
                stream.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        } else if stream.write_all(&answer.bytes).await.is_err() {
            return;
        }
        if answer.close {
            drop(stream);
            let _ = closed.send(());
            return;
        }
    }
}

/// Reads one request (head lower-cased, body decoded from its
/// Content-Length or chunked framing); `None` once the peer closed.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end + 4);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let line = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                fill(stream, buf).await?;
            };
            let size_text = String::from_utf8_lossy(&buf[..line]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..line + 2);
            if size == 0 {
                // No trailers are sent by sluice here: the final CRLF.
                while buf.len() < 2 {
                    fill(stream, buf).await?;
                }
                buf.drain(..2);
                break;
            }
            while buf.len() < size + 2 {
                fill(stream, buf).await?;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else if let Some(n) = length {
        while buf.len() < n {
            fill(stream, buf).await?;
        }
        body = buf.drain(..n).collect();
    }
    Some((head, body))
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// A later request's answer: `ok <n>`, kept alive.
fn ok(n: usize) -> Answer {
    let body = format!("ok {n}");
    Answer::whole(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// The daemon in front of `origin`, one worker (connections are pooled per
/// worker, so counts are exact), no retries by the proxy.
fn daemon(origin: &Scripted) -> Daemon {
    Daemon::start(&one_worker(&simple_config(&[origin.addr], "retries = 0")))
}

/// `GET path` over h2c, with the response's trailers.
async fn get_with_trailers(addr: SocketAddr, path: &str) -> (u16, Bytes, http::HeaderMap) {
    let mut send = h2c_conn(addr).await;
    let req = h2_request(Method::GET, &format!("http://localhost{path}"), empty());
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("whole body");
    let trailers = body.trailers().cloned().unwrap_or_default();
    (status, body.to_bytes(), trailers)
}

const CHUNKED_WITH_TRAILERS: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;name=value\r\n, world\r\n0\r\nx-checksum: 42\r\nx-other: two words\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_arrives_whole_with_its_trailers_and_the_connection_is_reused() {
    let origin = scripted(|n| {
        if n == 1 {
            Answer::whole(CHUNKED_WITH_TRAILERS)
        } else {
            ok(n)
        }
    })
    .await;
    let d = daemon(&origin);
    let (status, body, trailers) = get_with_trailers(d.addr("http"), "/chunked").await;
    assert_eq!(status, 200);
    assert_eq!(body, "hello, world");
    assert_eq!(trailers["x-checksum"], "42");
    assert_eq!(trailers["x-other"], "two words");
    assert_eq!(get(d.addr("http"), "/next").await.text(), "ok 2");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_written_one_byte_at_a_time_is_read_whole() {
    let origin = scripted(|n| match n {
        1 => Answer {
            bytes: CHUNKED_WITH_TRAILERS.to_vec(),
            dribble: true,
            close: false,
        },
        2 => Answer {
            bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: b\r\n\r\nhello again".to_vec(),
            dribble: true,
            close: false,
        },
        n => ok(n),
    })
    .await;
    let d = daemon(&origin);
    let (status, body, trailers) = get_with_trailers(d.addr("http"), "/dribble").await;
    assert_eq!(status, 200);
    assert_eq!(body, "hello, world");
    assert_eq!(trailers["x-checksum"], "42");
    let r = get(d.addr("http"), "/dribble-length").await;
    assert_eq!(r.text(), "hello again");
    assert_eq!(r.header("x-a"), Some("b"));
    assert_eq!(get(d.addr("http"), "/next").await.text(), "ok 3");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_response_ends_when_the_member_closes() {
    let origin = scripted(|n| match n {
        1 => Answer {
            bytes: b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the very end"
                .to_vec(),
            dribble: false,
            close: true,
        },
        n => ok(n),
    })
    .await;
    let d = daemon(&origin);
    let r = get(d.addr("http"), "/eof").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "until the very end");
    // That connection is gone: the next request opens another.
    let r = get(d.addr("http"), "/next").await;
    assert_eq!(r.text(), "ok 2");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_not_passed_on_and_the_final_one_is() {
    let origin = scripted(|n| match n {
        1 => Answer::whole(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        ),
        n => ok(n),
    })
    .await;
    let d = daemon(&origin);
    let r = get(d.addr("http"), "/early").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "final");
    assert_eq!(r.header("link"), None);
    assert_eq!(get(d.addr("http"), "/next").await.text(), "ok 2");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_member_closed_is_not_used_and_the_request_goes_on_a_new_one() {
    let origin = scripted(|n| match n {
        1 => Answer {
            bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst".to_vec(),
            dribble: false,
            close: true,
        },
        n => ok(n),
    })
    .await;
    let d = daemon(&origin);
    assert_eq!(get(d.addr("http"), "/first").await.text(), "first");
    // The member closed the idle connection after a keep-alive answer.
    origin.wait_closed().await;
    // A POST is never retried by the proxy (and `retries = 0`): it can
    // only succeed if it was sent on a new connection in the first place.
    let r = h1(
        d.addr("http"),
        request(Method::POST, "/second", "localhost", full("payload")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "ok 2");
    let seen = origin.received();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].conn, 2);
    assert_eq!(seen[1].body, b"payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_framing_gets_502_and_the_connection_is_not_reused() {
    let origin = scripted(|n| match n {
        1 => Answer::whole(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        2 => Answer::whole(b"HTTP/1.1 200 OK\r\nContent-Length: x1\r\n\r\nhi"),
        n => ok(n),
    })
    .await;
    let d = daemon(&origin);
    let r = get(d.addr("http"), "/both").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(!r.text().contains("hello"));
    let r = get(d.addr("http"), "/invalid-length").await;
    assert_eq!(r.status, 502, "{}", r.text());
    let r = get(d.addr("http"), "/next").await;
    assert_eq!(r.text(), "ok 3");
    let conns: Vec<usize> = origin.received().iter().map(|r| r.conn).collect();
    assert_eq!(conns, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_of_unknown_length_is_streamed_chunked() {
    let origin = scripted(ok).await;
    let d = daemon(&origin);
    let (tx, rx) = mpsc::channel(4);
    let body = ChanBody(rx).boxed();
    let req = request(Method::POST, "/upload", "localhost", body);
    let sending = tokio::spawn(async move { h1(d.addr("http"), req).await });
    for part in ["first part, ", "second part, ", "last part"] {
        tx.send(Bytes::from(part)).await.unwrap();
    }
    drop(tx);
    let r = sending.await.unwrap();
    assert_eq!(r.text(), "ok 1");
    let seen = origin.received();
    assert!(
        seen[0].head.contains("\r\ntransfer-encoding: chunked"),
        "{}",
        seen[0].head
    );
    assert!(!seen[0].head.contains("content-length"), "{}", seen[0].head);
    assert_eq!(seen[0].body, b"first part, second part, last part");

    // A body of known length goes with its Content-Length.
    let d2 = daemon(&origin);
    let r = h1(
        d2.addr("http"),
        request(Method::PUT, "/put", "localhost", full("twelve bytes")),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = origin.received();
    assert!(
        seen[1].head.contains("\r\ncontent-length: 12"),
        "{}",
        seen[1].head
    );
    assert_eq!(seen[1].body, b"twelve bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_the_member_sends_right_after_its_101_reach_the_client() {
    // The member's first message of the new protocol comes in the same
    // segment as the 101: it is read with the head, and must not be lost.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let member = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_request(&mut s, &mut buf)
            .await
            .expect("the upgrade request");
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nhello from the member\n")
            .await
            .unwrap();
        // Then an echo of whatever comes.
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => s.write_all(&chunk[..n]).await.unwrap(),
            }
        }
    });
    let d = Daemon::start(&one_worker(&simple_config(&[origin], "")));
    let mut client = TcpStream::connect(d.addr("http")).await.unwrap();
    client
        .write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let until = |seen: &[u8], what: &[u8]| find(seen, what).is_some();
    tokio::time::timeout(PATIENCE, async {
        while !until(&seen, b"hello from the member\n") {
            fill(&mut client, &mut seen).await.expect("the greeting");
        }
    })
    .await
    .expect("the greeting in time");
    assert!(
        seen.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    client.write_all(b"ping\n").await.unwrap();
    tokio::time::timeout(PATIENCE, async {
        while !until(&seen, b"ping\n") {
            fill(&mut client, &mut seen).await.expect("the echo");
        }
    })
    .await
    .expect("the echo in time");
    drop(client);
    member.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_answers_leave_the_connection_ready_and_close_is_obeyed() {
    let origin = scripted(|n| match n {
        // HEAD: the length is the GET's, no body follows.
        1 => Answer::whole(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        2 => Answer::whole(b"HTTP/1.1 204 No Content\r\n\r\n"),
        3 => Answer::whole(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"),
        // The member asks to close: the next request needs a new connection.
        4 => {
            Answer::whole(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbye!")
        }
        n => ok(n),
    })
    .await;
    let d = daemon(&origin);
    let r = h1(
        d.addr("http"),
        request(Method::HEAD, "/head", "localhost", empty()),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("5"));
    assert!(r.body.is_empty());
    assert_eq!(get(d.addr("http"), "/empty").await.status, 204);
    let r = h1(
        d.addr("http"),
        request_with_headers(
            Method::GET,
            "/cond",
            "localhost",
            &[("if-none-match", "\"x\"")],
        ),
    )
    .await;
    assert_eq!(r.status, 304);
    assert_eq!(get(d.addr("http"), "/close").await.text(), "bye!");
    assert_eq!(get(d.addr("http"), "/next").await.text(), "ok 5");
    let conns: Vec<usize> = origin.received().iter().map(|r| r.conn).collect();
    assert_eq!(conns, [1, 1, 1, 1, 2]);
}

/// A body of the given frames, of no declared length, that says it has
/// ended as soon as its last frame is taken (as an HTTP/2 request body
/// whose last DATA frame carries END_STREAM does).
struct Frames(std::collections::VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|d| Ok(http_body::Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_whose_last_frame_ends_it_is_framed_in_order() {
    let origin = scripted(ok).await;
    let d = daemon(&origin);
    let mut send = h2c_conn(d.addr("http")).await;
    let body = Frames(
        ["one, ", "two, ", "three"]
            .into_iter()
            .map(Bytes::from)
            .collect(),
    );
    let req = h2_request(Method::POST, "http://localhost/upload", body.boxed());
    let r = h2_send(&mut send, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = origin.received();
    assert!(
        seen[0].head.contains("\r\ntransfer-encoding: chunked"),
        "{}",
        seen[0].head
    );
    assert_eq!(seen[0].body, b"one, two, three");
    // The connection is still in step: the next request on it is answered.
    assert_eq!(get(d.addr("http"), "/next").await.text(), "ok 2");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_upload_ends_reaches_the_client() {
    // The member refuses the upload from its head alone, answering while
    // the body is still coming (and reading the rest away).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let member = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        while find(&buf, b"\r\n\r\n").is_none() {
            fill(&mut s, &mut buf).await.expect("the request head");
        }
        s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
            .await
            .unwrap();
        while fill(&mut s, &mut buf).await.is_some() {
            buf.clear();
        }
    });
    let d = Daemon::start(&one_worker(&simple_config(&[origin], "")));
    let (tx, rx) = mpsc::channel(4);
    let req = request(Method::POST, "/upload", "localhost", ChanBody(rx).boxed());
    tx.send(Bytes::from_static(b"the first part"))
        .await
        .unwrap();
    // The rest of the body never comes while the answer is awaited.
    let r = h1(d.addr("http"), req).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.text(), "too big!");
    drop(tx);
    member.abort();
}
