//! Response compression of the real daemon (issue 5), one test per rule:
//! `Accept-Encoding` negotiation (RFC 9110 §12.5.3), which responses are
//! compressed, the fields a compressed response carries, bodies the
//! upstream already encoded, streaming (server-sent events arrive as they
//! were sent) and the cache's compressed copies. One scripted origin answers
//! every kind of response by path; bodies are decoded with sluice's own
//! codec.

mod common;
use common::*;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sluice::testing::compress::codec::{compress_all, decompress_all, CodecBody};
use sluice::testing::config::{Coding, Level};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::Semaphore;

// ---------------------------------------------------------------- bodies --

const HOST: &str = "example.com";

/// Length of the main test page: well above the default `min_size`.
const PAGE_LEN: usize = 8 * 1024;

const EVENT1: &str = "event: tick\ndata: the first event\n\n";
const EVENT2: &str = "event: tick\ndata: the second event\n\n";

/// Exactly `len` bytes of (compressible) HTML text.
fn page(len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len + 80);
    let mut i = 0;
    while out.len() < len {
        out.push_str(&format!(
            "<li>item {i}: sluice compresses text responses on their way out</li>\n"
        ));
        i += 1;
    }
    out.truncate(len);
    out.into_bytes()
}

fn text() -> Vec<u8> {
    page(PAGE_LEN)
}

/// Bytes that look like an image: not text, not worth compressing.
fn binary(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 % 251) as u8).collect()
}

/// A response body fed from a channel: no length is known, so the origin
/// sends it chunked, each chunk as soon as it is queued.
struct Chunks(UnboundedReceiver<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

// ---------------------------------------------------------------- origin --

/// The scripted origin: every kind of response, by path. `/events` sends
/// its second event only when the test adds a permit to `gate`.
struct Site {
    origin: Origin,
    gate: Arc<Semaphore>,
}

impl Site {
    async fn start() -> Site {
        let gate = Arc::new(Semaphore::new(0));
        let g = gate.clone();
        let origin = Origin::serve(move |req: Request<Incoming>, _| {
            let g = g.clone();
            async move { answer(req, g).await }
        })
        .await;
        Site { origin, gate }
    }

    fn addr(&self) -> SocketAddr {
        self.origin.addr
    }

    /// Requests for `path` that reached the origin.
    fn hits_for(&self, path: &str) -> usize {
        self.origin
            .seen()
            .iter()
            .filter(|s| s.uri.path() == path)
            .count()
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A chunked response of `chunks`, sent one by one.
fn streamed(content_type: &str, chunks: Vec<Vec<u8>>) -> Response<TestBody> {
    let (tx, rx) = unbounded_channel();
    for c in chunks {
        tx.send(Bytes::from(c)).unwrap();
    }
    drop(tx);
    Response::builder()
        .header("content-type", content_type)
        .body(Chunks(rx).boxed())
        .unwrap()
}

async fn answer(req: Request<Incoming>, gate: Arc<Semaphore>) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    let _ = req.into_body().collect().await;
    let html = ("content-type", "text/html; charset=utf-8");
    let (status, headers, body): (u16, Vec<(String, String)>, Vec<u8>) = match path.as_str() {
        "/page" => (200, owned(&[html, ("etag", "\"x\"")]), text()),
        "/identity-ce" => (
            200,
            owned(&[html, ("content-encoding", "identity")]),
            text(),
        ),
        "/small" => (200, owned(&[html]), page(1023)),
        "/edge" => (200, owned(&[html]), page(1024)),
        "/png" => (
            200,
            owned(&[("content-type", "image/png")]),
            binary(PAGE_LEN),
        ),
        "/octet" => (
            200,
            owned(&[("content-type", "application/octet-stream")]),
            text(),
        ),
        "/untyped" => (200, Vec::new(), text()),
        "/plain" => (
            200,
            owned(&[("content-type", "text/plain; charset=utf-8")]),
            text(),
        ),
        "/css" => (200, owned(&[("content-type", "TEXT/CSS")]), text()),
        // Parameters do not hide the listed essence.
        "/json" => (
            200,
            owned(&[("content-type", "application/json; charset=utf-8")]),
            text(),
        ),
        "/js" => (
            200,
            owned(&[("content-type", "application/javascript")]),
            text(),
        ),
        "/xml" => (200, owned(&[("content-type", "application/xml")]), text()),
        "/svg" => (200, owned(&[("content-type", "image/svg+xml")]), text()),
        "/no-transform" => (
            200,
            owned(&[html, ("cache-control", "public, max-age=60, no-transform")]),
            text(),
        ),
        "/partial" => (
            206,
            owned(&[html, ("content-range", "bytes 0-2047/8192")]),
            text()[..2048].to_vec(),
        ),
        "/empty" => (204, owned(&[html]), Vec::new()),
        "/not-modified" => (304, owned(&[html, ("etag", "\"x\"")]), Vec::new()),
        "/vary" => (200, owned(&[html, ("vary", "Accept-Language")]), text()),
        "/vary-ae" => (
            200,
            owned(&[html, ("vary", "Accept-Language, accept-encoding")]),
            text(),
        ),
        "/weak" => (200, owned(&[html, ("etag", "W/\"w\"")]), text()),
        "/gzip" => (
            200,
            owned(&[html, ("content-encoding", "gzip")]),
            upstream_encoded(Coding::Gzip).to_vec(),
        ),
        "/br" => (
            200,
            owned(&[html, ("content-encoding", "br")]),
            upstream_encoded(Coding::Br).to_vec(),
        ),
        "/cached" => (
            200,
            owned(&[html, ("cache-control", "max-age=300"), ("etag", "\"v1\"")]),
            text(),
        ),
        "/cached-vary" => (
            200,
            owned(&[
                html,
                ("cache-control", "max-age=300"),
                ("vary", "Accept-Encoding"),
            ]),
            text(),
        ),
        "/chunked" => {
            return streamed(
                "text/html",
                text().chunks(PAGE_LEN / 4).map(<[u8]>::to_vec).collect(),
            )
        }
        "/tiny-chunked" => return streamed("text/plain", vec![b"tiny body\n".to_vec()]),
        "/events" => {
            let (tx, rx) = unbounded_channel();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(EVENT1.as_bytes()));
                // The second event waits until the client has the first.
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
                let _ = tx.send(Bytes::from_static(EVENT2.as_bytes()));
            });
            return Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Chunks(rx).boxed())
                .unwrap();
        }
        _ => (404, Vec::new(), b"no such fixture".to_vec()),
    };
    let mut b = Response::builder().status(status);
    for (k, v) in &headers {
        b = b.header(k.as_str(), v.as_str());
    }
    if status == 200 || status == 206 {
        // Explicit, so that a HEAD answer carries it too.
        b = b.header("content-length", body.len());
    }
    b.body(full(body)).unwrap()
}

/// What the origin sends for `/gzip` and `/br`: made at the best level, so
/// that it differs from anything sluice (level `fast`) would make itself.
fn upstream_encoded(coding: Coding) -> Bytes {
    compress_all(&text(), coding, Level::Best).expect("compress fixture")
}

// ---------------------------------------------------------------- harness --

/// One listener, one route to the origin with `route` lines, the
/// `[compression]` table with `compression` lines, and an admin listener.
fn config(origin: SocketAddr, route: &str, compression: &str) -> String {
    admin_route_config(origin, route, &format!("[compression]\n{compression}"))
}

/// A route with `compress = true` and the default `[compression]`.
fn compressing(origin: SocketAddr) -> String {
    config(origin, "compress = true", "")
}

/// A route that compresses and caches.
fn compressing_cache(origin: SocketAddr) -> String {
    config(origin, "compress = true\ncache = true", "")
}

async fn send(d: &Daemon, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
    h1(
        d.addr("http"),
        request_with_headers(method, path, HOST, headers),
    )
    .await
}

/// `GET path` with `Accept-Encoding: ae` (none when `ae` is `None`).
async fn fetch(d: &Daemon, path: &str, ae: Option<&str>) -> Reply {
    match ae {
        Some(ae) => send(d, Method::GET, path, &[("accept-encoding", ae)]).await,
        None => send(d, Method::GET, path, &[]).await,
    }
}

/// The body as the client reads it once decoded per its Content-Encoding.
fn decoded(r: &Reply) -> Bytes {
    match r.header("content-encoding") {
        None => r.body.clone(),
        Some(name) => {
            let coding =
                Coding::parse(name).unwrap_or_else(|| panic!("unknown Content-Encoding {name:?}"));
            decompress_all(&r.body, coding)
                .unwrap_or_else(|e| panic!("{name} body does not decode: {e}: {r:?}"))
        }
    }
}

/// Every `Vary` field line.
fn vary_lines(r: &Reply) -> Vec<String> {
    r.headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// How many times `Accept-Encoding` is listed across the Vary lines.
fn vary_accept_encoding(r: &Reply) -> usize {
    vary_lines(r)
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
        .count()
}

/// The response is encoded with `coding` (or identity for `None`) and
/// decodes to `want`; a compressible response says it varies on
/// Accept-Encoding either way.
fn assert_negotiated(r: &Reply, ae: &str, coding: Option<&str>, want: &[u8]) {
    assert_eq!(r.status, 200, "{ae:?}: {r:?}");
    assert_eq!(
        r.header("content-encoding"),
        coding,
        "Accept-Encoding: {ae:?} chose the wrong coding: {:?}",
        r.headers
    );
    if coding.is_some() {
        assert_ne!(&r.body[..], want, "{ae:?}: body sent as it was");
    }
    assert_eq!(&decoded(r)[..], want, "{ae:?}: body differs once decoded");
    assert_eq!(
        vary_accept_encoding(r),
        1,
        "{ae:?}: Vary: {:?}",
        vary_lines(r)
    );
}

/// Sent exactly as the origin sent it: no coding added, same bytes, same
/// length.
fn assert_untouched(r: &Reply, want: &[u8]) {
    assert_eq!(
        r.header("content-encoding"),
        None,
        "compressed: {:?}",
        r.headers
    );
    assert_eq!(&r.body[..], want, "body changed");
    if !want.is_empty() {
        assert_eq!(
            r.header("content-length"),
            Some(want.len().to_string().as_str()),
            "{:?}",
            r.headers
        );
    }
}

/// `name{algorithm="<algorithm>"}` from the admin listener's `/metrics`.
async fn counter(d: &Daemon, name: &str, algorithm: &str) -> u64 {
    let r = get(d.addr("admin"), "/metrics").await;
    assert_eq!(r.status, 200, "{r:?}");
    let text = r.text();
    let label = format!("algorithm=\"{algorithm}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().expect("sample value") as u64)
        .unwrap_or_else(|| panic!("no {name}{{{label}}} in\n{text}"))
}

// ------------------------------------------------------ 1. negotiation --

async fn negotiates(d: &Daemon, cases: &[(&str, Option<&str>)]) {
    let want = text();
    for (ae, coding) in cases {
        let r = fetch(d, "/page", Some(ae)).await;
        assert_negotiated(&r, ae, *coding, &want);
    }
}

#[tokio::test]
async fn negotiation_picks_the_highest_q_value() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    negotiates(
        &d,
        &[
            ("br;q=0.5, gzip;q=0.8, zstd;q=0.1", Some("gzip")),
            ("gzip;q=0.2, zstd", Some("zstd")),
            ("gzip;q=1.0, br;q=0.999", Some("gzip")),
            ("br;q=0.001, gzip;q=0", Some("br")),
            ("br;q=0, zstd;q=0, gzip;q=0", None),
            (" GZIP ; Q=0.9 ,BR;q=0.1", Some("gzip")),
            ("deflate, compress", None),
            ("gzip;q=1.5, zstd;q=0.5", Some("zstd")),
        ],
    )
    .await;
}

#[tokio::test]
async fn negotiation_star_stands_for_every_coding_not_listed() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    negotiates(
        &d,
        &[
            ("*", Some("br")),
            ("*;q=0.5, gzip", Some("gzip")),
            ("br;q=0, *", Some("zstd")),
            ("br;q=0, zstd;q=0, *;q=0.1", Some("gzip")),
            ("*;q=0", None),
        ],
    )
    .await;
}

#[tokio::test]
async fn negotiation_identity_wins_only_when_ranked_strictly_higher() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    negotiates(
        &d,
        &[
            ("identity;q=0, gzip", Some("gzip")),
            ("identity;q=0, br;q=0.3, zstd;q=0.2", Some("br")),
            ("identity, gzip;q=0.5", None),
            ("identity;q=0.5, gzip", Some("gzip")),
            ("identity;q=0.8, zstd;q=0.8", Some("zstd")),
            ("identity", None),
        ],
    )
    .await;
}

#[tokio::test]
async fn negotiation_breaks_ties_by_configured_algorithm_order() {
    let site = Site::start().await;
    // Default order: br, zstd, gzip.
    let d = Daemon::start(&compressing(site.addr()));
    negotiates(
        &d,
        &[
            ("gzip, deflate, br, zstd", Some("br")),
            ("gzip, zstd", Some("zstd")),
            ("gzip;q=0.7, zstd;q=0.7, br;q=0.5", Some("zstd")),
        ],
    )
    .await;
    drop(d);

    let d = Daemon::start(&config(
        site.addr(),
        "compress = true",
        r#"algorithms = ["gzip", "br"]"#,
    ));
    negotiates(
        &d,
        &[
            ("br, gzip", Some("gzip")),
            ("br, gzip, zstd", Some("gzip")),
            ("zstd;q=1, br;q=0.5", Some("br")),
            // zstd is not enabled: nothing the client takes is.
            ("zstd", None),
            ("*", Some("gzip")),
        ],
    )
    .await;
}

#[tokio::test]
async fn no_accept_encoding_is_answered_with_identity() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    let r = fetch(&d, "/page", None).await;
    assert_untouched(&r, &text());
    assert_eq!(r.header("etag"), Some("\"x\""), "nothing was transformed");
    assert_eq!(
        vary_accept_encoding(&r),
        1,
        "a compressible response sent as identity still varies: {:?}",
        vary_lines(&r)
    );
}

// -------------------------------------------------- 2. when to compress --

#[tokio::test]
async fn responses_below_min_size_are_sent_as_they_are() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    let r = fetch(&d, "/small", Some("gzip")).await;
    assert_untouched(&r, &page(1023));
    // The default min_size is 1 KiB: exactly 1024 bytes is compressed.
    let r = fetch(&d, "/edge", Some("gzip")).await;
    assert_negotiated(&r, "gzip", Some("gzip"), &page(1024));
    drop(d);

    let d = Daemon::start(&config(
        site.addr(),
        "compress = true",
        r#"min_size = "16KiB""#,
    ));
    let r = fetch(&d, "/page", Some("gzip")).await;
    assert_untouched(&r, &text());
}

#[tokio::test]
async fn only_listed_media_types_are_compressed() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    let r = fetch(&d, "/png", Some("gzip, br")).await;
    assert_untouched(&r, &binary(PAGE_LEN));
    for path in ["/octet", "/untyped"] {
        let r = fetch(&d, path, Some("gzip, br")).await;
        assert_untouched(&r, &text());
    }
    for path in ["/plain", "/css", "/json", "/js", "/xml", "/svg"] {
        let r = fetch(&d, path, Some("gzip")).await;
        assert_negotiated(&r, path, Some("gzip"), &text());
    }
    drop(d);

    let d = Daemon::start(&config(
        site.addr(),
        "compress = true",
        r#"types = ["application/json"]"#,
    ));
    let r = fetch(&d, "/page", Some("gzip")).await;
    assert_untouched(&r, &text());
    let r = fetch(&d, "/json", Some("gzip")).await;
    assert_negotiated(&r, "gzip", Some("gzip"), &text());
}

#[tokio::test]
async fn no_transform_response_is_sent_as_it_is() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    let r = fetch(&d, "/no-transform", Some("gzip, br, zstd")).await;
    assert_untouched(&r, &text());
}

#[tokio::test]
async fn partial_content_is_sent_as_it_is() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    let r = send(
        &d,
        Method::GET,
        "/partial",
        &[("accept-encoding", "gzip, br"), ("range", "bytes=0-2047")],
    )
    .await;
    assert_eq!(r.status, 206, "{r:?}");
    assert_eq!(r.header("content-range"), Some("bytes 0-2047/8192"));
    assert_untouched(&r, &text()[..2048]);
}

#[tokio::test]
async fn no_content_is_sent_as_it_is() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    let r = fetch(&d, "/empty", Some("gzip, br")).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_untouched(&r, b"");
}

#[tokio::test]
async fn not_modified_is_sent_as_it_is() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    let r = send(
        &d,
        Method::GET,
        "/not-modified",
        &[("accept-encoding", "gzip, br"), ("if-none-match", "\"x\"")],
    )
    .await;
    assert_eq!(r.status, 304, "{r:?}");
    assert_untouched(&r, b"");
    assert_eq!(r.header("etag"), Some("\"x\""), "ETag left strong");
}

/// HEAD has no body to compress, but its head is the one a GET would get
/// (RFC 9110 §9.3.2): same coding, Vary and weak ETag, no length.
#[tokio::test]
async fn head_request_gets_the_head_a_get_would_get() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    let accept = [("accept-encoding", "gzip, br")];
    let head = send(&d, Method::HEAD, "/page", &accept).await;
    let get = send(&d, Method::GET, "/page", &accept).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.body.is_empty());
    for name in ["content-encoding", "vary", "etag", "content-length"] {
        assert_eq!(
            head.header(name),
            get.header(name),
            "{name}: {:?}",
            head.headers
        );
    }
    assert_eq!(head.header("content-encoding"), Some("br"));
    assert_eq!(head.header("etag"), Some("W/\"x\""));
}

#[tokio::test]
async fn unknown_length_is_compressed_while_streaming() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    for coding in ["gzip", "br", "zstd"] {
        let r = fetch(&d, "/chunked", Some(coding)).await;
        assert_negotiated(&r, coding, Some(coding), &text());
        assert_eq!(r.header("content-length"), None, "{:?}", r.headers);
    }
    // No length to compare with min_size: even a tiny body is compressed.
    let r = fetch(&d, "/tiny-chunked", Some("gzip")).await;
    assert_negotiated(&r, "gzip", Some("gzip"), b"tiny body\n");
    // And a client that takes no coding gets the stream as sent.
    let r = fetch(&d, "/chunked", None).await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(&r.body[..], &text()[..]);
}

/// Decodes whatever `decoder` can produce from the input queued so far.
fn drain(decoder: &mut CodecBody, out: &mut Vec<u8>) {
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(Some(frame)) = Pin::new(&mut *decoder).poll_frame(&mut cx) {
        let frame = frame.unwrap_or_else(|e| panic!("stream does not decode: {e}"));
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
        }
    }
}

#[tokio::test]
async fn event_stream_events_reach_the_client_as_sent() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    events_arrive_as_sent(&d, &site).await;
    drop(d);
    // Through the cache as well (the stream is stored as it passes).
    let d = Daemon::start(&compressing_cache(site.addr()));
    events_arrive_as_sent(&d, &site).await;
}

/// For each coding: `/events` through `d`, decoded as it arrives; the
/// origin holds the second event until the client has decoded the first.
async fn events_arrive_as_sent(d: &Daemon, site: &Site) {
    for name in ["gzip", "br", "zstd"] {
        let coding = Coding::parse(name).unwrap();
        let mut conn = h1_conn(d.addr("http")).await;
        let req = request_with_headers(Method::GET, "/events", HOST, &[("accept-encoding", name)]);
        let resp = tokio::time::timeout(PATIENCE, conn.send_request(req))
            .await
            .expect("response head in time")
            .expect("response");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers().get("content-encoding").map(|v| v.as_bytes()),
            Some(name.as_bytes()),
            "{:?}",
            resp.headers()
        );
        assert!(resp.headers().get("content-length").is_none());
        let mut body = resp.into_body();

        // The client decodes as the bytes come in.
        let (feed, fed) = unbounded_channel();
        let mut decoder = CodecBody::decode(Chunks(fed).boxed(), coding);
        let mut raw = Vec::new();
        let mut events = Vec::new();
        let mut frames = 0;
        while events.len() < EVENT1.len() {
            let frame = tokio::time::timeout(PATIENCE, body.frame())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{name}: the first event was held back: {frames} frames, \
                         decoded so far {:?}",
                        String::from_utf8_lossy(&events)
                    )
                })
                .expect("the stream does not end before the second event")
                .expect("body frame");
            if let Ok(data) = frame.into_data() {
                frames += usize::from(!data.is_empty());
                raw.extend_from_slice(&data);
                feed.send(data).unwrap();
                drain(&mut decoder, &mut events);
            }
        }
        assert_eq!(
            String::from_utf8_lossy(&events),
            EVENT1,
            "{name}: decoded before the second event was sent"
        );
        assert!(frames >= 1);

        // Only now does the origin send the second event.
        site.gate.add_permits(1);
        while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("the stream ends in time")
        {
            if let Ok(data) = frame.expect("body frame").into_data() {
                raw.extend_from_slice(&data);
                feed.send(data).unwrap();
                drain(&mut decoder, &mut events);
            }
        }
        drop(feed);
        drain(&mut decoder, &mut events);
        let both = format!("{EVENT1}{EVENT2}");
        assert_eq!(String::from_utf8_lossy(&events), both, "{name}");
        let whole = decompress_all(&raw, coding).expect("the whole stream decodes");
        assert_eq!(String::from_utf8_lossy(&whole), both, "{name}");
    }
}

// ------------------------------------------------------------ 3. headers --

#[tokio::test]
async fn compressed_response_has_content_encoding_and_no_content_length() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    for coding in ["br", "zstd", "gzip"] {
        let r = fetch(&d, "/page", Some(coding)).await;
        assert_negotiated(&r, coding, Some(coding), &text());
        assert_eq!(
            r.header("content-length"),
            None,
            "the origin's length is not the compressed length: {:?}",
            r.headers
        );
        assert!(
            r.body.len() < PAGE_LEN / 2,
            "{coding}: {} bytes",
            r.body.len()
        );
    }
    // `Content-Encoding: identity` from the origin is no coding at all.
    let r = fetch(&d, "/identity-ce", Some("gzip")).await;
    assert_negotiated(&r, "gzip", Some("gzip"), &text());
}

#[tokio::test]
async fn vary_accept_encoding_is_merged_never_duplicated() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    let r = fetch(&d, "/page", Some("br")).await;
    assert_eq!(vary_lines(&r), ["Accept-Encoding"]);

    for ae in [Some("br"), None] {
        let r = fetch(&d, "/vary", ae).await;
        assert_eq!(r.header("content-encoding"), ae);
        let lines = vary_lines(&r);
        assert_eq!(lines.len(), 2, "{ae:?}: {lines:?}");
        assert!(
            lines[0].eq_ignore_ascii_case("accept-language"),
            "{lines:?}"
        );
        assert!(
            lines[1].eq_ignore_ascii_case("accept-encoding"),
            "{lines:?}"
        );
    }

    for ae in [Some("gzip"), None] {
        let r = fetch(&d, "/vary-ae", ae).await;
        assert_eq!(r.header("content-encoding"), ae);
        assert_eq!(
            vary_lines(&r),
            ["Accept-Language, accept-encoding"],
            "{ae:?}: Accept-Encoding listed once"
        );
    }
}

#[tokio::test]
async fn strong_etag_is_weakened_only_when_compressed() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    for coding in ["gzip", "br", "zstd"] {
        let r = fetch(&d, "/page", Some(coding)).await;
        assert_eq!(r.header("content-encoding"), Some(coding));
        assert_eq!(r.header("etag"), Some("W/\"x\""), "{coding}");
    }
    let r = fetch(&d, "/page", Some("identity")).await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("etag"), Some("\"x\""), "identity keeps it strong");
    let r = fetch(&d, "/weak", Some("gzip")).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(
        r.header("etag"),
        Some("W/\"w\""),
        "already weak stays as is"
    );
}

// ------------------------------------------------- 4. upstream-encoded --

#[tokio::test]
async fn upstream_encoding_passes_through_to_a_client_that_takes_it() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    // br is preferred, but the body is already gzip: not re-encoded.
    for ae in ["gzip", "gzip, br, zstd", "*"] {
        let r = fetch(&d, "/gzip", Some(ae)).await;
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{ae}");
        assert_eq!(
            r.body,
            upstream_encoded(Coding::Gzip),
            "{ae}: bytes changed"
        );
        // Other clients get it decoded: caches downstream must know.
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{ae}");
    }
    let r = fetch(&d, "/br", Some("br;q=0.1, gzip")).await;
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(r.body, upstream_encoded(Coding::Br), "bytes changed");
}

#[tokio::test]
async fn upstream_encoding_is_decoded_for_a_client_that_does_not_take_it() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    for ae in [Some("br"), Some("identity"), Some("gzip;q=0, zstd"), None] {
        let r = fetch(&d, "/gzip", ae).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-encoding"),
            None,
            "{ae:?}: {:?}",
            r.headers
        );
        assert_eq!(&r.body[..], &text()[..], "{ae:?}: not decoded");
        assert!(
            r.header("content-length")
                .is_none_or(|n| n == PAGE_LEN.to_string()),
            "{ae:?}: {:?}",
            r.headers
        );
    }
    let r = fetch(&d, "/br", Some("gzip")).await;
    assert_eq!(r.header("content-encoding"), None, "{:?}", r.headers);
    assert_eq!(&r.body[..], &text()[..], "br not decoded");
}

// -------------------------------------------------------------- 5. cache --

#[tokio::test]
async fn cache_fetches_once_and_serves_every_coding() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing_cache(site.addr()));
    let want = text();
    let asks: [(Option<&str>, Option<&str>); 7] = [
        (Some("gzip"), Some("gzip")),
        (None, None),
        (Some("br"), Some("br")),
        (Some("zstd"), Some("zstd")),
        (Some("identity"), None),
        (Some("gzip, deflate, br, zstd"), Some("br")),
        (Some("gzip;q=0.5, zstd"), Some("zstd")),
    ];
    let mut first_hit_body: std::collections::HashMap<Option<&str>, Bytes> = Default::default();
    for round in 0..4 {
        for (i, (ae, coding)) in asks.iter().enumerate() {
            let r = fetch(&d, "/cached", *ae).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(
                r.header("content-encoding"),
                *coding,
                "round {round}, Accept-Encoding {ae:?}: {:?}",
                r.headers
            );
            assert_eq!(&decoded(&r)[..], &want[..], "round {round}, {ae:?}");
            assert_eq!(vary_accept_encoding(&r), 1, "{:?}", vary_lines(&r));
            let etag = if coding.is_some() {
                "W/\"v1\""
            } else {
                "\"v1\""
            };
            assert_eq!(r.header("etag"), Some(etag), "{ae:?}");
            if round == 0 && i == 0 {
                // The miss itself, compressed as it streams.
                assert!(!is_hit(&r), "{:?}", r.headers);
                continue;
            }
            assert!(is_hit(&r), "round {round}, {ae:?}: {:?}", r.headers);
            assert_eq!(
                r.header("content-length"),
                Some(r.body.len().to_string().as_str()),
                "round {round}, {ae:?}: a hit has its length"
            );
            let same = first_hit_body
                .entry(*coding)
                .or_insert_with(|| r.body.clone());
            assert_eq!(*same, r.body, "{ae:?}: the stored copy is served again");
        }
    }
    assert_eq!(site.hits_for("/cached"), 1, "one upstream request per key");
    let seen = site.origin.seen();
    assert_eq!(
        seen[0].headers.get("accept-encoding"),
        None,
        "the cache asks upstream for identity: {:?}",
        seen[0].headers
    );
}

#[tokio::test]
async fn cache_keeps_one_entry_when_upstream_varies_on_accept_encoding() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing_cache(site.addr()));
    let want = text();
    for _ in 0..2 {
        for (ae, coding) in [
            (Some("gzip"), Some("gzip")),
            (Some("br"), Some("br")),
            (None, None),
            (Some("zstd"), Some("zstd")),
        ] {
            let r = fetch(&d, "/cached-vary", ae).await;
            assert_eq!(r.header("content-encoding"), coding, "{ae:?}");
            assert_eq!(&decoded(&r)[..], &want[..], "{ae:?}");
            assert_eq!(vary_accept_encoding(&r), 1, "{:?}", vary_lines(&r));
        }
    }
    assert_eq!(
        site.hits_for("/cached-vary"),
        1,
        "one stored representation"
    );
}

#[tokio::test]
async fn cache_compresses_each_copy_once() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing_cache(site.addr()));
    const IN: &str = "sluice_compression_bytes_in_total";
    const OUT: &str = "sluice_compression_bytes_out_total";

    // Stored as identity: nothing compressed yet.
    let r = fetch(&d, "/cached", None).await;
    assert_untouched(&r, &text());
    for alg in ["br", "zstd", "gzip"] {
        assert_eq!(counter(&d, IN, alg).await, 0, "{alg}");
    }

    // The first br hit makes the copy...
    let first = fetch(&d, "/cached", Some("br")).await;
    assert!(is_hit(&first), "{:?}", first.headers);
    assert_eq!(first.header("content-encoding"), Some("br"));
    assert_eq!(counter(&d, IN, "br").await, PAGE_LEN as u64);
    assert_eq!(counter(&d, OUT, "br").await, first.body.len() as u64);

    // ...and later ones serve it without compressing again.
    for _ in 0..5 {
        let r = fetch(&d, "/cached", Some("br")).await;
        assert!(is_hit(&r), "{:?}", r.headers);
        assert_eq!(r.body, first.body);
    }
    assert_eq!(
        counter(&d, IN, "br").await,
        PAGE_LEN as u64,
        "copy made once"
    );
    assert_eq!(counter(&d, OUT, "br").await, first.body.len() as u64);
    assert_eq!(counter(&d, IN, "gzip").await, 0);
    assert_eq!(counter(&d, IN, "zstd").await, 0);

    // Another coding gets its own copy, also made once.
    for _ in 0..3 {
        let r = fetch(&d, "/cached", Some("gzip")).await;
        assert_eq!(r.header("content-encoding"), Some("gzip"));
    }
    assert_eq!(counter(&d, IN, "gzip").await, PAGE_LEN as u64);
    assert_eq!(counter(&d, IN, "br").await, PAGE_LEN as u64);
    assert_eq!(site.hits_for("/cached"), 1);
}

#[tokio::test]
async fn streamed_compression_is_counted_per_algorithm() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    let r = fetch(&d, "/page", Some("zstd")).await;
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    assert_eq!(
        counter(&d, "sluice_compression_bytes_in_total", "zstd").await,
        PAGE_LEN as u64
    );
    assert_eq!(
        counter(&d, "sluice_compression_bytes_out_total", "zstd").await,
        r.body.len() as u64
    );
    assert_eq!(
        counter(&d, "sluice_compression_bytes_in_total", "br").await,
        0
    );
}

// ------------------------------------------------------------- others --

#[tokio::test]
async fn compression_works_over_http2() {
    let site = Site::start().await;
    let d = Daemon::start(&compressing(site.addr()));
    let mut h2 = h2c_conn(d.addr("http")).await;
    for (ae, coding) in [
        ("br", Some("br")),
        ("gzip", Some("gzip")),
        ("identity", None),
    ] {
        let mut req = h2_request(Method::GET, &format!("http://{HOST}/page"), empty());
        req.headers_mut()
            .insert("accept-encoding", http::HeaderValue::from_static(ae));
        let r = h2_send(&mut h2, req).await;
        assert_eq!(r.version, http::Version::HTTP_2);
        assert_negotiated(&r, ae, coding, &text());
        if coding.is_some() {
            assert_eq!(r.header("content-length"), None, "{:?}", r.headers);
        }
    }
    let mut req = h2_request(Method::GET, &format!("http://{HOST}/chunked"), empty());
    req.headers_mut()
        .insert("accept-encoding", http::HeaderValue::from_static("zstd"));
    let r = h2_send(&mut h2, req).await;
    assert_negotiated(&r, "zstd", Some("zstd"), &text());
}

#[tokio::test]
async fn compress_false_leaves_responses_untouched() {
    let site = Site::start().await;
    // `compress` defaults to false.
    let d = Daemon::start(&config(site.addr(), "", ""));
    let r = fetch(&d, "/page", Some("gzip, br, zstd")).await;
    assert_untouched(&r, &text());
    assert_eq!(r.header("etag"), Some("\"x\""));
    assert!(vary_lines(&r).is_empty(), "{:?}", vary_lines(&r));
    let r = fetch(&d, "/chunked", Some("gzip, br, zstd")).await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(&r.body[..], &text()[..]);
    // Nor is an upstream-encoded body decoded.
    let r = fetch(&d, "/gzip", None).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.body, upstream_encoded(Coding::Gzip));
    drop(d);

    let d = Daemon::start(&config(site.addr(), "compress = false\ncache = true", ""));
    for ae in ["gzip", "br", "zstd"] {
        let r = fetch(&d, "/cached", Some(ae)).await;
        assert_untouched(&r, &text());
    }
    assert_eq!(
        counter(&d, "sluice_compression_bytes_in_total", "gzip").await,
        0
    );
}

#[tokio::test]
async fn level_trades_cpu_for_size() {
    let site = Site::start().await;
    let fast = Daemon::start(&config(site.addr(), "compress = true", "level = \"fast\""));
    let best = Daemon::start(&config(site.addr(), "compress = true", "level = \"best\""));
    for coding in ["gzip", "br", "zstd"] {
        let f = fetch(&fast, "/page", Some(coding)).await;
        let b = fetch(&best, "/page", Some(coding)).await;
        assert_negotiated(&f, coding, Some(coding), &text());
        assert_negotiated(&b, coding, Some(coding), &text());
        assert!(
            b.body.len() < f.body.len(),
            "{coding}: best {} bytes, fast {} bytes",
            b.body.len(),
            f.body.len()
        );
    }
}
