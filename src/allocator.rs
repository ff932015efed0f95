//! The process's allocator: mimalloc, called the way its C users call it,
//! with the two settings a long-running proxy needs (freed pages go back
//! to the system, after a short delay).
//!
//! The binary installs [`Mimalloc`] as its global allocator; the library
//! (and its tests) run on whatever allocator their program chose.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc as Rust's global allocator.
///
/// Only layouts that ask for more than a pointer's alignment go through
/// `mi_malloc_aligned`: every mimalloc block is at least pointer-aligned,
/// and the aligned entry point's fast path serves only blocks up to 1 KiB
/// that happen to be free and aligned. The rest (hyper's 8 KiB read
/// buffer, a request's boxed future) took its generic path: 2.2 times per
/// cache hit, about 950 instructions (callgrind).
pub struct Mimalloc;

/// The alignment every mimalloc block has.
const BLOCK_ALIGN: usize = std::mem::size_of::<usize>();

// SAFETY: each method forwards to the mimalloc function with the same
// contract; layouts aligned beyond `BLOCK_ALIGN` use the aligned variants,
// and `mi_free` frees blocks from either.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

/// mimalloc's `mi_option_purge_delay` (not named in its Rust bindings).
const MI_OPTION_PURGE_DELAY: mi::mi_option_t = 15;

/// How long memory freed in whole pages waits before it goes back to the
/// system: reused sooner, it stays. 0 (at once) made a TLS + HTTP/2 load
/// give pages back and fault them in again (2,906 `madvise` calls per
/// 100,000 requests, -20% requests/s); 100 ms, 80 calls.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// How often pages whose delay has passed are given back. mimalloc does it
/// only when it is called again: a server that goes idle after a burst
/// would otherwise keep the burst's buffers (about 0.3 KiB per idle
/// connection at 10,000) until traffic came back.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Sets the purge delay; called first thing in `main`.
pub fn tune() {
    // SAFETY: sets one of mimalloc's process-wide options, which it reads
    // with atomics.
    unsafe { mi::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

/// Starts the thread that gives back what is due every [`PURGE_EVERY`]:
/// only for the server, not for `--check` or `--health-check`, which exit
/// at once.
pub fn start_purger() {
    let purger = std::thread::Builder::new()
        .name("sluice-purge".into())
        .spawn(|| loop {
            std::thread::sleep(PURGE_EVERY);
            // SAFETY: mimalloc's own collection, callable from any thread;
            // not forced, it only gives back what is due.
            unsafe { mi::mi_collect(false) };
        });
    // Without it memory is given back later, as mimalloc does by default.
    drop(purger);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size class from a word to past the small-block limit, at the
    /// alignments Rust asks for: the blocks are aligned, usable and
    /// freed; reallocation keeps the contents.
    #[test]
    fn blocks_are_aligned_and_kept_through_realloc() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in (1..=40).chain([100, 1000, 1024, 1025, 4000, 8192, 70_000]) {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero-sized layout; the block is written
                // within its size and freed once, with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xa5, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xa5));
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
