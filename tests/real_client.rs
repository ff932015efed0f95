//! The real client address end to end: behind an L4 balancer that sends a
//! PROXY header (v1 or v2), and behind HTTP proxies that append to
//! `X-Forwarded-For`. From trusted sources the client they name is what
//! the access log (`client`, with `peer` the TCP peer), the forwarding
//! fields and rate limits use; untrusted, missing or malformed PROXY
//! headers close the connection and are counted; an untrusted peer's
//! `X-Forwarded-For` is never believed. A pool with `send_proxy_protocol`
//! names the client to an origin that parses the header itself.
//!
//! Clients bind 127.0.0.1 (trusted) or 127.0.0.2 (not) and write PROXY
//! headers by hand before their HTTP bytes.

mod common;
use common::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const TRUSTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A listener `http` with `listener_extra`, route `main` to `origin` with
/// `route_extra`, a JSON access log in `dir`, and an admin listener.
fn config(
    dir: &std::path::Path,
    origin: SocketAddr,
    listener_extra: &str,
    route_extra: &str,
) -> String {
    format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"
{listener_extra}

[[route]]
name = "main"
pool = "app"
{route_extra}

[pool.app]
servers = [ {{ addr = "{origin}" }} ]

[access_log]
format = "json"
path = "{}"

[admin]
listen = "127.0.0.1:0"
"#,
        dir.join("access.log").display()
    )
}

/// A TCP connection to `addr` from `from`, with `preamble` already sent.
async fn connect_from(from: IpAddr, addr: SocketAddr, preamble: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind client");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream.write_all(preamble).await.expect("send preamble");
    stream
}

/// An HTTP/1.1 connection from `from` that starts with `preamble`.
async fn conn(from: IpAddr, addr: SocketAddr, preamble: &[u8]) -> SendRequest<TestBody> {
    let stream = connect_from(from, addr, preamble).await;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    send
}

/// `GET path` with extra `fields` on an open connection.
async fn get_on(send: &mut SendRequest<TestBody>, path: &str, fields: &[(&str, &str)]) -> Reply {
    let req = request_with_headers(Method::GET, path, "app.test", fields);
    let reply = async {
        send.ready().await.expect("connection ready");
        collect(send.send_request(req).await.expect("response")).await
    };
    tokio::time::timeout(PATIENCE, reply)
        .await
        .expect("reply in time")
}

/// Sends `bytes` from `from` and reads until the daemon closes: what it
/// answered (empty when it closed without a word).
async fn refused(from: IpAddr, addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = connect_from(from, addr, bytes).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was not closed");
    answer
}

fn v1(src: &str, dst: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header over TCP/IPv4, with one TLV to skip.
fn v2(src: &str, dst: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let (IpAddr::V4(si), IpAddr::V4(di)) = (s.ip(), d.ip()) else {
        panic!("IPv4 only")
    };
    let tlv = [0x04, 0x00, 0x02, 0xab, 0xcd]; // PP2_TYPE_NOOP
    let mut out = V2_SIG.to_vec();
    out.extend_from_slice(&[0x21, 0x11]);
    out.extend_from_slice(&(12 + tlv.len() as u16).to_be_bytes());
    out.extend_from_slice(&si.octets());
    out.extend_from_slice(&di.octets());
    out.extend_from_slice(&s.port().to_be_bytes());
    out.extend_from_slice(&d.port().to_be_bytes());
    out.extend_from_slice(&tlv);
    out
}

/// A v2 LOCAL header: the balancer speaking for itself.
fn v2_local() -> Vec<u8> {
    let mut out = V2_SIG.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The access log line of the request to `path`.
fn logged(lines: &[String], path: &str) -> serde_json::Value {
    lines
        .iter()
        .map(|l| json(l))
        .find(|v| v["path"] == path)
        .unwrap_or_else(|| panic!("no line for {path}: {lines:#?}"))
}

/// The origin's view of the request to `path`: its `X-Forwarded-For` and
/// `Forwarded`.
fn forwarding(origin: &Origin, path: &str) -> (String, String) {
    let seen = origin
        .seen()
        .into_iter()
        .find(|s| s.uri.path() == path)
        .unwrap_or_else(|| panic!("the origin did not see {path}"));
    let field = |name: &str| {
        seen.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    (field("x-forwarded-for"), field("forwarded"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_from_a_trusted_balancer_name_the_client() {
    let origin = Origin::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        origin.addr,
        "proxy_protocol = true\ntrusted = [\"127.0.0.1/32\"]",
        "",
    );
    let d = Daemon::start_in(dir, &cfg);
    let addr = d.addr("http");

    let mut a = conn(TRUSTED, addr, &v1("192.0.2.10:5555", "203.0.113.1:80")).await;
    assert_eq!(get_on(&mut a, "/v1", &[]).await.status, StatusCode::OK);
    // Every request on the connection is the header's client's.
    assert_eq!(
        get_on(&mut a, "/v1-again", &[]).await.status,
        StatusCode::OK
    );
    let mut b = conn(TRUSTED, addr, &v2("198.51.100.20:4000", "203.0.113.1:80")).await;
    assert_eq!(get_on(&mut b, "/v2", &[]).await.status, StatusCode::OK);
    let mut local = conn(TRUSTED, addr, &v2_local()).await;
    assert_eq!(
        get_on(&mut local, "/local", &[]).await.status,
        StatusCode::OK
    );

    let lines = file_lines(&d.dir.path().join("access.log"), 4);
    for (path, client) in [
        ("/v1", "192.0.2.10"),
        ("/v1-again", "192.0.2.10"),
        ("/v2", "198.51.100.20"),
        ("/local", "127.0.0.1"),
    ] {
        let line = logged(&lines, path);
        assert_eq!(line["client"], client, "{line}");
        assert_eq!(line["peer"], "127.0.0.1", "{line}");
        let (xff, fwd) = forwarding(&origin, path);
        assert_eq!(xff, client, "{path}");
        assert!(fwd.starts_with(&format!("for={client};")), "{path}: {fwd}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_missing_and_malformed_proxy_headers_close_the_connection() {
    let origin = Origin::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        origin.addr,
        "proxy_protocol = true\ntrusted = [\"127.0.0.1\"]\n[listener.limits]\nheader_read_timeout = \"500ms\"",
        "",
    );
    let d = Daemon::start_logging(dir, &cfg, "info");
    let addr = d.addr("http");
    let get = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";

    // A valid header, from a peer outside `trusted`.
    let mut from_stranger = v1("192.0.2.10:5555", "203.0.113.1:80");
    from_stranger.extend_from_slice(get);
    assert_eq!(refused(STRANGER, addr, &from_stranger).await, b"");
    // No header at all.
    assert_eq!(refused(TRUSTED, addr, get).await, b"");
    // Not an address of its protocol.
    let mut bad = b"PROXY TCP4 192.0.2.300 203.0.113.1 5555 80\r\n".to_vec();
    bad.extend_from_slice(get);
    assert_eq!(refused(TRUSTED, addr, &bad).await, b"");
    // A v2 header claiming more than the bound.
    let mut huge = V2_SIG.to_vec();
    huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    assert_eq!(refused(TRUSTED, addr, &huge).await, b"");
    // A v1 line that goes on past 107 bytes.
    let endless = format!("PROXY UNKNOWN {}", "x".repeat(200));
    assert_eq!(refused(TRUSTED, addr, endless.as_bytes()).await, b"");
    // Half a header, then the balancer goes away.
    let mut half = connect_from(TRUSTED, addr, b"PROXY TCP4 192.0.2.10 ").await;
    half.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, half.read_to_end(&mut rest))
        .await
        .expect("closed");
    // Half a header, then nothing: closed at header_read_timeout.
    assert_eq!(refused(TRUSTED, addr, b"PROXY TCP4 192.0.2.10 ").await, b"");

    let (_, samples) = scrape(d.addr("admin")).await;
    let rejected = |reason: &str| {
        value(
            &samples,
            "sluice_proxy_protocol_rejected_total",
            &[("listener", "http"), ("reason", reason)],
        )
    };
    assert_eq!(rejected("untrusted"), 1.0);
    assert_eq!(rejected("missing"), 1.0);
    assert_eq!(rejected("malformed"), 1.0);
    assert_eq!(rejected("too_long"), 2.0);
    assert_eq!(rejected("closed"), 1.0);
    assert_eq!(rejected("timeout"), 1.0);
    assert_eq!(origin.hits(), 0);
    let log = d.log_count("peer=127.0.0.2", 1).await;
    assert!(
        log.contains("reason=\"untrusted\"") || log.contains("reason=untrusted"),
        "{log}"
    );
    assert!(log.contains("peer=127.0.0.2"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_separates_clients_behind_one_trusted_forwarder() {
    let origin = Origin::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        origin.addr,
        "trusted_forwarders = [\"127.0.0.1\"]",
        "rate_limit = { requests = 1, burst = 1, per = \"1h\" }",
    );
    let d = Daemon::start_in(dir, &cfg);
    let addr = d.addr("http");
    let mut forwarder = conn(TRUSTED, addr, b"").await;
    let alice = [("x-forwarded-for", "192.0.2.1")];
    let bob = [("x-forwarded-for", "6.6.6.6, 192.0.2.2")];
    assert_eq!(
        get_on(&mut forwarder, "/a1", &alice).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_on(&mut forwarder, "/a2", &alice).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client behind the same forwarder has a bucket of its own
    // (what it claims to the left of the forwarder's entry is ignored).
    assert_eq!(
        get_on(&mut forwarder, "/b1", &bob).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_on(&mut forwarder, "/b2", &bob).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    let lines = file_lines(&d.dir.path().join("access.log"), 4);
    let line = logged(&lines, "/b1");
    assert_eq!(line["client"], "192.0.2.2", "{line}");
    assert_eq!(line["peer"], "127.0.0.1", "{line}");
    // The chain goes on as received, with the forwarder appended; the
    // origin's Forwarded names the client.
    let (xff, fwd) = forwarding(&origin, "/b1");
    assert_eq!(xff, "6.6.6.6, 192.0.2.2, 127.0.0.1");
    assert!(fwd.starts_with("for=192.0.2.2;"), "{fwd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peers_forwarded_for_is_not_believed() {
    let origin = Origin::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        origin.addr,
        "trusted_forwarders = [\"127.0.0.1\"]",
        "rate_limit = { requests = 1, burst = 1, per = \"1h\" }",
    );
    let d = Daemon::start_in(dir, &cfg);
    let addr = d.addr("http");
    let mut stranger = conn(STRANGER, addr, b"").await;
    let claim = [("x-forwarded-for", "192.0.2.1")];
    let other_claim = [("x-forwarded-for", "192.0.2.2")];
    assert_eq!(
        get_on(&mut stranger, "/s1", &claim).await.status,
        StatusCode::OK
    );
    // A new claim buys no new bucket: the limit is the peer's.
    assert_eq!(
        get_on(&mut stranger, "/s2", &other_claim).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    let lines = file_lines(&d.dir.path().join("access.log"), 2);
    let line = logged(&lines, "/s1");
    assert_eq!(line["client"], "127.0.0.2", "{line}");
    assert_eq!(line["peer"], "127.0.0.2", "{line}");
    let (xff, fwd) = forwarding(&origin, "/s1");
    assert_eq!(xff, "192.0.2.1, 127.0.0.2");
    assert!(fwd.starts_with("for=127.0.0.2;"), "{fwd}");
}

/// What a PROXY-speaking origin read at the start of one connection.
type Headers = Arc<Mutex<Vec<String>>>;

/// An origin that requires a PROXY header (v1 or v2) on every connection,
/// parsed here by hand, and then serves HTTP/1.1 on the rest of it. It
/// records each header as `src -> dst`, or `LOCAL`.
async fn proxy_origin() -> (SocketAddr, Headers) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let headers: Headers = Arc::default();
    let record = headers.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let Some(header) = read_proxy_header(&mut stream).await else {
                    return;
                };
                record.lock().unwrap().push(header.clone());
                let service = hyper::service::service_fn(move |_req| {
                    let header = header.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("x-proxy-header", header)
                                .body(full("ok"))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, headers)
}

async fn read_proxy_header(stream: &mut TcpStream) -> Option<String> {
    let mut first = [0u8; 16];
    stream.read_exact(&mut first[..6]).await.ok()?;
    if &first[..6] == b"PROXY " {
        let mut line = b"PROXY ".to_vec();
        loop {
            let b = stream.read_u8().await.ok()?;
            line.push(b);
            if b == b'\n' || line.len() > 107 {
                break;
            }
        }
        let text = String::from_utf8(line).ok()?;
        let f: Vec<&str> = text.trim_end().split(' ').collect();
        return Some(match f.as_slice() {
            ["PROXY", "TCP4" | "TCP6", s, d, sp, dp] => format!("{s}:{sp} -> {d}:{dp}"),
            ["PROXY", "UNKNOWN", ..] => "LOCAL".to_string(),
            _ => return None,
        });
    }
    stream.read_exact(&mut first[6..]).await.ok()?;
    if &first[..12] != V2_SIG {
        return None;
    }
    let len = u16::from_be_bytes([first[14], first[15]]) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.ok()?;
    match (first[12], first[13]) {
        (0x20, _) => Some("LOCAL".to_string()),
        (0x21, 0x11) if len >= 12 => {
            let ip = |at: usize| Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]);
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Some(format!("{}:{} -> {}:{}", ip(0), port(8), ip(4), port(10)))
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_protocol_names_the_client_on_every_upstream_connection() {
    for version in ["v1", "v2"] {
        let (origin, headers) = proxy_origin().await;
        let cfg = format!(
            r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"
proxy_protocol = true
trusted = ["127.0.0.1"]

[[route]]
pool = "app"

[pool.app]
servers = [ {{ addr = "{origin}" }} ]
send_proxy_protocol = "{version}"
"#
        );
        let d = Daemon::start(&cfg);
        let addr = d.addr("http");
        let mut alice = conn(TRUSTED, addr, &v2("192.0.2.10:5555", "203.0.113.1:80")).await;
        let mut bob = conn(TRUSTED, addr, &v1("192.0.2.11:6666", "203.0.113.1:80")).await;
        let a1 = get_on(&mut alice, "/a1", &[]).await;
        let b1 = get_on(&mut bob, "/b1", &[]).await;
        let a2 = get_on(&mut alice, "/a2", &[]).await;
        let alice_said = "192.0.2.10:5555 -> 203.0.113.1:80";
        let bob_said = "192.0.2.11:6666 -> 203.0.113.1:80";
        for (reply, said) in [(&a1, alice_said), (&b1, bob_said), (&a2, alice_said)] {
            assert_eq!(reply.status, StatusCode::OK, "{version}: {reply:?}");
            assert_eq!(reply.header("x-proxy-header"), Some(said), "{version}");
        }
        // A connection per request: none is shared between clients, or
        // reused under a header sent for an earlier request.
        assert_eq!(
            *headers.lock().unwrap(),
            [alice_said, bob_said, alice_said],
            "{version}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_header_comes_before_tls() {
    let origin = Origin::hello().await;
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.issue(dir.path(), "a", &["a.test"]);
    let cfg = format!(
        r#"
[[listener]]
name = "https"
listen = "127.0.0.1:0"
proxy_protocol = true
trusted = ["127.0.0.1"]
[listener.tls]
certs = [ {{ cert = '{}', key = '{}' }} ]

[[route]]
pool = "app"

[pool.app]
servers = [ {{ addr = "{}" }} ]
"#,
        cert.display(),
        key.display(),
        origin.addr
    );
    let d = Daemon::start_in(dir, &cfg);
    for (alpn, path) in [(&b"h2"[..], "/h2"), (b"http/1.1", "/h1")] {
        let stream = connect_from(
            TRUSTED,
            d.addr("https"),
            &v2("192.0.2.44:4444", "203.0.113.1:443"),
        )
        .await;
        let config = pki.client_config(&[alpn], &[&rustls::version::TLS13]);
        let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .expect("TLS after the PROXY header");
        let conn = TlsConn {
            alpn: tls.get_ref().1.alpn_protocol().map(|p| p.to_vec()),
            version: None,
            peer_cert: Vec::new(),
            stream: tls,
        };
        let url = format!("https://a.test{path}");
        let req = if alpn == b"h2" {
            h2_request(Method::GET, &url, empty())
        } else {
            request(Method::GET, path, "a.test", empty())
        };
        let reply = tokio::time::timeout(PATIENCE, tls_send(conn, req))
            .await
            .expect("reply in time");
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
        let (xff, _) = forwarding(&origin, path);
        assert_eq!(xff, "192.0.2.44", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_of_a_proxy_protocol_pool_send_a_local_header() {
    let (origin, headers) = proxy_origin().await;
    let cfg = format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
pool = "app"

[pool.app]
servers = [ {{ addr = "{origin}" }} ]
send_proxy_protocol = "v2"

[pool.app.health]
kind = "http"
interval = "100ms"
rise = 1

[admin]
listen = "127.0.0.1:0"
"#
    );
    let d = Daemon::start(&cfg);
    // The origin drops a connection without a header: a check passes only
    // with one.
    let ok = |s: &[Sample]| sum(s, "sluice_health_checks_total", &[("result", "ok")]) >= 1.0;
    let (text, samples) = scrape_until(d.addr("admin"), ok).await;
    assert!(ok(&samples), "{text}");
    assert_eq!(
        sum(
            &samples,
            "sluice_health_checks_total",
            &[("result", "fail")]
        ),
        0.0
    );
    assert!(headers.lock().unwrap().iter().all(|h| h == "LOCAL"));
    // A client's request still names the client.
    let reply = get(d.addr("http"), "/").await;
    assert_eq!(
        reply
            .header("x-proxy-header")
            .map(|h| h.starts_with("127.0.0.1:")),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_connection_caps_count_the_client_a_proxy_header_names() {
    let origin = Origin::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        origin.addr,
        "proxy_protocol = true\ntrusted = [\"127.0.0.1\"]\n[listener.limits]\nmax_connections_per_client = 1",
        "",
    );
    let d = Daemon::start_in(dir, &cfg);
    let addr = d.addr("http");
    let alice = v2("192.0.2.10:5555", "203.0.113.1:80");
    let mut first = conn(TRUSTED, addr, &alice).await;
    assert_eq!(get_on(&mut first, "/1", &[]).await.status, StatusCode::OK);
    // The same client through the same balancer: over its cap.
    let mut again = alice.clone();
    again.extend_from_slice(b"GET /2 HTTP/1.1\r\nHost: app.test\r\n\r\n");
    assert_eq!(refused(TRUSTED, addr, &again).await, b"");
    // Another client through the same balancer has a slot of its own.
    let mut bob = conn(TRUSTED, addr, &v2("192.0.2.11:6666", "203.0.113.1:80")).await;
    assert_eq!(get_on(&mut bob, "/3", &[]).await.status, StatusCode::OK);
    assert_eq!(get_on(&mut first, "/4", &[]).await.status, StatusCode::OK);
}

/// A real HAProxy (the Debian package's `/usr/sbin/haproxy`) in TCP mode on
/// an ephemeral port, passing every connection to `backend` with a PROXY v2
/// header (`send-proxy-v2`) that names `source` as the client. Killed on
/// drop.
struct Haproxy {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    const BIN: &'static str = "/usr/sbin/haproxy";

    async fn start(backend: SocketAddr, source: SocketAddr) -> Haproxy {
        assert!(
            std::path::Path::new(Self::BIN).exists(),
            "{} is missing: install the haproxy package (.ci/run does)",
            Self::BIN
        );
        // A port that was free a moment ago; readiness is then proven by
        // connecting, below.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("haproxy.cfg");
        // `set-src` makes the client one no test machine connects from, so
        // the access log can only have it from the PROXY header.
        std::fs::write(
            &cfg,
            format!(
                "global\n    maxconn 64\n\
                 defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
                 frontend fe\n    bind {addr}\n\
                 \x20   tcp-request connection set-src ipv4({})\n\
                 \x20   tcp-request connection set-src-port int({})\n\
                 \x20   default_backend be\n\
                 backend be\n    server s1 {backend} send-proxy-v2\n",
                source.ip(),
                source.port(),
            ),
        )
        .expect("write haproxy.cfg");
        let child = std::process::Command::new(Self::BIN)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let mut h = Haproxy {
            child,
            addr,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + PATIENCE;
        while TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!("haproxy exited before listening: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "haproxy never listened on {addr}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v2_names_the_original_client() {
    let origin = Origin::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        origin.addr,
        "proxy_protocol = true\ntrusted = [\"127.0.0.1/32\"]",
        "",
    );
    let d = Daemon::start_in(dir, &cfg);
    let client: SocketAddr = "192.0.2.7:4242".parse().unwrap();
    let haproxy = Haproxy::start(d.addr("http"), client).await;

    let mut send = conn(TRUSTED, haproxy.addr, b"").await;
    let reply = get_on(&mut send, "/through-haproxy", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    let lines = file_lines(&d.dir.path().join("access.log"), 1);
    let line = logged(&lines, "/through-haproxy");
    assert_eq!(line["client"], "192.0.2.7", "{line}");
    assert_eq!(line["peer"], "127.0.0.1", "{line}");
    let (xff, _) = forwarding(&origin, "/through-haproxy");
    assert_eq!(xff, "192.0.2.7");
}
