//! Load-balancing policies: `round_robin`, `weighted` (nginx's smooth
//! weighted round-robin), `least_conn`, `ip_hash` (weighted rendezvous
//! hashing), `hash` (rendezvous hashing of a request key with bounded
//! loads) and `sticky_cookie` (the member a cookie names, else `weighted`),
//! behind the [`Balancer`] trait.
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

use super::member::{now_ms, Member};
use crate::config::Policy;

/// What a policy may look at when ranking members for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickContext {
    pub client_ip: IpAddr,
    /// `hash`: the hash of the request's key ([`key_hash`]).
    pub key: u64,
    /// `sticky_cookie`: the member token the request's cookie carries.
    pub sticky: Option<u64>,
}

impl PickContext {
    /// A request from `client_ip`, with no key and no cookie.
    pub fn client(client_ip: IpAddr) -> PickContext {
        PickContext {
            client_ip,
            key: 0,
            sticky: None,
        }
    }
}

/// `balance_factor` when none is configured.
pub(crate) const DEFAULT_BALANCE_FACTOR: f64 = 1.25;

/// Member indices, most preferred first.
pub(crate) type Candidates = SmallVec<[usize; 8]>;

pub trait Balancer: Send + Sync + fmt::Debug {
    /// Every member index exactly once, most preferred first. Advances the
    /// policy's state by one pick.
    fn candidates(&self, members: &[Arc<Member>], ctx: &PickContext) -> Candidates;
}

/// The balancer for `policy` over `members`. The balancer must be used with
/// the same member list (same order) it was built for; `weighted` precomputes
/// its schedule from the weights here.
pub fn balancer_for(policy: Policy, members: &[Arc<Member>]) -> Box<dyn Balancer> {
    bounded_balancer(policy, DEFAULT_BALANCE_FACTOR, members)
}

/// [`balancer_for`] with `hash`'s load bound (`balance_factor`).
pub(crate) fn bounded_balancer(
    policy: Policy,
    factor: f64,
    members: &[Arc<Member>],
) -> Box<dyn Balancer> {
    match policy {
        Policy::RoundRobin => Box::new(RoundRobin::default()),
        Policy::Weighted => Box::new(Weighted::new(members)),
        Policy::LeastConn => Box::new(LeastConn::default()),
        Policy::IpHash => Box::new(IpHash),
        Policy::Hash => Box::new(BoundedHash { factor }),
        Policy::StickyCookie => Box::new(Sticky {
            fallback: Weighted::new(members),
        }),
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
    /// The live algorithm over effective weights, used instead of `mode`
    /// while a member ramps up in slow start.
    ramp: Mutex<Option<Swrr>>,
}

enum Schedule {
    /// One full period of picks.
    Table {
        picks: Box<[u32]>,
        next: AtomicUsize,
    },
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
            if best.is_none_or(|(_, top)| *cur > top) {
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
            ramp: Mutex::new(None),
        }
    }

    /// The first pick over the members' effective weights (slow start).
    /// The precomputed schedule is left where it was, so the exact
    /// sequence resumes once nobody ramps any more.
    fn first_ramping(&self, members: &[Arc<Member>], now: u64) -> Option<usize> {
        let weights: Vec<i64> = members
            .iter()
            .map(|m| i64::try_from(m.effective_weight_milli(now)).unwrap_or(i64::MAX / 2))
            .collect();
        let mut ramp = self
            .ramp
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = ramp.get_or_insert_with(|| Swrr {
            weights: Vec::new(),
            current: Vec::new(),
            total: 0,
        });
        if state.current.len() != weights.len() {
            state.current = vec![0; weights.len()];
        }
        state.total = weights.iter().sum();
        state.weights = weights;
        state.next()
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
                let mut state = state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
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
        let ramping = members.iter().any(|m| m.slow_start_enabled()) && {
            let now = now_ms();
            members.iter().any(|m| m.ramping(now))
        };
        let first = if ramping && n == self.by_weight.len() {
            self.first_ramping(members, now_ms())
        } else {
            self.first()
        };
        let first = match first {
            Some(first) if n == self.by_weight.len() => first,
            // Used with a member list it was not built for: still return
            // every index once, rotating so the load spreads.
            other => return rotated(n, other.unwrap_or(0)),
        };
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
        // Slow start lowers a returning member's effective weight; without
        // it every weight is the configured one, in the same units.
        let now = if members[0].slow_start_enabled() {
            now_ms()
        } else {
            0
        };
        // Read each count once: the counts move while we sort, and the sort
        // needs a consistent order. The position in the rotated order breaks
        // ties, which makes the unstable (non-allocating) sort stable.
        let mut ranked: SmallVec<[Load; 8]> = (0..n)
            .map(|pos| {
                let i = (start + pos) % n;
                let m = &members[i];
                Load {
                    in_flight: m.in_flight() as u64,
                    weight: m.effective_weight_milli(now),
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
        rendezvous(members, hash_ip(ctx.client_ip, CLIENT_SEED))
    }
}

/// Members ranked by weighted rendezvous score for `key`, highest first.
fn rendezvous(members: &[Arc<Member>], key: u64) -> Candidates {
    let equal_weights = members.windows(2).all(|w| w[0].weight == w[1].weight);
    if equal_weights {
        // The score grows with `u` when weights are equal, so the raw
        // bits rank the same way without the logarithm.
        let mut ranked: SmallVec<[(u64, usize); 8]> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (pair_bits(key, member_key(m)), i))
            .collect();
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.iter().map(|r| r.1).collect()
    } else {
        let mut ranked: SmallVec<[(f64, usize); 8]> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (hrw_score(pair_bits(key, member_key(m)), m.weight), i))
            .collect();
        ranked.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.iter().map(|r| r.1).collect()
    }
}

// ---------------------------------------------------------------------------
// hash

/// A request key hashed as `hash` ranks it: fixed (not `RandomState`), so
/// every process and restart maps a key to the same member, which is what
/// lets a tier of sluice instances shard a cache tier by URL.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    let mut h = KEY_SEED;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        h = mix64(h ^ u64::from_le_bytes(word));
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    mix64(h ^ u64::from_le_bytes(last) ^ ((key.len() as u64) << 56))
}

const KEY_SEED: u64 = 0xa409_3822_299f_31d0;

/// `hash_key = "client"`: the client's address as [`key_hash`] takes it
/// (IPv4 in its IPv4-mapped IPv6 form, as `ip_hash` reads it).
pub(crate) fn client_key_hash(ip: IpAddr) -> u64 {
    key_hash(&ip_bits(ip).to_be_bytes())
}

/// Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam;
/// Envoy's and HAProxy's `hash-balance-factor`): members are ranked by
/// weighted rendezvous score for the request's key, and a member already
/// holding `factor` times its share of the requests in flight (this one
/// included) moves behind every member that does not. A key stays on its
/// member while that member is within the bound, and removing a member
/// moves only the keys it had.
#[derive(Debug)]
struct BoundedHash {
    factor: f64,
}

impl Balancer for BoundedHash {
    fn candidates(&self, members: &[Arc<Member>], ctx: &PickContext) -> Candidates {
        let ranked = rendezvous(members, ctx.key);
        let now = now_ms();
        let up = |m: &Member| m.state_at(now) == super::member::MemberState::Up;
        let (mut in_flight, mut weights) = (0u64, 0u64);
        for m in members.iter().filter(|m| up(m)) {
            in_flight += m.in_flight() as u64;
            weights += u64::from(m.weight.max(1));
        }
        if weights == 0 {
            return ranked;
        }
        // Member i may hold ceil(factor * (in flight + 1) * w_i / W).
        let total = self.factor * (in_flight + 1) as f64 / weights as f64;
        let within = |m: &Member| {
            let cap = (total * f64::from(m.weight.max(1))).ceil();
            (m.in_flight() as f64) < cap
        };
        let mut out = Candidates::with_capacity(ranked.len());
        out.extend(ranked.iter().copied().filter(|&i| within(&members[i])));
        out.extend(ranked.iter().copied().filter(|&i| !within(&members[i])));
        out
    }
}

// ---------------------------------------------------------------------------
// sticky_cookie

/// The opaque token a `sticky_cookie` cookie carries for `m`: fixed, so
/// every sluice instance and restart reads the same cookie the same way,
/// and not the member's address.
pub(crate) fn member_token(m: &Member) -> u64 {
    mix64(member_key(m) ^ STICKY_SEED)
}

const STICKY_SEED: u64 = 0x082e_fa98_ec4e_6c89;

/// The member the request's cookie names first, when it is in the pool;
/// the rest (and clients without a cookie) as `weighted`.
#[derive(Debug)]
struct Sticky {
    fallback: Weighted,
}

impl Balancer for Sticky {
    fn candidates(&self, members: &[Arc<Member>], ctx: &PickContext) -> Candidates {
        let named = ctx
            .sticky
            .and_then(|token| members.iter().position(|m| member_token(m) == token));
        match named {
            None => self.fallback.candidates(members, ctx),
            Some(first) => {
                let mut out = Candidates::with_capacity(members.len());
                out.push(first);
                out.extend(
                    self.fallback
                        .by_weight
                        .iter()
                        .copied()
                        .filter(|&i| i != first && i < members.len()),
                );
                if out.len() != members.len() {
                    // Not the member list the fallback was built for.
                    out.truncate(1);
                    out.extend((0..members.len()).filter(|&i| i != first));
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    fn pool(weights: &[u32]) -> Vec<Arc<Member>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr = SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080));
                Arc::new(Member::new(addr, w))
            })
            .collect()
    }

    fn ctx() -> PickContext {
        PickContext::client(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
    }

    fn ctx_for(ip: IpAddr) -> PickContext {
        PickContext::client(ip)
    }

    /// The first choices of `calls` consecutive picks, as letters.
    fn firsts(b: &dyn Balancer, members: &[Arc<Member>], calls: usize) -> String {
        (0..calls)
            .map(|_| {
                let c = b.candidates(members, &ctx());
                char::from(b'a' + c[0] as u8)
            })
            .collect()
    }

    fn assert_permutation(c: &[usize], n: usize) {
        let mut seen = vec![false; n];
        assert_eq!(c.len(), n, "{c:?}");
        for &i in c {
            assert!(i < n && !seen[i], "{c:?} is not a permutation of 0..{n}");
            seen[i] = true;
        }
    }

    /// Client addresses 10.x.y.z for `0..count`, in order.
    fn v4_clients(count: u32) -> impl Iterator<Item = IpAddr> {
        (0..count).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
    }

    #[test]
    fn round_robin_cycles_in_order() {
        let m = pool(&[1, 1, 1]);
        let b = balancer_for(Policy::RoundRobin, &m);
        assert_eq!(firsts(&*b, &m, 6), "abcabc");
        assert_eq!(b.candidates(&m, &ctx()).as_slice(), &[0, 1, 2]);
        assert_eq!(b.candidates(&m, &ctx()).as_slice(), &[1, 2, 0]);
        assert_eq!(b.candidates(&m, &ctx()).as_slice(), &[2, 0, 1]);
    }

    #[test]
    fn round_robin_ignores_weights() {
        let m = pool(&[5, 1, 1]);
        let b = balancer_for(Policy::RoundRobin, &m);
        assert_eq!(firsts(&*b, &m, 6), "abcabc");
    }

    #[test]
    fn weighted_5_1_1_is_smooth() {
        let m = pool(&[5, 1, 1]);
        let b = balancer_for(Policy::Weighted, &m);
        assert_eq!(firsts(&*b, &m, 14), "aabacaaaabacaa");
    }

    #[test]
    fn weighted_3_2_matches_nginx() {
        let m = pool(&[3, 2]);
        let b = balancer_for(Policy::Weighted, &m);
        assert_eq!(firsts(&*b, &m, 10), "ababaababa");
    }

    #[test]
    fn weighted_equal_weights_is_round_robin() {
        let m = pool(&[2, 2, 2]);
        let b = balancer_for(Policy::Weighted, &m);
        assert_eq!(firsts(&*b, &m, 12), "abcabcabcabc");
    }

    #[test]
    fn weighted_rest_follow_by_descending_weight() {
        let m = pool(&[1, 5, 3, 3]);
        let b = balancer_for(Policy::Weighted, &m);
        // Scores after the first pick: 1,5,3,3 -> b.
        assert_eq!(b.candidates(&m, &ctx()).as_slice(), &[1, 2, 3, 0]);
        // 2,-2,6,6 -> c, the first of the tie.
        assert_eq!(b.candidates(&m, &ctx()).as_slice(), &[2, 1, 3, 0]);
    }

    #[test]
    fn weighted_live_state_matches_the_table() {
        for weights in [
            &[5, 1, 1][..],
            &[3, 2],
            &[1, 5, 3, 3],
            &[7],
            &[4, 9, 2, 9, 1, 6],
        ] {
            let table = Weighted::with_limit(weights, SCHEDULE_LIMIT);
            let live = Weighted::with_limit(weights, 0);
            assert!(matches!(table.mode, Schedule::Table { .. }));
            assert!(matches!(live.mode, Schedule::Live(_)));
            let m = pool(weights);
            let period: u32 = weights.iter().sum();
            for _ in 0..3 * period {
                assert_eq!(
                    table.candidates(&m, &ctx()),
                    live.candidates(&m, &ctx()),
                    "{weights:?}"
                );
            }
        }
    }

    #[test]
    fn weighted_long_period_uses_the_live_state() {
        let weights = [
            10_000, 10_000, 10_000, 9_000, 7_000, 6_000, 5_000, 4_000, 3_000, 2_000, 1_000, 1,
        ];
        let period: u32 = weights.iter().sum();
        assert!(u64::from(period) > SCHEDULE_LIMIT);
        let m = pool(&weights);
        let w = Weighted::new(&m);
        assert!(matches!(w.mode, Schedule::Live(_)));
        let mut counts = vec![0u32; weights.len()];
        for _ in 0..period {
            let c = w.candidates(&m, &ctx());
            assert_eq!(c.len(), weights.len());
            counts[c[0]] += 1;
        }
        assert_eq!(counts, weights);
        // Smooth: the weight-1 member is not starved to the very end, and the
        // heavy members never run in long bursts.
        let firsts: Vec<usize> = (0..100).map(|_| w.candidates(&m, &ctx())[0]).collect();
        assert!(
            firsts.windows(3).all(|r| !(r[0] == r[1] && r[1] == r[2])),
            "{firsts:?}"
        );
    }

    #[test]
    fn weighted_first_picks_are_exact_across_threads() {
        let m = pool(&[5, 1, 1]);
        for limit in [SCHEDULE_LIMIT, 0] {
            let w = Weighted::with_limit(&[5, 1, 1], limit);
            let counts: Vec<[u32; 3]> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..7)
                    .map(|_| {
                        s.spawn(|| {
                            let mut counts = [0u32; 3];
                            for _ in 0..1000 {
                                let c = w.candidates(&m, &ctx());
                                assert_permutation(&c, 3);
                                counts[c[0]] += 1;
                            }
                            counts
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("thread panicked"))
                    .collect()
            });
            let mut total = [0u32; 3];
            for c in counts {
                for (t, x) in total.iter_mut().zip(c) {
                    *t += x;
                }
            }
            assert_eq!(total, [5000, 1000, 1000], "limit {limit}");
        }
    }

    /// Members of `weights` with slow start over an hour; the first one
    /// has just come back up and ramps from a tenth of its weight.
    fn ramping_pool(weights: &[u32]) -> Vec<Arc<Member>> {
        let m: Vec<Arc<Member>> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr = SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080));
                Arc::new(Member::new(addr, w).with_slow_start(std::time::Duration::from_secs(3600)))
            })
            .collect();
        let check = |ok| crate::upstream::member::CheckResult {
            ok,
            status: None,
            error: None,
            at: std::time::SystemTime::now(),
        };
        m[0].record_check(check(false), 1, 1);
        m[0].record_check(check(true), 1, 1);
        m
    }

    #[test]
    fn weighted_slow_start_gives_a_returning_member_a_small_share() {
        let m = ramping_pool(&[1, 1]);
        let b = balancer_for(Policy::Weighted, &m);
        let picks = firsts(&*b, &m, 110);
        // About 0.1 : 1 while ramping, instead of alternating.
        let a = picks.matches('a').count();
        assert!((8..=12).contains(&a), "{picks}");
    }

    #[test]
    fn weighted_sequence_is_exact_with_slow_start_configured_but_idle() {
        let m: Vec<Arc<Member>> = pool(&[5, 1, 1])
            .iter()
            .map(|x| {
                Arc::new(
                    Member::new(x.addr, x.weight)
                        .with_slow_start(std::time::Duration::from_secs(30)),
                )
            })
            .collect();
        let b = balancer_for(Policy::Weighted, &m);
        assert_eq!(firsts(&*b, &m, 14), "aabacaaaabacaa");
    }

    #[test]
    fn least_conn_slow_start_counts_the_ramped_weight() {
        let m = ramping_pool(&[1, 1]);
        let b = balancer_for(Policy::LeastConn, &m);
        // b has 1 in flight at weight 1 (load 1), a has 1 at a tenth of its
        // weight (load 10): b first, where without slow start they tie.
        let _a = m[0].begin();
        let _b = m[1].begin();
        for _ in 0..4 {
            assert_eq!(b.candidates(&m, &ctx()).as_slice(), &[1, 0]);
        }
    }

    #[test]
    fn least_conn_picks_the_least_loaded() {
        let m = pool(&[1, 1, 1]);
        let b = balancer_for(Policy::LeastConn, &m);
        let _a = [m[0].begin(), m[0].begin()];
        let _c = m[2].begin();
        for _ in 0..4 {
            assert_eq!(b.candidates(&m, &ctx()).as_slice(), &[1, 2, 0]);
        }
    }

    #[test]
    fn least_conn_alternates_ties() {
        let m = pool(&[1, 1]);
        let b = balancer_for(Policy::LeastConn, &m);
        assert_eq!(firsts(&*b, &m, 6), "ababab");
        // Three members, the middle one busy: the idle two alternate and the
        // busy one stays last.
        let m = pool(&[1, 1, 1]);
        let b = balancer_for(Policy::LeastConn, &m);
        let _busy = m[1].begin();
        let got: Vec<Candidates> = (0..4).map(|_| b.candidates(&m, &ctx())).collect();
        assert_eq!(got[0].as_slice(), &[0, 2, 1]);
        assert_eq!(got[1].as_slice(), &[2, 0, 1]);
        assert_eq!(got[2].as_slice(), &[2, 0, 1]);
        assert_eq!(got[3].as_slice(), &[0, 2, 1]);
    }

    #[test]
    fn least_conn_respects_weights() {
        let m = pool(&[3, 1]);
        let b = balancer_for(Policy::LeastConn, &m);
        // a: 2/3 < b: 1/1.
        let _a = [m[0].begin(), m[0].begin()];
        let _b = m[1].begin();
        assert_eq!(b.candidates(&m, &ctx()).as_slice(), &[0, 1]);
        assert_eq!(b.candidates(&m, &ctx()).as_slice(), &[0, 1]);
        // a: 3/3 ties b: 1/1, so they alternate.
        let _a3 = m[0].begin();
        assert_eq!(firsts(&*b, &m, 4), "abab");
        // a: 4/3 > b: 1/1.
        let _a4 = m[0].begin();
        assert_eq!(b.candidates(&m, &ctx()).as_slice(), &[1, 0]);
    }

    #[test]
    fn least_conn_ranks_everyone_by_load() {
        let m = pool(&[1, 2, 1, 4]);
        let b = balancer_for(Policy::LeastConn, &m);
        let mut guards = Vec::new();
        for (i, n) in [3, 2, 0, 6].into_iter().enumerate() {
            guards.extend((0..n).map(|_| m[i].begin()));
        }
        // Loads 3, 1, 0, 1.5.
        assert_eq!(b.candidates(&m, &ctx()).as_slice(), &[2, 1, 3, 0]);
        drop(guards);
        assert_eq!(m.iter().map(|m| m.in_flight()).sum::<usize>(), 0);
    }

    #[test]
    fn ip_hash_is_stable_for_one_client() {
        let m = pool(&[1, 1, 1, 1]);
        let b = balancer_for(Policy::IpHash, &m);
        for ip in [
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42)),
        ] {
            let first = b.candidates(&m, &ctx_for(ip));
            assert_permutation(&first, 4);
            for _ in 0..10 {
                assert_eq!(b.candidates(&m, &ctx_for(ip)), first);
            }
            // A fresh balancer (another process, another restart) agrees.
            assert_eq!(
                balancer_for(Policy::IpHash, &m).candidates(&m, &ctx_for(ip)),
                first
            );
        }
    }

    #[test]
    fn ip_hash_treats_v4_and_v4_mapped_v6_alike() {
        let m = pool(&[1, 2, 3]);
        let b = balancer_for(Policy::IpHash, &m);
        for v4 in v4_clients(50).filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }) {
            let a = b.candidates(&m, &ctx_for(IpAddr::V4(v4)));
            let mapped = b.candidates(&m, &ctx_for(IpAddr::V6(v4.to_ipv6_mapped())));
            assert_eq!(a, mapped);
        }
    }

    #[test]
    fn ip_hash_values_are_pinned() {
        // The hash must not change between builds, or every client moves on
        // upgrade.
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        let m = pool(&[1, 1, 1, 1, 1]);
        let b = balancer_for(Policy::IpHash, &m);
        let got = b.candidates(&m, &ctx()); // 192.0.2.1
        assert_eq!(got.as_slice(), PINNED_EQUAL);
        let m = pool(&[1, 2, 3, 4, 5]);
        let got = b.candidates(&m, &ctx());
        assert_eq!(got.as_slice(), PINNED_WEIGHTED);
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x1234, 0, 0, 0, 0, 1));
        let got = b.candidates(&m, &ctx_for(v6));
        assert_eq!(got.as_slice(), PINNED_V6);
    }

    const PINNED_EQUAL: &[usize] = &[0, 2, 1, 4, 3];
    const PINNED_WEIGHTED: &[usize] = &[2, 0, 1, 4, 3];
    const PINNED_V6: &[usize] = &[2, 4, 3, 1, 0];

    #[test]
    fn ip_hash_spreads_by_weight() {
        let weights = [1, 2, 3, 4];
        let m = pool(&weights);
        let b = balancer_for(Policy::IpHash, &m);
        let mut counts = [0u32; 4];
        for ip in v4_clients(10_000) {
            counts[b.candidates(&m, &ctx_for(ip))[0]] += 1;
        }
        for (c, w) in counts.iter().zip(weights) {
            let expected = 1000 * w;
            assert!(c.abs_diff(expected) <= expected / 10, "{counts:?}");
        }
        // Equal weights, IPv6 clients.
        let m = pool(&[1, 1, 1, 1, 1]);
        let mut counts = [0u32; 5];
        for i in 0..10_000u128 {
            let ip = IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | i << 16));
            counts[b.candidates(&m, &ctx_for(ip))[0]] += 1;
        }
        assert!(
            counts.iter().all(|&c| c.abs_diff(2000) <= 200),
            "{counts:?}"
        );
    }

    #[test]
    fn ip_hash_removing_a_member_moves_only_its_clients() {
        for weights in [[1, 1, 1, 1, 1], [2, 1, 3, 1, 3]] {
            let all = pool(&weights);
            let b = balancer_for(Policy::IpHash, &all);
            let removed = 2;
            let fewer: Vec<Arc<Member>> = all
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != removed)
                .map(|(_, m)| m.clone())
                .collect();
            let b_fewer = balancer_for(Policy::IpHash, &fewer);
            let mut moved = 0;
            let mut on_removed = 0;
            let total = 10_000;
            for ip in v4_clients(total) {
                let before = all[b.candidates(&all, &ctx_for(ip))[0]].addr;
                let after = fewer[b_fewer.candidates(&fewer, &ctx_for(ip))[0]].addr;
                if before == all[removed].addr {
                    on_removed += 1;
                }
                if before != after {
                    moved += 1;
                    assert_eq!(
                        before, all[removed].addr,
                        "{ip} moved off a member that stayed"
                    );
                }
            }
            assert_eq!(moved, on_removed);
            let share = f64::from(weights[removed]) / f64::from(weights.iter().sum::<u32>());
            let limit = (share * f64::from(total) * 1.1) as u32;
            assert!(moved <= limit, "{moved} of {total} moved, limit {limit}");
        }
    }

    #[test]
    fn ip_hash_ranking_is_stable_when_a_member_leaves() {
        // The fallback order survives too: dropping a member keeps the
        // relative order of the others.
        let all = pool(&[1, 2, 3, 4, 5, 6]);
        let b = balancer_for(Policy::IpHash, &all);
        let fewer: Vec<Arc<Member>> = all.iter().skip(1).cloned().collect();
        for ip in v4_clients(200) {
            let before: Vec<SocketAddr> = b
                .candidates(&all, &ctx_for(ip))
                .iter()
                .map(|&i| all[i].addr)
                .filter(|a| *a != all[0].addr)
                .collect();
            let after: Vec<SocketAddr> = b
                .candidates(&fewer, &ctx_for(ip))
                .iter()
                .map(|&i| fewer[i].addr)
                .collect();
            assert_eq!(before, after);
        }
    }

    #[test]
    fn every_policy_returns_each_index_exactly_once() {
        let policies = [
            Policy::RoundRobin,
            Policy::Weighted,
            Policy::LeastConn,
            Policy::IpHash,
        ];
        for n in 0..=12 {
            let weights: Vec<u32> = (0..n).map(|i| (i * 7 % 5 + 1) as u32).collect();
            let m = pool(&weights);
            let _guards: Vec<_> = m
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 3 == 1)
                .map(|(_, m)| m.begin())
                .collect();
            for policy in policies {
                let b = balancer_for(policy, &m);
                for ip in v4_clients(40) {
                    let c = b.candidates(&m, &ctx_for(ip));
                    assert_permutation(&c, n);
                }
            }
        }
    }

    #[test]
    fn a_balancer_used_with_another_member_list_still_returns_a_permutation() {
        for built_for in [pool(&[5, 1, 1]), pool(&[])] {
            let b = balancer_for(Policy::Weighted, &built_for);
            for n in [0, 1, 2, 4, 9] {
                let m = pool(&vec![1; n]);
                for _ in 0..10 {
                    assert_permutation(&b.candidates(&m, &ctx()), n);
                }
            }
        }
    }

    fn key_ctx(key: &str) -> PickContext {
        PickContext {
            key: key_hash(key.as_bytes()),
            ..ctx()
        }
    }

    #[test]
    fn hash_keeps_a_key_on_one_member_and_removing_one_moves_only_its_keys() {
        let all = pool(&[1, 1, 1]);
        let b = balancer_for(Policy::Hash, &all);
        let fewer: Vec<Arc<Member>> = vec![all[0].clone(), all[1].clone()];
        let b_fewer = balancer_for(Policy::Hash, &fewer);
        let mut per_member = [0usize; 3];
        let mut moved = 0;
        for k in 0..3000 {
            let key = format!("/page/{k}?v=1");
            let first = b.candidates(&all, &key_ctx(&key));
            assert_permutation(&first, 3);
            assert_eq!(first, b.candidates(&all, &key_ctx(&key)), "stable");
            per_member[first[0]] += 1;
            let after = fewer[b_fewer.candidates(&fewer, &key_ctx(&key))[0]].addr;
            if after != all[first[0]].addr {
                moved += 1;
                assert_eq!(first[0], 2, "{key} moved off a member that stayed");
            }
        }
        assert_eq!(moved, per_member[2], "only the removed member's keys move");
        for n in per_member {
            assert!((800..1200).contains(&n), "{per_member:?}");
        }
    }

    #[test]
    fn hash_with_bounded_loads_keeps_every_member_under_the_bound() {
        for factor in [1.0, 1.25, 2.0] {
            let members = pool(&[1, 1, 1]);
            let b = bounded_balancer(Policy::Hash, factor, &members);
            // One hot key: 64 concurrent requests for it.
            let mut held = Vec::new();
            for _ in 0..64 {
                let first = b.candidates(&members, &key_ctx("/hot"))[0];
                held.push(members[first].begin());
                let total: usize = members.iter().map(|m| m.in_flight()).sum();
                let bound = (factor * total as f64 / 3.0).ceil() as usize;
                for m in &members {
                    assert!(
                        m.in_flight() <= bound,
                        "factor {factor}: {} > {bound}",
                        m.in_flight()
                    );
                }
            }
            // The key's own member took its full share first.
            let home = b.candidates(&members, &key_ctx("/hot"));
            drop(held);
            assert_eq!(b.candidates(&members, &key_ctx("/hot"))[0], {
                let idle = balancer_for(Policy::Hash, &members);
                idle.candidates(&members, &key_ctx("/hot"))[0]
            });
            assert_permutation(&home, 3);
        }
    }

    #[test]
    fn sticky_cookie_puts_the_named_member_first_else_weighted() {
        let members = pool(&[1, 1, 1]);
        let b = balancer_for(Policy::StickyCookie, &members);
        for (i, m) in members.iter().enumerate() {
            let ctx = PickContext {
                sticky: Some(member_token(m)),
                ..ctx()
            };
            let c = b.candidates(&members, &ctx);
            assert_permutation(&c, 3);
            assert_eq!(c[0], i);
        }
        // No cookie, or one naming no member: weighted (round robin here).
        let unknown = PickContext {
            sticky: Some(42),
            ..ctx()
        };
        let firsts: Vec<usize> = (0..3)
            .map(|_| b.candidates(&members, &unknown)[0])
            .collect();
        assert_eq!(firsts, [0, 1, 2]);
        // The token is not the address.
        let token = format!("{:016x}", member_token(&members[0]));
        assert!(!token.contains("0a000001"));
    }
}
