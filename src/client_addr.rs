//! The real client address behind trusted forwarders (`trusted_forwarders`
//! on a listener), read from `X-Forwarded-For` as nginx's realip module
//! does with `real_ip_recursive on`.
//!
//! Each proxy on the way appends the address it received the request from,
//! so the list reads client first, nearest hop last; only the entries added
//! by proxies we trust can be believed. The algorithm: start from the peer
//! (which the caller has found trusted); walk the entries from the right;
//! skip those that are trusted forwarders too; the first that is not is
//! the client. When every entry is trusted, the leftmost one is. An entry
//! that is not an address (or a field that is not text) ends the walk at
//! the last trusted address seen: nothing to its left can be believed.
//!
//! An untrusted peer's `X-Forwarded-For` is never read.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use crate::config::Cidr;

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The client behind `peer`, a trusted forwarder, given the request's
/// `X-Forwarded-For` fields (all of them, in order, as one list).
pub(crate) fn behind(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let mut client = peer.to_canonical();
    for field in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = field.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = address(entry) else {
                return client;
            };
            client = ip;
            if !trusted.iter().any(|net| net.contains(ip)) {
                return ip;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an IPv4 or IPv6 address, bare, in
/// brackets, or with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|ip| IpAddr::V6(ip).to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| Cidr::parse(c).unwrap()).collect()
    }

    fn client(fields: &[&str], trusted: &[&str]) -> String {
        let mut h = HeaderMap::new();
        for f in fields {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(f).unwrap());
        }
        behind("10.0.0.1".parse().unwrap(), &h, &nets(trusted)).to_string()
    }

    #[test]
    fn rightmost_untrusted_entry_is_the_client() {
        let t = &["10.0.0.0/8"];
        assert_eq!(client(&[], t), "10.0.0.1");
        assert_eq!(client(&["192.0.2.7"], t), "192.0.2.7");
        // A client's own claim to the left of the real address is ignored.
        assert_eq!(client(&["6.6.6.6, 192.0.2.7"], t), "192.0.2.7");
        // Trusted hops on the right are skipped.
        assert_eq!(
            client(&["6.6.6.6, 192.0.2.7, 10.1.1.1, 10.2.2.2"], t),
            "192.0.2.7"
        );
        // Several fields are one list, in order.
        assert_eq!(client(&["6.6.6.6, 192.0.2.7", "10.1.1.1"], t), "192.0.2.7");
        assert_eq!(client(&["192.0.2.7", "198.51.100.1"], t), "198.51.100.1");
    }

    #[test]
    fn all_trusted_means_the_leftmost() {
        assert_eq!(client(&["10.9.9.9, 10.8.8.8"], &["10.0.0.0/8"]), "10.9.9.9");
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_address() {
        let t = &["10.0.0.0/8"];
        assert_eq!(client(&["192.0.2.7, unknown"], t), "10.0.0.1");
        assert_eq!(client(&["192.0.2.7, nonsense, 10.3.3.3"], t), "10.3.3.3");
        assert_eq!(client(&["192.0.2.7,, 10.3.3.3"], t), "192.0.2.7");
    }

    #[test]
    fn entries_with_ports_brackets_and_mapped_addresses() {
        let t = &["10.0.0.0/8", "2001:db8::/32"];
        assert_eq!(client(&["192.0.2.7:4711"], t), "192.0.2.7");
        assert_eq!(client(&["[2001:db9::1]:4711"], t), "2001:db9::1");
        assert_eq!(client(&["2001:db9::1, [2001:db8::5]"], t), "2001:db9::1");
        assert_eq!(client(&["::ffff:192.0.2.7"], t), "192.0.2.7");
        // A mapped trusted address is trusted.
        assert_eq!(client(&["192.0.2.7, ::ffff:10.1.1.1"], t), "192.0.2.7");
    }
}
