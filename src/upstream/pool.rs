//! An upstream pool: its members, its balancing policy, and one pooled
//! keep-alive HTTP/1.1 client shared by every request to the pool.
//!
//! [`Pool::send`] makes one attempt against one member and classifies the
//! failure so the proxy can decide between retrying, 502 and 504.

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::oneshot;

use super::balance::{balancer_for, Balancer, Candidates, PickContext};
use super::connect::{ClosableConnector, CloseHandle};
use super::member::Member;
use crate::body::ProxyBody;
use crate::config::{Policy, PoolConfig};

/// Why one attempt against a member failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect was refused or failed: nothing reached the member.
    #[error("connect to {addr} failed: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// TCP connect did not finish within `connect_timeout`.
    #[error("connect to {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    /// The member took longer than `response_timeout` to send a response head.
    #[error("{addr} sent no response head within {after:?}")]
    ResponseTimeout { addr: SocketAddr, after: Duration },
    /// The connection broke, or the member answered with something that is
    /// not HTTP, before a response head arrived.
    #[error("{addr} failed before responding: {reason}")]
    BeforeResponse { addr: SocketAddr, reason: String },
    /// The member's response head parsed, but its framing is ambiguous or
    /// not relayable (both Content-Length and Transfer-Encoding, a coding
    /// other than chunked): the connection was closed, nothing relayed.
    #[error("{addr} sent a response with invalid framing: {reason}")]
    BadResponse { addr: SocketAddr, reason: String },
}

impl UpstreamError {
    /// Whether the member may have seen (part of) the request.
    pub fn request_may_have_reached_member(&self) -> bool {
        !matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. }
        )
    }

    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout { .. } | UpstreamError::ResponseTimeout { .. }
        )
    }
}

pub struct Pool {
    pub name: String,
    pub policy: Policy,
    pub members: Vec<Arc<Member>>,
    balancer: Box<dyn Balancer>,
    client: Client<ClosableConnector, ProxyBody>,
    response_timeout: Duration,
    /// The config this pool was built from, to keep it across reloads when
    /// unchanged (idle connections and balancer position survive).
    pub config: PoolConfig,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("members", &self.members)
            .finish()
    }
}

impl Pool {
    pub fn new(config: &PoolConfig) -> Pool {
        let members: Vec<Arc<Member>> = config
            .servers
            .iter()
            .map(|s| Arc::new(Member::new(s.addr, s.weight)))
            .collect();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_server)
            .set_host(false)
            .build(ClosableConnector::new(connector));
        Pool {
            name: config.name.clone(),
            policy: config.policy,
            balancer: balancer_for(config.policy, &members),
            members,
            client,
            response_timeout: config.response_timeout,
            config: config.clone(),
        }
    }

    /// Members in the order this request should try them.
    pub fn candidates(&self, ctx: &PickContext) -> Candidates {
        self.balancer.candidates(&self.members, ctx)
    }

    /// Sends `req` (whose URI must already be absolute and point at the
    /// member) and waits for the response head. The response timeout starts
    /// once `sent` fires, i.e. when the whole request body has gone out.
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: http::Request<ProxyBody>,
        sent: oneshot::Receiver<()>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let response = self.client.request(req);
        let deadline = async {
            // If the body is dropped unsent the request fails on its own.
            let _ = sent.await;
            tokio::time::sleep(self.response_timeout).await;
        };
        tokio::select! {
            r = response => r.map_err(|e| classify(addr, e)).and_then(|resp| checked(addr, resp)),
            () = deadline => Err(UpstreamError::ResponseTimeout { addr, after: self.response_timeout }),
        }
    }
}

/// Refuses a response head with ambiguous framing, closing its connection
/// so that neither this message nor anything after it is read as a response.
fn checked(
    addr: SocketAddr,
    resp: http::Response<Incoming>,
) -> Result<http::Response<Incoming>, UpstreamError> {
    match crate::framing::check_response_head(resp.headers()) {
        Ok(()) => Ok(resp),
        Err(violation) => {
            if let Some(handle) = resp.extensions().get::<CloseHandle>() {
                handle.close();
            }
            Err(UpstreamError::BadResponse {
                addr,
                reason: violation.to_string(),
            })
        }
    }
}

fn classify(addr: SocketAddr, e: hyper_util::client::legacy::Error) -> UpstreamError {
    let mut reason = e.to_string();
    let mut source = e.source();
    let mut timed_out = false;
    while let Some(s) = source {
        reason = s.to_string();
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    if e.is_connect() {
        if timed_out {
            UpstreamError::ConnectTimeout { addr }
        } else {
            UpstreamError::Connect { addr, reason }
        }
    } else {
        UpstreamError::BeforeResponse { addr, reason }
    }
}
