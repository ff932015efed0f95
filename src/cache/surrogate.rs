//! `Surrogate-Control` (W3C Edge Architecture Specification 1.0): an origin
//! speaks to the caches in front of it without touching the Cache-Control
//! meant for browsers. sluice announces itself upstream with
//! `Surrogate-Capability: sluice="Surrogate/1.0"`; directives without a
//! target or targeted `;sluice` apply, and override Cache-Control for
//! storing and freshness. The field never reaches clients.

use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");
pub(crate) static SURROGATE_CAPABILITY: HeaderName =
    HeaderName::from_static("surrogate-capability");

/// This cache's device token.
pub(crate) const TARGET: &str = "sluice";

/// The request field announcing what sluice understands.
pub(crate) fn capability() -> HeaderValue {
    HeaderValue::from_static("sluice=\"Surrogate/1.0\"")
}

/// The directives that apply to sluice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SurrogateControl {
    pub no_store: bool,
    /// Seconds, clamped like delta-seconds (RFC 9111 §1.2.2).
    pub max_age: Option<u64>,
}

const DELTA_MAX: u64 = 2_147_483_648;

impl SurrogateControl {
    /// `None` when no directive applies to sluice.
    pub(crate) fn parse(headers: &HeaderMap) -> Option<SurrogateControl> {
        let mut out = SurrogateControl::default();
        let mut any = false;
        for value in headers.get_all(&SURROGATE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for item in text.split(',') {
                let (directive, target) = match item.split_once(';') {
                    Some((d, t)) => (d.trim(), Some(t.trim())),
                    None => (item.trim(), None),
                };
                if target.is_some_and(|t| !t.eq_ignore_ascii_case(TARGET)) {
                    continue;
                }
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n, Some(a)),
                    None => (directive, None),
                };
                // No whitespace around '=': "max-age =1" is not max-age.
                if name.eq_ignore_ascii_case("no-store") && arg.is_none() {
                    out.no_store = true;
                    any = true;
                } else if name.eq_ignore_ascii_case("max-age") && out.max_age.is_none() {
                    let Some(arg) =
                        arg.filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
                    else {
                        continue;
                    };
                    out.max_age = Some(arg.parse::<u64>().unwrap_or(DELTA_MAX).min(DELTA_MAX));
                    any = true;
                }
            }
        }
        any.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(v: &str) -> Option<SurrogateControl> {
        let mut h = HeaderMap::new();
        h.insert(&SURROGATE_CONTROL, HeaderValue::from_str(v).unwrap());
        SurrogateControl::parse(&h)
    }

    #[test]
    fn edge_arch_max_age_and_no_store() {
        assert_eq!(sc("max-age=60").unwrap().max_age, Some(60));
        assert_eq!(sc("MaX-aGe=60").unwrap().max_age, Some(60));
        assert_eq!(sc("foobar, max-age=60").unwrap().max_age, Some(60));
        assert!(sc("no-store").unwrap().no_store);
        assert_eq!(sc("max-age=99999999999").unwrap().max_age, Some(DELTA_MAX));
        assert_eq!(sc("max-age =60"), None);
        assert_eq!(sc("max-age= 60"), None);
        assert_eq!(sc("foo"), None);
    }

    #[test]
    fn edge_arch_targets() {
        assert_eq!(sc("max-age=60;sluice").unwrap().max_age, Some(60));
        assert_eq!(sc("max-age=60;other"), None);
        let both = sc("max-age=5;other, max-age=60;sluice").unwrap();
        assert_eq!(both.max_age, Some(60));
    }
}
