//! The HTTP/1.1 framing guard: request framing rules (RFC 9112 §6-7) applied
//! to the bytes of a client connection before hyper parses them.
//!
//! hyper already refuses most malformed heads itself (httparse rejects
//! whitespace before a colon, obs-fold, bare CR, control characters, bad
//! methods and targets; hyper rejects a Transfer-Encoding without a final
//! `chunked`, conflicting Content-Lengths and Transfer-Encoding in HTTP/1.0).
//! It accepts, though, a request carrying both Content-Length and
//! Transfer-Encoding, and it reports a broken chunked body only as an error
//! in the middle of the body stream. A proxy must refuse both outright: a
//! message whose framing two parsers could read differently is how requests
//! are smuggled.
//!
//! [`FramingGuard`] sits between the socket (plain TCP, or TLS when ALPN did
//! not pick h2) and hyper, and follows what hyper reads:
//!
//! - each request head is parsed with httparse once it is complete and
//!   judged by strict rules: no Content-Length together with
//!   Transfer-Encoding; Transfer-Encoding only as exactly one `chunked`
//!   (sluice decodes no other coding, so `gzip, chunked` is refused too);
//!   Content-Length only as digits, repeated values identical; no control
//!   characters in any field; a request target in one of the four forms of
//!   RFC 9112 §3.2. The [`Verdict`] goes on the connection's [`Verdicts`]
//!   queue, which the proxy pops once per HTTP/1.x request before routing;
//! - the body is followed (by Content-Length, or a strict chunked decoder:
//!   hex size with overflow check, extensions, CRLFs, data, trailers) to
//!   find where the next pipelined head starts. Bytes that break chunked
//!   framing are never passed on: hyper gets the bytes before them and then
//!   a read error, so the body fails; when the head's verdict has not been
//!   taken yet it is turned into a refusal instead;
//! - the request target is measured as it arrives: once it passes
//!   `max_uri_bytes` ([`GuardLimits::max_target_bytes`]) the rest of the
//!   client's bytes are dropped and hyper gets the request line completed
//!   with a head asking it to close, whose verdict is
//!   [`Violation::TargetTooLong`] (414). Without this, a target too long
//!   for hyper's buffer would be answered 431 by hyper, naming the wrong
//!   limit;
//! - after the HTTP/2 preface, a request asking to switch protocols
//!   (`Upgrade`, `CONNECT`), or anything it cannot follow (a head httparse
//!   rejects or one over the size limit, which hyper then refuses itself),
//!   the guard passes bytes through untouched. A request hyper hands over
//!   while the guard is not following gets [`Violation::Untracked`]: fail
//!   closed.
//!
//! The common case (a whole head in one read, no body, plain ASCII fields)
//! costs one pass over the head ([`common_head`]) and no allocation; any
//! other head costs a memchr pass and one httparse call with uninitialised
//! header slots, and a head split across reads is carried in one reused
//! buffer bounded by the limit given to [`GuardLimits`].

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use http::HeaderMap;
use tokio::io::{AsyncRead, ReadBuf};

/// Why a request (or an upstream response) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Both Content-Length and Transfer-Encoding (RFC 9112 §6.3).
    LengthAndChunked,
    /// A Content-Length that is not plain digits, or overflows.
    BadContentLength,
    /// Content-Length values that differ.
    ConflictingContentLength,
    /// Transfer-Encoding other than exactly one `chunked`.
    BadTransferEncoding,
    /// Transfer-Encoding in an HTTP/1.0 message (RFC 9112 §6.1).
    TransferEncodingInHttp10,
    /// A control character (other than HTAB) in a field value.
    ControlCharacter,
    /// A request target in none of the forms of RFC 9112 §3.2.
    BadTarget,
    /// A chunk size that is missing, not hex, or overflows.
    BadChunkSize,
    /// A chunk not framed by CRLFs as declared, or a bad chunk extension.
    BadChunkFraming,
    /// A malformed or oversized trailer section.
    BadTrailer,
    /// hyper handed over a request the guard was not following.
    Untracked,
    /// The request target is longer than `max_uri_bytes`: answered 414,
    /// not 400, and the connection closes.
    TargetTooLong,
}

impl Violation {
    /// A short explanation for the client.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Violation::LengthAndChunked => "both Content-Length and Transfer-Encoding",
            Violation::BadContentLength => "invalid Content-Length",
            Violation::ConflictingContentLength => "conflicting Content-Length values",
            Violation::BadTransferEncoding => "unsupported Transfer-Encoding",
            Violation::TransferEncodingInHttp10 => "Transfer-Encoding in HTTP/1.0",
            Violation::ControlCharacter => "control character in a header field",
            Violation::BadTarget => "invalid request target",
            Violation::BadChunkSize => "invalid chunk size",
            Violation::BadChunkFraming => "invalid chunked framing",
            Violation::BadTrailer => "invalid trailer section",
            Violation::Untracked => "request framing could not be verified",
            Violation::TargetTooLong => "request target too long",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Violation {}

/// The guard's judgement of one HTTP/1.x request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Well framed.
    Accept,
    /// Well framed, and it asks to switch protocols (`Upgrade` or
    /// `CONNECT`): the guard stops reading the connection as HTTP/1.1 after
    /// it. If the answer is not 101, call [`Verdicts::resume`]; when that
    /// returns false the connection must close after the response.
    AcceptUpgrade,
    /// Answer 400 and close the connection; never forward.
    Reject(Violation),
}

/// Limits for one guard, matching what hyper is configured with.
#[derive(Debug, Clone, Copy)]
pub struct GuardLimits {
    /// The longest head the guard buffers; a longer one is left to hyper
    /// (which must refuse it), so this must be at least hyper's
    /// `max_buf_size`.
    pub max_head_bytes: usize,
    /// hyper's `max_headers`.
    pub max_headers: usize,
    /// `max_uri_bytes`: a request target longer than this is cut short
    /// (see [`TargetScan`]), so that it gets 414 however long the head.
    pub max_target_bytes: usize,
}

// ------------------------------------------------------------- verdicts --

/// The most verdicts waiting for the proxy. hyper holds at most one read
/// buffer of pipelined heads, each at least 16 bytes; beyond this the guard
/// stops following and later requests are refused.
const MAX_QUEUED: usize = 4096;

/// Whether the connection has a protocol switch outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// No upgrade request outstanding.
    None,
    /// An upgrade request was seen; the answer is not known yet.
    Awaiting,
    /// The proxy answered without switching: read the next head.
    Resume,
    /// The guard stopped following the connection.
    Abandoned,
}

#[derive(Debug)]
struct Shared {
    /// Plain [`Verdict::Accept`]s at the front of the queue, before
    /// everything in `rest`: the common hand-over, one atomic operation on
    /// each side. An accept goes here only while `rest` is empty, so these
    /// always come first.
    accepts: AtomicUsize,
    /// `rest.queue.len()`, readable without the lock.
    rest_len: AtomicUsize,
    rest: Mutex<Rest>,
}

#[derive(Debug)]
struct Rest {
    /// The verdicts after the counted accepts, in order.
    queue: VecDeque<Verdict>,
    switch: Switch,
}

/// One connection's verdicts, in request order: pushed by the guard as heads
/// complete, taken by the proxy once per HTTP/1.x request. One pusher (the
/// guard) and one taker (the proxy).
#[derive(Debug, Clone)]
pub struct Verdicts(Arc<Shared>);

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts::new()
    }
}

impl Verdicts {
    pub fn new() -> Verdicts {
        Verdicts(Arc::new(Shared {
            accepts: AtomicUsize::new(0),
            rest_len: AtomicUsize::new(0),
            rest: Mutex::new(Rest {
                queue: VecDeque::new(),
                switch: Switch::None,
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Rest> {
        self.0.rest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the next verdict is a plain [`Verdict::Accept`] (taken with
    /// [`Verdicts::take_accept`]).
    pub(crate) fn accept_next(&self) -> bool {
        self.0.accepts.load(Ordering::Acquire) > 0
    }

    /// Takes one counted accept, if there is one: the next verdict, when
    /// it is a plain [`Verdict::Accept`] (they all come first).
    pub(crate) fn take_accept(&self) -> bool {
        self.0
            .accepts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The verdict on the next HTTP/1.x request hyper hands over. hyper
    /// cannot have parsed a head the guard has not seen, so an empty queue
    /// means the guard was not following: refuse.
    pub fn next(&self) -> Verdict {
        if self.take_accept() {
            return Verdict::Accept;
        }
        let mut rest = self.lock();
        let next = rest.queue.pop_front();
        self.0.rest_len.store(rest.queue.len(), Ordering::Release);
        next.unwrap_or(Verdict::Reject(Violation::Untracked))
    }

    /// After an [`Verdict::AcceptUpgrade`] request was answered without
    /// switching protocols: lets the guard read the next head. Returns false
    /// when it can no longer (bytes arrived before the answer, or it gave
    /// up): the connection must then close after the response.
    pub(crate) fn resume(&self) -> bool {
        let mut s = self.lock();
        match s.switch {
            Switch::Awaiting | Switch::Resume => {
                s.switch = Switch::Resume;
                true
            }
            Switch::None => true,
            Switch::Abandoned => false,
        }
    }

    /// Queues a verdict; false when the queue is full.
    fn push(&self, verdict: Verdict) -> bool {
        let accepts = self.0.accepts.load(Ordering::Acquire);
        let rest_len = self.0.rest_len.load(Ordering::Acquire);
        if accepts + rest_len >= MAX_QUEUED {
            return false;
        }
        if verdict == Verdict::Accept && rest_len == 0 {
            // Only the pusher adds to `rest`, so it stays empty meanwhile.
            self.0.accepts.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        let mut s = self.lock();
        if verdict == Verdict::AcceptUpgrade {
            s.switch = Switch::Awaiting;
        }
        s.queue.push_back(verdict);
        self.0.rest_len.store(s.queue.len(), Ordering::Release);
        true
    }

    /// Turns the latest verdict into a refusal if the proxy has not taken it
    /// yet (its body turned out to be broken).
    fn refuse_last(&self, violation: Violation) {
        let mut s = self.lock();
        if let Some(last) = s.queue.back_mut() {
            *last = Verdict::Reject(violation);
        } else if self.take_accept() {
            // The latest is the last counted accept: it becomes the only
            // verdict after the others.
            s.queue.push_back(Verdict::Reject(violation));
            self.0.rest_len.store(s.queue.len(), Ordering::Release);
        }
    }

    /// Whether the proxy asked to resume after an upgrade request; if not
    /// (yet), the guard gives up on the connection.
    fn take_resume(&self) -> bool {
        let mut s = self.lock();
        if s.switch == Switch::Resume {
            s.switch = Switch::None;
            true
        } else {
            s.switch = Switch::Abandoned;
            false
        }
    }

    fn abandon(&self) {
        self.lock().switch = Switch::Abandoned;
    }
}

// ---------------------------------------------------------------- heads --

/// The request line of the HTTP/2 connection preface (RFC 9113 §3.4) and its
/// blank line: to an HTTP/1.1 reader it looks like a complete head.
const H2_PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

/// Header slots on the stack; more only when hyper is allowed more.
const STACK_HEADERS: usize = 256;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// What one complete head means for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Follow the body, then expect the next head (or, with `upgrade`, wait
    /// for the answer).
    Accept {
        body: BodyKind,
        upgrade: bool,
    },
    Refuse(Violation),
    /// The HTTP/2 preface: not HTTP/1.1 at all.
    Http2,
    /// Not parseable as a request head (hyper refuses it itself).
    Unparsed,
}

fn judge(head: &[u8], max_headers: usize) -> Outcome {
    if head == H2_PREFACE_HEAD {
        return Outcome::Http2;
    }
    let mut stack = [MaybeUninit::<httparse::Header<'_>>::uninit(); STACK_HEADERS];
    let mut heap;
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max_headers <= STACK_HEADERS {
        &mut stack[..max_headers]
    } else {
        heap = vec![MaybeUninit::uninit(); max_headers];
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, slots) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return Outcome::Unparsed,
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Outcome::Unparsed;
    };
    if !target_ok(method, target) {
        return Outcome::Refuse(Violation::BadTarget);
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te_fields = 0usize;
    let mut upgrade = method == "CONNECT";
    for field in req.headers.iter() {
        if field.value.iter().any(|&b| is_ctl(b)) {
            return Outcome::Refuse(Violation::ControlCharacter);
        }
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // A list ("5, 5") or repeated fields must all agree (§6.3 ¶5).
            for item in field.value.split(|&b| b == b',') {
                let Some(n) = parse_length(trim_ows(item)) else {
                    return Outcome::Refuse(Violation::BadContentLength);
                };
                match length {
                    Some(prev) if prev != n => {
                        return Outcome::Refuse(Violation::ConflictingContentLength)
                    }
                    _ => length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_fields += 1;
            // Exactly one field naming exactly one coding, `chunked` (names
            // are case-insensitive, RFC 9112 §7): anything longer is either
            // chunked twice, a coding sluice does not decode, or a trick.
            chunked = te_fields == 1 && trim_ows(field.value).eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"upgrade") && version == 1 {
            // hyper switches on any Upgrade field in HTTP/1.1.
            upgrade = true;
        }
    }
    let body = match (te_fields > 0, length) {
        (true, _) if version == 0 => return Outcome::Refuse(Violation::TransferEncodingInHttp10),
        (true, Some(_)) => return Outcome::Refuse(Violation::LengthAndChunked),
        (true, None) if !chunked => return Outcome::Refuse(Violation::BadTransferEncoding),
        (true, None) => BodyKind::Chunked,
        (false, Some(0)) | (false, None) => BodyKind::None,
        (false, Some(n)) => BodyKind::Length(n),
    };
    Outcome::Accept { body, upgrade }
}

/// Control characters other than HTAB, and DEL.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `1*DIGIT`, nothing else (no sign, no spaces inside), within u64.
fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// The request-target forms of RFC 9112 §3.2: origin-form (`/path`),
/// absolute-form (`http://` or `https://`), authority-form for CONNECT,
/// asterisk-form for OPTIONS.
fn target_ok(method: &str, target: &str) -> bool {
    let t = target.as_bytes();
    if t.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return false;
    }
    if method == "CONNECT" {
        return !t.is_empty() && !t.iter().any(|&b| matches!(b, b'/' | b'?' | b'#' | b'@'));
    }
    match t {
        [b'/', ..] => true,
        b"*" => method == "OPTIONS",
        _ => {
            let scheme = |prefix: &[u8]| {
                t.get(..prefix.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
            };
            scheme(b"http://") || scheme(b"https://")
        }
    }
}

// ---------------------------------------------------------- common heads --

/// The common request head, read in one pass: a request line with an
/// origin-form target and HTTP/1.0 or 1.1, then fields of visible ASCII and
/// spaces, none of them Content-Length, Transfer-Encoding or Upgrade, all
/// within `limits`. Returns the head's length when `bytes` starts with such
/// a head, complete: [`judge`] would accept it as a request with no body and
/// no protocol switch, so the guard queues that verdict without httparse.
///
/// Anything else is `None` and goes to the full path, which reads it
/// exactly as before: a partial head, leading empty lines, `CONNECT`, any
/// other target form, a field that frames a body or switches protocols, a
/// tab or obs-text, or anything malformed. Every rule here is narrower than
/// httparse's grammar (one space between request-line parts, `tchar` names
/// ending in a colon, CRLF or LF line ends, at most `max_headers` fields),
/// so a head taken here is one httparse, hence hyper, parses the same way.
fn common_head(bytes: &[u8], limits: &GuardLimits) -> Option<usize> {
    let method = bytes.iter().position(|&b| !is_token(b))?;
    if method == 0 || bytes[method] != b' ' || &bytes[..method] == b"CONNECT" {
        return None;
    }
    let target_at = method + 1;
    let target = bytes.get(target_at..)?;
    let len = target.iter().position(|&b| !is_visible(b))?;
    if target.first() != Some(&b'/') || target[len] != b' ' || len > limits.max_target_bytes {
        return None;
    }
    let version_at = target_at + len + 1;
    let version = bytes.get(version_at..version_at + 8)?;
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return None;
    }
    let mut i = line_end(bytes, version_at + 8)?;
    let mut fields = 0;
    let end = loop {
        if let Some(end) = line_end(bytes, i) {
            break end;
        }
        fields += 1;
        let line = bytes.get(i..)?;
        let name = line.iter().position(|&b| !is_token(b))?;
        if fields > limits.max_headers
            || name == 0
            || line[name] != b':'
            || frames_or_switches(&line[..name])
        {
            return None;
        }
        let value = &line[name + 1..];
        i = line_end(bytes, i + name + 1 + plain_run(value))?;
    };
    (end <= limits.max_head_bytes).then_some(end)
}

/// Past the line end (CRLF, or the bare LF httparse also takes) at `i`.
/// Inlined: it is a couple of comparisons, called for every line of the
/// common head.
#[inline(always)]
fn line_end(bytes: &[u8], i: usize) -> Option<usize> {
    match bytes.get(i..)? {
        [b'\r', b'\n', ..] => Some(i + 2),
        [b'\n', ..] => Some(i + 1),
        _ => None,
    }
}

/// Content-Length, Transfer-Encoding or Upgrade: fields that give a request
/// a body or ask to switch protocols, left to the full path.
fn frames_or_switches(name: &[u8]) -> bool {
    match name.len() {
        14 => name.eq_ignore_ascii_case(b"content-length"),
        17 => name.eq_ignore_ascii_case(b"transfer-encoding"),
        7 => name.eq_ignore_ascii_case(b"upgrade"),
        _ => false,
    }
}

/// A visible ASCII character (`VCHAR`).
fn is_visible(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// How many bytes `s` starts with that are spaces or visible ASCII: a field
/// value in its common form. Eight bytes at a time: the first word holding
/// a control character, DEL or obs-text says where it is, and a tail of
/// fewer than eight bytes is read as the last eight, overlapping bytes
/// already found plain.
fn plain_run(s: &[u8]) -> usize {
    let (words, _) = s.as_chunks::<8>();
    for (k, word) in words.iter().enumerate() {
        if let Some(at) = first_unplain(word) {
            return 8 * k + at;
        }
    }
    match s.last_chunk::<8>() {
        Some(last) => first_unplain(last).map_or(s.len(), |at| s.len() - 8 + at),
        None => s
            .iter()
            .take_while(|&&b| b == b' ' || is_visible(b))
            .count(),
    }
}

/// The place of the first byte of `word` that is neither a space nor
/// visible ASCII.
#[inline]
fn first_unplain(word: &[u8; 8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let x = u64::from_le_bytes(*word);
    // A byte below 0x20 borrows into its top bit; 0x7f carries into it;
    // obs-text has it already. A borrow or carry across bytes only starts
    // at such a byte, so the lowest byte flagged is the first such byte
    // (bytes above it may be flagged by its borrow or carry).
    let below = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    let above = (x.wrapping_add(ONES) | x) & HIGH;
    let flagged = below | above;
    (flagged != 0).then(|| flagged.trailing_zeros() as usize / 8)
}

// --------------------------------------------------------------- targets --

/// What the guard hands hyper after the part of an overlong request line it
/// has already passed on: the rest of a request line and a head that asks
/// hyper to close the connection after its answer. The proxy answers the
/// request with the [`Violation::TargetTooLong`] verdict queued for it (414)
/// and never looks at the truncated target.
const TARGET_CUT: &[u8] = b" HTTP/1.1\r\nconnection: close\r\n\r\n";

/// Where [`TargetScan`] is in a request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinePhase {
    /// Before the method: empty lines are skipped, as httparse does.
    Lead,
    Method,
    /// In the target, this many bytes so far.
    Target(usize),
    /// Past the target (or not a request line): nothing more to count.
    Done,
}

/// Measures the request target of each head as its bytes go by, so that an
/// overlong target is caught as soon as it passes `max_uri_bytes`: before
/// the head outgrows hyper's buffer (which hyper would answer 431) and
/// before the rest of it is buffered at all.
#[derive(Debug, Clone, Copy)]
struct TargetScan(LinePhase);

impl TargetScan {
    /// Follows `bytes`, the next bytes of a head; returns the offset of the
    /// first target byte beyond `max`.
    fn overlong(&mut self, bytes: &[u8], max: usize) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            match self.0 {
                LinePhase::Lead => match bytes[i] {
                    b'\r' | b'\n' => i += 1,
                    _ => self.0 = LinePhase::Method,
                },
                LinePhase::Method => match memchr::memchr2(b' ', b'\n', &bytes[i..]) {
                    Some(n) if bytes[i + n] == b' ' => {
                        self.0 = LinePhase::Target(0);
                        i += n + 1;
                    }
                    Some(_) => self.0 = LinePhase::Done,
                    None => return None,
                },
                LinePhase::Target(len) => {
                    let rest = &bytes[i..];
                    let end = memchr::memchr3(b' ', b'\r', b'\n', rest);
                    let taken = end.unwrap_or(rest.len());
                    if len + taken > max {
                        return Some(i + (max - len));
                    }
                    self.0 = match end {
                        Some(_) => LinePhase::Done,
                        None => LinePhase::Target(len + taken),
                    };
                    i += taken;
                }
                LinePhase::Done => return None,
            }
        }
        None
    }
}

// ---------------------------------------------------------------- bodies --

/// Hyper's limit for chunk extensions in one body, kept here too.
const MAX_EXTENSION_BYTES: u32 = 16 << 10;
/// Trailer section size (hyper's default limit).
const MAX_TRAILER_BYTES: u32 = 16 << 10;
/// Hex digits in one chunk size, leading zeros included.
const MAX_SIZE_DIGITS: u8 = 32;

/// Where the chunked decoder is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting the first hex digit of a chunk size.
    SizeStart,
    /// In the hex digits.
    Size,
    /// Whitespace after the size: only `;` may follow.
    SizeBws,
    /// In a chunk extension, up to CR.
    Ext,
    /// After the CR ending a size line.
    SizeLf,
    /// In chunk data.
    Data,
    /// After chunk data: expecting CR.
    DataCr,
    /// Expecting LF after the data's CR.
    DataLf,
    /// At the start of a trailer line or of the final CRLF.
    TrailerStart,
    /// In a trailer field name.
    TrailerName,
    /// In a trailer field value.
    TrailerValue,
    /// After the CR ending a trailer line.
    TrailerLf,
    /// After the CR of the final empty line.
    EndLf,
}

/// What the guard is reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A request head (possibly after leading empty lines).
    Head,
    /// The rest of a Content-Length body.
    Fixed(u64),
    Chunked(Chunk),
    /// After an upgrade request: the next bytes may be the new protocol.
    Pending,
    /// Not following: bytes pass through.
    Off,
    /// The body broke framing: every read fails.
    Failed(Violation),
    /// An overlong target was cut short: this much of [`TARGET_CUT`] has
    /// been passed on; then the connection is only drained.
    Cut(usize),
}

/// Bytes from `at` on (in the slice given to [`Tracker::feed`]) break body
/// framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Broken {
    pub at: usize,
    pub violation: Violation,
}

/// The framing state machine, independent of any IO.
#[derive(Debug)]
pub(crate) struct Tracker {
    state: State,
    limits: GuardLimits,
    verdicts: Verdicts,
    /// A head split across reads, carried over (capacity reused).
    head: Vec<u8>,
    /// Blank-line detection across reads: 0 at a line start, 1 after a
    /// lone CR, 2 inside a line.
    line: u8,
    /// A non-empty line has been seen in the current head.
    seen_line: bool,
    /// After the current body: wait for the upgrade answer.
    upgrade: bool,
    /// The current head's request target, measured.
    target: TargetScan,
    /// Size of the current chunk; remaining data bytes while in `Data`.
    chunk: u64,
    size_digits: u8,
    ext_bytes: u32,
    trailer_bytes: u32,
}

impl Tracker {
    pub(crate) fn new(verdicts: Verdicts, limits: GuardLimits) -> Tracker {
        Tracker {
            state: State::Head,
            limits,
            verdicts,
            head: Vec::new(),
            line: 0,
            seen_line: false,
            upgrade: false,
            target: TargetScan(LinePhase::Lead),
            chunk: 0,
            size_digits: 0,
            ext_bytes: 0,
            trailer_bytes: 0,
        }
    }

    /// Whether the guard still reads the connection as HTTP/1.1.
    pub(crate) fn following(&self) -> bool {
        !matches!(self.state, State::Off | State::Failed(_) | State::Cut(_))
    }

    /// Whether every byte followed so far belongs to a complete request:
    /// the next byte would start a new head. Frees a split head's buffer
    /// when it does.
    pub(crate) fn at_boundary(&mut self) -> bool {
        let at = matches!(self.state, State::Head)
            && self.head.is_empty()
            && !self.seen_line
            && self.line == 0;
        if at {
            self.head = Vec::new();
        }
        at
    }

    fn failed(&self) -> Option<Violation> {
        match self.state {
            State::Failed(v) => Some(v),
            _ => None,
        }
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.head = Vec::new();
        self.verdicts.abandon();
    }

    /// Follows `data`, the next bytes from the client.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<(), Broken> {
        let mut i = 0;
        while i < data.len() {
            i = match self.state {
                State::Off | State::Failed(_) | State::Cut(_) => return Ok(()),
                State::Head => match self.common_head(&data[i..]) {
                    // What `judged` does with an accepted head without a
                    // body or a protocol switch: queue the verdict and
                    // read the next head (`upgrade` is never set while a
                    // head is read).
                    Some(end) if self.verdicts.push(Verdict::Accept) => i + end,
                    Some(_) => {
                        self.off();
                        data.len()
                    }
                    None => {
                        let max = self.limits.max_target_bytes;
                        if let Some(at) = self.target.overlong(&data[i..], max) {
                            return Err(self.cut(i + at));
                        }
                        self.read_head(data, i)
                    }
                },
                State::Fixed(left) => {
                    let n = left.min((data.len() - i) as u64);
                    if n == left {
                        self.end_body();
                    } else {
                        self.state = State::Fixed(left - n);
                    }
                    i + n as usize
                }
                State::Chunked(chunk) => match self.read_chunked(chunk, data, i) {
                    Ok(next) => next,
                    Err((violation, at)) => return Err(self.fail(violation, at)),
                },
                State::Pending => {
                    if self.verdicts.take_resume() {
                        self.state = State::Head;
                    } else {
                        self.off();
                    }
                    i
                }
            };
        }
        Ok(())
    }

    fn fail(&mut self, violation: Violation, at: usize) -> Broken {
        self.verdicts.refuse_last(violation);
        self.verdicts.abandon();
        self.state = State::Failed(violation);
        self.head = Vec::new();
        Broken { at, violation }
    }

    /// The target of the head being read passed `max_target_bytes` at `at`:
    /// its request is refused (414), and what hyper has of it is completed
    /// with [`TARGET_CUT`].
    fn cut(&mut self, at: usize) -> Broken {
        self.head = Vec::new();
        if self
            .verdicts
            .push(Verdict::Reject(Violation::TargetTooLong))
        {
            self.state = State::Cut(0);
        } else {
            self.off();
        }
        Broken {
            at,
            violation: Violation::TargetTooLong,
        }
    }

    fn end_body(&mut self) {
        if std::mem::take(&mut self.upgrade) {
            self.state = State::Pending;
        } else {
            self.state = State::Head;
        }
    }

    /// Scans `bytes` for the blank line ending a head; returns the offset
    /// just past it. Empty lines before the request line are skipped, as
    /// httparse does.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut from = 0;
        for lf in memchr::memchr_iter(b'\n', bytes) {
            let blank = matches!(
                (self.line, &bytes[from..lf]),
                (0, []) | (0, [b'\r']) | (1, [])
            );
            from = lf + 1;
            self.line = 0;
            if !blank {
                self.seen_line = true;
            } else if self.seen_line {
                self.seen_line = false;
                return Some(from);
            }
        }
        let rest = &bytes[from..];
        if !rest.is_empty() {
            self.line = if self.line == 0 && rest == b"\r" {
                1
            } else {
                2
            };
        }
        None
    }

    /// Reads head bytes from `data[i..]`; returns where it stopped.
    fn read_head(&mut self, data: &[u8], i: usize) -> usize {
        let rest = &data[i..];
        let Some(end) = self.scan(rest) else {
            if self.head.len() + rest.len() > self.limits.max_head_bytes {
                self.off();
            } else {
                if self.head.capacity() == 0 {
                    self.head.reserve(1024.min(self.limits.max_head_bytes));
                }
                self.head.extend_from_slice(rest);
            }
            return data.len();
        };
        self.target = TargetScan(LinePhase::Lead);
        if self.head.len() + end > self.limits.max_head_bytes {
            self.off();
            return data.len();
        }
        let outcome = if self.head.is_empty() {
            judge(&rest[..end], self.limits.max_headers)
        } else {
            self.head.extend_from_slice(&rest[..end]);
            let outcome = judge(&self.head, self.limits.max_headers);
            self.head.clear();
            outcome
        };
        self.judged(outcome, data.len(), i + end)
    }

    /// The head `data[i..]` starts with, when it is complete and common
    /// ([`common_head`]) and nothing of the current head was read before:
    /// its length. With this state the full path would scan, measure and
    /// judge the same bytes to the same end (an accepted head with no body),
    /// leaving the line and target scans where they start.
    fn common_head(&self, rest: &[u8]) -> Option<usize> {
        let fresh = self.head.is_empty()
            && self.line == 0
            && !self.seen_line
            && self.target.0 == LinePhase::Lead;
        if fresh {
            common_head(rest, &self.limits)
        } else {
            None
        }
    }

    /// Acts on the judgement of a head that ended at `next` in a read of
    /// `len` bytes; returns where reading goes on.
    fn judged(&mut self, outcome: Outcome, len: usize, next: usize) -> usize {
        match outcome {
            Outcome::Accept { body, upgrade } => {
                let verdict = if upgrade {
                    Verdict::AcceptUpgrade
                } else {
                    Verdict::Accept
                };
                if !self.verdicts.push(verdict) {
                    self.off();
                    return len;
                }
                self.upgrade = upgrade;
                match body {
                    BodyKind::None => self.end_body(),
                    BodyKind::Length(n) => self.state = State::Fixed(n),
                    BodyKind::Chunked => {
                        self.ext_bytes = 0;
                        self.start_chunk();
                    }
                }
                next
            }
            Outcome::Refuse(v) => {
                self.verdicts.push(Verdict::Reject(v));
                self.off();
                len
            }
            Outcome::Http2 | Outcome::Unparsed => {
                self.off();
                len
            }
        }
    }

    fn start_chunk(&mut self) {
        self.chunk = 0;
        self.size_digits = 0;
        self.state = State::Chunked(Chunk::SizeStart);
    }

    /// Reads chunked-body bytes from `data[i..]`; returns where it stopped,
    /// or the violation and the offset of the byte that broke framing. Per
    /// byte except chunk data, which is skipped in one step.
    fn read_chunked(
        &mut self,
        mut st: Chunk,
        data: &[u8],
        mut i: usize,
    ) -> Result<usize, (Violation, usize)> {
        while i < data.len() {
            if st == Chunk::Data {
                let n = self.chunk.min((data.len() - i) as u64);
                self.chunk -= n;
                i += n as usize;
                if self.chunk == 0 {
                    st = Chunk::DataCr;
                }
                continue;
            }
            match self.step(st, data[i]) {
                Ok(Some(next)) => st = next,
                Ok(None) => {
                    self.end_body();
                    return Ok(i + 1);
                }
                Err(v) => return Err((v, i)),
            }
            i += 1;
        }
        self.state = State::Chunked(st);
        Ok(i)
    }

    /// One byte of chunked framing outside chunk data; `None` once the body
    /// is complete.
    fn step(&mut self, st: Chunk, b: u8) -> Result<Option<Chunk>, Violation> {
        let next = match st {
            Chunk::SizeStart | Chunk::Size => match hex(b) {
                Some(d) => {
                    self.size_digits += 1;
                    if self.size_digits > MAX_SIZE_DIGITS || self.chunk > u64::MAX >> 4 {
                        return Err(Violation::BadChunkSize);
                    }
                    self.chunk = self.chunk << 4 | u64::from(d);
                    Chunk::Size
                }
                None if st == Chunk::SizeStart => return Err(Violation::BadChunkSize),
                None => match b {
                    b'\r' => Chunk::SizeLf,
                    b';' => Chunk::Ext,
                    b' ' | b'\t' => Chunk::SizeBws,
                    _ => return Err(Violation::BadChunkSize),
                },
            },
            Chunk::SizeBws => match b {
                b' ' | b'\t' => Chunk::SizeBws,
                b';' => Chunk::Ext,
                _ => return Err(Violation::BadChunkFraming),
            },
            Chunk::Ext => {
                self.ext_bytes += 1;
                if self.ext_bytes > MAX_EXTENSION_BYTES {
                    return Err(Violation::BadChunkFraming);
                }
                match b {
                    b'\r' => Chunk::SizeLf,
                    b if is_ctl(b) => return Err(Violation::BadChunkFraming),
                    _ => Chunk::Ext,
                }
            }
            Chunk::SizeLf => match b {
                b'\n' if self.chunk == 0 => {
                    self.trailer_bytes = 0;
                    Chunk::TrailerStart
                }
                b'\n' => Chunk::Data,
                _ => return Err(Violation::BadChunkFraming),
            },
            Chunk::Data => unreachable!("chunk data is skipped in bulk"),
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                _ => return Err(Violation::BadChunkFraming),
            },
            Chunk::DataLf => match b {
                b'\n' => {
                    self.chunk = 0;
                    self.size_digits = 0;
                    Chunk::SizeStart
                }
                _ => return Err(Violation::BadChunkFraming),
            },
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::EndLf,
                b if is_token(b) => Chunk::TrailerName,
                // Leading whitespace would be obs-fold; a bare LF is not a
                // line ending here.
                _ => return Err(Violation::BadTrailer),
            },
            Chunk::TrailerName => match b {
                b':' => Chunk::TrailerValue,
                b if is_token(b) => Chunk::TrailerName,
                _ => return Err(Violation::BadTrailer),
            },
            Chunk::TrailerValue => match b {
                b'\r' => Chunk::TrailerLf,
                b if is_ctl(b) => return Err(Violation::BadTrailer),
                _ => Chunk::TrailerValue,
            },
            Chunk::TrailerLf => match b {
                b'\n' => Chunk::TrailerStart,
                _ => return Err(Violation::BadTrailer),
            },
            Chunk::EndLf => match b {
                b'\n' => return Ok(None),
                _ => return Err(Violation::BadChunkFraming),
            },
        };
        if matches!(
            next,
            Chunk::TrailerName | Chunk::TrailerValue | Chunk::TrailerLf | Chunk::TrailerStart
        ) {
            self.trailer_bytes += 1;
            if self.trailer_bytes > MAX_TRAILER_BYTES {
                return Err(Violation::BadTrailer);
            }
        }
        Ok(Some(next))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `tchar` (RFC 9110 §5.6.2): a byte of a method or a field name.
fn is_token(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// [`is_token`] as a table: it runs on every byte of every field name.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    table
};

// -------------------------------------------------------------- responses --

/// Framing checks on an upstream response head that hyper's client parsed
/// without complaint: hyper lets Transfer-Encoding override Content-Length
/// (RFC 9112 §6.3 says such a message "ought to be handled as an error"),
/// and reads a response whose Transfer-Encoding does not end in `chunked`
/// until the connection closes, still encoded. Sluice relays neither.
pub(crate) fn check_response_head(headers: &HeaderMap) -> Result<(), Violation> {
    let mut te = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    let Some(first) = te.next() else {
        return Ok(());
    };
    if headers.contains_key(http::header::CONTENT_LENGTH) {
        return Err(Violation::LengthAndChunked);
    }
    if te.next().is_some() || !trim_ows(first.as_bytes()).eq_ignore_ascii_case(b"chunked") {
        return Err(Violation::BadTransferEncoding);
    }
    Ok(())
}

// -------------------------------------------------------------------- io --

/// A client connection's byte stream with the framing rules applied to what
/// is read; writes pass through.
pub struct FramingGuard<S> {
    inner: S,
    tracker: Tracker,
}

impl<S> FramingGuard<S> {
    pub fn new(inner: S, verdicts: Verdicts, limits: GuardLimits) -> FramingGuard<S> {
        FramingGuard {
            inner,
            tracker: Tracker::new(verdicts, limits),
        }
    }
}

impl<S> FramingGuard<S> {
    /// See [`Tracker::at_boundary`].
    pub(crate) fn at_boundary(&mut self) -> bool {
        self.tracker.at_boundary()
    }
}

/// Reads of the client's bytes dropped in one poll after a cut, before
/// letting other tasks run.
const DRAIN_READS: usize = 16;

/// After a cut, how long and how much of the client's sending is read and
/// dropped once hyper has answered and closed ([`FramingGuard::linger`]).
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);
const LINGER_BYTES: usize = 1 << 20;

impl<S: AsyncRead + Unpin> FramingGuard<S> {
    /// Whether an overlong target was cut short on this connection.
    pub(crate) fn was_cut(&self) -> bool {
        matches!(self.tracker.state, State::Cut(_))
    }

    /// A lingering close after a cut (as nginx's `lingering_close`): the
    /// 414 has been written and the write side shut, but a client still
    /// sending its target has bytes in flight, and closing with unread
    /// bytes sends a reset that can destroy the 414 before the client
    /// reads it. So the client's bytes are read and dropped until it
    /// closes, within [`LINGER_TIME`] and [`LINGER_BYTES`].
    pub(crate) async fn linger(&mut self) {
        let inner = &mut self.inner;
        let drain = async {
            let mut scratch = [0u8; 4096];
            let mut total = 0;
            while total < LINGER_BYTES {
                let read = std::future::poll_fn(|cx| {
                    let mut dropped = ReadBuf::new(&mut scratch);
                    std::task::ready!(Pin::new(&mut *inner).poll_read(cx, &mut dropped))?;
                    Poll::Ready(Ok::<_, io::Error>(dropped.filled().len()))
                })
                .await;
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    }

    /// Passes on as much of [`TARGET_CUT`] from `sent` on as fits.
    fn put_cut(&mut self, sent: usize, buf: &mut ReadBuf<'_>) {
        let n = (TARGET_CUT.len() - sent).min(buf.remaining());
        buf.put_slice(&TARGET_CUT[sent..sent + n]);
        self.tracker.state = State::Cut(sent + n);
    }

    /// After a cut: the rest of [`TARGET_CUT`], then nothing. The client's
    /// bytes are read and dropped meanwhile, so that a client still sending
    /// its target is not blocked and the 414 is not lost to a reset when
    /// the connection closes with bytes unread. Never reports the end of
    /// the stream, which hyper would take for the client leaving.
    fn poll_cut(
        &mut self,
        cx: &mut Context<'_>,
        sent: usize,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if sent < TARGET_CUT.len() {
            self.put_cut(sent, buf);
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 4096];
        for _ in 0..DRAIN_READS {
            let mut dropped = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut dropped) {
                Poll::Ready(Ok(())) if !dropped.filled().is_empty() => {}
                // The end of the stream or an error: nothing will wake this
                // read again, and hyper needs nothing more from it.
                Poll::Ready(_) | Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn broken(v: Violation) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, v)
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(v) = this.tracker.failed() {
            return Poll::Ready(Err(broken(v)));
        }
        if let State::Cut(sent) = this.tracker.state {
            return this.poll_cut(cx, sent, buf);
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if !this.tracker.following() {
            return Poll::Ready(Ok(()));
        }
        if let Err(b) = this.tracker.feed(&buf.filled()[before..]) {
            if let State::Cut(_) = this.tracker.state {
                tracing::debug!("request target too long; cut short");
                // Never an empty read: the cut frees at least the byte it
                // was found at.
                buf.set_filled(before + b.at);
                this.put_cut(0, buf);
                return Poll::Ready(Ok(()));
            }
            tracing::debug!(violation = %b.violation, "request body framing broken");
            if b.at == 0 {
                // Nothing valid to pass on (an empty read would mean EOF).
                return Poll::Ready(Err(broken(b.violation)));
            }
            // Pass on what precedes the break; the next read fails.
            buf.set_filled(before + b.at);
        }
        Poll::Ready(Ok(()))
    }
}

crate::io::forward_async_write!(FramingGuard);

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: GuardLimits = GuardLimits {
        max_head_bytes: 4096,
        max_headers: 100,
        max_target_bytes: 8 << 10,
    };

    /// What feeding some reads produced.
    #[derive(Debug, PartialEq, Eq)]
    struct Run {
        verdicts: Vec<Verdict>,
        /// Offset of the break in the concatenated input, and why.
        broken: Option<(usize, Violation)>,
        following: bool,
    }

    fn run_with(limits: GuardLimits, parts: &[&[u8]]) -> Run {
        let verdicts = Verdicts::new();
        let mut t = Tracker::new(verdicts.clone(), limits);
        let mut offset = 0;
        let mut broken = None;
        for part in parts {
            if broken.is_none() {
                if let Err(b) = t.feed(part) {
                    broken = Some((offset + b.at, b.violation));
                }
            }
            offset += part.len();
        }
        let queued = std::iter::from_fn(|| match verdicts.next() {
            Verdict::Reject(Violation::Untracked) => None,
            v => Some(v),
        })
        .collect();
        Run {
            verdicts: queued,
            broken,
            following: t.following(),
        }
    }

    fn run(parts: &[&[u8]]) -> Run {
        run_with(LIMITS, parts)
    }

    /// The verdict the proxy gets for the first request in `bytes`.
    fn first(bytes: &[u8]) -> Verdict {
        let verdicts = Verdicts::new();
        let mut t = Tracker::new(verdicts.clone(), LIMITS);
        let _ = t.feed(bytes);
        verdicts.next()
    }

    fn with_field(field: &str) -> Vec<u8> {
        format!("POST /x HTTP/1.1\r\nHost: a\r\n{field}\r\n\r\n").into_bytes()
    }

    fn refused(bytes: &[u8]) -> bool {
        matches!(first(bytes), Verdict::Reject(_))
    }

    #[test]
    fn well_framed_heads_are_accepted() {
        assert_eq!(first(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Verdict::Accept);
        assert_eq!(first(b"GET / HTTP/1.0\r\n\r\n"), Verdict::Accept);
        // Empty lines before the request line are skipped (RFC 9112 §2.2),
        // and httparse (so hyper) accepts bare LF line endings in the head.
        assert_eq!(
            first(b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Verdict::Accept
        );
        assert_eq!(first(b"GET / HTTP/1.1\nHost: a\n\n"), Verdict::Accept);
    }

    #[test]
    fn rfc9112_6_3_content_length_with_transfer_encoding_is_refused() {
        for fields in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 5",
            "Transfer-Encoding: chunked\r\nContent-Length: 0",
        ] {
            assert_eq!(
                first(&with_field(fields)),
                Verdict::Reject(Violation::LengthAndChunked),
                "{fields}"
            );
        }
    }

    #[test]
    fn rfc9112_6_1_transfer_encoding_must_be_exactly_chunked() {
        for value in [
            "xchunked",
            "chunkedx",
            "chunked, identity",
            "identity",
            "gzip, chunked",
            "chunked, chunked",
            "chunked,",
            ", chunked",
            "chunked;q=1",
            "\"chunked\"",
            "chunk ed",
            "",
        ] {
            assert_eq!(
                first(&with_field(&format!("Transfer-Encoding: {value}"))),
                Verdict::Reject(Violation::BadTransferEncoding),
                "{value:?}"
            );
        }
        // Two fields are a list of two codings.
        assert_eq!(
            first(&with_field(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
            )),
            Verdict::Reject(Violation::BadTransferEncoding)
        );
        // Coding names are case-insensitive; OWS around a value is not part
        // of it.
        for value in ["chunked", "Chunked", "CHUNKED", "  chunked", "chunked \t"] {
            assert_eq!(
                first(&with_field(&format!("Transfer-Encoding: {value}"))),
                Verdict::Accept,
                "{value:?}"
            );
        }
    }

    #[test]
    fn transfer_encoding_hidden_by_whitespace_or_control_is_refused() {
        for field in [
            "Transfer-Encoding : chunked",
            "Transfer-Encoding\t: chunked",
            "X: y\r\n Transfer-Encoding: chunked",
            "X: y\r\n\tTransfer-Encoding: chunked",
            "Transfer-Encoding:\x0bchunked",
            "Transfer-Encoding: \x0cchunked",
            "Transfer-Encoding: chunked\x00",
        ] {
            assert!(refused(&with_field(field)), "{field:?}");
        }
    }

    #[test]
    fn rfc9112_6_1_transfer_encoding_in_http10_is_refused() {
        assert_eq!(
            first(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Verdict::Reject(Violation::TransferEncodingInHttp10)
        );
    }

    #[test]
    fn rfc9112_6_3_content_length_must_be_digits() {
        for value in [
            "+5",
            "-1",
            "5a",
            "0x5",
            "",
            "5 5",
            "1e3",
            "5,",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            assert_eq!(
                first(&with_field(&format!("Content-Length: {value}"))),
                Verdict::Reject(Violation::BadContentLength),
                "{value:?}"
            );
        }
        let r = run(&[&with_field("Content-Length: 005"), b"hello"]);
        assert_eq!(r.verdicts, [Verdict::Accept]);
        assert_eq!(r.broken, None);
    }

    #[test]
    fn rfc9112_6_3_differing_content_lengths_are_refused() {
        for fields in [
            "Content-Length: 5\r\nContent-Length: 6",
            "Content-Length: 5, 6",
            "Content-Length: 5\r\nContent-Length: 5, 6",
        ] {
            assert_eq!(
                first(&with_field(fields)),
                Verdict::Reject(Violation::ConflictingContentLength),
                "{fields}"
            );
        }
        // Identical repeats name one length (§6.3 ¶5).
        for fields in [
            "Content-Length: 5\r\nContent-Length: 5",
            "Content-Length: 5, 5",
        ] {
            let mut bytes = with_field(fields);
            bytes.extend_from_slice(b"helloGET / HTTP/1.1\r\nHost: a\r\n\r\n");
            let r = run(&[&bytes]);
            assert_eq!(r.verdicts, [Verdict::Accept, Verdict::Accept], "{fields}");
        }
    }

    #[test]
    fn control_characters_obs_fold_and_bare_cr_in_fields_are_refused() {
        for field in [
            "X-A: a\x00b",
            "X-A: a\x01b",
            "X-A: a\x7fb",
            "X-A: a\rb",
            "X-A: a\x1bb",
            "X-A: a\r\n b",
            "X-A : a",
            "X\x00A: a",
            "X-A a",
        ] {
            assert!(refused(&with_field(field)), "{field:?}");
        }
        // HTAB and obs-text are field content.
        assert_eq!(first(&with_field("X-A: a\tb\u{e9}")), Verdict::Accept);
    }

    #[test]
    fn rfc9112_3_invalid_method_or_version_is_refused() {
        for line in [
            "G@T / HTTP/1.1",
            "G\x01T / HTTP/1.1",
            "GET / HTTP/1.2",
            "GET / HTTP/2.0",
            "GET /a b HTTP/1.1",
            "GET / HTTP/1.1 extra",
            " GET / HTTP/1.1",
        ] {
            let bytes = format!("{line}\r\nHost: a\r\n\r\n");
            assert!(refused(bytes.as_bytes()), "{line:?}");
        }
    }

    #[test]
    fn rfc9112_3_2_request_target_forms() {
        let verdict = |line: &str| first(format!("{line}\r\nHost: a\r\n\r\n").as_bytes());
        for line in [
            "GET foo HTTP/1.1",
            "GET * HTTP/1.1",
            "GET ftp://a/x HTTP/1.1",
            "GET //a HTTP/1.1x",
            "CONNECT /x HTTP/1.1",
            "CONNECT user@a:443 HTTP/1.1",
        ] {
            assert!(matches!(verdict(line), Verdict::Reject(_)), "{line}");
        }
        assert_eq!(
            verdict("GET foo HTTP/1.1"),
            Verdict::Reject(Violation::BadTarget)
        );
        for line in [
            "GET /x?y=1 HTTP/1.1",
            "OPTIONS * HTTP/1.1",
            "GET http://a/x HTTP/1.1",
            "GET HTTPS://a HTTP/1.1",
        ] {
            assert_eq!(verdict(line), Verdict::Accept, "{line}");
        }
        assert_eq!(verdict("CONNECT a:443 HTTP/1.1"), Verdict::AcceptUpgrade);
    }

    const CHUNKED_HEAD: &[u8] =
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n";

    /// Runs a chunked body after [`CHUNKED_HEAD`] and then [`NEXT`];
    /// the break offset is relative to the body.
    fn chunked(body: &[u8]) -> Run {
        let mut r = run(&[CHUNKED_HEAD, body, NEXT]);
        if let Some((at, v)) = r.broken {
            r.broken = Some((at - CHUNKED_HEAD.len(), v));
        }
        r
    }

    #[test]
    fn rfc9112_7_1_chunked_body_is_followed_to_the_next_head() {
        for body in [
            &b"5\r\nhello\r\n0\r\n\r\n"[..],
            b"5;name=value\r\nhello\r\nA ; x\r\n0123456789\r\n0\r\n\r\n",
            b"5;a=\"q s\"\r\nhello\r\n000\r\nX-Sum: 1\r\nX-Empty:\r\n\r\n",
            b"0\r\n\r\n",
            b"ffff\r\n",
        ] {
            let r = chunked(body);
            if body == b"ffff\r\n" {
                // Still inside chunk data: the "next head" is body bytes.
                assert_eq!(r.verdicts, [Verdict::Accept]);
                assert!(r.following);
                continue;
            }
            assert_eq!(r.broken, None, "{:?}", String::from_utf8_lossy(body));
            assert_eq!(r.verdicts, [Verdict::Accept, Verdict::Accept]);
            assert!(r.following);
        }
    }

    #[test]
    fn rfc9112_7_1_invalid_or_overflowing_chunk_size_breaks_the_body() {
        let cases: [(&[u8], usize); 9] = [
            (b"zz\r\n", 0),
            // A size line ended by a bare LF.
            (b"5\nhello\r\n", 1),
            (b"\r\n", 0),
            (b";ext\r\n", 0),
            (b"-5\r\n", 0),
            (b"0x5\r\n", 1),
            (b"5z\r\n", 1),
            // 2^64: 17 hex digits, the last one overflows.
            (b"10000000000000000\r\n", 16),
            (b"000000000000000000000000000000005\r\n", 32),
        ];
        for (body, at) in cases {
            let r = chunked(body);
            assert_eq!(
                r.broken,
                Some((at, Violation::BadChunkSize)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert!(!r.following);
        }
        // u64::MAX itself is a size (then the data never ends).
        assert_eq!(chunked(b"ffffffffffffffff\r\n").broken, None);
    }

    #[test]
    fn rfc9112_7_1_bad_chunk_framing_breaks_the_body() {
        let cases: [(&[u8], usize); 7] = [
            // Data longer than declared.
            (b"5\r\nhelloEXTRA\r\n0\r\n\r\n", 8),
            // CRLF missing after the data.
            (b"5\r\nhello0\r\n\r\n", 8),
            (b"5\r\nhello\n0\r\n\r\n", 8),
            // Bare CR after the size.
            (b"5\rhello\r\n", 2),
            // Whitespace after the size only before an extension.
            (b"5 \r\nhello\r\n", 2),
            // A control character in an extension.
            (b"5;a\x00\r\nhello\r\n", 3),
            // The final CRLF broken.
            (b"0\r\n\rX", 4),
        ];
        for (body, at) in cases {
            assert_eq!(
                chunked(body).broken,
                Some((at, Violation::BadChunkFraming)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn rfc9112_7_1_2_bad_trailers_break_the_body() {
        let cases: [(&[u8], usize); 5] = [
            (b"0\r\n X: 1\r\n\r\n", 3),
            (b"0\r\nX: 1\r\n\tmore\r\n\r\n", 9),
            (b"0\r\nX: 1\nY: 2\r\n\r\n", 7),
            (b"0\r\nX 1\r\n\r\n", 4),
            (b"0\r\nX: a\x00b\r\n\r\n", 7),
        ];
        for (body, at) in cases {
            assert_eq!(
                chunked(body).broken,
                Some((at, Violation::BadTrailer)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let mut long = b"0\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_TRAILER_BYTES as usize));
        assert!(matches!(
            chunked(&long).broken,
            Some((_, Violation::BadTrailer))
        ));
    }

    #[test]
    fn a_broken_body_refuses_its_request_if_the_verdict_is_still_queued() {
        // Head and broken body in one read: the proxy never forwards it.
        let r = run(&[&[CHUNKED_HEAD, b"zz\r\n"].concat()]);
        assert_eq!(r.verdicts, [Verdict::Reject(Violation::BadChunkSize)]);

        // The proxy already took the verdict: the body read fails instead.
        let verdicts = Verdicts::new();
        let mut t = Tracker::new(verdicts.clone(), LIMITS);
        t.feed(CHUNKED_HEAD).unwrap();
        assert_eq!(verdicts.next(), Verdict::Accept);
        let b = t.feed(b"5\r\nhelloX").unwrap_err();
        assert_eq!(b.at, 8);
        assert_eq!(b.violation, Violation::BadChunkFraming);
        assert_eq!(
            verdicts.next(),
            Verdict::Reject(Violation::Untracked),
            "nothing after a broken body is followed"
        );
        assert!(t.feed(NEXT).is_ok() && !t.following());
    }

    /// Every way of cutting `bytes` in two, and one byte at a time, gives
    /// the same result as one read.
    fn assert_split_invariant(bytes: &[u8]) -> Run {
        let whole = run(&[bytes]);
        for k in 0..=bytes.len() {
            assert_eq!(run(&[&bytes[..k], &bytes[k..]]), whole, "split at {k}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&singles), whole, "byte by byte");
        whole
    }

    #[test]
    fn pipelined_requests_split_at_every_byte_boundary() {
        let bytes = [
            &b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            // A CRLF between requests is tolerated (RFC 9112 §2.2).
            b"\r\n",
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n",
            b"PUT /d HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        ]
        .concat();
        let r = assert_split_invariant(&bytes);
        assert_eq!(r.verdicts, [Verdict::Accept; 5]);
        assert_eq!(r.broken, None);
        assert!(r.following);
    }

    #[test]
    fn pipelined_smuggling_attempt_split_at_every_byte_boundary() {
        let bytes = [
            &b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n",
            b"Transfer-Encoding: chunked\r\n\r\n",
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ]
        .concat();
        let r = assert_split_invariant(&bytes);
        assert_eq!(
            r.verdicts,
            [
                Verdict::Accept,
                Verdict::Reject(Violation::LengthAndChunked)
            ]
        );
        assert!(!r.following);
    }

    #[test]
    fn pipelined_broken_chunk_split_at_every_byte_boundary() {
        let first = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let bytes = [&first[..], CHUNKED_HEAD, b"4\r\nabcd\r\nzz\r\n", NEXT].concat();
        let r = assert_split_invariant(&bytes);
        assert_eq!(
            r.verdicts,
            [Verdict::Accept, Verdict::Reject(Violation::BadChunkSize)]
        );
        assert_eq!(
            r.broken,
            Some((
                first.len() + CHUNKED_HEAD.len() + 9,
                Violation::BadChunkSize
            ))
        );
    }

    #[test]
    fn rfc9113_3_4_http2_preface_turns_the_guard_off() {
        let bytes = [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        ]
        .concat();
        let r = assert_split_invariant(&bytes);
        assert!(r.verdicts.is_empty());
        assert!(!r.following);
    }

    const UPGRADE: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";

    #[test]
    fn upgrade_request_stops_the_guard_unless_resumed_before_more_bytes() {
        // Switched (or bytes came before the answer): pass-through.
        let verdicts = Verdicts::new();
        let mut t = Tracker::new(verdicts.clone(), LIMITS);
        t.feed(UPGRADE).unwrap();
        assert_eq!(verdicts.next(), Verdict::AcceptUpgrade);
        t.feed(b"\x81\x05hello").unwrap();
        assert!(!t.following());
        assert!(!verdicts.resume(), "too late to resume");

        // Answered without switching before the client sent more.
        let verdicts = Verdicts::new();
        let mut t = Tracker::new(verdicts.clone(), LIMITS);
        t.feed(UPGRADE).unwrap();
        assert_eq!(verdicts.next(), Verdict::AcceptUpgrade);
        assert!(verdicts.resume());
        t.feed(NEXT).unwrap();
        assert!(t.following());
        assert_eq!(verdicts.next(), Verdict::Accept);

        // With a body, resumed while the body is still arriving.
        let verdicts = Verdicts::new();
        let mut t = Tracker::new(verdicts.clone(), LIMITS);
        t.feed(b"POST /ws HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nContent-Length: 4\r\n\r\nab")
            .unwrap();
        assert_eq!(verdicts.next(), Verdict::AcceptUpgrade);
        assert!(verdicts.resume());
        t.feed(&[&b"cd"[..], NEXT].concat()).unwrap();
        assert_eq!(verdicts.next(), Verdict::Accept);

        // HTTP/1.0 cannot upgrade (hyper agrees).
        assert_eq!(
            first(b"GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n"),
            Verdict::Accept
        );
    }

    #[test]
    fn heads_over_the_limit_are_left_to_hyper() {
        let limits = GuardLimits {
            max_head_bytes: 64,
            max_headers: 100,
            max_target_bytes: 8 << 10,
        };
        let long = with_field(&format!("X-Long: {}", "a".repeat(64)));
        for parts in [vec![&long[..]], long.chunks(10).collect()] {
            let r = run_with(limits, &parts);
            assert!(r.verdicts.is_empty() && !r.following);
        }
        // Exactly at the limit is fine.
        let exact = format!("GET /{} HTTP/1.1\r\n\r\n", "p".repeat(64 - 18));
        assert_eq!(exact.len(), 64);
        let r = run_with(limits, &[exact.as_bytes()]);
        assert_eq!(r.verdicts, [Verdict::Accept]);
    }

    #[test]
    fn more_fields_than_hyper_allows_are_left_to_hyper() {
        let limits = GuardLimits {
            max_head_bytes: 4096,
            max_headers: 3,
            max_target_bytes: 8 << 10,
        };
        let three = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(run_with(limits, &[three]).verdicts, [Verdict::Accept]);
        let four = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        let r = run_with(limits, &[four]);
        assert!(r.verdicts.is_empty() && !r.following);
        // More slots than the stack holds.
        let limits = GuardLimits {
            max_head_bytes: 1 << 16,
            max_headers: 500,
            max_target_bytes: 8 << 10,
        };
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..300 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(run_with(limits, &[&many]).verdicts, [Verdict::Accept]);
    }

    #[test]
    fn verdict_queue_is_bounded() {
        let one = b"GET / HTTP/1.0\r\n\r\n";
        let bytes = one.repeat(MAX_QUEUED + 1);
        let r = run(&[&bytes]);
        assert_eq!(r.verdicts.len(), MAX_QUEUED);
        assert!(!r.following);
    }

    #[test]
    fn common_heads_are_read_in_one_pass_and_others_are_not() {
        let common: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a?b=c HTTP/1.1\nHost: a\nAccept: */*\n\n",
            b"HEAD /x HTTP/1.0\r\n\r\n",
            b"DELETE /x HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Spaces:  a b  \r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Lengths: 5\r\n\r\n",
        ];
        for head in common {
            assert_eq!(common_head(head, &LIMITS), Some(head.len()), "{head:?}");
            // What follows the head is not read.
            let more = [*head, b"GET /next HTTP/1.1\r\n"].concat();
            assert_eq!(common_head(&more, &LIMITS), Some(head.len()), "{head:?}");
        }
        let uncommon: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUPGRADE: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r \n",
        ];
        for head in uncommon {
            assert_eq!(common_head(head, &LIMITS), None, "{head:?}");
        }
        // Each limit sends a head over it to the full path.
        let head = b"GET /abcd HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n";
        for (limits, taken) in [
            (LIMITS, true),
            (
                GuardLimits {
                    max_target_bytes: 5,
                    ..LIMITS
                },
                true,
            ),
            (
                GuardLimits {
                    max_target_bytes: 4,
                    ..LIMITS
                },
                false,
            ),
            (
                GuardLimits {
                    max_headers: 2,
                    ..LIMITS
                },
                true,
            ),
            (
                GuardLimits {
                    max_headers: 1,
                    ..LIMITS
                },
                false,
            ),
            (
                GuardLimits {
                    max_head_bytes: head.len(),
                    ..LIMITS
                },
                true,
            ),
            (
                GuardLimits {
                    max_head_bytes: head.len() - 1,
                    ..LIMITS
                },
                false,
            ),
        ] {
            assert_eq!(common_head(head, &limits).is_some(), taken, "{limits:?}");
        }
    }

    #[test]
    fn plain_runs_stop_at_the_first_byte_outside_space_and_vchar() {
        for len in 0..24 {
            for bad in [0u8, b'\t', b'\r', b'\n', 0x1f, 0x7f, 0x80, 0xff] {
                let mut value = vec![b'a'; len];
                value.extend_from_slice(&[bad, b'b', b' ', b'~']);
                assert_eq!(plain_run(&value), len, "{value:?}");
            }
            let all: Vec<u8> = (b' '..=b'~').cycle().skip(len).take(len * 3).collect();
            assert_eq!(plain_run(&all), all.len());
        }
        // Against the byte-by-byte reading, on strings mixing plain bytes
        // with runs of unplain ones (which borrow and carry into each
        // other), at every length.
        let alphabet = [
            b'a', b' ', b'~', b'!', 0, 0x1f, 0x20, 0x7f, 0x80, 0xff, b'\t', b'\r',
        ];
        let reference = |s: &[u8]| {
            s.iter()
                .take_while(|&&b| b == b' ' || is_visible(b))
                .count()
        };
        let mut seed = 0x2545_f491_u32;
        for len in 0..40 {
            for _ in 0..2000 {
                let s: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        // Mostly plain, so that runs get long.
                        match seed % 16 {
                            0..=11 => b' ' + (seed >> 8) as u8 % 95,
                            _ => alphabet[(seed >> 8) as usize % alphabet.len()],
                        }
                    })
                    .collect();
                assert_eq!(plain_run(&s), reference(&s), "{s:?}");
            }
        }
    }

    /// Every one-byte change to a common head (each byte value at each
    /// position, and each byte removed), read whole (where the one-pass
    /// path can take it) and byte by byte (where it never can): the
    /// verdicts, breaks and states are the same.
    #[test]
    fn common_heads_and_their_edits_get_the_full_paths_verdict() {
        let head: &[u8] = b"GET /a HTTP/1.1\r\nHost: a b\nX:\r\n\r\nGET /b HTTP/1.0\r\n\r\n";
        let mut edited = Vec::new();
        for at in 0..head.len() {
            for b in 0..=255u8 {
                let mut e = head.to_vec();
                e[at] = b;
                edited.push(e);
            }
            let mut e = head.to_vec();
            e.remove(at);
            edited.push(e);
        }
        let mut taken = 0;
        for bytes in &edited {
            taken += usize::from(common_head(bytes, &LIMITS).is_some());
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(
                run(&[bytes]),
                run(&singles),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert!(
            taken > edited.len() / 4,
            "the one-pass path was taken {taken} times"
        );
    }

    #[test]
    fn upstream_response_framing() {
        use crate::headers::test_map as map;
        assert!(check_response_head(&map(&[("content-length", "5")])).is_ok());
        assert!(check_response_head(&map(&[("transfer-encoding", "chunked")])).is_ok());
        assert_eq!(
            check_response_head(&map(&[
                ("content-length", "5"),
                ("transfer-encoding", "chunked")
            ])),
            Err(Violation::LengthAndChunked)
        );
        for te in ["gzip", "gzip, chunked", "chunked, identity"] {
            assert_eq!(
                check_response_head(&map(&[("transfer-encoding", te)])),
                Err(Violation::BadTransferEncoding),
                "{te}"
            );
        }
    }

    const SHORT_TARGETS: GuardLimits = GuardLimits {
        max_head_bytes: 4096,
        max_headers: 100,
        max_target_bytes: 100,
    };

    #[test]
    fn a_target_over_max_target_bytes_is_cut_where_it_passes_the_limit() {
        let line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "p".repeat(200));
        let bytes = line.as_bytes();
        // "GET " and then 100 target bytes pass; the 101st is the cut.
        let cut = Some((4 + 100, Violation::TargetTooLong));
        for size in [1, 7, 64, bytes.len()] {
            let parts: Vec<&[u8]> = bytes.chunks(size).collect();
            let r = run_with(SHORT_TARGETS, &parts);
            assert_eq!(r.verdicts, [Verdict::Reject(Violation::TargetTooLong)]);
            assert_eq!(r.broken, cut, "reads of {size}");
            assert!(!r.following);
        }
        // Well before the head is complete, and however long the head.
        let partial = format!("\r\nPOST /{}", "p".repeat(150));
        let r = run_with(SHORT_TARGETS, &[partial.as_bytes()]);
        assert_eq!(r.broken, Some((2 + 5 + 100, Violation::TargetTooLong)));
        // A query counts; exactly the limit does not trip it.
        let query = format!("GET /?{} HTTP/1.1\r\n\r\n", "q".repeat(99));
        assert_eq!(
            run_with(SHORT_TARGETS, &[query.as_bytes()]).broken,
            Some((104, Violation::TargetTooLong))
        );
        let exact = format!("GET /{} HTTP/1.1\r\n\r\n", "p".repeat(99));
        let r = run_with(SHORT_TARGETS, &[exact.as_bytes()]);
        assert_eq!((r.verdicts, r.broken), (vec![Verdict::Accept], None));
    }

    #[test]
    fn each_pipelined_head_has_its_own_target_budget() {
        let ok = format!(
            "GET /{} HTTP/1.1\r\nX: {}\r\n\r\n",
            "p".repeat(99),
            "v".repeat(200)
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "p".repeat(100));
        let bytes = [ok.as_bytes(), ok.as_bytes(), long.as_bytes()].concat();
        let r = run_with(SHORT_TARGETS, &[&bytes]);
        assert_eq!(
            r.verdicts,
            [
                Verdict::Accept,
                Verdict::Accept,
                Verdict::Reject(Violation::TargetTooLong)
            ]
        );
        assert_eq!(
            r.broken,
            Some((2 * ok.len() + 104, Violation::TargetTooLong))
        );
    }

    #[tokio::test]
    async fn a_cut_target_reaches_hyper_as_a_complete_head_then_nothing() {
        use tokio::io::AsyncReadExt;
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "p".repeat(300));
        let verdicts = Verdicts::new();
        let mut io = FramingGuard::new(long.as_bytes(), verdicts.clone(), SHORT_TARGETS);
        let mut seen = Vec::new();
        let mut buf = [0u8; 16];
        while seen.len() < 104 + TARGET_CUT.len() {
            let n = io.read(&mut buf).await.unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        assert_eq!(seen, [&long.as_bytes()[..104], TARGET_CUT].concat());
        assert_eq!(verdicts.next(), Verdict::Reject(Violation::TargetTooLong));
        // The rest of the client's bytes are dropped, and the end of the
        // stream is never reported (hyper would take it for the client
        // leaving before its answer).
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut rest = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rest).is_pending());
        assert!(rest.filled().is_empty());
    }

    #[tokio::test]
    async fn guard_passes_bytes_before_a_break_then_fails_the_read() {
        use tokio::io::AsyncReadExt;
        let bytes = [CHUNKED_HEAD, b"5\r\nhello\r\nzz\r\n"].concat();
        let verdicts = Verdicts::new();
        let mut io = FramingGuard::new(&bytes[..], verdicts.clone(), LIMITS);
        let mut buf = vec![0u8; 4096];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &bytes[..CHUNKED_HEAD.len() + 10]);
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(verdicts.next(), Verdict::Reject(Violation::BadChunkSize));

        // Writes pass through.
        use tokio::io::AsyncWriteExt;
        let mut io = FramingGuard::new(Vec::new(), Verdicts::new(), LIMITS);
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert_eq!(io.inner, b"HTTP/1.1 200 OK\r\n\r\n");
    }
}
