//! Load-balancing policies: `round_robin`, `weighted` (nginx's smooth
//! weighted round-robin), `least_conn` and `ip_hash` (weighted rendezvous
//! hashing), behind the [`Balancer`] trait.
//!
//! A balancer does not pick one member; it ranks all of them. The caller
//! walks the ranking and skips members that are down or have already failed
//! this request, so health checks and retries need nothing inside a policy.
//!
//! Balancer state is shared by every thread of the daemon and lives in
//! atomics; the only lock is the fallback for `weighted` pools whose
//! schedule is too long to precompute. Ranking allocates nothing beyond the
//! returned [`Candidates`] (inline up to eight members).

use std::cmp::Ordering as CmpOrdering;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use super::member::Member;
use crate::config::Policy;

/// What a policy may look at when ranking members for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickContext {
    pub client_ip: IpAddr,
}

/// Member indices, most preferred first.
pub type Candidates = SmallVec<[usize; 8]>;

pub trait Balancer: Send + Sync + fmt::Debug {
    /// Every member index exactly once, most preferred first. Advances the
    /// policy's state by one pick.
    fn candidates(&self, members: &[Arc<Member>], ctx: &PickContext) -> Candidates;
}

/// The balancer for `policy` over `members`. The balancer must be used with
/// the same member list (same order) it was built for; `weighted` precomputes
/// its schedule from the weights here.
pub fn balancer_for(policy: Policy, members: &[Arc<Member>]) -> Box<dyn Balancer> {
    match policy {
        Policy::RoundRobin => Box::new(RoundRobin::default()),
        Policy::Weighted => Box::new(Weighted::new(members)),
        Policy::LeastConn => Box::new(LeastConn::default()),
        Policy::IpHash => Box::new(IpHash),
    }
}

/// `0..n` starting at `start % n` and wrapping around.
fn rotated(n: usize, start: usize) -> Candidates {
    let mut out = Candidates::with_capacity(n);
    if n > 0 {
        let start = start % n;
        out.extend(start..n);
        out.extend(0..start);
    }
    out
}

// ---------------------------------------------------------------------------
// round_robin

/// Call k ranks member k % n first, then the rest in order. Ignores weights.
#[derive(Debug, Default)]
struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn candidates(&self, members: &[Arc<Member>], _ctx: &PickContext) -> Candidates {
        rotated(members.len(), self.next.fetch_add(1, Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------
// weighted

/// Longest schedule `weighted` precomputes (one entry per unit of total
/// weight); longer ones run the live algorithm under a mutex.
const SCHEDULE_LIMIT: u64 = 65_536;

/// Smooth weighted round-robin as nginx implements it: every pick adds each
/// member's weight to its running score, the highest score wins (the first
/// such member on a tie) and pays back the total weight. Weights 5,1,1 give
/// a,a,b,a,c,a,a rather than a burst of five a's.
///
/// The scores return to zero after exactly `sum(weights)` picks, so the
/// sequence is periodic; one period is precomputed and indexed by an atomic
/// counter. After the first candidate the others follow by descending weight
/// (ties by index).
struct Weighted {
    /// Member indices by descending weight, ties by index.
    by_weight: Box<[usize]>,
    mode: Schedule,
}

enum Schedule {
    /// One full period of picks.
    Table { picks: Box<[u32]>, next: AtomicUsize },
    /// The live algorithm, for periods longer than `SCHEDULE_LIMIT`.
    Live(Mutex<Swrr>),
}

/// The live state of smooth weighted round-robin.
#[derive(Debug, Clone)]
struct Swrr {
    weights: Vec<i64>,
    current: Vec<i64>,
    total: i64,
}

impl Swrr {
    fn new(weights: &[u32]) -> Swrr {
        let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w.max(1))).collect();
        Swrr {
            total: weights.iter().sum(),
            current: vec![0; weights.len()],
            weights,
        }
    }

    /// The next pick; `None` only for an empty pool.
    fn next(&mut self) -> Option<usize> {
        let mut best: Option<(usize, i64)> = None;
        for (i, (cur, &w)) in self.current.iter_mut().zip(&self.weights).enumerate() {
            *cur += w;
            if best.map_or(true, |(_, top)| *cur > top) {
                best = Some((i, *cur));
            }
        }
        let (b, _) = best?;
        self.current[b] -= self.total;
        Some(b)
    }
}

impl Weighted {
    fn new(members: &[Arc<Member>]) -> Weighted {
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        Weighted::with_limit(&weights, SCHEDULE_LIMIT)
    }

    fn with_limit(weights: &[u32], limit: u64) -> Weighted {
        let mut by_weight: Vec<usize> = (0..weights.len()).collect();
        by_weight.sort_by_key(|&i| (std::cmp::Reverse(weights[i].max(1)), i));
        let period: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
        let mut swrr = Swrr::new(weights);
        let fits = period <= limit && u32::try_from(weights.len()).is_ok();
        let mode = if fits {
            let picks = (0..period)
                .map_while(|_| swrr.next())
                .map(|i| i as u32)
                .collect();
            Schedule::Table {
                picks,
                next: AtomicUsize::new(0),
            }
        } else {
            Schedule::Live(Mutex::new(swrr))
        };
        Weighted {
            by_weight: by_weight.into(),
            mode,
        }
    }

    fn first(&self) -> Option<usize> {
        match &self.mode {
            Schedule::Table { picks, next } => {
                if picks.is_empty() {
                    return None;
                }
                let k = next.fetch_add(1, Ordering::Relaxed) % picks.len();
                picks.get(k).map(|&i| i as usize)
            }
            Schedule::Live(state) => {
                let mut state = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                state.next()
            }
        }
    }
}

impl fmt::Debug for Weighted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Weighted");
        d.field("by_weight", &self.by_weight);
        match &self.mode {
            Schedule::Table { picks, .. } => d.field("period", &picks.len()),
            Schedule::Live(_) => d.field("period", &"live"),
        };
        d.finish()
    }
}

impl Balancer for Weighted {
    fn candidates(&self, members: &[Arc<Member>], _ctx: &PickContext) -> Candidates {
        let n = members.len();
        let Some(first) = self.first() else {
            return Candidates::new();
        };
        if n != self.by_weight.len() {
            // Used with a member list it was not built for: still return every
            // index once, rotating so the load spreads.
            return rotated(n, first);
        }
        let mut out = Candidates::with_capacity(n);
        out.push(first);
        out.extend(self.by_weight.iter().copied().filter(|&i| i != first));
        out
    }
}

// ---------------------------------------------------------------------------
// least_conn

/// Fewest requests in flight relative to weight (`in_flight / weight`,
/// compared by cross-multiplying). Equal loads are ranked from a start
/// offset that rotates every call, so idle equal members alternate.
#[derive(Debug, Default)]
struct LeastConn {
    next: AtomicUsize,
}

impl Balancer for LeastConn {
    fn candidates(&self, members: &[Arc<Member>], _ctx: &PickContext) -> Candidates {
        let n = members.len();
        if n == 0 {
            return Candidates::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        // Read each count once: the counts move while we sort, and the sort
        // needs a consistent order. The position in the rotated order breaks
        // ties, which makes the unstable (non-allocating) sort stable.
        let mut ranked: SmallVec<[Load; 8]> = (0..n)
            .map(|pos| {
                let i = (start + pos) % n;
                let m = &members[i];
                Load {
                    in_flight: m.in_flight() as u64,
                    weight: u64::from(m.weight.max(1)),
                    pos,
                    index: i,
                }
            })
            .collect();
        ranked.sort_unstable_by(Load::by_load);
        ranked.iter().map(|l| l.index).collect()
    }
}

/// One member's load as `least_conn` ranks it.
#[derive(Debug, Clone, Copy)]
struct Load {
    in_flight: u64,
    weight: u64,
    /// Position in this call's rotated order.
    pos: usize,
    index: usize,
}

impl Load {
    /// Smaller `in_flight / weight` first, then earlier rotated position.
    fn by_load(a: &Load, b: &Load) -> CmpOrdering {
        let lhs = u128::from(a.in_flight) * u128::from(b.weight);
        let rhs = u128::from(b.in_flight) * u128::from(a.weight);
        lhs.cmp(&rhs).then(a.pos.cmp(&b.pos))
    }
}

// ---------------------------------------------------------------------------
// ip_hash

/// Weighted rendezvous (highest-random-weight) hashing on the client IP.
///
/// Each member scores `-weight / ln(u)`, where `u` in (0, 1) comes from a
/// fixed hash of the client IP and the member's address; members are ranked
/// by score, highest first. A client keeps its member for as long as that
/// member is in the pool, and removing one member moves only the clients
/// that were on it. The hash is fixed (not `RandomState`), so every process
/// and restart maps a client the same way, and an IPv4 client hashes the
/// same as its IPv4-mapped IPv6 form.
#[derive(Debug, Default)]
struct IpHash;

const CLIENT_SEED: u64 = 0x243f_6a88_85a3_08d3;
const MEMBER_SEED: u64 = 0x1319_8a2e_0370_7344;

/// The splitmix64 finalizer: a bijective 64-bit mix with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The address as 128 bits, IPv4 in its IPv4-mapped IPv6 form.
fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn hash_ip(ip: IpAddr, seed: u64) -> u64 {
    let bits = ip_bits(ip);
    mix64(mix64((bits >> 64) as u64 ^ seed) ^ bits as u64)
}

fn member_key(m: &Member) -> u64 {
    mix64(hash_ip(m.addr.ip(), MEMBER_SEED) ^ u64::from(m.addr.port()))
}

/// 52 uniform bits for one (client, member) pair.
fn pair_bits(client: u64, member: u64) -> u64 {
    mix64(mix64(client ^ member).wrapping_add(member)) >> 12
}

/// `-weight / ln(u)` with `u = (bits + 1/2) / 2^52`, strictly inside (0, 1),
/// so the logarithm is finite and negative and the score finite and positive.
fn hrw_score(bits: u64, weight: u32) -> f64 {
    let u = (bits as f64 + 0.5) / (1u64 << 52) as f64;
    -f64::from(weight.max(1)) / u.ln()
}

impl Balancer for IpHash {
    fn candidates(&self, members: &[Arc<Member>], ctx: &PickContext) -> Candidates {
        let client = hash_ip(ctx.client_ip, CLIENT_SEED);
        let equal_weights = members.windows(2).all(|w| w[0].weight == w[1].weight);
        if equal_weights {
            // The score grows with `u` when weights are equal, so the raw
            // bits rank the same way without the logarithm.
            let mut ranked: SmallVec<[(u64, usize); 8]> = members
                .iter()
                .enumerate()
                .map(|(i, m)| (pair_bits(client, member_key(m)), i))
                .collect();
            ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            ranked.iter().map(|r| r.1).collect()
        } else {
            let mut ranked: SmallVec<[(f64, usize); 8]> = members
                .iter()
                .enumerate()
                .map(|(i, m)| (hrw_score(pair_bits(client, member_key(m)), m.weight), i))
                .collect();
            ranked.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            ranked.iter().map(|r| r.1).collect()
        }
    }
}
