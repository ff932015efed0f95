//! A route's traffic rules: `allow` / `deny`, `redirect`, `max_body_bytes`,
//! `rewrite`, `strip_prefix`, `upstream_host`, `request_headers` and
//! `response_headers`. Their raw TOML shapes, their checks, and the forms the
//! request path applies: regexes are compiled and header values split into
//! [`Template`]s here, once, so a request only fills variables in.
//!
//! Where each rule runs on a request is `crate::proxy`'s business; the
//! values here are pure functions of a path, a header map and [`Vars`].

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use super::observe::Cidr;
use super::raw::RawRoute;
use super::{Seg, Validator};

/// `rewrite = { pattern, to }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRewrite {
    pub pattern: String,
    pub to: String,
}

/// `redirect = { to, status }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedirect {
    pub to: String,
    #[serde(default = "permanent")]
    pub status: u16,
}

fn permanent() -> u16 {
    308
}

/// `request_headers` / `response_headers = { set, add, remove }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderEdits {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A route's rules, compiled. Present on a route only when it has at least
/// one, so a route without rules pays one `Option` check per request.
#[derive(Debug, Clone)]
pub struct RouteRules {
    /// Client networks let in; empty = everyone not denied.
    pub(crate) allow: Box<[Cidr]>,
    /// Client networks refused (403), checked before `allow`.
    pub(crate) deny: Box<[Cidr]>,
    /// Answer with a redirect instead of forwarding.
    pub(crate) redirect: Option<Redirect>,
    /// The request body limit on this route, in place of the listener's.
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) rewrite: Option<Rewrite>,
    /// Removed from the front of the (rewritten) path, at a `/` boundary.
    pub(crate) strip_prefix: Option<Box<str>>,
    /// The `Host` sent upstream in place of the client's.
    pub(crate) upstream_host: Option<HeaderValue>,
    pub(crate) request_headers: HeaderEdits,
    pub(crate) response_headers: HeaderEdits,
}

impl RouteRules {
    /// Whether the client at `ip` may use the route: not in `deny`, and in
    /// `allow` when that list is given.
    pub(crate) fn admits(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
    }

    /// The path and query after `rewrite` then `strip_prefix`, or `None`
    /// when neither changed them.
    pub(crate) fn upstream_path(&self, path: &str, query: Option<&str>) -> Option<String> {
        let rewritten = self
            .rewrite
            .as_ref()
            .and_then(|r| r.apply(path, query))
            .filter(|new| split_query(new) != (path, query));
        let Some(prefix) = &self.strip_prefix else {
            return rewritten;
        };
        let (p, q) = match &rewritten {
            Some(new) => split_query(new),
            None => (path, query),
        };
        match strip(prefix, p) {
            Some(rest) => Some(join(rest, q)),
            None => rewritten,
        }
    }
}

fn split_query(pq: &str) -> (&str, Option<&str>) {
    match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    }
}

fn join(path: &str, query: Option<&str>) -> String {
    let slash = !path.starts_with('/');
    let mut out = String::with_capacity(path.len() + 2 + query.map_or(0, str::len));
    if slash {
        out.push('/');
    }
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `path` without `prefix`, when it starts with it at a segment boundary:
/// `/api` strips `/api` and `/api/x` but not `/apiary`; `/api/` strips
/// `/api/x` (to `/x`).
fn strip<'p>(prefix: &str, path: &'p str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    (prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// `redirect`: the status and the `Location` template.
#[derive(Debug, Clone)]
pub(crate) struct Redirect {
    pub(crate) status: StatusCode,
    pub(crate) to: Template,
}

/// `rewrite`: when `pattern` matches the path, the path becomes `to` with
/// `$1`, `${name}`... replaced by the captures (as nginx's `rewrite`).
#[derive(Debug, Clone)]
pub(crate) struct Rewrite {
    regex: regex::Regex,
    to: Box<str>,
    /// `to` has a `?`: it sets the query, and the client's is dropped.
    sets_query: bool,
}

impl Rewrite {
    /// Compiles `pattern` and checks that `to` names only its groups.
    /// The error says which of the two is wrong.
    fn compile(pattern: &str, to: &str) -> Result<Rewrite, (&'static str, String)> {
        let regex = regex::RegexBuilder::new(pattern)
            .build()
            .map_err(|e| ("pattern", regex_error(&e)))?;
        if !(to.starts_with('/') || to.starts_with('$')) {
            return Err((
                "to",
                "must start with \"/\" (or a capture such as $1)".into(),
            ));
        }
        if let Some(c) = to.chars().find(|c| !c.is_ascii_graphic() || *c == '#') {
            return Err((
                "to",
                format!("{c:?} cannot be in a path; percent-encode it"),
            ));
        }
        check_captures(&regex, to).map_err(|why| ("to", why))?;
        Ok(Rewrite {
            sets_query: to.contains('?'),
            regex,
            to: to.into(),
        })
    }

    /// The new path and query when the pattern matches `path`.
    pub(crate) fn apply(&self, path: &str, query: Option<&str>) -> Option<String> {
        let caps = self.regex.captures(path)?;
        let mut out = String::with_capacity(self.to.len() + path.len());
        caps.expand(&self.to, &mut out);
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        if let (false, Some(q)) = (self.sets_query, query) {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }

    pub(crate) fn pattern(&self) -> &str {
        self.regex.as_str()
    }

    pub(crate) fn to(&self) -> &str {
        &self.to
    }
}

/// The regex crate's message without its caret diagram: its last line.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid")
        .trim();
    format!(
        "not a valid regular expression: {}",
        last.strip_prefix("error: ").unwrap_or(last)
    )
}

/// Every `$N`, `${N}`, `$name` and `${name}` in `to` names a group of
/// `regex` (the regex crate expands an unknown one to nothing, silently;
/// `$1a` is the group named `1a`, a classic slip).
fn check_captures(regex: &regex::Regex, to: &str) -> Result<(), String> {
    let mut rest = to;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            rest = after;
            continue;
        }
        let (name, braced) = match rest.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], true),
                None => return Err("\"${\" without its closing \"}\"".into()),
            },
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], false)
            }
        };
        if name.is_empty() {
            return Err("a \"$\" names no capture group; write \"$$\" for a dollar sign".into());
        }
        let known = match name.parse::<usize>() {
            Ok(n) => n < regex.captures_len(),
            Err(_) => regex.capture_names().flatten().any(|n| n == name),
        };
        if !known {
            let groups = regex.captures_len() - 1;
            let mut why =
                format!("${name} names no capture group of the pattern (it has {groups})");
            let digits = name.bytes().take_while(u8::is_ascii_digit).count();
            if !braced && digits > 0 && digits < name.len() {
                why.push_str(&format!(
                    "; write ${{{}}}{} for group {} followed by text",
                    &name[..digits],
                    &name[digits..],
                    &name[..digits]
                ));
            }
            return Err(why);
        }
        rest = &rest[name.len() + if braced { 2 } else { 0 }..];
    }
    Ok(())
}

/// Header edits, applied in this order: `remove`, then `set` (replacing
/// any value), then `add` (one more field line).
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderEdits {
    pub(crate) remove: Box<[HeaderName]>,
    pub(crate) set: Box<[(HeaderName, Template)]>,
    pub(crate) add: Box<[(HeaderName, Template)]>,
}

impl HeaderEdits {
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub(crate) fn apply(&self, head: &mut HeaderMap, vars: &Vars<'_>) {
        for name in &*self.remove {
            head.remove(name);
        }
        for (name, value) in &*self.set {
            if let Some(v) = value.expand(vars) {
                head.insert(name.clone(), v);
            }
        }
        for (name, value) in &*self.add {
            if let Some(v) = value.expand(vars) {
                head.append(name.clone(), v);
            }
        }
    }
}

/// What a [`Template`]'s variables stand for on one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vars<'a> {
    /// `$request_id`.
    pub(crate) request_id: &'a [u8],
    /// `$client`: the client's address, without port.
    pub(crate) client: IpAddr,
    /// `$host`: the host the client asked for, lower-case, without port.
    pub(crate) host: &'a str,
    /// `$request_uri`: path and query as routed (normalised, before
    /// `rewrite` and `strip_prefix`).
    pub(crate) request_uri: &'a str,
    /// `$scheme`: `https` on a TLS listener, else `http`.
    pub(crate) https: bool,
}

/// A variable a header value or redirect target may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    RequestId,
    Client,
    Host,
    RequestUri,
    Scheme,
}

impl Var {
    const ALL: [(&'static str, Var); 5] = [
        ("request_id", Var::RequestId),
        ("client", Var::Client),
        ("host", Var::Host),
        ("request_uri", Var::RequestUri),
        ("scheme", Var::Scheme),
    ];

    fn named(name: &str) -> Option<Var> {
        Var::ALL.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// A header value or redirect target, split at its variables once at load.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    source: Box<str>,
    form: Form,
}

#[derive(Debug, Clone)]
enum Form {
    /// No variable: the value as is, shared, never copied.
    Literal(HeaderValue),
    Parts(Box<[Part]>),
}

#[derive(Debug, Clone)]
enum Part {
    Text(Box<str>),
    Var(Var),
}

impl Template {
    /// Splits `text` at `$name` and `${name}` (`$$` is a dollar sign).
    /// Text between variables must be valid in a header field value.
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                literal.push('$');
                rest = after;
                continue;
            }
            let (name, len) = match rest.strip_prefix('{') {
                Some(inner) => {
                    let end = inner.find('}').ok_or("\"${\" without its closing \"}\"")?;
                    (&inner[..end], end + 2)
                }
                None => {
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    (&rest[..end], end)
                }
            };
            let var = Var::named(name).ok_or_else(|| {
                format!(
                    "unknown variable \"${name}\"; use $request_id, $client, $host, \
                     $request_uri or $scheme (and $$ for a dollar sign)"
                )
            })?;
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal).into()));
            }
            parts.push(Part::Var(var));
            rest = &rest[len..];
        }
        literal.push_str(rest);
        let bad = |c: char| !(c == ' ' || c == '\t' || c.is_ascii_graphic());
        if let Some(c) = text.chars().find(|c| bad(*c)) {
            return Err(format!(
                "{c:?} cannot be in a header value (visible ASCII, spaces and tabs only)"
            ));
        }
        let form = if parts.is_empty() {
            Form::Literal(HeaderValue::from_str(&literal).map_err(|e| e.to_string())?)
        } else {
            if !literal.is_empty() {
                parts.push(Part::Text(literal.into()));
            }
            Form::Parts(parts.into())
        };
        Ok(Template {
            source: text.into(),
            form,
        })
    }

    /// The value on one request; `None` only if a variable's value cannot
    /// be in a header (never for the values sluice fills in).
    pub(crate) fn expand(&self, vars: &Vars<'_>) -> Option<HeaderValue> {
        let parts = match &self.form {
            Form::Literal(v) => return Some(v.clone()),
            Form::Parts(parts) => parts,
        };
        let mut out = Vec::with_capacity(self.source.len() + 32);
        for part in &**parts {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Var(Var::RequestId) => out.extend_from_slice(vars.request_id),
                Part::Var(Var::Client) => {
                    let _ = write!(out, "{}", vars.client.to_canonical());
                }
                Part::Var(Var::Host) => out.extend_from_slice(vars.host.as_bytes()),
                Part::Var(Var::RequestUri) => out.extend_from_slice(vars.request_uri.as_bytes()),
                Part::Var(Var::Scheme) => {
                    out.extend_from_slice(if vars.https { b"https" } else { b"http" })
                }
            }
        }
        HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
    }

    /// As written in the config.
    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }
}

/// Fields a header rule may not touch: framing and connection fields
/// (changing them desynchronises the two sides of the proxy), and `Host`
/// (`upstream_host` says what is sent).
const UNTOUCHABLE: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

impl Validator<'_> {
    /// Route `i`'s rules, or `None` when it has none.
    pub(super) fn route_rules(&mut self, i: usize, r: &RawRoute) -> Option<Arc<RouteRules>> {
        let at = |k| [Seg::Key("route"), Seg::Index(i), Seg::Key(k)];
        let allow = self.networks(i, "allow", r.allow.as_deref());
        let deny = self.networks(i, "deny", r.deny.as_deref());
        let redirect = r.redirect.as_ref().and_then(|raw| {
            let status = match raw.status {
                301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(raw.status).ok(),
                other => {
                    self.error(
                        &[
                            Seg::Key("route"),
                            Seg::Index(i),
                            Seg::Key("redirect"),
                            Seg::Key("status"),
                        ],
                        format!("{other} is not a redirect status; use 301, 302, 303, 307 or 308"),
                    );
                    None
                }
            };
            let at_to = [
                Seg::Key("route"),
                Seg::Index(i),
                Seg::Key("redirect"),
                Seg::Key("to"),
            ];
            let to = if raw.to.trim().is_empty() {
                self.error(
                    &at_to,
                    "must name where to send the client, such as \"https://example.com$request_uri\"",
                );
                None
            } else {
                self.template(&at_to, &raw.to)
            };
            Some(Redirect {
                status: status?,
                to: to?,
            })
        });
        if r.redirect.is_some() {
            // The keys that shape the upstream request: a redirect route
            // sends none.
            let forwarding = [
                ("rewrite", r.rewrite.is_some()),
                ("strip_prefix", r.strip_prefix.is_some()),
                ("upstream_host", r.upstream_host.is_some()),
                ("request_headers", r.request_headers.is_some()),
                ("max_body_bytes", r.max_body_bytes.is_some()),
                ("cache", r.cache),
                ("compress", r.compress),
                ("strip_request_headers", r.strip_request_headers.is_some()),
            ];
            for (key, _) in forwarding.into_iter().filter(|(_, present)| *present) {
                self.error(
                    &at(key),
                    format!("a redirect route sends nothing upstream, so `{key}` has no effect; remove it"),
                );
            }
        }
        let rewrite = r.rewrite.as_ref().and_then(|raw| {
            Rewrite::compile(&raw.pattern, &raw.to)
                .map_err(|(key, why)| {
                    self.error(
                        &[
                            Seg::Key("route"),
                            Seg::Index(i),
                            Seg::Key("rewrite"),
                            Seg::Key(key),
                        ],
                        why,
                    )
                })
                .ok()
        });
        let strip_prefix = r.strip_prefix.as_deref().and_then(|p| {
            if p.starts_with('/') && p.len() > 1 && p.bytes().all(|b| b.is_ascii_graphic()) {
                Some(p.into())
            } else {
                self.error(
                    &at("strip_prefix"),
                    "must start with \"/\" and name at least one path segment, such as \"/api\"",
                );
                None
            }
        });
        let upstream_host = r.upstream_host.as_deref().and_then(|h| {
            let ok = h.parse::<http::uri::Authority>().ok().filter(|a| {
                !a.as_str().contains('@') && !a.host().is_empty()
            });
            match ok.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                Some(v) => Some(v),
                None => {
                    self.error(
                        &at("upstream_host"),
                        format!("\"{h}\" is not a host such as \"api.internal\" or \"api.internal:8080\""),
                    );
                    None
                }
            }
        });
        let request_headers = self.header_edits(i, "request_headers", r.request_headers.as_ref());
        let response_headers =
            self.header_edits(i, "response_headers", r.response_headers.as_ref());
        let none = allow.is_empty()
            && deny.is_empty()
            && r.redirect.is_none()
            && r.max_body_bytes.is_none()
            && rewrite.is_none()
            && strip_prefix.is_none()
            && upstream_host.is_none()
            && request_headers.is_empty()
            && response_headers.is_empty();
        (!none).then(|| {
            Arc::new(RouteRules {
                allow,
                deny,
                redirect,
                max_body_bytes: r.max_body_bytes,
                rewrite,
                strip_prefix,
                upstream_host,
                request_headers,
                response_headers,
            })
        })
    }

    /// `allow` or `deny`: networks such as `10.0.0.0/8` or single addresses.
    fn networks(&mut self, route: usize, key: &str, list: Option<&[String]>) -> Box<[Cidr]> {
        let Some(list) = list else {
            return Box::default();
        };
        if list.is_empty() {
            self.error(
                &[Seg::Key("route"), Seg::Index(route), Seg::Key(key)],
                "an empty list has no effect here; remove the key",
            );
        }
        let mut out = Vec::with_capacity(list.len());
        for (j, text) in list.iter().enumerate() {
            match Cidr::parse(text) {
                Ok(c) => out.push(c),
                Err(why) => self.error(
                    &[
                        Seg::Key("route"),
                        Seg::Index(route),
                        Seg::Key(key),
                        Seg::Index(j),
                    ],
                    why,
                ),
            }
        }
        out.into()
    }

    /// A field name a header rule may change.
    fn edit_name(&mut self, at: &[Seg], name: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if h == http::header::HOST => {
                self.error(at, "Host cannot be changed here; use upstream_host");
                None
            }
            Ok(h) if UNTOUCHABLE.contains(&h.as_str()) => {
                self.error(
                    at,
                    format!("{h} is sluice's to manage (message framing and connection handling)"),
                );
                None
            }
            Ok(h) => Some(h),
            Err(_) => {
                self.error(at, format!("\"{name}\" is not a valid header name"));
                None
            }
        }
    }

    fn template(&mut self, at: &[Seg], text: &str) -> Option<Template> {
        match Template::parse(text) {
            Ok(t) => Some(t),
            Err(why) => {
                self.error(at, why);
                None
            }
        }
    }

    /// `request_headers` or `response_headers`.
    fn header_edits(
        &mut self,
        route: usize,
        key: &str,
        raw: Option<&RawHeaderEdits>,
    ) -> HeaderEdits {
        let Some(raw) = raw else {
            return HeaderEdits::default();
        };
        let mut remove = Vec::new();
        for (j, name) in raw.remove.iter().enumerate() {
            let at = [
                Seg::Key("route"),
                Seg::Index(route),
                Seg::Key(key),
                Seg::Key("remove"),
                Seg::Index(j),
            ];
            if let Some(h) = self.edit_name(&at, name) {
                if !remove.contains(&h) {
                    remove.push(h);
                }
            }
        }
        let mut lists: [Vec<(HeaderName, Template)>; 2] = [Vec::new(), Vec::new()];
        for (op, map, out) in [("set", &raw.set, 0), ("add", &raw.add, 1)] {
            for (name, value) in map {
                let at = [
                    Seg::Key("route"),
                    Seg::Index(route),
                    Seg::Key(key),
                    Seg::Key(op),
                    Seg::Key(name),
                ];
                let Some(h) = self.edit_name(&at, name) else {
                    continue;
                };
                if let Some(t) = self.template(&at, value) {
                    lists[out].push((h, t));
                }
            }
        }
        let [set, add] = lists;
        HeaderEdits {
            remove: remove.into(),
            set: set.into(),
            add: add.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn vars() -> Vars<'static> {
        Vars {
            request_id: b"abc-123",
            client: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            host: "example.com",
            request_uri: "/a/b?c=d",
            https: true,
        }
    }

    fn expand(text: &str) -> String {
        let t = Template::parse(text).expect("valid template");
        let v = t.expand(&vars()).expect("valid value");
        v.to_str().expect("ascii").to_string()
    }

    #[test]
    fn variables_are_filled_in() {
        assert_eq!(
            expand("https://example.com$request_uri"),
            "https://example.com/a/b?c=d"
        );
        assert_eq!(expand("$scheme://$host/x"), "https://example.com/x");
        assert_eq!(
            expand("id=$request_id;for=$client"),
            "id=abc-123;for=10.1.2.3"
        );
        assert_eq!(expand("${host}name"), "example.comname");
        assert_eq!(expand("costs $$5"), "costs $5");
    }

    #[test]
    fn a_value_without_variables_is_shared_not_copied() {
        let t = Template::parse("max-age=31536000").expect("valid");
        let a = t.expand(&vars()).expect("value");
        let b = t.expand(&vars()).expect("value");
        assert_eq!(a, "max-age=31536000");
        // The same bytes, not a copy: both point at the template's value.
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
    }

    #[test]
    fn unknown_variables_and_bad_bytes_are_errors() {
        let e = Template::parse("$hostname").unwrap_err();
        assert!(e.contains("unknown variable \"$hostname\""), "{e}");
        assert!(Template::parse("$").is_err());
        assert!(Template::parse("${host").is_err());
        assert!(Template::parse("a\nb").is_err());
        assert!(Template::parse("caf\u{e9}").is_err());
    }

    fn rewrite(pattern: &str, to: &str) -> Rewrite {
        Rewrite::compile(pattern, to).expect("valid rewrite")
    }

    #[test]
    fn rewrite_replaces_the_path_and_keeps_the_query() {
        let r = rewrite("^/old/(.*)$", "/new/$1");
        assert_eq!(
            r.apply("/old/a/b", Some("x=1")).as_deref(),
            Some("/new/a/b?x=1")
        );
        assert_eq!(r.apply("/old/", None).as_deref(), Some("/new/"));
        assert_eq!(r.apply("/other", Some("x=1")), None);
        let named = rewrite("^/u/(?P<id>[0-9]+)$", "/users/${id}/profile");
        assert_eq!(
            named.apply("/u/42", None).as_deref(),
            Some("/users/42/profile")
        );
    }

    #[test]
    fn a_query_in_the_replacement_replaces_the_clients() {
        let r = rewrite("^/search/(.*)$", "/find?q=$1");
        assert_eq!(
            r.apply("/search/cats", Some("page=2")).as_deref(),
            Some("/find?q=cats")
        );
    }

    #[test]
    fn rewrite_errors_name_their_key() {
        assert_eq!(
            Rewrite::compile("^/(unclosed", "/x").unwrap_err().0,
            "pattern"
        );
        let (key, why) = Rewrite::compile("^/(a)$", "/$2").unwrap_err();
        assert_eq!(key, "to");
        assert!(why.contains("it has 1"), "{why}");
        let (_, why) = Rewrite::compile("^/(a)$", "/$1a").unwrap_err();
        assert!(why.contains("${1}a"), "{why}");
        assert!(Rewrite::compile("^/(a)$", "/${1}a").is_ok());
        assert_eq!(Rewrite::compile("^/(a)$", "x$1").unwrap_err().0, "to");
        assert_eq!(Rewrite::compile("^/(a)$", "/a b").unwrap_err().0, "to");
    }

    fn rules(rewrite: Option<Rewrite>, strip_prefix: Option<&str>) -> RouteRules {
        RouteRules {
            allow: Box::default(),
            deny: Box::default(),
            redirect: None,
            max_body_bytes: None,
            rewrite,
            strip_prefix: strip_prefix.map(Into::into),
            upstream_host: None,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
        }
    }

    #[test]
    fn strip_prefix_cuts_at_segment_boundaries() {
        let r = rules(None, Some("/api"));
        assert_eq!(
            r.upstream_path("/api/v1/x", Some("q=1")).as_deref(),
            Some("/v1/x?q=1")
        );
        assert_eq!(r.upstream_path("/api", None).as_deref(), Some("/"));
        assert_eq!(r.upstream_path("/apiary", None), None);
        assert_eq!(r.upstream_path("/other", None), None);
        let slash = rules(None, Some("/api/"));
        assert_eq!(slash.upstream_path("/api/v1", None).as_deref(), Some("/v1"));
    }

    #[test]
    fn rewrite_runs_before_strip_prefix() {
        let r = rules(Some(rewrite("^/old/(.*)$", "/api/new/$1")), Some("/api"));
        assert_eq!(
            r.upstream_path("/old/x", Some("q")).as_deref(),
            Some("/new/x?q")
        );
        // A rewrite to the same path is no change.
        let same = rules(Some(rewrite("^/(.*)$", "/$1")), None);
        assert_eq!(same.upstream_path("/x", Some("q")), None);
    }

    #[test]
    fn deny_wins_over_allow() {
        let mut r = rules(None, None);
        r.allow = vec![Cidr::parse("10.0.0.0/8").unwrap()].into();
        r.deny = vec![Cidr::parse("10.0.0.1").unwrap()].into();
        assert!(r.admits("10.2.3.4".parse().unwrap()));
        assert!(!r.admits("10.0.0.1".parse().unwrap()));
        assert!(!r.admits("192.168.0.1".parse().unwrap()));
        assert!(r.admits("::ffff:10.9.9.9".parse().unwrap()));
    }

    #[test]
    fn header_edits_remove_then_set_then_add() {
        let edits = HeaderEdits {
            remove: vec![HeaderName::from_static("server")].into(),
            set: vec![(
                HeaderName::from_static("x-env"),
                Template::parse("prod-$request_id").unwrap(),
            )]
            .into(),
            add: vec![(
                HeaderName::from_static("x-env"),
                Template::parse("extra").unwrap(),
            )]
            .into(),
        };
        let mut head = HeaderMap::new();
        head.insert("server", HeaderValue::from_static("origin"));
        head.insert("x-env", HeaderValue::from_static("client"));
        edits.apply(&mut head, &vars());
        assert!(!head.contains_key("server"));
        let values: Vec<_> = head.get_all("x-env").iter().collect();
        assert_eq!(values, ["prod-abc-123", "extra"]);
    }

    const ISSUE_EXAMPLE: &str = r#"
[[listener]]
name = "http"
listen = "127.0.0.1:8080"

[[route]]
path_prefix = "/api/"
pool = "api"
strip_prefix = "/api"
rewrite = { pattern = "^/old/(.*)$", to = "/new/$1" }
upstream_host = "api.internal"
request_headers = { set = { "X-Env" = "prod" }, remove = ["X-Debug"] }
response_headers = { set = { "Strict-Transport-Security" = "max-age=31536000" }, add = { }, remove = ["Server"] }
allow = ["10.0.0.0/8"]
max_body_bytes = "10MiB"

[[route]]
hosts = ["example.com"]
redirect = { to = "https://example.com$request_uri", status = 308 }

[[route]]
pool = "api"

[pool.api]
servers = [ { addr = "127.0.0.1:9001" } ]
"#;

    #[test]
    fn the_issue_example_parses() {
        use crate::config::tests::parse;
        let c = parse(ISSUE_EXAMPLE).expect("valid");
        let api = c.routes[0].rules.as_deref().expect("rules");
        assert_eq!(api.max_body_bytes, Some(10 << 20));
        assert_eq!(api.strip_prefix.as_deref(), Some("/api"));
        assert_eq!(
            api.upstream_host.as_ref().map(|h| h.as_bytes()),
            Some(&b"api.internal"[..])
        );
        assert_eq!(api.request_headers.remove.len(), 1);
        assert_eq!(api.response_headers.set.len(), 1);
        let redirect = c.routes[1]
            .rules
            .as_deref()
            .and_then(|r| r.redirect.as_ref());
        assert_eq!(redirect.map(|r| r.status.as_u16()), Some(308));
        assert_eq!(c.routes[1].pool, None);
        // A route without rules carries none.
        assert!(c.routes[2].rules.is_none());
        // The effective config reads back the same.
        let again = parse(&crate::config::effective_toml(&c)).expect("effective config parses");
        assert_eq!(
            crate::config::effective_toml(&again),
            crate::config::effective_toml(&c)
        );
    }

    #[test]
    fn every_rule_mistake_names_its_key() {
        use crate::config::tests::parse;
        let bad = ISSUE_EXAMPLE
            .replace("^/old/(.*)$", "^/old/(.*$")
            .replace("status = 308", "status = 200")
            .replace(
                "hosts = [\"example.com\"]",
                "hosts = [\"example.com\"]\npool = \"api\"",
            )
            .replace("10.0.0.0/8", "10.0.0.0/33")
            .replace(
                "\"X-Env\" = \"prod\"",
                "\"X Env\" = \"prod\", \"Host\" = \"x\", \"X-Id\" = \"$nope\"",
            )
            .replace(
                "upstream_host = \"api.internal\"",
                "upstream_host = \"http://api.internal/\"",
            );
        let e = parse(&bad).unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "route[0].rewrite.pattern",
                "route[0].upstream_host",
                "route[0].request_headers.set.X Env",
                "route[0].request_headers.set.Host",
                "route[0].request_headers.set.X-Id",
                "route[0].allow[0]",
                "route[1].pool",
                "route[1].redirect.status",
            ],
            "{e}"
        );
        assert!(e.errors.iter().all(|e| e.position.is_some()), "{e}");
        let no_pool = ISSUE_EXAMPLE.replace(
            "[[route]]\npool = \"api\"\n",
            "[[route]]\npath_prefix = \"/x/\"\n",
        );
        let e = parse(&no_pool).unwrap_err();
        assert_eq!(e.errors[0].key, "route[2]", "{e}");
        assert!(e.errors[0].message.contains("`pool` is required"), "{e}");
        let forwarding = ISSUE_EXAMPLE.replace(
            "status = 308 }",
            "status = 308 }\nstrip_prefix = \"/a\"\ncache = true",
        );
        let e = parse(&forwarding).unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["route[1].strip_prefix", "route[1].cache"], "{e}");
        let empty = ISSUE_EXAMPLE.replace("https://example.com$request_uri", " ");
        let e = parse(&empty).unwrap_err();
        assert_eq!(e.errors[0].key, "route[1].redirect.to", "{e}");
    }
}
