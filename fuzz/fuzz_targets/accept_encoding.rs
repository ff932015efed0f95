//! Arbitrary `Accept-Encoding` values through `compress::Accepted`: never a
//! panic, and the choice is consistent with the q-values it reports.

#![no_main]

use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice::testing::compress::Accepted;
use sluice::testing::config::Coding;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a preference order; the rest is the field value,
    // split into several field lines at '\n'.
    let Some((&order, rest)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in rest.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(header::ACCEPT_ENCODING, v);
        }
    }
    let accepted = Accepted::parse(&headers);
    let mut preference = Coding::ALL.to_vec();
    preference.rotate_left(usize::from(order % 3));
    if order & 4 != 0 {
        preference.pop();
    }
    assert_eq!(Accepted::parse(&headers), accepted, "parsing is deterministic");
    if let Some(chosen) = accepted.choose(&preference) {
        assert!(preference.contains(&chosen));
        assert!(accepted.accepts(chosen));
        // Nothing preferred is ranked higher than the choice.
        for c in &preference {
            assert!(accepted.q(*c) <= accepted.q(chosen), "{c:?} beats {chosen:?}");
        }
    }
    if headers.is_empty() {
        assert_eq!(accepted.choose(&preference), None);
    }
});
