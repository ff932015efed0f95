//! Arbitrary bytes as a config file: `Config::parse` must return a config or
//! a list of errors, never panic, and every error it reports must point
//! inside the file.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice::testing::environment::System;
use sluice::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Err(errors) = Config::parse(Path::new("fuzz.toml"), text, &System) else {
        return;
    };
    assert!(!errors.errors.is_empty(), "an Err without any error");
    let lines = text.split('\n').count();
    for e in &errors.errors {
        if let Some((line, col)) = e.position {
            assert!(
                (1..=lines).contains(&line) && col >= 1,
                "error {e:?} outside the file ({lines} lines)"
            );
        }
    }
    // Rendering the report must not panic either.
    let _ = errors.to_string();
});
