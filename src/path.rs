//! Request path normalisation, applied before routing, caching and
//! forwarding (`[[listener]] path_normalization`), so that a route's
//! `path_prefix` names every spelling of the paths below it and the origin
//! is sent the same path that was routed.
//!
//! In order, on the path alone (the query is never touched):
//! 1. percent-encoded unreserved characters are decoded (RFC 3986
//!    §6.2.2.2: `%61` is `a`, `%2E` is `.`), and the hex digits of every
//!    other escape are upper-cased (§6.2.2.1: `%2f` is `%2F`), so that one
//!    resource has one spelling in cache keys too. `%2F` (`/`) and `%5C`
//!    (`\`) therefore stay encoded and never split a segment. A `%` not
//!    followed by two hex digits is not a URI (§2.1), and is refused
//!    ([`BadEscape`]) rather than guessed at;
//! 2. repeated slashes are merged (`//a` is `/a`), as nginx's
//!    `merge_slashes` and Envoy's `merge_slashes` do;
//! 3. dot segments are removed (RFC 3986 §5.2.4): `/a/./b` is `/a/b`,
//!    `/a/../b` is `/b`, and `..` never climbs above the root.
//!
//! Case is significant (RFC 3986 §6.2.2.1 leaves paths case-sensitive):
//! `/Admin/` is not `/admin/`. The result is a fixed point: normalising it
//! again changes nothing. A path that needs none of this (no `%`, no empty
//! segment, no `.` or `..` segment) is recognised in one pass and borrowed.

use std::borrow::Cow;

/// A path with a `%` that does not start a percent-encoding (RFC 3986
/// §2.1): the request is refused, as a reader could decode it either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid percent-encoding in the path")]
pub(crate) struct BadEscape;

/// `path` normalised as the module says; borrowed when already normal.
/// A path that does not start with `/` (`*`) is left alone.
pub(crate) fn normalise(path: &str) -> Result<Cow<'_, str>, BadEscape> {
    if !path.starts_with('/') || is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut out = String::with_capacity(decoded.len());
    let mut segments = decoded[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            // An empty segment (a repeated slash) is merged away; a final
            // one is the trailing slash, kept.
            "" | "." => {}
            ".." => out.truncate(out.rfind('/').unwrap_or(0)),
            s => {
                out.push('/');
                out.push_str(s);
                continue;
            }
        }
        // `/a/`, `/a/.` and `/a/b/..` all end in a slash.
        if last && !out.ends_with('/') {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// Whether `path` (starting with `/`) has nothing to normalise: no `%`, no
/// empty segment before the last, no `.` or `..` segment. One pass over the
/// bytes: a request's path is short, and the vectorised searches this took
/// before (one per segment) cost more to start than the path to read.
fn is_normal(path: &str) -> bool {
    // The segment being read: its length, and whether it is all dots.
    let mut len = 0usize;
    let mut dots = true;
    for (i, &c) in path.as_bytes().iter().enumerate() {
        match c {
            b'%' => return false,
            b'/' => {
                // The segment before this slash (none before the first).
                if i > 0 && (len == 0 || (dots && len <= 2)) {
                    return false;
                }
                len = 0;
                dots = true;
            }
            b'.' => len += 1,
            _ => {
                len += 1;
                dots = false;
            }
        }
    }
    // The last segment may be empty (a trailing slash), not `.` or `..`.
    !(dots && (len == 1 || len == 2))
}

/// RFC 3986 §2.3 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Step 1: unreserved characters decoded, other escapes upper-cased.
fn decode_unreserved(path: &str) -> Result<Cow<'_, str>, BadEscape> {
    let b = path.as_bytes();
    if memchr::memchr(b'%', b).is_none() {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut copied = 0;
    for at in memchr::memchr_iter(b'%', b) {
        let (Some(hi), Some(lo)) = (
            b.get(at + 1).copied().and_then(hex_value),
            b.get(at + 2).copied().and_then(hex_value),
        ) else {
            return Err(BadEscape);
        };
        out.push_str(&path[copied..at]);
        let byte = hi << 4 | lo;
        if is_unreserved(byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
        }
        copied = at + 3;
    }
    out.push_str(&path[copied..]);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`is_normal`] as it was first written, with a search per segment:
    /// the oracle for the one-pass version.
    fn is_normal_by_segments(path: &str) -> bool {
        let b = path.as_bytes();
        if b.contains(&b'%') {
            return false;
        }
        b.iter()
            .enumerate()
            .filter(|(_, &c)| c == b'/')
            .all(|(i, _)| {
                let rest = &b[i + 1..];
                let end = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
                let segment = &rest[..end];
                let empty_inside = segment.is_empty() && segment.len() < rest.len();
                !(empty_inside || segment == b"." || segment == b"..")
            })
    }

    #[test]
    fn the_one_pass_check_agrees_with_a_search_per_segment() {
        // Every path of up to 7 bytes after its slash, over the bytes that
        // matter: 4 + 16 + ... + 4^7 paths.
        let alphabet = [b'/', b'.', b'a', b'%'];
        let mut checked = 0;
        for len in 0..=7u32 {
            for mut k in 0..4usize.pow(len) {
                let mut path = String::from("/");
                for _ in 0..len {
                    path.push(alphabet[k % 4] as char);
                    k /= 4;
                }
                assert_eq!(is_normal(&path), is_normal_by_segments(&path), "{path:?}");
                checked += 1;
            }
        }
        assert!(checked > 20_000);
    }

    #[track_caller]
    fn n(path: &str) -> String {
        normalise(path).expect("valid").into_owned()
    }

    fn borrowed(path: &str) -> bool {
        matches!(normalise(path), Ok(Cow::Borrowed(_)))
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in [
            "/",
            "/admin/",
            "/a/b.c/d",
            "/a/.hidden/..x/...",
            "/Admin/",
            "/a/b/",
            "*",
        ] {
            assert!(borrowed(path), "{path}");
        }
        // Escapes that are already normal still come back borrowed.
        assert!(borrowed("/a%2Fb"));
    }

    #[test]
    fn rfc3986_5_2_4_dot_segments_are_removed() {
        let cases = [
            ("/x/../admin/", "/admin/"),
            ("/admin/../x", "/x"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/../../..", "/"),
            ("/..", "/"),
            ("/.", "/"),
            ("/../../a", "/a"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
        ];
        for (input, want) in cases {
            assert_eq!(n(input), want, "{input}");
        }
    }

    #[test]
    fn rfc3986_6_2_2_2_unreserved_escapes_are_decoded() {
        assert_eq!(n("/%61dmin/"), "/admin/");
        assert_eq!(n("/%41%2d%2E%5f%7E%30"), "/A-._~0");
        // A decoded dot is a dot segment like any other.
        assert_eq!(n("/a/%2e%2E/admin/"), "/admin/");
        assert_eq!(n("/a/%2e/b"), "/a/b");
    }

    #[test]
    fn rfc3986_6_2_2_1_other_escapes_stay_and_are_upper_cased() {
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%5cb/"), "/a%5Cb/");
        assert_eq!(n("/%c3%a9t%C3%A9"), "/%C3%A9t%C3%A9");
    }

    #[test]
    fn rfc3986_2_1_a_percent_that_is_no_escape_is_refused() {
        for path in ["/100%", "/%zz", "/a/%4", "/%%61", "/%g1/../x"] {
            assert_eq!(normalise(path), Err(BadEscape), "{path}");
        }
    }

    #[test]
    fn encoded_slashes_never_split_a_segment() {
        assert_eq!(n("/a/..%2F..%2Fadmin"), "/a/..%2F..%2Fadmin");
        assert_eq!(n("/a/b%2F..%2F../c"), "/a/b%2F..%2F../c");
        assert_eq!(n("/a/%2e%2e%2fadmin"), "/a/..%2Fadmin");
        assert_eq!(n("/admin%5C..%5Cx"), "/admin%5C..%5Cx");
    }

    #[test]
    fn repeated_slashes_are_merged() {
        assert_eq!(n("//admin/"), "/admin/");
        assert_eq!(n("/a///b//"), "/a/b/");
        assert_eq!(n("//"), "/");
        assert_eq!(n("/a//../b"), "/b");
    }

    #[test]
    fn case_is_significant() {
        assert_eq!(n("/Admin/"), "/Admin/");
        assert_eq!(n("/%41dmin/"), "/Admin/");
    }

    #[test]
    fn the_result_is_a_fixed_point() {
        for path in [
            "/x/../admin/",
            "//a/./b/../c//",
            "/%2e%2e/%2E/x%2f%2e%2e",
            "/a/%2e%2e%2fadmin",
            "/%25%61/%7a/..",
            "/a/b/../../../..//c/.",
        ] {
            let once = n(path);
            assert_eq!(n(&once), once, "{path}");
            assert!(borrowed(&once), "{path}");
        }
    }
}
