//! The record a second tier keeps for one key: the same bytes on disk and
//! in Redis.
//!
//! ```text
//! header (40 bytes, little-endian)
//!   magic "SLUICE\0R" | version u16 | kind u8 | 0u8 | head_len u32
//!   | body_len u64 | lifetime_ms u64 | head_crc u32 | header_crc u32
//! head (head_len bytes, checked by head_crc)
//!   key, then a response's status, times, age, Cache-Control, tags,
//!   head fields and the lengths of its body and compressed copies;
//!   or a Vary marker's names and id
//! body (body_len bytes in blocks of 64 KiB, each followed by its CRC-32)
//!   the identity body, then each compressed copy
//! ```
//!
//! Every part carries its length and checksum: a record cut short (a torn
//! write, a truncated file) or altered is refused as a whole before any of
//! it is used, and a body read as a stream is checked block by block, so a
//! bad block ends the stream with an error rather than a short body. The
//! freshness lifetime sits in the header so that a soft purge rewrites 40
//! bytes, not the record.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::cache::store::{Copies, Entry, Object};
use crate::config::Coding;
use crate::headers::cache_control::CacheControl;

const MAGIC: [u8; 8] = *b"SLUICE\0R";
const VERSION: u16 = 1;
/// Bytes of the fixed header.
pub(crate) const HEADER_LEN: usize = 40;
/// Body bytes per checksummed block.
pub(crate) const BLOCK: usize = 64 << 10;
const CRC_LEN: usize = 4;
/// A head larger than this is not a head sluice wrote.
const MAX_HEAD: u32 = 4 << 20;

/// Why a record was refused. Every one is a miss (and the record goes).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RecordError {
    #[error("the record is shorter than its lengths say")]
    Truncated,
    #[error("not a sluice record")]
    BadMagic,
    #[error("record version {0} is not one this build reads")]
    Version(u16),
    #[error("the {0} checksum does not match")]
    Checksum(&'static str),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

impl RecordError {
    /// The `reason` label of `sluice_cache_tier_errors_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            RecordError::Truncated => "truncated",
            RecordError::Checksum(_) => "checksum",
            RecordError::BadMagic | RecordError::Version(_) | RecordError::Malformed(_) => {
                "malformed"
            }
        }
    }
}

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Response,
    Vary,
}

/// The fixed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: Kind,
    pub head_len: u32,
    /// The body section's length without its block checksums.
    pub body_len: u64,
    /// The response's freshness lifetime (zero for a Vary marker).
    pub lifetime: Duration,
    pub head_crc: u32,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[10] = match self.kind {
            Kind::Response => 0,
            Kind::Vary => 1,
        };
        b[12..16].copy_from_slice(&self.head_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.body_len.to_le_bytes());
        let ms = u64::try_from(self.lifetime.as_millis()).unwrap_or(u64::MAX);
        b[24..32].copy_from_slice(&ms.to_le_bytes());
        b[32..36].copy_from_slice(&self.head_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Header, RecordError> {
        let b: &[u8; HEADER_LEN] = b
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(RecordError::Truncated)?;
        if b[..8] != MAGIC {
            return Err(RecordError::BadMagic);
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        if crc32fast::hash(&b[..36]) != u32_at(36) {
            return Err(RecordError::Checksum("header"));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        let kind = match b[10] {
            0 => Kind::Response,
            1 => Kind::Vary,
            _ => return Err(RecordError::Malformed("unknown kind")),
        };
        let head_len = u32_at(12);
        if head_len > MAX_HEAD {
            return Err(RecordError::Malformed("head too large"));
        }
        Ok(Header {
            kind,
            head_len,
            body_len: u64_at(16),
            lifetime: Duration::from_millis(u64_at(24)),
            head_crc: u32_at(32),
        })
    }

    /// Where the body section starts.
    pub(crate) fn body_offset(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.head_len)
    }

    /// The whole record's length.
    pub(crate) fn record_len(&self) -> u64 {
        self.body_offset().saturating_add(stored_len(self.body_len))
    }
}

/// Bytes a body of `len` takes with its block checksums.
pub(crate) fn stored_len(len: u64) -> u64 {
    len.saturating_add(len.div_ceil(BLOCK as u64) * CRC_LEN as u64)
}

/// A response's head as a record keeps it: the entry without its body
/// (nor its lifetime, which is in the header), and where its body and
/// copies lie in the body section.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub key: String,
    pub object: Object,
    /// The identity body's length; the copies follow it, in this order.
    pub body_len: u64,
    pub copies: Vec<(Coding, u64)>,
}

/// The whole record for `object` stored under `key`.
pub(crate) fn encode(key: &str, object: &Object) -> Vec<u8> {
    let (header, head) = encode_head(key, object);
    let mut out = Vec::with_capacity(
        usize::try_from(header.record_len()).unwrap_or(0) + HEADER_LEN + head.len(),
    );
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&head);
    if let Object::Response(e) = object {
        let mut body = BodyWriter::default();
        body.push(&e.body, &mut out);
        for coding in Coding::ALL {
            if let Some(copy) = e.copies.get(coding) {
                body.push(copy, &mut out);
            }
        }
        body.finish(&mut out);
    }
    out
}

/// The header and head of a record for `object` (its body section follows
/// them; the header's `body_len` counts the body and copies).
pub(crate) fn encode_head(key: &str, object: &Object) -> (Header, Vec<u8>) {
    encode_head_as(key, object, None)
}

/// The header and head of a record for the response `object` whose body
/// (`body_len` bytes, no copies) is written apart from the entry: a body
/// streamed to the tier. The head's length does not depend on `body_len`.
pub(crate) fn encode_streamed_head(key: &str, object: &Object, body_len: u64) -> (Header, Vec<u8>) {
    encode_head_as(key, object, Some(body_len))
}

fn encode_head_as(key: &str, object: &Object, streamed: Option<u64>) -> (Header, Vec<u8>) {
    let mut w = Writer(Vec::with_capacity(512));
    w.str(key);
    let (kind, body_len, lifetime) = match object {
        Object::Response(e) => {
            w.u16(e.status.as_u16());
            w.time(e.request_time);
            w.time(e.response_time);
            w.duration(e.initial_age);
            w.cc(&e.cc);
            w.u32(e.tags.len() as u32);
            for t in e.tags.iter() {
                w.str(t);
            }
            w.u32(e.headers.len() as u32);
            for (name, value) in &e.headers {
                w.bytes(name.as_str().as_bytes());
                w.bytes(value.as_bytes());
            }
            let len = streamed.unwrap_or(e.body.len() as u64);
            w.u64(len);
            let mut total = len;
            let copies: Vec<_> = Coding::ALL
                .into_iter()
                .filter(|_| streamed.is_none())
                .filter_map(|c| e.copies.get(c).map(|b| (c, b.len() as u64)))
                .collect();
            w.u8(copies.len() as u8);
            for (coding, len) in copies {
                w.u8(coding_tag(coding));
                w.u64(len);
                total += len;
            }
            (Kind::Response, total, e.lifetime)
        }
        Object::Vary { names, id } => {
            w.u64(*id);
            w.u32(names.len() as u32);
            for n in names.iter() {
                w.str(n.as_str());
            }
            (Kind::Vary, 0, Duration::ZERO)
        }
    };
    let head = w.0;
    let header = Header {
        kind,
        head_len: u32::try_from(head.len()).unwrap_or(u32::MAX),
        body_len,
        lifetime,
        head_crc: crc32fast::hash(&head),
    };
    (header, head)
}

/// Decodes and checks a whole record: header, head and every body block
/// (for tiers that hold records whole; the disk tier reads the parts).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn decode(bytes: &[u8]) -> Result<(String, Object), RecordError> {
    let header = Header::decode(bytes)?;
    if bytes.len() as u64 != header.record_len() {
        return Err(RecordError::Truncated);
    }
    let start = HEADER_LEN;
    let end = start + header.head_len as usize;
    let decoded = decode_head(&header, &bytes[start..end])?;
    let body = read_body(&bytes[end..], header.body_len)?;
    Ok((decoded.key.clone(), with_body(decoded, body)?))
}

/// Decodes and checks a record's head (`head` is the `head_len` bytes
/// after the header).
pub(crate) fn decode_head(header: &Header, head: &[u8]) -> Result<Decoded, RecordError> {
    if head.len() != header.head_len as usize {
        return Err(RecordError::Truncated);
    }
    if crc32fast::hash(head) != header.head_crc {
        return Err(RecordError::Checksum("head"));
    }
    let mut r = Reader { b: head, at: 0 };
    let key = r.str()?.to_string();
    let decoded = match header.kind {
        Kind::Response => {
            let status =
                StatusCode::from_u16(r.u16()?).map_err(|_| RecordError::Malformed("status"))?;
            let request_time = r.time()?;
            let response_time = r.time()?;
            let initial_age = r.duration()?;
            let cc = r.cc()?;
            let tags = (0..r.count()?)
                .map(|_| r.str().map(Box::from))
                .collect::<Result<Vec<Box<str>>, _>>()?;
            let mut headers = HeaderMap::new();
            for _ in 0..r.count()? {
                let name = HeaderName::from_bytes(r.bytes()?)
                    .map_err(|_| RecordError::Malformed("field name"))?;
                let value = HeaderValue::from_bytes(r.bytes()?)
                    .map_err(|_| RecordError::Malformed("field value"))?;
                headers.append(name, value);
            }
            let body_len = r.u64()?;
            let mut copies = Vec::new();
            for _ in 0..r.u8()? {
                let coding = coding_of(r.u8()?)?;
                copies.push((coding, r.u64()?));
            }
            let total = copies
                .iter()
                .try_fold(body_len, |sum, (_, n)| sum.checked_add(*n));
            if total != Some(header.body_len) {
                return Err(RecordError::Malformed("body lengths"));
            }
            Decoded {
                key,
                object: Object::Response(Entry {
                    status,
                    headers,
                    body: Bytes::new(),
                    request_time,
                    response_time,
                    initial_age,
                    lifetime: header.lifetime,
                    cc,
                    tags: tags.into(),
                    copies: Copies::default(),
                    hit_head: Default::default(),
                }),
                body_len,
                copies,
            }
        }
        Kind::Vary => {
            let id = r.u64()?;
            let names = (0..r.count()?)
                .map(|_| {
                    HeaderName::from_bytes(r.str()?.as_bytes())
                        .map_err(|_| RecordError::Malformed("vary name"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if header.body_len != 0 {
                return Err(RecordError::Malformed("a Vary marker has no body"));
            }
            Decoded {
                key,
                object: Object::Vary {
                    names: names.into(),
                    id,
                },
                body_len: 0,
                copies: Vec::new(),
            }
        }
    };
    if r.at != head.len() {
        return Err(RecordError::Malformed("trailing bytes in the head"));
    }
    Ok(decoded)
}

/// The decoded head's object with its body section (body and copies) put
/// in.
pub(crate) fn with_body(decoded: Decoded, section: Bytes) -> Result<Object, RecordError> {
    let Object::Response(mut entry) = decoded.object else {
        return Ok(decoded.object);
    };
    let mut at = usize::try_from(decoded.body_len).map_err(|_| RecordError::Truncated)?;
    entry.body = section
        .get(..at)
        .map(|_| section.slice(..at))
        .ok_or(RecordError::Truncated)?;
    for (coding, len) in decoded.copies {
        let len = usize::try_from(len).map_err(|_| RecordError::Truncated)?;
        let end = at.checked_add(len).ok_or(RecordError::Truncated)?;
        if end > section.len() {
            return Err(RecordError::Truncated);
        }
        entry.copies.set(coding, section.slice(at..end));
        at = end;
    }
    Ok(Object::Response(entry))
}

/// The body section of `len` bytes from its stored form (blocks with their
/// checksums), every block checked.
pub(crate) fn read_body(stored: &[u8], len: u64) -> Result<Bytes, RecordError> {
    if stored.len() as u64 != stored_len(len) {
        return Err(RecordError::Truncated);
    }
    let mut out = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
    for block in stored.chunks(BLOCK + CRC_LEN) {
        out.extend_from_slice(check_block(block)?);
    }
    Ok(out.freeze())
}

/// A stored block's data, once its checksum matches.
pub(crate) fn check_block(block: &[u8]) -> Result<&[u8], RecordError> {
    let split = block
        .len()
        .checked_sub(CRC_LEN)
        .filter(|n| *n > 0)
        .ok_or(RecordError::Truncated)?;
    let (data, crc) = block.split_at(split);
    if crc32fast::hash(data).to_le_bytes() != crc {
        return Err(RecordError::Checksum("body"));
    }
    Ok(data)
}

/// Where block `i` of a body section starts, from the section's start, and
/// how many stored bytes it takes.
pub(crate) fn block_span(i: u64, body_len: u64) -> (u64, u64) {
    let start = i * (BLOCK + CRC_LEN) as u64;
    let data = body_len.saturating_sub(i * BLOCK as u64).min(BLOCK as u64);
    (start, data + CRC_LEN as u64)
}

/// Writes a body section as it arrives: whole blocks with their checksums.
#[derive(Default)]
pub(crate) struct BodyWriter {
    pending: Vec<u8>,
    /// Body bytes taken so far.
    pub len: u64,
}

impl BodyWriter {
    /// Appends `data`; complete blocks go to `out`.
    pub(crate) fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        self.len += data.len() as u64;
        while !data.is_empty() {
            let take = (BLOCK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == BLOCK {
                self.flush(out);
            }
        }
    }

    /// The last, partial block.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            self.flush(out);
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pending);
        out.extend_from_slice(&crc32fast::hash(&self.pending).to_le_bytes());
        self.pending.clear();
    }
}

fn coding_tag(c: Coding) -> u8 {
    match c {
        Coding::Br => 0,
        Coding::Zstd => 1,
        Coding::Gzip => 2,
    }
}

fn coding_of(tag: u8) -> Result<Coding, RecordError> {
    match tag {
        0 => Ok(Coding::Br),
        1 => Ok(Coding::Zstd),
        2 => Ok(Coding::Gzip),
        _ => Err(RecordError::Malformed("coding")),
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, x: u8) {
        self.0.push(x);
    }
    fn u16(&mut self, x: u16) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn duration(&mut self, d: Duration) {
        self.u64(d.as_secs());
        self.u32(d.subsec_nanos());
    }
    fn time(&mut self, t: SystemTime) {
        self.duration(t.duration_since(UNIX_EPOCH).unwrap_or_default());
    }
    fn opt(&mut self, x: Option<u64>) {
        match x {
            Some(n) => {
                self.u8(1);
                self.u64(n);
            }
            None => self.u8(0),
        }
    }
    fn cc(&mut self, cc: &CacheControl) {
        let flags = [
            cc.no_store,
            cc.no_cache,
            cc.private,
            cc.public,
            cc.must_revalidate,
            cc.proxy_revalidate,
            cc.no_transform,
            cc.must_understand,
            cc.immutable,
            cc.only_if_cached,
        ];
        let bits = flags
            .iter()
            .enumerate()
            .fold(0u16, |acc, (i, f)| acc | (u16::from(*f) << i));
        self.u16(bits);
        for x in [
            cc.max_age,
            cc.s_maxage,
            cc.stale_while_revalidate,
            cc.stale_if_error,
            cc.max_stale,
            cc.min_fresh,
        ] {
            self.opt(x);
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or(RecordError::Malformed("a length runs past the head"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let mut x = [0u8; 8];
        x.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(x))
    }
    /// A count of items, each at least one byte long (so a bad count fails
    /// before anything is allocated for it).
    fn count(&mut self) -> Result<usize, RecordError> {
        let n = self.u32()? as usize;
        if n > self.b.len() - self.at {
            return Err(RecordError::Malformed("a count runs past the head"));
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, RecordError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| RecordError::Malformed("text"))
    }
    fn duration(&mut self) -> Result<Duration, RecordError> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(RecordError::Malformed("nanoseconds"));
        }
        Ok(Duration::new(secs, nanos))
    }
    fn time(&mut self) -> Result<SystemTime, RecordError> {
        UNIX_EPOCH
            .checked_add(self.duration()?)
            .ok_or(RecordError::Malformed("time"))
    }
    fn opt(&mut self) -> Result<Option<u64>, RecordError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.u64().map(Some),
            _ => Err(RecordError::Malformed("option")),
        }
    }
    fn cc(&mut self) -> Result<CacheControl, RecordError> {
        let bits = self.u16()?;
        let bit = |i: u16| bits & (1 << i) != 0;
        Ok(CacheControl {
            no_store: bit(0),
            no_cache: bit(1),
            private: bit(2),
            public: bit(3),
            must_revalidate: bit(4),
            proxy_revalidate: bit(5),
            no_transform: bit(6),
            must_understand: bit(7),
            immutable: bit(8),
            only_if_cached: bit(9),
            max_age: self.opt()?,
            s_maxage: self.opt()?,
            stale_while_revalidate: self.opt()?,
            stale_if_error: self.opt()?,
            max_stale: self.opt()?,
            min_fresh: self.opt()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: usize) -> Object {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-two", HeaderValue::from_static("a"));
        headers.append("x-two", HeaderValue::from_static("b"));
        let copies = Copies::default();
        copies.set(Coding::Gzip, Bytes::from_static(b"gz"));
        Object::Response(Entry {
            status: StatusCode::NOT_FOUND,
            headers,
            body: Bytes::from((0..body).map(|i| i as u8).collect::<Vec<_>>()),
            request_time: UNIX_EPOCH + Duration::new(1_700_000_000, 5),
            response_time: UNIX_EPOCH + Duration::new(1_700_000_001, 7),
            initial_age: Duration::from_secs(3),
            lifetime: Duration::from_millis(60_500),
            cc: CacheControl {
                max_age: Some(60),
                must_revalidate: true,
                ..CacheControl::default()
            },
            tags: vec![Box::from("a"), Box::from("b")].into(),
            copies,
            hit_head: Default::default(),
        })
    }

    #[test]
    fn a_response_comes_back_as_it_went_in() {
        for size in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17] {
            let bytes = encode("http://h/a", &entry(size));
            let (key, back) = decode(&bytes).unwrap();
            assert_eq!(key, "http://h/a");
            let (Object::Response(a), Object::Response(b)) = (&entry(size), &back) else {
                panic!("not a response");
            };
            assert_eq!(a.status, b.status);
            assert_eq!(a.headers, b.headers);
            assert_eq!(a.body, b.body, "{size}");
            assert_eq!(
                (a.request_time, a.response_time),
                (b.request_time, b.response_time)
            );
            assert_eq!((a.initial_age, a.lifetime), (b.initial_age, b.lifetime));
            assert_eq!(a.cc, b.cc);
            assert_eq!(a.tags, b.tags);
            assert_eq!(b.copies.get(Coding::Gzip).map(|b| &b[..]), Some(&b"gz"[..]));
            assert!(b.copies.get(Coding::Br).is_none());
        }
    }

    #[test]
    fn a_vary_marker_comes_back() {
        let marker = Object::Vary {
            names: vec![HeaderName::from_static("accept-language")].into(),
            id: 42,
        };
        let (_, back) = decode(&encode("k", &marker)).unwrap();
        assert!(matches!(back, Object::Vary { id: 42, ref names } if names.len() == 1));
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode("k", &entry(2 * BLOCK + 5));
        for cut in (0..bytes.len()).step_by(997).chain([bytes.len() - 1]) {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = encode("k", &entry(300));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "byte {i} flipped");
        }
    }

    #[test]
    fn a_soft_purge_rewrites_only_the_header() {
        let mut bytes = encode("k", &entry(10));
        let mut header = Header::decode(&bytes).unwrap();
        header.lifetime = Duration::from_secs(1);
        bytes[..HEADER_LEN].copy_from_slice(&header.encode());
        let (_, Object::Response(e)) = decode(&bytes).unwrap() else {
            panic!("not a response");
        };
        assert_eq!(e.lifetime, Duration::from_secs(1));
    }

    #[test]
    fn blocks_are_where_block_span_says() {
        let len = 2 * BLOCK as u64 + 10;
        assert_eq!(block_span(0, len), (0, BLOCK as u64 + 4));
        assert_eq!(block_span(2, len), (2 * (BLOCK as u64 + 4), 14));
        assert_eq!(stored_len(len), len + 12);
    }
}
