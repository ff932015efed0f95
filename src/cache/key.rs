//! Cache keys. A primary key names a resource: `scheme://authority/path?query`
//! (the authority already lower-cased with the default port dropped), then
//! whatever the route adds (request headers, cookies) after a newline. A
//! variant key adds the normalised values of the request headers a stored
//! response's `Vary` names (RFC 9111 §4.1).
//!
//! Keys are plain strings so that purge by URL and by prefix are string
//! comparisons; the separators cannot occur in a URL.

use http::{header, HeaderMap, HeaderName};

use crate::config::{IgnoreParams, KeySpec};

/// Separates a primary key from the route's extra key parts.
pub const EXTRA: char = '\n';
/// Separates a primary key (with its extras) from a variant's Vary values.
pub const VARIANT: char = '\u{1}';

/// The primary key of a request.
pub fn primary(
    https: bool,
    authority: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    spec: &KeySpec,
) -> String {
    let mut key = String::with_capacity(authority.len() + path_and_query.len() + 10);
    key.push_str(if https { "https://" } else { "http://" });
    key.push_str(authority);
    match (path_and_query.split_once('?'), &spec.ignore_params) {
        (None, _) | (Some(_), IgnoreParams::None) => key.push_str(path_and_query),
        (Some((path, _)), IgnoreParams::All) => key.push_str(path),
        (Some((path, query)), IgnoreParams::Named(names)) => {
            key.push_str(path);
            let mut sep = '?';
            for pair in query.split('&') {
                let name = pair.split_once('=').map_or(pair, |(n, _)| n);
                if !names.iter().any(|n| n == name) {
                    key.push(sep);
                    key.push_str(pair);
                    sep = '&';
                }
            }
        }
    }
    for name in &spec.headers {
        key.push(EXTRA);
        key.push_str(name.as_str());
        key.push(':');
        push_joined(&mut key, headers, name);
    }
    for cookie in &spec.cookies {
        key.push(EXTRA);
        key.push_str("cookie ");
        key.push_str(cookie);
        key.push('=');
        if let Some(v) = crate::headers::cookie_value(headers, cookie) {
            key.push_str(v);
        }
    }
    key
}

/// The URL a primary key was made from (without the route's extras).
pub fn url_of(key: &str) -> &str {
    let end = key.find([EXTRA, VARIANT]).unwrap_or(key.len());
    &key[..end]
}

/// The variant key of a request for a response that varies on `names`;
/// `id` is the primary key's current `Vary` generation.
pub fn variant(primary: &str, id: u64, names: &[HeaderName], headers: &HeaderMap) -> String {
    let mut key = String::with_capacity(primary.len() + 48);
    key.push_str(primary);
    key.push(VARIANT);
    key.push_str(&id.to_string());
    for name in names {
        key.push(VARIANT);
        key.push_str(name.as_str());
        key.push(':');
        push_joined(&mut key, headers, name);
    }
    key
}

/// The header names of a `Vary` field set, lower-cased and sorted, or
/// `None` for `Vary: *` (which never matches a later request).
pub fn vary_names(resp: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in resp.get_all(header::VARY) {
        let Ok(text) = value.to_str() else {
            return None;
        };
        for item in text.split(',') {
            let item = item.trim();
            if item == "*" {
                return None;
            }
            if item.is_empty() {
                continue;
            }
            match HeaderName::from_bytes(item.as_bytes()) {
                Ok(n) => names.push(n),
                Err(_) => return None,
            }
        }
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// Appends every line of field `name`, joined by ", " with the whitespace
/// around list separators removed, so that `a,b` and `a, b` match (RFC 9111
/// §4.1 allows this normalisation).
fn push_joined(key: &mut String, headers: &HeaderMap, name: &HeaderName) {
    let mut first = true;
    for value in headers.get_all(name) {
        for item in String::from_utf8_lossy(value.as_bytes()).split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            if !first {
                key.push(',');
            }
            // The separators must not come from a client.
            key.extend(item.chars().filter(|c| ![EXTRA, VARIANT].contains(c)));
            first = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::headers::test_map as headers;

    #[test]
    fn primary_is_the_url() {
        let k = primary(
            false,
            "example.com",
            "/a?b=1",
            &HeaderMap::new(),
            &KeySpec::default(),
        );
        assert_eq!(k, "http://example.com/a?b=1");
        let k = primary(
            true,
            "example.com:8443",
            "/",
            &HeaderMap::new(),
            &KeySpec::default(),
        );
        assert_eq!(k, "https://example.com:8443/");
        assert_eq!(url_of(&k), k);
    }

    #[test]
    fn ignored_params_leave_the_key() {
        let spec = KeySpec {
            ignore_params: IgnoreParams::Named(vec!["utm_source".into(), "fbclid".into()]),
            ..KeySpec::default()
        };
        let k = primary(
            false,
            "h",
            "/p?a=1&utm_source=x&b=2&fbclid",
            &HeaderMap::new(),
            &spec,
        );
        assert_eq!(k, "http://h/p?a=1&b=2");
        let k = primary(false, "h", "/p?utm_source=x", &HeaderMap::new(), &spec);
        assert_eq!(k, "http://h/p");
        let all = KeySpec {
            ignore_params: IgnoreParams::All,
            ..KeySpec::default()
        };
        assert_eq!(
            primary(false, "h", "/p?a=1", &HeaderMap::new(), &all),
            "http://h/p"
        );
    }

    #[test]
    fn headers_and_cookies_extend_the_key() {
        let spec = KeySpec {
            headers: vec![HeaderName::from_static("x-tenant")],
            cookies: vec!["lang".into()],
            ..KeySpec::default()
        };
        let h = headers(&[("x-tenant", "acme"), ("cookie", "a=1; lang=de; z=2")]);
        let k = primary(false, "h", "/", &h, &spec);
        assert_eq!(k, "http://h/\nx-tenant:acme\ncookie lang=de");
        assert_eq!(url_of(&k), "http://h/");
        let other = primary(false, "h", "/", &headers(&[("cookie", "lang=fr")]), &spec);
        assert_ne!(k, other);
    }

    #[test]
    fn s4_1_vary_values_are_normalised() {
        let names = vary_names(&headers(&[("vary", "Accept-Encoding, accept-language")])).unwrap();
        let a = variant("k", 7, &names, &headers(&[("accept-encoding", "gzip,br")]));
        let b = variant("k", 7, &names, &headers(&[("accept-encoding", "gzip, br")]));
        let c = variant(
            "k",
            7,
            &names,
            &headers(&[("accept-encoding", "gzip"), ("accept-encoding", "br")]),
        );
        assert_eq!(a, b);
        assert_eq!(a, c);
        let d = variant("k", 7, &names, &headers(&[("accept-encoding", "br")]));
        assert_ne!(a, d);
    }

    #[test]
    fn s4_1_vary_star_never_matches() {
        assert!(vary_names(&headers(&[("vary", "*")])).is_none());
        assert!(vary_names(&headers(&[("vary", "accept, *")])).is_none());
        assert_eq!(vary_names(&HeaderMap::new()), Some(vec![]));
    }
}
