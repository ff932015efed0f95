//! `Accept-Encoding` (RFC 9110 §12.5.3): which content coding a client
//! takes, with q-values, `*` and `identity;q=0`.

use http::{header, HeaderMap};

use crate::config::Coding;

/// A client's `Accept-Encoding`, parsed once per request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accepted {
    /// Present at all: without the field any coding is acceptable, but
    /// sending one unasked is unkind, so sluice then sends identity.
    present: bool,
    /// q-values (0..=1000) of the codings sluice knows, by `Coding::ALL`.
    codings: [Option<u16>; 3],
    identity: Option<u16>,
    star: Option<u16>,
}

/// q in thousandths.
fn parse_q(params: &str) -> Option<u16> {
    let mut q = 1000;
    for p in params.split(';') {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        q = parse_qvalue(value.trim())?;
    }
    Some(q)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`.
fn parse_qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

impl Accepted {
    pub fn parse(headers: &HeaderMap) -> Accepted {
        let mut out = Accepted::default();
        for value in headers.get_all(header::ACCEPT_ENCODING) {
            out.present = true;
            let Ok(text) = value.to_str() else { continue };
            for item in text.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                let (token, params) = item.split_once(';').unwrap_or((item, ""));
                let token = token.trim();
                // An unparseable q makes the item meaningless: skip it.
                let Some(q) = parse_q(params) else { continue };
                let slot = if token == "*" {
                    &mut out.star
                } else if token.eq_ignore_ascii_case("identity") {
                    &mut out.identity
                } else if let Some(c) = Coding::parse(token) {
                    &mut out.codings[index(c)]
                } else {
                    continue;
                };
                // The first mention of a coding counts.
                slot.get_or_insert(q);
            }
        }
        out
    }

    /// The q-value of `coding` (an explicit entry, else `*`, else 0).
    pub fn q(&self, coding: Coding) -> u16 {
        self.codings[index(coding)].or(self.star).unwrap_or(0)
    }

    /// Whether the client takes `coding` at all.
    pub fn accepts(&self, coding: Coding) -> bool {
        self.present && self.q(coding) > 0
    }

    /// The coding to send: the acceptable one with the highest q, ties
    /// broken by `preference`; `None` for identity (no field, nothing
    /// acceptable, or identity explicitly preferred).
    pub fn choose(&self, preference: &[Coding]) -> Option<Coding> {
        if !self.present {
            return None;
        }
        let mut best: Option<(Coding, u16)> = None;
        for &c in preference {
            let q = self.q(c);
            if q > 0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((c, q));
            }
        }
        let (coding, q) = best?;
        // Identity wins only when the client ranks it strictly higher.
        match self.identity {
            Some(iq) if iq > q => None,
            _ => Some(coding),
        }
    }
}

fn index(c: Coding) -> usize {
    match c {
        Coding::Br => 0,
        Coding::Zstd => 1,
        Coding::Gzip => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const PREF: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

    fn ae(v: &str) -> Accepted {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        Accepted::parse(&h)
    }

    #[test]
    fn s12_5_3_preference_breaks_ties() {
        assert_eq!(
            ae("gzip, deflate, br, zstd").choose(&PREF),
            Some(Coding::Br)
        );
        assert_eq!(ae("gzip, deflate").choose(&PREF), Some(Coding::Gzip));
        assert_eq!(
            ae("gzip, br").choose(&[Coding::Gzip, Coding::Br]),
            Some(Coding::Gzip)
        );
    }

    #[test]
    fn s12_5_3_q_values_rank() {
        assert_eq!(ae("br;q=0.5, gzip;q=0.8").choose(&PREF), Some(Coding::Gzip));
        assert_eq!(ae("br;q=0, gzip").choose(&PREF), Some(Coding::Gzip));
        assert_eq!(ae("br;q=0.001").choose(&PREF), Some(Coding::Br));
        assert_eq!(ae("br;q=0").choose(&PREF), None);
        assert_eq!(
            ae("gzip;q=1.5").choose(&PREF),
            None,
            "invalid q ignores the item"
        );
    }

    #[test]
    fn s12_5_3_star_and_identity() {
        assert_eq!(ae("*").choose(&PREF), Some(Coding::Br));
        assert_eq!(ae("*;q=0.5, gzip").choose(&PREF), Some(Coding::Gzip));
        assert_eq!(ae("*;q=0").choose(&PREF), None);
        assert_eq!(ae("identity;q=0, gzip").choose(&PREF), Some(Coding::Gzip));
        assert_eq!(ae("identity, gzip;q=0.5").choose(&PREF), None);
        assert_eq!(ae("identity").choose(&PREF), None);
        assert_eq!(ae("").choose(&PREF), None);
        assert_eq!(Accepted::parse(&HeaderMap::new()).choose(&PREF), None);
    }

    #[test]
    fn case_and_whitespace_do_not_matter() {
        assert_eq!(
            ae(" GZIP ; Q=0.9 ,BR;q=0.1").choose(&PREF),
            Some(Coding::Gzip)
        );
        assert!(ae("x-gzip").accepts(Coding::Gzip));
        assert!(!ae("gzip").accepts(Coding::Br));
    }
}
