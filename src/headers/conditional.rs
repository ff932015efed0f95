//! Validators and conditional requests (RFC 9110 §8.8, §13): entity-tag
//! comparison, `If-Modified-Since` against a stored head, and weakening an
//! ETag when content is transformed. Shared by the cache (304s from stored
//! entries) and compression (a compressed body gets a weak ETag).

use http::header::{self, HeaderMap, HeaderValue};

use super::grammar::{http_date, is_ows, parse_date, trim_ows, trim_start, Date};

/// RFC 9110 §13.1.2 If-None-Match with weak comparison: does the field (all
/// lines, lists, `*`, W/ prefixes) match `etag`? `*` matches whenever a
/// stored response exists, with or without an ETag. Malformed members never
/// match.
pub fn none_match(if_none_match: &HeaderMap, etag: Option<&HeaderValue>) -> bool {
    let target = etag.and_then(|etag| single_entity_tag(trim_ows(etag.as_bytes())));
    if_none_match
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|line| {
            let line = trim_ows(line.as_bytes());
            line == b"*" || target.is_some_and(|target| list_has_tag(line, target))
        })
}

/// RFC 9110 §13.1.3 If-Modified-Since: true when the stored Last-Modified
/// (or, lacking it, Date, per RFC 9111 §4.3.2) is not later than the
/// field's date. Unparseable dates give false: the full response is sent.
pub fn not_modified_since(if_modified_since: &HeaderValue, stored: &HeaderMap) -> bool {
    let Some(since) = parse_date(if_modified_since) else {
        return false;
    };
    let modified = match http_date(stored, header::LAST_MODIFIED) {
        Date::At(modified) => modified,
        Date::Invalid => return false,
        Date::Absent => match http_date(stored, header::DATE) {
            Date::At(date) => date,
            Date::Invalid | Date::Absent => return false,
        },
    };
    modified <= since
}

/// RFC 9110 §8.8.1: turn a strong ETag into a weak one (used when content is
/// transformed, e.g. compressed). Already weak values are returned
/// unchanged.
pub fn weaken_etag(etag: &HeaderValue) -> HeaderValue {
    let tag = trim_ows(etag.as_bytes());
    if tag.starts_with(b"W/") {
        return etag.clone();
    }
    let mut weak = Vec::with_capacity(tag.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(tag);
    // Cannot fail for bytes that were a valid value already.
    match HeaderValue::from_bytes(&weak) {
        Ok(mut value) => {
            value.set_sensitive(etag.is_sensitive());
            value
        }
        Err(_) => etag.clone(),
    }
}

/// Does a comma-separated list of entity-tags hold one whose opaque-tag is
/// `target` (weak comparison)? Malformed members are skipped.
fn list_has_tag(list: &[u8], target: &[u8]) -> bool {
    let mut rest = list;
    loop {
        rest = trim_start(rest, |b| is_ows(b) || b == b',');
        if rest.is_empty() {
            return false;
        }
        match entity_tag(rest) {
            Some((opaque, after)) => {
                let after = trim_start(after, is_ows);
                match after.first() {
                    None | Some(b',') => {
                        if opaque == target {
                            return true;
                        }
                        rest = after;
                    }
                    Some(_) => rest = past_comma(after),
                }
            }
            None => rest = past_comma(rest),
        }
    }
}

/// A value that is exactly one entity-tag: its opaque-tag.
fn single_entity_tag(value: &[u8]) -> Option<&[u8]> {
    match entity_tag(value) {
        Some((opaque, [])) => Some(opaque),
        _ => None,
    }
}

/// RFC 9110 §8.8.3 `entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE` at the start
/// of `s`: the characters between the quotes, and what follows.
fn entity_tag(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let s = s.strip_prefix(b"W/").unwrap_or(s);
    let body = s.strip_prefix(b"\"")?;
    let end = body.iter().position(|&b| b == b'"')?;
    let (opaque, after) = body.split_at(end);
    if !opaque.iter().all(|&b| is_etagc(b)) {
        return None;
    }
    Some((opaque, after.get(1..).unwrap_or_default()))
}

fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80
}

/// What follows the next comma, or nothing.
fn past_comma(s: &[u8]) -> &[u8] {
    match s.iter().position(|&b| b == b',') {
        Some(comma) => s.get(comma + 1..).unwrap_or_default(),
        None => &[],
    }
}
