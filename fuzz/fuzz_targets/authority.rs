//! Arbitrary Host field bytes and request-target authorities through
//! `headers::authority`: never a panic; an accepted authority is lower case,
//! without a trailing dot or default port, normalises to itself, and is the
//! same whether it came from the Host field or from the target.
//!
//! Input: one flags byte (version, https, which sources to use), one byte
//! giving where to cut the rest into the Host value and the URI authority.

#![no_main]

use http::header::{HeaderMap, HeaderValue, HOST};
use http::uri::Authority as UriAuthority;
use http::{Uri, Version};
use libfuzzer_sys::fuzz_target;
use sluice::testing::headers::{authority, Authority, AuthorityError};

fn origin_form() -> Uri {
    Uri::from_static("/")
}

fn absolute_form(a: &[u8], https: bool) -> Option<Uri> {
    let a = UriAuthority::try_from(a).ok()?;
    Uri::builder()
        .scheme(if https { "https" } else { "http" })
        .authority(a)
        .path_and_query("/")
        .build()
        .ok()
}

fn host_map(v: Option<&HeaderValue>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(v) = v {
        h.insert(HOST, v.clone());
    }
    h
}

fn check_normal(a: &Authority, https: bool) {
    let Authority {
        host,
        authority: auth,
    } = a;
    assert_eq!(*host, host.to_ascii_lowercase(), "{a:?}");
    assert!(auth.starts_with(host.as_str()), "{a:?}");
    assert!(!host.ends_with('.'), "{a:?}");
    assert!(
        auth.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._:[]".contains(&b)),
        "{a:?}"
    );
    if let Some(port) = auth[host.len()..].strip_prefix(':') {
        let port: u16 = port.parse().expect("a port");
        assert_ne!(port, if https { 443 } else { 80 }, "{a:?}");
    } else {
        assert_eq!(auth, host, "{a:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, cut, rest @ ..] = data else {
        return;
    };
    let version = match flags & 3 {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    let https = flags & 4 != 0;
    let cut = usize::from(*cut).min(rest.len());
    let (host_bytes, uri_bytes) = rest.split_at(cut);
    let host = if flags & 8 != 0 {
        HeaderValue::from_bytes(host_bytes).ok()
    } else {
        None
    };
    let uri = if flags & 16 != 0 {
        absolute_form(uri_bytes, https)
    } else {
        None
    };

    let both = authority(
        version,
        uri.as_ref().unwrap_or(&origin_form()),
        &host_map(host.as_ref()),
        https,
    );
    let Ok(a) = &both else {
        return;
    };
    if a.authority.is_empty() {
        assert!(
            host.is_none() && uri.is_none(),
            "{a:?} from {host:?} {uri:?}"
        );
        assert!(matches!(version, Version::HTTP_10));
        return;
    }
    check_normal(a, https);

    // Idempotent: the normalised authority, sent as Host, normalises to
    // itself (and so does its host alone, minus any port).
    let again = |text: &str| {
        let v = HeaderValue::from_str(text).expect("a valid header value");
        authority(Version::HTTP_11, &origin_form(), &host_map(Some(&v)), https)
    };
    assert_eq!(again(&a.authority).as_ref(), Ok(a), "not idempotent");
    let host_only = again(&a.host).expect("the host alone is valid");
    assert_eq!(host_only.host, a.host);

    // One source alone gives the same answer as both agreeing.
    let from_host: Option<Result<Authority, AuthorityError>> = host
        .as_ref()
        .map(|v| authority(Version::HTTP_11, &origin_form(), &host_map(Some(v)), https));
    let from_uri = uri
        .as_ref()
        .map(|u| authority(Version::HTTP_2, u, &HeaderMap::new(), https));
    for alone in [from_host, from_uri].into_iter().flatten() {
        assert_eq!(alone.as_ref(), Ok(a));
    }
});
