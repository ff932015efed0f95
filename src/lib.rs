//! sluice: a caching reverse proxy and load balancer.
//!
//! The binary (`main.rs`) parses the command line and calls [`run`]; the
//! modules below each own one concern:
//!
//! - [`config`]: the TOML file, parsed once into validated types
//! - [`environment`]: what validation checks outside the file (certificate
//!   pairs load, server names resolve), and [`load_config`]
//! - [`listener`] and [`tls`]: accept loops, TLS termination, HTTP/1.1 + HTTP/2
//! - [`proxy_protocol`] and [`client_addr`]: who the client really is,
//!   from a PROXY header or a trusted `X-Forwarded-For`
//! - [`client_limits`]: per-client connection caps, head and keep-alive timers
//! - [`framing`]: HTTP/1.1 request framing rules, applied before hyper parses
//! - [`path`]: request paths normalised before routing
//! - [`router`]: host and path to route
//! - [`proxy`]: the request path that ties the others together
//! - [`ratelimit`]: per-route request limits and per-listener connection rates
//! - [`upstream`]: pools, members and balancing policies
//! - [`snapshot`]: the immutable runtime state swapped on reload
//! - [`reload`]: the config file read again and a new snapshot swapped in
//! - [`lifecycle`]: start-up, signals (SIGHUP reloads) and graceful drain
//! - [`notify`] and [`fd_limit`]: what a service manager sees and grants:
//!   systemd readiness notifications, the open-file limit
//! - [`probe`]: `--health-check URL`, a container's HEALTHCHECK
//! - [`metrics`], [`admin`], [`access_log`], [`request_id`]: what operators
//!   watch: Prometheus metrics, the admin API, one log line per request

#![warn(unreachable_pub)]

mod access_log;
mod admin;
pub mod allocator;
mod body;
mod cache;
mod client_addr;
mod client_limits;
mod compress;
mod config;
mod environment;
mod fd_limit;
mod framing;
mod grpc;
mod handover;
mod headers;
mod io;
mod lifecycle;
mod listener;
mod metrics;
mod notify;
mod path;
mod probe;
mod proxy;
mod proxy_protocol;
mod ratelimit;
mod reload;
mod reply;
mod request_id;
mod router;
mod snapshot;
mod tls;
mod upstream;
mod workers;

pub use config::{Config, ConfigErrors};
pub use environment::{load_config, upstream_addrs};
pub use lifecycle::run;
pub use probe::health_check;

/// Sets up `tracing` output on stderr as `[log]` says; `RUST_LOG`, when
/// set, wins over `[log] level`.
pub fn init_logging(config: &Config) {
    let log = &config.log;
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    // A failed write to stderr (its reader went away) loses that line; by
    // default tracing-subscriber would report it with eprintln!, which
    // panics on the same broken stderr and takes the daemon down.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let _ = match log.format {
        config::LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        config::LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Internals that the fuzz targets, the micro-benchmarks and the property
/// tests drive directly, re-exported at their module paths. Not an API:
/// nothing here is stable, and it is hidden from the documentation.
#[doc(hidden)]
pub mod testing {
    pub mod access_log {
        pub use crate::access_log::{configure, flush, send, Entry, Formatter};
    }
    pub mod cache {
        pub mod key {
            pub use crate::cache::key::{primary, url_of, variant, vary_names, EXTRA, VARIANT};
        }
        pub mod policy {
            pub use crate::cache::policy::{
                corrected_initial_age, current_age, freshness_lifetime, stale_if_error, storable,
                update_headers, usable, NotStorable, StoreRules, Use, MAX_HEURISTIC,
            };
        }
        pub mod serve {
            pub use crate::cache::serve::{from_entry, parse_range};
        }
        pub mod store {
            pub use crate::cache::store::{Entry, MemoryStore, Object, Store};
        }
    }
    pub mod compress {
        pub use crate::compress::Accepted;
        pub mod codec {
            pub use crate::compress::codec::{compress_all, decompress_all, CodecBody};
        }
    }
    pub mod config {
        pub use crate::config::{
            AccessLogConfig, AccessLogFormat, AccessLogTarget, Coding, Config, IgnoreParams,
            KeySpec, Level, Policy, RouteConfig, RouteRules,
        };
        pub mod units {
            pub use crate::config::units::{parse_duration, parse_size};
        }
    }
    pub mod environment {
        pub use crate::environment::System;
    }
    pub mod framing {
        pub use crate::framing::{FramingGuard, GuardLimits, Verdict, Verdicts, Violation};
    }
    pub mod headers {
        pub use crate::headers::{authority, Authority, AuthorityError};
        pub mod cache_control {
            pub use crate::headers::cache_control::CacheControl;
        }
        pub mod conditional {
            pub use crate::headers::conditional::{none_match, not_modified_since, weaken_etag};
        }
    }
    pub mod metrics {
        pub use crate::metrics::{class_index, get, method_index, SnapshotMetrics};
    }
    pub mod proxy_protocol {
        pub use crate::proxy_protocol::{
            encode, parse, Addresses, Header, HeaderError, Parsed, Version, V1_MAX, V2_MAX,
        };
    }
    pub mod request_id {
        pub use crate::request_id::generate;
    }
    pub mod router {
        pub use crate::router::Router;
    }
    pub mod upstream {
        pub mod balance {
            pub use crate::upstream::balance::{balancer_for, PickContext};
        }
        pub mod member {
            pub use crate::upstream::member::Member;
        }
        pub mod pool {
            pub use crate::upstream::pool::Pool;
        }
    }
}
