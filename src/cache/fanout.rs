//! Purges that reach every instance (`[cache.purge] fanout = "redis"`).
//!
//! A purge applied here through the admin API or a `PURGE` request is
//! published on the Redis channel `<key_prefix>purge`; every instance
//! subscribes to that channel and applies what arrives to its own memory
//! and disk tiers (a shared Redis tier was purged by the sender), skipping
//! its own messages (already applied). Redis pub/sub delivers only to those listening at the
//! moment, so an instance whose subscription dropped may have missed
//! purges: when it subscribes again it empties its memory tier, says so in
//! the log and counts it in `sluice_cache_purge_resubscribe_flushes_total`.
//! In a Redis Cluster a message published on any node reaches subscribers
//! on every node, so one connection to any seed node is enough.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use tokio::sync::Mutex;
use tokio::time::timeout;

use super::purge::{self, Target};
use super::Cache;
use crate::config::{redact_url, FanoutConfig};

/// How long connecting or publishing may take before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an idle subscription is checked with a PING.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a PING may go unanswered before the connection counts as dead.
/// Long, so that a Redis that is only busy (or paused) does not cost every
/// instance its memory tier.
const PING_PATIENCE: Duration = Duration::from_secs(15);
/// Delays between attempts to subscribe again, doubling up to the maximum.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// What the first word of every message is; others are ignored.
const VERSION: &str = "sluice-purge/1";

/// Where the subscriber finds the cache to purge: the current snapshot's.
pub(crate) type CacheSource = Box<dyn Fn() -> Arc<Cache> + Send + Sync>;

/// The process's fan-out, once [`start`] ran (`[cache.purge]` is read at
/// start only, so there is one per process).
static INSTALLED: OnceLock<Arc<Fanout>> = OnceLock::new();

/// Turns the fan-out on: purges are published from now on, and a task on
/// the calling (control thread's) runtime subscribes and applies the other
/// instances' purges to the cache `cache` returns.
pub(crate) fn start(config: &FanoutConfig, cache: CacheSource) {
    let fanout = Arc::new(Fanout::new(config));
    if INSTALLED.set(fanout.clone()).is_ok() {
        tokio::spawn(fanout.subscribe(cache));
    }
}

/// Publishes a purge this instance applied (admin API or `PURGE`) when the
/// fan-out is on, and says so in its JSON answer: `"published":true`, or
/// `false` when Redis could not be reached.
pub(crate) async fn announce(answer: &mut String, target: &Target, soft: bool) {
    let Some(fanout) = INSTALLED.get() else {
        return;
    };
    let published = fanout.publish(target, soft).await;
    if answer.ends_with('}') {
        answer.pop();
        answer.push_str(&format!(",\"published\":{published}}}"));
    }
}

/// The publishing side and the identity that tells this instance's
/// messages from the others'.
pub(crate) struct Fanout {
    config: FanoutConfig,
    channel: String,
    /// This process's id, carried in each message it publishes.
    me: String,
    /// Reused between purges; replaced after a failure.
    publisher: Mutex<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("channel", &self.channel)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// A purge as it travels between instances:
/// `sluice-purge/1 <sender> <soft|hard> <url|prefix|tag|all> <value>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    from: String,
    target: Target,
    soft: bool,
}

impl Message {
    fn encode(&self) -> String {
        let (kind, value) = match &self.target {
            Target::Url(u) => ("url", u.as_str()),
            Target::Prefix(p) => ("prefix", p.as_str()),
            Target::Tag(t) => ("tag", t.as_str()),
            Target::All => ("all", ""),
        };
        let mode = if self.soft { "soft" } else { "hard" };
        format!("{VERSION} {} {mode} {kind} {value}", self.from)
    }

    /// `None` for anything that is not a message this version writes.
    fn decode(text: &str) -> Option<Message> {
        let mut parts = text.splitn(5, ' ');
        if parts.next()? != VERSION {
            return None;
        }
        let from = parts.next()?.to_string();
        let soft = match parts.next()? {
            "soft" => true,
            "hard" => false,
            _ => return None,
        };
        let kind = parts.next()?;
        let value = parts.next()?.to_string();
        let target = match kind {
            "url" if !value.is_empty() => Target::Url(value),
            "prefix" if !value.is_empty() => Target::Prefix(value),
            "tag" if !value.is_empty() => Target::Tag(value),
            "all" => Target::All,
            _ => return None,
        };
        Some(Message { from, target, soft })
    }
}

impl Fanout {
    fn new(config: &FanoutConfig) -> Fanout {
        Fanout {
            channel: config.channel(),
            config: config.clone(),
            me: uuid::Uuid::new_v4().simple().to_string(),
            publisher: Mutex::new(None),
        }
    }

    /// Publishes a purge this instance has applied; whether Redis took it.
    /// A failure is logged: the other instances keep their copies until
    /// they expire or are purged again.
    async fn publish(&self, target: &Target, soft: bool) -> bool {
        let payload = Message {
            from: self.me.clone(),
            target: target.clone(),
            soft,
        }
        .encode();
        let mut publisher = self.publisher.lock().await;
        // A kept connection may have died since the last purge: one retry
        // on a fresh one.
        for _ in 0..2 {
            if publisher.is_none() {
                *publisher = self.connect().await;
            }
            let Some(conn) = publisher.as_mut() else {
                break;
            };
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(&self.channel).arg(&payload);
            match timeout(PUBLISH_TIMEOUT, publish.query_async::<i64>(conn)).await {
                Ok(Ok(listeners)) => {
                    crate::metrics::get().cache_purges_published.inc();
                    tracing::debug!(channel = %self.channel, listeners, "purge published");
                    return true;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "purge publish failed"),
                Err(_) => tracing::debug!("purge publish timed out"),
            }
            *publisher = None;
        }
        tracing::warn!(
            channel = %self.channel,
            "cannot publish the purge to Redis: other instances keep their copies"
        );
        false
    }

    /// A connection to the first seed node that answers.
    async fn connect(&self) -> Option<MultiplexedConnection> {
        for url in self.config.redis.urls() {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                continue;
            };
            match timeout(PUBLISH_TIMEOUT, client.get_multiplexed_async_connection()).await {
                Ok(Ok(conn)) => return Some(conn),
                Ok(Err(e)) => {
                    tracing::debug!(redis = %redact_url(url), error = %e, "cannot connect")
                }
                Err(_) => tracing::debug!(redis = %redact_url(url), "connect timed out"),
            }
        }
        None
    }

    /// Keeps this instance subscribed for as long as the process runs,
    /// applying each purge from another instance to the cache `cache`
    /// returns.
    async fn subscribe(self: Arc<Self>, cache: CacheSource) {
        let urls = self.config.redis.urls();
        // Set once purges may have gone by unseen: while not subscribed.
        let mut missed = false;
        let mut failing = false;
        let mut delay = RETRY_MIN;
        for node in (0..urls.len()).cycle() {
            let url = &urls[node];
            match timeout(PUBLISH_TIMEOUT, self.listen(url)).await {
                Ok(Ok((sink, stream))) => {
                    delay = RETRY_MIN;
                    failing = false;
                    if missed {
                        let dropped = purge::purge(cache().store.as_ref(), &Target::All);
                        crate::metrics::get().cache_purge_resubscribe_flushes.inc();
                        tracing::warn!(
                            channel = %self.channel,
                            dropped,
                            "purge fan-out subscribed again; emptied the memory tier \
                             (purges may have been missed)"
                        );
                    } else {
                        tracing::info!(channel = %self.channel, redis = %redact_url(url), "purge fan-out subscribed");
                    }
                    self.receive(sink, stream, &cache).await;
                    tracing::warn!(
                        channel = %self.channel,
                        "purge fan-out subscription lost; subscribing again"
                    );
                    missed = true;
                }
                failed => {
                    if !failing {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_string(),
                        };
                        tracing::warn!(
                            redis = %redact_url(url),
                            error = %why,
                            "purge fan-out cannot subscribe; retrying"
                        );
                    }
                    failing = true;
                    missed = true;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    async fn listen(&self, url: &str) -> redis::RedisResult<(PubSubSink, PubSubStream)> {
        let client = redis::Client::open(url)?;
        let (mut sink, stream) = client.get_async_pubsub().await?.split();
        sink.subscribe(&self.channel).await?;
        Ok((sink, stream))
    }

    /// Applies messages until the subscription ends or stops answering.
    async fn receive(&self, mut sink: PubSubSink, mut stream: PubSubStream, cache: &CacheSource) {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.apply(msg.get_payload_bytes(), cache).await,
                    None => return,
                },
                _ = ping.tick() => {
                    let answer = timeout(PING_PATIENCE, sink.ping::<redis::Value>()).await;
                    if !matches!(answer, Ok(Ok(_))) {
                        return;
                    }
                }
            }
        }
    }

    async fn apply(&self, payload: &[u8], cache: &CacheSource) {
        let Some(msg) = std::str::from_utf8(payload).ok().and_then(Message::decode) else {
            tracing::warn!(channel = %self.channel, "ignored a message that is not a purge");
            return;
        };
        if msg.from == self.me {
            return;
        }
        crate::metrics::get().cache_purges_received.inc();
        tracing::info!(from = %msg.from, target = ?msg.target, soft = msg.soft, "purge received");
        cache().purge_received(&msg.target, msg.soft).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back() {
        for (target, soft) in [
            (Target::Url("http://h/a b?c".into()), false),
            (Target::Prefix("http://h/".into()), true),
            (Target::Tag("product-7".into()), false),
            (Target::All, true),
        ] {
            let m = Message {
                from: "abc".into(),
                target,
                soft,
            };
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
    }

    #[test]
    fn foreign_messages_are_ignored() {
        for text in [
            "",
            "hello",
            "sluice-purge/2 a hard all ",
            "sluice-purge/1 a maybe all ",
            "sluice-purge/1 a hard url ",
            "sluice-purge/1 a hard everything x",
            "sluice-purge/1 a hard all",
        ] {
            assert_eq!(Message::decode(text), None, "{text:?}");
        }
    }
}
