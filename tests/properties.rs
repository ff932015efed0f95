//! Property tests (proptest) for the pure parts of sluice: ip_hash
//! stability, every balancer's ranking, duration and size parsing, authority
//! normalisation and the HTTP/1.1 framing guard.
//!
//! They run with `cargo test` (CI), so each property is kept to a modest
//! number of cases. The fuzz targets in `fuzz/` cover the same parsers with
//! unstructured input for longer runs.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, HOST};
use http::{Uri, Version};
use proptest::prelude::*;
use proptest::sample::Index;
use sluice::testing::config::units::{parse_duration, parse_size};
use sluice::testing::config::Policy;
use sluice::testing::framing::{FramingGuard, GuardLimits, Verdict, Verdicts, Violation};
use sluice::testing::headers::{authority, Authority};
use sluice::testing::upstream::balance::{balancer_for, PickContext};
use sluice::testing::upstream::member::Member;
use tokio::io::{AsyncRead, ReadBuf};

const CASES: u32 = 256;

// ------------------------------------------------------------- balancers --

/// The splitmix64 step: client addresses derived from one seed, so a case
/// needs one random number instead of a thousand.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `count` client addresses, IPv4 and IPv6 mixed.
fn clients(seed: u64, count: usize) -> Vec<IpAddr> {
    let mut s = seed;
    (0..count)
        .map(|_| {
            let r = splitmix(&mut s);
            if r & 1 == 0 {
                IpAddr::V4(Ipv4Addr::from((r >> 32) as u32))
            } else {
                let lo = splitmix(&mut s);
                IpAddr::V6(Ipv6Addr::from(u128::from(r) << 64 | u128::from(lo)))
            }
        })
        .collect()
}

fn addr((ip, port): (u32, u16)) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(ip), port))
}

fn pool(addrs: &[SocketAddr], weights: &[u32]) -> Vec<Arc<Member>> {
    addrs
        .iter()
        .zip(weights)
        .map(|(&a, &w)| Arc::new(Member::new(a, w)))
        .collect()
}

/// The member address ip_hash sends `client` to.
fn owner(members: &[Arc<Member>], client: IpAddr) -> SocketAddr {
    let b = balancer_for(Policy::IpHash, members);
    members[b.candidates(members, &PickContext::client(client))[0]].addr
}

/// An upper bound for a Binomial(keys, share) count that a correct hash
/// exceeds with negligible probability (six standard deviations).
fn binomial_bound(keys: usize, share: f64) -> usize {
    let mean = keys as f64 * share;
    let sd = (keys as f64 * share * (1.0 - share)).sqrt();
    (mean + 6.0 * sd + 1.0) as usize
}

const KEYS: usize = 1000;

fn assert_permutation(c: &[usize], n: usize) -> Result<(), TestCaseError> {
    let mut seen = vec![false; n];
    prop_assert_eq!(c.len(), n, "{:?}", c);
    for &i in c {
        prop_assert!(
            i < n && !seen[i],
            "{:?} is not a permutation of 0..{}",
            c,
            n
        );
        seen[i] = true;
    }
    Ok(())
}

fn any_policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::RoundRobin),
        Just(Policy::Weighted),
        Just(Policy::LeastConn),
        Just(Policy::IpHash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// ip_hash with N equal weights: removing one member moves only the
    /// keys that were on it, about 1/N of them.
    #[test]
    fn ip_hash_removing_a_member_moves_only_its_keys(
        members in prop::collection::btree_set(any::<(u32, u16)>(), 2..10),
        weight in 1u32..100,
        removed in any::<Index>(),
        seed in any::<u64>(),
    ) {
        let addrs: Vec<SocketAddr> = members.into_iter().map(addr).collect();
        let n = addrs.len();
        let all = pool(&addrs, &vec![weight; n]);
        let gone = removed.index(n);
        let fewer: Vec<Arc<Member>> =
            all.iter().enumerate().filter(|&(i, _)| i != gone).map(|(_, m)| m.clone()).collect();
        let mut moved = 0;
        for client in clients(seed, KEYS) {
            let before = owner(&all, client);
            let after = owner(&fewer, client);
            if before != after {
                prop_assert_eq!(before, addrs[gone], "{} left a member that stayed", client);
                moved += 1;
            }
            prop_assert_ne!(after, addrs[gone]);
        }
        let bound = binomial_bound(KEYS, 1.0 / n as f64);
        prop_assert!(moved <= bound, "{} of {} keys moved with N = {}, bound {}", moved, KEYS, n, bound);
    }

    /// ip_hash with N equal weights: a new member takes keys only for
    /// itself, about 1/(N+1) of them, wherever it sits in the list.
    #[test]
    fn ip_hash_adding_a_member_moves_keys_only_to_it(
        members in prop::collection::btree_set(any::<(u32, u16)>(), 3..11),
        weight in 1u32..100,
        position in any::<Index>(),
        seed in any::<u64>(),
    ) {
        let mut addrs: Vec<SocketAddr> = members.into_iter().map(addr).collect();
        let new = addrs.pop().expect("at least three");
        let before_pool = pool(&addrs, &vec![weight; addrs.len()]);
        addrs.insert(position.index(addrs.len() + 1), new);
        let after_pool = pool(&addrs, &vec![weight; addrs.len()]);
        let mut moved = 0;
        for client in clients(seed, KEYS) {
            let before = owner(&before_pool, client);
            let after = owner(&after_pool, client);
            if before != after {
                prop_assert_eq!(after, new, "{} moved to a member that was there", client);
                moved += 1;
            }
        }
        let bound = binomial_bound(KEYS, 1.0 / addrs.len() as f64);
        prop_assert!(moved <= bound, "{} of {} keys moved, bound {}", moved, KEYS, bound);
    }

    /// ip_hash with unequal weights: still only the removed member's keys
    /// move, about its share of the total weight.
    #[test]
    fn ip_hash_weighted_removal_moves_only_its_keys(
        members in prop::collection::btree_set(any::<(u32, u16)>(), 2..10),
        weights in prop::collection::vec(1u32..10, 10),
        removed in any::<Index>(),
        seed in any::<u64>(),
    ) {
        let addrs: Vec<SocketAddr> = members.into_iter().map(addr).collect();
        let n = addrs.len();
        let weights = &weights[..n];
        let all = pool(&addrs, weights);
        let gone = removed.index(n);
        let fewer: Vec<Arc<Member>> =
            all.iter().enumerate().filter(|&(i, _)| i != gone).map(|(_, m)| m.clone()).collect();
        let mut moved = 0;
        for client in clients(seed, KEYS) {
            let before = owner(&all, client);
            if before != owner(&fewer, client) {
                prop_assert_eq!(before, addrs[gone], "{} left a member that stayed", client);
                moved += 1;
            }
        }
        let share = f64::from(weights[gone]) / f64::from(weights.iter().sum::<u32>());
        let bound = binomial_bound(KEYS, share);
        prop_assert!(moved <= bound, "{} of {} keys moved, share {}, bound {}", moved, KEYS, share, bound);
    }

    /// Every policy ranks every member exactly once, whatever the pool size,
    /// weights, loads, earlier picks, and even when used with a member list
    /// other than the one it was built for.
    #[test]
    fn every_balancer_returns_a_permutation(
        policy in any_policy(),
        weights in prop::collection::vec(prop_oneof![1u32..10, any::<u32>()], 0..20),
        other in prop::option::of(prop::collection::vec(1u32..10, 0..12)),
        loads in prop::collection::vec(0usize..4, 20),
        earlier in 0usize..40,
        seed in any::<u64>(),
    ) {
        let addrs: Vec<SocketAddr> =
            (0..weights.len()).map(|i| addr((0x0a00_0001 + i as u32, 8080))).collect();
        let members = pool(&addrs, &weights);
        let built_for = match &other {
            Some(w) => {
                let a: Vec<SocketAddr> =
                    (0..w.len()).map(|i| addr((0x0b00_0001 + i as u32, 80))).collect();
                pool(&a, w)
            }
            None => members.clone(),
        };
        let b = balancer_for(policy, &built_for);
        let _guards: Vec<_> = members
            .iter()
            .zip(&loads)
            .flat_map(|(m, &k)| (0..k).map(|_| m.begin()))
            .collect();
        for (i, client) in clients(seed, earlier + 5).into_iter().enumerate() {
            let c = b.candidates(&members, &PickContext::client(client));
            if i >= earlier {
                assert_permutation(&c, members.len())?;
            }
        }
    }
}

// ----------------------------------------------------------------- units --

const DURATION_UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];
const SIZE_UNITS: [(&str, u64); 8] = [
    ("", 1),
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
];

/// Small, boundary and arbitrary numbers.
fn any_count() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..10_000,
        any::<u64>(),
        (0u64..4, 0usize..8).prop_map(|(d, u)| {
            let (_, m) = SIZE_UNITS[u];
            (u64::MAX / m).wrapping_add(d).wrapping_sub(1)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// `"{n}{unit}"` is n times the unit, or an error when that overflows
    /// (never a wrapped value); a space before the unit is allowed.
    #[test]
    fn duration_round_trips_or_overflows(n in any_count(), unit in 0usize..4, space in any::<bool>()) {
        let (name, ms) = DURATION_UNITS[unit];
        let text = format!("{n}{}{name}", if space { " " } else { "" });
        let want = n.checked_mul(ms).map(Duration::from_millis);
        match parse_duration(&text) {
            Ok(d) => prop_assert_eq!(Some(d), want, "{}", text),
            Err(_) => prop_assert_eq!(want, None, "{} refused", text),
        }
    }

    #[test]
    fn size_round_trips_or_overflows(n in any_count(), unit in 0usize..8, space in any::<bool>()) {
        let (name, mult) = SIZE_UNITS[unit];
        let text = format!("{n}{}{name}", if space && !name.is_empty() { " " } else { "" });
        match parse_size(&text) {
            Ok(v) => prop_assert_eq!(Some(v), n.checked_mul(mult), "{}", text),
            Err(_) => prop_assert_eq!(n.checked_mul(mult), None, "{} refused", text),
        }
    }

    /// Digits beyond u64 are an error, whatever the unit.
    #[test]
    fn overlong_numbers_are_errors(digits in "[1-9][0-9]{20,40}", unit in 0usize..4) {
        let duration = format!("{}{}", digits, DURATION_UNITS[unit].0);
        let size = format!("{}{}", digits, SIZE_UNITS[unit].0);
        prop_assert!(parse_duration(&duration).is_err(), "{}", duration);
        prop_assert!(parse_size(&size).is_err(), "{}", size);
    }

    /// Arbitrary text never panics, and what parses re-parses from its
    /// canonical spelling.
    #[test]
    fn units_never_panic(text in prop_oneof![
        any::<String>(),
        "[ \t]?[0-9]{0,22}[ \t]?[a-zA-Z]{0,4}[ \t]?",
        "[0-9]{1,3}[\\PC]{0,3}",
    ]) {
        if let Ok(d) = parse_duration(&text) {
            prop_assert_eq!(parse_duration(&format!("{}ms", d.as_millis())), Ok(d));
        }
        if let Ok(n) = parse_size(&text) {
            prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
        }
    }
}

// ------------------------------------------------------------- authority --

fn host_map(v: &HeaderValue) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HOST, v.clone());
    h
}

fn from_host(bytes: &[u8], https: bool) -> Option<Result<Authority, String>> {
    let v = HeaderValue::from_bytes(bytes).ok()?;
    Some(
        authority(
            Version::HTTP_11,
            &Uri::from_static("/"),
            &host_map(&v),
            https,
        )
        .map_err(|e| e.to_string()),
    )
}

/// Host values near the valid ones, and arbitrary bytes.
fn any_host() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-zA-Z0-9._-]{0,12}(:[0-9]{0,6})?".prop_map(String::into_bytes),
        "\\[[0-9a-fA-F:.]{0,16}\\](:[0-9]{0,6})?".prop_map(String::into_bytes),
        "[a-zA-Z0-9.:@\\[\\]%_ -]{0,16}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..24),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Normalising a normalised authority changes nothing, and never panics.
    #[test]
    fn authority_normalisation_is_idempotent(host in any_host(), https in any::<bool>()) {
        let Some(Ok(a)) = from_host(&host, https) else {
            return Ok(());
        };
        prop_assert!(!a.host().is_empty(), "{:?} -> {:?}", String::from_utf8_lossy(&host), a);
        prop_assert_eq!(a.host().to_ascii_lowercase(), a.host().to_string());
        prop_assert_eq!(from_host(a.authority().as_bytes(), https), Some(Ok(a)));
    }

    /// The same authority in an absolute-form target normalises the same
    /// way as in Host, and the two agree.
    #[test]
    fn authority_from_target_matches_host(host in any_host(), https in any::<bool>()) {
        let Ok(text) = std::str::from_utf8(&host) else {
            return Ok(());
        };
        let scheme = if https { "https" } else { "http" };
        let Ok(uri) = format!("{scheme}://{text}/x").parse::<Uri>() else {
            return Ok(());
        };
        if uri.authority().map(|a| a.as_str()) != Some(text) {
            return Ok(());
        }
        let target =
            authority(Version::HTTP_2, &uri, &HeaderMap::new(), https).map_err(|e| e.to_string());
        let Some(field) = from_host(&host, https) else {
            return Ok(());
        };
        prop_assert_eq!(&target, &field);
        if let Ok(a) = target {
            let v = HeaderValue::from_bytes(&host).expect("valid above");
            prop_assert_eq!(authority(Version::HTTP_11, &uri, &host_map(&v), https), Ok(a));
        }
    }
}

// --------------------------------------------------------------- framing --

/// A client that delivers its bytes in the given reads.
struct Script(VecDeque<Vec<u8>>);

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut part) = self.0.pop_front() {
            let n = part.len().min(buf.remaining());
            buf.put_slice(&part[..n]);
            if n < part.len() {
                self.0.push_front(part.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

struct NoWake;

impl Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

/// What hyper would read through the guard, and the verdicts queued.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    passed: usize,
    error: Option<String>,
    verdicts: Vec<Verdict>,
}

const LIMITS: GuardLimits = GuardLimits {
    max_head_bytes: 64 << 10,
    max_headers: 100,
    max_target_bytes: usize::MAX,
};

/// Feeds `stream` through a guard in reads cut at `cuts`.
fn through_guard(stream: &[u8], cuts: &[usize]) -> Seen {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    at.extend([0, stream.len()]);
    at.sort_unstable();
    at.dedup();
    let parts = at.windows(2).map(|w| stream[w[0]..w[1]].to_vec()).collect();
    let verdicts = Verdicts::new();
    let mut guard = FramingGuard::new(Script(parts), verdicts.clone(), LIMITS);
    let waker = Waker::from(Arc::new(NoWake));
    let mut cx = Context::from_waker(&waker);
    let mut storage = vec![0u8; 1 << 16];
    let mut passed = 0;
    let mut error = None;
    loop {
        let mut buf = ReadBuf::new(&mut storage);
        match Pin::new(&mut guard).poll_read(&mut cx, &mut buf) {
            Poll::Pending => unreachable!("the script never blocks"),
            Poll::Ready(Err(e)) => {
                error = Some(e.to_string());
                break;
            }
            Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
            Poll::Ready(Ok(())) => {
                let got = buf.filled();
                assert_eq!(got, &stream[passed..passed + got.len()], "bytes changed");
                passed += got.len();
            }
        }
    }
    let mut taken = Vec::new();
    loop {
        match verdicts.next() {
            Verdict::Reject(Violation::Untracked) => break,
            v => taken.push(v),
        }
    }
    Seen {
        passed,
        error,
        verdicts: taken,
    }
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Length(Vec<u8>),
    /// Chunks (data, upper-case hex, leading zeros, extension) and
    /// trailer fields.
    Chunked(
        Vec<(Vec<u8>, bool, usize, Option<String>)>,
        Vec<(String, String)>,
    ),
}

#[derive(Debug, Clone)]
struct Request {
    leading_crlf: bool,
    method: &'static str,
    target: String,
    http10: bool,
    bare_lf: bool,
    fields: Vec<(String, String)>,
    body: Body,
}

impl Request {
    fn serialise(&self, out: &mut Vec<u8>) {
        let eol: &[u8] = if self.bare_lf { b"\n" } else { b"\r\n" };
        if self.leading_crlf {
            out.extend_from_slice(b"\r\n");
        }
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        out.extend_from_slice(format!("{} {} {version}", self.method, self.target).as_bytes());
        out.extend_from_slice(eol);
        if !self.http10 {
            out.extend_from_slice(b"Host: example.com");
            out.extend_from_slice(eol);
        }
        for (name, value) in &self.fields {
            out.extend_from_slice(format!("{name}: {value}").as_bytes());
            out.extend_from_slice(eol);
        }
        match &self.body {
            Body::None => out.extend_from_slice(eol),
            Body::Length(data) => {
                out.extend_from_slice(format!("Content-Length: {}", data.len()).as_bytes());
                out.extend_from_slice(eol);
                out.extend_from_slice(eol);
                out.extend_from_slice(data);
            }
            Body::Chunked(chunks, trailers) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked");
                out.extend_from_slice(eol);
                out.extend_from_slice(eol);
                for (data, upper, zeros, ext) in chunks {
                    let size = if *upper {
                        format!("{:X}", data.len())
                    } else {
                        format!("{:x}", data.len())
                    };
                    out.extend_from_slice("0".repeat(*zeros).as_bytes());
                    out.extend_from_slice(size.as_bytes());
                    if let Some(ext) = ext {
                        out.extend_from_slice(format!(";{ext}").as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers {
                    out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

fn field() -> impl Strategy<Value = (String, String)> {
    ("x-[a-z0-9-]{1,10}", "([!-~]([ !-~\t]{0,20}[!-~])?)?")
}

fn body(http10: bool) -> BoxedStrategy<Body> {
    let length = prop::collection::vec(any::<u8>(), 0..64).prop_map(Body::Length);
    if http10 {
        return prop_oneof![Just(Body::None), length].boxed();
    }
    let chunk = (
        prop::collection::vec(any::<u8>(), 1..40),
        any::<bool>(),
        0usize..3,
        prop::option::of("[a-z]{1,5}(=[a-z0-9]{1,5})?"),
    );
    let chunked = (
        prop::collection::vec(chunk, 0..4),
        prop::collection::vec(field(), 0..3),
    )
        .prop_map(|(c, t)| Body::Chunked(c, t));
    prop_oneof![Just(Body::None), length, chunked].boxed()
}

fn request() -> impl Strategy<Value = Request> {
    let method = prop::sample::select(vec![
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
    ]);
    let target = prop_oneof![
        "/[a-zA-Z0-9._~%/-]{0,20}(\\?[a-z0-9=&]{0,10})?",
        "http://example\\.com(:[0-9]{2,4})?/[a-z]{0,5}",
    ];
    (
        any::<bool>(),
        method,
        target,
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(field(), 0..5),
    )
        .prop_flat_map(|(leading_crlf, method, target, http10, bare_lf, fields)| {
            body(http10).prop_map(move |body| Request {
                leading_crlf,
                method,
                target: target.clone(),
                http10,
                bare_lf,
                fields: fields.clone(),
                body,
            })
        })
}

fn serialise(requests: &[Request]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in requests {
        r.serialise(&mut out);
    }
    out
}

/// A byte edit: overwrite, insert or delete at a position.
fn edit() -> impl Strategy<Value = (u8, Index, u8)> {
    (0u8..3, any::<Index>(), any::<u8>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Valid pipelined requests are each accepted, passed on whole, and the
    /// result does not depend on how the bytes were cut into reads.
    #[test]
    fn framing_valid_requests_are_split_invariant(
        requests in prop::collection::vec(request(), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let stream = serialise(&requests);
        let whole = through_guard(&stream, &[]);
        prop_assert_eq!(
            &whole,
            &Seen { passed: stream.len(), error: None, verdicts: vec![Verdict::Accept; requests.len()] },
            "{:?}", String::from_utf8_lossy(&stream)
        );
        prop_assert_eq!(through_guard(&stream, &cuts), whole);
    }

    /// Valid requests with a few bytes changed: whatever the verdicts are,
    /// they are the same however the bytes are cut into reads.
    #[test]
    fn framing_edited_requests_are_split_invariant(
        requests in prop::collection::vec(request(), 1..4),
        edits in prop::collection::vec(edit(), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 1..12),
    ) {
        let mut stream = serialise(&requests);
        for (kind, at, byte) in edits {
            let i = at.index(stream.len() + 1);
            match kind {
                0 if i < stream.len() => stream[i] = byte,
                1 => stream.insert(i, byte),
                _ if i < stream.len() => { stream.remove(i); }
                _ => stream.push(byte),
            }
        }
        let whole = through_guard(&stream, &[]);
        prop_assert_eq!(&through_guard(&stream, &cuts), &whole, "{:?}", String::from_utf8_lossy(&stream));
        let singles: Vec<usize> = (1..stream.len()).collect();
        prop_assert_eq!(&through_guard(&stream, &singles), &whole, "byte by byte");
    }
}
