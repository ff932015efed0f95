//! Where sluice finds Redis: one server (`url`) or a Redis Cluster
//! (`cluster`, a list of seed nodes). Shared by the Redis cache tier and the
//! purge fan-out, so both read and check the same keys the same way.

use super::{Seg, Validator};

/// One Redis server or the seed nodes of a Redis Cluster, as URLs the
/// client accepts (`redis://[:password@]host:port[/db]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisEndpoint {
    Single(String),
    Cluster(Vec<String>),
}

impl RedisEndpoint {
    /// Every URL, in the order written.
    pub fn urls(&self) -> &[String] {
        match self {
            RedisEndpoint::Single(url) => std::slice::from_ref(url),
            RedisEndpoint::Cluster(nodes) => nodes,
        }
    }
}

/// `url` with any password replaced by `<redacted>`, for `/config` and logs.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!(
                "{scheme}://{user}:<redacted>@{host}{}",
                &rest[authority_end..]
            )
        }
        _ => url.to_string(),
    }
}

impl Validator<'_> {
    /// The endpoint that `url` or `cluster` in the table at `table` names:
    /// `None` when neither is set (or one is invalid, which is reported).
    pub(super) fn redis_endpoint(
        &mut self,
        table: &[Seg],
        url: Option<&str>,
        cluster: &[String],
    ) -> Option<RedisEndpoint> {
        let at = |key: &'static str| {
            let mut path = table.to_vec();
            path.push(Seg::Key(key));
            path
        };
        match (url, cluster.is_empty()) {
            (Some(_), false) => {
                self.error(&at("cluster"), "give either url or cluster, not both");
                None
            }
            (Some(url), true) => match check_url(url) {
                Ok(()) => Some(RedisEndpoint::Single(url.to_string())),
                Err(why) => {
                    self.error(&at("url"), why);
                    None
                }
            },
            (None, false) => {
                let mut ok = true;
                for (i, node) in cluster.iter().enumerate() {
                    if let Err(why) = check_url(node) {
                        let mut path = at("cluster");
                        path.push(Seg::Index(i));
                        self.error(&path, why);
                        ok = false;
                    }
                }
                ok.then(|| RedisEndpoint::Cluster(cluster.to_vec()))
            }
            (None, true) => None,
        }
    }
}

/// Whether the Redis client accepts `url` (parsing only, nothing connects).
fn check_url(url: &str) -> Result<(), String> {
    if !url.starts_with("redis://") {
        return Err(format!(
            "\"{}\" is not a Redis URL such as redis://127.0.0.1:6379/0",
            redact_url(url)
        ));
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| format!("\"{}\": {e}", redact_url(url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://:<redacted>@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("redis://app:s3cret@h:1"),
            "redis://app:<redacted>@h:1"
        );
        assert_eq!(redact_url("redis://h:1/2"), "redis://h:1/2");
    }

    const BASE: &str = r#"
[[listener]]
name = "http"
listen = "127.0.0.1:8080"

[[route]]
pool = "app"
cache = true

[pool.app]
servers = [ { addr = "127.0.0.1:9001" } ]
"#;

    #[test]
    fn a_redis_tier_has_its_defaults_and_brings_the_fanout() {
        use crate::config::{L2Kind, RedisTierConfig};
        use std::time::Duration;
        let text = format!(
            "{BASE}\n[cache]\nserve_stale_on_error = \"2h\"\n\n[cache.l2]\nkind = \"redis\"\nurl = \"redis://10.0.0.1:6379/2\"\nkey_prefix = \"shop:\"\n"
        );
        let c = crate::config::tests::parse(&text).unwrap();
        let l2 = c.cache.l2.as_ref().expect("a second tier");
        assert_eq!(l2.max_object_size, 1 << 20);
        let L2Kind::Redis(r) = &l2.kind else {
            panic!("{:?}", l2.kind)
        };
        assert_eq!(
            *r,
            RedisTierConfig {
                endpoint: RedisEndpoint::Single("redis://10.0.0.1:6379/2".into()),
                timeout: Duration::from_millis(20),
                key_prefix: "shop:".into(),
                stale: Duration::from_secs(7200),
            }
        );
        let fanout = c.cache.fanout.expect("on with a Redis tier");
        assert_eq!(fanout.redis, r.endpoint);
        assert_eq!(fanout.channel(), "shop:purge");

        let off = format!("{text}\n[cache.purge]\nfanout = \"none\"\n");
        assert!(crate::config::tests::parse(&off)
            .unwrap()
            .cache
            .fanout
            .is_none());
    }

    #[test]
    fn only_plain_redis_urls_pass() {
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("http://127.0.0.1:6379").is_err());
        assert!(check_url("redis://127.0.0.1:notaport").is_err());
    }
}
