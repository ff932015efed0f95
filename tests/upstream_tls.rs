//! TLS and mTLS to upstreams (`[pool.NAME.tls]`) through the real daemon,
//! in front of real TLS origins on 127.0.0.1: verification against `ca`,
//! SNI, ALPN (`h2` picked means HTTP/2 to the member), client certificates, `verify =
//! false`, session resumption, failed handshakes as connect failures
//! (retried, ejected, counted in `sluice_upstream_tls_errors_total`),
//! health checks over TLS, and `--check` on the files.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What a TLS origin saw of one accepted handshake.
#[derive(Debug, Clone)]
struct Handshake {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    resumed: bool,
}

/// An origin behind TLS answering `tls origin <port>` in HTTP/1.1 or
/// HTTP/2, whichever ALPN picked, with the version in `x-version`.
struct TlsOrigin {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    paths: Arc<Mutex<Vec<String>>>,
    /// Notified on every request.
    served: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsOrigin {
    fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }

    /// Waits until a request for `path` has come in.
    async fn wait_path(&self, path: &str) {
        let wait = async {
            loop {
                let notified = self.served.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.paths().iter().any(|p| p == path) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("no request for {path}: {:?}", self.paths()));
    }
}

/// Serves TLS with `cert`/`key`, offering `h2` and `http/1.1` by ALPN (so
/// an `h2` offer would be picked); with `clients`, a client certificate
/// issued by that CA is required.
async fn tls_origin(cert: &Path, key: &Path, clients: Option<&TestPki>) -> TlsOrigin {
    tls_origin_with(cert, key, clients, false).await
}

/// [`tls_origin`]; with `proxy_v1`, each connection starts with a PROXY v1
/// line before the TLS handshake (recorded in `paths` as `PROXY ...`).
async fn tls_origin_with(
    cert: &Path,
    key: &Path,
    clients: Option<&TestPki>,
    proxy_v1: bool,
) -> TlsOrigin {
    let mut config = tls_server_config(cert, key, clients);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(Mutex::new(Vec::new()));
    let paths = Arc::new(Mutex::new(Vec::new()));
    let served = Arc::new(tokio::sync::Notify::new());
    let (seen, hits, notify) = (handshakes.clone(), paths.clone(), served.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen, hits) = (acceptor.clone(), seen.clone(), hits.clone());
            let notify = notify.clone();
            tokio::spawn(async move {
                let mut stream = stream;
                if proxy_v1 {
                    use tokio::io::AsyncReadExt;
                    let mut line = Vec::new();
                    while !line.ends_with(b"\r\n") {
                        let Ok(b) = stream.read_u8().await else {
                            return;
                        };
                        line.push(b);
                    }
                    let line = String::from_utf8_lossy(&line).trim_end().to_string();
                    hits.lock().unwrap().push(line);
                }
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let session = tls.get_ref().1;
                seen.lock().unwrap().push(Handshake {
                    sni: session.server_name().map(str::to_string),
                    alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                    resumed: session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                });
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    hits.lock().unwrap().push(req.uri().path().to_string());
                    notify.notify_waiters();
                    let version = format!("{:?}", req.version());
                    async move {
                        let mut resp =
                            http::Response::new(full(format!("tls origin {}", addr.port())));
                        resp.headers_mut()
                            .insert("x-version", version.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(tls), service)
                .await;
            });
        }
    });
    TlsOrigin {
        addr,
        handshakes,
        paths,
        served,
        task,
    }
}

/// Listener `http`, route to pool `app` (`servers`, then `pool_extra`
/// keys), `[pool.app.tls]` with `tls`, then `tables`, and an admin listener.
fn config(servers: &[SocketAddr], pool_extra: &str, tls: &str, tables: &str) -> String {
    simple_config(
        servers,
        &format!("{pool_extra}\n\n[pool.app.tls]\n{tls}\n\n{tables}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n"),
    )
}

/// The value of `sluice_upstream_tls_errors_total` for `member` and `reason`.
async fn tls_errors(d: &Daemon, member: SocketAddr, reason: &str) -> u64 {
    let text = get(d.addr("admin"), "/metrics").await.text();
    let member = format!("member=\"{member}\"");
    let reason = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|l| l.starts_with("sluice_upstream_tls_errors_total{"))
        .filter(|l| l.contains(&member) && l.contains(&reason) && l.contains("pool=\"app\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_upstream_gets_sni_and_h2_by_alpn_and_resumes_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ca = pki.write_ca(dir.path(), "ca");
    let (cert, key) = pki.issue(dir.path(), "api", &["api.internal"]);
    let origin = tls_origin(&cert, &key, None).await;
    // No idle connections: every request makes a new handshake.
    let text = config(
        &[origin.addr],
        "max_idle_per_server = 0",
        &format!(
            "server_name = \"api.internal\"\nca = '{}'\nalpn = [\"h2\", \"http/1.1\"]",
            ca.display()
        ),
        "",
    );
    let d = Daemon::start_in(dir, &text);
    for _ in 0..3 {
        let r = get(d.addr("http"), "/x").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), format!("tls origin {}", origin.addr.port()));
        assert_eq!(r.header("x-version"), Some("HTTP/2.0"));
    }
    let seen = origin.handshakes();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for h in &seen {
        assert_eq!(h.sni.as_deref(), Some("api.internal"), "{seen:?}");
        assert_eq!(h.alpn.as_deref(), Some(&b"h2"[..]), "{seen:?}");
    }
    assert!(!seen[0].resumed, "{seen:?}");
    assert!(
        seen[1..].iter().any(|h| h.resumed),
        "no resumed session: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_server_is_verified_against_its_ip_and_empty_alpn_offers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ca = pki.write_ca(dir.path(), "ca");
    let (cert, key) = pki.issue(dir.path(), "ip", &["127.0.0.1"]);
    let origin = tls_origin(&cert, &key, None).await;
    let text = config(
        &[origin.addr],
        "",
        &format!("ca = '{}'\nalpn = []", ca.display()),
        "",
    );
    let d = Daemon::start_in(dir, &text);
    let r = get(d.addr("http"), "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = origin.handshakes();
    assert_eq!(seen[0].sni, None, "no SNI for an IP: {seen:?}");
    assert_eq!(seen[0].alpn, None, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_server_name_is_a_connect_failure_retried_counted_and_ejected() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ca = pki.write_ca(dir.path(), "ca");
    let (good_cert, good_key) = pki.issue(dir.path(), "good", &["api.internal"]);
    let (bad_cert, bad_key) = pki.issue(dir.path(), "bad", &["other.internal"]);
    let bad = tls_origin(&bad_cert, &bad_key, None).await;
    let good = tls_origin(&good_cert, &good_key, None).await;
    let text = config(
        &[bad.addr, good.addr],
        "retries = 1",
        &format!("server_name = \"api.internal\"\nca = '{}'", ca.display()),
        "[pool.app.outlier]\nconsecutive_failures = 2\neject_for = \"60s\"",
    );
    let d = Daemon::start_in(dir, &text);
    for _ in 0..4 {
        let r = get(d.addr("http"), "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), format!("tls origin {}", good.addr.port()));
    }
    d.log_count(&format!("member={} from=up to=ejected", bad.addr), 1)
        .await;
    assert!(bad.paths().is_empty(), "{:?}", bad.paths());
    assert_eq!(tls_errors(&d, bad.addr, "certificate").await, 2);
    assert_eq!(tls_errors(&d, good.addr, "certificate").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_member_with_a_wrong_name_is_a_502() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ca = pki.write_ca(dir.path(), "ca");
    let (cert, key) = pki.issue(dir.path(), "bad", &["other.internal"]);
    let bad = tls_origin(&cert, &key, None).await;
    let text = config(
        &[bad.addr],
        "",
        &format!("server_name = \"api.internal\"\nca = '{}'", ca.display()),
        "",
    );
    let d = Daemon::start_in(dir, &text);
    assert_eq!(get(d.addr("http"), "/").await.status, 502);
    assert!(bad.paths().is_empty());
    assert_eq!(tls_errors(&d, bad.addr, "certificate").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mtls_origin_refuses_without_a_client_certificate_and_serves_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ca = pki.write_ca(dir.path(), "ca");
    let (cert, key) = pki.issue(dir.path(), "api", &["api.internal"]);
    let (client_cert, client_key) = pki.issue(dir.path(), "client", &["sluice.client"]);
    let origin = tls_origin(&cert, &key, Some(&pki)).await;
    // Over HTTP/1.1 the member's alert is always read before anything is
    // written; an h2 client writes its preface at once, and a member that
    // closes on it may reset the connection before the alert is read (the
    // refusal is then a failure before the response, uncounted).
    let tls = format!(
        "server_name = \"api.internal\"\nca = '{}'\nalpn = [\"http/1.1\"]",
        ca.display()
    );
    let d = Daemon::start_in(dir, &config(&[origin.addr], "", &tls, ""));
    assert_eq!(get(d.addr("http"), "/").await.status, 502);
    assert!(origin.paths().is_empty());
    assert_eq!(tls_errors(&d, origin.addr, "certificate").await, 1);

    let with_cert = format!(
        "{tls}\ncert = '{}'\nkey = '{}'",
        client_cert.display(),
        client_key.display()
    );
    d.write_config(&config(&[origin.addr], "", &with_cert, ""));
    d.signal("HUP");
    d.log_count("config reloaded", 1).await;
    let r = get(d.addr("http"), "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(origin.paths(), ["/"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_a_changed_ca_file_under_an_unchanged_config() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, key) = pki.issue(dir.path(), "api", &["api.internal"]);
    // At first, ca.pem holds another CA: the member is not trusted.
    let ca = TestPki::new().write_ca(dir.path(), "ca");
    let origin = tls_origin(&cert, &key, None).await;
    let text = config(
        &[origin.addr],
        "",
        "server_name = \"api.internal\"\nca = 'ca.pem'",
        "",
    );
    let d = Daemon::start_in(dir, &text);
    assert_eq!(get(d.addr("http"), "/").await.status, 502);
    assert_eq!(pki.write_ca(d.dir.path(), "ca"), ca);
    d.signal("HUP");
    d.log_count("config reloaded", 1).await;
    let r = get(d.addr("http"), "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_false_accepts_an_unknown_certificate_and_warns_at_start_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    // Issued by a CA that sluice is never told about.
    let stranger = TestPki::new();
    let (cert, key) = stranger.issue(dir.path(), "self", &["whoever.example"]);
    let origin = tls_origin(&cert, &key, None).await;
    let text = config(&[origin.addr], "", "verify = false", "");
    let d = Daemon::start_in(dir, &text);
    let warning = "upstream certificates are NOT verified";
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(warning) && l.contains("pool=\"app\"")),
        "{log}"
    );
    let r = get(d.addr("http"), "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.signal("HUP");
    d.log_count("config reloaded", 1).await;
    d.log_count(warning, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_go_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ca = pki.write_ca(dir.path(), "ca");
    let (cert, key) = pki.issue(dir.path(), "api", &["api.internal"]);
    let good = tls_origin(&cert, &key, None).await;
    // Speaks plain HTTP only: its checks fail in the handshake.
    let plain = Origin::hello().await;
    let text = config(
        &[good.addr, plain.addr],
        "",
        &format!("server_name = \"api.internal\"\nca = '{}'", ca.display()),
        "[pool.app.health]\npath = \"/healthz\"\ninterval = \"50ms\"\nrise = 1\nfall = 1",
    );
    let d = Daemon::start_in(dir, &text);
    let log = d.log_count(&change(plain.addr, "up", "down"), 1).await;
    assert!(!log.contains(&change(good.addr, "up", "down")), "{log}");
    good.wait_path("/healthz").await;
    assert!(plain.seen().iter().all(|s| s.uri.path() != "/healthz"));
    // Every request now goes to the member that is up, over TLS.
    for _ in 0..3 {
        let r = get(d.addr("http"), "/").await;
        assert_eq!(r.text(), format!("tls origin {}", good.addr.port()));
    }
    assert!(tls_errors(&d, plain.addr, "handshake").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_sending_proxy_headers_starts_tls_after_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ca = pki.write_ca(dir.path(), "ca");
    let (cert, key) = pki.issue(dir.path(), "api", &["api.internal"]);
    let origin = tls_origin_with(&cert, &key, None, true).await;
    let text = config(
        &[origin.addr],
        "send_proxy_protocol = \"v1\"",
        &format!("server_name = \"api.internal\"\nca = '{}'", ca.display()),
        "",
    );
    let d = Daemon::start_in(dir, &text);
    let r = get(d.addr("http"), "/p").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let paths = origin.paths();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths[0].starts_with("PROXY TCP4 127.0.0.1 "), "{paths:?}");
    assert_eq!(paths[1], "/p");
    assert_eq!(origin.handshakes()[0].sni.as_deref(), Some("api.internal"));
}

// ---------------------------------------------------------------- --check --

fn check(dir: &Path, text: &str) -> (i32, String) {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = run_cli(&["--check", "--config", path.to_str().unwrap()], dir);
    (code, err)
}

/// The `line:col` of `needle` in `text`.
fn at(text: &str, needle: &str) -> String {
    let i = text.find(needle).unwrap();
    let before = &text[..i];
    let line = before.matches('\n').count() + 1;
    let col = i - before.rfind('\n').map_or(0, |n| n + 1) + 1;
    format!("{line}:{col}")
}

#[test]
fn check_reports_a_missing_ca_a_mismatched_pair_and_an_unknown_alpn_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, _) = pki.issue(dir.path(), "one", &["sluice.client"]);
    let (_, other_key) = pki.issue(dir.path(), "two", &["sluice.client"]);
    let missing = dir.path().join("nowhere-ca.pem");
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let text = config(
        &[addr],
        "",
        &format!(
            "ca = '{}'\ncert = '{}'\nkey = '{}'\nalpn = [\"h3\"]",
            missing.display(),
            cert.display(),
            other_key.display()
        ),
        "",
    );
    let (code, err) = check(dir.path(), &text);
    assert_eq!(code, 1, "{err}");
    let file = dir.path().join("sluice.toml").display().to_string();
    for (needle, key, message) in [
        (
            format!("'{}'", missing.display()),
            "pool.app.tls.ca",
            "cannot read CA file",
        ),
        (
            format!("'{}'", other_key.display()),
            "pool.app.tls.key",
            "does not match certificate",
        ),
        (
            "[\"h3\"]".to_string(),
            "pool.app.tls.alpn",
            "unknown protocol \"h3\"",
        ),
    ] {
        let prefix = format!("{file}:{}: {key}: ", at(&text, &needle));
        assert!(
            err.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(message)),
            "no {prefix}...{message} in:\n{err}"
        );
    }

    let good = config(&[addr], "", "alpn = [\"http/1.1\"]\nverify = false", "");
    let (code, err) = check(dir.path(), &good);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_config_shows_the_tls_table_and_it_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ca = pki.write_ca(dir.path(), "ca");
    let (cert, key) = pki.issue(dir.path(), "client", &["sluice.client"]);
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // Relative paths: resolved against the config file's directory.
    let tls = "server_name = \"api.internal\"\nca = 'ca.pem'\ncert = 'client.pem'\nkey = 'client.key'\nalpn = [\"http/1.1\"]";
    let d = Daemon::start_in(dir, &config(&[addr], "", tls, ""));
    let shown = get(d.addr("admin"), "/config").await.text();
    for expected in [
        "server_name = \"api.internal\"".to_string(),
        format!("ca = \"{}\"", ca.display()),
        format!("cert = \"{}\"", cert.display()),
        format!("key = \"{}\"", key.display()),
        "verify = true".to_string(),
        "alpn = [\"http/1.1\"]".to_string(),
    ] {
        assert!(shown.contains(&expected), "{expected} in\n{shown}");
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, err) = check(elsewhere.path(), &shown);
    assert_eq!(code, 0, "{err}\n{shown}");
}
