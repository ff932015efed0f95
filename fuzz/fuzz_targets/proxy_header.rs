//! Arbitrary connection starts through `proxy_protocol::parse`: never a
//! panic; a complete header is within the bounds (107 bytes for v1, 2048
//! for v2), parses the same with anything appended, and every proper
//! prefix of it is partial; a partial input is never longer than the
//! bounds; a refusal stays a refusal whatever follows. Addresses that were
//! parsed are re-encoded and parse back to themselves.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::testing::proxy_protocol::{encode, parse, Parsed, Version, V1_MAX, V2_MAX};

fuzz_target!(|data: &[u8]| {
    let first = parse(data);
    match first {
        Ok(Parsed::Complete { header, len }) => {
            assert!(len >= 1 && len <= data.len(), "{len} of {}", data.len());
            let v1 = data.starts_with(b"PROXY ");
            assert!(len <= if v1 { V1_MAX } else { V2_MAX }, "{len}");
            // What follows the header is not the parser's business.
            let mut longer = data[..len].to_vec();
            longer.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(parse(&longer), Ok(Parsed::Complete { header, len }));
            for n in 0..len {
                assert_eq!(parse(&data[..n]), Ok(Parsed::Partial), "prefix {n}");
            }
            if let Some(a) = header.addresses {
                for version in [Version::V1, Version::V2] {
                    let again = encode(version, a.source, a.destination);
                    let Ok(Parsed::Complete { header: back, .. }) = parse(&again) else {
                        panic!("{a:?} does not parse back");
                    };
                    let back = back.addresses.expect("addresses");
                    assert_eq!(back.source.port(), a.source.port());
                    assert_eq!(back.destination.port(), a.destination.port());
                    assert_eq!(
                        back.source.ip().to_canonical(),
                        a.source.ip().to_canonical()
                    );
                    assert_eq!(
                        back.destination.ip().to_canonical(),
                        a.destination.ip().to_canonical()
                    );
                }
            }
        }
        Ok(Parsed::Partial) => {
            assert!(data.len() < V2_MAX, "partial after {} bytes", data.len());
            if data.starts_with(b"PROXY ") {
                assert!(data.len() < V1_MAX, "v1 partial after {} bytes", data.len());
            }
        }
        Err(e) => {
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n\r\n");
            assert_eq!(parse(&longer), Err(e), "a refusal is final");
        }
    }
});
