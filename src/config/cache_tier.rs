//! `[cache.l2]`: the cache's second tier, behind the memory tier.
//!
//! One flat table whose `kind` says which tier it is; each kind has keys of
//! its own, and a key of another kind is an error naming the kind it
//! belongs to. Adding a kind is a variant of [`L2Kind`], its keys in
//! [`RawL2`] and an arm in [`Validator::cache_l2`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::redis::RedisEndpoint;
use super::units::{de_duration, de_opt_size};
use super::{Seg, Validator};

/// `[cache.l2]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawL2 {
    pub kind: String,
    /// disk: the directory records live in.
    #[serde(default)]
    pub path: Option<String>,
    /// disk: bytes the records may take on disk.
    #[serde(default, deserialize_with = "de_opt_size")]
    pub max_size: Option<u64>,
    /// Larger responses are not stored in this tier.
    #[serde(default, deserialize_with = "de_opt_size")]
    pub max_object_size: Option<u64>,
    /// Stores waiting for the tier; beyond it a store is dropped and
    /// counted.
    #[serde(default = "d_store_queue")]
    pub store_queue: usize,
    /// redis: one server.
    #[serde(default)]
    pub url: Option<String>,
    /// redis: the seed nodes of a Redis Cluster.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// redis: an operation slower than this is a miss.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    /// redis: the start of every key (and of the purge channel's name).
    #[serde(default)]
    pub key_prefix: Option<String>,
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn d_store_queue() -> usize {
    1024
}

/// The validated `[cache.l2]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct L2Config {
    pub kind: L2Kind,
    /// Larger responses are not stored in this tier.
    pub max_object_size: u64,
    /// Stores waiting for the tier before new ones are dropped.
    pub store_queue: usize,
}

/// Which second tier, with its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum L2Kind {
    Disk(DiskConfig),
    Redis(RedisTierConfig),
}

impl L2Kind {
    /// The tier's name in metric labels and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            L2Kind::Disk(_) => "disk",
            L2Kind::Redis(_) => "redis",
        }
    }

    /// The tier's own byte bound, when it has one.
    fn max_size(&self) -> Option<u64> {
        match self {
            L2Kind::Disk(d) => Some(d.max_size),
            L2Kind::Redis(_) => None,
        }
    }
}

/// `kind = "disk"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskConfig {
    /// The directory (relative paths are taken from the config file's).
    pub path: PathBuf,
    /// Bytes the records may take; the least recently used go beyond it.
    pub max_size: u64,
}

/// `kind = "redis"`: shared by every instance that names the same Redis
/// and `key_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisTierConfig {
    pub endpoint: RedisEndpoint,
    /// A lookup or store slower than this counts as a miss (or is dropped).
    pub timeout: Duration,
    /// The start of every key sluice writes.
    pub key_prefix: String,
    /// How long past its freshness an entry may still be served by sluice's
    /// own rules (`[cache] serve_stale_on_error`, `stale_if_unreachable`):
    /// part of each key's TTL. Not a key of this table.
    pub stale: Duration,
}

const REDIS_MAX_OBJECT_SIZE: u64 = 1 << 20;
/// Redis keeps a value whole in memory and sends it in one reply: larger
/// objects belong in a disk tier. (Redis's own limit is 512 MiB.)
const REDIS_MAX_OBJECT_LIMIT: u64 = 512 << 20;
const REDIS_TIMEOUT: Duration = Duration::from_millis(20);

const DISK_MAX_SIZE: u64 = 20 << 30;
const DISK_MAX_OBJECT_SIZE: u64 = 512 << 20;
/// Record lengths are kept in 64 bits, but one object beyond this is
/// certainly a mistake in the config.
const MAX_OBJECT_LIMIT: u64 = 64 << 30;
const KINDS: &str = "\"disk\" or \"redis\"";

impl Validator<'_> {
    /// `[cache.l2]`, absent: no second tier.
    pub(super) fn cache_l2(&mut self, raw: Option<&RawL2>) -> Option<L2Config> {
        let raw = raw?;
        let at = |k| [Seg::Key("cache"), Seg::Key("l2"), Seg::Key(k)];
        if raw.store_queue == 0 {
            self.error(&at("store_queue"), "must be at least 1");
        }
        let (kind, default_object) = match raw.kind.as_str() {
            "disk" => {
                let path = match raw.path.as_deref() {
                    Some(p) if !p.trim().is_empty() => {
                        let path = self.file_path(p);
                        if let Err(e) = self.env.cache_dir(&path) {
                            self.error(
                                &at("path"),
                                format!("cannot use {} as a cache directory: {e}", path.display()),
                            );
                        }
                        path
                    }
                    Some(_) => {
                        self.error(&at("path"), "must name a directory");
                        PathBuf::new()
                    }
                    None => {
                        self.error(&at("path"), "is required for kind = \"disk\"");
                        PathBuf::new()
                    }
                };
                let max_size = raw.max_size.unwrap_or(DISK_MAX_SIZE);
                if max_size == 0 {
                    self.error(&at("max_size"), "must be more than 0 bytes");
                }
                self.not_of_kind(raw, "disk", &["url", "cluster", "timeout", "key_prefix"]);
                (
                    L2Kind::Disk(DiskConfig { path, max_size }),
                    DISK_MAX_OBJECT_SIZE,
                )
            }
            "redis" => {
                self.not_of_kind(raw, "redis", &["path", "max_size"]);
                let table = [Seg::Key("cache"), Seg::Key("l2")];
                let endpoint = self.redis_endpoint(&table, raw.url.as_deref(), &raw.cluster);
                if raw.url.is_none() && raw.cluster.is_empty() {
                    self.error(&at("url"), "kind = \"redis\" needs url or cluster");
                }
                let timeout = raw.timeout.unwrap_or(REDIS_TIMEOUT);
                if timeout.is_zero() {
                    self.error(&at("timeout"), "must be more than 0s");
                }
                if raw
                    .max_object_size
                    .is_some_and(|m| m > REDIS_MAX_OBJECT_LIMIT)
                {
                    self.error(
                        &at("max_object_size"),
                        "must be at most 512MiB for kind = \"redis\" (Redis holds each value whole)",
                    );
                }
                let key_prefix = raw
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| super::cache::DEFAULT_KEY_PREFIX.to_string());
                (
                    L2Kind::Redis(RedisTierConfig {
                        endpoint: endpoint?,
                        timeout,
                        key_prefix,
                        stale: Duration::ZERO,
                    }),
                    REDIS_MAX_OBJECT_SIZE,
                )
            }
            other => {
                self.error(
                    &at("kind"),
                    format!("\"{other}\" is not a cache tier; use {KINDS}"),
                );
                return None;
            }
        };
        let max_object_size = raw.max_object_size.unwrap_or(default_object);
        if max_object_size == 0 || max_object_size > MAX_OBJECT_LIMIT {
            self.error(&at("max_object_size"), "must be between 1 byte and 64GiB");
        }
        if let Some(max_size) = kind.max_size().filter(|m| max_object_size > *m) {
            self.error(
                &at("max_object_size"),
                format!("{max_object_size} bytes is more than max_size ({max_size} bytes)"),
            );
        }
        Some(L2Config {
            kind,
            max_object_size,
            store_queue: raw.store_queue,
        })
    }

    /// Reports each key in `others` that is set, though it belongs to
    /// another kind than `kind`.
    fn not_of_kind(&mut self, raw: &RawL2, kind: &str, others: &[&'static str]) {
        for key in others {
            let set = match *key {
                "path" => raw.path.is_some(),
                "max_size" => raw.max_size.is_some(),
                "url" => raw.url.is_some(),
                "cluster" => !raw.cluster.is_empty(),
                "timeout" => raw.timeout.is_some(),
                "key_prefix" => raw.key_prefix.is_some(),
                _ => false,
            };
            if set {
                let owner = if kind == "disk" { "redis" } else { "disk" };
                self.error(
                    &[Seg::Key("cache"), Seg::Key("l2"), Seg::Key(key)],
                    format!("belongs to kind = \"{owner}\", not \"{kind}\""),
                );
            }
        }
    }
}
