//! Client limits: `[limits]` and each listener's `[listener.limits]`
//! overrides, and the token-bucket [`Rate`] that `max_connection_rate` and
//! a route's `rate_limit` are written as.

use std::time::Duration;

use super::{raw, Seg, Validator};

/// `count` events per `per`, in bursts of up to `burst`: a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

/// Client limits: `[limits]`, and per listener with `[listener.limits]`
/// overriding single keys (see [`super::Config::limits_for`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    /// Header fields in one request; more gets 431.
    pub max_header_count: usize,
    /// A request head must arrive completely within this, counted from the
    /// connection's accept (first request) or from the first byte of the
    /// head (later HTTP/1.1 requests).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub keepalive_timeout: Duration,
    /// Bytes per second a request body must average once `body_rate_grace`
    /// of waiting has passed; 0 = off.
    pub min_body_rate: u64,
    pub body_rate_grace: Duration,
    /// Open connections per listener.
    pub max_connections: usize,
    /// Open connections per client IP per listener; 0 = unlimited.
    pub max_connections_per_client: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_frame_size: u32,
    pub h2_max_pending_accept_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 << 10,
            max_uri_bytes: 8 << 10,
            max_body_bytes: 100 << 20,
            max_header_count: 100,
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            min_body_rate: 1 << 10,
            body_rate_grace: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_client: 4096,
            h2_max_concurrent_streams: 128,
            h2_max_frame_size: 16 << 10,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 256,
        }
    }
}

impl Validator<'_> {
    /// Checks a token-bucket rate found at `at` (a `rate_limit` or
    /// `max_connection_rate` table) whose count is called `count_key`.
    /// `burst` defaults to twice the count (the sample: 100 per
    /// second with bursts of 200).
    pub(super) fn rate(
        &mut self,
        at: &[Seg],
        count_key: &'static str,
        count: u32,
        per: Duration,
        burst: Option<u32>,
    ) -> Rate {
        let key = |k: &'static str| {
            let mut path = at.to_vec();
            path.push(Seg::Key(k));
            path
        };
        if count == 0 {
            self.error(&key(count_key), "must be at least 1");
        }
        if per.is_zero() {
            self.error(&key("per"), "must be greater than zero");
        }
        if burst == Some(0) {
            self.error(&key("burst"), "must be at least 1");
        }
        Rate {
            count: count.max(1),
            per: per.max(Duration::from_millis(1)),
            burst: burst.unwrap_or(count.saturating_mul(2)).max(1),
        }
    }
}

impl Validator<'_> {
    /// `base` with the keys set in `raw` applied, each checked; problems are
    /// reported under `prefix` (`limits` or `listener[i].limits`).
    pub(super) fn limits(&mut self, base: &Limits, raw: &raw::RawLimits, prefix: &[Seg]) -> Limits {
        let at = |k: &'static str| {
            let mut path = prefix.to_vec();
            path.push(Seg::Key(k));
            path
        };
        let mut out = base.clone();
        if let Some(v) = raw.max_header_bytes {
            if v < 1024 {
                self.error(&at("max_header_bytes"), "must be at least 1024 bytes");
            }
            out.max_header_bytes = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = raw.max_uri_bytes {
            if v == 0 {
                self.error(&at("max_uri_bytes"), "must be greater than zero");
            }
            out.max_uri_bytes = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = raw.max_body_bytes {
            out.max_body_bytes = v;
        }
        if let Some(v) = raw.max_header_count {
            if !(1..=10_000).contains(&v) {
                self.error(&at("max_header_count"), "must be between 1 and 10000");
            }
            out.max_header_count = v.clamp(1, 10_000);
        }
        let mut positive = |v: Option<Duration>, k: &'static str, field: &mut Duration| {
            if let Some(v) = v {
                if v.is_zero() {
                    self.error(&at(k), "must be greater than zero");
                }
                *field = v;
            }
        };
        positive(
            raw.header_read_timeout,
            "header_read_timeout",
            &mut out.header_read_timeout,
        );
        positive(
            raw.keepalive_timeout,
            "keepalive_timeout",
            &mut out.keepalive_timeout,
        );
        positive(
            raw.body_rate_grace,
            "body_rate_grace",
            &mut out.body_rate_grace,
        );
        if let Some(v) = raw.min_body_rate {
            out.min_body_rate = v;
        }
        if let Some(v) = raw.max_connections {
            if v == 0 {
                self.error(&at("max_connections"), "must be greater than zero");
            }
            out.max_connections = v.max(1);
        }
        if let Some(v) = raw.max_connections_per_client {
            out.max_connections_per_client = v;
        }
        if let Some(v) = raw.h2_max_concurrent_streams {
            if v == 0 {
                self.error(&at("h2_max_concurrent_streams"), "must be at least 1");
            }
            out.h2_max_concurrent_streams = v.max(1);
        }
        if let Some(v) = raw.h2_max_frame_size {
            // RFC 9113 section 6.5.2: from 2^14 to 2^24 - 1.
            let range = 16_384..=16_777_215;
            if !range.contains(&v) {
                self.error(
                    &at("h2_max_frame_size"),
                    "must be between 16KiB and 16777215 bytes (16MiB - 1), as HTTP/2 requires",
                );
            }
            out.h2_max_frame_size = u32::try_from(v.clamp(16_384, 16_777_215)).unwrap_or(16_384);
        }
        if let Some(v) = raw.h2_max_pending_accept_reset_streams {
            out.h2_max_pending_accept_reset_streams = v;
        }
        if let Some(v) = raw.h2_max_local_error_reset_streams {
            out.h2_max_local_error_reset_streams = v;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::{parse, MINIMAL};

    #[test]
    fn listener_limits_override_single_keys() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"\n",
            "listen = \"127.0.0.1:8080\"\n\n[listener.limits]\nmax_header_count = 10\nmin_body_rate = \"2KiB/s\"\n\n[[listener]]\nname = \"other\"\nlisten = \"127.0.0.1:8081\"\n",
        ) + "\n[limits]\nmax_header_count = 50\nkeepalive_timeout = \"5s\"\n";
        let c = parse(&text).expect("valid");
        let own = c.limits_for("http");
        assert_eq!(own.max_header_count, 10);
        assert_eq!(own.min_body_rate, 2048);
        assert_eq!(own.keepalive_timeout, Duration::from_secs(5), "inherited");
        let other = c.limits_for("other");
        assert_eq!(other.max_header_count, 50);
        assert_eq!(other.min_body_rate, 1024);
        assert_eq!(c.limits.max_header_count, 50);
    }

    #[test]
    fn bad_limits_name_their_key_once() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"\n",
            "listen = \"127.0.0.1:8080\"\n\n[listener.limits]\nh2_max_frame_size = \"1KiB\"\nkeepalive_timeout = \"0s\"\n",
        ) + "\n[limits]\nmax_header_count = 0\nbody_rate_grace = \"0s\"\n";
        let e = parse(&text).unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listener[0].limits.h2_max_frame_size",
                "listener[0].limits.keepalive_timeout",
                "limits.max_header_count",
                "limits.body_rate_grace",
            ],
            "{e}"
        );
        assert!(e.errors.iter().all(|e| e.position.is_some()), "{e}");
        let e = parse(&(MINIMAL.to_string() + "\n[limits]\nmax_header_cont = 5\n")).unwrap_err();
        assert!(e.errors[0].key.starts_with("limits"), "{e}");
        assert!(e.errors[0].message.contains("max_header_cont"), "{e}");
        let e =
            parse(&(MINIMAL.to_string() + "\n[limits]\nmin_body_rate = \"fast\"\n")).unwrap_err();
        assert_eq!(e.errors[0].key, "limits.min_body_rate", "{e}");
    }
}
