//! Cache keys and ranges from arbitrary request data: `cache::key::primary`,
//! `vary_names`, `variant` and `serve::parse_range` never panic, keys never
//! contain a separator that came from the client, and a satisfiable range
//! lies inside the body.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice::testing::cache::key::{self, EXTRA, VARIANT};
use sluice::testing::cache::serve::parse_range;
use sluice::testing::config::{IgnoreParams, KeySpec};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{0}');
    let path = parts.next().unwrap_or("/");
    let vary = parts.next().unwrap_or("");
    let value = parts.next().unwrap_or("");
    let range = parts.next().unwrap_or("");
    // A request target never holds control characters (http::Uri refuses them).
    if path.contains(char::is_control) {
        return;
    }

    let mut req = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(value) {
        req.append(HeaderName::from_static("accept-language"), v.clone());
        req.append(HeaderName::from_static("x-tenant"), v.clone());
        req.append(http::header::COOKIE, v);
    }
    let spec = KeySpec {
        headers: vec![HeaderName::from_static("x-tenant")],
        cookies: vec!["lang".to_string()],
        ignore_params: IgnoreParams::Named(vec!["utm_source".to_string()]),
    };
    let primary = key::primary(false, "example.com", path, &req, &spec);
    let url = key::url_of(&primary);
    assert!(url.starts_with("http://example.com"));
    assert!(!url.contains([EXTRA, VARIANT]));

    let mut resp = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(vary) {
        resp.append(http::header::VARY, v);
    }
    if let Some(names) = key::vary_names(&resp) {
        let a = key::variant(&primary, 1, &names, &req);
        let b = key::variant(&primary, 1, &names, &req);
        assert_eq!(a, b, "variant keys are deterministic");
        assert_eq!(a.matches(VARIANT).count(), 1 + names.len(), "one separator per name, none from the client");
    }

    let len = data.len() as u64;
    if let Some(Some((first, last))) = parse_range(range, len) {
        assert!(first <= last && last < len, "{range:?} -> {first}-{last} of {len}");
    }
});
