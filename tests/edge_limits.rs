//! Client limits at the edge (issue 8, point 3), end to end with the real
//! daemon: per-client connection caps, the keep-alive and head timers, the
//! minimum upload rate, the header-count limit, slowloris and idle
//! connections next to normal traffic, a burst of concurrent requests, and
//! slow readers that must not make sluice buffer a response.
//!
//! Nothing here asserts how long something took: timers are configured
//! small and the tests wait for their effect (a closed socket, a status).

mod common;
use common::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

// --------------------------------------------------------------- helpers --

/// Raises this process's open-file soft limit to at least `want` (up to the
/// hard limit) so that many-connection tests do not hit the common default
/// of 1024; a daemon started afterwards inherits it.
fn raise_nofile(want: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) else {
        return;
    };
    let mut fields = line.split_whitespace().skip(3);
    let soft: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let hard: u64 = fields
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    if soft >= want {
        return;
    }
    let target = want.min(hard);
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={target}:{hard}"))
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "open-file limit {soft} is below the {want} this test needs and prlimit could not raise it"
    );
}

/// Open file descriptors of process `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Polls `cond` until it holds, failing after [`PATIENCE`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP connection to `addr` from source address `from`.
async fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    socket.connect(addr).await
}

/// One response read off a raw socket: the status and the body (by
/// `Content-Length`); the connection stays usable.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let (buf, complete) = read_raw_response(stream, NoLength::Empty).await;
    let (end, length) =
        complete.unwrap_or_else(|| panic!("connection closed before a response: {buf:?}"));
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]);
    (status, body.into_owned())
}

/// Reads until the peer closes; returns what arrived. A reset counts as a
/// close. Fails after [`PATIENCE`] (a hang guard, not a timing assertion).
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                    return;
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the daemon closed the connection");
    out
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

// ------------------------------------------------------ per-client limit --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_client_cap_are_closed_and_other_clients_served() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&limits_config(
        origin.addr,
        "max_connections_per_client = 2",
    ));
    let addr = d.addr("http");
    let local = Ipv4Addr::new(127, 0, 0, 1);

    // Two keep-alive connections from 127.0.0.1, both served and kept open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect_from(local, addr).await.unwrap();
        c.write_all(GET).await.unwrap();
        assert_eq!(read_response(&mut c).await.0, 200);
        held.push(c);
    }

    // A third from the same address is closed without an answer.
    let mut third = connect_from(local, addr).await.unwrap();
    let _ = third.write_all(GET).await;
    let got = read_until_closed(&mut third).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));

    // Another client address is unaffected.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr)
        .await
        .unwrap();
    other.write_all(GET).await.unwrap();
    assert_eq!(read_response(&mut other).await.0, 200);

    // The held connections still work.
    for c in &mut held {
        c.write_all(GET).await.unwrap();
        assert_eq!(read_response(c).await.0, 200);
    }

    // Once one of them leaves, 127.0.0.1 gets a slot back (as soon as the
    // daemon has seen the close).
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut c = connect_from(local, addr).await.unwrap();
        let _ = c.write_all(GET).await;
        let got = read_until_closed_or_response(&mut c).await;
        if got.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        assert!(Instant::now() < deadline, "no slot came free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.hits(), 6);
}

/// Reads one response head, or nothing if the daemon closes first.
async fn read_until_closed_or_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if find(&out, b"\r\n\r\n").is_some() {
                return;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("a response or a close");
    out
}

// ------------------------------------------------------------ keep-alive --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_timeout_closes_idle_connections() {
    let origin = Origin::hello().await;
    // The head timer is far away: only keepalive_timeout can close these.
    let d = Daemon::start(&limits_config(
        origin.addr,
        "keepalive_timeout = \"200ms\"\nheader_read_timeout = \"1h\"",
    ));
    let addr = d.addr("http");

    // HTTP/1.1: a complete exchange, then the daemon ends the idle
    // connection cleanly (EOF, nothing more sent).
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(GET).await.unwrap();
    assert_eq!(read_response(&mut c).await.0, 200);
    let after = read_until_closed(&mut c).await;
    assert!(after.is_empty(), "{}", String::from_utf8_lossy(&after));

    // HTTP/2: the connection ends once idle.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let r = h2_send(
        &mut send,
        h2_request(Method::GET, "http://localhost/", empty()),
    )
    .await;
    assert_eq!(r.status, 200);
    tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .unwrap()
        .ok();
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_read_timeout_does_not_end_an_idle_keepalive_connection() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&limits_config(
        origin.addr,
        "keepalive_timeout = \"1h\"\nheader_read_timeout = \"200ms\"",
    ));
    let mut c = TcpStream::connect(d.addr("http")).await.unwrap();
    c.write_all(GET).await.unwrap();
    assert_eq!(read_response(&mut c).await.0, 200);
    // Idle for several times header_read_timeout (time passing is the point
    // here, nothing is being waited for), then reused.
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.write_all(GET).await.unwrap();
    assert_eq!(read_response(&mut c).await.0, 200);

    // Once the next head has started, the head timer runs.
    c.write_all(b"GET / HTTP/1.1\r\nHost: local").await.unwrap();
    let got = read_until_closed(&mut c).await;
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(origin.hits(), 2);
}

// -------------------------------------------------------- min body rate --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_slower_than_min_body_rate_gets_408() {
    let (origin, complete) = body_counting_origin().await;
    let d = Daemon::start(&limits_config(
        origin.addr,
        "min_body_rate = \"1KiB/s\"\nbody_rate_grace = \"300ms\"",
    ));
    let addr = d.addr("http");

    // A fast upload passes.
    let body = "u".repeat(100_000);
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n{body}").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut c).await, (200, "got 100000".to_string()));

    // A trickle of a few bytes per second is cut off with 408.
    let c = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    wr.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nstart")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        // The slow client under test: one byte every 100ms until cut off.
        while wr.write_all(b"t").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        while find(&got, b"\r\n\r\n").is_none() {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("an answer");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    trickle.abort();
    assert_eq!(
        complete.load(Ordering::SeqCst),
        1,
        "the origin never got the slow body as if it were complete"
    );
}

// ------------------------------------------------------- header count --

fn request_with_fields(n: usize) -> Vec<u8> {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 1..n {
        head.push_str(&format!("X-Field-{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_header_fields_get_431_with_per_listener_limits() {
    let origin = Origin::hello().await;
    let config = format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[listener]]
name = "roomy"
listen = "127.0.0.1:0"

[listener.limits]
max_header_count = 60

[[route]]
pool = "app"

[pool.app]
servers = [ {{ addr = "{}" }} ]

[limits]
max_header_count = 20
"#,
        origin.addr
    );
    let d = Daemon::start(&config);

    let mut c = TcpStream::connect(d.addr("http")).await.unwrap();
    c.write_all(&request_with_fields(20)).await.unwrap();
    assert_eq!(read_response(&mut c).await.0, 200, "exactly the limit");

    let mut c = TcpStream::connect(d.addr("http")).await.unwrap();
    c.write_all(&request_with_fields(30)).await.unwrap();
    assert_eq!(read_response(&mut c).await.0, 431);

    // The other listener has its own, higher limit.
    let mut c = TcpStream::connect(d.addr("roomy")).await.unwrap();
    c.write_all(&request_with_fields(30)).await.unwrap();
    assert_eq!(read_response(&mut c).await.0, 200);
    let mut c = TcpStream::connect(d.addr("roomy")).await.unwrap();
    c.write_all(&request_with_fields(61)).await.unwrap();
    assert_eq!(read_response(&mut c).await.0, 431);

    // HTTP/2 counts fields too.
    let mut h2 = h2c_conn(d.addr("http")).await;
    let mut req = h2_request(Method::GET, "http://a/", empty());
    for i in 0..30 {
        req.headers_mut().insert(
            format!("x-field-{i}").parse::<http::HeaderName>().unwrap(),
            "v".parse().unwrap(),
        );
    }
    assert_eq!(h2_send(&mut h2, req).await.status, 431);
    assert_eq!(origin.hits(), 2);
}

// ------------------------------------- slowloris and idle connections --

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_and_idle_keepalive_connections_leave_normal_requests_unaffected() {
    const SLOWLORIS: usize = 300;
    const IDLE: usize = 1000;
    const NORMAL: usize = 200;
    raise_nofile(8192);
    let origin = Origin::hello().await;
    // Heads that never finish would be cut off after header_read_timeout;
    // keep them around for the whole test.
    let d = Daemon::start(&limits_config(origin.addr, "header_read_timeout = \"5m\""));
    let addr = d.addr("http");
    let base_fds = fd_count(d.pid());

    let mut attackers = Vec::new();
    for _ in 0..SLOWLORIS {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await
            .unwrap();
        attackers.push(c);
    }
    let idle = futures_join(
        (0..IDLE)
            .map(|_| async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(GET).await.unwrap();
                assert_eq!(read_response(&mut c).await.0, 200);
                c
            })
            .collect(),
    )
    .await;
    attackers.extend(idle);
    // Every one of them is accepted and held by the daemon.
    let pid = d.pid();
    wait_until("the daemon to hold every connection", || {
        fd_count(pid) >= base_fds + SLOWLORIS + IDLE
    })
    .await;

    let statuses = futures_join(
        (0..NORMAL)
            .map(|i| async move {
                if i % 2 == 0 {
                    get(addr, "/").await.status
                } else {
                    let mut h2 = h2c_conn(addr).await;
                    h2_send(
                        &mut h2,
                        h2_request(Method::GET, "http://localhost/", empty()),
                    )
                    .await
                    .status
                }
            })
            .collect(),
    )
    .await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert!(
        fd_count(pid) >= base_fds + SLOWLORIS + IDLE,
        "the attacking connections were still open while normal requests were served"
    );
    assert_eq!(origin.hits(), IDLE + NORMAL);
    drop(attackers);
}

/// Runs `futures` concurrently as tasks and returns their outputs in order.
async fn futures_join<T, F>(futures: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

// ----------------------------------------------------------------- burst --

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_2000_concurrent_requests_gets_no_5xx() {
    raise_nofile(16384);
    let origin = Origin::hello().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let addr = d.addr("http");

    // Half over fresh HTTP/1.1 connections, half as streams on 10 HTTP/2
    // connections, all started at once.
    let mut h2s = Vec::new();
    for _ in 0..10 {
        h2s.push(h2c_conn(addr).await);
    }
    let requests: Vec<_> = (0..2000)
        .map(|i| {
            let h2 = (i % 2 == 1).then(|| h2s[(i / 2) % 10].clone());
            async move {
                match h2 {
                    None => {
                        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                        let (mut send, conn) = hyper::client::conn::http1::handshake(
                            hyper_util::rt::TokioIo::new(stream),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        tokio::spawn(conn);
                        let r = send
                            .send_request(request(Method::GET, "/", "localhost", empty()))
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok::<_, String>(r.status())
                    }
                    Some(mut send) => {
                        let r = send
                            .send_request(h2_request(Method::GET, "http://localhost/", empty()))
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok(r.status())
                    }
                }
            }
        })
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(120), futures_join(requests))
        .await
        .expect("the burst completed");
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Ok(s) if *s == StatusCode::OK))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 2000 failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert_eq!(origin.hits(), 2000);
}

// ---------------------------------------------------------- slow readers --

const BIG: u64 = 256 << 20;
const CHUNK: usize = 64 << 10;

/// An origin that streams [`BIG`] bytes per request, produced only as fast
/// as they are taken; `produced` counts what it has handed over.
async fn streaming_origin(produced: Arc<AtomicU64>) -> Origin {
    Origin::serve(move |_req: Request<Incoming>, _| {
        let produced = produced.clone();
        async move {
            let (tx, rx) = mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; CHUNK]);
                for _ in 0..BIG / CHUNK as u64 {
                    if tx.send(chunk.clone()).await.is_err() {
                        return;
                    }
                    produced.fetch_add(CHUNK as u64, Ordering::SeqCst);
                }
            });
            Response::builder()
                .header("content-length", BIG.to_string())
                .body(ChanBody(rx).boxed())
                .unwrap()
        }
    })
    .await
}

/// Waits until `produced` has stopped moving: the pipeline from origin to
/// client is full and held back by flow control.
async fn wait_for_backpressure(produced: &AtomicU64) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    let mut last = produced.load(Ordering::SeqCst);
    let mut still = 0;
    while still < 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = produced.load(Ordering::SeqCst);
        if now == last && now > 0 {
            still += 1;
        } else {
            still = 0;
            last = now;
        }
        assert!(
            Instant::now() < deadline,
            "the origin never stalled ({now} bytes)"
        );
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_make_sluice_buffer_the_response() {
    let produced = Arc::new(AtomicU64::new(0));
    let origin = streaming_origin(produced.clone()).await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let addr = d.addr("http");
    let baseline = d.rss_bytes();

    // HTTP/1.1: the request is sent, and nothing is read at all.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let stalled = wait_for_backpressure(&produced).await;
    let grown = d.rss_bytes().saturating_sub(baseline);
    assert!(
        stalled < BIG / 4,
        "{stalled} of {BIG} bytes were pulled from the origin"
    );
    assert!(grown < 64 << 20, "daemon memory grew by {grown} bytes");

    // The whole response arrives once the client reads it.
    let mut total = 0u64;
    let mut chunk = vec![0u8; 1 << 16];
    let read = async {
        loop {
            match c.read(&mut chunk).await.unwrap() {
                0 => break,
                n => total += n as u64,
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the response in time");
    assert!(total > BIG, "got {total} bytes");
    drop(c);

    // HTTP/2: the response head is taken, the body never polled.
    produced.store(0, Ordering::SeqCst);
    let mut h2 = h2c_conn(addr).await;
    let resp = tokio::time::timeout(
        PATIENCE,
        h2.send_request(h2_request(Method::GET, "http://localhost/", empty())),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 200);
    let stalled = wait_for_backpressure(&produced).await;
    let grown = d.rss_bytes().saturating_sub(baseline);
    assert!(
        stalled < BIG / 4,
        "{stalled} of {BIG} bytes were pulled from the origin"
    );
    assert!(grown < 64 << 20, "daemon memory grew by {grown} bytes");
    let mut body = resp.into_body();
    let mut total = 0u64;
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("body data in time")
    {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len() as u64;
        }
    }
    assert_eq!(total, BIG);
}
