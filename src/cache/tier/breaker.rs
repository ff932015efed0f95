//! A circuit breaker for a remote tier: after `threshold` failures in a row
//! it opens and the tier is not asked at all (each lookup is an immediate
//! miss) for `cooldown`; then one request is let through as a probe. A
//! success closes it, a failure opens it for another `cooldown`. Lock-free:
//! the request path pays two atomic loads while it is closed.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

#[derive(Debug)]
pub(crate) struct Breaker {
    name: &'static str,
    threshold: u32,
    cooldown: Duration,
    /// Failures since the last success.
    failures: AtomicU32,
    /// While open: when the next probe may go, in ms after `epoch`
    /// (at least 1); 0 while closed.
    open_until: AtomicU64,
    epoch: Instant,
    /// `sluice_cache_tier_circuit_open{tier}`.
    gauge: IntGauge,
}

impl Breaker {
    pub(crate) fn new(
        name: &'static str,
        threshold: u32,
        cooldown: Duration,
        gauge: IntGauge,
    ) -> Breaker {
        gauge.set(0);
        Breaker {
            name,
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
            gauge,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn cooldown_ms(&self) -> u64 {
        u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether to ask the tier now: always while closed; while open, once
    /// per `cooldown` (the probe).
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    now.saturating_add(self.cooldown_ms()),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// The tier answered.
    pub(crate) fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.load(Ordering::Relaxed) != 0
            && self.open_until.swap(0, Ordering::AcqRel) != 0
        {
            self.gauge.set(0);
            tracing::info!(tier = self.name, "cache tier answers again; circuit closed");
        }
    }

    /// The tier failed or was too slow.
    pub(crate) fn failure(&self) {
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n < self.threshold {
            return;
        }
        let next = self.now_ms().saturating_add(self.cooldown_ms());
        if self.open_until.swap(next, Ordering::AcqRel) == 0 {
            self.gauge.set(1);
            tracing::warn!(
                tier = self.name,
                failures = n,
                cooldown_ms = self.cooldown_ms(),
                "cache tier failing; circuit open, not asking it until a probe succeeds"
            );
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(cooldown: Duration) -> Breaker {
        Breaker::new("test", 3, cooldown, IntGauge::new("t_open", "t").unwrap())
    }

    #[test]
    fn opens_after_the_threshold_and_closes_on_success() {
        let b = breaker(Duration::from_secs(3600));
        b.failure();
        b.failure();
        assert!(b.allow() && !b.is_open(), "two failures: still closed");
        b.failure();
        assert!(b.is_open());
        assert_eq!(b.gauge.get(), 1);
        assert!(!b.allow(), "open: the tier is not asked");
        b.success();
        assert!(b.allow() && !b.is_open());
        assert_eq!(b.gauge.get(), 0);
    }

    #[test]
    fn an_open_breaker_lets_one_probe_through_per_cooldown() {
        let b = breaker(Duration::ZERO);
        for _ in 0..3 {
            b.failure();
        }
        assert!(b.is_open());
        // The cooldown is over at once: one probe, then closed again only
        // by a success.
        assert!(b.allow(), "the probe");
        b.failure();
        assert!(b.is_open(), "a failed probe keeps it open");
        assert!(b.allow());
        b.success();
        assert!(!b.is_open());
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = breaker(Duration::from_secs(3600));
        b.failure();
        b.failure();
        b.success();
        b.failure();
        b.failure();
        assert!(!b.is_open());
    }
}
