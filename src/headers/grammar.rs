//! Field-value grammar shared by the header modules (RFC 9110 §5.6): list
//! members split outside quoted-strings, tokens, whitespace, delta-seconds
//! and HTTP dates. Nothing here panics on any input.

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// RFC 9111 §1.2.2: larger delta-seconds values are taken as this.
pub(crate) const DELTA_SECONDS_MAX: u64 = 2_147_483_648;

/// A date field as RFC 9111 reads it: absent, unusable (unparseable or
/// repeated), or a time.
pub(crate) enum Date {
    Absent,
    Invalid,
    At(SystemTime),
}

pub(crate) fn http_date(headers: &HeaderMap, name: HeaderName) -> Date {
    let mut lines = headers.get_all(name).iter();
    match (lines.next(), lines.next()) {
        (None, _) => Date::Absent,
        (Some(value), None) => parse_date(value).map_or(Date::Invalid, Date::At),
        (Some(_), Some(_)) => Date::Invalid,
    }
}

pub(crate) fn parse_date(value: &HeaderValue) -> Option<SystemTime> {
    let text = value.to_str().ok()?;
    httpdate::parse_http_date(text).ok()
}

/// The response's Date, or `fallback` when it is missing or invalid
/// (RFC 9110 §6.6.1).
pub(crate) fn date_or(resp: &HeaderMap, fallback: SystemTime) -> SystemTime {
    match http_date(resp, header::DATE) {
        Date::At(date) => date,
        Date::Invalid | Date::Absent => fallback,
    }
}

/// RFC 9110 §5.6.1: the non-empty, trimmed members of every line of a list
/// field, in order.
pub(crate) fn list_members(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|line| Members::new(line.as_bytes()))
        .map(trim_ows)
        .filter(|member| !member.is_empty())
}

/// Splits one field line at the commas outside quoted-strings (which may
/// contain commas, e.g. `no-cache="a, b"`). Members are untrimmed and may be
/// empty.
pub(crate) struct Members<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Members<'a> {
    pub(crate) fn new(line: &'a [u8]) -> Self {
        Members { rest: Some(line) }
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let line = self.rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, &b) in line.iter().enumerate() {
            if quoted {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    quoted = false;
                }
            } else if b == b'"' {
                quoted = true;
            } else if b == b',' {
                let (member, rest) = line.split_at(i);
                self.rest = Some(rest.get(1..).unwrap_or_default());
                return Some(member);
            }
        }
        // An unterminated quoted-string runs to the end of the line.
        self.rest = None;
        Some(line)
    }
}

/// `1*DIGIT`, clamped to 2147483648 (§1.2.2); anything else is None.
pub(crate) fn delta_seconds(digits: impl Iterator<Item = u8>) -> Option<u64> {
    let mut value: u64 = 0;
    let mut any = false;
    for b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        any = true;
        value = (value * 10 + u64::from(b - b'0')).min(DELTA_SECONDS_MAX);
    }
    any.then_some(value)
}

/// RFC 9110 §5.6.2 tchar.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(crate) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub(crate) fn trim_start(s: &[u8], skip: impl Fn(u8) -> bool) -> &[u8] {
    let start = s.iter().position(|&b| !skip(b)).unwrap_or(s.len());
    s.get(start..).unwrap_or_default()
}

pub(crate) fn trim_ows(s: &[u8]) -> &[u8] {
    let s = trim_start(s, is_ows);
    let end = s
        .iter()
        .rposition(|&b| !is_ows(b))
        .map_or(0, |last| last + 1);
    s.get(..end).unwrap_or_default()
}
