//! `kind = "redis"`: the second tier in Redis, one server or a Redis
//! Cluster, shared by every instance that names the same Redis and
//! `key_prefix`.
//!
//! Each key holds one record ([`super::record`]: lengths and checksums, so
//! garbage is a miss and is deleted) under `<key_prefix><cache key>`, with
//! a TTL of the entry's remaining freshness plus the longest stale window
//! that could still serve it. Each tag is a set `<key_prefix>tag:<tag>` of
//! the keys it names, for purges by tag; purges by URL, prefix or
//! everything walk the matching keys with `SCAN` (on every primary of a
//! cluster).
//!
//! Redis must never be a single point of failure: every operation has the
//! `timeout` (slower is a miss), a circuit breaker stops asking after
//! repeated failures and probes back, and the connection (a multiplexed
//! connection manager, or a cluster connection) reconnects on its own. No
//! request ever waits for a connection to be set up: until the first one
//! is, lookups are misses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue};

use super::breaker::Breaker;
use super::record;
use super::{Fetched, Tier, TierError, TierFuture, TierStats};
use crate::cache::key::VARIANT;
use crate::cache::purge::Target;
use crate::cache::store::Object;
use crate::config::{redact_url, RedisEndpoint, RedisTierConfig};

/// Failures in a row that open the circuit.
const BREAKER_THRESHOLD: u32 = 5;
/// How long an open circuit waits before a probe.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// How long connecting may take (off the request path).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Purges walk keys and may touch many: each of their commands gets at
/// least this long.
const PURGE_PATIENCE: Duration = Duration::from_secs(2);
/// How long a `Vary` marker lives (each fill of a variant stores it again).
const MARKER_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often the size gauges are read from Redis.
const STATS_EVERY: Duration = Duration::from_secs(5);
/// Keys a `SCAN` step asks for, and keys per `UNLINK`.
const BATCH: usize = 500;

/// One connection, shared by every request (multiplexed; cheap to clone).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

pub(crate) struct RedisTier {
    config: RedisTierConfig,
    conn: Arc<OnceLock<Conn>>,
    breaker: Breaker,
    bytes: AtomicU64,
    objects: AtomicU64,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("prefix", &self.config.key_prefix)
            .field("timeout", &self.config.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisTier {
    /// The tier for `config`; connecting starts in the background on the
    /// tier runtime, and nothing waits for it.
    pub(crate) fn open(config: &RedisTierConfig) -> Arc<RedisTier> {
        let gauge = crate::metrics::get()
            .cache_tier_circuit_open
            .with_label_values(&["redis"]);
        let tier = Arc::new(RedisTier {
            config: config.clone(),
            conn: Arc::new(OnceLock::new()),
            breaker: Breaker::new("redis", BREAKER_THRESHOLD, BREAKER_COOLDOWN, gauge),
            bytes: AtomicU64::new(0),
            objects: AtomicU64::new(0),
        });
        super::runtime().spawn(connect(config.endpoint.clone(), tier.conn.clone()));
        super::runtime().spawn(watch_size(Arc::downgrade(&tier)));
        tier
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.config.key_prefix)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}tag:{tag}", self.config.key_prefix)
    }

    /// Runs `cmd` within the tier's timeout, through the breaker.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, TierError> {
        self.query_within(cmd, self.config.timeout).await
    }

    async fn query_within<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        patience: Duration,
    ) -> Result<T, TierError> {
        if !self.breaker.allow() {
            return Err(TierError::Unavailable("circuit open"));
        }
        let Some(conn) = self.conn.get() else {
            self.breaker.failure();
            return Err(TierError::Unavailable("not connected yet"));
        };
        let mut conn = conn.clone();
        match tokio::time::timeout(patience, conn.query::<T>(cmd)).await {
            Ok(Ok(value)) => {
                self.breaker.success();
                Ok(value)
            }
            Ok(Err(e)) => {
                self.breaker.failure();
                tracing::debug!(error = %e, "redis command failed");
                Err(TierError::Unavailable("redis error"))
            }
            Err(_) => {
                self.breaker.failure();
                Err(TierError::Timeout)
            }
        }
    }

    /// The key's TTL: the entry's remaining freshness plus the longest
    /// window in which a stale copy may still be served.
    fn ttl(&self, object: &Object, now: SystemTime) -> Duration {
        match object {
            Object::Response(e) => {
                let fresh = e.lifetime.saturating_sub(e.age(now));
                let own =
                    e.cc.stale_while_revalidate
                        .max(e.cc.stale_if_error)
                        .map_or(Duration::ZERO, Duration::from_secs);
                (fresh + own.max(self.config.stale)).max(Duration::from_secs(1))
            }
            Object::Vary { .. } => MARKER_TTL,
        }
    }

    async fn put_object(&self, key: &str, object: &Object) -> Result<(), TierError> {
        let bytes = record::encode(key, object);
        let ttl = self.ttl(object, SystemTime::now());
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let full = self.key(key);
        let mut set = redis::cmd("SET");
        set.arg(&full).arg(bytes).arg("PX").arg(ms);
        self.query::<()>(&set).await?;
        if let Object::Response(e) = object {
            for tag in e.tags.iter() {
                let tag_key = self.tag_key(tag);
                let mut add = redis::cmd("SADD");
                add.arg(&tag_key).arg(&full);
                self.query::<i64>(&add).await?;
                // A new set gets the entry's TTL; an old one keeps the
                // longest of its members' (Redis 7: NX, GT).
                for flag in ["NX", "GT"] {
                    let mut expire = redis::cmd("PEXPIRE");
                    expire.arg(&tag_key).arg(ms).arg(flag);
                    self.query::<i64>(&expire).await?;
                }
            }
        }
        Ok(())
    }

    /// The record under `key`, read within `patience`.
    async fn get_object(
        &self,
        key: &str,
        patience: Duration,
    ) -> Result<Option<Fetched>, TierError> {
        let full = self.key(key);
        let mut get = redis::cmd("GET");
        get.arg(&full);
        let Some(bytes) = self.query_within::<Option<Vec<u8>>>(&get, patience).await? else {
            return Ok(None);
        };
        match record::decode(&bytes) {
            Ok((stored, object)) if stored == key => Ok(Some(Fetched::Object(Arc::new(object)))),
            Ok(_) => Err(record::RecordError::Malformed("another key's record").into()),
            Err(e) => {
                // Garbage is a miss, and goes.
                let mut del = redis::cmd("UNLINK");
                del.arg(&full);
                let _ = self.query::<i64>(&del).await;
                Err(e.into())
            }
        }
    }

    /// The cache keys under the tier's prefix that start with `stem`, from
    /// every primary.
    async fn scan(&self, stem: &str) -> Result<Vec<String>, TierError> {
        let pattern = format!("{}*", glob_escape(&self.key(stem)));
        let mut found = Vec::new();
        for node in self.primaries().await? {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(BATCH);
                let (next, keys): (u64, Vec<Vec<u8>>) = self.on_node(&scan, node.as_ref()).await?;
                for k in keys {
                    let Ok(k) = String::from_utf8(k) else {
                        continue;
                    };
                    if let Some(cache_key) = k.strip_prefix(self.config.key_prefix.as_str()) {
                        found.push(cache_key.to_string());
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(found)
    }

    /// Where keys live: the one server (`None`), or each primary of the
    /// cluster by address.
    async fn primaries(&self) -> Result<Vec<Option<(String, u16)>>, TierError> {
        match self.conn.get() {
            Some(Conn::Cluster(_)) => {
                let mut nodes = redis::cmd("CLUSTER");
                nodes.arg("NODES");
                let text: String = self.query_within(&nodes, PURGE_PATIENCE).await?;
                Ok(cluster_primaries(&text).into_iter().map(Some).collect())
            }
            _ => Ok(vec![None]),
        }
    }

    /// Runs `cmd` on one cluster node (or on the one server).
    async fn on_node<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        node: Option<&(String, u16)>,
    ) -> Result<T, TierError> {
        let (Some((host, port)), Some(Conn::Cluster(conn))) = (node, self.conn.get()) else {
            return self.query_within(cmd, PURGE_PATIENCE).await;
        };
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port: *port,
        });
        let mut conn = conn.clone();
        let value = tokio::time::timeout(PURGE_PATIENCE, conn.route_command(cmd.clone(), routing))
            .await
            .map_err(|_| TierError::Timeout)?
            .map_err(|_| TierError::Unavailable("redis error"))?;
        redis::from_redis_value(value).map_err(|_| TierError::Unavailable("unexpected reply"))
    }

    /// Deletes `keys` (cache keys); how many were there.
    async fn delete(&self, keys: &[String]) -> Result<u64, TierError> {
        let mut gone = 0;
        match self.conn.get() {
            Some(Conn::Cluster(_)) => {
                // Keys of a cluster lie in different slots: one at a time.
                for k in keys {
                    let mut del = redis::cmd("UNLINK");
                    del.arg(self.key(k));
                    gone += self.query_within::<u64>(&del, PURGE_PATIENCE).await?;
                }
            }
            _ => {
                for chunk in keys.chunks(BATCH) {
                    let mut del = redis::cmd("UNLINK");
                    for k in chunk {
                        del.arg(self.key(k));
                    }
                    gone += self.query_within::<u64>(&del, PURGE_PATIENCE).await?;
                }
            }
        }
        Ok(gone)
    }

    /// Marks the response under `key` stale as of `now`, keeping its TTL;
    /// whether it was there.
    async fn make_stale(&self, key: &str, now: SystemTime) -> Result<bool, TierError> {
        let Some(Fetched::Object(object)) =
            self.get_object(key, PURGE_PATIENCE).await.ok().flatten()
        else {
            return Ok(false);
        };
        let Object::Response(entry) = &*object else {
            return Ok(false);
        };
        let age = entry.age(now);
        if age < entry.lifetime {
            let mut stale = entry.clone();
            stale.lifetime = age;
            let mut set = redis::cmd("SET");
            set.arg(self.key(key))
                .arg(record::encode(key, &Object::Response(stale)))
                .arg("KEEPTTL")
                .arg("XX");
            self.query_within::<Option<String>>(&set, PURGE_PATIENCE)
                .await?;
        }
        Ok(true)
    }

    async fn purge_target(
        &self,
        target: &Target,
        soft: bool,
        now: SystemTime,
    ) -> Result<u64, TierError> {
        let (keys, responses) = match target {
            Target::Tag(tag) => {
                let mut members = redis::cmd("SMEMBERS");
                members.arg(self.tag_key(tag));
                let full: Vec<String> = self.query_within(&members, PURGE_PATIENCE).await?;
                let keys: Vec<String> = full
                    .into_iter()
                    .filter_map(|k| {
                        k.strip_prefix(self.config.key_prefix.as_str())
                            .map(str::to_string)
                    })
                    .collect();
                let n = keys.len();
                (keys, n)
            }
            Target::Url(stem) | Target::Prefix(stem) => {
                let mut keys = self.scan(stem).await?;
                keys.retain(|k| target.names(k, None));
                let n = responses_among(&mut keys);
                (keys, n)
            }
            Target::All => {
                let mut keys = self.scan("").await?;
                // Tag sets go with everything, but are not responses.
                let tag_sets: Vec<String> = keys
                    .iter()
                    .filter(|k| k.starts_with("tag:"))
                    .cloned()
                    .collect();
                keys.retain(|k| !k.starts_with("tag:"));
                let n = responses_among(&mut keys);
                if !soft {
                    self.delete(&tag_sets).await?;
                }
                (keys, n)
            }
        };
        if soft {
            let mut named = 0;
            for k in &keys {
                if self.make_stale(k, now).await? {
                    named += 1;
                }
            }
            return Ok(named);
        }
        let gone = self.delete(&keys).await?;
        if let Target::Tag(tag) = target {
            self.delete(&[format!("tag:{tag}")]).await?;
            return Ok(gone);
        }
        Ok(gone.min(responses as u64))
    }
}

impl Tier for RedisTier {
    fn get<'a>(&'a self, key: &'a str) -> TierFuture<'a, Option<Fetched>> {
        Box::pin(self.get_object(key, self.config.timeout))
    }

    fn put<'a>(&'a self, key: &'a str, object: &'a Object) -> TierFuture<'a, ()> {
        Box::pin(self.put_object(key, object))
    }

    fn remove<'a>(&'a self, key: &'a str) -> TierFuture<'a, bool> {
        Box::pin(async move {
            let mut del = redis::cmd("UNLINK");
            del.arg(self.key(key));
            Ok(self.query::<u64>(&del).await? > 0)
        })
    }

    fn purge<'a>(&'a self, target: &'a Target, soft: bool, now: SystemTime) -> TierFuture<'a, u64> {
        Box::pin(self.purge_target(target, soft, now))
    }

    fn stats(&self) -> TierStats {
        TierStats {
            bytes: self.bytes.load(Ordering::Relaxed),
            objects: self.objects.load(Ordering::Relaxed),
        }
    }
}

/// Sorts `keys` and counts the responses among them: every key but the
/// `Vary` markers, which are the keys whose variants (`key` + VARIANT...)
/// are there too.
fn responses_among(keys: &mut [String]) -> usize {
    keys.sort_unstable();
    let markers = keys
        .windows(2)
        .filter(|w| {
            w[1].strip_prefix(w[0].as_str())
                .is_some_and(|rest| rest.starts_with(VARIANT))
        })
        .count();
    keys.len() - markers
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The primaries' addresses in a `CLUSTER NODES` answer (lines of
/// `id host:port@bus[,hostname] flags ...`), leaving out failed ones.
fn cluster_primaries(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _id = fields.next()?;
            let addr = fields.next()?;
            let flags = fields.next()?;
            let is_primary = flags.split(',').any(|f| f == "master");
            let failed = flags.split(',').any(|f| f == "fail" || f == "noaddr");
            if !is_primary || failed {
                return None;
            }
            let host_port = addr.split('@').next()?;
            let (host, port) = host_port.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// Sets up the connection, trying again until it works. Once it exists
/// it reconnects by itself.
async fn connect(endpoint: RedisEndpoint, slot: Arc<OnceLock<Conn>>) {
    let mut delay = Duration::from_millis(100);
    let mut warned = false;
    loop {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, open_conn(&endpoint)).await;
        match attempt {
            Ok(Ok(conn)) => {
                let _ = slot.set(conn);
                tracing::info!(redis = %redact_url(&endpoint.urls()[0]), "cache tier connected to Redis");
                return;
            }
            failed => {
                if !warned {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    tracing::warn!(
                        redis = %redact_url(&endpoint.urls()[0]),
                        error = %why,
                        "cache tier cannot connect to Redis yet; serving from memory and the origin"
                    );
                    warned = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn open_conn(endpoint: &RedisEndpoint) -> redis::RedisResult<Conn> {
    match endpoint {
        RedisEndpoint::Single(url) => {
            let client = redis::Client::open(url.as_str())?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            Ok(Conn::Single(
                client.get_connection_manager_with_config(config).await?,
            ))
        }
        RedisEndpoint::Cluster(nodes) => {
            let client = redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                .connection_timeout(CONNECT_TIMEOUT)
                .retries(1)
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }
}

/// Reads the tier's size for the gauges every few seconds (Redis's own
/// figures: keys in the database and memory used, summed over a
/// cluster's primaries), for as long as the tier exists.
async fn watch_size(tier: std::sync::Weak<RedisTier>) {
    loop {
        tokio::time::sleep(STATS_EVERY).await;
        let Some(tier) = tier.upgrade() else { return };
        if tier.breaker.is_open() {
            continue;
        }
        let Ok(nodes) = tier.primaries().await else {
            continue;
        };
        let (mut bytes, mut objects) = (0u64, 0u64);
        for node in &nodes {
            let dbsize = redis::cmd("DBSIZE");
            let mut info = redis::cmd("INFO");
            info.arg("memory");
            let Ok(n) = tier.on_node::<u64>(&dbsize, node.as_ref()).await else {
                continue;
            };
            let Ok(text) = tier.on_node::<String>(&info, node.as_ref()).await else {
                continue;
            };
            objects += n;
            bytes += text
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        tier.bytes.store(bytes, Ordering::Relaxed);
        tier.objects.store(objects, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(
            glob_escape("sluice:http://h/a?b=[1]*\\"),
            "sluice:http://h/a\\?b=\\[1\\]\\*\\\\"
        );
    }

    #[test]
    fn markers_are_not_counted_as_responses() {
        let mut keys = vec![
            "http://h/a\u{1}1\u{1}accept:x".to_string(),
            "http://h/a".to_string(),
            "http://h/a\u{1}1\u{1}accept:y".to_string(),
            "http://h/b".to_string(),
        ];
        assert_eq!(responses_among(&mut keys), 3);
    }

    #[test]
    fn cluster_nodes_gives_live_primaries() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host-b master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected
";
        assert_eq!(
            cluster_primaries(text),
            [
                ("127.0.0.1".to_string(), 7000),
                ("127.0.0.1".to_string(), 7001)
            ]
        );
    }
}
