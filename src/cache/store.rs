//! Where cached responses live. The [`Store`] trait is all the request path
//! needs (get, insert, remove, purge by predicate), so another tier (disk,
//! Redis) can sit behind it later; [`MemoryStore`] is moka, bounded by bytes.
//!
//! moka admits with TinyLFU and evicts by LRU: a one-hit wonder does not
//! push out a popular page, which is the "hybrid LRU/LFU" behaviour
//! operators ask for.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};

use crate::config::Coding;
use crate::headers::cache_control::CacheControl;

/// One stored response: its head, its whole body and what freshness needs.
#[derive(Debug, Clone)]
pub struct Entry {
    pub status: StatusCode,
    /// The head as clients get it: hop-by-hop fields, `Set-Cookie` and
    /// surrogate keys removed.
    pub headers: HeaderMap,
    /// Shared: a hit clones a pointer, never the bytes.
    pub body: Bytes,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    /// RFC 9111 §4.2.3 `corrected_initial_age`.
    pub initial_age: Duration,
    /// RFC 9111 §4.2.1 freshness lifetime.
    pub lifetime: Duration,
    /// The stored response's Cache-Control.
    pub cc: CacheControl,
    /// Surrogate keys (`Surrogate-Key` / `Cache-Tag`) for purge by tag.
    pub tags: Box<[Box<str>]>,
    /// Compressed copies of `body`, one per coding, made once on the first
    /// hit that asks for it; they go with the entry (a refreshed or purged
    /// entry takes its copies along).
    pub copies: Copies,
    /// The head its plain hits are served with, for the current second.
    pub hit_head: super::serve::HitHead,
}

/// One lazily made compressed body per [`Coding`].
#[derive(Debug, Clone, Default)]
pub struct Copies([OnceLock<Bytes>; 3]);

impl Copies {
    fn slot(&self, coding: Coding) -> &OnceLock<Bytes> {
        let i = Coding::ALL.iter().position(|c| *c == coding).unwrap_or(0);
        &self.0[i]
    }

    pub fn get(&self, coding: Coding) -> Option<&Bytes> {
        self.slot(coding).get()
    }

    /// Keeps `bytes` as the `coding` copy unless one was made meanwhile.
    pub(crate) fn set(&self, coding: Coding, bytes: Bytes) {
        let _ = self.slot(coding).set(bytes);
    }

    fn bytes(&self) -> usize {
        self.0
            .iter()
            .filter_map(OnceLock::get)
            .map(Bytes::len)
            .sum()
    }
}

impl Entry {
    /// A response just received with `lifetime` of freshness: for tests.
    #[cfg(test)]
    pub(crate) fn fresh(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        lifetime: Duration,
    ) -> Entry {
        let now = SystemTime::now();
        Entry {
            status,
            headers,
            body,
            request_time: now,
            response_time: now,
            initial_age: Duration::ZERO,
            lifetime,
            cc: Default::default(),
            tags: Box::new([]),
            copies: Default::default(),
            hit_head: Default::default(),
        }
    }

    /// The entry's current age (RFC 9111 §4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        super::policy::current_age(self.initial_age, self.response_time, now)
    }

    fn weight(&self) -> usize {
        let text: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        let head = text + 32 * self.headers.len();
        let tags: usize = self.tags.iter().map(|t| t.len() + 16).sum();
        head + tags
            + self.body.len()
            + self.copies.bytes()
            + super::serve::HitHead::allowance(self.headers.len(), text)
            + std::mem::size_of::<Entry>()
    }
}

/// What a key maps to.
// Always behind an `Arc`: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Object {
    /// A response.
    Response(Entry),
    /// Under a primary key whose response varies: the (sorted) request
    /// headers it varies on; the responses live under variant keys that
    /// include `id`, so a new `Vary` (or an invalidation) leaves the old
    /// variants unreachable instead of serving them again.
    Vary { names: Box<[HeaderName]>, id: u64 },
}

impl Object {
    fn weight(&self) -> usize {
        match self {
            Object::Response(e) => e.weight(),
            Object::Vary { names, .. } => {
                names.iter().map(|n| n.as_str().len() + 16).sum::<usize>() + 64
            }
        }
    }
}

/// A cache tier.
pub trait Store: Send + Sync + std::fmt::Debug {
    fn get(&self, key: &str) -> Option<Arc<Object>>;
    fn insert(&self, key: String, object: Arc<Object>);
    /// Whether the key was there.
    fn remove(&self, key: &str) -> bool;
    /// Removes every entry for which `matches` holds; returns how many
    /// responses went (the `Vary` markers beside them are not counted).
    fn remove_where(&self, matches: &mut dyn FnMut(&str, &Object) -> bool) -> u64;
    /// Calls `visit` with every key and object held, in no particular order.
    fn each(&self, visit: &mut dyn FnMut(&str, &Arc<Object>));
    /// Entries held (settles pending bookkeeping first).
    fn entries(&self) -> u64;
    /// Bytes held, as weighed.
    fn bytes(&self) -> u64;
}

/// The in-memory tier.
pub struct MemoryStore {
    cache: moka::sync::Cache<String, Arc<Object>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl MemoryStore {
    /// A store holding at most `max_bytes`; `on_evict` runs once per entry
    /// pushed out for room (not for purges or replacements).
    pub fn new(max_bytes: u64, on_evict: impl Fn() + Send + Sync + 'static) -> MemoryStore {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, object: &Arc<Object>| {
                u32::try_from(key.len() + object.weight()).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_key, _value, cause| {
                if cause.was_evicted() {
                    on_evict();
                }
            })
            .build();
        MemoryStore { cache }
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Option<Arc<Object>> {
        self.cache.get(key)
    }

    fn insert(&self, key: String, object: Arc<Object>) {
        self.cache.insert(key, object);
    }

    fn remove(&self, key: &str) -> bool {
        self.cache.remove(key).is_some()
    }

    fn remove_where(&self, matches: &mut dyn FnMut(&str, &Object) -> bool) -> u64 {
        let doomed: Vec<Arc<String>> = self
            .cache
            .iter()
            .filter(|(k, v)| matches(k, v))
            .map(|(k, _)| k)
            .collect();
        doomed
            .iter()
            .filter(|k| {
                self.cache
                    .remove(k.as_str())
                    .is_some_and(|o| matches!(*o, Object::Response(_)))
            })
            .count() as u64
    }

    fn each(&self, visit: &mut dyn FnMut(&str, &Arc<Object>)) {
        for (key, object) in self.cache.iter() {
            visit(&key, &object);
        }
    }

    fn entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    fn bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn entry(body: usize) -> Arc<Object> {
        Arc::new(Object::Response(Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body]),
            request_time: SystemTime::UNIX_EPOCH,
            response_time: SystemTime::UNIX_EPOCH,
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            cc: CacheControl::default(),
            tags: Box::new([]),
            copies: Copies::default(),
            hit_head: Default::default(),
        }))
    }

    #[test]
    fn stays_within_its_byte_budget() {
        let evicted = Arc::new(AtomicU64::new(0));
        let counter = evicted.clone();
        let store = MemoryStore::new(1 << 20, move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        for i in 0..200 {
            store.insert(format!("k{i}"), entry(50_000));
        }
        assert!(store.bytes() <= 1 << 20, "{} bytes", store.bytes());
        assert!(store.entries() < 200);
        assert!(evicted.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn compressed_copies_are_weighed() {
        let store = MemoryStore::new(1 << 20, || {});
        let object = entry(10_000);
        store.insert("k".into(), object.clone());
        let before = store.bytes();
        let Object::Response(e) = &*object else {
            unreachable!()
        };
        e.copies.set(Coding::Br, Bytes::from(vec![b'b'; 3_000]));
        assert_eq!(e.copies.get(Coding::Br).map(Bytes::len), Some(3_000));
        store.insert("k".into(), Arc::new(Object::Response(e.clone())));
        assert_eq!(store.bytes(), before + 3_000);
    }

    #[test]
    fn removes_by_predicate_and_counts() {
        let store = MemoryStore::new(1 << 20, || {});
        for i in 0..10 {
            store.insert(format!("http://h/a/{i}"), entry(10));
            store.insert(format!("http://h/b/{i}"), entry(10));
        }
        assert_eq!(
            store.remove_where(&mut |k, _| k.starts_with("http://h/a/")),
            10
        );
        assert_eq!(store.entries(), 10);
        assert!(store.remove("http://h/b/1"));
        assert!(!store.remove("http://h/b/1"));
    }
}
