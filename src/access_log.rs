//! The access log: one line per request, written off the request path.
//!
//! A request formats its line (`json` or `combined`) into a buffer owned by
//! its worker thread: no allocation, no lock contention, no hand-off per
//! line. A dedicated writer thread swaps each worker's buffer out every
//! 100 ms (sooner when one fills) and writes it to stdout or a file.
//! When the writer falls behind and a worker's buffer is full, the line is
//! dropped and counted in `sluice_access_log_dropped_total` instead of
//! slowing requests. SIGUSR1 reopens the file (after rotation moved it away).

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};

use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogTarget};

/// Bytes one thread may have waiting for the writer before its new lines
/// are dropped: about 28,000 lines, a second of a busy worker's.
const MAX_PENDING: usize = 8 << 20;
/// A thread whose buffer passes this wakes the writer early. Above what a
/// busy worker writes between two polls (about 1.5 MiB at 55,000 lines a
/// second), so that under steady load the writer is woken by its timer
/// only. (32 KiB buffers, which stay in cache, saved the worker as much as
/// [`prefetch_next_line`] does, but waking the writer 600 times a second
/// cost it 0.1 µs a request.)
const HIGH_WATER: usize = 2 << 20;
/// How often a busy writer collects the buffers. Rarely is cheaper: every
/// wake-up of the writer preempts a worker on a busy machine (measured:
/// 25 ms instead of 5 ms saved 0.4 µs of CPU per request). A thread that
/// passes HIGH_WATER wakes it sooner.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Empty polls (one second's worth) before the writer sleeps until a line
/// wakes it.
const IDLE_POLLS: u32 = 10;
/// The writer hands a batch to the kernel this much at a time and yields
/// the CPU in between. A busy worker's 100 ms batch is about 2 MB, whose
/// one write() held a core for over half a millisecond: on a proxy with
/// one core, that doubled the p99 latency (measured: 1.35 -> 3.0 ms).
/// Chunked, the requests wait for one 256 KiB write at most. Each yield
/// costs the writer a context switch and a cold restart: with 64 KiB
/// chunks the writer cost 0.4-0.55 µs per request, with 256 KiB 0.16-0.19
/// µs, at the same p99 (1.50 ms against 1.49 ms; 1.40 ms without a log).
const WRITE_CHUNK: usize = 256 << 10;

/// What the access log records about one request.
#[derive(Debug)]
pub struct Entry {
    /// When the request head arrived.
    pub ts: SystemTime,
    /// The client: behind a PROXY header or trusted forwarders, the one
    /// they named.
    pub client: IpAddr,
    /// The TCP peer; equal to `client` unless one of those named it.
    pub peer: IpAddr,
    pub method: Method,
    /// The request target as sent; its path and query are logged, and its
    /// authority (absolute form, HTTP/2's `:authority`) as the host.
    pub uri: Uri,
    /// The Host header, kept only when `uri` has no authority.
    pub host_header: Option<HeaderValue>,
    pub version: Version,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// From request head to the end of the response body.
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    /// From sending to the member to its response head.
    pub upstream_time: Option<Duration>,
    pub cache: Option<&'static str>,
    /// The path and query sent upstream, when a route's `rewrite` or
    /// `strip_prefix` changed them (`path` is the one received).
    pub upstream_path: Option<Box<str>>,
    /// What went wrong on the way or after the status was sent: `upstream_body`, `client_abort`, `upstream_timeout`.
    pub error: Option<&'static str>,
    pub request_id: HeaderValue,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
}

impl Entry {
    /// The host the client asked for: the target's authority, else the
    /// Host header, else empty.
    fn host(&self) -> &[u8] {
        match self.uri.authority() {
            Some(a) => a.as_str().as_bytes(),
            None => self.host_header.as_ref().map_or(b"", |h| h.as_bytes()),
        }
    }

    /// Path and query, `/` when the target has neither (`OPTIONS *` aside).
    fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |pq| pq.as_str())
    }
}

enum Msg {
    /// Lines are waiting: the writer was asleep, or a buffer is filling.
    Wake,
    Reopen,
    Use(Option<Sink>),
    Flush(SyncSender<()>),
}

/// One thread's formatted lines, waiting for the writer.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: u64,
    format: Formatter,
}

type Buffer = Arc<Mutex<Pending>>;

fn lock(p: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // A panic while holding the lock leaves whole lines or none: usable.
    p.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Writer {
    tx: SyncSender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

static WRITER: OnceLock<Writer> = OnceLock::new();

/// What the request threads and the writer share.
struct Registry {
    /// Every thread's buffer; a thread registers on its first line.
    buffers: Mutex<Vec<Buffer>>,
    /// Set by the writer before it sleeps without a timeout.
    asleep: AtomicBool,
}

static REGISTRY: Registry = Registry {
    buffers: Mutex::new(Vec::new()),
    asleep: AtomicBool::new(false),
};

impl Registry {
    fn buffers(&self) -> MutexGuard<'_, Vec<Buffer>> {
        self.buffers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

thread_local! {
    /// This thread's buffer; dropping it (thread exit) lets the writer
    /// forget the buffer once it is empty.
    static LOCAL: OnceLock<Buffer> = const { OnceLock::new() };
}

thread_local! {
    /// A recent reading of both clocks, for [`wall_clock`].
    static ANCHOR: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
}

/// How long [`wall_clock`] derives wall time from one reading of the
/// system clock. A step of the system clock shows in the log within this.
const ANCHOR_FOR: Duration = Duration::from_secs(1);

/// The wall-clock time of `at`, an instant the caller took anyway. Read
/// from a per-thread pair of clock readings renewed every second instead
/// of a second clock read per request (nginx caches its time the same way).
pub(crate) fn wall_clock(at: Instant) -> SystemTime {
    ANCHOR
        .try_with(|anchor| {
            if let Some((mono, wall)) = anchor.get() {
                if let Some(since) = at.checked_duration_since(mono) {
                    if since < ANCHOR_FOR {
                        return wall + since;
                    }
                }
            }
            let (mono, wall) = (Instant::now(), SystemTime::now());
            anchor.set(Some((mono, wall)));
            match at.checked_duration_since(mono) {
                Some(ahead) => wall.checked_add(ahead).unwrap_or(wall),
                None => wall.checked_sub(mono - at).unwrap_or(wall),
            }
        })
        .unwrap_or_else(|_| SystemTime::now())
}

/// Asks the CPU to bring the buffer's next few cache lines in now, while
/// the request's response goes out, so that the next line is written into
/// cache. The buffer is megabytes, and the ~2 MB of response bodies a
/// busy core copies between two visits to the same spot evict it:
/// formatting into evicted lines cost 90 ns more per line (measured in a
/// worker: 380 against 290 ns for recording a request).
#[inline]
fn prefetch_next_line(buf: &Vec<u8>) {
    /// Room for one JSON line of typical size.
    const AHEAD: usize = 256;
    #[cfg(target_arch = "x86_64")]
    if buf.capacity() - buf.len() >= AHEAD {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let next = buf.as_ptr().wrapping_add(buf.len());
        for offset in (0..AHEAD).step_by(64) {
            // SAFETY: a prefetch is a hint; it neither reads into the
            // program nor faults, whatever the address. The address is
            // inside the buffer's allocation anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(offset).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = buf;
}

fn writer() -> &'static Writer {
    WRITER.get_or_init(|| {
        let (tx, rx) = sync_channel(64);
        let thread = std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_loop(rx))
            .expect("spawn the access log writer");
        Writer {
            tx,
            thread: Mutex::new(Some(thread)),
        }
    })
}

/// Points the access log at `config` (`None` turns it off). The file is
/// opened here, so an unusable path is reported to the caller.
pub fn configure(config: Option<&AccessLogConfig>) -> io::Result<()> {
    let next = match config {
        Some(c) => Some(Sink::open(&c.target)?),
        None if WRITER.get().is_none() => return Ok(()),
        None => None,
    };
    let _ = writer().tx.send(Msg::Use(next));
    Ok(())
}

/// Formats `entry` as `format` (the request's config says which) into this
/// thread's buffer for the writer, or drops and counts it when the writer
/// is behind. Never blocks on I/O.
pub fn send(entry: &Entry, format: AccessLogFormat) {
    let Some(w) = WRITER.get() else {
        return;
    };
    let _ = LOCAL.try_with(|local| {
        let mine = local.get_or_init(|| {
            let mine = Buffer::default();
            REGISTRY.buffers().push(mine.clone());
            mine
        });
        let mut guard = lock(mine);
        let p = &mut *guard;
        if p.bytes.len() >= MAX_PENDING {
            drop(guard);
            crate::metrics::get().access_log_dropped.inc();
            return;
        }
        let before = p.bytes.len();
        p.format.line(&mut p.bytes, entry, format);
        p.lines += 1;
        prefetch_next_line(&p.bytes);
        let crossed = before < HIGH_WATER && p.bytes.len() >= HIGH_WATER;
        drop(guard);
        if crossed {
            let _ = w.tx.try_send(Msg::Wake);
            return;
        }
        // The writer checks the buffers after setting `asleep` and before
        // sleeping, and this load follows the unlock: one of the two sees
        // the other, so no line waits for the next request.
        let asleep = &REGISTRY.asleep;
        if before == 0 && asleep.load(Ordering::SeqCst) && asleep.swap(false, Ordering::SeqCst) {
            let _ = w.tx.try_send(Msg::Wake);
        }
    });
}

/// Reopens the log file (SIGUSR1), after the lines already formatted.
pub(crate) fn reopen() {
    if let Some(w) = WRITER.get() {
        let _ = w.tx.send(Msg::Reopen);
    }
}

/// Waits until every line formatted so far has been written.
pub fn flush() {
    if let Some(w) = WRITER.get() {
        let (tx, rx) = sync_channel(1);
        if w.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// Flushes at exit. The writer thread keeps running until the process ends.
pub(crate) fn shutdown() {
    flush();
    if let Some(w) = WRITER.get() {
        // Not joined: the thread holds the receiver for as long as the
        // process lives; dropping the handle detaches it.
        let _ = w.thread.lock().map(|mut t| t.take());
    }
}

/// Whether the access log could be opened at `path` as [`configure`] opens
/// it, without creating it: an existing file must open for appending, a
/// new one needs its directory. What `--check` asks.
pub(crate) fn check_path(path: &std::path::Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(io::Error::other(format!(
            "{} is a directory",
            path.display()
        ))),
        Ok(_) => OpenOptions::new().append(true).open(path).map(drop),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                ))),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("directory {}: {e}", dir.display()),
                )),
            }
        }
        Err(e) => Err(e),
    }
}

/// Where lines go. Lines arrive in batches, so there is no buffering here.
enum Sink {
    Stdout(io::Stdout),
    File(File, std::path::PathBuf),
}

impl Sink {
    fn open(target: &AccessLogTarget) -> io::Result<Sink> {
        match target {
            AccessLogTarget::Stdout => Ok(Sink::Stdout(io::stdout())),
            AccessLogTarget::File(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(|f| Sink::File(f, path.clone()))
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot open access log {}: {e}", path.display()),
                    )
                }),
        }
    }

    /// Writes `bytes` in [`WRITE_CHUNK`]s, yielding the CPU between them.
    /// None after the last chunk: the writer moves on or sleeps next, and a
    /// yield to a worker on the same core costs two context switches.
    fn write_paced(&mut self, bytes: &[u8]) -> io::Result<()> {
        for (i, chunk) in bytes.chunks(WRITE_CHUNK).enumerate() {
            if i > 0 {
                std::thread::yield_now();
            }
            self.write_all(chunk)?;
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => {
                let mut out = s.lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File(f, _) => f.write_all(bytes),
        }
    }
}

/// The writer thread's state between rounds.
struct Drain {
    sink: Option<Sink>,
    /// The buffer swapped in for a thread's full one.
    spare: Vec<u8>,
    failing: bool,
}

impl Drain {
    /// Writes every thread's waiting lines; whether there were any.
    fn round(&mut self) -> bool {
        let buffers = REGISTRY.buffers().clone();
        let mut wrote = false;
        for b in &buffers {
            let lines = {
                let mut p = lock(b);
                if p.bytes.is_empty() {
                    continue;
                }
                std::mem::swap(&mut p.bytes, &mut self.spare);
                std::mem::take(&mut p.lines)
            };
            wrote = true;
            if let Some(sink) = &mut self.sink {
                if let Err(e) = sink.write_paced(&self.spare) {
                    crate::metrics::get().access_log_dropped.inc_by(lines);
                    if !self.failing {
                        tracing::error!(error = %e, "cannot write the access log");
                        self.failing = true;
                    }
                } else {
                    self.failing = false;
                }
            }
            self.spare.clear();
        }
        // Threads that exited hold no reference to their buffer any more.
        // A buffer only the registry and `buffers` hold belongs to a
        // thread that exited.
        drop(buffers);
        REGISTRY
            .buffers()
            .retain(|b| Arc::strong_count(b) > 1 || !lock(b).bytes.is_empty());
        wrote
    }

    fn any_waiting() -> bool {
        REGISTRY.buffers().iter().any(|b| !lock(b).bytes.is_empty())
    }
}

fn write_loop(rx: Receiver<Msg>) {
    let asleep = &REGISTRY.asleep;
    let mut drain = Drain {
        sink: None,
        spare: Vec::with_capacity(256 << 10),
        failing: false,
    };
    let mut idle_polls = 0u32;
    loop {
        // Under load, collect every few milliseconds instead of being woken
        // per line: a wake-up is a futex call and a context switch, which
        // costs more than the line. After a quiet second, sleep until a
        // thread with a first new line sends Wake.
        let msg = if idle_polls < IDLE_POLLS {
            match rx.recv_timeout(POLL_INTERVAL) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            asleep.store(true, Ordering::SeqCst);
            if Drain::any_waiting() {
                asleep.store(false, Ordering::SeqCst);
                None
            } else {
                match rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => break,
                }
            }
        };
        // Lines formatted before the message are written before it acts.
        let wrote = drain.round();
        idle_polls = if wrote || msg.is_some() {
            0
        } else {
            idle_polls.saturating_add(1)
        };
        match msg {
            None | Some(Msg::Wake) => {}
            Some(Msg::Reopen) => {
                if let Some(Sink::File(_, path)) = &drain.sink {
                    match Sink::open(&AccessLogTarget::File(path.clone())) {
                        Ok(fresh) => {
                            drain.sink = Some(fresh);
                            tracing::info!("access log reopened");
                        }
                        Err(e) => tracing::error!(error = %e, "access log not reopened"),
                    }
                }
            }
            Some(Msg::Use(fresh)) => drain.sink = fresh,
            Some(Msg::Flush(done)) => {
                let _ = done.send(());
            }
        }
    }
}

/// Appends `entry` as one line (with its newline) in `format`.
#[cfg(test)]
pub(crate) fn format_line(out: &mut Vec<u8>, e: &Entry, format: AccessLogFormat) {
    Formatter::default().line(out, e, format);
}

/// Formats lines. It keeps the date and time of the last second it wrote,
/// as text: a busy server writes thousands of lines per second, and each
/// then only adds its milliseconds.
#[derive(Debug, Default)]
pub struct Formatter {
    /// The second (since the Unix epoch) that `iso` and `clf` show.
    second: Option<u64>,
    /// `2026-11-27T03:54:53`
    iso: Vec<u8>,
    /// `27/Nov/2026:03:54:53 +0000`
    clf: Vec<u8>,
}

impl Formatter {
    /// Appends `e` as one line (with its newline) in `format`.
    pub fn line(&mut self, out: &mut Vec<u8>, e: &Entry, format: AccessLogFormat) {
        let since = e.ts.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.at(since.as_secs());
        match format {
            AccessLogFormat::Json => {
                out.extend_from_slice(b"{\"ts\":\"");
                out.extend_from_slice(&self.iso);
                let ms = since.subsec_millis();
                out.extend_from_slice(&[
                    b'.',
                    b'0' + (ms / 100 % 10) as u8,
                    b'0' + (ms / 10 % 10) as u8,
                    b'0' + (ms % 10) as u8,
                    b'Z',
                ]);
                json_line(out, e);
            }
            AccessLogFormat::Combined => combined_line(out, e, &self.clf),
        }
        out.push(b'\n');
    }

    /// Brings the date texts to `second`.
    fn at(&mut self, second: u64) {
        const MONTHS: [&[u8]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        if self.second == Some(second) {
            return;
        }
        self.second = Some(second);
        let (y, m, d) = civil_date(second / 86_400);
        let rem = second % 86_400;
        let iso = &mut self.iso;
        iso.clear();
        num(iso, y);
        iso.push(b'-');
        two(iso, u64::from(m));
        iso.push(b'-');
        two(iso, u64::from(d));
        iso.push(b'T');
        two(iso, rem / 3600);
        iso.push(b':');
        two(iso, rem / 60 % 60);
        iso.push(b':');
        two(iso, rem % 60);
        // HH:MM:SS, the end of `iso`, serves `clf` too.
        let hms = &iso[iso.len() - 8..];

        let clf = &mut self.clf;
        clf.clear();
        two(clf, u64::from(d));
        clf.push(b'/');
        clf.extend_from_slice(MONTHS[usize::from(m - 1)]);
        clf.push(b'/');
        num(clf, y);
        clf.push(b':');
        clf.extend_from_slice(hms);
        clf.extend_from_slice(b" +0000");
    }
}

fn proto(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Decimal digits of `n`. Numbers below 1000 (status codes, address
/// octets, most milliseconds) are written as fixed-size arrays, which
/// compile to a few stores instead of a variable-length copy.
fn num(out: &mut Vec<u8>, n: u64) {
    let d = |x: u64| b'0' + (x % 10) as u8;
    match n {
        0..=9 => out.push(d(n)),
        10..=99 => out.extend_from_slice(&[d(n / 10), d(n)]),
        100..=999 => out.extend_from_slice(&[d(n / 100), d(n / 10), d(n)]),
        _ => {
            let mut digits = [0u8; 20];
            let mut i = digits.len();
            let mut n = n;
            while n > 0 {
                i -= 1;
                digits[i] = d(n);
                n /= 10;
            }
            out.extend_from_slice(&digits[i..]);
        }
    }
}

/// `n` as two digits.
fn two(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&[b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]);
}

/// Milliseconds with up to three decimals, trailing zeros dropped: `1.5`,
/// `0.641`, `2`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    num(out, micros / 1000);
    let mut frac = micros % 1000;
    if frac != 0 {
        let mut width = 3;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        out.push(b'.');
        let text = [
            b'0' + (frac / 100 % 10) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        out.extend_from_slice(&text[3 - width..]);
    }
}

/// An IP address as text. IPv4 by hand: `Display` goes through the
/// formatting machinery, which costs more than the rest of the line.
fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            num(out, u64::from(a));
            for octet in [b, c, d] {
                out.push(b'.');
                num(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `10.0.0.1:80`, `[::1]:80`.
fn socket_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            ip(out, IpAddr::V4(*v4.ip()));
            out.push(b':');
            num(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// Printable ASCII other than `"` and `\`: the bytes both formats copy as
/// they are inside a quoted field.
fn plain(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'
}

/// Whether every byte of `s` is [`plain`]: the common case, checked
/// without an early exit so that the compiler can test many bytes at once.
fn all_plain(s: &[u8]) -> bool {
    s.iter().fold(true, |ok, &b| ok & plain(b))
}

/// `s` as a JSON string. Bytes that are not UTF-8 text (header values may
/// carry obs-text) are escaped one by one as `\u00XX`.
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    if all_plain(s) {
        out.extend_from_slice(s);
    } else {
        let text = std::str::from_utf8(s).ok();
        for &b in s {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                // Valid UTF-8 passes as it is.
                0x80..=0xff if text.is_some() => out.push(b),
                _ if plain(b) => out.push(b),
                _ => {
                    let _ = write!(out, "\\u{:04x}", b);
                }
            }
        }
    }
    out.push(b'"');
}

/// Every field after `ts` (which the caller wrote), and the closing brace.
fn json_line(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(b"\",\"client\":\"");
    ip(out, e.client);
    out.extend_from_slice(b"\",\"peer\":\"");
    ip(out, e.peer);
    out.extend_from_slice(b"\",\"method\":");
    json_str(out, e.method.as_str().as_bytes());
    out.extend_from_slice(b",\"host\":");
    json_str(out, e.host());
    out.extend_from_slice(b",\"path\":");
    json_str(out, e.path().as_bytes());
    out.extend_from_slice(b",\"proto\":\"");
    out.extend_from_slice(proto(e.version).as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    num(out, u64::from(e.status));
    out.extend_from_slice(b",\"bytes\":");
    num(out, e.bytes);
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, e.duration);
    match e.upstream {
        Some(a) => {
            out.extend_from_slice(b",\"upstream\":\"");
            socket_addr(out, a);
            out.push(b'"');
        }
        None => out.extend_from_slice(b",\"upstream\":null"),
    }
    match e.upstream_time {
        Some(t) => {
            out.extend_from_slice(b",\"upstream_ms\":");
            millis(out, t);
        }
        None => out.extend_from_slice(b",\"upstream_ms\":null"),
    }
    match e.cache {
        Some(c) => {
            out.extend_from_slice(b",\"cache\":");
            json_str(out, c.as_bytes());
        }
        None => out.extend_from_slice(b",\"cache\":null"),
    }
    if let Some(p) = &e.upstream_path {
        out.extend_from_slice(b",\"upstream_path\":");
        json_str(out, p.as_bytes());
    }
    if let Some(error) = e.error {
        out.extend_from_slice(b",\"error\":");
        json_str(out, error.as_bytes());
    }
    out.extend_from_slice(b",\"request_id\":");
    json_str(out, e.request_id.as_bytes());
    out.push(b'}');
}

/// Appends `s` for inside a double-quoted field: `"` and `\` escaped, bytes
/// outside printable ASCII as `\xHH` (as nginx does).
fn escaped(out: &mut Vec<u8>, s: &[u8]) {
    if all_plain(s) {
        out.extend_from_slice(s);
        return;
    }
    for &b in s {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            0x20..=0x7e => out.push(b),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
}

/// `s` as a double-quoted field.
fn quoted(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    escaped(out, s);
    out.push(b'"');
}

/// The NCSA combined format, then sluice's own fields as `key=value`:
/// `1.2.3.4 - - [10/Oct/2026:13:55:36 +0000] "GET /a HTTP/1.1" 200 512 "-" "curl/8"
/// host="example.com" peer=1.2.3.4 duration_ms=1.234 upstream=10.0.0.1:80
/// upstream_ms=1.1 cache=- request_id=...` (one line). `clf` is the time as text.
fn combined_line(out: &mut Vec<u8>, e: &Entry, clf: &[u8]) {
    ip(out, e.client);
    out.extend_from_slice(b" - - [");
    out.extend_from_slice(clf);
    out.extend_from_slice(b"] \"");
    escaped(out, e.method.as_str().as_bytes());
    out.push(b' ');
    escaped(out, e.path().as_bytes());
    out.push(b' ');
    out.extend_from_slice(proto(e.version).as_bytes());
    out.extend_from_slice(b"\" ");
    num(out, u64::from(e.status));
    out.push(b' ');
    num(out, e.bytes);
    out.push(b' ');
    quoted(out, e.referer.as_ref().map_or(b"-", |v| v.as_bytes()));
    out.push(b' ');
    quoted(out, e.user_agent.as_ref().map_or(b"-", |v| v.as_bytes()));
    out.extend_from_slice(b" host=");
    quoted(out, e.host());
    out.extend_from_slice(b" peer=");
    ip(out, e.peer);
    out.extend_from_slice(b" duration_ms=");
    millis(out, e.duration);
    match e.upstream {
        Some(a) => {
            out.extend_from_slice(b" upstream=");
            socket_addr(out, a);
        }
        None => out.extend_from_slice(b" upstream=-"),
    }
    match e.upstream_time {
        Some(t) => {
            out.extend_from_slice(b" upstream_ms=");
            millis(out, t);
        }
        None => out.extend_from_slice(b" upstream_ms=-"),
    }
    out.extend_from_slice(b" cache=");
    out.extend_from_slice(e.cache.unwrap_or("-").as_bytes());
    out.extend_from_slice(b" request_id=");
    // Kept ids are restricted to a safe alphabet; generated ones are UUIDs.
    out.extend_from_slice(e.request_id.as_bytes());
    if let Some(p) = &e.upstream_path {
        out.extend_from_slice(b" upstream_path=");
        quoted(out, p.as_bytes());
    }
    if let Some(error) = e.error {
        out.extend_from_slice(b" error=");
        out.extend_from_slice(error.as_bytes());
    }
}

/// Year, month (1-12) and day (1-31) of day `days` after 1970-01-01, in the
/// proleptic Gregorian calendar. Counts 400-year eras from 0000-03-01 so
/// that the leap day falls at the end of each counted year.
fn civil_date(days: u64) -> (u64, u8, u8) {
    const DAYS_PER_ERA: u64 = 146_097;
    // 1970-01-01 is day 719_468 counted from 0000-03-01.
    let z = days + 719_468;
    let era = z / DAYS_PER_ERA;
    let day_of_era = z % DAYS_PER_ERA;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each digit-count branch of `num`, at its edges, against `Display`.
    #[test]
    fn num_matches_display() {
        for n in [0, 9, 10, 99, 100, 999, 1000, 20_480, 999_999, u64::MAX] {
            let mut out = Vec::new();
            num(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes(), "{n}");
        }
    }

    /// The quick all-plain check agrees with the byte-by-byte one.
    #[test]
    fn all_plain_matches_plain() {
        let long = [b'a'; 100];
        for s in [
            &b""[..],
            b"/a/b?c=d",
            b"exa\"mple",
            b"tab\there",
            b"\\",
            b"caf\xc3\xa9",
            &long,
        ] {
            assert_eq!(all_plain(s), s.iter().all(|&b| plain(b)), "{s:?}");
        }
    }

    fn entry() -> Entry {
        Entry {
            ts: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: "192.0.2.7".parse().unwrap(),
            peer: "10.0.0.5".parse().unwrap(),
            method: Method::GET,
            uri: Uri::from_static("/a?b=c%20d"),
            // A URI cannot hold a quote; a Host header can.
            host_header: Some(HeaderValue::from_static("exa\"mple.com")),
            version: Version::HTTP_11,
            status: 200,
            bytes: 42,
            duration: Duration::from_micros(1500),
            upstream: Some("127.0.0.1:9001".parse().unwrap()),
            upstream_time: Some(Duration::from_micros(1200)),
            cache: None,
            upstream_path: None,
            error: None,
            request_id: HeaderValue::from_static("abc"),
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8")),
        }
    }

    #[test]
    fn json_fields() {
        let mut s = Vec::new();
        format_line(&mut s, &entry(), AccessLogFormat::Json);
        let s = String::from_utf8(s).unwrap();
        assert!(s.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["ts"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["peer"], "10.0.0.5");
        assert_eq!(v["host"], "exa\"mple.com");
        assert_eq!(v["path"], "/a?b=c%20d");
        assert_eq!(v["proto"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream"], "127.0.0.1:9001");
        assert_eq!(v["upstream_ms"], 1.2);
        assert!(v["cache"].is_null());
        assert_eq!(v["request_id"], "abc");
    }

    #[test]
    fn combined_line_shape() {
        let mut s = Vec::new();
        format_line(&mut s, &entry(), AccessLogFormat::Combined);
        let s = String::from_utf8(s).unwrap();
        assert_eq!(
            s,
            "192.0.2.7 - - [14/Nov/2023:22:13:20 +0000] \"GET /a?b=c%20d HTTP/1.1\" 200 42 \"-\" \"curl/8\" \
             host=\"exa\\\"mple.com\" peer=10.0.0.5 duration_ms=1.5 upstream=127.0.0.1:9001 upstream_ms=1.2 cache=- \
             request_id=abc\n"
        );
    }

    /// One formatter keeps its date text per second: a line in the next
    /// second (or day) gets the new one. IPv6 addresses and a target with
    /// an authority (HTTP/2, absolute form) come out as text too.
    #[test]
    fn formatter_across_seconds_and_addresses() {
        let mut f = Formatter::default();
        let mut e = entry();
        let mut out = Vec::new();
        f.line(&mut out, &e, AccessLogFormat::Json);
        e.ts += Duration::from_millis(1_877); // 22:13:22.000
        e.client = "2001:db8::1".parse().unwrap();
        e.upstream = Some("[::1]:8080".parse().unwrap());
        e.uri = Uri::from_static("https://example.org:8443/x");
        f.line(&mut out, &e, AccessLogFormat::Json);
        e.ts += Duration::from_secs(86_400 + 3_600);
        f.line(&mut out, &e, AccessLogFormat::Combined);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(first["ts"], "2023-11-14T22:13:20.123Z");
        assert_eq!(second["ts"], "2023-11-14T22:13:22.000Z");
        assert_eq!(second["client"], "2001:db8::1");
        assert_eq!(second["upstream"], "[::1]:8080");
        assert_eq!(second["host"], "example.org:8443");
        assert_eq!(second["path"], "/x");
        assert!(
            lines[2]
                .starts_with("2001:db8::1 - - [15/Nov/2023:23:13:22 +0000] \"GET /x HTTP/1.1\""),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains(" upstream=[::1]:8080 "), "{}", lines[2]);
    }

    /// The anchored clock agrees with the system clock for instants before
    /// its reading, within it, and after it.
    #[test]
    fn wall_clock_follows_the_system_clock() {
        let close = |a: SystemTime, b: SystemTime| {
            let gap = a.duration_since(b).or_else(|e| Ok::<_, ()>(e.duration()));
            assert!(gap.unwrap() < Duration::from_millis(50), "{a:?} vs {b:?}");
        };
        let now = Instant::now();
        close(wall_clock(now), SystemTime::now());
        // Within the anchor's second: derived, not read.
        close(wall_clock(Instant::now()), SystemTime::now());
        if let Some(past) = now.checked_sub(Duration::from_secs(5)) {
            close(wall_clock(past), SystemTime::now() - Duration::from_secs(5));
        }
        let ahead = Instant::now() + Duration::from_secs(3);
        close(
            wall_clock(ahead),
            SystemTime::now() + Duration::from_secs(3),
        );
        close(wall_clock(Instant::now()), SystemTime::now());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(11_017), (2000, 3, 1));
        assert_eq!(civil_date(19_723), (2024, 1, 1));
    }
}
