//! The immutable runtime view of one config: compiled routes, live pools and
//! TLS settings. Requests load the current snapshot from an `ArcSwap` (no
//! lock); a reload builds a new one and swaps it in, so in-flight requests
//! finish on the snapshot they started with.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::ratelimit::{self, ConnectionLimiter, RouteLimiter};
use crate::router::Router;
use crate::tls::{self, TlsError};
use crate::upstream::pool::Pool;
use crate::upstream::tls::UpstreamTls;

/// Shared, swappable runtime state: requests load the current snapshot,
/// a reload stores a new one.
pub(crate) type State = Arc<arc_swap::ArcSwap<Snapshot>>;

#[derive(Debug)]
pub(crate) struct Snapshot {
    pub config: Arc<Config>,
    pub router: Router,
    pub pools: Vec<Arc<Pool>>,
    /// rustls settings per TLS listener name.
    pub tls: HashMap<String, Arc<rustls::ServerConfig>>,
    /// Request limiters by route name, for routes with a `rate_limit`.
    pub rate_limits: HashMap<String, Arc<RouteLimiter>>,
    /// New-connection limiters by listener name, for listeners with a
    /// `max_connection_rate`.
    pub connection_rates: HashMap<String, Arc<ConnectionLimiter>>,
    /// Pre-resolved metric handles for the request path.
    pub metrics: crate::metrics::SnapshotMetrics,
    /// The response cache; carried over by reloads that keep its size.
    pub cache: Arc<crate::cache::Cache>,
    /// Whether some pool sends PROXY headers upstream: only then does a
    /// client connection look up the address it was accepted on.
    pub sends_proxy_protocol: bool,
}

impl Snapshot {
    /// Builds the runtime state for `config`. Pools whose settings did not
    /// change are carried over from `previous`, keeping their idle upstream
    /// connections and balancing position.
    pub(crate) fn build(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, TlsError> {
        let mut pools: Vec<Arc<Pool>> = Vec::with_capacity(config.pools.len());
        for pc in &config.pools {
            // A pool with TLS is always built anew, so a reload re-reads
            // its CA, certificate and key files (and warns again about
            // `verify = false`).
            let kept = previous.and_then(|prev| {
                prev.pools
                    .iter()
                    .find(|p| p.name == pc.name && p.config == *pc && pc.tls.is_none())
                    .cloned()
            });
            let pool = match kept {
                Some(p) => p,
                None => {
                    let tls = match &pc.tls {
                        Some(t) => Some(Arc::new(UpstreamTls::load(&pc.name, t)?)),
                        None => None,
                    };
                    Pool::start(pc, tls)
                }
            };
            pools.push(pool);
        }
        let router = Router::new(&config.routes, |name| {
            pools.iter().position(|p| p.name == name)
        });
        let mut tls = HashMap::new();
        for l in &config.listeners {
            if let Some(t) = &l.tls {
                tls.insert(l.name.clone(), tls::server_config(t)?);
            }
        }
        // Unchanged limits keep their buckets across a reload.
        let rate_limits =
            ratelimit::route_limiters(&config.routes, previous.map(|p| &p.rate_limits));
        let connection_rates = ratelimit::connection_limiters(
            &config.listeners,
            previous.map(|p| &p.connection_rates),
        );
        let metrics = crate::metrics::SnapshotMetrics::build(&config, &pools);
        let cache = crate::cache::Cache::carry_over(previous.map(|p| &p.cache), &config.cache);
        let sends_proxy_protocol = config
            .pools
            .iter()
            .any(|p| p.send_proxy_protocol != crate::config::SendProxy::Off);
        Ok(Snapshot {
            sends_proxy_protocol,
            cache,
            metrics,
            config: Arc::new(config),
            router,
            pools,
            tls,
            rate_limits,
            connection_rates,
        })
    }
}
