//! The access log: one line per request, written off the request path.
//!
//! A request hands its [`Entry`] to a bounded channel (never blocking); a
//! dedicated writer thread formats lines (`json` or `combined`) and writes
//! them to stdout or a file, flushing whenever the channel runs empty. When
//! the writer falls behind and the channel is full, the line is dropped and
//! counted in `sluice_access_log_dropped_total` instead of slowing requests.
//! SIGUSR1 reopens the file (after rotation moved it away).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Version};

use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogTarget};

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 8192;
/// How often a busy writer looks at the queue; at 100,000 requests per
/// second, 5 ms of lines is well within `QUEUE`.
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);
/// Empty polls (one second's worth) before the writer blocks instead.
const IDLE_POLLS: u32 = 200;

/// What the access log records about one request.
#[derive(Debug)]
pub struct Entry {
    /// When the request head arrived.
    pub ts: SystemTime,
    pub client: SocketAddr,
    pub method: Method,
    pub host: String,
    /// The request target as sent: path and query.
    pub path: String,
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
    pub request_id: HeaderValue,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
}

enum Msg {
    Line(Box<Entry>),
    Reopen,
    Use(Option<(Sink, AccessLogConfig)>),
    Flush(SyncSender<()>),
}

struct Writer {
    tx: SyncSender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

static WRITER: OnceLock<Writer> = OnceLock::new();

fn writer() -> &'static Writer {
    WRITER.get_or_init(|| {
        let (tx, rx) = sync_channel(QUEUE);
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
        Some(c) => Some((Sink::open(&c.target)?, c.clone())),
        None if WRITER.get().is_none() => return Ok(()),
        None => None,
    };
    let _ = writer().tx.send(Msg::Use(next));
    Ok(())
}

/// Queues `entry` for writing, or drops and counts it when the writer is
/// behind. Never blocks.
pub fn send(entry: Box<Entry>) {
    let Some(w) = WRITER.get() else {
        return;
    };
    match w.tx.try_send(Msg::Line(entry)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            crate::metrics::get().access_log_dropped.inc();
        }
    }
}

/// Reopens the log file (SIGUSR1), after the lines already queued.
pub fn reopen() {
    if let Some(w) = WRITER.get() {
        let _ = w.tx.send(Msg::Reopen);
    }
}

/// Waits until every line queued so far has been written and flushed.
pub fn flush() {
    if let Some(w) = WRITER.get() {
        let (tx, rx) = sync_channel(1);
        if w.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// Flushes at exit. The writer thread keeps running until the process ends.
pub fn shutdown() {
    flush();
    if let Some(w) = WRITER.get() {
        // Not joined: the thread holds the receiver for as long as the
        // process lives; dropping the handle detaches it.
        let _ = w.thread.lock().map(|mut t| t.take());
    }
}

enum Sink {
    Stdout(io::Stdout),
    File(BufWriter<File>),
}

impl Sink {
    fn open(target: &AccessLogTarget) -> io::Result<Sink> {
        match target {
            AccessLogTarget::Stdout => Ok(Sink::Stdout(io::stdout())),
            AccessLogTarget::File(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("cannot open access log {}: {e}", path.display()),
                        )
                    })?;
                Ok(Sink::File(BufWriter::with_capacity(64 << 10, file)))
            }
        }
    }

    fn write_all(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.lock().write_all(line),
            Sink::File(f) => f.write_all(line),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.lock().flush(),
            Sink::File(f) => f.flush(),
        }
    }
}

fn write_loop(rx: Receiver<Msg>) {
    let mut sink: Option<(Sink, AccessLogConfig)> = None;
    let mut line = String::with_capacity(512);
    let mut failing = false;
    let mut idle_polls = 0u32;
    loop {
        // Under load, poll the queue every few milliseconds instead of
        // sleeping in recv(): a writer blocked in recv() has to be woken by
        // the request thread (a futex call and a context switch per line),
        // which costs more than writing the line. After a quiet second it
        // blocks again, so an idle daemon does not spin.
        let first = match rx.try_recv() {
            Ok(msg) => msg,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) if idle_polls < IDLE_POLLS => {
                idle_polls += 1;
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
            Err(TryRecvError::Empty) => match rx.recv() {
                Ok(msg) => msg,
                Err(_) => break,
            },
        };
        idle_polls = 0;
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(entry) => {
                    if let Some((out, config)) = &mut sink {
                        line.clear();
                        format_line(&mut line, &entry, config.format);
                        if let Err(e) = out.write_all(line.as_bytes()) {
                            crate::metrics::get().access_log_dropped.inc();
                            if !failing {
                                tracing::error!(error = %e, "cannot write the access log");
                                failing = true;
                            }
                        } else {
                            failing = false;
                        }
                    }
                }
                Msg::Reopen => {
                    if let Some((out, config)) = &mut sink {
                        let _ = out.flush();
                        match Sink::open(&config.target) {
                            Ok(fresh) => {
                                *out = fresh;
                                tracing::info!("access log reopened");
                            }
                            Err(e) => tracing::error!(error = %e, "access log not reopened"),
                        }
                    }
                }
                Msg::Use(fresh) => {
                    if let Some((out, _)) = &mut sink {
                        let _ = out.flush();
                    }
                    sink = fresh;
                }
                Msg::Flush(done) => {
                    if let Some((out, _)) = &mut sink {
                        let _ = out.flush();
                    }
                    let _ = done.send(());
                }
            }
            batch += 1;
            // Flush when the queue runs dry, and at least every 256 lines.
            if batch < 256 {
                next = rx.try_recv().ok();
            }
        }
        if let Some((out, _)) = &mut sink {
            let _ = out.flush();
        }
    }
}

/// Appends `entry` as one line (with its newline) in `format`.
pub fn format_line(out: &mut String, e: &Entry, format: AccessLogFormat) {
    match format {
        AccessLogFormat::Json => json_line(out, e),
        AccessLogFormat::Combined => combined_line(out, e),
    }
    out.push('\n');
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

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn json_str(out: &mut String, s: &str) {
    // serde_json escapes exactly as JSON requires.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn header_text(v: &HeaderValue) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(v.as_bytes())
}

fn json_line(out: &mut String, e: &Entry) {
    out.push_str("{\"ts\":\"");
    let _ = write!(out, "{}", humantime::format_rfc3339_millis(e.ts));
    let _ = write!(out, "\",\"client\":\"{}\",\"method\":", e.client.ip());
    json_str(out, e.method.as_str());
    out.push_str(",\"host\":");
    json_str(out, &e.host);
    out.push_str(",\"path\":");
    json_str(out, &e.path);
    let _ = write!(
        out,
        ",\"proto\":\"{}\",\"status\":{},\"bytes\":{},\"duration_ms\":{}",
        proto(e.version),
        e.status,
        e.bytes,
        millis(e.duration)
    );
    match e.upstream {
        Some(a) => {
            let _ = write!(out, ",\"upstream\":\"{a}\"");
        }
        None => out.push_str(",\"upstream\":null"),
    }
    match e.upstream_time {
        Some(t) => {
            let _ = write!(out, ",\"upstream_ms\":{}", millis(t));
        }
        None => out.push_str(",\"upstream_ms\":null"),
    }
    match e.cache {
        Some(c) => {
            let _ = write!(out, ",\"cache\":\"{c}\"");
        }
        None => out.push_str(",\"cache\":null"),
    }
    out.push_str(",\"request_id\":");
    json_str(out, &header_text(&e.request_id));
    out.push('}');
}

/// Appends `s` for a double-quoted field: `"` and `\` escaped, bytes
/// outside printable ASCII as `\xHH` (as nginx does).
fn quoted(out: &mut String, s: &[u8]) {
    out.push('"');
    for &b in s {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
    out.push('"');
}

/// The NCSA combined format, then sluice's own fields as `key=value`:
/// `1.2.3.4 - - [10/Oct/2026:13:55:36 +0000] "GET /a HTTP/1.1" 200 512 "-" "curl/8"
/// host="example.com" duration_ms=1.234 upstream=10.0.0.1:80 upstream_ms=1.1
/// cache=- request_id=...` (one line).
fn combined_line(out: &mut String, e: &Entry) {
    let _ = write!(out, "{} - - [", e.client.ip());
    clf_time(out, e.ts);
    out.push_str("] ");
    let mut request = Vec::with_capacity(e.path.len() + 24);
    request.extend_from_slice(e.method.as_str().as_bytes());
    request.push(b' ');
    request.extend_from_slice(e.path.as_bytes());
    request.push(b' ');
    request.extend_from_slice(proto(e.version).as_bytes());
    quoted(out, &request);
    let _ = write!(out, " {} {} ", e.status, e.bytes);
    quoted(out, e.referer.as_ref().map_or(b"-", |v| v.as_bytes()));
    out.push(' ');
    quoted(out, e.user_agent.as_ref().map_or(b"-", |v| v.as_bytes()));
    out.push_str(" host=");
    quoted(out, e.host.as_bytes());
    let _ = write!(out, " duration_ms={}", millis(e.duration));
    match e.upstream {
        Some(a) => {
            let _ = write!(out, " upstream={a}");
        }
        None => out.push_str(" upstream=-"),
    }
    match e.upstream_time {
        Some(t) => {
            let _ = write!(out, " upstream_ms={}", millis(t));
        }
        None => out.push_str(" upstream_ms=-"),
    }
    let _ = write!(out, " cache={}", e.cache.unwrap_or("-"));
    out.push_str(" request_id=");
    // Kept ids are restricted to a safe alphabet; generated ones are UUIDs.
    out.push_str(&header_text(&e.request_id));
}

/// `10/Oct/2026:13:55:36 +0000` (UTC).
fn clf_time(out: &mut String, ts: SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = ts.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_date(secs / 86_400);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[usize::from(m - 1)],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
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

    fn entry() -> Entry {
        Entry {
            ts: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: "192.0.2.7:5555".parse().unwrap(),
            method: Method::GET,
            host: "example.com".into(),
            path: "/a?b=\"c\"".into(),
            version: Version::HTTP_11,
            status: 200,
            bytes: 42,
            duration: Duration::from_micros(1500),
            upstream: Some("127.0.0.1:9001".parse().unwrap()),
            upstream_time: Some(Duration::from_micros(1200)),
            cache: None,
            request_id: HeaderValue::from_static("abc"),
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8")),
        }
    }

    #[test]
    fn json_fields() {
        let mut s = String::new();
        format_line(&mut s, &entry(), AccessLogFormat::Json);
        assert!(s.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["ts"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["path"], "/a?b=\"c\"");
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
        let mut s = String::new();
        format_line(&mut s, &entry(), AccessLogFormat::Combined);
        assert_eq!(
            s,
            "192.0.2.7 - - [14/Nov/2023:22:13:20 +0000] \"GET /a?b=\\\"c\\\" HTTP/1.1\" 200 42 \"-\" \"curl/8\" \
             host=\"example.com\" duration_ms=1.5 upstream=127.0.0.1:9001 upstream_ms=1.2 cache=- request_id=abc\n"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(11_017), (2000, 3, 1));
        assert_eq!(civil_date(19_723), (2024, 1, 1));
    }
}
