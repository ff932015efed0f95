//! An upstream pool: its members, its balancing policy, and one pooled
//! keep-alive HTTP/1.1 client shared by every request to the pool.
//!
//! [`Pool::plan`] ranks the usable members for one request (the balancer's
//! order without members that are down, ejected or draining),
//! [`Pool::acquire`] takes a connection slot on the next one (circuit
//! breaking), [`Pool::send`] makes one attempt against one member and
//! classifies the failure so the proxy can decide between retrying, 502 and
//! 504, and [`Pool::report`] feeds the outcome to passive ejection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::Either;
use smallvec::SmallVec;
use tokio::sync::Notify;

use tokio::sync::oneshot;

use super::balance::{bounded_balancer, Balancer, PickContext};
use super::client::{Client, Exchanged, Outgoing};
use super::connect::Connector;
use super::member::{now_ms, InFlight, Member, MemberState};
use super::outlier::{self, Outcome};
use super::retry::RetryBudget;
use super::tls::UpstreamTls;
use crate::body::ProxyBody;
use crate::config::{Policy, PoolConfig, ServerEntry};

/// Why one attempt against a member failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
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
    /// The member refused the request without processing it (an HTTP/2
    /// stream above a graceful `GOAWAY`'s last stream id, or reset with
    /// `REFUSED_STREAM`): safe to send again.
    #[error("{addr} refused the request unprocessed: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    /// The request cannot be sent in the member's protocol (an `Upgrade`
    /// to an HTTP/2 member): nothing was sent.
    #[error("{addr}: {reason}")]
    Unsupported {
        addr: SocketAddr,
        reason: &'static str,
    },
    /// The member's response head parsed, but its framing is ambiguous or
    /// not relayable (both Content-Length and Transfer-Encoding, a coding
    /// other than chunked): the connection was closed, nothing relayed.
    #[error("{addr} sent a response with invalid framing: {reason}")]
    BadResponse { addr: SocketAddr, reason: String },
}

impl UpstreamError {
    /// Whether the member may have seen (part of) the request.
    pub(crate) fn request_may_have_reached_member(&self) -> bool {
        !matches!(
            self,
            UpstreamError::Connect { .. }
                | UpstreamError::ConnectTimeout { .. }
                | UpstreamError::Refused { .. }
                | UpstreamError::Unsupported { .. }
        )
    }

    pub(crate) fn is_timeout(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout { .. } | UpstreamError::ResponseTimeout { .. }
        )
    }
}

/// A pool's members at one moment, with the balancer built for them. DNS
/// re-resolution swaps in a new set; a request keeps the one it loaded.
#[derive(Debug)]
pub(crate) struct MemberSet {
    /// Members in rotation (whatever their health), in config order.
    pub active: Vec<Arc<Member>>,
    /// Members gone from DNS whose in-flight requests are finishing.
    pub draining: Vec<Arc<Member>>,
    balancer: Box<dyn Balancer>,
}

impl MemberSet {
    pub(crate) fn new(
        policy: Policy,
        balance_factor: f64,
        active: Vec<Arc<Member>>,
        draining: Vec<Arc<Member>>,
    ) -> MemberSet {
        MemberSet {
            balancer: bounded_balancer(policy, balance_factor, &active),
            active,
            draining,
        }
    }
}

/// The members one request may use, most preferred first.
pub(crate) type Plan = SmallVec<[Arc<Member>; 8]>;

/// No member of the pool can take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unavailable {
    /// Seconds until a member may be back (for `Retry-After`).
    pub retry_after: u64,
}

/// The result of looking for a member with a free connection slot.
#[derive(Debug)]
pub(crate) enum Acquired {
    /// The member, with its connection slot.
    Member(Arc<Member>, InFlight),
    /// Every remaining member of the plan was tried.
    Exhausted,
    /// Members are at `max_connections` and `max_pending` requests already
    /// wait (or this one waited `connect_timeout` in vain).
    Overloaded,
}

pub struct Pool {
    pub name: String,
    pub policy: Policy,
    members: ArcSwap<MemberSet>,
    /// The pool's connections to its members, per worker thread.
    client: Arc<Client>,
    response_timeout: Duration,
    /// The config this pool was built from, to keep it across reloads when
    /// unchanged (idle connections and balancer position survive).
    pub config: PoolConfig,
    budget: RetryBudget,
    retries_total: AtomicU64,
    pending: AtomicUsize,
    slot_freed: Arc<Notify>,
    panicking: AtomicBool,
    /// `[pool.NAME.tls]`, loaded: shared by every connection to the pool.
    tls: Option<Arc<UpstreamTls>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("members", &self.members.load().active)
            .finish()
    }
}

impl Pool {
    /// A pool without upstream TLS (for benches and tests); see
    /// [`Pool::with_tls`].
    pub fn new(config: &PoolConfig) -> Pool {
        Pool::with_tls(config, None)
    }

    /// A pool with its members resolved (names with the blocking system
    /// resolver) and no background tasks; see [`Pool::start`]. `tls` is
    /// `config.tls` loaded ([`UpstreamTls::load`]).
    pub(crate) fn with_tls(config: &PoolConfig, tls: Option<Arc<UpstreamTls>>) -> Pool {
        let slot_freed = Arc::new(Notify::new());
        let name: Arc<str> = Arc::from(config.name.as_str());
        let mut active = Vec::new();
        for server in &config.servers {
            let addrs = super::dns::lookup_blocking(&config.resolver, &server.addr).unwrap_or_else(|e| {
                tracing::warn!(pool = %config.name, server = %server.addr, error = %e, "cannot resolve server");
                Vec::new()
            });
            for addr in addrs {
                if active.iter().all(|m: &Arc<Member>| m.addr != addr) {
                    active.push(Arc::new(new_member(
                        config,
                        &name,
                        &slot_freed,
                        &Wanted::of(server, addr),
                        tls.as_deref(),
                    )));
                }
            }
        }
        let connector = Connector {
            connect_timeout: config.connect_timeout,
            tls: tls.clone(),
            protocol: config.protocol,
        };
        let client = Arc::new(Client::new(
            connector,
            config.idle_timeout,
            config.max_idle_per_server,
        ));
        Pool {
            name: config.name.clone(),
            policy: config.policy,
            members: ArcSwap::from_pointee(MemberSet::new(
                config.policy,
                config.balance_factor,
                active,
                Vec::new(),
            )),
            client,
            response_timeout: config.response_timeout,
            config: config.clone(),
            budget: RetryBudget::new(config.retry_budget, config.min_retries_per_second),
            retries_total: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            slot_freed,
            panicking: AtomicBool::new(false),
            tls,
        }
    }

    /// [`Pool::new`], plus the pool's background tasks when called inside a
    /// Tokio runtime: active health checks (with `[pool.NAME.health]`) and
    /// DNS re-resolution (when a server is a name). The tasks hold only a
    /// weak reference and end once the pool is dropped (a reload removed or
    /// replaced it and its last request finished).
    pub(crate) fn start(config: &PoolConfig, tls: Option<Arc<UpstreamTls>>) -> Arc<Pool> {
        let pool = Arc::new(Pool::with_tls(config, tls.clone()));
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(super::client::sweep(
                Arc::downgrade(&pool.client),
                config.idle_timeout / 4,
            ));
            if let Some(health) = &config.health {
                let preamble = config
                    .send_proxy_protocol
                    .version()
                    .map_or(&b""[..], crate::proxy_protocol::local);
                let connector = Connector {
                    connect_timeout: health.timeout,
                    tls,
                    protocol: config.protocol,
                };
                tokio::spawn(super::health::run(
                    Arc::downgrade(&pool),
                    health.clone(),
                    preamble,
                    connector,
                ));
            }
            if config.servers.iter().any(|s| s.addr.is_name()) {
                tokio::spawn(super::dns::run(Arc::downgrade(&pool)));
            }
        }
        pool
    }

    /// The current members (for status pages and metrics).
    pub(crate) fn members(&self) -> Arc<MemberSet> {
        self.members.load_full()
    }

    /// Swaps in a new member set, with a balancer built for it.
    pub(crate) fn set_members(&self, active: Vec<Arc<Member>>, draining: Vec<Arc<Member>>) {
        self.members.store(Arc::new(MemberSet::new(
            self.policy,
            self.config.balance_factor,
            active,
            draining,
        )));
    }

    /// A member for a resolved address of `server`.
    pub(crate) fn member_for(&self, wanted: &Wanted) -> Arc<Member> {
        let name: Arc<str> = Arc::from(self.name.as_str());
        Arc::new(new_member(
            &self.config,
            &name,
            &self.slot_freed,
            wanted,
            self.tls.as_deref(),
        ))
    }

    /// The pool's TLS client, with its error counts.
    pub(crate) fn tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_deref()
    }

    /// Retries made for requests to this pool.
    pub(crate) fn retries_total(&self) -> u64 {
        self.retries_total.load(Ordering::Relaxed)
    }

    /// The members this request may use, most preferred first: the
    /// balancer's ranking without members that are down, ejected or
    /// draining. Below `panic_threshold` healthy, every member is used.
    pub(crate) fn plan(&self, ctx: &PickContext) -> Result<Plan, Unavailable> {
        let set = self.members.load();
        let now = now_ms();
        self.budget.request(now);
        let ranked = set.balancer.candidates(&set.active, ctx);
        let mut plan = Plan::new();
        let mut all = Plan::new();
        for &i in &ranked {
            if let Some(m) = set.active.get(i) {
                if m.state_at(now) == MemberState::Up {
                    plan.push(m.clone());
                }
                all.push(m.clone());
            }
        }
        let threshold = self.config.panic_threshold;
        let panic = threshold > 0.0 && (plan.len() as f64) < threshold * all.len() as f64;
        if self.panicking.swap(panic, Ordering::Relaxed) != panic {
            if panic {
                tracing::warn!(pool = %self.name, healthy = plan.len(), total = all.len(), "pool below panic_threshold: balancing over all members");
            } else {
                tracing::info!(pool = %self.name, healthy = plan.len(), total = all.len(), "pool back above panic_threshold");
            }
        }
        if panic {
            return Ok(all);
        }
        if plan.is_empty() {
            return Err(Unavailable {
                retry_after: self.retry_after(&set.active, now),
            });
        }
        Ok(plan)
    }

    /// Seconds until the first member may be usable again: the end of the
    /// shortest ejection, or `rise` check intervals for a member that is down.
    fn retry_after(&self, members: &[Arc<Member>], now: u64) -> u64 {
        let rise = self
            .config
            .health
            .as_ref()
            .map(|h| h.interval.as_millis() as u64 * u64::from(h.rise));
        members
            .iter()
            .filter_map(|m| match m.state_at(now) {
                MemberState::Ejected => Some(m.ejected_for(now)),
                MemberState::Down => rise,
                _ => None,
            })
            .min()
            .map_or(1, |ms| ms.div_ceil(1000).max(1))
    }

    /// Takes a connection slot on the first member of `plan[*next..]` below
    /// its `max_connections`, moving `*next` past it. On the first attempt
    /// (`may_wait`), when every member is full, the request waits as one of
    /// at most `max_pending` for a slot to free up, up to `connect_timeout`.
    ///
    /// Nearly always a member has room: that is answered at once, with no
    /// waiter registered (a lock and a list entry) nor a deadline read from
    /// the clock, and the waiting is boxed, out of every attempt's future.
    pub(crate) fn acquire<'a>(
        &'a self,
        plan: &'a Plan,
        next: &'a mut usize,
        may_wait: bool,
    ) -> Either<std::future::Ready<Acquired>, Pin<Box<impl Future<Output = Acquired> + 'a>>> {
        let start = *next;
        if let Some(taken) = take_slot(plan, next, start) {
            return Either::Left(std::future::ready(taken));
        }
        if !may_wait || start >= plan.len() {
            return Either::Left(std::future::ready(Acquired::Exhausted));
        }
        Either::Right(Box::pin(self.wait_for_slot(plan, next, start)))
    }

    /// [`acquire`](Self::acquire) when every member of `plan[start..]` is
    /// full: waits as one of at most `max_pending` for a slot to free up,
    /// up to `connect_timeout`.
    async fn wait_for_slot(&self, plan: &Plan, next: &mut usize, start: usize) -> Acquired {
        let Some(_pending) = Pending::enter(&self.pending, self.config.max_pending) else {
            return Acquired::Overloaded;
        };
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        loop {
            let notified = self.slot_freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Looked at again once registered: a slot freed before that
            // would not have woken this request.
            if let Some(taken) = take_slot(plan, next, start) {
                return taken;
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => return Acquired::Overloaded,
            }
        }
    }

    /// Whether a failed attempt may be followed by another on the next
    /// member: takes one retry from the budget and counts it.
    pub(crate) fn take_retry(&self) -> bool {
        let ok = self.budget.try_retry(now_ms());
        if ok {
            self.retries_total.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Reports what one attempt against `member` came to, for passive
    /// ejection.
    pub(crate) fn report(&self, member: &Member, outcome: Outcome) {
        let set = self.members.load();
        if let Some(time) =
            outlier::record(&self.config.outlier, &set.active, member, outcome, now_ms())
        {
            tracing::warn!(
                pool = %self.name,
                member = %member.addr,
                from = %MemberState::Up,
                to = %MemberState::Ejected,
                eject_for = ?time,
                "upstream member state changed"
            );
        }
    }

    /// Sends the request `out` with `body` to the member at `addr` and
    /// waits for the response head. The response timeout starts
    /// once `sent` fires, i.e. when the whole request body has gone out (at
    /// once when there is no `sent`: a request without a body).
    ///
    /// With `send_proxy_protocol`, the request goes over a connection of
    /// its own that starts with a PROXY header naming `proxied` (client,
    /// and the address it connected to): a header is per connection, and a
    /// connection must never carry one client's requests under another's
    /// name, so such a pool keeps no idle connections.
    pub(crate) fn send<'a>(
        &'a self,
        addr: SocketAddr,
        out: Outgoing<'a>,
        body: ProxyBody,
        sent: Option<oneshot::Receiver<()>>,
        proxied: Option<(SocketAddr, SocketAddr)>,
    ) -> Timed<impl Future<Output = Exchanged> + 'a, impl Future<Output = ()>> {
        let after = self.response_timeout;
        // Made here, not in an async fn or block: this future is part of
        // every attempt's, copied whole when the request's is boxed, and
        // an async body would keep its arguments beside the two futures
        // they are moved into.
        Timed {
            exchange: self.exchange(addr, out, body, proxied),
            deadline: async move {
                // If the body is dropped unsent the request fails on its own.
                if let Some(sent) = sent {
                    let _ = sent.await;
                }
                tokio::time::sleep(after).await;
            },
            addr,
            after,
        }
    }

    /// One request and its response head, on the worker's pooled
    /// connections or, with `send_proxy_protocol`, on a connection of its
    /// own. The PROXY header is made before the future, which is the
    /// client's own when there is none.
    fn exchange<'a>(
        &'a self,
        addr: SocketAddr,
        out: Outgoing<'a>,
        body: ProxyBody,
        proxied: Option<(SocketAddr, SocketAddr)>,
    ) -> impl Future<Output = Exchanged> + 'a {
        let preamble = self
            .config
            .send_proxy_protocol
            .version()
            .map(|version| match proxied {
                Some((source, destination)) => {
                    crate::proxy_protocol::encode(version, source, destination)
                }
                None => crate::proxy_protocol::local(version).to_vec(),
            });
        match preamble {
            None => Either::Left(self.client.send(addr, out, body)),
            // Boxed: pools without PROXY headers should not carry this
            // path's state in every request's future.
            Some(header) => Either::Right(Box::pin(async move {
                self.client.send_once(addr, &header, out, body).await
            })),
        }
    }
}

pin_project_lite::pin_project! {
    /// An exchange raced against its response timeout ([`Pool::send`]).
    pub(crate) struct Timed<E, D> {
        #[pin]
        exchange: E,
        #[pin]
        deadline: D,
        addr: SocketAddr,
        after: Duration,
    }
}

impl<E, D> Future for Timed<E, D>
where
    E: Future<Output = Exchanged>,
    D: Future<Output = ()>,
{
    type Output = Exchanged;

    /// The exchange first: an answer that is in is taken, and the timer
    /// is not polled again once it has come.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Exchanged> {
        let this = self.project();
        if let Poll::Ready(answer) = this.exchange.poll(cx) {
            return Poll::Ready(answer);
        }
        match this.deadline.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(UpstreamError::ResponseTimeout {
                addr: *this.addr,
                after: *this.after,
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A resolved address of one configured server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub addr: SocketAddr,
    pub weight: u32,
    pub max_connections: usize,
    /// The server's address as configured (a name, or the IP itself).
    pub server: Arc<str>,
}

impl Wanted {
    pub(crate) fn of(server: &ServerEntry, addr: SocketAddr) -> Wanted {
        Wanted {
            addr,
            weight: server.weight,
            max_connections: server.max_connections,
            server: Arc::from(server.addr.to_string()),
        }
    }
}

fn new_member(
    config: &PoolConfig,
    pool: &Arc<str>,
    freed: &Arc<Notify>,
    w: &Wanted,
    tls: Option<&UpstreamTls>,
) -> Member {
    if let Some(tls) = tls {
        tls.register(w.addr, &w.server);
    }
    Member::new(w.addr, w.weight)
        .with_max_connections(w.max_connections, freed.clone())
        .with_slow_start(config.slow_start)
        .with_origin(pool.clone(), w.server.clone())
}

/// One request counted as waiting for a connection slot.
struct Pending<'a>(&'a AtomicUsize);

impl<'a> Pending<'a> {
    fn enter(count: &'a AtomicUsize, max: usize) -> Option<Pending<'a>> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Pending(count))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection slot on the first member of `plan[start..]` below its
/// `max_connections`, with `*next` moved past it (past the end when none).
fn take_slot(plan: &Plan, next: &mut usize, start: usize) -> Option<Acquired> {
    for (pos, m) in plan.iter().enumerate().skip(start) {
        if let Some(guard) = m.try_begin() {
            *next = pos + 1;
            return Some(Acquired::Member(m.clone(), guard));
        }
    }
    *next = plan.len();
    None
}
