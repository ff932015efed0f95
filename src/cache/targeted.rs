//! RFC 9213 targeted cache control: a field such as `CDN-Cache-Control`
//! that speaks to caches of one kind, over `Cache-Control` and `Expires`.
//!
//! The operator lists the fields this cache obeys, in precedence order
//! (`[cache] targeted_fields`, default `["CDN-Cache-Control"]`). The first
//! listed field present with a valid, non-empty value (an RFC 8941
//! Dictionary; an invalid one is ignored, §2.1) sets this cache's policy
//! for the response: its directives mean what they mean in Cache-Control,
//! and `Cache-Control` and `Expires` are then ignored by this cache (they
//! still reach the client untouched, as do the targeted fields, for the
//! caches further down).

use http::{HeaderMap, HeaderName};

use crate::headers::cache_control::CacheControl;
use crate::headers::grammar::DELTA_SECONDS_MAX;

/// This cache's directives from the first of `fields` with a valid,
/// non-empty value; `None` when no listed field applies.
pub(crate) fn directives(head: &HeaderMap, fields: &[HeaderName]) -> Option<CacheControl> {
    fields.iter().find_map(|name| parse(head, name))
}

fn parse(head: &HeaderMap, name: &HeaderName) -> Option<CacheControl> {
    // Several lines form one field value (RFC 9110 §5.3).
    let mut value = Vec::new();
    for (i, line) in head.get_all(name).iter().enumerate() {
        if i > 0 {
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(line.as_bytes());
    }
    let dict: sfv::Dictionary = sfv::Parser::new(&value).parse().ok()?;
    if dict.is_empty() {
        return None;
    }
    let mut cc = CacheControl::default();
    for (key, member) in &dict {
        // A directive with an inner list, or a value of the wrong type, is
        // ignored on its own; the rest of the field still counts.
        let sfv::ListEntry::Item(item) = member else {
            continue;
        };
        let seconds = || {
            let n = i64::from(item.bare_item.as_integer()?);
            u64::try_from(n).ok().map(|n| n.min(DELTA_SECONDS_MAX))
        };
        let set = item.bare_item.as_boolean() == Some(true);
        match key.as_str() {
            "max-age" => cc.max_age = seconds().or(cc.max_age),
            "s-maxage" => cc.s_maxage = seconds().or(cc.s_maxage),
            "stale-while-revalidate" => {
                cc.stale_while_revalidate = seconds().or(cc.stale_while_revalidate)
            }
            "stale-if-error" => cc.stale_if_error = seconds().or(cc.stale_if_error),
            "no-store" => cc.no_store |= set,
            // Qualified (`no-cache="x"`) or not, as in Cache-Control.
            "no-cache" => cc.no_cache = true,
            "private" => cc.private = true,
            "public" => cc.public |= set,
            "must-revalidate" => cc.must_revalidate |= set,
            "proxy-revalidate" => cc.proxy_revalidate |= set,
            _ => {}
        }
    }
    Some(cc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as head;

    fn cdn(fields: &[(&str, &str)]) -> Option<CacheControl> {
        directives(
            &head(fields),
            &[HeaderName::from_static("cdn-cache-control")],
        )
    }

    #[test]
    fn rfc9213_2_1_a_valid_field_gives_this_caches_directives() {
        let cc = cdn(&[("cdn-cache-control", "max-age=60, stale-if-error=30")]).unwrap();
        assert_eq!((cc.max_age, cc.stale_if_error), (Some(60), Some(30)));
        let cc = cdn(&[("cdn-cache-control", "no-store")]).unwrap();
        assert!(cc.no_store);
        let cc = cdn(&[
            ("cdn-cache-control", "private"),
            ("cdn-cache-control", "no-cache"),
        ])
        .unwrap();
        assert!(cc.private && cc.no_cache, "two lines are one field");
        let cc = cdn(&[("cdn-cache-control", "foobar, max-age=3600")]).unwrap();
        assert_eq!(cc.max_age, Some(3600), "unknown directives are ignored");
        let cc = cdn(&[("cdn-cache-control", "max-age=99999999999")]).unwrap();
        assert_eq!(cc.max_age, Some(DELTA_SECONDS_MAX));
        let cc = cdn(&[("cdn-cache-control", "max-age=\"60\"")]).unwrap();
        assert_eq!(cc.max_age, None, "a string is not a number of seconds");
    }

    #[test]
    fn rfc9213_2_1_an_invalid_or_absent_field_is_ignored() {
        for bad in [
            "max-age=60, &&&",
            "MaX-aGe=60",
            "max-age =60",
            "max-age= 60",
            "",
        ] {
            assert_eq!(cdn(&[("cdn-cache-control", bad)]), None, "{bad:?}");
        }
        assert_eq!(cdn(&[("cache-control", "max-age=60")]), None);
    }

    #[test]
    fn the_first_listed_field_that_applies_wins() {
        let fields = [
            HeaderName::from_static("sluice-cache-control"),
            HeaderName::from_static("cdn-cache-control"),
        ];
        let both = head(&[
            ("cdn-cache-control", "max-age=10"),
            ("sluice-cache-control", "max-age=20"),
        ]);
        assert_eq!(directives(&both, &fields).unwrap().max_age, Some(20));
        let invalid_first = head(&[
            ("cdn-cache-control", "max-age=10"),
            ("sluice-cache-control", "max-age=&"),
        ]);
        assert_eq!(
            directives(&invalid_first, &fields).unwrap().max_age,
            Some(10)
        );
    }
}
