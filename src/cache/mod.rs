//! The shared HTTP cache (RFC 9111) for routes with `cache = true`.
//!
//! - [`key`]: what identifies a stored response (URL, route extras, Vary).
//! - [`policy`]: the RFC's rules as pure functions (may it be stored, is it
//!   fresh, may a stale one be used).
//! - [`store`]: where entries live (moka, bounded by bytes) behind a trait.
//! - [`fill`]: coalescing of concurrent misses and where a response is
//!   stored; [`filling`]: the shared, growing body of a fill in flight,
//!   read from the origin at its own pace and by each client at theirs,
//!   within the fill memory budget.
//! - [`serve`]: answers made from an entry (HEAD, 304, ranges, `Age`,
//!   `Cache-Status`).
//! - [`purge`]: invalidation after unsafe methods and purge by URL, prefix,
//!   tag or everything; [`fanout`]: the same purges published to, and
//!   received from, the other instances through Redis.
//!
//! - [`verdict`]: sluice's storing and lifetime rules (Surrogate-Control
//!   over RFC 9111, `max_object_size`).
//! - [`tier`]: the second tier (`[cache.l2]`) behind memory: looked up on
//!   a memory miss, fed off the request path, purged with memory.
//!
//! The cache returns decisions; the proxy goes upstream. [`Cache::lookup`]
//! answers a GET or HEAD with a [`Lookup`]: a usable entry is a `Hit`; a
//! stale one inside `stale-while-revalidate` is served with a `refresh` the
//! proxy runs in the background; otherwise a `Miss` carries the [`Fill`]
//! that rewrites the request for the trip upstream ([`Fill::prepare`],
//! conditional when the entry has validators) and decides what to store
//! and answer once the response arrives ([`Fill::finish`]), while identical
//! requests wait for it. Other methods and requests with a body are a
//! `Pass`: forwarded as they are, and [`Pass::finish`] invalidates after an
//! unsafe method's success.

pub(crate) mod fanout;
pub(crate) mod fill;
pub(crate) mod filling;
pub(crate) mod key;
pub(crate) mod policy;
pub(crate) mod purge;
pub(crate) mod serve;
pub(crate) mod store;
pub(crate) mod surrogate;
pub(crate) mod targeted;
pub(crate) mod tier;
pub(crate) mod verdict;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{header, HeaderMap, Method, Response, StatusCode};

use crate::body::{self, ProxyBody};
use crate::compress::{self, Accepted};
use crate::config::{CacheConfig, Coding, CompressionConfig, Level};
use crate::headers::cache_control::CacheControl;
use crate::headers::content_length;
use crate::reply::{self, Refusal};
use fill::{FillGuard, Fills, Join, Placement};
use filling::{Budget, Filling};
use policy::Use;
use serve::Status;
use store::{Entry, MemoryStore, Object, Store};

/// The cache of one daemon: a store and the fills in flight. It outlives
/// reloads; a new `max_size` gets a new store holding the old one's entries.
#[derive(Debug)]
pub(crate) struct Cache {
    /// The memory tier.
    pub store: Arc<dyn Store>,
    /// The second tier, when `[cache.l2]` configures one.
    pub l2: Option<Arc<tier::L2>>,
    fills: Arc<Fills>,
    /// What fills in flight hold, against `max_fill_memory`.
    budget: Arc<Budget>,
    max_size: u64,
}

impl Cache {
    /// A new cache; its second tier is opened here (one that cannot be
    /// opened is logged, and the cache runs on memory alone).
    pub(crate) fn new(config: &CacheConfig) -> Cache {
        let l2 = config.l2.as_ref().and_then(|c| {
            tier::L2::open(c, config.max_object_size)
                .inspect_err(|e| {
                    tracing::error!(tier = c.kind.name(), error = %e, "cannot open the cache's second tier; running without it")
                })
                .ok()
        });
        Cache::with_l2(config, l2)
    }

    fn with_l2(config: &CacheConfig, l2: Option<Arc<tier::L2>>) -> Cache {
        let evictions = crate::metrics::get().cache_evictions.clone();
        Cache {
            store: Arc::new(MemoryStore::new(config.max_size, move || evictions.inc())),
            l2,
            fills: Arc::default(),
            budget: Arc::new(Budget::new(config.max_fill_memory)),
            max_size: config.max_size,
        }
    }

    /// The previous snapshot's cache when its size is unchanged. A moka
    /// store cannot be resized, so a new `max_size` gets a new store with
    /// the old one's entries copied in (bodies are shared, not copied; when
    /// the new size is smaller, the store evicts as it fills). The fills in
    /// flight carry over either way, so coalescing goes on across a reload.
    pub(crate) fn carry_over(previous: Option<&Arc<Cache>>, config: &CacheConfig) -> Arc<Cache> {
        let Some(previous) = previous else {
            return Arc::new(Cache::new(config));
        };
        previous.budget.set_limit(config.max_fill_memory);
        if previous.l2.as_ref().map(|l2| &l2.config) != config.l2.as_ref() {
            tracing::warn!("[cache.l2] changed: the change takes effect at the next restart");
        }
        if previous.max_size == config.max_size {
            return previous.clone();
        }
        let mut resized = Cache::with_l2(config, previous.l2.clone());
        resized.fills = previous.fills.clone();
        resized.budget = previous.budget.clone();
        previous.store.each(&mut |key, object| {
            resized.store.insert(key.to_string(), object.clone());
        });
        Arc::new(resized)
    }

    /// Updates `sluice_cache_entries` and `sluice_cache_bytes`.
    pub(crate) fn refresh_gauges(&self) {
        let m = crate::metrics::get();
        m.cache_entries
            .set(i64::try_from(self.store.entries()).unwrap_or(i64::MAX));
        m.cache_bytes
            .set(i64::try_from(self.store.bytes()).unwrap_or(i64::MAX));
        m.cache_fill_bytes
            .set(i64::try_from(self.budget.used()).unwrap_or(i64::MAX));
        m.cache_tier_bytes
            .with_label_values(&["memory"])
            .set(i64::try_from(self.store.bytes()).unwrap_or(i64::MAX));
        m.cache_tier_objects
            .with_label_values(&["memory"])
            .set(i64::try_from(self.store.entries()).unwrap_or(i64::MAX));
        if let Some(l2) = &self.l2 {
            l2.refresh_gauges();
        }
    }

    /// Stores `object` under `key` in memory and offers it to the second
    /// tier.
    fn keep(&self, key: String, object: Arc<Object>) {
        if let Some(l2) = &self.l2 {
            l2.offer(&key, &object);
        }
        self.store.insert(key, object);
    }

    /// Runs a purge on every tier, logs it, and gives the JSON answer:
    /// `{"purged":N}` (the memory tier's count), with `"soft":true` for a
    /// soft one and `"l2_purged":M` (or `"l2_error"`) with a second tier.
    pub(crate) async fn purge(&self, target: &purge::Target, soft: bool) -> String {
        let mut answer = purge::run(self.store.as_ref(), target, soft);
        if let Some(l2) = &self.l2 {
            let tail = match l2.purge(target, soft).await {
                Ok(n) => {
                    tracing::info!(?target, purged = n, tier = l2.name(), "cache tier purge");
                    format!(",\"l2_purged\":{n}}}")
                }
                Err(e) => {
                    tracing::warn!(?target, tier = l2.name(), error = %e, "cache tier purge failed");
                    format!(",\"l2_error\":\"{}\"}}", e.reason())
                }
            };
            answer.pop();
            answer.push_str(&tail);
        }
        answer
    }

    /// Applies a purge another instance published (`[cache.purge] fanout`)
    /// to this instance's own tiers: memory, and a disk tier. A shared
    /// (Redis) tier was purged by the instance that published it.
    pub(crate) async fn purge_received(&self, target: &purge::Target, soft: bool) -> String {
        match &self.l2 {
            Some(l2) if matches!(l2.config.kind, crate::config::L2Kind::Redis(_)) => {
                purge::run(self.store.as_ref(), target, soft)
            }
            _ => self.purge(target, soft).await,
        }
    }

    /// The second tier's answer for a request that memory missed: the
    /// response (promoted to memory when held whole) or a streamed one.
    /// `memory` is what the memory tier found (a `Vary` marker names the
    /// variant key to ask for).
    async fn find_l2(
        &self,
        l2: &tier::L2,
        primary: &str,
        req: &HeaderMap,
        memory: Found,
    ) -> (Found, Option<Box<tier::Streamed>>) {
        let mut found = memory;
        let key = match &found.variant {
            Some(variant) => variant.clone(),
            None => match l2.get(primary).await {
                None => return (found, None),
                Some(tier::Fetched::Object(o)) => match &*o {
                    Object::Vary { names, id } => {
                        let variant = key::variant(primary, *id, names, req);
                        self.store.insert(primary.to_string(), o.clone());
                        found.variant = Some(variant.clone());
                        found.fwd = "vary-miss";
                        variant
                    }
                    Object::Response(_) => {
                        self.store.insert(primary.to_string(), o.clone());
                        found.entry = Some(o);
                        return (found, None);
                    }
                },
                Some(tier::Fetched::Streamed(s)) => return (found, Some(s)),
            },
        };
        match l2.get(&key).await {
            Some(tier::Fetched::Object(o)) if matches!(*o, Object::Response(_)) => {
                self.store.insert(key, o.clone());
                found.entry = Some(o);
                (found, None)
            }
            Some(tier::Fetched::Streamed(s)) => (found, Some(s)),
            _ => (found, None),
        }
    }

    /// Finds the stored response for a request whose primary key is
    /// `primary`.
    fn find(&self, primary: &str, req: &HeaderMap) -> Found {
        let fills_ended = Some(self.fills.ended());
        match self.store.get(primary) {
            None => Found {
                entry: None,
                variant: None,
                fwd: "miss",
                fills_ended,
            },
            Some(object) => match &*object {
                Object::Response(_) => Found {
                    entry: Some(object.clone()),
                    variant: None,
                    fwd: "miss",
                    fills_ended,
                },
                Object::Vary { names, id } => {
                    let key = key::variant(primary, *id, names, req);
                    let entry = self
                        .store
                        .get(&key)
                        .filter(|o| matches!(**o, Object::Response(_)));
                    Found {
                        entry,
                        variant: Some(key),
                        fwd: "vary-miss",
                        fills_ended,
                    }
                }
            },
        }
    }
}

/// What [`Cache::find`] found.
struct Found {
    /// Always an `Object::Response`.
    entry: Option<Arc<Object>>,
    /// The variant key the response is (or would be) stored under, when
    /// the URL's responses vary; else the primary key is.
    variant: Option<String>,
    /// `Cache-Status` `fwd` for a miss.
    fwd: &'static str,
    /// [`Fills::ended`] before the store was read; `None` once read again.
    fills_ended: Option<u64>,
}

impl Found {
    /// The key the response is (or would be) stored under.
    fn key<'a>(&'a self, primary: &'a str) -> &'a str {
        self.variant.as_deref().unwrap_or(primary)
    }
}

fn entry_of(object: &Object) -> Option<&Entry> {
    match object {
        Object::Response(e) => Some(e),
        Object::Vary { .. } => None,
    }
}

/// The settings of the snapshot a request runs under.
#[derive(Clone, Copy)]
pub(crate) struct Settings<'a> {
    pub cache: &'a CacheConfig,
    pub compression: &'a CompressionConfig,
    /// The route's name, for the metrics a fill counts.
    pub route: &'a str,
}

/// A request on a caching route, as the cache sees it: the head the proxy
/// will forward (hop-by-hop fields removed), borrowed.
pub(crate) struct Request<'a> {
    /// Its primary key ([`key::primary`]).
    pub primary: String,
    pub method: &'a Method,
    pub head: &'a HeaderMap,
    /// A request with a body is never answered from the store.
    pub has_body: bool,
    /// The client's address, for `PURGE`'s `purge_allow`.
    pub peer: IpAddr,
    /// The client's `Accept-Encoding` when the route compresses: hits are
    /// then served from (or make) a compressed copy.
    pub accepted: Option<&'a Accepted>,
}

/// What the cache decided about a request.
pub(crate) enum Lookup {
    /// Answered from the cache: a fresh hit, an allowed stale one, a hit
    /// on a coalesced fill, a `PURGE`, an `only-if-cached` miss.
    Hit(Answer),
    /// A stale entry served inside `stale-while-revalidate` (RFC 5861 §3);
    /// `refresh` is the revalidation to run off the request path, unless
    /// one for this key already runs.
    Stale {
        answer: Answer,
        refresh: Option<Fill>,
    },
    /// Nothing usable: forward the request as [`Fill::prepare`] rewrites
    /// it and hand the response to [`Fill::finish`].
    Miss(Fill),
    /// Not for the cache (another method, or a body): forward it as it is
    /// and hand the response to [`Pass::finish`].
    Pass(Pass),
}

/// A lookup decided at once, or the wait before it can be (boxed: a
/// cache hit, the common case, should not carry the wait's state).
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request and matched at once; boxing `Now` would allocate on every hit"
)]
pub(crate) enum Looked<'a> {
    Now(Lookup),
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Lookup> + Send + 'a>>),
}

/// [`Cache::decide`]'s answer: a lookup, or a request to follow another's
/// fill of the same key.
enum Decided {
    Now(Lookup),
    Follow(Follower),
}

/// A request that found another filling its key, and its own fill should
/// it have to go upstream after all.
struct Follower {
    filling: Arc<Filling>,
    fill: Fill,
}

impl Follower {
    /// Served from the other request's fill when it can be ([`follow`]);
    /// else the request goes upstream on its own.
    async fn wait(self, set: Settings<'_>) -> Lookup {
        let f = &self.fill;
        let view = View {
            method: &f.method,
            head: &f.head,
            accepted: f.accepted.as_ref(),
        };
        if let Some(answer) = follow(set, self.filling, &f.asked, view).await {
            return Lookup::Hit(answer);
        }
        // Its trip upstream starts now, not when it began to wait.
        let mut fill = self.fill;
        fill.request_time = SystemTime::now();
        Lookup::Miss(fill)
    }
}

impl<'a> Request<'a> {
    fn view(&self) -> View<'a> {
        View {
            method: self.method,
            head: self.head,
            accepted: self.accepted,
        }
    }
}

/// A response and the cache's result for the metrics and access log
/// (`hit`, `miss`, `stale`, `revalidated`, `bypass`, `coalesced`).
pub(crate) struct Answer {
    pub resp: Response<ProxyBody>,
    pub result: Option<&'static str>,
}

/// A fresh hit answered by the listener's own HTTP/1.1 writer
/// ([`Cache::plain_hit`]): its head, to which the request id is added, and
/// its body. Its `Cache-Status` result is `hit`.
pub(crate) struct PlainHit {
    pub status: StatusCode,
    pub wire: serve::Wire,
    pub body: bytes::Bytes,
}

/// The request fields a stored entry is served against.
#[derive(Clone, Copy)]
struct View<'a> {
    method: &'a Method,
    head: &'a HeaderMap,
    accepted: Option<&'a Accepted>,
}

/// The client's directives for this cache (RFC 9111 §5.2.1, §5.4).
#[derive(Clone, Default)]
struct Directives {
    cc: CacheControl,
    /// `Pragma: no-cache` from a client that sent no Cache-Control.
    pragma: bool,
}

impl Directives {
    fn of(head: &HeaderMap) -> Directives {
        // Most requests carry neither field, and one pass over the names of
        // a small head costs less than a hashed lookup per field.
        let (mut cc, mut pragma) = (false, false);
        for name in head.keys() {
            cc |= name == header::CACHE_CONTROL;
            pragma |= name == header::PRAGMA;
        }
        Directives {
            cc: if cc {
                CacheControl::parse(head)
            } else {
                CacheControl::default()
            },
            pragma: pragma && policy::pragma_no_cache(head),
        }
    }

    fn usable(&self, entry: &Entry, now: SystemTime) -> Use {
        let age = entry.age(now);
        policy::usable(&self.cc, self.pragma, &entry.cc, entry.lifetime, age)
    }
}

impl Cache {
    /// Decides how a request on a caching route is answered: at once when
    /// the memory tier has the answer (a hit builds no future at all), or
    /// after a wait for what cannot be had at once: a `PURGE`, a
    /// second-tier read, or another request already filling the key (up to
    /// `lock_timeout`).
    pub(crate) fn lookup<'a>(&'a self, set: Settings<'a>, req: Request<'_>) -> Looked<'a> {
        if req.method.as_str() == "PURGE" {
            let (peer, primary, head) = (req.peer, req.primary, req.head.clone());
            return Looked::Later(Box::pin(async move {
                let resp = purge::purge_request(self, set.cache, peer, &primary, &head).await;
                Lookup::Hit(Answer { resp, result: None })
            }));
        }
        let readable = *req.method == Method::GET || *req.method == Method::HEAD;
        if !readable || req.has_body {
            let safe = matches!(
                *req.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
            );
            return Looked::Now(Lookup::Pass(Pass {
                primary: req.primary,
                safe,
            }));
        }
        let asked = Directives::of(req.head);
        // One clock reading decides freshness and sets `Age`.
        let now = SystemTime::now();
        let found = self.find(&req.primary, req.head);
        let memory_hit = found.entry.is_some();
        crate::metrics::get().cache_memory_lookups[usize::from(!memory_hit)].inc();
        match (memory_hit, &self.l2) {
            (false, Some(l2)) => {
                // The wait outlives the client's head: it works on a copy.
                let (method, head) = (req.method.clone(), req.head.clone());
                let accepted = req.accepted.cloned();
                let primary = req.primary;
                Looked::Later(Box::pin(async move {
                    let req = Request {
                        primary,
                        method: &method,
                        head: &head,
                        has_body: false,
                        peer: req.peer,
                        accepted: accepted.as_ref(),
                    };
                    let (found, streamed) = self.find_l2(l2, &req.primary, req.head, found).await;
                    if let Some(s) = streamed {
                        if let Some(answer) = streamed_hit(set, &s, req.view(), &asked, now) {
                            return Lookup::Hit(answer);
                        }
                    }
                    let from_l2 = found.entry.is_some().then_some("l2");
                    match self.decide(set, req, asked, found, from_l2, now) {
                        Decided::Now(lookup) => lookup,
                        Decided::Follow(follower) => follower.wait(set).await,
                    }
                }))
            }
            _ => match self.decide(set, req, asked, found, None, now) {
                Decided::Now(lookup) => Looked::Now(lookup),
                Decided::Follow(follower) => Looked::Later(Box::pin(follower.wait(set))),
            },
        }
    }

    /// A plain request ([`serve::is_plain`]) on a route that does not
    /// compress, for an entry of the memory tier that is fresh for it (its
    /// own directives read as [`Cache::lookup`] reads them): its answer as
    /// HTTP/1.1 bytes, for the listener's hit lane.
    /// `None`, having changed nothing, for anything else (and when the
    /// entry's head cannot go out as bytes, see [`serve::plain_wire`]):
    /// the request then takes [`Cache::lookup`], which decides what it
    /// would have decided anyway.
    pub(crate) fn plain_hit(&self, set: Settings<'_>, req: &Request<'_>) -> Option<PlainHit> {
        if req.has_body || req.accepted.is_some() || !serve::is_plain(req.method, req.head) {
            return None;
        }
        let now = SystemTime::now();
        let object = self.find(&req.primary, req.head).entry?;
        let entry = entry_of(&object)?;
        if Directives::of(req.head).usable(entry, now) != Use::Fresh {
            return None;
        }
        let age = entry.age(now);
        let status = Status::Hit {
            ttl: serve::ttl(entry, age),
            detail: None,
        };
        let wire = serve::plain_wire(entry, age, set.cache.status_header.then_some(&status))?;
        crate::metrics::get().cache_memory_lookups[0].inc();
        Some(PlainHit {
            status: entry.status,
            wire,
            body: entry.body.clone(),
        })
    }

    /// The lookup's decision once the tiers have been read: `found` is what
    /// they hold, `from_l2` the hit detail when it came from the second.
    fn decide(
        &self,
        set: Settings<'_>,
        req: Request<'_>,
        asked: Directives,
        found: Found,
        from_l2: Option<&'static str>,
        now: SystemTime,
    ) -> Decided {
        let view = req.view();
        let mut fwd = found.fwd;
        let mut stale = None;
        if let Some(object) = &found.entry {
            if let Some(entry) = entry_of(object) {
                let served = (entry, found.key(&req.primary));
                match asked.usable(entry, now) {
                    Use::Fresh => {
                        let answer = self.hit(set, "hit", served, view, from_l2, now);
                        return Decided::Now(Lookup::Hit(answer));
                    }
                    Use::StaleAllowed => {
                        let detail = Some("max-stale");
                        let answer = self.hit(set, "stale", served, view, detail, now);
                        return Decided::Now(Lookup::Hit(answer));
                    }
                    Use::StaleWhileRevalidate => {
                        let detail = Some("stale-while-revalidate");
                        let answer = self.hit(set, "stale", served, view, detail, now);
                        let refresh = self.refresh(&req, found.key(&req.primary), object.clone());
                        return Decided::Now(Lookup::Stale { answer, refresh });
                    }
                    Use::Revalidate => {
                        let by_request = asked.cc.no_cache
                            || asked.pragma
                            || asked.cc.max_age.is_some()
                            || asked.cc.min_fresh.is_some();
                        fwd = if by_request { "request" } else { "stale" };
                        stale = Some(object.clone());
                    }
                }
            }
        }
        if asked.cc.only_if_cached {
            // RFC 9111 §5.2.1.7: nothing usable without going upstream.
            let mut resp = Refusal::NotCached.reply();
            status_header(set.cache, &mut resp, &Status::forward(fwd, None, false));
            return Decided::Now(Lookup::Hit(Answer {
                resp,
                result: Some("miss"),
            }));
        }
        let led = match self
            .fills
            .join(found.key(&req.primary), &self.budget, found.fills_ended)
        {
            Join::Leader(guard) => Ok(guard),
            Join::Follower(filling) => Err(filling),
            Join::Ended => {
                // A fill ended between the store's read and now, and may
                // have stored the answer: read the store again (once)
                // rather than go upstream a second time.
                let mut again = self.find(&req.primary, req.head);
                again.fills_ended = None;
                return self.decide(set, req, asked, again, from_l2, now);
            }
        };
        let mut fill = Fill {
            key: found.variant.unwrap_or_else(|| req.primary.clone()),
            method: req.method.clone(),
            head: req.head.clone(),
            accepted: req.accepted.cloned(),
            primary: req.primary,
            asked,
            stale,
            fwd,
            guard: None,
            request_time: SystemTime::now(),
        };
        match led {
            Ok(guard) => {
                fill.guard = Some(guard);
                Decided::Now(Lookup::Miss(fill))
            }
            Err(filling) => Decided::Follow(Follower { filling, fill }),
        }
    }

    /// The background revalidation of a stale entry served now, unless
    /// another refresh of the same key already runs (it wins).
    fn refresh(&self, req: &Request<'_>, key: &str, object: Arc<Object>) -> Option<Fill> {
        let Join::Leader(guard) = self.fills.join(key, &self.budget, None) else {
            return None;
        };
        Some(Fill {
            primary: req.primary.clone(),
            method: Method::GET,
            head: req.head.clone(),
            accepted: req.accepted.cloned(),
            // A background refresh must not be blocked by the client's own
            // request directives.
            asked: Directives::default(),
            key: key.to_string(),
            stale: Some(object),
            fwd: "stale",
            guard: Some(guard),
            request_time: SystemTime::now(),
        })
    }

    /// Serves a stored entry (stored under `key`), compressed from a cached
    /// copy when the route compresses and the client takes a coding.
    fn hit(
        &self,
        set: Settings<'_>,
        result: &'static str,
        (entry, key): (&Entry, &str),
        view: View<'_>,
        detail: Option<&'static str>,
        now: SystemTime,
    ) -> Answer {
        let age = entry.age(now);
        let copy = match view.accepted {
            Some(accepted) => self.encoded_copy(set.compression, entry, key, view, accepted),
            None => Copy::Leave,
        };
        let status = Status::Hit {
            ttl: serve::ttl(entry, age),
            detail,
        };
        let (encoded, identity) = match copy {
            Copy::Encoded(coding, bytes) => (Some((coding, bytes)), false),
            Copy::Identity => (None, true),
            Copy::Leave if serve::is_plain(view.method, view.head) => {
                let status = set.cache.status_header.then_some(&status);
                return Answer {
                    resp: serve::plain(entry, age, status),
                    result: Some(result),
                };
            }
            Copy::Leave => (None, false),
        };
        let mut resp = serve::from_entry(entry, view.method, view.head, age, encoded);
        if identity {
            // Negotiated already: identity, which depends on Accept-Encoding.
            compress::vary_accept_encoding(resp.headers_mut());
            resp.extensions_mut().insert(compress::Negotiated);
        }
        status_header(set.cache, &mut resp, &status);
        Answer {
            resp,
            result: Some(result),
        }
    }

    /// The compressed copy of `entry` in the coding the client prefers, from
    /// the store or made now (once) at a level of at least `default`.
    fn encoded_copy(
        &self,
        cfg: &CompressionConfig,
        entry: &Entry,
        key: &str,
        view: View<'_>,
        accepted: &Accepted,
    ) -> Copy {
        if *view.method != Method::GET
            || view.head.contains_key(header::RANGE)
            || compress::content_coding(&entry.headers) != Some(None)
            || entry.cc.no_transform
            || !compress::compressible_kind(
                cfg,
                entry.status,
                &entry.headers,
                Some(entry.body.len() as u64),
            )
        {
            return Copy::Leave;
        }
        let Some(coding) = accepted.choose(&cfg.algorithms) else {
            return Copy::Identity;
        };
        if let Some(bytes) = entry.copies.get(coding) {
            return Copy::Encoded(coding, bytes.clone());
        }
        let level = match cfg.level {
            Level::Best => Level::Best,
            Level::Fast | Level::Default => Level::Default,
        };
        match compress::codec::compress_all(&entry.body, coding, level) {
            Ok(bytes) => {
                let counted = compress::counters(coding);
                counted.bytes_in.inc_by(entry.body.len() as u64);
                counted.bytes_out.inc_by(bytes.len() as u64);
                entry.copies.set(coding, bytes.clone());
                // Stored again so that the store weighs the copy too; unless the
                // key has moved on to a newer response meanwhile.
                let current = self.store.get(key);
                if current
                    .as_deref()
                    .and_then(entry_of)
                    .is_some_and(|e| std::ptr::eq(e, entry))
                {
                    self.keep(key.to_string(), Arc::new(Object::Response(entry.clone())));
                }
                Copy::Encoded(coding, bytes)
            }
            Err(e) => {
                tracing::warn!(error = %e, "compressing a cached response failed");
                Copy::Leave
            }
        }
    }
}

/// A request that found another filling its key: once the leader's head
/// is in (within `lock_timeout`), served from the fill as its body arrives,
/// when the response is fresh enough for it and the same `Vary` variant.
async fn follow(
    set: Settings<'_>,
    filling: Arc<Filling>,
    asked: &Directives,
    view: View<'_>,
) -> Option<Answer> {
    let head = tokio::time::timeout(set.cache.lock_timeout, filling.head())
        .await
        .ok()??;
    if !head.serves(view.head) {
        return None;
    }
    let now = SystemTime::now();
    let entry = &head.entry;
    if !matches!(asked.usable(entry, now), Use::Fresh | Use::StaleAllowed) {
        return None;
    }
    let age = entry.age(now);
    let mut resp = serve::from_fill(&head, &filling, view.method, view.head, age)?;
    let status = Status::Hit {
        ttl: serve::ttl(entry, age),
        detail: Some("collapsed"),
    };
    status_header(set.cache, &mut resp, &status);
    Some(Answer {
        resp,
        result: Some("coalesced"),
    })
}

/// A response the second tier streams (too large for memory), served
/// when fresh (or stale where the client allows it); otherwise the
/// request goes upstream as a plain miss (the body is not revalidated).
fn streamed_hit(
    set: Settings<'_>,
    s: &tier::Streamed,
    view: View<'_>,
    asked: &Directives,
    now: SystemTime,
) -> Option<Answer> {
    let (result, detail) = match asked.usable(&s.entry, now) {
        Use::Fresh => ("hit", "l2"),
        Use::StaleAllowed => ("stale", "max-stale"),
        _ => return None,
    };
    let age = s.entry.age(now);
    let mut resp = serve::from_source(&s.entry, s.length, &s.body, view.method, view.head, age);
    let status = Status::Hit {
        ttl: serve::ttl(&s.entry, age),
        detail: Some(detail),
    };
    status_header(set.cache, &mut resp, &status);
    Some(Answer {
        resp,
        result: Some(result),
    })
}

/// Carried by a fill leader's response to the access log, which says at
/// the end of the body what became of the fill (`miss; stored`).
#[derive(Clone)]
pub(crate) struct FillReport(Arc<Filling>);

impl FillReport {
    /// The access log's `cache` value for the lookup `result`.
    pub(crate) fn cache_field(&self, result: &'static str) -> &'static str {
        match (result, self.0.outcome()) {
            ("miss", filling::Outcome::Stored) => "miss; stored",
            ("miss", filling::Outcome::OverBudget) => "miss; detail=fill-budget",
            _ => result,
        }
    }
}

/// What a hit on a compressing route sends.
enum Copy {
    /// Not a case for a stored copy (a range, a coded or incompressible
    /// entry): [`compress::apply`] decides on the way out.
    Leave,
    /// Compressible, but the client takes no coding.
    Identity,
    Encoded(Coding, bytes::Bytes),
}

fn status_header(cfg: &CacheConfig, resp: &mut Response<ProxyBody>, status: &Status) {
    if cfg.status_header {
        resp.headers_mut()
            .insert(serve::CACHE_STATUS.clone(), status.header_value());
    }
}

/// A request the cache does not answer (not GET or HEAD, or with a body).
pub(crate) struct Pass {
    primary: String,
    /// GET, HEAD, OPTIONS or TRACE: nothing to invalidate.
    safe: bool,
}

impl Pass {
    /// The forwarded response on its way out: an unsafe method's success
    /// invalidates the URL (RFC 9111 §4.4); surrogate keys are stripped.
    pub(crate) fn finish(
        self,
        cache: &Cache,
        set: Settings<'_>,
        mut resp: Response<ProxyBody>,
    ) -> Answer {
        let status = resp.status();
        if !self.safe
            && !reply::is_generated(&resp)
            && (status.is_success() || status.is_redirection())
        {
            let gone = purge::invalidate(cache.store.as_ref(), &self.primary, resp.headers());
            if let Some(l2) = &cache.l2 {
                for key in gone {
                    l2.invalidate(key);
                }
            }
        }
        fill::take_tags(resp.headers_mut());
        let fwd = if self.safe { "bypass" } else { "method" };
        status_header(set.cache, &mut resp, &Status::forward(fwd, None, false));
        Answer {
            resp,
            result: Some("bypass"),
        }
    }
}

/// One trip upstream for a miss or a revalidation, and what to store and
/// answer from its response. Holds the key's fill lock while it leads.
pub(crate) struct Fill {
    primary: String,
    /// The client's request (GET or HEAD) as the cache saw it: the head
    /// carries the conditionals, range and Vary inputs.
    method: Method,
    head: HeaderMap,
    accepted: Option<Accepted>,
    asked: Directives,
    key: String,
    /// The stored entry being revalidated.
    stale: Option<Arc<Object>>,
    fwd: &'static str,
    /// Held while this request fills the key; `None` when not coalescing.
    guard: Option<FillGuard>,
    request_time: SystemTime,
}

impl Fill {
    /// Rewrites the request for the trip upstream: the client's
    /// conditionals replaced by the stored entry's validators, GET for a
    /// HEAD (so the entry serves both), `Surrogate-Capability`, and
    /// identity when sluice compresses (it keeps compressed copies itself).
    pub(crate) fn prepare(&mut self, method: &mut Method, head: &mut HeaderMap) {
        for name in &fill::CLIENT_CONDITIONALS {
            head.remove(name);
        }
        *method = Method::GET;
        head.insert(
            surrogate::SURROGATE_CAPABILITY.clone(),
            surrogate::capability(),
        );
        if self.accepted.is_some() {
            head.remove(header::ACCEPT_ENCODING);
        }
        if let Some(entry) = self.stale.as_deref().and_then(entry_of) {
            fill::add_validators(head, &entry.headers);
        }
        self.request_time = SystemTime::now();
    }

    /// Decides on the upstream's response: a 304 freshens the stale entry
    /// and answers from it; a 5xx may be replaced by the stale entry
    /// (`stale-if-error`); a storable response becomes a fill
    /// ([`filling`]): its body is read into the cache by a task of its own
    /// and the client reads it from there, as followers do. HEAD,
    /// conditional and range requests are answered from the fill's head
    /// (a range's bytes as they arrive).
    pub(crate) async fn finish(
        self,
        cache: &Cache,
        set: Settings<'_>,
        resp: Response<ProxyBody>,
    ) -> Answer {
        let cfg = set.cache;
        let response_time = SystemTime::now();
        let generated = reply::is_generated(&resp);
        let status = resp.status();
        let Fill {
            primary,
            method,
            head,
            accepted,
            asked,
            key,
            stale,
            fwd,
            guard,
            request_time,
        } = self;
        let view = View {
            method: &method,
            head: &head,
            accepted: accepted.as_ref(),
        };

        if let Some(entry) = stale.as_deref().and_then(entry_of) {
            if status == StatusCode::NOT_MODIFIED
                && !generated
                && fill::has_validator(&entry.headers)
            {
                // RFC 9111 §4.3.4: freshen the stored head, keep the body.
                let fields = &cfg.targeted_fields;
                let fresh = refreshed(entry, resp.headers(), fields, request_time, response_time);
                let age = fresh.age(SystemTime::now());
                let mut out = serve::from_entry(&fresh, view.method, view.head, age, None);
                cache.keep(key.clone(), Arc::new(Object::Response(fresh)));
                drop(guard);
                status_header(cfg, &mut out, &Status::forward(fwd, Some(304), true));
                return Answer {
                    resp: out,
                    result: Some("revalidated"),
                };
            }
            if status.is_server_error() {
                let now = SystemTime::now();
                let staleness = entry.age(now).saturating_sub(entry.lifetime);
                // An origin that cannot be reached at all gets the longer
                // of the two graces; a 5xx it sent only the operator's.
                let grace = if generated && reply::origin_unreachable(&resp) {
                    cfg.serve_stale_on_error.max(cfg.stale_if_unreachable)
                } else {
                    cfg.serve_stale_on_error
                };
                if policy::stale_if_error(&asked.cc, asked.pragma, &entry.cc, staleness, grace) {
                    tracing::debug!(status = status.as_u16(), "serving stale on upstream error");
                    let served = (entry, key.as_str());
                    let detail = "stale-if-error";
                    let mut answer = cache.hit(set, "stale", served, view, Some(detail), now);
                    status_header(cfg, &mut answer.resp, &Status::ForwardedStale { detail });
                    return answer;
                }
            }
        }

        let miss = |resp| Answer {
            resp,
            result: Some("miss"),
        };
        let (mut parts, upstream_body) = resp.into_parts();
        let tags = fill::take_tags(&mut parts.headers);
        let directives = verdict::directives(&parts.headers, &cfg.targeted_fields);
        let rules = policy::StoreRules {
            store_set_cookie: cfg.store_set_cookie,
        };
        // A second tier may take what memory would not.
        let object_limit = cache.l2.as_ref().map_or(cfg.max_object_size, |l2| {
            l2.max_object_size().max(cfg.max_object_size)
        });
        let verdict = verdict::storable(
            view.head,
            &asked.cc,
            status,
            &parts.headers,
            (&directives.0, directives.1),
            &rules,
            object_limit,
        );
        if let Err(why) = verdict {
            tracing::trace!(reason = %why, "response not stored");
        }
        let storable = !generated && verdict.is_ok();
        let fwd_status = stale.is_some().then_some(status.as_u16());
        let head_only = *view.method == Method::HEAD;
        if !storable {
            drop(guard);
            parts.headers.remove(&surrogate::SURROGATE_CONTROL);
            let body = if head_only {
                body::empty()
            } else {
                upstream_body
            };
            let mut out = Response::from_parts(parts, body);
            status_header(cfg, &mut out, &Status::forward(fwd, fwd_status, false));
            return miss(out);
        }
        // HEAD, conditionals and ranges are answered from the entry as it
        // fills (304 and HEAD at once, a range as its bytes arrive); a GET
        // gets the upstream's own head (its `Set-Cookie` included) and the
        // body from the fill.
        let answer_from_entry = head_only
            || fill::CLIENT_CONDITIONALS
                .iter()
                .any(|h| view.head.contains_key(h));
        let length = content_length(&parts.headers);
        let placement = Placement {
            ignore_accept_encoding: accepted.is_some(),
            primary,
            status,
            headers: fill::stored_head(&parts.headers),
            tags,
            request_time,
            response_time,
            initial_age: policy::corrected_initial_age(&parts.headers, request_time, response_time),
            directives,
        };
        parts.headers.remove(&surrogate::SURROGATE_CONTROL);
        let filling = match &guard {
            Some(g) => g.filling.clone(),
            None => Filling::new(cache.budget.clone()),
        };
        let report = FillReport(filling.clone());
        let shared = Arc::new(placement.head(cache.store.as_ref(), view.head, length));
        let over_budget = crate::metrics::get()
            .cache_fill_budget_exceeded
            .with_label_values(&[set.route]);
        // Too large for memory, not for the second tier: relayed to the
        // client and written to the tier as it arrives.
        let l2_only = length.is_some_and(|n| n > cfg.max_object_size);
        if l2_only {
            filling.open_relay(shared.clone());
        } else if !filling.open(shared.clone(), over_budget) {
            // No room in the fill budget for this body: it streams on,
            // uncached, and the followers go on their own.
            drop(guard);
            let body = if head_only {
                body::empty()
            } else {
                upstream_body
            };
            let mut out = Response::from_parts(parts, body);
            let status = Status::Forward {
                fwd,
                fwd_status,
                stored: false,
                collapsed: false,
                detail: Some("fill-budget"),
            };
            status_header(cfg, &mut out, &status);
            out.extensions_mut().insert(report);
            return miss(out);
        }
        let out = if answer_from_entry {
            let age = shared.entry.age(SystemTime::now());
            serve::from_fill(&shared, &filling, view.method, view.head, age)
        } else {
            filling
                .reader(0, length, true)
                .map(|r| Response::from_parts(parts, filling::boxed(r)))
        };
        let store = cache.store.clone();
        let placed = shared.clone();
        let l2 = cache.l2.clone();
        let spill = cache.l2.clone().map(|l2| {
            let head = shared.clone();
            Box::new(move || l2.spill(&head)) as filling::SpillStart
        });
        tokio::spawn(filling::drive(
            filling,
            upstream_body,
            cfg.max_object_size,
            length,
            guard,
            move |body| {
                let entry = fill::store(store.as_ref(), &placed, body);
                if let Some(l2) = &l2 {
                    l2.offer_fill(&placed, &entry);
                }
            },
            spill,
        ));
        // A fill that has not started keeps every byte: a reader is had.
        let mut out = out.unwrap_or_else(|| Refusal::UpstreamFailed.reply());
        status_header(cfg, &mut out, &Status::forward(fwd, fwd_status, false));
        out.extensions_mut().insert(report);
        miss(out)
    }
}

/// The entry after a 304: head updated (RFC 9111 §3.2), times and
/// freshness recomputed, body kept.
fn refreshed(
    entry: &Entry,
    fresh: &HeaderMap,
    targeted_fields: &[http::HeaderName],
    request_time: SystemTime,
    response_time: SystemTime,
) -> Entry {
    let mut headers = entry.headers.clone();
    policy::update_headers(&mut headers, fresh);
    let mut head = fill::stored_head(&headers);
    let mut tags_source = fresh.clone();
    let tags = fill::take_tags(&mut tags_source);
    fill::take_tags(&mut head);
    let (cc, targeted) = verdict::directives(&head, targeted_fields);
    Entry {
        status: entry.status,
        lifetime: verdict::lifetime(entry.status, &head, &cc, targeted, response_time),
        initial_age: policy::corrected_initial_age(fresh, request_time, response_time),
        headers: head,
        body: entry.body.clone(),
        request_time,
        response_time,
        cc,
        tags: if tags.is_empty() {
            entry.tags.clone()
        } else {
            tags
        },
        copies: Default::default(),
        hit_head: Default::default(),
    }
}
