//! Retry policy pieces that are not about which member comes next: which
//! failures may be retried ([`after_error`]), the backoff between attempts
//! and the per-pool retry budget.
//!
//! The budget compares two decaying rates, requests and retries over about
//! the last second, kept in atomics: a retry is allowed while retries stay
//! under `retry_budget` of the request rate, or under
//! `min_retries_per_second`, whichever is more. In a full outage this caps
//! upstream traffic at (1 + budget) times the client traffic instead of
//! (1 + retries) times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::outlier::Outcome;
use super::pool::UpstreamError;
use crate::config::RetryOn;

/// What a failed attempt means: how it counts against the member (passive
/// ejection), and whether the request may go to another member (when the
/// pool's budget and attempts allow).
///
/// An idempotent request without a body may be retried after any failure
/// `retry_on` lists. Any other request only when its member refused the
/// connection (or did not accept it in time) and its body was not read:
/// nothing reached a member then, which is also when nginx passes a POST
/// to the next server.
pub(crate) fn after_error(
    error: &UpstreamError,
    retry_on: &RetryOn,
    idempotent: bool,
    body_untouched: bool,
) -> (Outcome, bool) {
    let (outcome, listed) = match error {
        UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. } => {
            (Outcome::ConnectFailure, retry_on.connect)
        }
        UpstreamError::BeforeResponse { .. } => (Outcome::ConnectFailure, retry_on.reset),
        // A member draining its connection is not failing.
        UpstreamError::Refused { .. } => (Outcome::Neutral, retry_on.connect),
        UpstreamError::ResponseTimeout { .. } => (Outcome::ConnectFailure, retry_on.timeout),
        UpstreamError::BadResponse { .. } | UpstreamError::Unsupported { .. } => {
            (Outcome::Neutral, false)
        }
    };
    let may_retry = if idempotent {
        listed
    } else {
        listed && !error.request_may_have_reached_member() && body_untouched
    };
    (outcome, may_retry)
}

/// Exponential backoff with full jitter before attempt `attempt` (1 for the
/// first retry): uniform in `0..=min(base * 2^(attempt-1), 10 * base)`.
pub(crate) fn backoff(base: Duration, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
    if base.is_zero() || attempt == 0 {
        return Duration::ZERO;
    }
    let base_us = u64::try_from(base.as_micros()).unwrap_or(u64::MAX / 16);
    let cap = base_us
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(base_us.saturating_mul(10));
    Duration::from_micros(rng.u64(0..=cap))
}

/// Events per second over a sliding one-second window: the current
/// second's count plus the previous second's, weighted by how much of it
/// still overlaps the window.
#[derive(Debug, Default)]
struct Rate {
    /// The second `current` counts.
    second: AtomicU64,
    current: AtomicU64,
    previous: AtomicU64,
}

impl Rate {
    fn roll(&self, now_ms: u64) {
        let second = now_ms / 1000;
        let seen = self.second.load(Ordering::Acquire);
        if second != seen
            && self
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let last = self.current.swap(0, Ordering::AcqRel);
            let previous = if second == seen + 1 { last } else { 0 };
            self.previous.store(previous, Ordering::Release);
        }
    }

    fn add(&self, now_ms: u64) {
        self.roll(now_ms);
        self.current.fetch_add(1, Ordering::AcqRel);
    }

    fn per_second(&self, now_ms: u64) -> f64 {
        self.roll(now_ms);
        let into = (now_ms % 1000) as f64 / 1000.0;
        self.previous.load(Ordering::Acquire) as f64 * (1.0 - into)
            + self.current.load(Ordering::Acquire) as f64
    }
}

/// One pool's retry budget.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    requests: Rate,
    retries: Rate,
}

impl RetryBudget {
    pub(crate) fn new(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget {
            ratio,
            min_per_second: f64::from(min_per_second),
            requests: Rate::default(),
            retries: Rate::default(),
        }
    }

    /// Counts one client request to the pool.
    pub(crate) fn request(&self, now_ms: u64) {
        self.requests.add(now_ms);
    }

    /// Takes one retry from the budget, if there is room.
    pub(crate) fn try_retry(&self, now_ms: u64) -> bool {
        let allowed = (self.requests.per_second(now_ms) * self.ratio).max(self.min_per_second);
        if self.retries.per_second(now_ms) + 1.0 <= allowed {
            self.retries.add(now_ms);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_capped_at_ten_times_the_base() {
        let mut rng = fastrand::Rng::with_seed(7);
        let base = Duration::from_millis(10);
        assert_eq!(backoff(Duration::ZERO, 3, &mut rng), Duration::ZERO);
        for attempt in 1..=8u32 {
            let cap = Duration::from_millis(10 * (1u64 << (attempt - 1)).min(10));
            let samples: Vec<Duration> =
                (0..200).map(|_| backoff(base, attempt, &mut rng)).collect();
            assert!(samples.iter().all(|d| *d <= cap), "attempt {attempt}");
            // Full jitter: spread over the whole range, not clustered at the cap.
            assert!(samples.iter().any(|d| *d < cap / 4), "attempt {attempt}");
            assert!(
                samples.iter().any(|d| *d > cap * 3 / 4),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn budget_allows_its_share_of_the_request_rate() {
        let b = RetryBudget::new(0.2, 0);
        let t = 10_000;
        for _ in 0..100 {
            b.request(t);
        }
        let granted = (0..100).filter(|_| b.try_retry(t)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn budget_always_allows_the_minimum_per_second() {
        let b = RetryBudget::new(0.2, 3);
        let t = 5_000;
        b.request(t);
        assert_eq!((0..10).filter(|_| b.try_retry(t)).count(), 3);
        // A second later the window has moved on: three more.
        assert_eq!((0..10).filter(|_| b.try_retry(t + 2_000)).count(), 3);
    }

    #[test]
    fn the_window_slides() {
        let r = Rate::default();
        for _ in 0..10 {
            r.add(1_000);
        }
        assert_eq!(r.per_second(1_999), 10.0);
        // Half-way through the next second, half of the last one counts.
        assert!((r.per_second(2_500) - 5.0).abs() < 1e-9);
        assert_eq!(r.per_second(4_000), 0.0);
    }

    mod after_error {
        use super::super::*;
        use std::net::SocketAddr;

        const ADDR: SocketAddr =
            SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

        fn connect() -> UpstreamError {
            UpstreamError::Connect {
                addr: ADDR,
                reason: "refused".into(),
            }
        }
        fn connect_timeout() -> UpstreamError {
            UpstreamError::ConnectTimeout { addr: ADDR }
        }
        fn reset() -> UpstreamError {
            UpstreamError::BeforeResponse {
                addr: ADDR,
                reason: "reset".into(),
            }
        }
        fn timeout() -> UpstreamError {
            UpstreamError::ResponseTimeout {
                addr: ADDR,
                after: Duration::from_secs(1),
            }
        }
        fn bad() -> UpstreamError {
            UpstreamError::BadResponse {
                addr: ADDR,
                reason: "framing".into(),
            }
        }

        fn all() -> RetryOn {
            RetryOn {
                connect: true,
                reset: true,
                timeout: true,
                status_502: true,
                status_503: true,
                status_504: true,
            }
        }

        #[test]
        fn idempotent_requests_retry_what_retry_on_lists() {
            let on = all();
            for e in [connect(), connect_timeout(), reset(), timeout()] {
                assert_eq!(
                    after_error(&e, &on, true, false),
                    (Outcome::ConnectFailure, true),
                    "{e}"
                );
            }
            let off = RetryOn {
                connect: false,
                reset: false,
                timeout: false,
                ..all()
            };
            for e in [connect(), connect_timeout(), reset(), timeout()] {
                assert_eq!(
                    after_error(&e, &off, true, true),
                    (Outcome::ConnectFailure, false),
                    "{e}"
                );
            }
        }

        #[test]
        fn a_malformed_response_is_neutral_and_never_retried() {
            assert_eq!(
                after_error(&bad(), &all(), true, true),
                (Outcome::Neutral, false)
            );
        }

        #[test]
        fn other_requests_retry_only_when_nothing_reached_a_member() {
            let on = all();
            assert_eq!(
                after_error(&connect(), &on, false, true),
                (Outcome::ConnectFailure, true)
            );
            assert_eq!(
                after_error(&connect_timeout(), &on, false, true),
                (Outcome::ConnectFailure, true)
            );
            for e in [reset(), timeout()] {
                assert_eq!(
                    after_error(&e, &on, false, true),
                    (Outcome::ConnectFailure, false),
                    "{e}"
                );
            }
        }

        #[test]
        fn a_body_already_read_is_never_sent_twice() {
            assert_eq!(
                after_error(&connect(), &all(), false, false),
                (Outcome::ConnectFailure, false)
            );
        }

        #[test]
        fn a_refused_connection_is_retried_only_when_retry_on_lists_connect() {
            let on = RetryOn {
                connect: false,
                ..all()
            };
            assert_eq!(
                after_error(&connect(), &on, false, true),
                (Outcome::ConnectFailure, false)
            );
        }
    }
}
