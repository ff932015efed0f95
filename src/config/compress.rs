//! The `[compression]` table, from raw TOML to validated types. Nothing is
//! compressed unless a route sets `compress = true`.

use serde::Deserialize;

use super::units::de_size;
use super::{Seg, Validator};

/// `[compression]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCompression {
    #[serde(default = "d_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "d_min_size", deserialize_with = "de_size")]
    pub min_size: u64,
    #[serde(default = "d_types")]
    pub types: Vec<String>,
    #[serde(default = "d_level")]
    pub level: String,
}

impl Default for RawCompression {
    fn default() -> Self {
        RawCompression {
            algorithms: d_algorithms(),
            min_size: d_min_size(),
            types: d_types(),
            level: d_level(),
        }
    }
}

fn d_algorithms() -> Vec<String> {
    ["br", "zstd", "gzip"].map(String::from).to_vec()
}
fn d_min_size() -> u64 {
    1024
}
fn d_types() -> Vec<String> {
    [
        "text/*",
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
    ]
    .map(String::from)
    .to_vec()
}
fn d_level() -> String {
    "fast".to_string()
}

/// A content coding sluice produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    pub const ALL: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

    /// The token in `Accept-Encoding` / `Content-Encoding`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    pub fn parse(token: &str) -> Option<Coding> {
        Coding::ALL
            .into_iter()
            .find(|c| token.eq_ignore_ascii_case(c.as_str()))
            .or_else(|| token.eq_ignore_ascii_case("x-gzip").then_some(Coding::Gzip))
    }
}

/// How hard to compress responses on the fly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Cheapest CPU (gzip 1, brotli 1, zstd 1), as nginx's default.
    Fast,
    /// gzip 6, brotli 5, zstd 3.
    Default,
    /// Smallest output (gzip 9, brotli 11, zstd 19); costly.
    Best,
}

impl Level {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Level::Fast => "fast",
            Level::Default => "default",
            Level::Best => "best",
        }
    }
}

/// The validated `[compression]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressionConfig {
    /// Preference order among equally acceptable codings.
    pub algorithms: Vec<Coding>,
    /// Responses with a known length below this are sent as they are.
    pub min_size: u64,
    /// Media types to compress, lower-case: `type/subtype` or `type/*`.
    pub types: Vec<String>,
    pub level: Level,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            algorithms: Coding::ALL.to_vec(),
            min_size: d_min_size(),
            types: d_types(),
            level: Level::Fast,
        }
    }
}

impl Validator<'_> {
    pub(super) fn compression(&mut self, raw: Option<&RawCompression>) -> CompressionConfig {
        let default = RawCompression::default();
        let raw = raw.unwrap_or(&default);
        let at = |k| [Seg::Key("compression"), Seg::Key(k)];
        let mut algorithms = Vec::new();
        for (i, a) in raw.algorithms.iter().enumerate() {
            match Coding::parse(a) {
                Some(c) if !algorithms.contains(&c) => algorithms.push(c),
                Some(_) => self.error(
                    &[
                        Seg::Key("compression"),
                        Seg::Key("algorithms"),
                        Seg::Index(i),
                    ],
                    format!("\"{a}\" is listed twice"),
                ),
                None => self.error(
                    &[
                        Seg::Key("compression"),
                        Seg::Key("algorithms"),
                        Seg::Index(i),
                    ],
                    super::diagnostics::with_suggestion(
                        format!("unknown algorithm \"{a}\"; use br, zstd or gzip"),
                        a,
                        &["br", "zstd", "gzip"],
                    ),
                ),
            }
        }
        if raw.algorithms.is_empty() {
            self.error(
                &at("algorithms"),
                "must name at least one of br, zstd, gzip (routes turn compression off)",
            );
        }
        let mut types = Vec::new();
        for (i, t) in raw.types.iter().enumerate() {
            let t = t.trim().to_ascii_lowercase();
            let valid = t.split_once('/').is_some_and(|(a, b)| {
                let token = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
                };
                token(a) && (b == "*" || token(b))
            });
            if valid {
                types.push(t);
            } else {
                self.error(
                    &[Seg::Key("compression"), Seg::Key("types"), Seg::Index(i)],
                    format!("\"{t}\" is not a media type such as \"text/html\" or \"text/*\""),
                );
            }
        }
        let level = match raw.level.as_str() {
            "fast" => Level::Fast,
            "default" => Level::Default,
            "best" => Level::Best,
            other => {
                self.error(
                    &at("level"),
                    super::diagnostics::with_suggestion(
                        format!("unknown level \"{other}\"; use fast, default or best"),
                        other,
                        &["fast", "default", "best"],
                    ),
                );
                Level::Fast
            }
        };
        CompressionConfig {
            algorithms,
            min_size: raw.min_size,
            types,
            level,
        }
    }
}
