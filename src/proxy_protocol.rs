//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2):
//! an L4 balancer in front of sluice, or sluice in front of an upstream,
//! names the original client in a header sent before anything else on the
//! connection.
//!
//! [`parse`] is a pure, bounded parser that can be fed a growing prefix of
//! the connection; [`read`] drives it over a socket without ever consuming
//! a byte past the header (what follows is TLS or HTTP, read by others).
//! [`encode`] writes the header sluice sends upstream.
//!
//! Bounds: a v1 line is at most [`V1_MAX`] bytes including its CRLF (the
//! spec's own limit); a v2 header at most [`V2_MAX`] bytes, addresses and
//! TLVs included (TLVs are skipped, never interpreted).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest v1 line, `PROXY TCP6 <ipv6> <ipv6> <port> <port>\r\n`.
pub const V1_MAX: usize = 107;
/// The longest v2 header accepted: its 16 fixed bytes plus addresses and
/// TLVs. Real senders (HAProxy, cloud balancers) stay far below it.
pub const V2_MAX: usize = 2048;
/// What every v2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

/// What a PROXY header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The original client and the address it connected to; `None` for a
    /// v2 LOCAL command, a v1 `UNKNOWN` line, or a family without IP
    /// addresses: the connection's own peer is then the client.
    pub addresses: Option<Addresses>,
}

/// Source and destination of the proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// How far [`parse`] got with the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Every byte so far belongs to a header that is not complete yet.
    Partial,
    /// A complete header of `len` bytes; anything after it is not ours.
    Complete { header: Header, len: usize },
}

/// Why a connection's header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the connection does not start with a PROXY header")]
    Missing,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("PROXY header longer than allowed")]
    TooLong,
}

/// Why [`read`] did not produce a header.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("connection closed before the PROXY header was complete")]
    Closed,
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] io::Error),
}

impl ReadError {
    /// The `reason` label of `sluice_proxy_protocol_rejected_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ReadError::Header(HeaderError::Missing) => "missing",
            ReadError::Header(HeaderError::Malformed(_)) => "malformed",
            ReadError::Header(HeaderError::TooLong) => "too_long",
            ReadError::Closed | ReadError::Io(_) => "closed",
        }
    }
}

/// Parses the start of a connection: a complete v1 or v2 header, or
/// [`Parsed::Partial`] when `buf` is a proper prefix of one. Never looks
/// further than [`V2_MAX`] bytes.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    if starts_like(buf, &V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if starts_like(buf, V1_PREFIX) {
        return parse_v1(buf);
    }
    Err(HeaderError::Missing)
}

/// Whether `buf` and `prefix` agree on their common length.
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

/// `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` or
/// `PROXY UNKNOWN[ anything]\r\n`, single spaces, at most [`V1_MAX`] bytes.
fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(HeaderError::TooLong)
        } else {
            Ok(Parsed::Partial)
        };
    };
    let len = lf + 1;
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(HeaderError::Malformed("v1 line does not end in CRLF"))?;
    let line = &line[V1_PREFIX.len().min(line.len())..];
    let text =
        std::str::from_utf8(line).map_err(|_| HeaderError::Malformed("v1 line is not text"))?;
    let mut fields = text.split(' ');
    let v6 = match fields.next() {
        Some("UNKNOWN") => {
            return Ok(Parsed::Complete {
                header: Header { addresses: None },
                len,
            })
        }
        Some("TCP4") => false,
        Some("TCP6") => true,
        _ => {
            return Err(HeaderError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let mut next = || {
        fields
            .next()
            .ok_or(HeaderError::Malformed("v1 line is short"))
    };
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(HeaderError::Malformed("v1 line has extra fields"));
    }
    let ip = |s: &str| -> Result<IpAddr, HeaderError> {
        let bad = HeaderError::Malformed("v1 address does not match its protocol");
        if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| bad)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| bad)
        }
    };
    let source = SocketAddr::new(ip(src)?, v1_port(sport)?);
    let destination = SocketAddr::new(ip(dst)?, v1_port(dport)?);
    Ok(Parsed::Complete {
        header: Header {
            addresses: Some(Addresses {
                source,
                destination,
            }),
        },
        len,
    })
}

/// A port as v1 spells it: 1 to 5 decimal digits, at most 65535 (no sign,
/// which `u16::from_str` would allow).
fn v1_port(s: &str) -> Result<u16, HeaderError> {
    let bad = HeaderError::Malformed("v1 port is not a number from 0 to 65535");
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

/// The binary header: signature, version and command, family and
/// transport, length, then the addresses and TLVs.
fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let [.., ver_cmd, fam, hi, lo] = match buf.get(..16) {
        Some(fixed) => <[u8; 16]>::try_from(fixed).map_err(|_| HeaderError::TooLong)?,
        None => return Ok(Parsed::Partial),
    };
    if ver_cmd >> 4 != 2 {
        return Err(HeaderError::Malformed("v2 version is not 2"));
    }
    let len = 16 + usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX {
        return Err(HeaderError::TooLong);
    }
    let Some(body) = buf.get(16..len) else {
        return Ok(Parsed::Partial);
    };
    if fam & 0x0f > 2 {
        return Err(HeaderError::Malformed(
            "v2 transport is not UNSPEC, STREAM or DGRAM",
        ));
    }
    let addresses = match (ver_cmd & 0x0f, fam >> 4) {
        // LOCAL: a health check or the like from the balancer itself; the
        // address block, whatever it holds, is ignored.
        (0, _) => None,
        // PROXY over AF_UNSPEC or AF_UNIX: nothing with an IP address.
        (1, 0) => None,
        (1, 3) if body.len() >= 216 => None,
        (1, 1) if body.len() >= 12 => {
            let ip = |at: usize| Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]);
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Some(Addresses {
                source: SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                destination: SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
            })
        }
        (1, 2) if body.len() >= 36 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Some(Addresses {
                source: SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                destination: SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
            })
        }
        (1, 1..=3) => {
            return Err(HeaderError::Malformed(
                "v2 length too short for its address family",
            ))
        }
        (1, _) => return Err(HeaderError::Malformed("v2 address family is unknown")),
        _ => return Err(HeaderError::Malformed("v2 command is not LOCAL or PROXY")),
    };
    Ok(Parsed::Complete {
        header: Header { addresses },
        len,
    })
}

/// Reads the PROXY header that starts `stream`, leaving every byte after
/// it unread. Bytes are peeked first and only those known to belong to
/// the header are consumed, so a header that arrives with the first TLS or
/// HTTP bytes costs one peek and one read. The caller bounds the time.
pub(crate) async fn read(stream: &mut TcpStream) -> Result<Header, ReadError> {
    let mut buf = vec![0u8; V2_MAX];
    // Bytes already consumed (all of them header).
    let mut have = 0;
    loop {
        let Some(room) = buf.get_mut(have..).filter(|r| !r.is_empty()) else {
            return Err(HeaderError::TooLong.into());
        };
        let n = stream.peek(room).await?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        let seen = have + n;
        match parse(&buf[..seen])? {
            Parsed::Complete { header, len } => {
                stream.read_exact(&mut buf[have..len]).await?;
                return Ok(header);
            }
            Parsed::Partial => {
                // Consumed so that the next peek waits for new bytes.
                stream.read_exact(&mut buf[have..seen]).await?;
                have = seen;
            }
        }
    }
}

/// Which header [`encode`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A PROXY header (command PROXY, TCP) for a connection from `source` to
/// `destination`. The two must share a family: when they do not, both
/// are written as IPv6 (IPv4-mapped).
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (src, dst) = match (source.ip().to_canonical(), destination.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (s, d) => (IpAddr::V6(mapped(s)), IpAddr::V6(mapped(d))),
    };
    let (sport, dport) = (source.port(), destination.port());
    match version {
        Version::V1 => {
            let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {proto} {src} {dst} {sport} {dport}\r\n").into_bytes()
        }
        Version::V2 => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(0x11); // AF_INET, STREAM
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.push(0x21); // AF_INET6, STREAM
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&mapped(s).octets());
                    out.extend_from_slice(&mapped(d).octets());
                }
            }
            out.extend_from_slice(&sport.to_be_bytes());
            out.extend_from_slice(&dport.to_be_bytes());
            out
        }
    }
}

/// The header of a connection sluice makes on its own behalf (a health
/// check): v1 `UNKNOWN`, v2 `LOCAL`; the receiver uses the TCP peer.
pub(crate) fn local(version: Version) -> &'static [u8] {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n",
        Version::V2 => b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
    }
}

fn mapped(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(src: &str, dst: &str) -> Option<Addresses> {
        Some(Addresses {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        })
    }

    fn complete(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1_lines_that_parse() {
        let cases: &[(&str, Option<Addresses>)] = &[
            (
                "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
                addrs("192.0.2.1:56324", "198.51.100.2:443"),
            ),
            (
                "PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n",
                addrs("[2001:db8::1]:0", "[2001:db8::2]:65535"),
            ),
            ("PROXY UNKNOWN\r\n", None),
            ("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
        ];
        for (line, want) in cases {
            let mut buf = line.as_bytes().to_vec();
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let (header, len) = complete(&buf);
            assert_eq!(header.addresses, *want, "{line}");
            assert_eq!(len, line.len(), "{line}");
        }
    }

    #[test]
    fn v1_lines_that_are_refused() {
        let malformed = [
            "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n",
            "PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
            "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 9\r\n",
            "PROXY TCP4 192.0.2.1  198.51.100.2 56324 443\r\n",
            "PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            "PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
            "PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            "PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
            "PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",
            "PROXY TCP4 192.0.2.256 198.51.100.2 1 443\r\n",
            "PROXY UDP4 192.0.2.1 198.51.100.2 1 443\r\n",
            "PROXY \r\n",
            "PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
        ];
        for line in malformed {
            assert!(
                matches!(parse(line.as_bytes()), Err(HeaderError::Malformed(_))),
                "{line:?}: {:?}",
                parse(line.as_bytes())
            );
        }
        assert_eq!(
            parse(b"PROXY TCP4 \xff\r\n"),
            Err(HeaderError::Malformed("v1 line is not text"))
        );
    }

    #[test]
    fn v1_is_bounded_at_107_bytes() {
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 16));
        assert_eq!(long.len(), V1_MAX);
        assert_eq!(complete(long.as_bytes()).1, V1_MAX);
        let over = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 15));
        assert_eq!(parse(over.as_bytes()), Err(HeaderError::TooLong));
        // No line end in sight after 107 bytes: refused without more input.
        let endless = format!("PROXY UNKNOWN {}", "x".repeat(200));
        assert_eq!(parse(endless.as_bytes()), Err(HeaderError::TooLong));
    }

    #[test]
    fn every_prefix_of_a_header_is_partial() {
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec();
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        let v2 = v2(0x21, 0x11, &body);
        for header in [v1, v2] {
            for n in 0..header.len() {
                assert_eq!(parse(&header[..n]), Ok(Parsed::Partial), "{n}");
            }
            let (h, len) = complete(&header);
            assert_eq!(len, header.len());
            assert_eq!(h.addresses, addrs("192.0.2.1:56324", "198.51.100.2:443"));
        }
    }

    #[test]
    fn anything_else_is_missing() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01",
            b"PROXX",
            b"\r\n\r\n\0\r\nQUIX",
        ] {
            assert_eq!(parse(start), Err(HeaderError::Missing), "{start:?}");
        }
    }

    #[test]
    fn v2_headers_that_parse() {
        let mut v6 = Vec::new();
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0x1f, 0x90, 0x01, 0xbb]);
        let mut v4_tlv = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 0, 81];
        // A TLV (PP2_TYPE_AUTHORITY), skipped.
        v4_tlv.extend_from_slice(&[0x02, 0x00, 0x03, b'a', b'.', b'b']);
        let cases: Vec<(Vec<u8>, Option<Addresses>)> = vec![
            (
                v2(0x21, 0x21, &v6),
                addrs("[2001:db8::1]:8080", "[2001:db8::2]:443"),
            ),
            (v2(0x21, 0x11, &v4_tlv), addrs("10.0.0.1:80", "10.0.0.2:81")),
            // LOCAL: addresses ignored, even when present.
            (v2(0x20, 0x11, &v4_tlv), None),
            (v2(0x20, 0x00, &[]), None),
            (v2(0x21, 0x00, &[]), None),
            (v2(0x21, 0x31, &[0; 216]), None),
        ];
        for (buf, want) in cases {
            let mut with_rest = buf.clone();
            with_rest.extend_from_slice(b"\x16\x03\x01");
            let (header, len) = complete(&with_rest);
            assert_eq!(header.addresses, want, "{buf:?}");
            assert_eq!(len, buf.len());
        }
    }

    #[test]
    fn v2_headers_that_are_refused() {
        let v4 = [10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 0, 81];
        let cases = [
            (v2(0x11, 0x11, &v4), "v2 version is not 2"),
            (v2(0x22, 0x11, &v4), "v2 command is not LOCAL or PROXY"),
            (v2(0x21, 0x41, &v4), "v2 address family is unknown"),
            (
                v2(0x21, 0x13, &v4),
                "v2 transport is not UNSPEC, STREAM or DGRAM",
            ),
            (
                v2(0x21, 0x11, &v4[..11]),
                "v2 length too short for its address family",
            ),
            (
                v2(0x21, 0x21, &[0; 35]),
                "v2 length too short for its address family",
            ),
            (
                v2(0x21, 0x31, &[0; 100]),
                "v2 length too short for its address family",
            ),
        ];
        for (buf, why) in cases {
            assert_eq!(parse(&buf), Err(HeaderError::Malformed(why)), "{buf:?}");
        }
    }

    #[test]
    fn v2_is_bounded() {
        let at_cap = v2(0x21, 0x11, &vec![0; V2_MAX - 16]);
        assert_eq!(complete(&at_cap).1, V2_MAX);
        // Refused from the fixed part alone, before the rest arrives.
        let over = v2(0x21, 0x11, &vec![0; V2_MAX - 15]);
        assert_eq!(parse(&over[..16]), Err(HeaderError::TooLong));
        let max = v2(0x21, 0x11, &vec![0; 65535]);
        assert_eq!(parse(&max[..16]), Err(HeaderError::TooLong));
    }

    #[test]
    fn encoded_headers_parse_back() {
        let pairs = [
            ("192.0.2.1:4000", "198.51.100.2:443"),
            ("[2001:db8::1]:4000", "[2001:db8::2]:443"),
            ("[::ffff:192.0.2.1]:4000", "198.51.100.2:443"),
        ];
        for (src, dst) in pairs {
            let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            for version in [Version::V1, Version::V2] {
                let buf = encode(version, s, d);
                let (header, len) = complete(&buf);
                assert_eq!(len, buf.len());
                let got = header.addresses.unwrap();
                assert_eq!(got.source.ip().to_canonical(), s.ip().to_canonical());
                assert_eq!(got.source.port(), s.port());
                assert_eq!(got.destination.ip().to_canonical(), d.ip().to_canonical());
                assert_eq!(got.destination.port(), d.port());
            }
        }
        for version in [Version::V1, Version::V2] {
            let buf = local(version);
            assert_eq!(complete(buf), (Header { addresses: None }, buf.len()));
        }
        // Mixed families: both written as IPv6.
        let mixed = encode(
            Version::V1,
            "[2001:db8::1]:1".parse().unwrap(),
            "192.0.2.1:2".parse().unwrap(),
        );
        assert_eq!(mixed, b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 1 2\r\n");
    }
}
