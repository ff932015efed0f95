//! Human-friendly durations (`"250ms"`, `"2s"`, `"5m"`) and byte sizes
//! (`"64KiB"`, `"100MiB"`, or a plain integer) as they appear in the config.
//!
//! Parsed once at load time; the running proxy only sees `Duration` and `u64`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Parses `"<integer><unit>"` with unit one of `ms`, `s`, `m`, `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("duration \"{text}\" has no unit; write e.g. \"{text}s\" or \"{text}ms\"")
    })?;
    let (digits, unit) = text.split_at(split);
    let unit = unit.trim_start();
    if digits.is_empty() {
        return Err(format!(
            "duration \"{text}\" must start with a number, e.g. \"2s\""
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("duration \"{text}\" is too large"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "duration \"{text}\" has unknown unit \"{unit}\"; use ms, s, m or h"
            ))
        }
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration \"{text}\" is too large"))
}

/// Parses a byte size: a plain integer, or `"<integer><unit>"` with unit one of
/// `B`, `KiB`, `MiB`, `GiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit = unit.trim_start();
    if digits.is_empty() {
        return Err(format!(
            "size \"{text}\" must start with a number, e.g. \"64KiB\""
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("size \"{text}\" is too large"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "size \"{text}\" has unknown unit \"{other}\"; use B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size \"{text}\" is too large"))
}

/// Serde adapter for a duration string.
pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration string such as \"250ms\", \"2s\" or \"5m\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
}

/// Serde adapter for a byte size: an integer or a string with a unit.
pub(crate) fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a byte size such as 65536, \"64KiB\" or \"100MiB\"")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_size(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// Serde adapter for an optional byte size (present: as [`de_size`]).
pub(crate) fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("2 fortnights").is_err());
        assert_eq!(parse_duration("2 s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("18446744073709551615h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("8KB"), Ok(8000));
        assert_eq!(parse_size("10B"), Ok(10));
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("18446744073709551615GiB").is_err());
    }
}
