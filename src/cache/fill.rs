//! Filling the cache: request coalescing (one upstream request per key at a
//! time; the others join its [`Filling`]), where a response is stored
//! ([`Placement`], [`store`]), and the fields a fill adds to or removes
//! from the trip upstream.
//!
//! An entry is stored only when its body ended cleanly within
//! `max_object_size`: a body cut short or failing is never stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, StatusCode};

use super::filling::{Budget, Filling, Head};
use super::key;
use super::store::{Entry, Object, Store};
use crate::headers::cache_control::CacheControl;

/// Fills in flight per key, for coalescing.
#[derive(Debug, Default)]
pub(crate) struct Fills {
    running: Mutex<HashMap<String, Arc<Filling>>>,
    /// Fills ended so far, counted when their registration goes (after
    /// the entry, if any, is stored): a lookup that missed in the store,
    /// then finds no fill to join, reads the store again if one ended in
    /// between (it may have stored the answer).
    ended: AtomicU64,
}

/// Whether this request leads the fill for its key or joins another.
pub(crate) enum Join {
    Leader(FillGuard),
    Follower(Arc<Filling>),
    /// A fill ended since the caller read the store, and may have stored
    /// the answer: read it again before going upstream.
    Ended,
}

impl Fills {
    /// Fills ended so far ([`Fills::ended`]): read before the store.
    pub(crate) fn ended(&self) -> u64 {
        self.ended.load(Ordering::Acquire)
    }

    /// Joins the fill running for `key`, or leads a new one. With `seen`
    /// (what [`Fills::ended`] said before the store was read): no new fill
    /// once a fill has ended since ([`Join::Ended`]); checked under the
    /// same lock a fill's registration leaves by, so none can end unseen
    /// in between.
    pub(crate) fn join(
        self: &Arc<Self>,
        key: &str,
        budget: &Arc<Budget>,
        seen: Option<u64>,
    ) -> Join {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(filling) = running.get(key) {
            return Join::Follower(filling.clone());
        }
        if seen.is_some_and(|seen| self.ended() != seen) {
            return Join::Ended;
        }
        let filling = Filling::new(budget.clone());
        running.insert(key.to_string(), filling.clone());
        Join::Leader(FillGuard {
            fills: self.clone(),
            key: key.to_string(),
            filling,
        })
    }
}

/// The leader's registration of its fill under its key: while it lives,
/// requests for the key join the fill. Dropping it before the response
/// head was shared tells the followers to go on their own.
pub(crate) struct FillGuard {
    fills: Arc<Fills>,
    key: String,
    pub filling: Arc<Filling>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        // Before the registration goes: a request that then finds no fill
        // to join sees the count moved.
        self.fills.ended.fetch_add(1, Ordering::Release);
        let mut running = self.fills.running.lock().unwrap_or_else(|p| p.into_inner());
        if running
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.filling))
        {
            running.remove(&self.key);
        }
        drop(running);
        self.filling.refuse();
    }
}

/// Where and how a response will be stored, worked out from its head:
/// the entry (its body empty until the fill completes) and its key.
pub(crate) struct Placement {
    pub primary: String,
    pub status: StatusCode,
    /// The response head as stored (hop-by-hop, cookies and tags removed).
    pub headers: HeaderMap,
    pub tags: Box<[Box<str>]>,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    /// RFC 9111 §4.2.3's corrected initial age, from the head as the
    /// upstream sent it (its Age and Date).
    pub initial_age: Duration,
    /// The route compresses: the upstream was asked for identity, so a
    /// `Vary: Accept-Encoding` does not split the entry.
    pub ignore_accept_encoding: bool,
    /// The directives this cache applies, and whether a targeted field
    /// gave them ([`super::verdict::directives`]).
    pub directives: (CacheControl, bool),
}

impl Placement {
    /// The head followers share, with the variant key decided now from
    /// the `request` head (a new `Vary` gets a new variant id).
    pub(crate) fn head(self, store: &dyn Store, request: &HeaderMap, length: Option<u64>) -> Head {
        let (cc, targeted) = self.directives;
        let lifetime = super::verdict::lifetime(
            self.status,
            &self.headers,
            &cc,
            targeted,
            self.response_time,
        );
        let mut names = key::vary_names(&self.headers).unwrap_or_default();
        if self.ignore_accept_encoding {
            names.retain(|n| *n != header::ACCEPT_ENCODING);
        }
        let entry = Entry {
            status: self.status,
            headers: self.headers,
            body: Bytes::new(),
            request_time: self.request_time,
            response_time: self.response_time,
            initial_age: self.initial_age,
            lifetime,
            cc,
            tags: self.tags,
            copies: Default::default(),
            hit_head: Default::default(),
        };
        let (key, vary) = if names.is_empty() {
            (self.primary.clone(), None)
        } else {
            let id = match store.get(&self.primary).as_deref() {
                Some(Object::Vary { names: old, id }) if **old == *names => *id,
                _ => fastrand::u64(..),
            };
            let key = key::variant(&self.primary, id, &names, request);
            (key, Some((names.into_boxed_slice(), id)))
        };
        Head {
            entry,
            length,
            key,
            primary: self.primary,
            vary,
        }
    }
}

/// Stores `head`'s entry with `body` under its key (and the `Vary` marker
/// under the primary key when it varies).
pub(crate) fn store(store: &dyn Store, head: &Head, body: Bytes) -> Arc<Object> {
    let entry = Arc::new(Object::Response(Entry {
        body,
        ..head.entry.clone()
    }));
    if let Some((names, id)) = &head.vary {
        let current = store.get(&head.primary);
        let marked = matches!(current.as_deref(), Some(Object::Vary { names: n, id: i }) if n == names && i == id);
        if !marked {
            store.insert(
                head.primary.clone(),
                Arc::new(Object::Vary {
                    names: names.clone(),
                    id: *id,
                }),
            );
        }
    }
    store.insert(head.key.clone(), entry.clone());
    entry
}

/// The fields that name surrogate keys; stripped before clients see them.
pub(crate) static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
pub(crate) static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// Removes `Surrogate-Key` (space-separated) and `Cache-Tag`
/// (comma-separated) from `headers`, returning their values.
pub(crate) fn take_tags(headers: &mut HeaderMap) -> Box<[Box<str>]> {
    let mut tags: Vec<Box<str>> = Vec::new();
    for (name, split) in [(&SURROGATE_KEY, ' '), (&CACHE_TAG, ',')] {
        for v in headers.get_all(name) {
            if let Ok(text) = v.to_str() {
                tags.extend(
                    text.split([split, '\t'])
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(Box::from),
                );
            }
        }
        headers.remove(name);
    }
    tags.sort_unstable();
    tags.dedup();
    tags.into()
}

/// The stored copy of a head: without `Set-Cookie` (never replayed to
/// another client) and with `Age` left to be computed on each hit.
pub(crate) fn stored_head(headers: &HeaderMap) -> HeaderMap {
    let mut h = headers.clone();
    h.remove(header::SET_COOKIE);
    h.remove(header::AGE);
    // Room for the fields every hit adds to its copy (a clone keeps the
    // table's size), so that no hit rehashes it.
    h.reserve(super::serve::HIT_FIELDS);
    h
}

/// `true` when a response's head, as stored, lets clients reuse it.
pub(crate) fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// Adds the conditional fields that revalidate `stored` (RFC 9111 §4.3.1).
pub(crate) fn add_validators(head: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        head.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.get(header::LAST_MODIFIED) {
        head.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// The client's own conditional and range fields: dropped from a request
/// the cache sends upstream, so that it gets a complete response it can
/// store, and answered from that response instead.
pub(crate) const CLIENT_CONDITIONALS: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that read the store before a fill for its key ended does
    /// not lead a second fill: it is told to read the store again. One that
    /// read it after, or that finds a fill running, is not.
    #[test]
    fn no_new_fill_after_one_ended_unseen() {
        let fills = Arc::new(Fills::default());
        let budget = Arc::new(Budget::new(1 << 20));
        let seen = fills.ended();
        let Join::Leader(first) = fills.join("k", &budget, Some(seen)) else {
            panic!("the first request leads");
        };
        assert!(matches!(
            fills.join("k", &budget, Some(seen)),
            Join::Follower(_)
        ));
        drop(first);
        assert!(matches!(fills.join("k", &budget, Some(seen)), Join::Ended));
        // Read afresh, or with no reading to compare, it leads.
        assert!(matches!(
            fills.join("k", &budget, Some(fills.ended())),
            Join::Leader(_)
        ));
        assert!(matches!(fills.join("k", &budget, None), Join::Leader(_)));
    }
}
