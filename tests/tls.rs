//! TLS termination against the real daemon: certificate choice by SNI, ALPN,
//! protocol versions, plain HTTP on the TLS port, and certificate reload.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{Method, Version};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, ProtocolVersion, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Accepts any server certificate (signatures are still checked) so a test
/// can look at the leaf a name-mismatched handshake presents.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that records whatever leaf the server presents.
fn capturing_client() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(BOTH)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

fn der_of(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem)
        .unwrap_or_else(|e| panic!("read {}: {e}", pem.display()))
        .to_vec()
}

/// Certificate files issued for a test daemon.
struct Certs {
    a: (PathBuf, PathBuf),
    b: (PathBuf, PathBuf),
}

fn tls_config(origin: SocketAddr, pairs: &[&(PathBuf, PathBuf)]) -> String {
    let certs: Vec<String> = pairs
        .iter()
        .map(|(c, k)| format!("{{ cert = '{}', key = '{}' }}", c.display(), k.display()))
        .collect();
    format!(
        r#"
[[listener]]
name = "https"
listen = "127.0.0.1:0"
[listener.tls]
certs = [ {} ]

[[route]]
name = "main"
pool = "app"

[pool.app]
servers = [ {{ addr = "{origin}" }} ]
"#,
        certs.join(", ")
    )
}

/// Starts a daemon with a TLS listener holding `a.test` (default) and
/// `*.b.test`, in front of `origin`.
fn tls_daemon(pki: &TestPki, origin: SocketAddr) -> (Daemon, Certs) {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = Certs {
        a: pki.issue(dir.path(), "a", &["a.test"]),
        b: pki.issue(dir.path(), "b", &["*.b.test"]),
    };
    let d = Daemon::start_in(dir, &tls_config(origin, &[&certs.a, &certs.b]));
    (d, certs)
}

async fn handshake(addr: SocketAddr, sni: &str, config: Arc<rustls::ClientConfig>) -> TlsConn {
    tokio::time::timeout(PATIENCE, tls_connect(addr, sni, config))
        .await
        .expect("handshake in time")
        .unwrap_or_else(|e| panic!("TLS handshake with SNI {sni}: {e}"))
}

async fn send(conn: TlsConn, req: http::Request<TestBody>) -> Reply {
    tokio::time::timeout(PATIENCE, tls_send(conn, req))
        .await
        .expect("response in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_matching_certificate() {
    let origin = Origin::hello().await;
    let pki = TestPki::new();
    let (d, certs) = tls_daemon(&pki, origin.addr);
    let addr = d.addr("https");
    let (a_der, b_der) = (der_of(&certs.a.0), der_of(&certs.b.0));
    assert_ne!(a_der, b_der);

    // Clients verifying against the CA and the name: the handshake only
    // succeeds with the right certificate, and the leaf is the issued file.
    let conn = handshake(addr, "a.test", pki.client_config(&[], BOTH)).await;
    assert_eq!(
        conn.peer_cert, a_der,
        "SNI a.test got the wrong certificate"
    );
    let r = send(conn, request(Method::GET, "/", "a.test", empty())).await;
    assert_eq!(r.status, 200);

    let conn = handshake(addr, "x.b.test", pki.client_config(&[], BOTH)).await;
    assert_eq!(
        conn.peer_cert, b_der,
        "SNI x.b.test got the wrong certificate"
    );
    let r = send(conn, request(Method::GET, "/", "x.b.test", empty())).await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_missing_sni_gets_default_certificate() {
    let origin = Origin::hello().await;
    let pki = TestPki::new();
    let (d, certs) = tls_daemon(&pki, origin.addr);
    let addr = d.addr("https");
    let a_der = der_of(&certs.a.0);

    // `b.test` and `y.x.b.test` are not covered by `*.b.test` (a wildcard
    // covers exactly one label).
    for sni in ["unknown.example", "b.test", "y.x.b.test"] {
        let conn = handshake(addr, sni, capturing_client()).await;
        assert_eq!(
            conn.peer_cert, a_der,
            "SNI {sni} should get the default certificate"
        );
    }
    // An IP address as server name: rustls sends no SNI at all.
    let conn = handshake(addr, "127.0.0.1", capturing_client()).await;
    assert_eq!(
        conn.peer_cert, a_der,
        "no SNI should get the default certificate"
    );
    let r = send(conn, request(Method::GET, "/", "127.0.0.1", empty())).await;
    assert_eq!(r.status, 200);

    // The default certificate does not verify for an unknown name.
    let strict = tokio::time::timeout(
        PATIENCE,
        tls_connect(addr, "unknown.example", pki.client_config(&[], BOTH)),
    )
    .await
    .expect("handshake in time");
    assert!(
        strict.is_err(),
        "a verifying client accepted a.test for unknown.example"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_is_preferred_and_proxied_over_http2() {
    let origin = Origin::hello().await;
    let pki = TestPki::new();
    let (d, _certs) = tls_daemon(&pki, origin.addr);
    let conn = handshake(
        d.addr("https"),
        "a.test",
        pki.client_config(&[b"h2", b"http/1.1"], BOTH),
    )
    .await;
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
    let r = send(
        conn,
        h2_request(Method::GET, "https://a.test/alpn", empty()),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.text(), format!("origin {}", origin.addr.port()));
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri.path(), "/alpn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_http11_only_gets_http11() {
    let origin = Origin::hello().await;
    let pki = TestPki::new();
    let (d, _certs) = tls_daemon(&pki, origin.addr);
    let conn = handshake(
        d.addr("https"),
        "a.test",
        pki.client_config(&[b"http/1.1"], BOTH),
    )
    .await;
    assert_eq!(conn.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let r = send(conn, request(Method::GET, "/h1", "a.test", empty())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.text(), format!("origin {}", origin.addr.port()));
    assert_eq!(origin.hits(), 1);
}

/// An idle keep-alive connection is parked (its hyper session shut down,
/// the TLS session and socket kept) and answers its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_http11_connection_is_parked_and_serves_the_next_request() {
    let origin = Origin::hello().await;
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = pki.issue(dir.path(), "a", &["a.test"]);
    let d = Daemon::start_logging(
        dir,
        &tls_config(origin.addr, &[&a]),
        "info,sluice::listener=trace",
    );
    let conn = handshake(
        d.addr("https"),
        "a.test",
        pki.client_config(&[b"http/1.1"], BOTH),
    )
    .await;
    let (mut send, c) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn.stream))
            .await
            .expect("h1 over TLS");
    let client = tokio::spawn(c);
    for round in 1..=2 {
        let req = request(Method::GET, "/parked", "a.test", empty());
        let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
            .await
            .expect("response in time")
            .expect("response");
        let r = collect(resp).await;
        assert_eq!(r.status, 200, "round {round}");
        // The readiness signal: sluice logs each park (at trace).
        d.log_count("idle connection parked", round).await;
    }
    assert!(!client.is_finished(), "the same connection served both");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_alpn_gets_http11() {
    let origin = Origin::hello().await;
    let pki = TestPki::new();
    let (d, _certs) = tls_daemon(&pki, origin.addr);
    let conn = handshake(d.addr("https"), "a.test", pki.client_config(&[], BOTH)).await;
    assert_eq!(conn.alpn, None);
    let r = send(conn, request(Method::GET, "/none", "a.test", empty())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_and_tls12_both_work() {
    let origin = Origin::hello().await;
    let pki = TestPki::new();
    let (d, _certs) = tls_daemon(&pki, origin.addr);
    let addr = d.addr("https");
    let cases: [(&rustls::SupportedProtocolVersion, ProtocolVersion); 2] = [
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
    ];
    for (n, (offer, expect)) in cases.into_iter().enumerate() {
        let conn = handshake(
            addr,
            "a.test",
            pki.client_config(&[b"h2", b"http/1.1"], &[offer]),
        )
        .await;
        assert_eq!(conn.version, Some(expect));
        let r = send(conn, h2_request(Method::GET, "https://a.test/v", empty())).await;
        assert_eq!(r.status, 200, "{expect:?}");
        assert_eq!(origin.hits(), n + 1);
    }
    // Offering both, the server picks the newest.
    let conn = handshake(addr, "a.test", pki.client_config(&[], BOTH)).await;
    assert_eq!(conn.version, Some(ProtocolVersion::TLSv1_3));
}

/// A hand-made ClientHello with `client_version` and no supported_versions
/// extension, so `client_version` is the highest version offered. It carries
/// what a TLS 1.2 server needs (ECDHE-GCM suites, signature algorithms,
/// groups, point formats).
fn legacy_client_hello(client_version: [u8; 2]) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut exts = Vec::new();
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    ext(
        &mut exts,
        0x000d,
        &[0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    );
    // supported_groups: x25519, secp256r1
    ext(&mut exts, 0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    ext(&mut exts, 0x000b, &[0x01, 0x00]);

    let mut body = client_version.to_vec();
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // empty session id
                  // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);

    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// Sends `hello` and returns the first record header plus 2 bytes the
/// server answers with (up to 7 bytes; fewer if it closes first).
async fn first_reply(addr: SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(hello).await.expect("write");
    let mut reply = vec![0u8; 7];
    let mut got = 0;
    while got < reply.len() {
        match tokio::time::timeout(PATIENCE, stream.read(&mut reply[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("no reply to the ClientHello in time"),
        }
    }
    reply.truncate(got);
    reply
}

/// rustls cannot speak TLS 1.1, so a hand-made TLS 1.1 ClientHello checks
/// that the server refuses it with a protocol_version alert, while the same
/// hello saying TLS 1.2 gets a ServerHello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls11_client_hello_is_refused() {
    let origin = Origin::hello().await;
    let pki = TestPki::new();
    let (d, _certs) = tls_daemon(&pki, origin.addr);
    let addr = d.addr("https");

    let reply = first_reply(addr, &legacy_client_hello([0x03, 0x03])).await;
    assert!(
        reply.len() >= 6,
        "no reply to a TLS 1.2 hello: {reply:02x?}"
    );
    assert_eq!(
        reply[0], 0x16,
        "TLS 1.2 hello should get a handshake record: {reply:02x?}"
    );
    assert_eq!(
        reply[5], 0x02,
        "TLS 1.2 hello should get a ServerHello: {reply:02x?}"
    );

    let reply = first_reply(addr, &legacy_client_hello([0x03, 0x02])).await;
    assert_eq!(reply.len(), 7, "no alert came back: {reply:02x?}");
    assert_eq!(reply[0], 0x15, "expected an alert record, got {reply:02x?}");
    assert_eq!(reply[5], 2, "alert must be fatal: {reply:02x?}");
    assert_eq!(
        reply[6], 70,
        "expected a protocol_version alert: {reply:02x?}"
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_tls_port_is_not_proxied() {
    let origin = Origin::hello().await;
    let pki = TestPki::new();
    let (d, _certs) = tls_daemon(&pki, origin.addr);
    let addr = d.addr("https");
    // `raw` returns once the daemon closes the connection, so anything it
    // would have proxied has reached the origin by then.
    let reply = raw(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(
        !reply.contains("origin"),
        "plain HTTP was proxied: {reply:?}"
    );
    assert!(
        !reply.contains("HTTP/1.1 200"),
        "plain HTTP was answered: {reply:?}"
    );
    assert_eq!(origin.hits(), 0);
    // The listener still serves TLS afterwards (and the counter counts).
    let conn = handshake(addr, "a.test", pki.client_config(&[], BOTH)).await;
    let r = send(conn, request(Method::GET, "/", "a.test", empty())).await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_replaced_certificate() {
    let origin = Origin::hello().await;
    let pki = TestPki::new();
    let (d, certs) = tls_daemon(&pki, origin.addr);
    let addr = d.addr("https");
    let old_a = der_of(&certs.a.0);
    let b_der = der_of(&certs.b.0);

    let conn = handshake(addr, "a.test", pki.client_config(&[], BOTH)).await;
    assert_eq!(conn.peer_cert, old_a);

    let new_pair = pki.issue(d.dir.path(), "a-renewed", &["a.test"]);
    let new_a = der_of(&new_pair.0);
    assert_ne!(new_a, old_a);
    d.write_config(&tls_config(origin.addr, &[&new_pair, &certs.b]));
    d.signal("HUP");
    tokio::task::block_in_place(|| d.wait_for_log("config reloaded"));

    let conn = handshake(addr, "a.test", pki.client_config(&[], BOTH)).await;
    assert_eq!(
        conn.peer_cert, new_a,
        "SNI a.test still gets the old certificate after reload"
    );
    let r = send(conn, request(Method::GET, "/", "a.test", empty())).await;
    assert_eq!(r.status, 200);
    // The renewed pair is the new default; b is unchanged.
    let conn = handshake(addr, "unknown.example", capturing_client()).await;
    assert_eq!(conn.peer_cert, new_a);
    let conn = handshake(addr, "x.b.test", pki.client_config(&[], BOTH)).await;
    assert_eq!(conn.peer_cert, b_der);

    // Renewal in place (same paths, new contents) is picked up too.
    let same_paths = pki.issue(d.dir.path(), "a-renewed", &["a.test"]);
    assert_eq!(same_paths, new_pair);
    let newer_a = der_of(&new_pair.0);
    assert_ne!(newer_a, new_a);
    d.signal("HUP");
    tokio::task::block_in_place(|| d.wait_for_log_count("config reloaded", 2));
    let conn = handshake(addr, "a.test", pki.client_config(&[], BOTH)).await;
    assert_eq!(
        conn.peer_cert, newer_a,
        "certificate renewed in place was not reloaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_broken_certificate_keeps_serving_old_one() {
    let origin = Origin::hello().await;
    let pki = TestPki::new();
    let (d, certs) = tls_daemon(&pki, origin.addr);
    let addr = d.addr("https");
    let old_a = der_of(&certs.a.0);

    // The new config points a.test at a certificate with the wrong key.
    let other = pki.issue(d.dir.path(), "other", &["a.test"]);
    let broken = (other.0.clone(), certs.b.1.clone());
    d.write_config(&tls_config(origin.addr, &[&broken, &certs.b]));
    d.signal("HUP");
    let log = tokio::task::block_in_place(|| d.wait_for_log("reload refused"));
    assert!(!log.contains("config reloaded"), "{log}");

    let conn = handshake(addr, "a.test", pki.client_config(&[], BOTH)).await;
    assert_eq!(conn.peer_cert, old_a);
    let r = send(conn, request(Method::GET, "/", "a.test", empty())).await;
    assert_eq!(r.status, 200);
}

/// An HTTP/2 client on a fresh TLS connection to `d` (ALPN h2).
async fn h2_over_tls(
    pki: &TestPki,
    d: &Daemon,
) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let conn = handshake(d.addr("https"), "a.test", pki.client_config(&[b"h2"], BOTH)).await;
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
    let (send, c) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(conn.stream),
    )
    .await
    .expect("h2 over TLS");
    tokio::spawn(c);
    send
}

// sluice holds what it writes to an HTTP/2 connection until hyper's poll
// of it returns: a streamed response must still go out piece by piece.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streamed_response_reaches_the_client_while_the_origin_holds_the_rest() {
    use http_body_util::BodyExt;
    let (senders_tx, mut senders) = tokio::sync::mpsc::unbounded_channel();
    let origin = Origin::serve(move |_req, _addr| {
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        let _ = senders_tx.send(tx);
        async move {
            http::Response::builder()
                .body(ChanBody(rx).boxed())
                .unwrap()
        }
    })
    .await;
    let pki = TestPki::new();
    let (d, _certs) = tls_daemon(&pki, origin.addr);
    let mut send = h2_over_tls(&pki, &d).await;
    let resp = tokio::time::timeout(
        PATIENCE,
        send.send_request(h2_request(Method::GET, "https://a.test/stream", empty())),
    )
    .await
    .expect("head in time")
    .expect("response");
    assert_eq!(resp.status(), 200);
    let tx = senders.recv().await.expect("the origin got the request");
    let mut body = resp.into_body();
    tx.send(bytes::Bytes::from_static(b"first")).await.unwrap();
    assert_eq!(next_data(&mut body).await.as_deref(), Some(&b"first"[..]));
    tx.send(bytes::Bytes::from_static(b"second")).await.unwrap();
    assert_eq!(next_data(&mut body).await.as_deref(), Some(&b"second"[..]));
    drop(tx);
    assert_eq!(next_data(&mut body).await, None);
}

/// The next non-empty data frame of `body`, None at its end.
async fn next_data(body: &mut hyper::body::Incoming) -> Option<bytes::Bytes> {
    use http_body_util::BodyExt;
    loop {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("a frame in time")?;
        if let Ok(data) = frame.expect("body frame").into_data() {
            if !data.is_empty() {
                return Some(data);
            }
        }
    }
}

// Many responses ready at once, each larger than what sluice holds before
// writing (16 KiB), and more than the socket takes at once: every body
// arrives whole, on the stream that asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_h2_streams_over_tls_each_get_their_whole_body() {
    let origin = Origin::serve(|req, _addr| async move {
        let n: usize = req.uri().path()[1..].parse().unwrap_or(0);
        let byte = b'a' + (n % 26) as u8;
        http::Response::builder()
            .body(full(vec![byte; 40_000 + n]))
            .unwrap()
    })
    .await;
    let pki = TestPki::new();
    let (d, _certs) = tls_daemon(&pki, origin.addr);
    let send = h2_over_tls(&pki, &d).await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..40usize {
        let mut send = send.clone();
        calls.spawn(async move {
            let url = format!("https://a.test/{n}");
            (
                n,
                h2_send(&mut send, h2_request(Method::GET, &url, empty())).await,
            )
        });
    }
    while let Some(call) = calls.join_next().await {
        let (n, r) = call.expect("call");
        assert_eq!(r.status, 200, "stream {n}");
        let byte = b'a' + (n % 26) as u8;
        assert_eq!(r.body.len(), 40_000 + n, "stream {n}");
        assert!(
            r.body.iter().all(|b| *b == byte),
            "stream {n} got another's bytes"
        );
    }
}
