//! Filling the cache: request coalescing (one upstream request per key at a
//! time, the others wait for it) and the body wrapper that copies a
//! response into the store as it streams to the first client.
//!
//! An entry is stored only when its body ended cleanly within
//! `max_object_size`: a body cut short or failing is never stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, StatusCode};
use tokio::sync::watch;

use super::key;
use super::policy;
use super::store::{Entry, Object, Store};
use crate::body::{End, Watch};
use crate::headers::cache_control::CacheControl;
use crate::headers::content_length;

/// Upstream requests in flight per key, for coalescing.
#[derive(Debug, Default)]
pub(crate) struct Fills {
    running: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

/// Whether this request leads the fill for its key or waits for another.
pub(crate) enum Join {
    Leader(FillGuard),
    Follower(watch::Receiver<bool>),
}

impl Fills {
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Join {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = running.get(key) {
            return Join::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(false);
        running.insert(key.to_string(), rx);
        Join::Leader(FillGuard {
            fills: self.clone(),
            key: key.to_string(),
            tx,
        })
    }

    /// Waits until the leader is done (stored, or gave up) or `timeout`.
    pub(crate) async fn wait(mut rx: watch::Receiver<bool>, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|done| *done)).await,
            Ok(Ok(_))
        )
    }
}

/// Held by the leader until its entry is stored or it gives up; dropping it
/// wakes the followers.
pub(crate) struct FillGuard {
    fills: Arc<Fills>,
    key: String,
    tx: watch::Sender<bool>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.fills
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        let _ = self.tx.send(true);
    }
}

/// Everything needed to store a response once its body is complete.
pub(crate) struct Pending {
    pub store: Arc<dyn Store>,
    pub primary: String,
    /// The request's head, for the variant key.
    pub request: HeaderMap,
    pub status: StatusCode,
    /// The response head as stored (hop-by-hop, cookies and tags removed).
    pub headers: HeaderMap,
    pub tags: Box<[Box<str>]>,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    /// The head as the upstream sent it, for Age and Date.
    pub age_source: HeaderMap,
    /// The route compresses: the upstream was asked for identity, so a
    /// `Vary: Accept-Encoding` does not split the entry.
    pub ignore_accept_encoding: bool,
    /// The directives this cache applies, and whether a targeted field
    /// gave them ([`super::verdict::directives`]).
    pub directives: (CacheControl, bool),
}

impl Pending {
    /// Builds the entry for `body` and stores it under its (variant) key.
    pub(crate) fn store(self, body: Bytes) -> Arc<Object> {
        let (cc, targeted) = self.directives;
        let lifetime = super::verdict::lifetime(
            self.status,
            &self.headers,
            &cc,
            targeted,
            self.response_time,
        );
        let initial_age =
            policy::corrected_initial_age(&self.age_source, self.request_time, self.response_time);
        let mut names = key::vary_names(&self.headers).unwrap_or_default();
        if self.ignore_accept_encoding {
            names.retain(|n| *n != header::ACCEPT_ENCODING);
        }
        let entry = Arc::new(Object::Response(Entry {
            status: self.status,
            headers: self.headers,
            body,
            request_time: self.request_time,
            response_time: self.response_time,
            initial_age,
            lifetime,
            cc,
            tags: self.tags,
            copies: Default::default(),
        }));
        if names.is_empty() {
            self.store.insert(self.primary, entry.clone());
        } else {
            let id = match self.store.get(&self.primary).as_deref() {
                Some(Object::Vary { names: old, id }) if **old == *names => *id,
                _ => {
                    let id = fastrand::u64(..);
                    self.store.insert(
                        self.primary.clone(),
                        Arc::new(Object::Vary {
                            names: names.clone().into(),
                            id,
                        }),
                    );
                    id
                }
            };
            let variant = key::variant(&self.primary, id, &names, &self.request);
            self.store.insert(variant, entry.clone());
        }
        entry
    }
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
    h
}

/// Where a fill reports the stored object, for a caller that answers from
/// the entry once the body is read.
pub(crate) type StoredSlot = Arc<Mutex<Option<Arc<Object>>>>;

/// Copies a response into the store as it streams to its client (through
/// [`crate::body::Watched`]): stores it when the body ends cleanly within `limit` bytes
/// (and as long as its `Content-Length` said), then wakes coalesced
/// requests. A body cut short, failing or too large is never stored.
pub(crate) struct FillWatch {
    buf: BytesMut,
    limit: u64,
    expected: Option<u64>,
    pending: Option<Pending>,
    guard: Option<FillGuard>,
    stored: Option<StoredSlot>,
}

impl FillWatch {
    pub(crate) fn new(
        limit: u64,
        pending: Pending,
        guard: Option<FillGuard>,
        stored: Option<StoredSlot>,
    ) -> FillWatch {
        FillWatch {
            buf: BytesMut::new(),
            limit,
            expected: content_length(&pending.headers),
            pending: Some(pending),
            guard,
            stored,
        }
    }
}

impl Watch for FillWatch {
    fn data(&mut self, data: &Bytes) {
        if self.pending.is_none() {
            return;
        }
        if (self.buf.len() + data.len()) as u64 > self.limit {
            // Too large to store: stop copying, and let the followers go.
            self.pending = None;
            self.buf = BytesMut::new();
            self.guard = None;
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    fn end(mut self, how: End) {
        let Some(pending) = self.pending.take().filter(|_| how == End::Complete) else {
            return;
        };
        let body = std::mem::take(&mut self.buf).freeze();
        if self.expected.is_none_or(|n| n == body.len() as u64) {
            let object = pending.store(body);
            if let Some(slot) = &self.stored {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(object);
            }
        }
        // Dropping the guard (with `self`) wakes the followers.
    }
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
