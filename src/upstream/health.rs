//! Active health checks: each pool with `[pool.NAME.health]` probes every
//! member every `interval` on a task of its own, each probe delayed by a
//! random share of the interval so members are not probed in lock-step.
//! `rise` passes in a row mark a down member up, `fall` failures in a row
//! mark an up member down; each change is logged once.
//!
//! An `http` check sends `GET path` with the member's configured server
//! address as `Host` and passes on a status in `expect_status`; a `tcp`
//! check passes when the connection is accepted. Either fails after
//! `timeout`. A pool with TLS checks over TLS too (a `tcp` check then
//! passes once the handshake does), sharing the pool's session cache; an
//! `http` check speaks the protocol the pool's requests do (HTTP/2 for
//! `protocol = "h2c"` or a member that picks `h2` by ALPN). A `grpc`
//! check calls the standard `grpc.health.v1.Health/Check` over HTTP/2
//! (h2c, or h2 over the pool's TLS) and passes only on `SERVING`.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_util::rt::TokioExecutor;

use super::connect::{Connector, Sender};
use super::member::{CheckResult, Member, MemberState};
use super::pool::Pool;
use crate::config::{HealthConfig, HealthKind};

/// Checks the members of `pool` until it is dropped.
/// `preamble` is written first on every check connection: the PROXY
/// header (LOCAL) that a pool with `send_proxy_protocol` owes its members.
pub(crate) async fn run(
    pool: Weak<Pool>,
    health: HealthConfig,
    preamble: &'static [u8],
    connector: Connector,
) {
    let health = Arc::new(health);
    let connector = Arc::new(connector);
    loop {
        let round = tokio::time::Instant::now();
        let members: Vec<Arc<Member>> = match pool.upgrade() {
            Some(p) => p.members().active.clone(),
            None => return,
        };
        let mut probes = tokio::task::JoinSet::new();
        for m in members {
            let health = health.clone();
            let connector = connector.clone();
            let jitter = health.interval.mul_f64(fastrand::f64() * 0.25);
            probes.spawn(async move {
                tokio::time::sleep(jitter).await;
                let result = probe(&health, m.addr, &m.server, preamble, &connector).await;
                apply(&m, result, &health);
            });
        }
        while probes.join_next().await.is_some() {}
        tokio::time::sleep_until(round + health.interval).await;
    }
}

/// Records one probe's result on `m`, logging a state change.
fn apply(m: &Member, result: CheckResult, health: &HealthConfig) {
    let detail = match (&result.error, result.status) {
        (Some(e), _) => e.clone(),
        (None, Some(s)) => format!("status {s}"),
        (None, None) => "connected".to_string(),
    };
    if let Some((from, to)) = m.record_check(result, health.rise, health.fall) {
        if to == MemberState::Up {
            tracing::info!(pool = %m.pool, member = %m.addr, %from, %to, check = %detail, "upstream member state changed");
        } else {
            tracing::warn!(pool = %m.pool, member = %m.addr, %from, %to, check = %detail, "upstream member state changed");
        }
    }
}

/// One check of `addr`, bounded by the check's `timeout`.
pub(crate) async fn probe(
    health: &HealthConfig,
    addr: SocketAddr,
    host: &str,
    preamble: &[u8],
    connector: &Connector,
) -> CheckResult {
    let at = SystemTime::now();
    let outcome = tokio::time::timeout(
        health.timeout,
        attempt(health, addr, host, preamble, connector),
    )
    .await;
    let (ok, status, error) = match outcome {
        Ok(Ok(None)) => (true, None, None),
        Ok(Ok(Some(s))) if health.expects(s) => (true, Some(s), None),
        Ok(Ok(Some(s))) => (false, Some(s), Some(format!("unexpected status {s}"))),
        Ok(Err(e)) => (false, None, Some(e)),
        Err(_) => (
            false,
            None,
            Some(format!("timed out after {:?}", health.timeout)),
        ),
    };
    CheckResult {
        ok,
        status,
        error,
        at,
    }
}

/// Connects, and for `http` sends the check request: the response status,
/// or `None` for a `tcp` check.
async fn attempt(
    health: &HealthConfig,
    addr: SocketAddr,
    host: &str,
    preamble: &[u8],
    connector: &Connector,
) -> Result<Option<u16>, String> {
    if health.kind == HealthKind::Grpc {
        // Always HTTP/2, whatever the pool's protocol: gRPC needs it.
        let deadline = tokio::time::Instant::now() + health.timeout;
        let stream = connector
            .stream(addr, preamble, deadline)
            .await
            .map_err(|e| e.to_string())?;
        let scheme = if connector.tls.is_some() {
            "https"
        } else {
            "http"
        };
        return grpc_check(health, host, scheme, hyper_util::rt::TokioIo::new(stream)).await;
    }
    if health.kind == HealthKind::Tcp {
        let deadline = tokio::time::Instant::now() + health.timeout;
        connector
            .stream(addr, preamble, deadline)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(None);
    }
    let req = Request::get(health.path.as_str())
        .header(header::USER_AGENT, "sluice-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let status = match connector
        .connect(addr, preamble)
        .await
        .map_err(|e| e.to_string())?
    {
        Sender::H1(conn) => {
            let (mut parts, _) = req.into_parts();
            let headers = &mut parts.headers;
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            if let Ok(v) = header::HeaderValue::from_str(host) {
                headers.insert(header::HOST, v);
            }
            let target = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            let out = super::client::Outgoing {
                method: &parts.method,
                target: &target,
                headers: &parts.headers,
                added: None,
            };
            super::h1::send(conn, &out, crate::body::empty(), false)
                .await
                .map(|resp| resp.status())
                .map_err(|f| format!("request: {}", f.error))?
        }
        Sender::H2(mut send) => {
            // HTTP/2 names the site in `:authority`.
            let mut req = req;
            let uri = Uri::try_from(format!("http://{host}{}", health.path));
            *req.uri_mut() = uri.map_err(|e| format!("request: {e}"))?;
            send.send_request(req)
                .await
                .map(|resp| resp.status())
                .map_err(|e| format!("request: {e}"))?
        }
    };
    Ok(Some(status.as_u16()))
}

/// The `grpc` check on a connected `stream`: `Health/Check` for the
/// configured service over HTTP/2. Passes (`None`) only when the call
/// succeeds and the answer is `SERVING`.
async fn grpc_check<S>(
    health: &HealthConfig,
    host: &str,
    scheme: &str,
    stream: S,
) -> Result<Option<u16>, String>
where
    S: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), stream)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::post(format!("{scheme}://{host}{}", grpc_health::PATH))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, "sluice-health-check")
        .body(Full::new(Bytes::from(grpc_health::request(
            &health.service,
        ))))
        .map_err(|e| format!("request: {e}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", resp.status().as_u16()));
    }
    let (head, body) = resp.into_parts();
    // A trailers-only answer carries grpc-status in its head.
    let collected = Limited::new(body, grpc_health::MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("response: {e}"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        trailers
            .get(name)
            .or_else(|| head.headers.get(name))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    match field("grpc-status").as_deref() {
        Some("0") => {}
        Some(code) => {
            let message = field("grpc-message").unwrap_or_default();
            return Err(format!("grpc-status {code}: {message}"));
        }
        None => return Err("no grpc-status".to_string()),
    }
    match grpc_health::serving_status(&collected.to_bytes()) {
        Ok(grpc_health::SERVING) => Ok(None),
        Ok(other) => Err(format!(
            "serving status {}",
            grpc_health::status_name(other)
        )),
        Err(why) => Err(format!("response: {why}")),
    }
}

/// The two tiny messages of `grpc.health.v1` in protobuf's wire format,
/// by hand: `HealthCheckRequest { string service = 1; }` and
/// `HealthCheckResponse { ServingStatus status = 1; }`, each in gRPC's
/// length-prefixed frame (a compression flag, then a 4-byte length).
mod grpc_health {
    pub(super) const PATH: &str = "/grpc.health.v1.Health/Check";
    pub(super) const SERVING: u64 = 1;
    /// More than any health answer needs; a longer one is an error.
    pub(super) const MAX_ANSWER: usize = 4096;

    /// The framed request naming `service` (field 1, omitted when empty).
    pub(super) fn request(service: &str) -> Vec<u8> {
        let mut message = Vec::new();
        if !service.is_empty() {
            message.push(0x0a); // field 1, length-delimited
            varint(service.len() as u64, &mut message);
            message.extend_from_slice(service.as_bytes());
        }
        let mut frame = vec![0];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        frame
    }

    /// The `status` of the one framed response in `body` (0, UNKNOWN, when
    /// the field is absent, as proto3 omits defaults).
    pub(super) fn serving_status(body: &[u8]) -> Result<u64, &'static str> {
        let [flag, a, b, c, d, rest @ ..] = body else {
            return Err("no message");
        };
        if *flag != 0 {
            return Err("compressed message");
        }
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        let mut msg = rest.get(..len).ok_or("message cut short")?;
        let mut status = 0;
        while !msg.is_empty() {
            let key = read_varint(&mut msg)?;
            match (key >> 3, key & 7) {
                (1, 0) => status = read_varint(&mut msg)?,
                (_, 0) => {
                    read_varint(&mut msg)?;
                }
                (_, 1) => msg = msg.get(8..).ok_or("field cut short")?,
                (_, 2) => {
                    let n = usize::try_from(read_varint(&mut msg)?).map_err(|_| "bad length")?;
                    msg = msg.get(n..).ok_or("field cut short")?;
                }
                (_, 5) => msg = msg.get(4..).ok_or("field cut short")?,
                _ => return Err("unknown wire type"),
            }
        }
        Ok(status)
    }

    pub(super) fn status_name(status: u64) -> &'static str {
        match status {
            0 => "UNKNOWN",
            1 => "SERVING",
            2 => "NOT_SERVING",
            3 => "SERVICE_UNKNOWN",
            _ => "unrecognised",
        }
    }

    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    fn read_varint(buf: &mut &[u8]) -> Result<u64, &'static str> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first().ok_or("varint cut short")?;
            *buf = rest;
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("varint too long")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_request_names_the_service() {
            assert_eq!(request(""), [0, 0, 0, 0, 0]);
            assert_eq!(request("a.B"), [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']);
            let long = "s".repeat(200);
            let framed = request(&long);
            // 200 needs a two-byte varint: 0xc8 0x01.
            assert_eq!(&framed[..8], [0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
        }

        #[test]
        fn the_answer_gives_the_serving_status() {
            assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
            assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Ok(2));
            // proto3 leaves out a default (UNKNOWN); unknown fields skipped.
            assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Ok(0));
            assert_eq!(
                serving_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]),
                Ok(1)
            );
        }

        #[test]
        fn broken_answers_are_errors() {
            assert!(serving_status(&[]).is_err());
            assert!(serving_status(&[1, 0, 0, 0, 2, 0x08, 1]).is_err());
            assert!(serving_status(&[0, 0, 0, 0, 9, 0x08, 1]).is_err());
            assert!(serving_status(&[0, 0, 0, 0, 2, 0x08, 0x80]).is_err());
            assert!(serving_status(&[0, 0, 0, 0, 2, 0x0f, 1]).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn plain() -> Connector {
        Connector {
            connect_timeout: Duration::from_secs(2),
            tls: None,
            protocol: crate::config::UpstreamProtocol::Auto,
        }
    }

    fn config(kind: HealthKind, timeout_ms: u64) -> HealthConfig {
        HealthConfig {
            kind,
            path: "/healthz".to_string(),
            service: String::new(),
            expect_status: vec![(200, 299), (302, 302)],
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(timeout_ms),
            rise: 1,
            fall: 1,
        }
    }

    /// Answers every connection with `status` and records the request head.
    async fn origin(status: u16) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = vec![0; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn http_check_sends_path_and_host_and_matches_ranges() {
        for (status, ok) in [
            (200, true),
            (204, true),
            (302, true),
            (301, false),
            (500, false),
        ] {
            let (addr, mut seen) = origin(status).await;
            let r = probe(
                &config(HealthKind::Http, 2000),
                addr,
                "app.internal:8080",
                b"",
                &plain(),
            )
            .await;
            assert_eq!(r.ok, ok, "{status}: {r:?}");
            assert_eq!(r.status, Some(status));
            let head = seen.recv().await.unwrap();
            assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("host: app.internal:8080\r\n"),
                "{head}"
            );
        }
    }

    #[tokio::test]
    async fn tcp_check_passes_on_accept_and_fails_on_refusal() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = probe(
            &config(HealthKind::Tcp, 2000),
            l.local_addr().unwrap(),
            "x",
            b"",
            &plain(),
        )
        .await;
        assert!(r.ok, "{r:?}");
        let dead = l.local_addr().unwrap();
        drop(l);
        let r = probe(&config(HealthKind::Tcp, 2000), dead, "x", b"", &plain()).await;
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("connect"));
    }

    #[tokio::test]
    async fn a_silent_member_fails_after_the_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Accepts and never answers.
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let r = probe(&config(HealthKind::Http, 100), addr, "x", b"", &plain()).await;
        assert!(!r.ok);
        assert!(
            r.error.as_deref().unwrap_or("").contains("timed out"),
            "{r:?}"
        );
    }
}
