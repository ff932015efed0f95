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
            e.write_line(f, &self.file, "")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// `file:line:col: {tag}key: message` (no position or key when unknown).
    pub(super) fn write_line(
        &self,
        out: &mut impl fmt::Write,
        file: &std::path::Path,
        tag: &str,
    ) -> fmt::Result {
        write!(out, "{}", file.display())?;
        if let Some((line, col)) = self.position {
            write!(out, ":{line}:{col}")?;
        }
        write!(out, ": {tag}")?;
        if !self.key.is_empty() {
            write!(out, "{}: ", self.key)?;
        }
        out.write_str(&self.message)
    }
}

/// Deserializes the raw config, collecting every key-level error rather than
/// stopping at the first: a key that fails (a typo, a bad duration, a wrong
/// type) is reported, removed from a working copy of the document, and the
/// rest is read again. Returns the raw config when the remainder reads
/// cleanly, the errors found on the way, and the text that was read (the
/// file with out-of-range numbers blanked, see [`blank_bad_numbers`]; every
/// offset in it is the file's).
pub(super) fn deserialize(text: &str) -> (Option<RawConfig>, Vec<ConfigError>, String) {
    let (read, blanked) = blank_bad_numbers(text);
    let mut errors = Vec::new();
    let mut doc = match read.parse::<toml_edit::DocumentMut>() {
        Ok(doc) => doc,
        Err(e) => {
            errors.push(ConfigError {
                key: String::new(),
                position: e.span().map(|s| line_col(text, s.start)),
                message: e.message().trim().to_string(),
            });
            return (None, errors, read);
        }
    };
    let original = read.parse::<toml_edit::ImDocument<String>>().ok();
    // Blanked numbers were reported with their keys; the keys go, so that
    // their stand-ins are not read as values.
    let mut pristine = true;
    for (error, segs) in blanked {
        if let Some(mut segs) = segs {
            // An array element goes with its array, keeping the others'
            // indices.
            while let Some(OwnedSeg::Index(_)) = segs.last() {
                segs.pop();
            }
            pristine &= !remove(&mut doc, &segs);
        }
        errors.push(error);
    }
    let mut current = if pristine {
        read.clone()
    } else {
        doc.to_string()
    };
    for _ in 0..64 {
        let e = match serde_path_to_error::deserialize(toml::Deserializer::new(&current)) {
            Ok(raw) => return (Some(raw), errors, read),
            Err(e) => e,
        };
        let segs = owned_segments(e.path());
        let key = path_string(e.path());
        let inner = e.into_inner();
        let message = inner.message().trim().to_string();
        // A required key that is missing because an earlier error removed
        // it: already reported, and nothing more can be read safely. A key
        // already reported (a blanked number in an array) is not reported
        // twice.
        let cascade = message.starts_with("missing field")
            && errors.iter().any(|r: &ConfigError| r.key.starts_with(&key));
        let repeated = errors.iter().any(|r| !key.is_empty() && r.key == key);
        if !cascade && !repeated {
            let unknown_key = message.starts_with("unknown field");
            let position = original
                .as_ref()
                .and_then(|d| locate(d, &segs, unknown_key))
                .map(|offset| line_col(text, offset))
                .or_else(|| {
                    // Only a pass over the file's own text has its offsets.
                    pristine
                        .then(|| inner.span().map(|s| line_col(text, s.start)))
                        .flatten()
                });
            errors.push(ConfigError {
                key,
                position,
                message: plain(&message),
            });
        }
        if cascade || !remove(&mut doc, &segs) {
            return (None, errors, read);
        }
        pristine = false;
        current = doc.to_string();
    }
    (None, errors, read)
}

/// A number TOML refused: the error, and the path of its key when found.
type Blanked = (ConfigError, Option<Vec<OwnedSeg>>);

/// The most out-of-range numbers [`blank_bad_numbers`] reports in one file.
const MAX_BAD_NUMBERS: usize = 32;

/// TOML refuses a whole document over one number it cannot represent (an
/// integer beyond 64 bits, a float such as `1e309`), and its error names no
/// key. Each such number is reported here with its key: it is blanked (`0`
/// padded with spaces, so that every offset stays the file's) and the
/// document read again, and the key is found at that offset. Returns the
/// text with every bad number blanked, and one error per number with the
/// key's path (for removal).
fn blank_bad_numbers(text: &str) -> (String, Vec<Blanked>) {
    let mut read = text.to_string();
    let mut found: Vec<(usize, String)> = Vec::new();
    while found.len() < MAX_BAD_NUMBERS {
        let Err(e) = read.parse::<toml_edit::ImDocument<String>>() else {
            break;
        };
        let Some(at) = e.span().map(|s| s.start) else {
            break;
        };
        let Some(len) = number_at(&read, at) else {
            break;
        };
        found.push((at, e.message().trim().to_string()));
        let blank = format!("0{}", " ".repeat(len - 1));
        read.replace_range(at..at + len, &blank);
    }
    if found.is_empty() {
        return (read, Vec::new());
    }
    let doc = read.parse::<toml_edit::ImDocument<String>>().ok();
    let errors = found
        .into_iter()
        .map(|(at, message)| {
            let segs = doc.as_ref().and_then(|d| {
                let mut segs = Vec::new();
                path_to(d.as_item(), at, &mut segs).then_some(segs)
            });
            let error = ConfigError {
                key: segs.as_deref().map(segs_string).unwrap_or_default(),
                position: Some(line_col(text, at)),
                message: number_message(&message),
            };
            (error, segs)
        })
        .collect();
    (read, errors)
}

/// What to say about a value TOML refused: its own words name no limit.
fn number_message(toml: &str) -> String {
    if toml.contains("float") {
        "not a finite float: TOML floats are 64-bit (at most about 1.8e308)".to_string()
    } else if toml.contains("number too") {
        "integer out of range: TOML integers are 64-bit signed (-9223372036854775808 to 9223372036854775807)".to_string()
    } else {
        toml.to_string()
    }
}

/// The length of the number-like token starting at `at` (a digit or a sign
/// first; then what a TOML number or date may hold), or `None` when there
/// is none, or it is already a blank `0`.
fn number_at(text: &str, at: usize) -> Option<usize> {
    let rest = text.get(at..)?.as_bytes();
    if !matches!(rest.first()?, b'0'..=b'9' | b'+' | b'-') {
        return None;
    }
    let len = rest
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-' | b'_')))
        .unwrap_or(rest.len());
    (&rest[..len] != b"0").then_some(len)
}

/// The path to the value whose span starts at `at`, pushed onto `segs`.
fn path_to(item: &toml_edit::Item, at: usize, segs: &mut Vec<OwnedSeg>) -> bool {
    use toml_edit::{Item, Value};
    let within = |span: Option<std::ops::Range<usize>>| span.is_some_and(|s| s.contains(&at));
    match item {
        Item::Value(Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                segs.push(OwnedSeg::Index(i));
                if within(v.span()) && path_to_value(v, at, segs) {
                    return true;
                }
                segs.pop();
            }
            false
        }
        Item::Value(v) => path_to_value(v, at, segs),
        Item::Table(t) => {
            for (k, v) in t.iter() {
                segs.push(OwnedSeg::Key(k.to_string()));
                if path_to(v, at, segs) {
                    return true;
                }
                segs.pop();
            }
            false
        }
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                segs.push(OwnedSeg::Index(i));
                for (k, v) in t.iter() {
                    segs.push(OwnedSeg::Key(k.to_string()));
                    if path_to(v, at, segs) {
                        return true;
                    }
                    segs.pop();
                }
                segs.pop();
            }
            false
        }
        Item::None => false,
    }
}

fn path_to_value(v: &toml_edit::Value, at: usize, segs: &mut Vec<OwnedSeg>) -> bool {
    use toml_edit::Value;
    match v {
        Value::Array(_) => path_to(&toml_edit::Item::Value(v.clone()), at, segs),
        Value::InlineTable(t) => {
            for (k, v) in t.iter() {
                segs.push(OwnedSeg::Key(k.to_string()));
                if path_to_value(v, at, segs) {
                    return true;
                }
                segs.pop();
            }
            false
        }
        v => v.span().is_some_and(|s| s.start == at),
    }
}

fn segs_string(segs: &[OwnedSeg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            OwnedSeg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            OwnedSeg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
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
        let e = self.located(path, message.into());
        self.errors.push(e);
    }

    /// Something that works but is probably not what was meant: printed by
    /// `--check` (which still succeeds) and logged at start and reload.
    pub(super) fn warn(&mut self, path: &[Seg], message: impl Into<String>) {
        let w = self.located(path, message.into());
        self.warnings.push(w);
    }

    fn located(&self, path: &[Seg], message: String) -> ConfigError {
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
        ConfigError {
            key,
            position,
            message,
        }
    }
}

// ---------------------------------------------------------------- wording --

/// The candidate closest to `word` when it is close enough to be a typo
/// (at most a third of its letters wrong, case aside), for "did you mean".
pub(super) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let allowed = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), *c))
        .filter(|&(d, c)| d <= allowed && d < c.len())
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// `message` with ` Did you mean "X"?` when `word` looks like a typo of one
/// of `candidates`.
pub(super) fn with_suggestion(message: String, word: &str, candidates: &[&str]) -> String {
    let Some(c) = suggest(word, candidates) else {
        return message;
    };
    match message.split_once("; use ") {
        Some((what, choices)) => format!("{what}; did you mean \"{c}\"? (use {choices})"),
        None => format!("{message}; did you mean \"{c}\"?"),
    }
}

/// Levenshtein distance, with a swap of two neighbours counting as one
/// edit (the commonest typo).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev2: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// A deserializer's message in the words of the config file: keys and
/// values rather than fields and types, what to write instead where that
/// is plain, and "did you mean" for a misspelt key.
pub(super) fn plain(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((word, expected)) = rest.split_once('`') {
            let names = backquoted(expected);
            let base = format!("unknown key \"{word}\"");
            return match suggest(word, &names) {
                Some(c) => format!("{base}; did you mean \"{c}\"?"),
                None if names.is_empty() => format!("{base}; this table takes no keys"),
                None => format!("{base}; this table takes {}", names.join(", ")),
            };
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        if let Some((word, expected)) = rest.split_once('`') {
            let names = backquoted(expected);
            return with_suggestion(
                format!("unknown value \"{word}\"; use {}", names.join(", ")),
                word,
                &names,
            );
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((word, _)) = rest.split_once('`') {
            return format!("missing key \"{word}\" (required)");
        }
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.split_once(", expected ") {
                return type_mismatch(found, expected);
            }
        }
    }
    message.to_string()
}

/// The names in `` `a`, `b` or `c` ``.
fn backquoted(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn type_mismatch(found: &str, expected: &str) -> String {
    let wanted = match expected {
        "a boolean" => "true or false",
        "a sequence" => "a list in brackets",
        "a string" => "a string in quotes",
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a map" => "a table",
        other if other.starts_with("struct ") => "a table",
        other => other,
    };
    let (kind, value) = match found.split_once(' ') {
        Some((kind, value)) => (kind, value.trim_matches('`')),
        None => (found, ""),
    };
    let seen = match kind {
        "string" => format!("the string {value}"),
        "integer" | "floating" => {
            let n = value.trim_start_matches("point ").trim_matches('`');
            format!("the number {n}")
        }
        "boolean" => value.to_string(),
        "sequence" => "a list".to_string(),
        "map" => "a table".to_string(),
        _ => found.to_string(),
    };
    let mut out = format!("expected {wanted}, found {seen}");
    // What to write instead, where it is plain.
    match (expected, kind) {
        ("a sequence", "string") => out.push_str(&format!("; write [{value}]")),
        ("a string", "integer" | "floating") => {
            let n = value.trim_start_matches("point ").trim_matches('`');
            out.push_str(&format!("; write \"{n}\""));
        }
        ("a boolean", "string") if matches!(value, "\"yes\"" | "\"on\"" | "\"1\"") => {
            out.push_str("; write true");
        }
        ("a boolean", "string") if matches!(value, "\"no\"" | "\"off\"" | "\"0\"") => {
            out.push_str("; write false");
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod wording_tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion_and_strangers_do_not() {
        let keys = ["policy", "servers", "retries", "retry_on", "max_size"];
        assert_eq!(suggest("polcy", &keys), Some("policy"));
        assert_eq!(suggest("plicy", &keys), Some("policy"));
        assert_eq!(suggest("Policy", &keys), Some("policy"));
        assert_eq!(suggest("retires", &keys), Some("retries"));
        assert_eq!(suggest("max_sise", &keys), Some("max_size"));
        assert_eq!(suggest("colour", &keys), None);
        assert_eq!(suggest("x", &keys), None);
    }

    #[test]
    fn serde_jargon_becomes_plain_words() {
        assert_eq!(
            plain("unknown field `polcy`, expected one of `policy`, `servers`"),
            "unknown key \"polcy\"; did you mean \"policy\"?"
        );
        assert_eq!(
            plain("unknown field `colour`, expected `name` or `listen`"),
            "unknown key \"colour\"; this table takes name, listen"
        );
        assert_eq!(
            plain("invalid type: string \"example.com\", expected a sequence"),
            "expected a list in brackets, found the string \"example.com\"; write [\"example.com\"]"
        );
        assert_eq!(
            plain("invalid type: string \"yes\", expected a boolean"),
            "expected true or false, found the string \"yes\"; write true"
        );
        assert_eq!(
            plain("invalid type: integer `3`, expected a string"),
            "expected a string in quotes, found the number 3; write \"3\""
        );
        assert_eq!(
            plain("invalid value: integer `-1`, expected u32"),
            "expected a whole number, 0 or more, found the number -1"
        );
        assert_eq!(
            plain("invalid type: boolean `true`, expected a byte size such as 65536"),
            "expected a byte size such as 65536, found true"
        );
        assert_eq!(
            plain("missing field `listen`"),
            "missing key \"listen\" (required)"
        );
        assert_eq!(plain("something else"), "something else");
    }
}
