//! Arbitrary client byte streams through the HTTP/1.1 framing guard
//! (`sluice::testing::framing::FramingGuard`), delivered in reads cut at arbitrary
//! points.
//!
//! Properties: no panic; the guard passes on a prefix of the stream,
//! unchanged; once a read fails every later read fails; and the verdicts,
//! the number of bytes passed on and the error are the same whether the
//! stream arrives in one read, cut where the input says, or one byte at a
//! time.
//!
//! Input: one byte choosing the guard's limits, one byte giving the number
//! of cuts (mod 16), two bytes (little endian) per cut, then the stream.

#![no_main]

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use sluice::testing::framing::{FramingGuard, GuardLimits, Verdict, Verdicts, Violation};
use tokio::io::{AsyncRead, ReadBuf};

/// A client that delivers its bytes in the given reads, then EOF.
struct Script(VecDeque<Vec<u8>>);

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut part) = self.0.pop_front() {
            let n = part.len().min(buf.remaining());
            buf.put_slice(&part[..n]);
            if n < part.len() {
                self.0.push_front(part.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// What hyper would see, and what the proxy would be told.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    passed: usize,
    error: Option<String>,
    verdicts: Vec<Verdict>,
}

fn drive(stream: &[u8], parts: Vec<Vec<u8>>, limits: GuardLimits) -> Seen {
    let verdicts = Verdicts::new();
    let mut guard = FramingGuard::new(Script(parts.into()), verdicts.clone(), limits);
    let mut cx = Context::from_waker(Waker::noop());
    let mut storage = vec![0u8; 1 << 16];
    let mut passed = 0;
    let mut error = None;
    loop {
        let mut buf = ReadBuf::new(&mut storage);
        match Pin::new(&mut guard).poll_read(&mut cx, &mut buf) {
            Poll::Pending => unreachable!("the script never blocks"),
            Poll::Ready(Err(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                error = Some(e.to_string());
                break;
            }
            Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
            Poll::Ready(Ok(())) => {
                let got = buf.filled();
                assert!(passed + got.len() <= stream.len(), "more out than in");
                assert_eq!(got, &stream[passed..passed + got.len()], "bytes changed");
                passed += got.len();
            }
        }
    }
    if error.is_some() {
        // A failed guard stays failed.
        let mut buf = ReadBuf::new(&mut storage);
        assert!(matches!(
            Pin::new(&mut guard).poll_read(&mut cx, &mut buf),
            Poll::Ready(Err(_))
        ));
    } else {
        // An EOF read (empty) ends the loop only once the script is spent,
        // or when the guard passed on nothing of a non-empty read: never
        // the latter.
        assert_eq!(passed, stream.len(), "bytes swallowed without an error");
    }
    let mut taken = Vec::new();
    loop {
        match verdicts.next() {
            Verdict::Reject(Violation::Untracked) => break,
            v => taken.push(v),
        }
    }
    Seen {
        passed,
        error,
        verdicts: taken,
    }
}

fuzz_target!(|data: &[u8]| {
    let [config, cuts, rest @ ..] = data else {
        return;
    };
    let limits = match config & 3 {
        0 => GuardLimits {
            max_head_bytes: 4096,
            max_headers: 100,
            max_target_bytes: usize::MAX,
        },
        1 => GuardLimits {
            max_head_bytes: 64,
            max_headers: 100,
            max_target_bytes: usize::MAX,
        },
        2 => GuardLimits {
            max_head_bytes: 256,
            max_headers: 4,
            max_target_bytes: usize::MAX,
        },
        _ => GuardLimits {
            max_head_bytes: 1 << 16,
            max_headers: 200,
            max_target_bytes: usize::MAX,
        },
    };
    let cuts = usize::from(cuts % 16);
    if rest.len() < 2 * cuts {
        return;
    }
    let (cut_bytes, stream) = rest.split_at(2 * cuts);
    let mut at: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    at.push(0);
    at.push(stream.len());
    at.sort_unstable();
    at.dedup();
    let parts: Vec<Vec<u8>> = at.windows(2).map(|w| stream[w[0]..w[1]].to_vec()).collect();

    let whole = drive(stream, vec![stream.to_vec()], limits);
    let cut = drive(stream, parts, limits);
    assert_eq!(cut, whole, "cut at {at:?}");
    let bytes = drive(
        stream,
        stream.chunks(1).map(<[u8]>::to_vec).collect(),
        limits,
    );
    assert_eq!(bytes, whole, "byte by byte");
});
