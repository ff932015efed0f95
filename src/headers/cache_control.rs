//! The Cache-Control field (RFC 9111 §5.2), request or response, parsed
//! once into typed directives. Shared by the cache's policy and by
//! compression (`no-transform`).

use http::header::{self, HeaderMap};

use super::grammar::{delta_seconds, is_tchar, trim_ows, Members};

/// Cache-Control directives (request or response), parsed from every
/// Cache-Control field line (RFC 9111 §5.2).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    /// A qualified `no-cache="x"` is taken as unqualified: revalidating the
    /// whole response is always allowed (§5.2.2.4).
    pub no_cache: bool,
    /// Qualified or not: a shared cache never stores it (§5.2.2.7).
    pub private: bool,
    pub public: bool,
    /// Seconds; an invalid value is `Some(0)` (stale, §4.2.1).
    pub max_age: Option<u64>,
    /// Seconds; an invalid value is `Some(0)` (stale, §4.2.1).
    pub s_maxage: Option<u64>,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub no_transform: bool,
    pub must_understand: bool,
    /// RFC 8246; parsed for callers, no effect on a shared cache's decisions.
    pub immutable: bool,
    /// RFC 5861 §3, seconds.
    pub stale_while_revalidate: Option<u64>,
    /// RFC 5861 §4, seconds (response or request).
    pub stale_if_error: Option<u64>,
    /// Request only; a bare `max-stale` is `u64::MAX` (any staleness).
    pub max_stale: Option<u64>,
    /// Request only, seconds.
    pub min_fresh: Option<u64>,
    /// Request only.
    pub only_if_cached: bool,
}

impl CacheControl {
    /// RFC 9111 §5.2: all Cache-Control lines form one comma-separated
    /// list; names are case-insensitive, arguments a token or a
    /// quoted-string; unknown directives are ignored and the first
    /// occurrence of a directive wins (§4.2.1).
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for line in headers.get_all(header::CACHE_CONTROL) {
            for member in Members::new(line.as_bytes()) {
                if let Some((name, arg)) = directive(member) {
                    cc.apply(name, arg);
                }
            }
        }
        cc
    }

    fn apply(&mut self, name: &[u8], arg: Arg<'_>) {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            self.no_cache = true;
        } else if is("private") {
            self.private = true;
        } else if is("public") {
            self.public = true;
        } else if is("max-age") {
            // §4.2.1: invalid freshness information is best taken as stale.
            first(&mut self.max_age, Some(arg.delta_seconds().unwrap_or(0)));
        } else if is("s-maxage") {
            first(&mut self.s_maxage, Some(arg.delta_seconds().unwrap_or(0)));
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("no-transform") {
            self.no_transform = true;
        } else if is("must-understand") {
            self.must_understand = true;
        } else if is("immutable") {
            self.immutable = true;
        } else if is("stale-while-revalidate") {
            // These only widen what may be served, so an invalid one is dropped.
            first(&mut self.stale_while_revalidate, arg.delta_seconds());
        } else if is("stale-if-error") {
            first(&mut self.stale_if_error, arg.delta_seconds());
        } else if is("max-stale") {
            let value = match arg {
                Arg::Absent => Some(u64::MAX),
                _ => arg.delta_seconds(),
            };
            first(&mut self.max_stale, value);
        } else if is("min-fresh") {
            first(&mut self.min_fresh, arg.delta_seconds());
        } else if is("only-if-cached") {
            self.only_if_cached = true;
        }
    }
}

/// Keeps the first valid occurrence of a valued directive.
fn first(slot: &mut Option<u64>, value: Option<u64>) {
    if slot.is_none() {
        *slot = value;
    }
}

/// A directive's argument, as written.
#[derive(Clone, Copy)]
enum Arg<'a> {
    Absent,
    Token(&'a [u8]),
    /// Between the quotes, escapes not yet removed.
    Quoted(&'a [u8]),
    Malformed,
}

impl Arg<'_> {
    /// RFC 9111 §1.2.2 delta-seconds, in either form (§5.2 asks recipients
    /// to accept a quoted one).
    fn delta_seconds(self) -> Option<u64> {
        match self {
            Arg::Token(token) => delta_seconds(token.iter().copied()),
            Arg::Quoted(body) => {
                let mut escaped = false;
                delta_seconds(body.iter().copied().filter(move |&b| {
                    let keep = escaped || b != b'\\';
                    escaped = !escaped && b == b'\\';
                    keep
                }))
            }
            Arg::Absent | Arg::Malformed => None,
        }
    }
}

/// One list member as `name [ "=" argument ]`, tolerating whitespace around
/// the `=`. A recognisable name followed by junk keeps the name with a
/// malformed argument, so `max-age 60` still makes a response stale.
fn directive(member: &[u8]) -> Option<(&[u8], Arg<'_>)> {
    let member = trim_ows(member);
    let name_len = member
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(member.len());
    if name_len == 0 {
        return None;
    }
    let (name, rest) = member.split_at(name_len);
    let arg = match trim_ows(rest).split_first() {
        None => Arg::Absent,
        Some((b'=', value)) => argument(trim_ows(value)),
        Some(_) => Arg::Malformed,
    };
    Some((name, arg))
}

fn argument(value: &[u8]) -> Arg<'_> {
    if let Some(body) = value.strip_prefix(b"\"") {
        return match closing_quote(body) {
            Some(end) if end + 1 == body.len() => Arg::Quoted(body.get(..end).unwrap_or_default()),
            _ => Arg::Malformed,
        };
    }
    if !value.is_empty() && value.iter().all(|&b| is_tchar(b)) {
        Arg::Token(value)
    } else {
        Arg::Malformed
    }
}

/// Index of the unescaped `"` that ends a quoted-string body.
fn closing_quote(body: &[u8]) -> Option<usize> {
    let mut escaped = false;
    for (i, &b) in body.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            return Some(i);
        }
    }
    None
}
