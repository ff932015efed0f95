//! Cache fills of the real daemon as they stream: followers of a fill in
//! flight read the bytes the origin has sent so far and then the rest
//! (streaming coalescing), the origin is read at its own pace whatever the
//! clients do, a failed or oversized body ends the same way for everyone,
//! HEAD and ranges are answered from a fill, and the memory all fills hold
//! stays within `[cache] max_fill_memory`.
//!
//! The origin here writes each response body as the test says, so every
//! "before the origin finished" is a fact of the test, not a race.

mod common;
use common::*;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const HOST: &str = "example.com";

fn config(origin: SocketAddr, cache: &str) -> String {
    admin_route_config(origin, "cache = true", &format!("[cache]\n{cache}"))
}

/// An origin whose response bodies the test writes. Every response is
/// cacheable (`max-age=600`); a path `/len/N/...` is answered with
/// `Content-Length: N`, any other chunked.
struct Streamer {
    origin: Origin,
    heads: mpsc::UnboundedReceiver<(String, mpsc::Sender<Bytes>)>,
}

impl Streamer {
    async fn start() -> Streamer {
        let (tx, heads) = mpsc::unbounded_channel();
        let origin = Origin::serve(move |req: Request<Incoming>, _| {
            let tx = tx.clone();
            async move {
                let path = req.uri().path().to_string();
                let (body_tx, body_rx) = mpsc::channel(1024);
                let mut b = Response::builder().header("cache-control", "max-age=600");
                let length = path
                    .strip_prefix("/len/")
                    .and_then(|rest| rest.split('/').next())
                    .and_then(|n| n.parse::<u64>().ok());
                if let Some(n) = length {
                    b = b.header("content-length", n);
                }
                let _ = tx.send((path, body_tx));
                b.body(ChanBody(body_rx).boxed()).unwrap()
            }
        })
        .await;
        Streamer { origin, heads }
    }

    /// The next request to reach the origin, and the sender of its body.
    async fn next(&mut self) -> (String, mpsc::Sender<Bytes>) {
        tokio::time::timeout(PATIENCE, self.heads.recv())
            .await
            .expect("a request reached the origin")
            .expect("origin running")
    }

    fn addr(&self) -> SocketAddr {
        self.origin.addr
    }
}

/// Sends `method path` with `headers` and returns the response as soon as
/// its head is in, its body still streaming.
async fn open(
    d: &Daemon,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<Incoming> {
    let mut send = h1_conn(d.addr("http")).await;
    let req = request_with_headers(method, path, HOST, headers);
    tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .expect("a response head in time")
        .expect("a response")
}

async fn get(d: &Daemon, path: &str) -> Response<Incoming> {
    open(d, Method::GET, path, &[]).await
}

/// Reads exactly `n` body bytes (frames may split anywhere).
async fn read_exactly(body: &mut Incoming, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        while got.len() < n {
            let frame = body.frame().await.expect("more body").expect("body frame");
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("body bytes in time");
    assert_eq!(got.len(), n, "no more than asked for");
    got
}

/// The rest of a body, or the error that ended it.
async fn rest(body: Incoming) -> Result<Bytes, hyper::Error> {
    tokio::time::timeout(PATIENCE, body.collect())
        .await
        .expect("the body ends in time")
        .map(|c| c.to_bytes())
}

fn cache_status(resp: &Response<Incoming>) -> String {
    resp.headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn bytes(b: u8, n: usize) -> Bytes {
    Bytes::from(vec![b; n])
}

// ------------------------------------------------- streaming coalescing --

#[tokio::test]
async fn followers_get_the_bytes_so_far_at_once_then_the_rest_with_one_origin_request() {
    let mut o = Streamer::start().await;
    // Followers would wait a minute for a whole body: longer than a test may.
    let d = Daemon::start(&config(o.addr(), "lock_timeout = \"60s\""));
    let leader = get(&d, "/big").await;
    let (_, origin_body) = o.next().await;
    origin_body.send(bytes(b'a', 1000)).await.unwrap();
    let mut leader = leader.into_body();
    assert_eq!(read_exactly(&mut leader, 1000).await, vec![b'a'; 1000]);

    let mut followers = Vec::new();
    for _ in 0..20 {
        let r = get(&d, "/big").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            cache_status(&r).contains("collapsed"),
            "{}",
            cache_status(&r)
        );
        let mut body = r.into_body();
        assert_eq!(read_exactly(&mut body, 1000).await, vec![b'a'; 1000]);
        followers.push(body);
    }
    origin_body.send(bytes(b'b', 3000)).await.unwrap();
    drop(origin_body);
    for body in followers.into_iter().chain([leader]) {
        assert_eq!(rest(body).await.unwrap(), bytes(b'b', 3000));
    }
    assert_eq!(o.origin.hits(), 1, "one origin request for 21 clients");
    // And it was stored whole.
    let again = get(&d, "/big").await;
    assert!(
        cache_status(&again).starts_with("sluice; hit"),
        "{}",
        cache_status(&again)
    );
    assert_eq!(rest(again.into_body()).await.unwrap().len(), 4000);
}

#[tokio::test]
async fn a_failed_origin_body_fails_every_follower_and_stores_nothing() {
    let mut o = Streamer::start().await;
    let d = Daemon::start(&config(o.addr(), "lock_timeout = \"60s\""));
    let leader = get(&d, "/len/2000/cut").await;
    let (_, origin_body) = o.next().await;
    origin_body.send(bytes(b'x', 1000)).await.unwrap();
    let follower = get(&d, "/len/2000/cut").await;
    assert!(cache_status(&follower).contains("collapsed"));
    let mut follower = follower.into_body();
    read_exactly(&mut follower, 1000).await;
    // The origin stops 1000 bytes short of its Content-Length.
    drop(origin_body);
    assert!(
        rest(leader.into_body()).await.is_err(),
        "the leader's body must not look whole"
    );
    assert!(rest(follower).await.is_err(), "nor the follower's");
    // Nothing was stored: the next request goes to the origin.
    let again = get(&d, "/len/2000/cut").await;
    let (path, origin_body) = o.next().await;
    assert_eq!(path, "/len/2000/cut");
    origin_body.send(bytes(b'y', 2000)).await.unwrap();
    assert_eq!(rest(again.into_body()).await.unwrap().len(), 2000);
}

#[tokio::test]
async fn an_object_found_too_large_mid_stream_reaches_everyone_uncached() {
    let mut o = Streamer::start().await;
    let d = Daemon::start(&config(
        o.addr(),
        "max_object_size = \"64KiB\"\nlock_timeout = \"60s\"",
    ));
    let leader = get(&d, "/huge").await;
    let (_, origin_body) = o.next().await;
    origin_body.send(bytes(b'h', 16 << 10)).await.unwrap();
    let mut leader = leader.into_body();
    read_exactly(&mut leader, 16 << 10).await;
    let follower = get(&d, "/huge").await;
    let mut follower = follower.into_body();
    read_exactly(&mut follower, 16 << 10).await;
    // No length was given: the body turns out to be 208 KiB.
    for _ in 0..12 {
        origin_body.send(bytes(b'h', 16 << 10)).await.unwrap();
    }
    drop(origin_body);
    let (a, b) = tokio::join!(rest(leader), rest(follower));
    assert_eq!(a.unwrap().len(), 192 << 10);
    assert_eq!(b.unwrap().len(), 192 << 10);
    let again = get(&d, "/huge").await;
    let (_, origin_body) = o.next().await;
    assert!(!cache_status(&again).contains("hit"));
    drop(origin_body);
    let _ = rest(again.into_body()).await;
}

// --------------------------------------------------- the origin's pace --

#[tokio::test]
async fn a_leader_that_reads_nothing_delays_no_one() {
    const SIZE: usize = 16 << 20;
    let origin = Origin::serve(|_req: Request<Incoming>, _| async {
        Response::builder()
            .header("cache-control", "max-age=600")
            .body(full(vec![b'z'; SIZE]))
            .unwrap()
    })
    .await;
    let d = Daemon::start(&config(
        origin.addr,
        "max_size = \"64MiB\"\nmax_object_size = \"32MiB\"\nlock_timeout = \"60s\"",
    ));
    // The leader asks, takes the head, and reads nothing more: far less
    // than the kernel's socket buffers can take of 16 MiB.
    let mut leader = TcpStream::connect(d.addr("http")).await.unwrap();
    leader
        .write_all(b"GET /slow HTTP/1.1\r\nhost: example.com\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, leader.read(&mut head))
        .await
        .expect("the leader's head")
        .unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    // A second client gets the whole body without waiting for the leader
    // (it would wait lock_timeout, a minute, if the fill went at its pace).
    let second = h1(d.addr("http"), request(Method::GET, "/slow", HOST, empty())).await;
    assert_eq!(second.body.len(), SIZE);
    assert_eq!(origin.hits(), 1);
    drop(leader);
}

// ------------------------------------------------- HEAD and ranges --

#[tokio::test]
async fn head_and_ranges_are_answered_from_a_filling_entry() {
    let mut o = Streamer::start().await;
    let d = Daemon::start(&config(o.addr(), "lock_timeout = \"60s\""));
    let pattern: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let leader = get(&d, "/len/1000/r").await;
    let (_, origin_body) = o.next().await;
    origin_body
        .send(Bytes::copy_from_slice(&pattern[..500]))
        .await
        .unwrap();

    // HEAD: from the fill's head, before the body is in.
    let head = open(&d, Method::HEAD, "/len/1000/r", &[]).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "1000");
    assert!(rest(head.into_body()).await.unwrap().is_empty());

    // A range whose bytes are there: answered now.
    let early = open(
        &d,
        Method::GET,
        "/len/1000/r",
        &[("range", "bytes=100-199")],
    )
    .await;
    assert_eq!(early.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(early.headers()["content-range"], "bytes 100-199/1000");
    assert_eq!(rest(early.into_body()).await.unwrap(), pattern[100..200]);

    // A range past what has arrived: its head now, its bytes as they come.
    let late = open(&d, Method::GET, "/len/1000/r", &[("range", "bytes=900-")]).await;
    assert_eq!(late.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(late.headers()["content-range"], "bytes 900-999/1000");
    origin_body
        .send(Bytes::copy_from_slice(&pattern[500..]))
        .await
        .unwrap();
    drop(origin_body);
    assert_eq!(rest(late.into_body()).await.unwrap(), pattern[900..]);
    assert_eq!(rest(leader.into_body()).await.unwrap(), pattern[..]);
    assert_eq!(o.origin.hits(), 1);
}

#[tokio::test]
async fn a_head_miss_is_answered_from_the_get_fill_it_starts() {
    let mut o = Streamer::start().await;
    let d = Daemon::start(&config(o.addr(), "lock_timeout = \"60s\""));
    let head = open(&d, Method::HEAD, "/len/300/h", &[]).await;
    let (_, origin_body) = o.next().await;
    assert_eq!(o.origin.seen()[0].method, Method::GET, "the fill is a GET");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "300");
    // The GET that follows shares the same fill.
    let get_resp = get(&d, "/len/300/h").await;
    origin_body.send(bytes(b'g', 300)).await.unwrap();
    drop(origin_body);
    assert_eq!(rest(get_resp.into_body()).await.unwrap(), bytes(b'g', 300));
    assert_eq!(o.origin.hits(), 1);
}

// ----------------------------------------------------- the fill budget --

fn fill_bytes(samples: &[Sample]) -> f64 {
    value(samples, "sluice_cache_fill_bytes", &[])
}

fn over_budget(samples: &[Sample]) -> f64 {
    value(
        samples,
        "sluice_cache_fill_budget_exceeded_total",
        &[("route", "main")],
    )
}

#[tokio::test]
async fn fills_beyond_max_fill_memory_stream_on_uncached() {
    let mut o = Streamer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let cfg = format!(
        "{}\n[access_log]\nformat = \"json\"\npath = \"{}\"\n",
        config(
            o.addr(),
            "max_object_size = \"1MiB\"\nmax_fill_memory = \"1MiB\"",
        ),
        log.display()
    );
    let d = Daemon::start(&cfg);
    const LEN: usize = 800 << 10;

    const HELD: usize = 600 << 10;

    // A fill of 800 KiB holds what it has received (600 KiB) while it runs.
    let id = |name| [("x-request-id", name)];
    let a = open(&d, Method::GET, &format!("/len/{LEN}/a"), &id("fill-a")).await;
    let (_, a_body) = o.next().await;
    assert_eq!(cache_status(&a), "sluice; fwd=miss");
    a_body.send(bytes(b'x', HELD)).await.unwrap();
    let mut a = a.into_body();
    read_exactly(&mut a, HELD).await;
    // A second known length does not fit beside it: refused before its
    // head goes out.
    let b = open(&d, Method::GET, &format!("/len/{LEN}/b"), &id("fill-b")).await;
    let (_, b_body) = o.next().await;
    assert_eq!(cache_status(&b), "sluice; fwd=miss; detail=fill-budget");
    let (_, samples) = scrape(d.addr("admin")).await;
    assert_eq!(fill_bytes(&samples), HELD as f64);
    assert_eq!(over_budget(&samples), 1.0);
    // An unknown length outgrows what is left (424 KiB) mid-body and
    // relays: its client still gets every byte.
    let c = open(&d, Method::GET, "/chunked/c", &id("fill-c")).await;
    assert_eq!(cache_status(&c), "sluice; fwd=miss");
    let (_, c_body) = o.next().await;
    let sender = tokio::spawn(async move {
        for _ in 0..40 {
            c_body.send(bytes(b'c', 16 << 10)).await.unwrap();
        }
    });
    assert_eq!(rest(c.into_body()).await.unwrap().len(), 640 << 10);
    sender.await.unwrap();
    let (_, samples) = scrape(d.addr("admin")).await;
    assert_eq!(over_budget(&samples), 2.0);
    assert!(fill_bytes(&samples) <= (1 << 20) as f64);

    a_body.send(bytes(b'x', LEN - HELD)).await.unwrap();
    b_body.send(bytes(b'x', LEN)).await.unwrap();
    assert_eq!(rest(a).await.unwrap().len(), LEN - HELD);
    assert_eq!(rest(b.into_body()).await.unwrap().len(), LEN);
    // What was filled is stored; what streamed on is not.
    let a2 = get(&d, &format!("/len/{LEN}/a")).await;
    assert!(cache_status(&a2).starts_with("sluice; hit"));
    let _ = rest(a2.into_body()).await;
    let hits = o.origin.hits();
    let b2 = get(&d, &format!("/len/{LEN}/b")).await;
    let (_, b2_body) = o.next().await;
    assert_eq!(o.origin.hits(), hits + 1);
    drop(b2_body);
    drop(b2);
    // Nothing stays counted once the fills and their readers are done.
    let (_, samples) = scrape_until(d.addr("admin"), |s| fill_bytes(s) == 0.0).await;
    assert_eq!(fill_bytes(&samples), 0.0);

    // The access log says what became of each fill.
    let lines = file_lines(&log, 4);
    let cache_of = |id: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("\"request_id\":\"{id}\"")))
            .and_then(|l| l.split("\"cache\":\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .map(str::to_string)
    };
    assert_eq!(cache_of("fill-a").as_deref(), Some("miss; stored"));
    assert_eq!(
        cache_of("fill-b").as_deref(),
        Some("miss; detail=fill-budget")
    );
    assert_eq!(
        cache_of("fill-c").as_deref(),
        Some("miss; detail=fill-budget")
    );
}

/// The worst case the docs state: N slow clients, each on its own
/// cacheable URL, hold at most `max_fill_memory` in fills; the rest of the
/// misses stream through uncached.
#[tokio::test]
async fn slow_clients_on_distinct_urls_hold_at_most_the_fill_budget() {
    // Larger than the kernel's socket buffers take in for a client that
    // reads nothing, so each fill stays in use.
    const LEN: usize = 8 << 20;
    let origin = Origin::serve(|_req: Request<Incoming>, _| async {
        Response::builder()
            .header("cache-control", "max-age=600")
            .body(full(vec![b's'; LEN]))
            .unwrap()
    })
    .await;
    let d = Daemon::start(&config(
        origin.addr,
        "max_size = \"64MiB\"\nmax_object_size = \"8MiB\"\nmax_fill_memory = \"16MiB\"",
    ));
    let mut clients = Vec::new();
    let mut refused = 0;
    for i in 0..6 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 << 10).unwrap();
        let mut c = socket.connect(d.addr("http")).await.unwrap();
        c.write_all(format!("GET /slow/{i} HTTP/1.1\r\nhost: example.com\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // Reads the head, and then nothing.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while find(&buf, b"\r\n\r\n").is_none() {
            let n = tokio::time::timeout(PATIENCE, c.read(&mut chunk))
                .await
                .expect("a head in time")
                .unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        if head.contains("detail=fill-budget") {
            refused += 1;
        } else {
            // A fill: the next client comes once this one's body is in
            // (the origin is fast; a loaded machine may make it slow).
            let fills = (i + 1 - refused) as f64;
            scrape_until(d.addr("admin"), |s| fill_bytes(s) >= fills * LEN as f64).await;
        }
        clients.push(c);
    }
    assert_eq!(refused, 4, "2 fills of 8 MiB fit in 16 MiB");
    let (_, samples) = scrape(d.addr("admin")).await;
    assert!(fill_bytes(&samples) <= (16 << 20) as f64);
    assert_eq!(over_budget(&samples), 4.0);
    drop(clients);
    let (_, samples) = scrape_until(d.addr("admin"), |s| fill_bytes(s) == 0.0).await;
    assert_eq!(fill_bytes(&samples), 0.0, "released when the clients go");
}
