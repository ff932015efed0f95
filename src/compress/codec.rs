//! Encoders and decoders (async-compression over an in-memory buffer) and
//! the body wrappers that run them as a response streams.
//!
//! The encoders write into a `Vec<u8>`, which never blocks, so they are
//! driven by polling them once with the body's own task context. Each input
//! chunk is flushed through, so a server-sent event or any slow stream
//! reaches the client as it was sent, never held back for a full buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::tokio::write::{
    BrotliDecoder, BrotliEncoder, GzipDecoder, ZstdDecoder, ZstdEncoder,
};
use async_compression::Level as Quality;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use tokio::io::AsyncWrite;

use crate::body::{BoxError, ProxyBody};
use crate::config::{Coding, Level};

/// A compressor or decompressor writing into memory. The body that owns it
/// is boxed anyway, so the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Codec {
    GzipEnc(gzip::Encoder),
    BrEnc(BrotliEncoder<Vec<u8>>),
    ZstdEnc(ZstdEncoder<Vec<u8>>),
    GzipDec(GzipDecoder<Vec<u8>>),
    BrDec(BrotliDecoder<Vec<u8>>),
    ZstdDec(ZstdDecoder<Vec<u8>>),
}

macro_rules! each {
    ($codec:expr, $w:ident => $body:expr) => {
        match $codec {
            Codec::GzipEnc(_) => Err(io::Error::other("gzip is encoded by flate2 directly")),
            Codec::BrEnc($w) => $body,
            Codec::ZstdEnc($w) => $body,
            Codec::GzipDec($w) => $body,
            Codec::BrDec($w) => $body,
            Codec::ZstdDec($w) => $body,
        }
    };
}

/// Each algorithm's own level number for a [`Level`].
fn level_number(coding: Coding, level: Level) -> u32 {
    match (coding, level) {
        (_, Level::Fast) => 1,
        (Coding::Gzip, Level::Default) => 6,
        (Coding::Br, Level::Default) => 5,
        (Coding::Zstd, Level::Default) => 3,
        (Coding::Gzip, Level::Best) => 9,
        (Coding::Br, Level::Best) => 11,
        (Coding::Zstd, Level::Best) => 19,
    }
}

/// gzip through flate2 directly rather than async-compression, so that a
/// worker thread can reuse its compressors: setting one up zeroes a few
/// hundred KiB of window and hash tables, which costs about as much as
/// compressing a 5 KiB page. A reset only clears the hash heads.
mod gzip {
    use std::cell::RefCell;
    use std::io;

    use bytes::Bytes;
    use flate2::{Compress, Compression, FlushCompress, Status};

    /// Compressors kept per worker thread for reuse, by level.
    const POOL_MAX: usize = 32;

    thread_local! {
        static POOL: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) struct Encoder {
        level: u32,
        inner: Option<Compress>,
        finished: bool,
    }

    impl Encoder {
        pub(crate) fn new(level: u32) -> Encoder {
            let pooled = POOL.with(|p| {
                let mut p = p.borrow_mut();
                let i = p.iter().position(|(l, _)| *l == level)?;
                Some(p.swap_remove(i).1)
            });
            let inner = pooled.unwrap_or_else(|| Compress::new_gzip(Compression::new(level), 15));
            Encoder {
                level,
                inner: Some(inner),
                finished: false,
            }
        }

        /// Compresses `input` with `flush`; returns the output.
        pub(crate) fn run(&mut self, mut input: &[u8], flush: FlushCompress) -> io::Result<Bytes> {
            let Some(c) = self.inner.as_mut() else {
                return Ok(Bytes::new());
            };
            if self.finished {
                return Ok(Bytes::new());
            }
            let mut out = Vec::with_capacity((input.len() / 2).clamp(64, 64 << 10));
            loop {
                if out.capacity() - out.len() < 64 {
                    out.reserve(out.capacity().max(1024));
                }
                let before = c.total_in();
                let status = c
                    .compress_vec(input, &mut out, flush)
                    .map_err(io::Error::other)?;
                let consumed = usize::try_from(c.total_in() - before).unwrap_or(input.len());
                input = &input[consumed.min(input.len())..];
                let room_left = out.len() < out.capacity();
                match (flush, status) {
                    (FlushCompress::Finish, Status::StreamEnd) => {
                        self.finished = true;
                        return Ok(Bytes::from(out));
                    }
                    (FlushCompress::Finish, _) => {}
                    // All input taken and the output not full: done.
                    _ if input.is_empty() && room_left => return Ok(Bytes::from(out)),
                    _ => {}
                }
            }
        }
    }

    impl Drop for Encoder {
        fn drop(&mut self) {
            // Only a compressor that finished its stream goes back: a reset
            // in the middle of one does not leave it clean.
            if !self.finished {
                return;
            }
            if let Some(mut c) = self.inner.take() {
                c.reset();
                let level = self.level;
                POOL.with(|p| {
                    let mut p = p.borrow_mut();
                    if p.len() < POOL_MAX {
                        p.push((level, c));
                    }
                });
            }
        }
    }
}

/// Turns a would-block (impossible with an in-memory sink) into an error
/// rather than a hang.
fn ready<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::Error::other("in-memory codec would block")),
    }
}

impl Codec {
    fn encoder(coding: Coding, level: Level) -> Codec {
        let n = level_number(coding, level);
        let q = Quality::Precise(i32::try_from(n).unwrap_or(i32::MAX));
        match coding {
            Coding::Gzip => Codec::GzipEnc(gzip::Encoder::new(n)),
            Coding::Br => Codec::BrEnc(BrotliEncoder::with_quality(Vec::new(), q)),
            Coding::Zstd => Codec::ZstdEnc(ZstdEncoder::with_quality(Vec::new(), q)),
        }
    }

    fn decoder(coding: Coding) -> Codec {
        match coding {
            Coding::Gzip => Codec::GzipDec(GzipDecoder::new(Vec::new())),
            Coding::Br => Codec::BrDec(BrotliDecoder::new(Vec::new())),
            Coding::Zstd => Codec::ZstdDec(ZstdDecoder::new(Vec::new())),
        }
    }

    /// Feeds `data`; returns whatever output the codec produced so far.
    fn write(&mut self, cx: &mut Context<'_>, mut data: &[u8]) -> io::Result<Bytes> {
        if let Codec::GzipEnc(g) = self {
            return g.run(data, flate2::FlushCompress::None);
        }
        each!(self, w => {
            while !data.is_empty() {
                let n = ready(Pin::new(&mut *w).poll_write(cx, data))?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "codec took no input"));
                }
                data = &data[n..];
            }
            Ok(Bytes::from(std::mem::take(w.get_mut())))
        })
    }

    /// Pushes out everything fed so far (a sync flush for encoders).
    fn flush(&mut self, cx: &mut Context<'_>) -> io::Result<Bytes> {
        if let Codec::GzipEnc(g) = self {
            return g.run(&[], flate2::FlushCompress::Sync);
        }
        each!(self, w => {
            ready(Pin::new(&mut *w).poll_flush(cx))?;
            Ok(Bytes::from(std::mem::take(w.get_mut())))
        })
    }

    /// Ends the stream; returns the last output.
    fn finish(&mut self, cx: &mut Context<'_>) -> io::Result<Bytes> {
        if let Codec::GzipEnc(g) = self {
            return g.run(&[], flate2::FlushCompress::Finish);
        }
        each!(self, w => {
            ready(Pin::new(&mut *w).poll_shutdown(cx))?;
            Ok(Bytes::from(std::mem::take(w.get_mut())))
        })
    }
}

/// Compresses a whole body at once (for cached variants).
pub fn compress_all(data: &[u8], coding: Coding, level: Level) -> io::Result<Bytes> {
    let mut codec = Codec::encoder(coding, level);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = codec.write(&mut cx, data)?.to_vec();
    out.extend_from_slice(&codec.finish(&mut cx)?);
    Ok(Bytes::from(out))
}

/// Decompresses a whole body at once (tests and tools).
pub fn decompress_all(data: &[u8], coding: Coding) -> io::Result<Bytes> {
    let mut codec = Codec::decoder(coding);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = codec.write(&mut cx, data)?.to_vec();
    out.extend_from_slice(&codec.finish(&mut cx)?);
    Ok(Bytes::from(out))
}

/// Counters for bytes into and out of the compressor.
#[derive(Clone)]
pub(crate) struct Counted {
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
}

/// A response body run through an encoder or decoder as it streams. Input
/// that is ready is compressed together; whenever the upstream makes us
/// wait, what was fed so far is flushed out first, so a slow stream (server-
/// sent events) reaches the client as sent without costing a flush per chunk
/// on a fast one.
pub struct CodecBody {
    inner: ProxyBody,
    codec: Codec,
    done: bool,
    /// Input fed since the last flush.
    unflushed: bool,
    counted: Option<Counted>,
}

impl CodecBody {
    /// Compresses `inner` with `coding`, counting bytes in `counted`.
    pub(crate) fn encode(
        inner: ProxyBody,
        coding: Coding,
        level: Level,
        counted: Counted,
    ) -> CodecBody {
        CodecBody {
            inner,
            codec: Codec::encoder(coding, level),
            done: false,
            unflushed: false,
            counted: Some(counted),
        }
    }

    /// Decompresses `inner`, which is encoded with `coding`.
    pub fn decode(inner: ProxyBody, coding: Coding) -> CodecBody {
        CodecBody {
            inner,
            codec: Codec::decoder(coding),
            done: false,
            unflushed: false,
            counted: None,
        }
    }
}

impl Body for CodecBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let out = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending if this.unflushed => {
                    this.unflushed = false;
                    match this.codec.flush(cx) {
                        // Nothing to send yet; the inner body's waker is set.
                        Ok(bytes) if bytes.is_empty() => return Poll::Pending,
                        other => other,
                    }
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers cannot follow a transformed body reliably:
                    // they are dropped.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Some(c) = &this.counted {
                        c.bytes_in.inc_by(data.len() as u64);
                    }
                    this.unflushed = true;
                    this.codec.write(cx, &data)
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.codec.finish(cx)
                }
            };
            match out {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => {
                    if let Some(c) = &this.counted {
                        c.bytes_out.inc_by(bytes.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_coding_and_level() {
        let text = "sluice compresses once and serves many times. ".repeat(200);
        for coding in Coding::ALL {
            for level in [Level::Fast, Level::Default, Level::Best] {
                let packed = compress_all(text.as_bytes(), coding, level).unwrap();
                assert!(packed.len() < text.len() / 4, "{coding:?} {level:?}");
                let back = decompress_all(&packed, coding).unwrap();
                assert_eq!(back, text.as_bytes());
            }
        }
    }

    #[test]
    fn reused_gzip_compressors_start_clean() {
        // One abandoned mid-stream, then reused for other bodies.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut abandoned = Codec::encoder(Coding::Gzip, Level::Fast);
        abandoned.write(&mut cx, &[b'z'; 50_000]).unwrap();
        drop(abandoned);
        for body in ["first body ".repeat(300), "second, other body ".repeat(500)] {
            let packed = compress_all(body.as_bytes(), Coding::Gzip, Level::Fast).unwrap();
            assert_eq!(
                decompress_all(&packed, Coding::Gzip).unwrap(),
                body.as_bytes()
            );
        }
    }

    #[test]
    fn garbage_fails_to_decode_without_panicking() {
        for coding in Coding::ALL {
            assert!(decompress_all(b"definitely not compressed", coding).is_err());
        }
    }
}
