//! The request side of the hit lane: an HTTP/1.1 request that the cache
//! answers with a plain fresh hit, answered without hyper
//! ([`crate::listener`] parses the head and writes the answer itself).
//!
//! A hit is most of a cache's traffic, and through hyper it costs as much
//! again in building, cloning, encoding and dropping header maps as in
//! everything sluice decides about it. Here the entry's head goes out as
//! bytes encoded once per second of its age ([`crate::cache::serve::Wire`]).
//!
//! Only what the general path ([`super::handle`]) would answer with exactly
//! that hit is taken: [`answer`] first checks, without changing anything,
//! that nothing about the request or its route asks for more (rules, a rate
//! limit, compression, gRPC, a path to normalise, a directive the entry is
//! not fresh for, a condition or range, anything a first look cannot
//! settle); anything else returns `None` and goes to hyper as if the lane
//! did not exist. What a hit records (the framing verdict taken, the id,
//! the access log line, the metrics, the connection's activity) is
//! recorded the same way.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::Empty;

use super::{admit, observe, settings, ConnInfo};
use crate::cache;
use crate::client_limits::Activity;
use crate::snapshot::State;

/// A hit answered by the lane: the head's bytes around the request id, the
/// body, and the request's record, to be dropped once they are written.
pub(crate) struct Answered {
    pub wire: cache::serve::Wire,
    pub request_id: HeaderValue,
    pub body: Bytes,
    pub record: observe::Written,
}

/// `req`'s answer when the general path would answer it with a plain fresh
/// hit; `None`, having changed nothing, otherwise.
pub(crate) fn answer(
    state: &State,
    conn: &ConnInfo,
    activity: &Arc<Activity>,
    req: &Request<Empty<Bytes>>,
) -> Option<Answered> {
    let started = Instant::now();
    if !conn.framing.accept_next() || crate::grpc::is_call(req.headers()) {
        return None;
    }
    let snap = state.load_full();
    let listener = snap.config.listener(&conn.listener);
    let limits = listener.map_or(&snap.config.limits, |l| &l.limits);
    admit(req, limits).ok()?;
    let authority = (conn.last_authority)
        .authority(req.version(), req.uri(), req.headers(), conn.https)
        .ok()?;
    if listener.is_none_or(|l| l.normalize_paths)
        && !matches!(
            crate::path::normalise(req.uri().path()),
            Ok(Cow::Borrowed(_))
        )
    {
        return None;
    }
    let route = snap.router.lookup(authority.host(), req.uri().path())?;
    let config = snap.config.routes.get(route.index)?;
    if config.rules.is_some() || config.compress || snap.rate_limits.contains_key(&route.name) {
        return None;
    }
    let spec = config.cache.as_ref()?;
    route.pool.and_then(|p| snap.pools.get(p))?;
    let client = conn.client_for(req.headers());
    let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let asked = cache::Request {
        primary: cache::key::primary(
            conn.https,
            authority.authority(),
            path_and_query,
            req.headers(),
            spec,
        ),
        method: req.method(),
        head: req.headers(),
        has_body: false,
        peer: client,
        accepted: None,
    };
    let hit = snap.cache.plain_hit(settings(&snap, route), &asked)?;

    // The hit is served here: from now on as the general path records it.
    let taken = conn.framing.take_accept();
    debug_assert!(taken, "the guard's accept was there a moment ago");
    conn.protocol.learn(req.version(), &conn.metrics);
    let in_flight = activity.begin_unparked();
    let request_id = crate::request_id::of(req.headers());
    let record = observe::Start::new(
        req,
        started,
        client,
        conn.peer.ip(),
        conn.metrics.index,
        snap.config.access_log.as_ref().map(|c| c.format),
    );
    let outcome = observe::Outcome {
        request_id: Some(request_id.clone()),
        route: Some(route.index),
        cache: Some("hit"),
        ..Default::default()
    };
    let bytes = hit.body.len() as u64;
    let record = record.written(snap, outcome, hit.status, bytes, in_flight);
    Some(Answered {
        wire: hit.wire,
        request_id,
        body: hit.body,
        record,
    })
}
