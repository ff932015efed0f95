//! The executor of HTTP/2 client connections' streams: hyper hands it
//! each new stream (the request's future, then the response body's trip
//! to the h2 crate). It polls the stream once at once, on the connection's
//! task, and gives a Tokio task of its own only to a stream that is still
//! waiting after that poll.
//!
//! Why: a cache hit is answered and its body handed to the h2 crate in
//! that first poll, so it never needs a task; a task per stream (its
//! allocation, its place in the runtime's task list, its scheduling and
//! its removal) was about 3% of the worker's time under `h2load -m10`.
//! A stream that waits (a miss going upstream, a slow client's window)
//! is polled by its own task from then on, as before.
//!
//! A panic in that first poll ends the stream only, as it would in a task
//! of its own: the connection and its other streams go on.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::Poll;

/// See the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FirstPollInline;

impl<F> hyper::rt::Executor<F> for FirstPollInline
where
    F: Future<Output = ()> + Send + Unpin + 'static,
{
    fn execute(&self, mut fut: F) {
        // A waker that does nothing: a stream still waiting after this
        // poll is polled again at once by its task, which then registers
        // the task's own waker wherever the stream waits. A request's
        // trip upstream starts only then ([`crate::proxy::first_poll_ends`]).
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            crate::proxy::poll_first(Pin::new(&mut fut))
        }));
        match polled {
            Ok(Poll::Ready(())) => {}
            Ok(Poll::Pending) => {
                tokio::spawn(fut);
            }
            Err(_) => {
                // The panic hook has reported it; the stream is dropped, as
                // Tokio drops a task that panicked.
                tracing::error!("an HTTP/2 stream panicked; it is dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use hyper::rt::Executor;

    use super::*;

    #[tokio::test]
    async fn a_stream_done_in_its_first_poll_needs_no_task() {
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        FirstPollInline.execute(Box::pin(async move {
            counted.fetch_add(1, Ordering::Relaxed);
        }));
        // Done before execute returned: nothing was left to a task.
        assert_eq!(polls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_waiting_stream_goes_on_in_a_task_of_its_own() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u32>();
        FirstPollInline.execute(Box::pin(async move {
            let got = rx.await.unwrap_or(0);
            let _ = done_tx.send(got + 1);
        }));
        tx.send(41).expect("the stream still waits");
        assert_eq!(done_rx.await.expect("the stream ran to its end"), 42);
    }

    #[tokio::test]
    async fn a_stream_that_panics_in_its_first_poll_is_dropped_alone() {
        FirstPollInline.execute(Box::pin(async {
            panic!("a stream's bug");
        }));
        // Still here: the panic ended the stream, not its caller.
        let (tx, rx) = tokio::sync::oneshot::channel();
        FirstPollInline.execute(Box::pin(async move {
            let _ = tx.send(());
        }));
        rx.await.expect("later streams still run");
    }
}
