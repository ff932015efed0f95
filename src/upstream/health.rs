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
//! `protocol = "h2c"` or a member that picks `h2` by ALPN).

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::Empty;

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
    let resp = match connector
        .connect(addr, preamble)
        .await
        .map_err(|e| e.to_string())?
    {
        Sender::H1 { mut send, .. } => {
            let mut req = req;
            let headers = req.headers_mut();
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            if let Ok(v) = header::HeaderValue::from_str(host) {
                headers.insert(header::HOST, v);
            }
            send.send_request(req).await
        }
        Sender::H2(mut send) => {
            // HTTP/2 names the site in `:authority`.
            let mut req = req;
            let uri = Uri::try_from(format!("http://{host}{}", health.path));
            *req.uri_mut() = uri.map_err(|e| format!("request: {e}"))?;
            send.send_request(req).await
        }
    };
    let resp = resp.map_err(|e| format!("request: {e}"))?;
    Ok(Some(resp.status().as_u16()))
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
