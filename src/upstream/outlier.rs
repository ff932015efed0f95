//! Passive ejection (outlier detection): request outcomes the proxy reports
//! eject a member after `consecutive_failures` in a row, for `eject_for`
//! doubled on each ejection in a row (up to `max_eject_for`); it comes back
//! on its own when the time is up. At most `max_ejected_percent` of a pool
//! is ejected at once.

use std::sync::Arc;

use super::member::Member;
use crate::config::OutlierConfig;

/// What one attempt against a member came to, as passive detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response head arrived with this status.
    Response(u16),
    /// Refused, reset, or timed out before a response head.
    ConnectFailure,
    /// Failed in a way that says nothing about the member (a client's body
    /// broke, a response with bad framing).
    Neutral,
}

/// Records `outcome` for `member` and ejects it when it has failed too often
/// in a row and the pool can spare it. Returns the ejection time, if ejected.
pub(crate) fn record(
    config: &OutlierConfig,
    members: &[Arc<Member>],
    member: &Member,
    outcome: Outcome,
    now: u64,
) -> Option<std::time::Duration> {
    let failed = match outcome {
        Outcome::Response(status) => config.count_5xx && status >= 500,
        Outcome::ConnectFailure => config.count_connect,
        Outcome::Neutral => return None,
    };
    let streak = member.record_request(failed);
    if config.consecutive_failures == 0 || streak < config.consecutive_failures {
        return None;
    }
    let ejected = members.iter().filter(|m| m.is_ejected(now)).count();
    let total = members.len().max(1);
    if (ejected + 1) * 100 > config.max_ejected_percent as usize * total {
        return None;
    }
    member.eject(now, config.eject_for, config.max_eject_for)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn config(count_5xx: bool, pct: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            count_connect: true,
            count_5xx,
            eject_for: Duration::from_secs(10),
            max_eject_for: Duration::from_secs(300),
            max_ejected_percent: pct,
        }
    }

    fn pool(n: u16) -> Vec<Arc<Member>> {
        (0..n)
            .map(|i| Arc::new(Member::new(SocketAddr::from(([127, 0, 0, 1], 9000 + i)), 1)))
            .collect()
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let (c, m, t) = (config(false, 50), pool(2), 1_000);
        assert_eq!(record(&c, &m, &m[0], Outcome::ConnectFailure, t), None);
        assert_eq!(record(&c, &m, &m[0], Outcome::ConnectFailure, t), None);
        assert_eq!(record(&c, &m, &m[0], Outcome::Response(200), t), None);
        assert_eq!(record(&c, &m, &m[0], Outcome::ConnectFailure, t), None);
        assert_eq!(record(&c, &m, &m[0], Outcome::ConnectFailure, t), None);
        assert_eq!(
            record(&c, &m, &m[0], Outcome::ConnectFailure, t),
            Some(Duration::from_secs(10))
        );
        assert!(m[0].is_ejected(t));
    }

    #[test]
    fn five_xx_counts_only_when_configured() {
        let m = pool(2);
        for _ in 0..5 {
            assert_eq!(
                record(&config(false, 50), &m, &m[0], Outcome::Response(500), 1),
                None
            );
        }
        let c = config(true, 50);
        assert_eq!(record(&c, &m, &m[1], Outcome::Response(503), 1), None);
        assert_eq!(record(&c, &m, &m[1], Outcome::Response(502), 1), None);
        assert!(record(&c, &m, &m[1], Outcome::Response(500), 1).is_some());
    }

    #[test]
    fn max_ejected_percent_keeps_part_of_the_pool() {
        let (c, m, t) = (config(false, 50), pool(4), 1_000);
        let mut ejected = 0;
        for member in &m {
            for _ in 0..3 {
                if record(&c, &m, member, Outcome::ConnectFailure, t).is_some() {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2);
        assert_eq!(m.iter().filter(|x| x.is_ejected(t)).count(), 2);
    }

    #[test]
    fn zero_consecutive_failures_turns_detection_off() {
        let mut c = config(true, 100);
        c.consecutive_failures = 0;
        let m = pool(1);
        for _ in 0..10 {
            assert_eq!(record(&c, &m, &m[0], Outcome::ConnectFailure, 1), None);
        }
    }
}
