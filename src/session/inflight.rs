//! The per-session cap on commands in flight (`session.max_inflight`).
//!
//! Every command that waits for a channel or the store (publish, history, presence, subscribe,
//! unsubscribe) holds a [`Slot`] until its answer is queued. At the cap, the session's incoming stream
//! ([`Gated`]) stops yielding frames, so the session stops reading its socket: TCP backpressure reaches
//! the client, and a pipelining client cannot make the node hold more than `max_inflight` commands (and
//! their data) at once. Nothing is refused or dropped; frames wait in the client's socket buffers.
//! The same idea as rumqttd's fixed cap of in-flight items per connection.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use futures_util::Stream;

struct Inner {
    count: AtomicUsize,
    max: usize,
    /// The reader parked at the cap.
    reader: AtomicWaker,
}

/// Counts a session's commands in flight. Cheap to clone.
#[derive(Clone)]
pub struct Gate(Arc<Inner>);

impl Gate {
    pub fn new(max: usize) -> Gate {
        Gate(Arc::new(Inner {
            count: AtomicUsize::new(0),
            max: max.max(1),
            reader: AtomicWaker::new(),
        }))
    }

    /// Takes a slot for one command; it is given back when the slot is dropped.
    pub fn enter(&self) -> Slot {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        Slot(self.clone())
    }

    /// Commands in flight now.
    pub fn in_flight(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    fn full(&self) -> bool {
        self.in_flight() >= self.0.max
    }

    /// `Ready` while the gate has room; else registers the reader to be woken when a slot returns.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.full() {
            self.0.reader.register(cx.waker());
            // A slot may have come back between the check and the registration.
            if self.full() {
                return Poll::Pending;
            }
        }
        Poll::Ready(())
    }

    /// Waits until the gate has room: the long-polling transport's reader (the one `POST` in
    /// progress of a session) waits here before it hands the session its next frame.
    pub async fn room(&self) {
        std::future::poll_fn(|cx| self.poll_room(cx)).await
    }
}

/// One command in flight.
pub struct Slot(Gate);

impl Drop for Slot {
    fn drop(&mut self) {
        let before = self.0 .0.count.fetch_sub(1, Ordering::AcqRel);
        if before == self.0 .0.max {
            self.0 .0.reader.wake();
        }
    }
}

/// A stream that yields nothing while its gate is full.
pub struct Gated<S> {
    inner: S,
    gate: Gate,
}

impl<S> Gated<S> {
    pub fn new(inner: S, gate: Gate) -> Self {
        Gated { inner, gate }
    }
}

impl<S: Stream + Unpin> Stream for Gated<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        if this.gate.poll_room(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn the_stream_pauses_at_the_cap_and_resumes_when_a_slot_returns() {
        let gate = Gate::new(2);
        let mut s = Gated::new(futures_util::stream::iter(0..10), gate.clone());
        assert_eq!(s.next().await, Some(0));
        let a = gate.enter();
        let _b = gate.enter();
        let paused = tokio::time::timeout(std::time::Duration::from_millis(50), s.next()).await;
        assert!(paused.is_err(), "nothing is read at the cap");
        let reader = tokio::spawn(async move { s.next().await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(a);
        assert_eq!(
            reader.await.unwrap(),
            Some(1),
            "a returned slot wakes the reader"
        );
        assert_eq!(gate.in_flight(), 1);
    }
}
