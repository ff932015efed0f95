//! The shared HTTP cache (RFC 9111) for routes with `cache = true`.
//!
//! - [`key`]: what identifies a stored response (URL, route extras, Vary).
//! - [`policy`]: the RFC's rules as pure functions (may it be stored, is it
//!   fresh, may a stale one be used).
//! - [`store`]: where entries live (moka, bounded by bytes) behind a trait.
//! - [`fill`]: coalescing of concurrent misses and copying a streaming
//!   response into the store.
//! - [`serve`]: answers made from an entry (HEAD, 304, ranges, `Age`,
//!   `Cache-Status`).
//! - [`purge`]: invalidation after unsafe methods and purge by URL, prefix,
//!   tag or everything.
//!
//! The flow for a GET or HEAD: look up; a usable entry is served; a stale
//! one inside `stale-while-revalidate` is served and refreshed in the
//! background; otherwise one request per key goes upstream (conditional
//! when the entry has validators) while identical requests wait for it.

pub mod fill;
pub mod key;
pub mod policy;
pub mod purge;
pub mod serve;
pub mod store;
pub mod surrogate;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::{header, HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{self, ProxyBody};
use crate::compress::{self, Accepted};
use crate::config::{CacheConfig, Coding, Level, Limits};
use crate::proxy::observe::Outcome;
use crate::proxy::{forward, local, Forward, Generated};
use crate::router::Route;
use crate::snapshot::Snapshot;
use fill::{FillBody, FillGuard, Fills, Join, Pending};
use policy::{CacheControl, Use};
use serve::Status;
use store::{Entry, MemoryStore, Object, Store};
use surrogate::SurrogateControl;

/// The cache of one daemon: a store and the fills in flight. It outlives
/// reloads; a new `max_size` gets a new store holding the old one's entries.
#[derive(Debug)]
pub struct Cache {
    pub store: Arc<dyn Store>,
    fills: Arc<Fills>,
    max_size: u64,
}

impl Cache {
    pub fn new(config: &CacheConfig) -> Cache {
        let evictions = crate::metrics::get().cache_evictions.clone();
        Cache {
            store: Arc::new(MemoryStore::new(config.max_size, move || evictions.inc())),
            fills: Arc::default(),
            max_size: config.max_size,
        }
    }

    /// The previous snapshot's cache when its size is unchanged. A moka
    /// store cannot be resized, so a new `max_size` gets a new store with
    /// the old one's entries copied in (bodies are shared, not copied; when
    /// the new size is smaller, the store evicts as it fills). The fills in
    /// flight carry over either way, so coalescing goes on across a reload.
    pub fn carry_over(previous: Option<&Arc<Cache>>, config: &CacheConfig) -> Arc<Cache> {
        let Some(previous) = previous else {
            return Arc::new(Cache::new(config));
        };
        if previous.max_size == config.max_size {
            return previous.clone();
        }
        let mut resized = Cache::new(config);
        resized.fills = previous.fills.clone();
        previous.store.each(&mut |key, object| {
            resized.store.insert(key.to_string(), object.clone());
        });
        Arc::new(resized)
    }

    /// Updates `sluice_cache_entries` and `sluice_cache_bytes`.
    pub fn refresh_gauges(&self) {
        let m = crate::metrics::get();
        m.cache_entries
            .set(i64::try_from(self.store.entries()).unwrap_or(i64::MAX));
        m.cache_bytes
            .set(i64::try_from(self.store.bytes()).unwrap_or(i64::MAX));
    }

    /// Finds the stored response for a request.
    fn lookup(&self, primary: &str, req: &HeaderMap) -> Lookup {
        match self.store.get(primary) {
            None => Lookup {
                entry: None,
                key: primary.to_string(),
                fwd: "miss",
            },
            Some(object) => match &*object {
                Object::Response(_) => Lookup {
                    entry: Some(object.clone()),
                    key: primary.to_string(),
                    fwd: "miss",
                },
                Object::Vary { names, id } => {
                    let key = key::variant(primary, *id, names, req);
                    let entry = self
                        .store
                        .get(&key)
                        .filter(|o| matches!(**o, Object::Response(_)));
                    Lookup {
                        entry,
                        key,
                        fwd: "vary-miss",
                    }
                }
            },
        }
    }
}

struct Lookup {
    /// Always an `Object::Response`.
    entry: Option<Arc<Object>>,
    /// The key the response is (or would be) stored under.
    key: String,
    /// `Cache-Status` `fwd` for a miss.
    fwd: &'static str,
}

fn entry_of(object: &Object) -> Option<&Entry> {
    match object {
        Object::Response(e) => Some(e),
        Object::Vary { .. } => None,
    }
}

/// What the cache needs to know about the client's request.
#[derive(Clone)]
struct Ask {
    primary: String,
    /// The client's request (GET or HEAD): its head carries the
    /// conditionals, range and Vary inputs. A hit only reads it; a trip
    /// upstream sends a copy.
    req: Forward,
    cc: CacheControl,
    /// `Pragma: no-cache` from a client that sent no Cache-Control.
    pragma: bool,
    /// The client's `Accept-Encoding` when the route compresses: hits are
    /// then served from (or make) a compressed copy.
    accepted: Option<Accepted>,
}

/// Answers a request on a caching route. `accepted` is the client's
/// `Accept-Encoding` when the route compresses.
#[allow(clippy::too_many_arguments)]
pub async fn respond(
    snap: &Arc<Snapshot>,
    route: &Route,
    primary: String,
    peer: IpAddr,
    req: Forward,
    incoming: Incoming,
    accepted: Option<Accepted>,
    limits: &Limits,
    outcome: &mut Outcome,
) -> Response<ProxyBody> {
    let cfg = &snap.config.cache;
    if req.method.as_str() == "PURGE" {
        return purge::purge_request(&snap.cache, cfg, peer, &primary);
    }
    use http_body::Body as _;
    let readable = req.method == Method::GET || req.method == Method::HEAD;
    if !readable || !incoming.is_end_stream() {
        return pass(snap, route, primary, req, incoming, limits, outcome).await;
    }
    let cc = CacheControl::parse(&req.head);
    let pragma = !req.head.contains_key(header::CACHE_CONTROL)
        && req.head.get_all(header::PRAGMA).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache"))
        });
    let ask = Ask {
        primary,
        req,
        accepted,
        cc,
        pragma,
    };
    let cache = &snap.cache;
    let found = cache.lookup(&ask.primary, &ask.req.head);
    let mut fwd = found.fwd;
    let mut stale = None;
    if let Some(object) = &found.entry {
        let Some(entry) = entry_of(object) else {
            return local(StatusCode::INTERNAL_SERVER_ERROR, "cache entry missing");
        };
        let age = entry.age(SystemTime::now());
        match policy::usable(&ask.cc, ask.pragma, &entry.cc, entry.lifetime, age) {
            Use::Fresh => return hit(snap, outcome, "hit", (entry, &found.key), &ask, None),
            Use::StaleAllowed => {
                return hit(
                    snap,
                    outcome,
                    "stale",
                    (entry, &found.key),
                    &ask,
                    Some("max-stale"),
                );
            }
            Use::StaleWhileRevalidate => {
                refresh_in_background(snap, route, &ask, &found.key, object.clone());
                return hit(
                    snap,
                    outcome,
                    "stale",
                    (entry, &found.key),
                    &ask,
                    Some("stale-while-revalidate"),
                );
            }
            Use::Revalidate => {
                let by_request = ask.cc.no_cache
                    || ask.pragma
                    || ask.cc.max_age.is_some()
                    || ask.cc.min_fresh.is_some();
                fwd = if by_request { "request" } else { "stale" };
                stale = Some(object.clone());
            }
        }
    }
    if ask.cc.only_if_cached {
        // RFC 9111 §5.2.1.7: nothing usable without going upstream.
        outcome.cache = Some("miss");
        let mut resp = local(StatusCode::GATEWAY_TIMEOUT, "not in cache (only-if-cached)");
        status_header(
            cfg,
            &mut resp,
            &Status::Forward {
                fwd,
                fwd_status: None,
                stored: false,
                collapsed: false,
            },
        );
        return resp;
    }
    let guard = match cache.fills.join(&found.key) {
        Join::Leader(guard) => Some(guard),
        Join::Follower(rx) => {
            Fills::wait(rx, cfg.lock_timeout).await;
            let again = cache.lookup(&ask.primary, &ask.req.head);
            if let Some(entry) = again.entry.as_deref().and_then(entry_of) {
                let age = entry.age(SystemTime::now());
                if let Use::Fresh | Use::StaleAllowed =
                    policy::usable(&ask.cc, ask.pragma, &entry.cc, entry.lifetime, age)
                {
                    return hit(
                        snap,
                        outcome,
                        "coalesced",
                        (entry, &again.key),
                        &ask,
                        Some("collapsed"),
                    );
                }
            }
            // The leader's response could not be shared: go on our own.
            None
        }
    };
    let fetched = Fetch {
        ask,
        key: found.key,
        stale,
        fwd,
        guard,
    };
    fetched.run(snap, route, limits, outcome).await
}

/// Serves a stored entry (stored under `key`), compressed from a cached
/// copy when the route compresses and the client takes a coding.
fn hit(
    snap: &Snapshot,
    outcome: &mut Outcome,
    result: &'static str,
    (entry, key): (&Entry, &str),
    ask: &Ask,
    detail: Option<&'static str>,
) -> Response<ProxyBody> {
    outcome.cache = Some(result);
    let age = entry.age(SystemTime::now());
    let copy = match &ask.accepted {
        Some(accepted) => encoded_copy(snap, entry, key, ask, accepted),
        None => Copy::Leave,
    };
    let (encoded, identity) = match copy {
        Copy::Encoded(coding, bytes) => (Some((coding, bytes)), false),
        Copy::Identity => (None, true),
        Copy::Leave => (None, false),
    };
    let mut resp = serve::from_entry(entry, &ask.req.method, &ask.req.head, age, encoded);
    if identity {
        // Negotiated already: identity, which depends on Accept-Encoding.
        compress::vary_accept_encoding(resp.headers_mut());
        resp.extensions_mut().insert(compress::Negotiated);
    }
    let status = Status::Hit {
        ttl: serve::ttl(entry, age),
        detail,
    };
    status_header(&snap.config.cache, &mut resp, &status);
    resp
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

/// The compressed copy of `entry` in the coding the client prefers, from
/// the store or made now (once) at a level of at least `default`.
fn encoded_copy(snap: &Snapshot, entry: &Entry, key: &str, ask: &Ask, accepted: &Accepted) -> Copy {
    let cfg = &snap.config.compression;
    if ask.req.method != Method::GET
        || ask.req.head.contains_key(header::RANGE)
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
            let current = snap.cache.store.get(key);
            if current
                .as_deref()
                .and_then(entry_of)
                .is_some_and(|e| std::ptr::eq(e, entry))
            {
                snap.cache
                    .store
                    .insert(key.to_string(), Arc::new(Object::Response(entry.clone())));
            }
            Copy::Encoded(coding, bytes)
        }
        Err(e) => {
            tracing::warn!(error = %e, "compressing a cached response failed");
            Copy::Leave
        }
    }
}

fn status_header(cfg: &CacheConfig, resp: &mut Response<ProxyBody>, status: &Status) {
    if cfg.status_header {
        resp.headers_mut()
            .insert(serve::CACHE_STATUS.clone(), status.header_value());
    }
}

/// Methods that are not GET or HEAD, and requests with a body: forwarded
/// as they are; an unsafe method's success invalidates (RFC 9111 §4.4).
async fn pass(
    snap: &Arc<Snapshot>,
    route: &Route,
    primary: String,
    req: Forward,
    incoming: Incoming,
    limits: &Limits,
    outcome: &mut Outcome,
) -> Response<ProxyBody> {
    let safe = matches!(
        req.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    outcome.cache = Some("bypass");
    let mut resp = forward(snap, route, req, Some(incoming), None, limits, outcome).await;
    let status = resp.status();
    let generated = resp.extensions().get::<Generated>().is_some();
    if !safe && !generated && (status.is_success() || status.is_redirection()) {
        purge::invalidate(snap.cache.store.as_ref(), &primary, resp.headers());
    }
    fill::take_tags(resp.headers_mut());
    status_header(
        &snap.config.cache,
        &mut resp,
        &Status::Forward {
            fwd: if safe { "bypass" } else { "method" },
            fwd_status: None,
            stored: false,
            collapsed: false,
        },
    );
    resp
}

/// Serves the stale entry and revalidates it once, off the request path
/// (RFC 5861 §3). Another refresh of the same key already running wins.
fn refresh_in_background(
    snap: &Arc<Snapshot>,
    route: &Route,
    ask: &Ask,
    key: &str,
    object: Arc<Object>,
) {
    let Join::Leader(guard) = snap.cache.fills.join(key) else {
        return;
    };
    let snap = snap.clone();
    let route = route.clone();
    let mut ask = ask.clone();
    ask.req.method = Method::GET;
    // A background refresh must not be blocked by the client's own
    // request directives.
    ask.cc = CacheControl::default();
    ask.pragma = false;
    let fetch = Fetch {
        ask,
        key: key.to_string(),
        stale: Some(object),
        fwd: "stale",
        guard: Some(guard),
    };
    tokio::spawn(async move {
        let mut outcome = Outcome::default();
        let limits = snap.config.limits.clone();
        let resp = fetch.run(&snap, &route, &limits, &mut outcome).await;
        // Reading the body to its end is what stores it.
        if let Err(e) = resp.into_body().collect().await {
            tracing::debug!(error = %e, "background revalidation failed");
        }
    });
}

/// One trip upstream for a miss or a revalidation.
struct Fetch {
    ask: Ask,
    key: String,
    /// The stored entry being revalidated.
    stale: Option<Arc<Object>>,
    fwd: &'static str,
    /// Held while this request fills the key; `None` when not coalescing.
    guard: Option<FillGuard>,
}

impl Fetch {
    async fn run(
        self,
        snap: &Arc<Snapshot>,
        route: &Route,
        limits: &Limits,
        outcome: &mut Outcome,
    ) -> Response<ProxyBody> {
        let cfg = &snap.config.cache;
        let store = snap.cache.store.clone();
        let mut req = self.ask.req.clone();
        for name in &fill::CLIENT_CONDITIONALS {
            req.head.remove(name);
        }
        // A HEAD miss is fetched as GET so that the entry can serve both.
        req.method = Method::GET;
        req.head.insert(
            surrogate::SURROGATE_CAPABILITY.clone(),
            surrogate::capability(),
        );
        if ask_compresses(&self.ask) {
            // One stored representation (identity); sluice makes and keeps
            // the compressed copies itself.
            req.head.remove(header::ACCEPT_ENCODING);
        }
        let stale = self.stale.as_deref().and_then(entry_of);
        if let Some(entry) = stale {
            fill::add_validators(&mut req.head, &entry.headers);
        }
        let request_time = SystemTime::now();
        let resp = forward(snap, route, req, None, None, limits, outcome).await;
        let response_time = SystemTime::now();
        let generated = resp.extensions().get::<Generated>().is_some();
        let status = resp.status();
        let ask = &self.ask;

        if let Some(entry) = stale {
            if status == StatusCode::NOT_MODIFIED
                && !generated
                && fill::has_validator(&entry.headers)
            {
                // RFC 9111 §4.3.4: freshen the stored head, keep the body.
                let fresh = refreshed(entry, resp.headers(), request_time, response_time);
                let age = fresh.age(SystemTime::now());
                let mut out = serve::from_entry(&fresh, &ask.req.method, &ask.req.head, age, None);
                store.insert(self.key.clone(), Arc::new(Object::Response(fresh)));
                drop(self.guard);
                outcome.cache = Some("revalidated");
                status_header(
                    cfg,
                    &mut out,
                    &Status::Forward {
                        fwd: self.fwd,
                        fwd_status: Some(304),
                        stored: true,
                        collapsed: false,
                    },
                );
                return out;
            }
            if status.is_server_error() {
                let now = SystemTime::now();
                let staleness = entry.age(now).saturating_sub(entry.lifetime);
                if policy::stale_if_error(
                    &ask.cc,
                    ask.pragma,
                    &entry.cc,
                    staleness,
                    cfg.serve_stale_on_error,
                ) {
                    tracing::debug!(status = status.as_u16(), "serving stale on upstream error");
                    return hit(
                        snap,
                        outcome,
                        "stale",
                        (entry, &self.key),
                        ask,
                        Some("stale-if-error"),
                    );
                }
            }
        }

        outcome.cache = Some("miss");
        let (mut parts, upstream_body) = resp.into_parts();
        let tags = fill::take_tags(&mut parts.headers);
        let rules = policy::StoreRules {
            store_set_cookie: cfg.store_set_cookie,
        };
        let verdict = match SurrogateControl::parse(&parts.headers) {
            Some(sc) if sc.no_store => Err(policy::NotStorable::NoStore),
            // Surrogate-Control max-age speaks for this cache: Cache-Control
            // (meant for browsers) does not decide storing.
            Some(SurrogateControl {
                max_age: Some(_), ..
            }) => surrogate_storable(status, &parts.headers),
            _ => policy::storable(&Method::GET, &ask.req.head, status, &parts.headers, &rules),
        };
        let storable = !generated
            && !ask.cc.no_store
            && verdict.is_ok()
            && !fill::too_large(&parts.headers, cfg.max_object_size);
        if let Err(why) = verdict {
            tracing::trace!(reason = %why, "response not stored");
        }
        let cache_status = Status::Forward {
            fwd: self.fwd,
            fwd_status: self.stale.is_some().then_some(status.as_u16()),
            stored: storable,
            collapsed: false,
        };
        if !storable {
            drop(self.guard);
            parts.headers.remove(&surrogate::SURROGATE_CONTROL);
            let body = if ask.req.method == Method::HEAD {
                body::empty()
            } else {
                upstream_body
            };
            let mut out = Response::from_parts(parts, body);
            status_header(cfg, &mut out, &cache_status);
            return out;
        }
        let pending = Pending {
            ignore_accept_encoding: ask_compresses(ask),
            store,
            primary: ask.primary.clone(),
            request: ask.req.head.clone(),
            status,
            headers: fill::stored_head(&parts.headers),
            tags,
            request_time,
            response_time,
            age_source: parts.headers.clone(),
        };
        parts.headers.remove(&surrogate::SURROGATE_CONTROL);
        let filling = FillBody::new(upstream_body, cfg.max_object_size, pending, self.guard);
        let answer_from_entry = ask.req.method == Method::HEAD
            || fill::CLIENT_CONDITIONALS
                .iter()
                .any(|h| ask.req.head.contains_key(h));
        // Reading the body first is bounded only when its length is known
        // (and within max_object_size, checked above). Otherwise a GET gets
        // the whole 200 as it streams (ignoring Range and conditionals is
        // allowed), and a HEAD its head without waiting for the body.
        let length_known = parts.headers.contains_key(header::CONTENT_LENGTH);
        if answer_from_entry && !length_known && ask.req.method == Method::HEAD {
            drop(filling);
            let mut out = Response::from_parts(parts, body::empty());
            let not_stored = Status::Forward {
                fwd: self.fwd,
                fwd_status: self.stale.is_some().then_some(status.as_u16()),
                stored: false,
                collapsed: false,
            };
            status_header(cfg, &mut out, &not_stored);
            return out;
        }
        if !answer_from_entry || !length_known {
            let mut out = Response::from_parts(parts, filling.boxed());
            status_header(cfg, &mut out, &cache_status);
            return out;
        }
        // HEAD, conditionals and ranges are answered from the stored entry,
        // so the whole body is read first.
        let slot = Arc::new(Mutex::new(None));
        let whole = match filling.report_to(slot.clone()).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                tracing::warn!(error = %e, "upstream body failed");
                return local(StatusCode::BAD_GATEWAY, "upstream failed");
            }
        };
        let stored = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut out = match stored.as_deref().and_then(entry_of) {
            Some(entry) => {
                let age = entry.age(SystemTime::now());
                serve::from_entry(entry, &ask.req.method, &ask.req.head, age, None)
            }
            None => {
                let body = if ask.req.method == Method::HEAD {
                    body::empty()
                } else {
                    body::full(whole)
                };
                Response::from_parts(parts, body)
            }
        };
        status_header(cfg, &mut out, &cache_status);
        out
    }
}

/// The freshness lifetime of a stored head: Surrogate-Control's max-age
/// when it speaks to sluice, else RFC 9111 §4.2.1.
pub fn lifetime(
    status: StatusCode,
    head: &HeaderMap,
    cc: &CacheControl,
    response_time: SystemTime,
) -> std::time::Duration {
    match SurrogateControl::parse(head).and_then(|sc| sc.max_age) {
        Some(secs) => std::time::Duration::from_secs(secs),
        None => policy::freshness_lifetime(status, head, cc, response_time),
    }
}

/// What remains of RFC 9111 §3 when Surrogate-Control gives a lifetime: a
/// final, complete response that can be matched again.
fn surrogate_storable(status: StatusCode, head: &HeaderMap) -> Result<(), policy::NotStorable> {
    if status.is_informational() || status == StatusCode::NOT_MODIFIED {
        return Err(policy::NotStorable::Status);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        return Err(policy::NotStorable::Partial);
    }
    if key::vary_names(head).is_none() {
        return Err(policy::NotStorable::VaryStar);
    }
    Ok(())
}

fn ask_compresses(ask: &Ask) -> bool {
    ask.accepted.is_some()
}

/// The entry after a 304: head updated (RFC 9111 §3.2), times and
/// freshness recomputed, body kept.
fn refreshed(
    entry: &Entry,
    fresh: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Entry {
    let mut headers = entry.headers.clone();
    policy::update_headers(&mut headers, fresh);
    let mut head = fill::stored_head(&headers);
    let mut tags_source = fresh.clone();
    let tags = fill::take_tags(&mut tags_source);
    fill::take_tags(&mut head);
    let cc = CacheControl::parse(&head);
    Entry {
        status: entry.status,
        lifetime: lifetime(entry.status, &head, &cc, response_time),
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
    }
}
