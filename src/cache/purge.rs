//! Removing entries: invalidation after an unsafe method (RFC 9111 §4.4),
//! the `PURGE` method on public listeners, and the admin purges by URL,
//! prefix, surrogate key or everything. Each purge answers how many stored
//! responses went. A soft purge marks them stale instead: they keep
//! serving where stale content is allowed (stale-while-revalidate,
//! stale-if-error, an unreachable origin) while the next request
//! revalidates them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{header, HeaderMap, Response, StatusCode, Uri};

use super::key::{self, EXTRA, VARIANT};
use super::store::{Object, Store};
use super::Cache;
use crate::body::ProxyBody;
use crate::config::CacheConfig;
use crate::reply;

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// Every entry of one URL (all variants and route key extras).
    Url(String),
    /// Every entry whose URL starts with this.
    Prefix(String),
    /// Every entry tagged with this surrogate key.
    Tag(String),
    All,
}

/// Removes the entries `target` names; returns how many responses went.
pub(crate) fn purge(store: &dyn Store, target: &Target) -> u64 {
    store.remove_where(&mut |k, o| target.matches(k, o))
}

/// Marks the responses `target` names stale as of `now` (those already
/// stale stay as they are); returns how many it names.
pub(crate) fn soft_purge(store: &dyn Store, target: &Target, now: SystemTime) -> u64 {
    let mut named = Vec::new();
    store.each(&mut |k, o| {
        if matches!(**o, Object::Response(_)) && target.matches(k, o) {
            named.push((k.to_string(), o.clone()));
        }
    });
    let count = named.len() as u64;
    for (key, object) in named {
        let Object::Response(entry) = &*object else {
            continue;
        };
        let age = entry.age(now);
        if age >= entry.lifetime {
            continue;
        }
        let mut stale = entry.clone();
        stale.lifetime = age;
        // Unless a fill replaced it meanwhile: the newer response stays.
        if store.get(&key).is_some_and(|o| Arc::ptr_eq(&o, &object)) {
            store.insert(key, Arc::new(Object::Response(stale)));
        }
    }
    count
}

impl Target {
    fn matches(&self, key: &str, object: &Object) -> bool {
        let tags = match object {
            Object::Response(e) => Some(&*e.tags),
            Object::Vary { .. } => None,
        };
        self.names(key, tags)
    }

    /// Whether the target names what is stored under `key`: a response
    /// with `tags`, or a `Vary` marker (`None`).
    pub(crate) fn names(&self, key: &str, tags: Option<&[Box<str>]>) -> bool {
        match self {
            Target::Url(url) => same_url(key, url),
            Target::Prefix(prefix) => key::url_of(key).starts_with(prefix.as_str()),
            Target::Tag(tag) => tags.is_some_and(|tags| tags.iter().any(|t| **t == **tag)),
            Target::All => true,
        }
    }
}

fn same_url(key: &str, url: &str) -> bool {
    key.strip_prefix(url)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([EXTRA, VARIANT]))
}

/// Canonical form of a URL given to purge, matching how keys are written:
/// scheme and host lower-cased, default port dropped, `/` for no path.
pub(crate) fn canonical_url(text: &str) -> Result<String, String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| format!("\"{text}\" is not a URL such as http://example.com/path"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(format!(
            "\"{text}\" needs a scheme and a host, e.g. http://example.com/path"
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(format!("\"{text}\": the scheme must be http or https")),
    };
    let host = authority.host().to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    let authority = match authority.port_u16() {
        Some(p) if p != default => format!("{host}:{p}"),
        _ => host.to_string(),
    };
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Ok(format!("{scheme}://{authority}{path}"))
}

/// RFC 9111 §4.4: after a non-error response to an unsafe method, the
/// target URI and the `Location` / `Content-Location` URIs on the same
/// host are invalidated. Returns the keys removed from `store`, for the
/// other tiers.
pub(crate) fn invalidate(store: &dyn Store, primary: &str, resp: &HeaderMap) -> Vec<String> {
    let url = key::url_of(primary);
    let extras = &primary[url.len()..];
    let mut gone = Vec::new();
    let mut purge_one = |u: &str| {
        let key = format!("{u}{extras}");
        store.remove(&key);
        gone.push(key);
    };
    purge_one(url);
    let origin = origin_of(url);
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        for v in resp.get_all(&name) {
            let Ok(text) = v.to_str() else { continue };
            let target = if text.starts_with('/') && !text.starts_with("//") {
                Some(format!("{origin}{text}"))
            } else {
                canonical_url(text).ok().filter(|u| origin_of(u) == origin)
            };
            if let Some(t) = target {
                purge_one(&t);
            }
        }
    }
    gone
}

/// `scheme://authority` of a canonical URL.
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// `Sluice-Purge: soft` on a `PURGE` request asks for a soft purge.
static SLUICE_PURGE: header::HeaderName = header::HeaderName::from_static("sluice-purge");

/// `PURGE` on a caching route: allowed from `[cache] purge_allow` only;
/// soft with `Sluice-Purge: soft`.
pub(crate) async fn purge_request(
    cache: &Cache,
    cfg: &CacheConfig,
    peer: IpAddr,
    primary: &str,
    head: &HeaderMap,
) -> Response<ProxyBody> {
    if !cfg.purge_allow.iter().any(|c| c.contains(peer)) {
        return reply::json(
            StatusCode::FORBIDDEN,
            "{\"error\":\"PURGE not allowed from this address\"}",
        );
    }
    let soft = head
        .get(&SLUICE_PURGE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"soft"));
    let url = key::url_of(primary).to_string();
    let target = Target::Url(url.clone());
    let mut answer = cache.purge(&target, soft).await;
    super::fanout::announce(&mut answer, &target, soft).await;
    reply::json(StatusCode::OK, &answer)
}

/// Runs a purge, logs it, and gives the JSON answer: `{"purged":N}`, with
/// `"soft":true` for a soft one.
pub(crate) fn run(store: &dyn Store, target: &Target, soft: bool) -> String {
    if soft {
        let purged = soft_purge(store, target, SystemTime::now());
        tracing::info!(?target, purged, "cache soft purge");
        format!("{{\"purged\":{purged},\"soft\":true}}")
    } else {
        let purged = purge(store, target);
        tracing::info!(?target, purged, "cache purge");
        format!("{{\"purged\":{purged}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_canonical() {
        assert_eq!(
            canonical_url("HTTP://Example.COM:80/a?b").unwrap(),
            "http://example.com/a?b"
        );
        assert_eq!(canonical_url("https://h:8443").unwrap(), "https://h:8443/");
        assert!(canonical_url("/relative").is_err());
        assert!(canonical_url("ftp://h/").is_err());
    }

    #[test]
    fn same_url_covers_variants_and_extras_only() {
        assert!(same_url("http://h/a", "http://h/a"));
        assert!(same_url("http://h/a\u{1}1\u{1}accept:x", "http://h/a"));
        assert!(same_url("http://h/a\nx-tenant:1", "http://h/a"));
        assert!(!same_url("http://h/ab", "http://h/a"));
        assert!(!same_url("http://h/a?x", "http://h/a"));
    }

    #[test]
    fn a_soft_purge_makes_fresh_entries_stale_and_keeps_them() {
        use super::super::store::{Entry, MemoryStore};
        use std::time::Duration;
        let store = MemoryStore::new(1 << 20, || {});
        let now = SystemTime::now();
        let entry = |lifetime: u64| Entry {
            request_time: now,
            response_time: now,
            initial_age: Duration::from_secs(30),
            ..Entry::fresh(
                StatusCode::OK,
                HeaderMap::new(),
                bytes::Bytes::from_static(b"body"),
                Duration::from_secs(lifetime),
            )
        };
        store.insert(
            "http://h/fresh".into(),
            Arc::new(Object::Response(entry(600))),
        );
        store.insert(
            "http://h/stale".into(),
            Arc::new(Object::Response(entry(10))),
        );
        store.insert(
            "http://other/x".into(),
            Arc::new(Object::Response(entry(600))),
        );
        let named = soft_purge(&store, &Target::Prefix("http://h/".into()), now);
        assert_eq!(named, 2);
        let lifetime = |k: &str| match store.get(k).as_deref() {
            Some(Object::Response(e)) => e.lifetime,
            _ => panic!("{k} is gone"),
        };
        assert_eq!(
            lifetime("http://h/fresh"),
            Duration::from_secs(30),
            "stale from now"
        );
        assert_eq!(
            lifetime("http://h/stale"),
            Duration::from_secs(10),
            "already stale"
        );
        assert_eq!(
            lifetime("http://other/x"),
            Duration::from_secs(600),
            "not named"
        );
    }

    #[test]
    fn origin_is_scheme_and_authority() {
        assert_eq!(origin_of("http://h:81/a/b"), "http://h:81");
        assert_eq!(origin_of("https://h"), "https://h");
    }
}
