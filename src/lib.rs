//! sluice: a caching reverse proxy and load balancer.
//!
//! The binary (`main.rs`) parses the command line and calls [`run`]; the
//! modules below each own one concern:
//!
//! - [`config`]: the TOML file, parsed once into validated types
//! - [`environment`]: what validation checks outside the file (certificate
//!   pairs load, server names resolve), and [`load_config`]
//! - [`listener`] and [`tls`]: accept loops, TLS termination, HTTP/1.1 + HTTP/2
//! - [`client_limits`]: per-client connection caps, head and keep-alive timers
//! - [`framing`]: HTTP/1.1 request framing rules, applied before hyper parses
//! - [`router`]: host and path to route
//! - [`proxy`]: the request path that ties the others together
//! - [`ratelimit`]: per-route request limits and per-listener connection rates
//! - [`upstream`]: pools, members and balancing policies
//! - [`snapshot`]: the immutable runtime state swapped on reload
//! - [`reload`]: the config file read again and a new snapshot swapped in
//! - [`lifecycle`]: start-up, signals (SIGHUP reloads) and graceful drain
//! - [`metrics`], [`admin`], [`access_log`], [`request_id`]: what operators
//!   watch: Prometheus metrics, the admin API, one log line per request

pub mod access_log;
pub mod admin;
pub mod body;
pub mod cache;
pub mod client_limits;
pub mod compress;
pub mod config;
pub mod environment;
pub mod framing;
pub mod headers;
mod io;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod reply;
pub mod request_id;
pub mod router;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod workers;

pub use config::Config;
pub use environment::load_config;
pub use lifecycle::run;

/// Sets up `tracing` output on stderr as `[log]` says; `RUST_LOG`, when
/// set, wins over `[log] level`.
pub fn init_logging(log: &config::LogConfig) {
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
