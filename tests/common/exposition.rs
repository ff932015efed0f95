//! A parser for the Prometheus text exposition format, strict like a
//! scraper, and scrapes of a daemon's `/metrics` through it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{get, PATIENCE};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

pub fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        t => t.parse().map_err(|_| format!("bad value {t:?}")),
    }
}

/// Parses `{a="b",c="d"}` at the start of `text`; returns the labels and
/// the rest of the line.
pub fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').ok_or("no {")?;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("unquoted label value")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, c) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = &rest[end + 1..];
    }
}

/// Parses the text exposition format 0.0.4, checking what a Prometheus
/// scraper checks: comment syntax, one TYPE per family before its samples,
/// metric and label names, values, histogram bucket order and `+Inf`.
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(fail(format!("unknown type {kind}")));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(fail("second TYPE line".into()));
                    }
                    if samples
                        .iter()
                        .any(|s: &Sample| family(&s.name, &types) == name)
                    {
                        return Err(fail("TYPE after samples".into()));
                    }
                }
                (Some("HELP"), Some(name), _) if valid_name(name) => {}
                _ => return Err(fail("bad comment".into())),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| fail("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(fail("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(fail)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value =
            parse_value(fields.next().ok_or_else(|| fail("no value".into()))?).map_err(fail)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| fail("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(fail("trailing text".into()));
        }
        if !types.contains_key(family(name, &types)) {
            return Err(fail("sample without a TYPE line".into()));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

/// The family a sample belongs to (`x_bucket` belongs to histogram `x`).
pub fn family<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    name
}

pub fn check_histograms(
    samples: &[Sample],
    types: &BTreeMap<String, String>,
) -> Result<(), String> {
    for (name, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let bucket = format!("{name}_bucket");
        let count = format!("{name}_count");
        for c in samples.iter().filter(|s| s.name == count) {
            let mut series: Vec<(f64, f64)> = samples
                .iter()
                .filter(|s| s.name == bucket)
                .filter(|s| {
                    let mut l = s.labels.clone();
                    l.remove("le");
                    l == c.labels
                })
                .map(|s| (parse_value(&s.labels["le"]).unwrap(), s.value))
                .collect();
            series.sort_by(|a, b| a.0.total_cmp(&b.0));
            if series.last().map(|b| b.0) != Some(f64::INFINITY) {
                return Err(format!("{name}{:?}: no +Inf bucket", c.labels));
            }
            if series.windows(2).any(|w| w[0].1 > w[1].1) {
                return Err(format!("{name}{:?}: buckets not cumulative", c.labels));
            }
            if series.last().unwrap().1 != c.value {
                return Err(format!("{name}{:?}: +Inf bucket != count", c.labels));
            }
        }
    }
    Ok(())
}

/// The samples of `name` whose labels include `labels`.
pub fn matching<'a>(
    samples: &'a [Sample],
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Sample> {
    samples.iter().filter(move |s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// The value of the sample `name` whose labels include `labels`
/// (0 when there is none; it must be unique otherwise).
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = matching(samples, name, labels).collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().map_or(0.0, |s| s.value)
}

/// Sum over every sample of `name` whose labels include `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(samples, name, labels).map(|s| s.value).sum()
}

pub async fn scrape(admin: SocketAddr) -> (String, Vec<Sample>) {
    let r = get(admin, "/metrics").await;
    assert_eq!(r.status, 200, "{r:?}");
    let text = r.text();
    let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (text, samples)
}

/// Scrapes until `done` holds (requests are counted when their response
/// body ends, a moment after the client has it), then returns the scrape.
pub async fn scrape_until(
    admin: SocketAddr,
    done: impl Fn(&[Sample]) -> bool,
) -> (String, Vec<Sample>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (text, samples) = scrape(admin).await;
        if done(&samples) || Instant::now() > deadline {
            return (text, samples);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
