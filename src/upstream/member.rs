//! One pool member: an upstream address, its weight, and the live count of
//! requests in flight to it (read by `least_conn`, kept without locks).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Member {
    pub addr: SocketAddr,
    pub weight: u32,
    in_flight: AtomicUsize,
}

impl Member {
    pub fn new(addr: SocketAddr, weight: u32) -> Member {
        Member {
            addr,
            weight: weight.max(1),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Requests currently being proxied to this member.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard drops; the guard may
    /// travel with a streaming response body.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Decrements the member's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Member>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
