//! Arbitrary strings through `parse_duration` and `parse_size`: never a
//! panic, and whatever parses round-trips through its canonical spelling.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sluice::testing::config::units::{parse_duration, parse_size};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(text) {
        let ms = u64::try_from(d.as_millis()).expect("a parsed duration fits u64 ms");
        assert_eq!(Duration::from_millis(ms), d, "whole milliseconds");
        assert_eq!(parse_duration(&format!("{ms}ms")), Ok(d), "{text:?}");
        assert_eq!(parse_duration(&format!(" {text}\t")), Ok(d), "{text:?}");
    }
    if let Ok(n) = parse_size(text) {
        assert_eq!(parse_size(&format!("{n}")), Ok(n), "{text:?}");
        assert_eq!(parse_size(&format!("{n}B")), Ok(n), "{text:?}");
        assert_eq!(parse_size(&format!(" {text}\t")), Ok(n), "{text:?}");
    }
    // Plain digits are a size in bytes exactly when they fit in u64.
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        assert_eq!(
            parse_size(text).ok(),
            trimmed.parse::<u64>().ok(),
            "{text:?}"
        );
    }
});
