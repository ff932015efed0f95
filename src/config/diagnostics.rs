//! Where a config problem is, and how it is reported: the error types
//! ([`ConfigError`], [`ConfigErrors`], printed as
//! `file:line:col: key: message`), reading the raw TOML while collecting
//! every key-level error instead of stopping at the first, and locating a
//! key path in the document for its line and column.

use std::fmt;
use std::path::PathBuf;

use super::raw::RawConfig;
use super::Validator;

/// One problem in a config file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// TOML key path such as `pool.app.servers[1].addr`; empty for the whole file.
    pub key: String,
    /// 1-based line and column, when the TOML document locates the key.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some((line, col)) = e.position {
                write!(f, ":{line}:{col}")?;
            }
            if e.key.is_empty() {
                write!(f, ": {}", e.message)?;
            } else {
                write!(f, ": {}: {}", e.key, e.message)?;
            }
        }
        Ok(())
    }
}

/// Deserializes the raw config, collecting every key-level error rather than
/// stopping at the first: a key that fails (a typo, a bad duration, a wrong
/// type) is reported, removed from a working copy of the document, and the
/// rest is read again. Returns the raw config when the remainder reads
/// cleanly, and the errors found on the way.
pub(super) fn deserialize(text: &str) -> (Option<RawConfig>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut doc = match text.parse::<toml_edit::DocumentMut>() {
        Ok(doc) => doc,
        Err(e) => {
            errors.push(ConfigError {
                key: String::new(),
                position: e.span().map(|s| line_col(text, s.start)),
                message: e.message().trim().to_string(),
            });
            return (None, errors);
        }
    };
    let original = text.parse::<toml_edit::ImDocument<String>>().ok();
    let mut current = text.to_string();
    for _ in 0..64 {
        let e = match serde_path_to_error::deserialize(toml::Deserializer::new(&current)) {
            Ok(raw) => return (Some(raw), errors),
            Err(e) => e,
        };
        let segs = owned_segments(e.path());
        let key = path_string(e.path());
        let inner = e.into_inner();
        let message = inner.message().trim().to_string();
        // A required key that is missing because an earlier error removed
        // it: already reported, and nothing more can be read safely.
        let cascade = message.starts_with("missing field")
            && errors.iter().any(|r: &ConfigError| r.key.starts_with(&key));
        if !cascade {
            let unknown_key = message.starts_with("unknown field");
            let position = original
                .as_ref()
                .and_then(|d| locate(d, &segs, unknown_key))
                .map(|offset| line_col(text, offset))
                .or_else(|| {
                    // Only the first pass reads the original text.
                    (errors.is_empty())
                        .then(|| inner.span().map(|s| line_col(text, s.start)))
                        .flatten()
                });
            errors.push(ConfigError {
                key,
                position,
                message,
            });
        }
        if cascade || !remove(&mut doc, &segs) {
            return (None, errors);
        }
        current = doc.to_string();
    }
    (None, errors)
}

fn owned_segments(path: &serde_path_to_error::Path) -> Vec<OwnedSeg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|seg| match seg {
            Segment::Seq { index } => Some(OwnedSeg::Index(*index)),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                Some(OwnedSeg::Key(key.clone()))
            }
            Segment::Unknown => None,
        })
        .collect()
}

#[derive(Debug, Clone)]
enum OwnedSeg {
    Key(String),
    Index(usize),
}

/// Removes the key at `segs` (never an array element, whose removal would
/// renumber its siblings). Returns whether something was removed.
fn remove(doc: &mut toml_edit::DocumentMut, segs: &[OwnedSeg]) -> bool {
    let Some((OwnedSeg::Key(last), parents)) = segs.split_last() else {
        return false;
    };
    let mut item: &mut toml_edit::Item = doc.as_item_mut();
    for seg in parents {
        let next = match seg {
            OwnedSeg::Key(k) => item.get_mut(k.as_str()),
            OwnedSeg::Index(i) => item.get_mut(*i),
        };
        match next {
            Some(n) => item = n,
            None => return false,
        }
    }
    if let Some(t) = item.as_table_like_mut() {
        t.remove(last).is_some()
    } else {
        false
    }
}

/// Byte offset of the key or value at `segs` in `doc`.
/// With `at_key`, the position of the last key itself (for unknown keys);
/// otherwise that of its value.
fn locate(doc: &toml_edit::ImDocument<String>, segs: &[OwnedSeg], at_key: bool) -> Option<usize> {
    let mut item: &toml_edit::Item = doc.as_item();
    let mut found = None;
    for (i, seg) in segs.iter().enumerate() {
        if let (OwnedSeg::Key(k), true) = (seg, at_key && i + 1 == segs.len()) {
            if let Some(t) = item.as_table_like() {
                if let Some((key, _)) = t.get_key_value(k) {
                    if let Some(span) = key.span() {
                        return Some(span.start);
                    }
                }
            }
        }
        item = match seg {
            OwnedSeg::Key(k) => item.get(k.as_str())?,
            OwnedSeg::Index(i) => item.get(*i)?,
        };
        found = item
            .span()
            .or_else(|| item.as_value().and_then(|v| v.span()))
            .map(|s| s.start)
            .or(found);
    }
    found
}

fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    if out == "?" {
        out.clear();
    }
    out
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// One step of a key path.
#[derive(Clone)]
pub(super) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

impl Validator<'_> {
    pub(super) fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        let mut key = String::new();
        for seg in path {
            match seg {
                Seg::Key(k) => {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(k);
                }
                Seg::Index(i) => key.push_str(&format!("[{i}]")),
            }
        }
        let segs: Vec<OwnedSeg> = path
            .iter()
            .map(|seg| match seg {
                Seg::Key(k) => OwnedSeg::Key((*k).to_string()),
                Seg::Index(i) => OwnedSeg::Index(*i),
            })
            .collect();
        let position = self
            .doc
            .as_ref()
            .and_then(|d| locate(d, &segs, false))
            .map(|offset| line_col(self.text, offset));
        self.errors.push(ConfigError {
            key,
            position,
            message: message.into(),
        });
    }
}
