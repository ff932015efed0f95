//! A response on its way into the cache, shared while it fills.
//!
//! The origin's body is read by a task of its own ([`drive`]) as fast as the
//! origin sends it, into one buffer that every client of the fill (the
//! leader and the coalesced followers) reads at its own pace from its own
//! position ([`Reader`]). A slow client delays nobody, and a follower that
//! arrives mid-body gets what has arrived so far at once, then the rest as
//! it comes. The buffer becomes the stored body as it is, without a copy.
//!
//! Readers copy what they send in frames of at most [`FRAME`] bytes: a
//! client's write queue then never pins the object (a slice would keep all
//! of it alive, evicted or not), so what a fill holds is exactly what the
//! budget counts, and a client that reads nothing holds a few frames.
//!
//! All fills together hold at most `[cache] max_fill_memory` bytes
//! ([`Budget`]). A fill that would go beyond it, or beyond
//! `max_object_size`, stops storing and becomes a relay: the clients already
//! reading still get the whole body, but the buffer keeps only what one of
//! them has yet to read ([`RELAY_WINDOW`] at most ahead of the slowest), the
//! origin is read no faster than they read, and nobody new joins it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::IntCounter;

use super::store::Entry;
use super::tier::Spill;
use crate::body::{BoxError, ProxyBody};

/// How far a relay reads ahead of its slowest client.
pub(crate) const RELAY_WINDOW: u64 = 64 << 10;

/// The largest frame a reader copies out at once.
pub(crate) const FRAME: usize = 64 << 10;

/// The bytes all fills hold, against `[cache] max_fill_memory`
/// (`sluice_cache_fill_bytes`).
#[derive(Debug)]
pub(crate) struct Budget {
    limit: AtomicU64,
    used: AtomicU64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Budget {
        Budget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
        }
    }

    /// A reload's new limit; fills already holding more keep what they hold.
    pub(crate) fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes held by fills now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether `n` more bytes fit under the limit now.
    fn fits(&self, n: u64) -> bool {
        self.used()
            .checked_add(n)
            .is_some_and(|total| total <= self.limit.load(Ordering::Relaxed))
    }

    /// Counts `n` more bytes if they fit under the limit.
    fn reserve(&self, n: u64) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            match used.checked_add(n) {
                Some(next) if next <= limit => {}
                _ => return false,
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Counts `n` more bytes whatever the limit (a relay's window).
    fn add(&self, n: u64) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// What a follower needs to know about the leader's response before it
/// may share it: the entry as it will be stored (its body still empty), and
/// where it will be stored.
#[derive(Debug)]
pub(crate) struct Head {
    pub entry: Entry,
    /// The body's length, when the origin said it.
    pub length: Option<u64>,
    /// The (variant) key the entry goes under.
    pub key: String,
    /// The primary key, and the `Vary` names with the id the variant key
    /// was made with, for a follower to make its own.
    pub primary: String,
    pub vary: Option<(Box<[http::HeaderName]>, u64)>,
}

impl Head {
    /// Whether a request with head `req` is served by this response: the
    /// same variant under the response's `Vary`.
    pub(crate) fn serves(&self, req: &http::HeaderMap) -> bool {
        match &self.vary {
            None => true,
            Some((names, id)) => super::key::variant(&self.primary, *id, names, req) == self.key,
        }
    }
}

/// How a fill ended, for the access log's `cache` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Still reading, or stopped without storing for no reason worth
    /// naming (the response could not be shared).
    Open,
    /// The whole body arrived and the entry was stored.
    Stored,
    /// Stopped storing: the fill memory budget was full.
    OverBudget,
    /// Stopped storing: larger than `max_object_size`.
    TooLarge,
    /// The origin's body failed or ended early: nothing stored, and every
    /// reader's body ends with an error.
    Failed,
}

/// What [`Filling::push`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
enum Push {
    /// Kept for the store.
    Storing,
    /// The fill stopped storing with this frame; `kept` is every byte
    /// before it.
    Stopped { kept: Bytes },
    /// Relayed; the frame starts at byte `at`.
    Relaying { at: u64 },
}

enum Shared {
    /// The leader has not had its response head yet.
    Waiting,
    Ready(Arc<Head>),
    /// The leader's response cannot be shared (not storable, an error, or
    /// the leader gave up): followers go on their own.
    Refused,
}

struct State {
    head: Shared,
    /// Every byte received, while the fill stores.
    buf: BytesMut,
    /// A relay's bytes from offset `base` on, each chunk with its offset.
    chunks: VecDeque<(u64, Bytes)>,
    base: u64,
    received: u64,
    /// The stored body, once complete.
    whole: Option<Bytes>,
    /// The body ended: every byte is in (`true`) or it failed.
    ended: Option<bool>,
    /// Keeping every byte for the store; `false` once a relay.
    storing: bool,
    outcome: Outcome,
    /// Bytes this fill counts in the budget.
    counted: u64,
    /// Position of each live reader, by reader id.
    readers: Vec<Option<u64>>,
    /// Readers (and followers waiting for the head) to wake on news.
    waiting: Vec<Waker>,
    /// The driver, when a relay waits for its readers.
    driver: Option<Waker>,
    /// Counted when this fill stops storing for its budget.
    over_budget: Option<IntCounter>,
}

impl State {
    fn reading(&self) -> bool {
        self.readers.iter().any(Option::is_some)
    }

    fn slowest(&self) -> u64 {
        self.readers
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(self.received)
    }

    /// A copy of at most [`FRAME`] bytes from `pos` (and before `to`), of
    /// what this fill still keeps.
    fn copy(&self, pos: u64, to: u64) -> Option<Bytes> {
        let end = to.min(self.received).min(pos.saturating_add(FRAME as u64));
        if pos >= end {
            return None;
        }
        let (from, end) = (usize::try_from(pos).ok()?, usize::try_from(end).ok()?);
        if let Some(whole) = &self.whole {
            return whole.get(from..end).map(Bytes::copy_from_slice);
        }
        if self.storing {
            return self.buf.get(from..end).map(Bytes::copy_from_slice);
        }
        // A relay: the chunk holding `pos`.
        let i = match self.chunks.binary_search_by(|(at, _)| at.cmp(&pos)) {
            Ok(i) => i,
            Err(i) => i.checked_sub(1)?,
        };
        let (at, chunk) = self.chunks.get(i)?;
        let at = usize::try_from(*at).ok()?;
        let slice = chunk.get(from - at..(end - at).min(chunk.len()))?;
        (!slice.is_empty()).then(|| Bytes::copy_from_slice(slice))
    }
}

/// One fill's shared state (see the module docs).
pub(crate) struct Filling {
    state: Mutex<State>,
    budget: Arc<Budget>,
}

impl std::fmt::Debug for Filling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filling").finish_non_exhaustive()
    }
}

/// The origin's body failed or ended early; this copy of it is cut short.
#[derive(Debug, thiserror::Error)]
#[error("the upstream body failed before its end")]
pub(crate) struct FillFailed;

impl Filling {
    pub(crate) fn new(budget: Arc<Budget>) -> Arc<Filling> {
        Arc::new(Filling {
            state: Mutex::new(State {
                head: Shared::Waiting,
                buf: BytesMut::new(),
                chunks: VecDeque::new(),
                base: 0,
                received: 0,
                whole: None,
                ended: None,
                storing: true,
                outcome: Outcome::Open,
                counted: 0,
                readers: Vec::new(),
                waiting: Vec::new(),
                driver: None,
                over_budget: None,
            }),
            budget,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the leader's response head. `false` (and nothing shared)
    /// when the length the origin gave does not fit in the budget now: the
    /// response must stream uncached.
    pub(crate) fn open(&self, head: Arc<Head>, over_budget: IntCounter) -> bool {
        let mut s = self.lock();
        if let Some(n) = head.length {
            if !self.budget.fits(n) {
                over_budget.inc();
                s.head = Shared::Refused;
                s.storing = false;
                s.outcome = Outcome::OverBudget;
                wake_all(&mut s);
                return false;
            }
            // One allocation for the whole body (pages are touched as the
            // bytes arrive).
            s.buf.reserve(usize::try_from(n).unwrap_or(0));
        }
        s.head = Shared::Ready(head);
        s.over_budget = Some(over_budget);
        wake_all(&mut s);
        true
    }

    /// Publishes the head of a response too large for memory: a relay
    /// from its first byte (its body goes to the second tier, if anywhere),
    /// which nobody joins.
    pub(crate) fn open_relay(&self, head: Arc<Head>) {
        let mut s = self.lock();
        s.head = Shared::Ready(head);
        s.storing = false;
        s.outcome = Outcome::TooLarge;
        wake_all(&mut s);
    }

    /// The leader's response will not be shared.
    pub(crate) fn refuse(&self) {
        let mut s = self.lock();
        if let Shared::Waiting = s.head {
            s.head = Shared::Refused;
            s.storing = false;
            wake_all(&mut s);
        }
    }

    /// Waits for the leader's head: `None` when the response cannot be
    /// shared (or is no longer kept whole).
    pub(crate) async fn head(&self) -> Option<Arc<Head>> {
        poll_fn(|cx| {
            let mut s = self.lock();
            match &s.head {
                Shared::Waiting => {
                    push_waker(&mut s.waiting, cx.waker());
                    Poll::Pending
                }
                Shared::Ready(head) if s.storing || s.whole.is_some() => {
                    Poll::Ready(Some(head.clone()))
                }
                _ => Poll::Ready(None),
            }
        })
        .await
    }

    /// A body reading bytes `from..to`, or from `from` to the end when
    /// `to_end` (`to` is then the length, if known); `None` when the fill
    /// no longer keeps them (it became a relay after its first bytes went
    /// by).
    pub(crate) fn reader(
        self: &Arc<Self>,
        from: u64,
        to: Option<u64>,
        to_end: bool,
    ) -> Option<Reader> {
        let mut s = self.lock();
        if s.base > from && s.whole.is_none() {
            return None;
        }
        let id = match s.readers.iter().position(Option::is_none) {
            Some(i) => {
                s.readers[i] = Some(from);
                i
            }
            None => {
                s.readers.push(Some(from));
                s.readers.len() - 1
            }
        };
        Some(Reader {
            filling: self.clone(),
            id,
            pos: from,
            to,
            to_end,
        })
    }

    /// How the fill ended (so far).
    pub(crate) fn outcome(&self) -> Outcome {
        self.lock().outcome
    }

    /// Bytes received so far.
    #[cfg(test)]
    fn received(&self) -> u64 {
        self.lock().received
    }

    /// Appends a frame from the origin and says what the fill does with it.
    fn push(&self, data: Bytes, max_object_size: u64) -> Push {
        let n = data.len() as u64;
        let mut s = self.lock();
        let was_storing = s.storing;
        let at = s.received;
        let mut kept = None;
        if s.storing {
            if s.received + n > max_object_size {
                kept = Some(Self::stop_storing(&mut s, Outcome::TooLarge));
            } else if !self.budget.reserve(n) {
                if let Some(c) = &s.over_budget {
                    c.inc();
                }
                kept = Some(Self::stop_storing(&mut s, Outcome::OverBudget));
            }
        }
        if s.storing {
            s.buf.extend_from_slice(&data);
        } else {
            // A relay's window is counted whatever the limit.
            self.budget.add(n);
            s.chunks.push_back((at, data));
        }
        s.counted += n;
        s.received += n;
        if !s.storing {
            self.trim(&mut s);
        }
        wake_all(&mut s);
        match kept {
            Some(kept) => Push::Stopped { kept },
            None if was_storing => Push::Storing,
            None => Push::Relaying { at },
        }
    }

    /// Turns the fill into a relay: what was received so far becomes its
    /// first chunk, and is returned (for a second tier taking the body).
    fn stop_storing(s: &mut State, why: Outcome) -> Bytes {
        s.storing = false;
        s.outcome = why;
        let kept = s.buf.split().freeze();
        s.buf = BytesMut::new();
        if !kept.is_empty() {
            s.chunks.push_back((0, kept.clone()));
        }
        tracing::debug!(reason = ?why, "fill stops storing and relays");
        kept
    }

    /// Drops the chunks every live reader has read past (a relay's).
    fn trim(&self, s: &mut State) {
        let slowest = s.slowest();
        while let Some((at, chunk)) = s.chunks.front() {
            let end = at + chunk.len() as u64;
            if end > slowest {
                break;
            }
            let n = (chunk.len() as u64).min(s.counted);
            s.chunks.pop_front();
            s.base = end;
            self.budget.release(n);
            s.counted -= n;
        }
    }

    /// Ready once a relay's readers are within [`RELAY_WINDOW`]; `false`
    /// when a relay has no reader left (nobody wants the rest).
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut s = self.lock();
        if s.storing {
            return Poll::Ready(true);
        }
        if !s.reading() {
            return Poll::Ready(false);
        }
        // Registered either way: a reader that leaves wakes the driver even
        // while it waits on the origin.
        s.driver = Some(cx.waker().clone());
        if s.received.saturating_sub(s.slowest()) < RELAY_WINDOW {
            return Poll::Ready(true);
        }
        Poll::Pending
    }

    /// The body ended, complete or not. A complete body that was stored
    /// whole is returned, to go to the store.
    fn end(&self, complete: bool) -> Option<Bytes> {
        let mut s = self.lock();
        s.ended = Some(complete);
        if !complete && s.outcome == Outcome::Open {
            s.outcome = Outcome::Failed;
        }
        let whole = if complete && s.storing {
            let whole = s.buf.split().freeze();
            s.whole = Some(whole.clone());
            s.outcome = Outcome::Stored;
            Some(whole)
        } else {
            None
        };
        s.buf = BytesMut::new();
        if !complete {
            s.chunks.clear();
        }
        // A failed body is read no more. A stored one stays counted while a
        // client still reads it: were the entry evicted meanwhile, the fill
        // would hold it alone. A relay's chunks count until read.
        if !complete || !s.reading() {
            self.release(&mut s);
        }
        s.storing = false;
        if let Shared::Waiting = s.head {
            s.head = Shared::Refused;
        }
        wake_all(&mut s);
        whole
    }

    fn release(&self, s: &mut State) {
        s.chunks.clear();
        if s.whole.is_none() {
            s.buf = BytesMut::new();
        }
        self.budget.release(s.counted);
        s.counted = 0;
    }
}

impl Drop for Filling {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        self.budget.release(s.counted);
    }
}

fn push_waker(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

fn wake_all(s: &mut State) {
    for w in s.waiting.drain(..) {
        w.wake();
    }
}

/// Reads the origin's body into `filling` at the origin's pace (a relay's
/// at its readers'), then calls `store` with the whole body when it was
/// kept. `registration` (the key's coalescing entry) goes as soon as the
/// fill stops storing, so that later requests do not join it. A body the
/// fill does not keep (too large, over budget) goes to the second tier
/// from its first byte when `spill` gives a [`Spill`] for it.
pub(crate) async fn drive<R>(
    filling: Arc<Filling>,
    mut body: ProxyBody,
    max_object_size: u64,
    expected: Option<u64>,
    registration: R,
    store: impl FnOnce(Bytes),
    spill: Option<SpillStart>,
) {
    let mut registration = Some(registration);
    let mut spill = match spill {
        Some(start) => Spilling::Unasked(start),
        None => Spilling::Off,
    };
    loop {
        let next = poll_fn(|cx| match filling.poll_room(cx) {
            Poll::Ready(true) => Pin::new(&mut body).poll_frame(cx).map(Some),
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        let Some(next) = next else {
            // A relay nobody reads any more.
            filling.end(false);
            return;
        };
        match next {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if data.is_empty() {
                        continue;
                    }
                    match filling.push(data.clone(), max_object_size) {
                        Push::Storing => {}
                        Push::Stopped { kept } => {
                            registration = None;
                            spill.start([kept, data]).await;
                        }
                        Push::Relaying { at: 0 } => {
                            // A relay from the start (too large for
                            // memory): nobody joins it.
                            registration = None;
                            spill.start([data]).await;
                        }
                        Push::Relaying { .. } => spill.write(data).await,
                    }
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "upstream body failed while filling the cache");
                drop(registration);
                filling.end(false);
                return;
            }
            None => break,
        }
    }
    let received = filling.lock().received;
    if expected.is_some_and(|n| n != received) {
        drop(registration);
        filling.end(false);
        return;
    }
    if let Some(whole) = filling.end(true) {
        store(whole);
    }
    if let Spilling::Active(s) = spill {
        s.commit();
    }
    // Dropped last: until now a request for the key joins this fill; from
    // now on it finds the stored entry.
    drop(registration);
}

/// Opens the second tier's writer for a body the fill does not keep.
pub(crate) type SpillStart = Box<dyn FnOnce() -> Option<Spill> + Send>;

/// A fill's body on its way to the second tier, if it goes there.
enum Spilling {
    /// Not asked yet: asked when the fill stops storing (or relays from
    /// its first byte).
    Unasked(SpillStart),
    Active(Spill),
    Off,
}

impl Spilling {
    /// Asks for a spill, with the body's bytes so far.
    async fn start<const N: usize>(&mut self, first: [Bytes; N]) {
        let next = match std::mem::replace(self, Spilling::Off) {
            Spilling::Unasked(start) => match start() {
                Some(mut s) => {
                    for data in first {
                        s.write(data).await;
                    }
                    Spilling::Active(s)
                }
                None => Spilling::Off,
            },
            other => other,
        };
        *self = next;
    }

    /// Waits while the tier is 16 MiB behind: the body is
    /// then read from the origin at the disk's pace.
    async fn write(&mut self, data: Bytes) {
        match self {
            Spilling::Active(s) => s.write(data).await,
            // A body that began relaying past its first byte cannot be
            // spilled whole.
            Spilling::Unasked(_) => *self = Spilling::Off,
            Spilling::Off => {}
        }
    }
}

/// One client's copy of a fill's body, from its own position.
pub(crate) struct Reader {
    filling: Arc<Filling>,
    id: usize,
    pos: u64,
    /// End of the requested range (exclusive), or the body's length when
    /// known.
    to: Option<u64>,
    /// Reading to the body's end: the body ends only once the fill has
    /// (stored or not), so that whoever sees it end sees the outcome.
    to_end: bool,
}

impl Body for Reader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.to_end && this.to.is_some_and(|to| this.pos >= to) {
            return Poll::Ready(None);
        }
        let filling = this.filling.clone();
        let mut s = filling.lock();
        if let Some(piece) = s.copy(this.pos, this.to.unwrap_or(u64::MAX)) {
            let pos = this.pos + piece.len() as u64;
            if this.to_end && s.ended.is_none() && this.to == Some(pos) {
                // The last bytes of a known length go once the fill is
                // over (stored or not), so that the end of this body tells
                // what became of it.
                push_waker(&mut s.waiting, cx.waker());
                return Poll::Pending;
            }
            this.pos = pos;
            if let Some(slot) = s.readers.get_mut(this.id) {
                *slot = Some(pos);
            }
            if !s.chunks.is_empty() {
                filling.trim(&mut s);
                if let Some(w) = s.driver.take() {
                    w.wake();
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match s.ended {
            Some(false) => Poll::Ready(Some(Err(Box::new(FillFailed)))),
            Some(true) if this.pos >= s.received => Poll::Ready(None),
            // Bytes this reader has not had are gone: never pretend the
            // body is whole.
            Some(true) => Poll::Ready(Some(Err(Box::new(FillFailed)))),
            None => {
                push_waker(&mut s.waiting, cx.waker());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.to {
            Some(to) if self.pos >= to => {
                // Reading to the end, the last bytes of a known length
                // came once the fill was over: the body ends with them
                // (an HTTP/2 client gets END_STREAM on the last DATA
                // frame, not on an empty one after it) unless the fill
                // failed, which the next poll reports.
                !self.to_end || {
                    let s = self.filling.lock();
                    s.ended == Some(true) && self.pos >= s.received
                }
            }
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.to {
            Some(to) => SizeHint::with_exact(to.saturating_sub(self.pos)),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut s = self.filling.lock();
        if let Some(slot) = s.readers.get_mut(self.id) {
            *slot = None;
        }
        if s.ended.is_some() && !s.reading() {
            // The last reader of a finished fill: nothing is kept for it.
            self.filling.release(&mut s);
        } else if !s.chunks.is_empty() {
            self.filling.trim(&mut s);
            if let Some(w) = s.driver.take() {
                w.wake();
            }
        }
    }
}

/// A boxed reader, as the proxy's responses carry it.
pub(crate) fn boxed(reader: Reader) -> ProxyBody {
    reader.boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::Entry;
    use http::{HeaderMap, StatusCode};
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tokio::sync::mpsc;

    fn head(length: Option<u64>) -> Arc<Head> {
        Arc::new(Head {
            entry: Entry::fresh(
                StatusCode::OK,
                HeaderMap::new(),
                Bytes::new(),
                Duration::from_secs(60),
            ),
            length,
            key: "k".into(),
            primary: "k".into(),
            vary: None,
        })
    }

    struct Chan(mpsc::Receiver<Result<Bytes, BoxError>>);
    impl Body for Chan {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
        }
    }

    fn origin() -> (mpsc::Sender<Result<Bytes, BoxError>>, ProxyBody) {
        let (tx, rx) = mpsc::channel(1024);
        (tx, Chan(rx).boxed())
    }

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").unwrap()
    }

    async fn read_all(r: Reader) -> Result<Vec<u8>, BoxError> {
        Ok(r.collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn the_origin_is_read_without_waiting_for_any_reader() {
        let budget = Arc::new(Budget::new(1 << 20));
        let f = Filling::new(budget.clone());
        assert!(f.open(head(None), counter()));
        let slow = f.reader(0, None, true).unwrap();
        let (tx, body) = origin();
        let stored = Arc::new(Mutex::new(None));
        let s2 = stored.clone();
        let driver = tokio::spawn(drive(
            f.clone(),
            body,
            1 << 20,
            None,
            (),
            move |b| *s2.lock().unwrap() = Some(b),
            None,
        ));
        for _ in 0..100 {
            tx.send(Ok(Bytes::from(vec![7u8; 1000]))).await.unwrap();
        }
        drop(tx);
        // Nobody has read a byte, and the whole body is in and stored.
        driver.await.unwrap();
        assert_eq!(f.outcome(), Outcome::Stored);
        assert_eq!(stored.lock().unwrap().as_ref().unwrap().len(), 100_000);
        assert_eq!(budget.used(), 100_000, "counted while a client reads");
        assert_eq!(read_all(slow).await.unwrap().len(), 100_000);
        assert_eq!(budget.used(), 0, "the store alone holds the bytes now");
        // A late reader, or a range, still reads from the fill.
        let range = f.reader(10, Some(20), false).unwrap();
        assert_eq!(read_all(range).await.unwrap(), vec![7u8; 10]);
    }

    #[tokio::test]
    async fn followers_get_what_arrived_then_the_rest() {
        let f = Filling::new(Arc::new(Budget::new(1 << 20)));
        assert!(f.open(head(None), counter()));
        let (tx, body) = origin();
        let driver = tokio::spawn(drive(f.clone(), body, 1 << 20, None, (), |_| {}, None));
        tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        while f.received() < 3 {
            tokio::task::yield_now().await;
        }
        let mut late = f.reader(0, None, true).unwrap();
        let first = late.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"abc");
        tx.send(Ok(Bytes::from_static(b"def"))).await.unwrap();
        drop(tx);
        let rest = read_all(late).await.unwrap();
        assert_eq!(rest, b"def");
        driver.await.unwrap();
    }

    #[tokio::test]
    async fn a_known_length_ends_with_its_last_bytes() {
        let f = Filling::new(Arc::new(Budget::new(1 << 20)));
        assert!(f.open(head(Some(6)), counter()));
        let mut r = f.reader(0, Some(6), true).unwrap();
        let (tx, body) = origin();
        let driver = tokio::spawn(drive(f.clone(), body, 1 << 20, None, (), |_| {}, None));
        tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        let first = r.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"abc");
        assert!(!r.is_end_stream());
        tx.send(Ok(Bytes::from_static(b"def"))).await.unwrap();
        drop(tx);
        let last = r.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&last[..], b"def");
        assert!(r.is_end_stream(), "the body ends with its last bytes");
        assert!(r.frame().await.is_none());
        driver.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_origin_body_fails_every_reader() {
        let f = Filling::new(Arc::new(Budget::new(1 << 20)));
        assert!(f.open(head(None), counter()));
        let a = f.reader(0, None, true).unwrap();
        let b = f.reader(0, None, true).unwrap();
        let (tx, body) = origin();
        let stored = Arc::new(Mutex::new(false));
        let s2 = stored.clone();
        let driver = tokio::spawn(drive(
            f.clone(),
            body,
            1 << 20,
            None,
            (),
            move |_| *s2.lock().unwrap() = true,
            None,
        ));
        tx.send(Ok(Bytes::from_static(b"part"))).await.unwrap();
        tx.send(Err("cut".into())).await.unwrap();
        driver.await.unwrap();
        assert!(read_all(a).await.is_err());
        assert!(read_all(b).await.is_err());
        assert!(!*stored.lock().unwrap());
        assert_eq!(f.outcome(), Outcome::Failed);
    }

    #[tokio::test]
    async fn a_short_body_is_not_stored() {
        let f = Filling::new(Arc::new(Budget::new(1 << 20)));
        assert!(f.open(head(Some(10)), counter()));
        let a = f.reader(0, None, true).unwrap();
        let (tx, body) = origin();
        let driver = tokio::spawn(drive(
            f.clone(),
            body,
            1 << 20,
            Some(10),
            (),
            |_| panic!("stored"),
            None,
        ));
        tx.send(Ok(Bytes::from_static(b"four"))).await.unwrap();
        drop(tx);
        driver.await.unwrap();
        assert!(read_all(a).await.is_err());
    }

    #[tokio::test]
    async fn over_the_budget_a_known_length_is_refused_up_front() {
        let budget = Arc::new(Budget::new(100));
        let c = counter();
        let f = Filling::new(budget.clone());
        assert!(f.open(head(Some(60)), c.clone()));
        let reader = f.reader(0, Some(60), true).unwrap();
        let (tx, body) = origin();
        let driver = tokio::spawn(drive(f.clone(), body, 1 << 20, Some(60), (), |_| {}, None));
        tx.send(Ok(Bytes::from(vec![0u8; 60]))).await.unwrap();
        drop(tx);
        driver.await.unwrap();
        assert_eq!(budget.used(), 60, "kept for the client still reading");
        let g = Filling::new(budget.clone());
        assert!(!g.open(head(Some(60)), c.clone()));
        assert_eq!(g.outcome(), Outcome::OverBudget);
        assert!(g.head().await.is_none(), "followers go on their own");
        assert_eq!(c.get(), 1);
        assert_eq!(read_all(reader).await.unwrap().len(), 60);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn over_the_budget_mid_body_the_fill_relays_at_the_readers_pace() {
        let budget = Arc::new(Budget::new(RELAY_WINDOW));
        let c = counter();
        let f = Filling::new(budget.clone());
        assert!(f.open(head(None), c.clone()));
        let mut reader = f.reader(0, None, true).unwrap();
        let (tx, body) = origin();
        let driver = tokio::spawn(drive(
            f.clone(),
            body,
            1 << 30,
            None,
            (),
            |_| panic!("stored"),
            None,
        ));
        let chunk = Bytes::from(vec![1u8; 16 << 10]);
        let total = 64usize;
        let feeder = tokio::spawn(async move {
            for _ in 0..total {
                tx.send(Ok(chunk.clone())).await.unwrap();
            }
        });
        let mut got = 0usize;
        let mut peak = 0u64;
        while let Some(frame) = reader.frame().await {
            got += frame.unwrap().into_data().unwrap().len();
            peak = peak.max(budget.used());
            if got == total * (16 << 10) {
                break;
            }
        }
        feeder.await.unwrap();
        drop(reader);
        driver.await.unwrap();
        assert_eq!(got, total * (16 << 10));
        assert_eq!(f.outcome(), Outcome::OverBudget);
        assert_eq!(c.get(), 1);
        // Never much more than the budget plus one relay window.
        assert!(peak <= 2 * RELAY_WINDOW + (16 << 10), "peak {peak}");
        assert!(f.reader(0, None, true).is_none(), "nobody joins a relay");
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn frames_are_copies_that_pin_nothing() {
        let budget = Arc::new(Budget::new(1 << 20));
        let f = Filling::new(budget.clone());
        assert!(f.open(head(None), counter()));
        let mut reader = f.reader(0, None, true).unwrap();
        let (tx, body) = origin();
        let driver = tokio::spawn(drive(f.clone(), body, 1 << 20, None, (), |_| {}, None));
        tx.send(Ok(Bytes::from(vec![1u8; 3 * FRAME])))
            .await
            .unwrap();
        drop(tx);
        driver.await.unwrap();
        let frame = reader.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame.len(), FRAME, "at most one frame's worth at once");
        drop(reader);
        drop(f);
        // A client's write queue still holds the frame; the fill's bytes
        // are gone and counted no more.
        assert_eq!(budget.used(), 0);
        assert_eq!(frame.len(), FRAME);
    }

    #[tokio::test]
    async fn a_relay_nobody_reads_stops() {
        let f = Filling::new(Arc::new(Budget::new(1 << 20)));
        assert!(f.open(head(None), counter()));
        let r = f.reader(0, None, true).unwrap();
        let (tx, body) = origin();
        let driver = tokio::spawn(drive(f.clone(), body, 10, None, (), |_| panic!(), None));
        tx.send(Ok(Bytes::from(vec![0u8; 20]))).await.unwrap();
        while f.received() < 20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(f.outcome(), Outcome::TooLarge);
        drop(r);
        // The driver gives up rather than reading an origin nobody wants.
        driver.await.unwrap();
        assert_eq!(f.outcome(), Outcome::TooLarge);
        drop(tx);
    }
}
