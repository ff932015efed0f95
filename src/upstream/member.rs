//! One pool member: an upstream address, its weight, the live count of
//! requests in flight to it (read by `least_conn`), and its health state
//! machine: `up`, `down` (active checks failing), `ejected` (passive
//! detection, until a deadline) and `draining` (gone from DNS; in-flight
//! requests finishing). A member both down and ejected reports `down`.
//!
//! Everything the request path reads is an atomic: choosing members takes no
//! lock. Times are milliseconds of a process-wide monotonic clock
//! ([`now_ms`]), passed in explicitly where a test needs to control them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Milliseconds since the first call in this process, starting at 1 (so
/// that 0 can mean "never").
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// The wall-clock time of monotonic instant `ms`.
fn wall_of(ms: u64) -> SystemTime {
    let now = now_ms();
    let wall = SystemTime::now();
    if ms <= now {
        wall - Duration::from_millis(now - ms)
    } else {
        wall + Duration::from_millis(ms - now)
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A member's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberState {
    Up,
    Down,
    Ejected,
    Draining,
}

impl MemberState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MemberState::Up => "up",
            MemberState::Down => "down",
            MemberState::Ejected => "ejected",
            MemberState::Draining => "draining",
        }
    }
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of the latest active check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckResult {
    pub ok: bool,
    /// The response status (http checks that got a response).
    pub status: Option<u16>,
    pub error: Option<String>,
    pub at: SystemTime,
}

/// Effective weight in thousandths during slow start: linear from 10% of
/// `weight` at `started` to all of it at `started + window`. Outside the
/// window (or with no window) it is the full weight.
pub(crate) fn ramped_weight_milli(weight: u32, started: u64, window_ms: u64, now: u64) -> u64 {
    let full = u64::from(weight.max(1)) * 1000;
    if window_ms == 0 || started == 0 || now < started {
        return full;
    }
    let elapsed = now - started;
    if elapsed >= window_ms {
        return full;
    }
    let floor = full / 10;
    floor + (full - floor) * elapsed / window_ms
}

pub struct Member {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The pool's name, for logs.
    pub pool: Arc<str>,
    /// The server entry this member was resolved from, as configured
    /// (`app.internal:8080`, or the IP:port itself).
    pub server: Arc<str>,
    /// Requests in flight at once; 0 = unlimited.
    pub max_connections: usize,
    in_flight: AtomicUsize,
    /// Told when a request ends on a member with `max_connections`, so
    /// pending requests can look again.
    slot_freed: Option<Arc<Notify>>,
    /// Slow start window in ms (0 = off) and when the current ramp began.
    slow_start_ms: u64,
    ramp_from: AtomicU64,
    down: AtomicBool,
    draining: AtomicBool,
    /// Monotonic ms until which the member is ejected; 0 = not ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row, for the doubling of the ejection time.
    ejection_streak: AtomicU32,
    /// Unix ms of the last state change.
    since: AtomicU64,
    check_successes: AtomicU32,
    check_failures: AtomicU32,
    last_check: Mutex<Option<CheckResult>>,
    /// Request outcomes in a row, for passive detection.
    request_successes: AtomicU32,
    request_failures: AtomicU32,
    ejections_total: AtomicU64,
    /// Response bodies that failed or ended early after their head.
    body_errors: AtomicU64,
    health_checks_ok: AtomicU64,
    health_checks_fail: AtomicU64,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("addr", &self.addr)
            .field("weight", &self.weight)
            .field("state", &self.state())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Member {
    pub fn new(addr: SocketAddr, weight: u32) -> Member {
        Member {
            addr,
            weight: weight.max(1),
            pool: Arc::from(""),
            server: Arc::from(addr.to_string()),
            max_connections: 0,
            in_flight: AtomicUsize::new(0),
            slot_freed: None,
            slow_start_ms: 0,
            ramp_from: AtomicU64::new(0),
            down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            ejection_streak: AtomicU32::new(0),
            since: AtomicU64::new(unix_ms(SystemTime::now())),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            last_check: Mutex::new(None),
            request_successes: AtomicU32::new(0),
            request_failures: AtomicU32::new(0),
            ejections_total: AtomicU64::new(0),
            body_errors: AtomicU64::new(0),
            health_checks_ok: AtomicU64::new(0),
            health_checks_fail: AtomicU64::new(0),
        }
    }

    /// Caps requests in flight at `max` (0 = unlimited); `freed` is told
    /// whenever one ends.
    pub(crate) fn with_max_connections(mut self, max: usize, freed: Arc<Notify>) -> Member {
        self.max_connections = max;
        self.slot_freed = (max > 0).then_some(freed);
        self
    }

    /// Names the pool (for logs) and the configured server it came from.
    pub(crate) fn with_origin(mut self, pool: Arc<str>, server: Arc<str>) -> Member {
        self.pool = pool;
        self.server = server;
        self
    }

    /// Ramps the weight over `window` each time the member comes back up.
    pub(crate) fn with_slow_start(mut self, window: Duration) -> Member {
        self.slow_start_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Requests currently being proxied to this member.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard drops; the guard may
    /// travel with a streaming response body.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Like [`Member::begin`], unless the member already has
    /// `max_connections` requests in flight.
    pub(crate) fn try_begin(self: &Arc<Self>) -> Option<InFlight> {
        if self.max_connections == 0 {
            return Some(self.begin());
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_connections).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(self.clone()))
    }

    /// The member's state now.
    pub(crate) fn state(&self) -> MemberState {
        self.state_at(now_ms())
    }

    /// The member's state at monotonic time `now`. An ejection whose time
    /// is over ends here, once (logged by whoever sees it first).
    pub(crate) fn state_at(&self, now: u64) -> MemberState {
        if self.draining.load(Ordering::Relaxed) {
            return MemberState::Draining;
        }
        let down = self.down.load(Ordering::Relaxed);
        let until = self.ejected_until.load(Ordering::Acquire);
        if until != 0 {
            if now < until {
                return if down {
                    MemberState::Down
                } else {
                    MemberState::Ejected
                };
            }
            if self
                .ejected_until
                .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
                && !down
            {
                self.since.store(unix_ms(wall_of(until)), Ordering::Relaxed);
                tracing::info!(pool = %self.pool, member = %self.addr, from = %MemberState::Ejected, to = %MemberState::Up, "upstream member state changed");
            }
        }
        if down {
            MemberState::Down
        } else {
            MemberState::Up
        }
    }

    /// When the state last changed.
    pub(crate) fn since(&self) -> SystemTime {
        // Ends an expired ejection first, which moves `since`.
        let _ = self.state();
        UNIX_EPOCH + Duration::from_millis(self.since.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        self.since
            .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
    }

    /// Effective weight in thousandths of the configured weight's units,
    /// lowered while the member ramps up after coming back.
    pub(crate) fn effective_weight_milli(&self, now: u64) -> u64 {
        ramped_weight_milli(
            self.weight,
            self.ramp_from.load(Ordering::Relaxed),
            self.slow_start_ms,
            now,
        )
    }

    /// Whether this member ramps up after coming back at all.
    pub(crate) fn slow_start_enabled(&self) -> bool {
        self.slow_start_ms > 0
    }

    /// Whether slow start currently lowers this member's weight.
    pub(crate) fn ramping(&self, now: u64) -> bool {
        self.effective_weight_milli(now) < u64::from(self.weight) * 1000
    }

    /// Records an active check; returns the state change it caused, if any.
    pub(crate) fn record_check(
        &self,
        result: CheckResult,
        rise: u32,
        fall: u32,
    ) -> Option<(MemberState, MemberState)> {
        let ok = result.ok;
        *self
            .last_check
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(result);
        let before = self.state();
        if ok {
            self.health_checks_ok.fetch_add(1, Ordering::Relaxed);
            self.check_failures.store(0, Ordering::Relaxed);
            let n = self.check_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= rise && self.down.swap(false, Ordering::AcqRel) {
                self.ramp_from.store(now_ms(), Ordering::Relaxed);
                self.touch();
            }
        } else {
            self.health_checks_fail.fetch_add(1, Ordering::Relaxed);
            self.check_successes.store(0, Ordering::Relaxed);
            let n = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= fall && !self.down.swap(true, Ordering::AcqRel) {
                self.touch();
            }
        }
        let after = self.state();
        (before != after).then_some((before, after))
    }

    /// Records the outcome of one request for passive detection; returns
    /// the consecutive failures so far (0 after a success).
    pub(crate) fn record_request(&self, failed: bool) -> u32 {
        if failed {
            self.request_successes.store(0, Ordering::Relaxed);
            self.request_failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.request_failures.store(0, Ordering::Relaxed);
            self.request_successes.fetch_add(1, Ordering::Relaxed);
            0
        }
    }

    /// Ejects the member at `now` for `base` doubled once per ejection in a
    /// row, capped at `max`. An ejection streak ends once the member has
    /// stayed in for `max`. Returns the ejection time, or `None` when the
    /// member is already ejected.
    pub(crate) fn eject(&self, now: u64, base: Duration, max: Duration) -> Option<Duration> {
        let current = self.ejected_until.load(Ordering::Acquire);
        if current != 0 && now < current {
            return None;
        }
        let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        let last_end = self.ramp_from.load(Ordering::Relaxed);
        if last_end == 0 || now.saturating_sub(last_end) > max_ms {
            self.ejection_streak.store(0, Ordering::Relaxed);
        }
        let streak = self.ejection_streak.fetch_add(1, Ordering::Relaxed).min(20);
        let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
        let for_ms = base_ms.saturating_mul(1 << streak).min(max_ms.max(base_ms));
        let until = now.saturating_add(for_ms).max(1);
        if self
            .ejected_until
            .compare_exchange(current, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        // Slow start (if any) begins when the ejection ends.
        self.ramp_from.store(until, Ordering::Relaxed);
        self.request_failures.store(0, Ordering::Relaxed);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Some(Duration::from_millis(for_ms))
    }

    /// Whether passive detection has this member out at `now`.
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until != 0 && now < until
    }

    /// Milliseconds left of the ejection at `now` (0 when not ejected).
    pub(crate) fn ejected_for(&self, now: u64) -> u64 {
        self.ejected_until
            .load(Ordering::Acquire)
            .saturating_sub(now)
    }

    /// Takes the member out of rotation for good (or back in with `false`,
    /// when its address reappears before it has drained).
    pub(crate) fn set_draining(&self, draining: bool) {
        if self.draining.swap(draining, Ordering::AcqRel) != draining {
            self.touch();
        }
    }

    /// Consecutive active-check successes and failures.
    pub(crate) fn check_streaks(&self) -> (u32, u32) {
        (
            self.check_successes.load(Ordering::Relaxed),
            self.check_failures.load(Ordering::Relaxed),
        )
    }

    /// Consecutive request successes and failures (passive detection).
    pub(crate) fn request_streaks(&self) -> (u32, u32) {
        (
            self.request_successes.load(Ordering::Relaxed),
            self.request_failures.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn last_check(&self) -> Option<CheckResult> {
        self.last_check
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Times passive detection ejected this member.
    /// Response bodies from this member that failed after their head.
    pub(crate) fn body_errors_total(&self) -> u64 {
        self.body_errors.load(Ordering::Relaxed)
    }

    pub(crate) fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// Active checks that passed.
    pub(crate) fn health_checks_ok(&self) -> u64 {
        self.health_checks_ok.load(Ordering::Relaxed)
    }

    /// Active checks that failed.
    pub(crate) fn health_checks_fail(&self) -> u64 {
        self.health_checks_fail.load(Ordering::Relaxed)
    }
}

/// Decrements the member's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Member>);

impl InFlight {
    /// The member this request is in flight to.
    pub(crate) fn member(&self) -> &Member {
        &self.0
    }
}

/// Held by a streaming response body, so `least_conn` sees the whole
/// transfer; dropping it is the release. A body that fails is counted.
impl crate::body::Watch for InFlight {
    fn end(self, end: crate::body::End) {
        if end == crate::body::End::Failed {
            self.0.body_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(freed) = &self.0.slot_freed {
            freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Arc<Member> {
        Arc::new(Member::new(SocketAddr::from(([127, 0, 0, 1], 9)), 4))
    }

    fn check(ok: bool) -> CheckResult {
        CheckResult {
            ok,
            status: None,
            error: None,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn slow_start_ramps_linearly_from_a_tenth() {
        // Injected clock: started at 1000 ms, 10 s window.
        assert_eq!(ramped_weight_milli(4, 1000, 10_000, 1000), 400);
        assert_eq!(ramped_weight_milli(4, 1000, 10_000, 6000), 2200);
        assert_eq!(ramped_weight_milli(4, 1000, 10_000, 10_999), 3999);
        assert_eq!(ramped_weight_milli(4, 1000, 10_000, 11_000), 4000);
        // Off, never started, or not yet started: the full weight.
        assert_eq!(ramped_weight_milli(4, 1000, 0, 1500), 4000);
        assert_eq!(ramped_weight_milli(4, 0, 10_000, 1500), 4000);
        assert_eq!(ramped_weight_milli(4, 2000, 10_000, 1500), 4000);
    }

    #[test]
    fn slow_start_never_applies_at_boot() {
        let m = Member::new(SocketAddr::from(([127, 0, 0, 1], 9)), 3)
            .with_slow_start(Duration::from_secs(30));
        assert!(!m.ramping(now_ms()));
        assert_eq!(m.effective_weight_milli(now_ms()), 3000);
    }

    #[test]
    fn slow_start_begins_when_a_member_comes_back_up() {
        let m = Member::new(SocketAddr::from(([127, 0, 0, 1], 9)), 3)
            .with_slow_start(Duration::from_secs(3600));
        m.record_check(check(false), 1, 1);
        assert_eq!(m.state(), MemberState::Down);
        m.record_check(check(true), 1, 1);
        let now = now_ms();
        assert!(m.ramping(now));
        assert!(m.effective_weight_milli(now) < 400);
        assert_eq!(m.effective_weight_milli(now + 3_600_000), 3000);
    }

    #[test]
    fn rise_and_fall_count_consecutive_checks() {
        let m = member();
        assert_eq!(m.record_check(check(false), 2, 3), None);
        assert_eq!(m.record_check(check(false), 2, 3), None);
        // A success in between restarts the count.
        assert_eq!(m.record_check(check(true), 2, 3), None);
        assert_eq!(m.record_check(check(false), 2, 3), None);
        assert_eq!(m.record_check(check(false), 2, 3), None);
        assert_eq!(
            m.record_check(check(false), 2, 3),
            Some((MemberState::Up, MemberState::Down))
        );
        assert_eq!(m.record_check(check(false), 2, 3), None, "once per change");
        assert_eq!(m.record_check(check(true), 2, 3), None);
        assert_eq!(
            m.record_check(check(true), 2, 3),
            Some((MemberState::Down, MemberState::Up))
        );
        assert_eq!((m.health_checks_ok(), m.health_checks_fail()), (3, 6));
        assert_eq!(m.check_streaks(), (2, 0));
    }

    #[test]
    fn ejection_doubles_up_to_the_cap_and_ends_on_its_own() {
        let m = member();
        let (base, max) = (Duration::from_secs(10), Duration::from_secs(25));
        let t0 = 1_000;
        assert_eq!(m.eject(t0, base, max), Some(Duration::from_secs(10)));
        assert_eq!(m.eject(t0 + 1, base, max), None, "already ejected");
        assert_eq!(m.state_at(t0 + 9_999), MemberState::Ejected);
        assert_eq!(m.state_at(t0 + 10_000), MemberState::Up);
        let t1 = t0 + 12_000;
        assert_eq!(m.eject(t1, base, max), Some(Duration::from_secs(20)));
        assert_eq!(m.state_at(t1 + 19_999), MemberState::Ejected);
        let t2 = t1 + 21_000;
        assert_eq!(m.eject(t2, base, max), Some(Duration::from_secs(25)));
        // In long enough (more than max_eject_for): the streak starts over.
        let t3 = t2 + 25_000 + 26_000;
        assert_eq!(m.state_at(t3), MemberState::Up);
        assert_eq!(m.eject(t3, base, max), Some(Duration::from_secs(10)));
        assert_eq!(m.ejections_total(), 4);
    }

    #[test]
    fn down_wins_over_ejected_and_draining_over_both() {
        let m = member();
        m.eject(now_ms(), Duration::from_secs(60), Duration::from_secs(60));
        assert_eq!(m.state(), MemberState::Ejected);
        m.record_check(check(false), 1, 1);
        assert_eq!(m.state(), MemberState::Down);
        m.set_draining(true);
        assert_eq!(m.state(), MemberState::Draining);
    }

    #[test]
    fn max_connections_caps_try_begin() {
        let freed = Arc::new(Notify::new());
        let m = Arc::new(
            Member::new(SocketAddr::from(([127, 0, 0, 1], 9)), 1)
                .with_max_connections(2, freed.clone()),
        );
        let a = m.try_begin().expect("first");
        let _b = m.try_begin().expect("second");
        assert!(m.try_begin().is_none());
        let notified = freed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        drop(a);
        assert!(
            futures_now(notified.as_mut()),
            "a freed slot wakes pending requests"
        );
        assert!(m.try_begin().is_some());
    }

    /// Polls `f` once with a no-op waker.
    fn futures_now<F: std::future::Future + ?Sized>(f: std::pin::Pin<&mut F>) -> bool {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        let waker = std::task::Waker::from(Arc::new(Noop));
        let mut cx = std::task::Context::from_waker(&waker);
        f.poll(&mut cx).is_ready()
    }
}
