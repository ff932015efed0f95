//! The open-file limit (`RLIMIT_NOFILE`): every client connection and the
//! upstream connection serving it are one file descriptor each, and many
//! systems start services with a soft limit of 1024, far below what the
//! default `max_connections` (10,000) needs. At start sluice raises its own
//! soft limit up to what the config needs, within the hard limit that only
//! the administrator (`LimitNOFILE=`, `ulimit -Hn`) can raise, and warns
//! when that is lower.

use crate::config::Config;

/// Descriptors beside the connections: listening sockets, the admin
/// listener and its clients, the access log, health checks, DNS, and the
/// runtime's own (epoll, event fds, one set per worker).
const RESERVE: u64 = 1024;

/// Descriptors `config` may hold open with `workers` worker threads: two per
/// client connection (the client's and the upstream one serving it) on
/// every listener, plus the idle keep-alive connections each worker keeps
/// per configured server, plus [`RESERVE`].
pub(crate) fn needed(config: &Config, workers: usize) -> u64 {
    let clients: u64 = config
        .listeners
        .iter()
        .map(|l| l.limits.max_connections as u64)
        .fold(0, u64::saturating_add);
    let idle: u64 = config
        .pools
        .iter()
        .map(|p| {
            (p.servers.len() as u64)
                .saturating_mul(p.max_idle_per_server as u64)
                .saturating_mul(workers as u64)
        })
        .fold(0, u64::saturating_add);
    clients
        .saturating_mul(2)
        .saturating_add(idle)
        .saturating_add(RESERVE)
}

/// What to do with the soft limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The soft limit already covers the need; it is never lowered.
    Keep,
    /// Raise the soft limit to this, which covers the need.
    Raise(u64),
    /// The hard limit is below the need: raise the soft limit to it (when
    /// it is higher than the soft one) and warn.
    Short { hard: u64 },
}

/// The plan for `needed` descriptors under the current `soft` and `hard`
/// limits (`u64::MAX` is unlimited, as `RLIM_INFINITY` is on Linux).
pub(crate) fn plan(needed: u64, soft: u64, hard: u64) -> Plan {
    if soft >= needed {
        Plan::Keep
    } else if hard >= needed {
        Plan::Raise(needed)
    } else {
        Plan::Short { hard }
    }
}

/// Raises the soft limit for `config` as [`plan`] says, logging what it did
/// and warning when the hard limit stands in the way. Called once at start:
/// `max_connections` is read only then.
pub(crate) fn raise(config: &Config, workers: usize) {
    let needed = needed(config, workers);
    let Some((soft, hard)) = get() else {
        tracing::warn!("cannot read the open-file limit (RLIMIT_NOFILE); leaving it as it is");
        return;
    };
    let target = match plan(needed, soft, hard) {
        Plan::Keep => {
            tracing::debug!(soft, needed, "open-file limit is enough");
            return;
        }
        Plan::Raise(to) => to,
        Plan::Short { hard } => {
            tracing::warn!(
                needed,
                hard,
                "the open-file hard limit is below what max_connections needs \
                 (two descriptors per connection); raise LimitNOFILE= or `ulimit -Hn`, \
                 or lower max_connections"
            );
            if hard <= soft {
                return;
            }
            hard
        }
    };
    match set(target, hard) {
        Ok(()) => tracing::info!(from = soft, to = target, "raised the open-file limit"),
        Err(e) => {
            tracing::warn!(error = %e, from = soft, to = target, "cannot raise the open-file limit")
        }
    }
}

/// The soft and hard `RLIMIT_NOFILE`.
fn get() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then(|| (to_u64(limit.rlim_cur), to_u64(limit.rlim_max)))
}

fn set(soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: from_u64(soft),
        rlim_max: from_u64(hard),
    };
    // SAFETY: setrlimit only reads the struct we pass.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[allow(clippy::useless_conversion)]
fn to_u64(v: libc::rlim_t) -> u64 {
    if v == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        u64::try_from(v).unwrap_or(u64::MAX)
    }
}

#[allow(clippy::useless_conversion)]
fn from_u64(v: u64) -> libc::rlim_t {
    if v == u64::MAX {
        libc::RLIM_INFINITY
    } else {
        libc::rlim_t::try_from(v).unwrap_or(libc::RLIM_INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soft_limit_that_covers_the_need_is_kept_never_lowered() {
        assert_eq!(plan(21_024, 65_536, 65_536), Plan::Keep);
        assert_eq!(plan(21_024, 21_024, 524_288), Plan::Keep);
    }

    #[test]
    fn a_low_soft_limit_is_raised_to_the_need_within_the_hard_limit() {
        assert_eq!(plan(21_024, 1024, 524_288), Plan::Raise(21_024));
        assert_eq!(plan(21_024, 1024, 21_024), Plan::Raise(21_024));
        assert_eq!(plan(21_024, 1024, u64::MAX), Plan::Raise(21_024));
    }

    #[test]
    fn a_hard_limit_below_the_need_is_reported() {
        assert_eq!(plan(21_024, 1024, 4096), Plan::Short { hard: 4096 });
        assert_eq!(plan(21_024, 4096, 4096), Plan::Short { hard: 4096 });
    }

    #[test]
    fn two_descriptors_per_connection_plus_idle_upstreams_plus_reserve() {
        struct Offline;
        impl crate::config::Environment for Offline {
            fn load_pair(
                &self,
                _: &crate::config::CertPair,
            ) -> Result<(), crate::config::PairError> {
                Ok(())
            }
            fn resolve(
                &self,
                _: &crate::config::ResolverConfig,
                addr: &crate::config::ServerAddr,
            ) -> std::io::Result<Vec<std::net::SocketAddr>> {
                match addr {
                    crate::config::ServerAddr::Ip(a) => Ok(vec![*a]),
                    _ => Err(std::io::ErrorKind::NotFound.into()),
                }
            }
            fn log_file(&self, _: &std::path::Path) -> std::io::Result<()> {
                Ok(())
            }

            fn cache_dir(&self, _: &std::path::Path) -> std::io::Result<()> {
                Ok(())
            }
        }
        let text = r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"

[[listener]]
name = "b"
listen = "127.0.0.1:8081"
[listener.limits]
max_connections = 500

[[route]]
pool = "app"

[pool.app]
max_idle_per_server = 10
servers = [ { addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" } ]

[limits]
max_connections = 2000
"#;
        let config = Config::parse(std::path::Path::new("t.toml"), text, &Offline).expect("valid");
        // (2000 + 500) × 2 + 2 servers × 10 idle × 3 workers + reserve
        assert_eq!(needed(&config, 3), 5000 + 60 + RESERVE);
    }
}
