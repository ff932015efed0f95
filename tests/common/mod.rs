//! Shared test harness: the real `sluice` binary started on ephemeral ports
//! in front of real origins on 127.0.0.1, and clients that speak HTTP/1.1,
//! HTTP/2 (h2c and TLS) and raw TCP to it.
//!
//! Readiness comes from the daemon's own log: it prints one `listening` line
//! per listener with the bound address, then `ready`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod exposition;
pub mod raw;
pub mod redis;
#[allow(unused_imports)]
pub use exposition::*;
#[allow(unused_imports)]
pub use raw::*;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

/// Upper bound for anything a test waits on; a hang fails instead of
/// blocking CI.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// A body fed through a bounded channel: each message is one data frame, and
/// the body ends when the sender is dropped.
pub struct ChanBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|data| data.map(|d| Ok(http_body::Frame::data(d))))
    }
}

// ---------------------------------------------------------------- daemon --

/// A running `sluice` process. Killed on drop.
pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log: Arc<(Mutex<String>, Condvar)>,
    addrs: HashMap<String, SocketAddr>,
}

impl Daemon {
    /// Writes `config` to a temp file and starts sluice with it, waiting
    /// until every listener is bound.
    pub fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        Daemon::start_in(dir, config)
    }

    /// Like [`Daemon::start`], with a temp dir the caller already filled
    /// (certificates, say).
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Daemon {
        Daemon::start_logging(dir, config, "info")
    }

    /// Like [`Daemon::start_in`], logging what `rust_log` (a `RUST_LOG`
    /// filter) lets through.
    pub fn start_logging(dir: tempfile::TempDir, config: &str, rust_log: &str) -> Daemon {
        Daemon::start_with(dir, config, |command| {
            command.env("RUST_LOG", rust_log);
        })
    }

    /// Like [`Daemon::start_in`], with `setup` adjusting the command first
    /// (environment, working directory, resource limits).
    pub fn start_with(
        dir: tempfile::TempDir,
        config: &str,
        setup: impl FnOnce(&mut Command),
    ) -> Daemon {
        let config_path = dir.path().join("sluice.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info");
        setup(&mut command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("SLUICE_TEST_ECHO").is_some() {
                    eprintln!("sluice| {line}");
                }
                let (text, cv) = &*sink;
                let mut t = text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
                cv.notify_all();
            }
            let (text, cv) = &*sink;
            text.lock().unwrap().push_str("<stderr closed>\n");
            cv.notify_all();
        });
        let mut daemon = Daemon {
            child,
            dir,
            config_path,
            log,
            addrs: HashMap::new(),
        };
        let text = daemon.wait_for_log(" ready ");
        for line in text.lines().filter(|l| l.contains(" listening ")) {
            let name = field(line, "listener").expect("listener field");
            let addr = field(line, "addr").expect("addr field");
            daemon
                .addrs
                .insert(name.to_string(), addr.parse().expect("addr"));
        }
        daemon
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name}: {:?}", self.addrs))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().clone()
    }

    /// Blocks until the log contains `needle` (counting from the start),
    /// returning the whole log. Panics after [`PATIENCE`].
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_log_count(needle, 1)
    }

    /// Blocks until `needle` occurs at least `n` times in the log.
    pub fn wait_for_log_count(&self, needle: &str, n: usize) -> String {
        let (text, cv) = &*self.log;
        let deadline = Instant::now() + PATIENCE;
        let mut t = text.lock().unwrap();
        loop {
            if t.matches(needle).count() >= n {
                return t.clone();
            }
            if t.contains("<stderr closed>") {
                panic!("sluice exited before logging {needle:?}:\n{t}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("sluice did not log {needle:?} in time:\n{t}");
            }
            t = cv.wait_timeout(t, left).unwrap().0;
        }
    }

    /// Async-friendly version of [`Daemon::wait_for_log_count`].
    pub async fn log_count(&self, needle: &str, n: usize) -> String {
        let log = self.log.clone();
        let needle = needle.to_string();
        let (text, cv) = &*log;
        let deadline = Instant::now() + PATIENCE;
        loop {
            {
                let t = text.lock().unwrap();
                if t.matches(needle.as_str()).count() >= n {
                    return t.clone();
                }
                if t.contains("<stderr closed>") || Instant::now() > deadline {
                    panic!("sluice did not log {needle:?}:\n{t}");
                }
                let _ = cv;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Replaces the config file (for a reload test).
    pub fn write_config(&self, config: &str) {
        std::fs::write(&self.config_path, config).expect("write config");
    }

    /// Waits for the process to exit, up to [`PATIENCE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the daemon, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `key=value` from a tracing log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    Some(rest.split_whitespace().next().unwrap_or(rest))
}

/// Runs the sluice binary with `args` and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run sluice");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------- origins --

/// What an origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
}

/// A real HTTP/1.1 origin on 127.0.0.1 with an ephemeral port. It records
/// the head of every request before handing it to its handler.
pub struct Origin {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
    /// The tasks serving accepted connections.
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Origin {
    /// An origin answering `200 origin <port>` to everything, after reading
    /// the whole request body.
    pub async fn hello() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        Origin::hello_on(listener)
    }

    /// [`Origin::hello`] on an already-bound listener.
    pub fn hello_on(listener: TcpListener) -> Origin {
        Origin::serve_on(
            listener,
            |req: Request<Incoming>, addr: SocketAddr| async move {
                let _ = req.into_body().collect().await;
                Response::builder()
                    .header("x-origin", addr.to_string())
                    .body(full(format!("origin {}", addr.port())))
                    .unwrap()
            },
        )
    }

    /// An origin whose handler is `f(request, own_addr)`.
    pub async fn serve<F, Fut>(f: F) -> Origin
    where
        F: Fn(Request<Incoming>, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        Origin::serve_on(listener, f)
    }

    /// Serves on an already-bound listener (to reuse a known port).
    pub fn serve_on<F, Fut>(listener: TcpListener, f: F) -> Origin
    where
        F: Fn(Request<Incoming>, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let addr = listener.local_addr().expect("origin addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let f = Arc::new(f);
        let (h, s) = (hits.clone(), seen.clone());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let open = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (f, h, s) = (f.clone(), h.clone(), s.clone());
                let conn = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        h.fetch_add(1, Ordering::SeqCst);
                        s.lock().unwrap().push(Seen {
                            method: req.method().clone(),
                            uri: req.uri().clone(),
                            version: req.version(),
                            headers: req.headers().clone(),
                        });
                        let fut = f(req, addr);
                        async move { Ok::<_, std::convert::Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
                open.lock().unwrap().push(conn.abort_handle());
            }
        });
        Origin {
            addr,
            hits,
            seen,
            task,
            conns,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Heads of the requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops accepting and closes the listening socket.
    pub fn stop(self) {
        self.task.abort();
    }

    /// Stops accepting and closes every connection too: the origin is gone
    /// for keep-alive connections as well.
    pub fn kill(self) {
        self.task.abort();
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An origin that reads each request and never answers.
pub async fn silent() -> Origin {
    Origin::serve(|req, _addr| async move {
        let _ = req.into_body().collect().await;
        std::future::pending::<Response<TestBody>>().await
    })
    .await
}

/// An origin answering every request with `status` and the body `x`.
pub async fn answering(status: u16) -> Origin {
    answering_with(status, "x").await
}

/// An origin answering every request with `status` and `body`.
pub async fn answering_with(status: u16, body: impl Into<Bytes>) -> Origin {
    let body = body.into();
    Origin::serve(move |req, addr: SocketAddr| {
        let body = body.clone();
        async move {
            let _ = req.into_body().collect().await;
            Response::builder()
                .status(status)
                .header("x-origin", addr.to_string())
                .body(full(body))
                .unwrap()
        }
    })
    .await
}

/// An origin that counts the request bodies it received completely and
/// answers `got <len>` (or `body error ...`).
pub async fn body_counting_origin() -> (Origin, Arc<AtomicUsize>) {
    let complete = Arc::new(AtomicUsize::new(0));
    let c = complete.clone();
    let origin = Origin::serve(move |req: Request<Incoming>, _| {
        let c = c.clone();
        async move {
            match req.into_body().collect().await {
                Ok(body) => {
                    c.fetch_add(1, Ordering::SeqCst);
                    Response::new(full(format!("got {}", body.to_bytes().len())))
                }
                Err(e) => Response::new(full(format!("body error {e}"))),
            }
        }
    })
    .await;
    (origin, complete)
}

/// A raw TCP listener that accepts connections and resets them
/// (`SO_LINGER` 0, so the close is an RST), counting them: every connection
/// is one attempt that reached the member. [`Resetter::start`] resets at
/// once, which the proxy may see while still connecting;
/// [`Resetter::after_request`] first reads a request head, so the request
/// has surely been sent.
pub struct Resetter {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Resetter {
    pub async fn start() -> Resetter {
        Resetter::spawn(false).await
    }

    pub async fn after_request() -> Resetter {
        Resetter::spawn(true).await
    }

    async fn spawn(read_head: bool) -> Resetter {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok((mut stream, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    if read_head {
                        let mut seen = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                    }
                    // Linger 0 never blocks: the close is an immediate RST.
                    #[allow(deprecated)]
                    let _ = stream.set_linger(Some(Duration::ZERO));
                    drop(stream);
                }
            }
        });
        Resetter {
            addr,
            accepted,
            task,
        }
    }

    /// Connections accepted (and reset) so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Resetter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends signal `sig` (`HUP`, `TERM`, ...) to process `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} failed");
}

/// An address on 127.0.0.1 where nothing listens (connections are refused).
///
/// The port stays bound, without listening, for the rest of the test
/// process: a port that was merely free could be handed next to the
/// daemon's own `127.0.0.1:0` listener, and a "dead" member would then be
/// sluice itself (seen once in CI: a request looped until 431).
pub fn dead_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    // Never closed: it must outlive every daemon that dials it.
    std::mem::forget(socket);
    addr
}

/// Waits until connecting to `addr` is refused.
pub async fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            // Accepted (or reset) while the listener was still closing.
            Ok(_) | Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "{addr} still accepts connections"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// What the daemon logs when pool member `member` goes from state `from` to
/// `to`.
pub fn change(member: SocketAddr, from: &str, to: &str) -> String {
    format!("member={member} from={from} to={to}")
}

/// `GET /upstreams` on the admin listener, parsed.
pub async fn upstreams(admin: SocketAddr) -> serde_json::Value {
    let r = h1(
        admin,
        request(Method::GET, "/upstreams", "localhost", empty()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// The member object for `addr` in pool `app`.
pub fn member(v: &serde_json::Value, addr: SocketAddr) -> serde_json::Value {
    let pool = v["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["name"] == "app")
        .unwrap_or_else(|| panic!("no pool app: {v}"));
    pool["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["addr"] == addr.to_string().as_str())
        .unwrap_or_else(|| panic!("no member {addr}: {v}"))
        .clone()
}

// ---------------------------------------------------------------- configs --

/// A config with one plain listener `http` on an ephemeral port, one route
/// to pool `app` with `servers`, and `extra` TOML appended to `[pool.app]`.
pub fn simple_config(servers: &[SocketAddr], pool_extra: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    entries_config(&list, pool_extra)
}

/// [`simple_config`] with a `[limits]` table.
pub fn limits_config(origin: SocketAddr, limits: &str) -> String {
    simple_config(&[origin], &format!("\n[limits]\n{limits}\n"))
}

/// [`simple_config`] with the server tables written out (`{ srv = ".." }`,
/// `{ addr = "name:port", weight = 2 }`, ...).
pub fn entries_config(entries: &[String], pool_extra: &str) -> String {
    format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "main"
pool = "app"

[pool.app]
servers = [ {} ]
{pool_extra}
"#,
        entries.join(", ")
    )
}

/// A plain listener `http`, route `main` to pool `app` (one server,
/// `origin`) with `route_extra` keys, then `tables` (e.g. `[cache]` keys),
/// and an admin listener: all on ephemeral ports.
pub fn admin_route_config(origin: SocketAddr, route_extra: &str, tables: &str) -> String {
    format!(
        r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "main"
pool = "app"
{route_extra}

[pool.app]
servers = [ {{ addr = "{origin}" }} ]

{tables}

[admin]
listen = "127.0.0.1:0"
"#
    )
}

/// A TLS listener `tls` (one certificate pair) routing to `origin`, plus an
/// admin listener, both on ephemeral ports.
pub fn tls_admin_config(cert: &Path, key: &Path, origin: SocketAddr) -> String {
    format!(
        r#"
[[listener]]
name = "tls"
listen = "127.0.0.1:0"
[listener.tls]
certs = [ {{ cert = "{}", key = "{}" }} ]

[[route]]
pool = "app"

[pool.app]
servers = [ {{ addr = "{origin}" }} ]

[admin]
listen = "127.0.0.1:0"
"#,
        cert.display(),
        key.display(),
    )
}

/// `config` with `[server] workers = 1`: upstream connections are pooled per
/// worker thread, so tests that count them need a single worker.
pub fn one_worker(config: &str) -> String {
    format!("[server]\nworkers = 1\n{config}")
}

/// Waits until `path` holds at least `n` lines and returns them.
pub fn file_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            // Nothing more should follow.
            std::thread::sleep(Duration::from_millis(100));
            let again = std::fs::read_to_string(path).unwrap_or_default();
            return again.lines().map(str::to_string).collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} lines in {path:?}:\n{text}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- clients --

/// A collected response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Whether the cache answered `r` from a stored response.
pub fn is_hit(r: &Reply) -> bool {
    r.header("cache-status")
        .is_some_and(|s| s.starts_with("sluice; hit"))
}

/// Reads the whole of `resp` into a [`Reply`].
pub async fn collect(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// Builds a request with `Host: host`.
pub fn request(method: Method, path: &str, host: &str, body: TestBody) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(body)
        .unwrap()
}

/// A bodiless request with `Host: host` and `headers` appended.
pub fn request_with_headers(
    method: Method,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Request<TestBody> {
    let mut req = request(method, path, host, empty());
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    req
}

/// One HTTP/1.1 connection to `addr`.
pub async fn h1_conn(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    send
}

/// Sends one request over a fresh HTTP/1.1 connection and collects the reply.
pub async fn h1(addr: SocketAddr, req: Request<TestBody>) -> Reply {
    let mut send = h1_conn(addr).await;
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .expect("h1 response in time")
        .expect("h1 response");
    collect(resp).await
}

/// `POST path` to the daemon's admin listener (a purge, a reload).
pub async fn admin_post(d: &Daemon, path: &str) -> Reply {
    h1(
        d.addr("admin"),
        request(Method::POST, path, "admin", empty()),
    )
    .await
}

/// `GET path` with `Host: localhost` over HTTP/1.1.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    h1(addr, request(Method::GET, path, "localhost", empty())).await
}

/// One HTTP/2 prior-knowledge (h2c) connection to `addr`.
pub async fn h2c_conn(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// HTTP/2 requests need an absolute URI: `http://authority/path`.
pub fn h2_request(method: Method, url: &str, body: TestBody) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(url)
        .version(http::Version::HTTP_2)
        .body(body)
        .unwrap()
}

pub async fn h2_send(
    send: &mut hyper::client::conn::http2::SendRequest<TestBody>,
    req: Request<TestBody>,
) -> Reply {
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .expect("h2 response in time")
        .expect("h2 response");
    collect(resp).await
}

/// Writes `bytes` on a fresh TCP connection and reads until the daemon
/// closes it (or [`PATIENCE`] passes), returning what came back.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------- TLS --

/// A rustls server config for a test origin with `cert` / `key`; with
/// `clients`, a client certificate issued by that CA is required. No ALPN:
/// the caller sets what it offers.
pub fn tls_server_config(
    cert: &Path,
    key: &Path,
    clients: Option<&TestPki>,
) -> rustls::ServerConfig {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        Some(pki) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca_der()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).unwrap()
}

/// A throwaway certificate authority that issues leaf certificates into a
/// temp dir and builds client configs that trust it.
pub struct TestPki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sluice test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        TestPki { ca, ca_key }
    }

    /// Issues a leaf for `names`, writing `<stem>.pem` and `<stem>.key` in
    /// `dir`; returns their paths.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// The CA certificate (DER), for a verifier that trusts it.
    pub fn ca_der(&self) -> rustls_pki_types::CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// Writes the CA certificate as `<stem>.pem` in `dir`; returns its path.
    pub fn write_ca(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    /// A client config trusting this CA, offering `alpn`, limited to
    /// `versions`.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A TLS connection with what the handshake negotiated.
pub struct TlsConn {
    pub stream: tokio_rustls::client::TlsStream<TcpStream>,
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
    /// The leaf certificate the server presented (DER).
    pub peer_cert: Vec<u8>,
}

/// Connects to `addr` with SNI `server_name`; the handshake must succeed.
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsConn, std::io::Error> {
    let stream = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let stream = connector.connect(name, stream).await?;
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(|p| p.to_vec());
    let version = session.protocol_version();
    let peer_cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    Ok(TlsConn {
        stream,
        alpn,
        version,
        peer_cert,
    })
}

/// Sends `req` over an established TLS connection using the ALPN result.
pub async fn tls_send(conn: TlsConn, req: Request<TestBody>) -> Reply {
    let io = TokioIo::new(conn.stream);
    let resp = if conn.alpn.as_deref() == Some(b"h2") {
        let (mut send, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 over TLS");
        tokio::spawn(c);
        send.send_request(req).await.expect("response")
    } else {
        let (mut send, c) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 over TLS");
        tokio::spawn(c);
        send.send_request(req).await.expect("response")
    };
    collect(resp).await
}
