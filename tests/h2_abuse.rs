//! HTTP/2 abuse (issue 8, point 4), end to end with the real daemon and
//! attacking clients written with raw frames over TCP: the advertised
//! bounds, refused streams over the concurrency limit, the rapid-reset
//! attack (CVE-2023-44487) and a CONTINUATION flood. Each attacking
//! connection must be closed with GOAWAY while other clients keep being
//! served.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{Method, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

// ------------------------------------------------------------ raw frames --

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const NO_ERROR: u32 = 0x0;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;

/// One frame: 24-bit length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `GET http://localhost{path}` as an HPACK block of static-table indices
/// and literals: :method GET, :scheme http, :path, :authority.
fn get_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    if path == "/" {
        block.push(0x84);
    } else {
        // Literal without indexing, name = static index 4 (:path).
        block.push(0x04);
        block.push(u8::try_from(path.len()).unwrap());
        block.extend_from_slice(path.as_bytes());
    }
    // Literal with incremental indexing, name = static index 1 (:authority).
    block.push(0x41);
    block.push(9);
    block.extend_from_slice(b"localhost");
    block
}

/// A TCP connection that has sent the client preface and empty SETTINGS.
async fn h2_raw(addr: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    c.write_all(&hello).await.expect("preface");
    c
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The next frame, or `None` once the connection is closed (or reset).
async fn read_frame(rd: &mut OwnedReadHalf) -> Option<Frame> {
    let mut head = [0u8; 9];
    rd.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// How an attacking connection ended, as the attacker saw it.
#[derive(Debug, Default)]
struct Ending {
    /// The GOAWAY error code, if one arrived.
    goaway: Option<u32>,
    /// The connection was closed after it.
    closed: bool,
}

/// Reads frames until the daemon closes the connection, noting a GOAWAY;
/// flips `stop` once one arrives so the attacker stops writing.
async fn watch_for_goaway(mut rd: OwnedReadHalf, stop: Arc<AtomicBool>) -> Ending {
    let mut ending = Ending::default();
    let read = async {
        while let Some(f) = read_frame(&mut rd).await {
            if f.kind == GOAWAY && f.payload.len() >= 8 {
                let code = u32::from_be_bytes(f.payload[4..8].try_into().unwrap());
                ending.goaway.get_or_insert(code);
                stop.store(true, Ordering::SeqCst);
            }
        }
        ending.closed = true;
    };
    let _ = tokio::time::timeout(PATIENCE, read).await;
    stop.store(true, Ordering::SeqCst);
    ending
}

/// Normal traffic next to an attack: `n` requests, half over one HTTP/2
/// connection and half over fresh HTTP/1.1 connections, all concurrent.
async fn victim_traffic(addr: SocketAddr, n: usize) -> Vec<StatusCode> {
    let h2 = h2c_conn(addr).await;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut h2 = h2.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    let req = h2_request(Method::GET, "http://localhost/victim", empty());
                    h2_send(&mut h2, req).await.status
                } else {
                    get(addr, "/victim").await.status
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("victim request"));
    }
    out
}

fn attacker_hits(origin: &Origin) -> usize {
    origin
        .seen()
        .iter()
        .filter(|s| s.uri.path() != "/victim")
        .count()
}

// ------------------------------------------------------------- settings --

/// The daemon's SETTINGS frame, as (identifier, value) pairs.
async fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    let (mut rd, _wr) = h2_raw(addr).await.into_split();
    let f = tokio::time::timeout(PATIENCE, read_frame(&mut rd))
        .await
        .expect("server SETTINGS in time")
        .expect("server SETTINGS");
    assert_eq!((f.kind, f.flags & 1), (SETTINGS, 0), "{f:?}");
    f.payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_bounds_are_advertised_from_the_config() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let s = server_settings(d.addr("http")).await;
    // MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE defaults.
    assert!(s.contains(&(0x3, 128)), "{s:?}");
    assert!(s.contains(&(0x5, 16384)), "{s:?}");
    assert!(s.contains(&(0x6, 65536)), "{s:?}");
    drop(d);

    let d = Daemon::start(&simple_config(
        &[origin.addr],
        "\n[limits]\nh2_max_concurrent_streams = 7\nh2_max_frame_size = \"32KiB\"\nmax_header_bytes = \"16KiB\"\n",
    ));
    let s = server_settings(d.addr("http")).await;
    assert!(s.contains(&(0x3, 7)), "{s:?}");
    assert!(s.contains(&(0x5, 32768)), "{s:?}");
    assert!(s.contains(&(0x6, 16384)), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_concurrency_limit_are_refused() {
    // An origin that holds every request until released.
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let origin = Origin::serve(move |_req, _| {
        let g = g.clone();
        async move {
            g.acquire().await.expect("gate").forget();
            Response::new(full("released"))
        }
    })
    .await;
    let d = Daemon::start(&simple_config(
        &[origin.addr],
        "\n[limits]\nh2_max_concurrent_streams = 2\n",
    ));
    let (mut rd, mut wr) = h2_raw(d.addr("http")).await.into_split();
    // Wait for the daemon's SETTINGS (with the limit) and acknowledge them,
    // as a real client would before relying on them.
    let f = read_frame(&mut rd).await.expect("settings");
    assert_eq!(f.kind, SETTINGS);
    wr.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();

    let mut out = Vec::new();
    for id in [1u32, 3, 5] {
        out.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &get_block("/"),
        ));
    }
    wr.write_all(&out).await.unwrap();

    let mut refused = None;
    let mut answered = Vec::new();
    let read = async {
        while answered.len() < 2 {
            let f = read_frame(&mut rd).await.expect("connection open");
            match f.kind {
                RST_STREAM => {
                    let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                    refused = Some((f.stream, code));
                    // Only now let the two admitted requests finish.
                    gate.add_permits(2);
                }
                HEADERS => answered.push(f.stream),
                DATA | SETTINGS | WINDOW_UPDATE => {}
                other => panic!("unexpected frame type {other}: {f:?}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("responses in time");
    assert_eq!(refused, Some((5, REFUSED_STREAM)));
    answered.sort();
    assert_eq!(answered, [1, 3]);
    assert_eq!(origin.hits(), 2);
}

// ---------------------------------------------------------- rapid reset --

/// Opens streams and cancels each at once (HEADERS then RST_STREAM), up to
/// `pairs` times or until the daemon closes the connection; `batch` pairs
/// go out per write.
async fn rapid_reset(addr: SocketAddr, pairs: u32, batch: u32) -> (Ending, u32) {
    let (rd, mut wr) = h2_raw(addr).await.into_split();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_for_goaway(rd, stop.clone()));
    let mut sent = 0;
    while sent < pairs && !stop.load(Ordering::SeqCst) {
        let mut out = Vec::new();
        for _ in 0..batch {
            let id = 2 * sent + 1;
            out.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &get_block("/"),
            ));
            out.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            sent += 1;
        }
        if wr.write_all(&out).await.is_err() {
            break;
        }
    }
    (watcher.await.expect("watcher"), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rapid_reset_gets_goaway_while_other_clients_are_served() {
    const PAIRS: u32 = 100_000;
    let origin = Origin::hello().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let addr = d.addr("http");

    // Two attackers (many pairs per write, and one pair per write) next to
    // normal traffic.
    let (batched, single, victims) = tokio::join!(
        rapid_reset(addr, PAIRS, 100),
        rapid_reset(addr, PAIRS, 1),
        victim_traffic(addr, 200),
    );
    for (what, (ending, sent)) in [("batched", batched), ("one pair per write", single)] {
        let code = ending
            .goaway
            .unwrap_or_else(|| panic!("{what}: no GOAWAY after {sent} pairs: {ending:?}"));
        assert_ne!(code, NO_ERROR, "{what}: GOAWAY must carry an error");
        assert!(ending.closed, "{what}: connection left open");
        assert!(sent < PAIRS, "{what}: all {sent} pairs were accepted");
    }
    assert!(victims.iter().all(|s| *s == StatusCode::OK), "{victims:?}");
    // After the attack, normal traffic still flows.
    assert!(victim_traffic(addr, 20)
        .await
        .iter()
        .all(|s| *s == StatusCode::OK));
    let reached = attacker_hits(&origin);
    assert!(
        reached < 1000,
        "{reached} cancelled streams were forwarded to the origin"
    );
}

// --------------------------------------------------- CONTINUATION flood --

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continuation_flood_gets_goaway_while_other_clients_are_served() {
    const FRAMES: u32 = 1_000_000;
    let origin = Origin::hello().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let addr = d.addr("http");

    let attack = async {
        let (rd, mut wr) = h2_raw(addr).await.into_split();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(watch_for_goaway(rd, stop.clone()));
        // A header block that never ends: HEADERS without END_HEADERS, then
        // CONTINUATION frames without it, each carrying one more field
        // (literal, not indexed: x-a: b).
        let mut out = frame(HEADERS, END_STREAM, 1, &[0x82, 0x86, 0x84]);
        let field = [0x00, 0x03, b'x', b'-', b'a', 0x01, b'b'];
        let mut sent = 0;
        while sent < FRAMES && !stop.load(Ordering::SeqCst) {
            for _ in 0..100 {
                out.extend(frame(CONTINUATION, 0, 1, &field));
                sent += 1;
            }
            if wr.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        (watcher.await.expect("watcher"), sent)
    };
    let ((ending, sent), victims) = tokio::join!(attack, victim_traffic(addr, 100));
    let code = ending
        .goaway
        .unwrap_or_else(|| panic!("no GOAWAY after {sent} CONTINUATION frames: {ending:?}"));
    assert_ne!(code, NO_ERROR);
    assert!(ending.closed, "connection left open");
    assert!(sent < FRAMES, "all {sent} frames were accepted");
    assert!(victims.iter().all(|s| *s == StatusCode::OK), "{victims:?}");
    assert_eq!(attacker_hits(&origin), 0);
}
