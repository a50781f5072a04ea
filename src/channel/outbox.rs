//! A connection's outbox: the queue of control frames waiting for its socket, bounded in frames AND bytes.
//!
//! Channel messages do not pass through here: the writer pulls them from the subscriptions' cursors
//! ([`super::Cursor`]). The outbox carries everything else: `welcome`, replies (a `history` page can be
//! 256 KiB), errors, pings and pongs, `join`/`leave`, `unsubscribed`, and new subscriptions (their
//! reply together with their cursor, so the reply goes out before any message of the subscription).
//! The writer drains the outbox before it reads any cursor, so these frames never wait behind data.
//! Producers put items in with [`Outbox::try_send`] / [`Outbox::try_attach`]; a full outbox means the
//! client has stopped reading even its replies (a slow consumer). A frame is accepted while fewer than
//! `session.outbox_bytes` are queued, so the queue holds at most that plus one frame per producer racing
//! for the last room.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use super::Cursor;
use crate::protocol::Outgoing;

/// What the writer takes out of an outbox.
pub enum Item {
    /// A frame to write.
    Frame(Outgoing),
    /// The reply to a subscribe, then the subscription's messages from its cursor.
    Subscribed(Outgoing, Box<Cursor>),
}

impl Item {
    fn wire_len(&self) -> usize {
        match self {
            Item::Frame(f) | Item::Subscribed(f, _) => f.wire_len(),
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    #[error("the outbox is full")]
    Full,
    #[error("the connection is gone")]
    Closed,
}

/// The queue itself: a `VecDeque` that holds no memory while it is empty (it is given back once
/// drained), so an idle connection's outbox costs only this struct. A channel from tokio would allocate
/// a block of 32 slots per connection up front, and keep it.
struct Shared {
    items: Mutex<VecDeque<Item>>,
    /// The writer, parked on an empty queue.
    waker: AtomicWaker,
    queued: AtomicUsize,
    max_bytes: usize,
    max_frames: usize,
    senders: AtomicUsize,
    /// The writer is gone, or closed the queue.
    closed: AtomicBool,
}

impl Shared {
    /// The queue; a panic while it was held cannot leave it inconsistent (pushes and pops are whole).
    fn items(&self) -> MutexGuard<'_, VecDeque<Item>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The producers' end. Cheap to clone.
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The writer's end.
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued_bytes", &self.queued_bytes())
            .finish()
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Outbox {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last producer: the writer learns the queue has ended.
            self.shared.waker.wake();
        }
    }
}

impl Outbox {
    /// An outbox holding at most `frames` frames and (about) `max_bytes` bytes.
    pub fn new(frames: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
        let shared = Arc::new(Shared {
            items: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            queued: AtomicUsize::new(0),
            max_bytes,
            max_frames: frames.max(1),
            senders: AtomicUsize::new(1),
            closed: AtomicBool::new(false),
        });
        (
            Outbox {
                shared: shared.clone(),
            },
            OutboxReceiver { shared },
        )
    }

    fn has_room(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) < self.shared.max_bytes
    }

    /// Queues a frame if there is room now.
    pub fn try_send(&self, out: Outgoing) -> Result<(), OutboxError> {
        self.try_push(Item::Frame(out))
    }

    /// Queues the reply to a subscribe together with the subscription's cursor, if there is room now.
    pub fn try_attach(&self, reply: Outgoing, cursor: Cursor) -> Result<(), OutboxError> {
        self.try_push(Item::Subscribed(reply, Box::new(cursor)))
    }

    fn try_push(&self, out: Item) -> Result<(), OutboxError> {
        if self.is_closed() {
            return Err(OutboxError::Closed);
        }
        if !self.has_room() {
            return Err(OutboxError::Full);
        }
        {
            let mut items = self.shared.items();
            if items.len() >= self.shared.max_frames {
                return Err(OutboxError::Full);
            }
            // Counted before the frame can be taken, so the receiver never subtracts what was not
            // added.
            self.shared
                .queued
                .fetch_add(out.wire_len(), Ordering::AcqRel);
            items.push_back(out);
        }
        self.shared.waker.wake();
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }
}

impl OutboxReceiver {
    fn pop(&self) -> Option<Item> {
        let mut items = self.shared.items();
        let item = items.pop_front()?;
        if items.is_empty() {
            *items = VecDeque::new();
        }
        self.shared
            .queued
            .fetch_sub(item.wire_len(), Ordering::AcqRel);
        Some(item)
    }

    /// The next queued item; `Ready(None)` once every producer is gone and the queue is empty.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        // The writer asks on every wake-up, mostly for data: an empty queue is seen without its lock.
        // Producers count an item's bytes before they push it and wake after, so a push that this
        // second look misses wakes the waker registered here.
        if self.shared.queued.load(Ordering::Acquire) == 0 {
            self.shared.waker.register(cx.waker());
            if self.shared.queued.load(Ordering::Acquire) == 0 {
                if self.shared.senders.load(Ordering::Acquire) == 0 {
                    return Poll::Ready(None);
                }
                return Poll::Pending;
            }
        }
        if let Some(item) = self.pop() {
            return Poll::Ready(Some(item));
        }
        self.shared.waker.register(cx.waker());
        // A producer may have pushed, or left, between the first look and the registration.
        if let Some(item) = self.pop() {
            return Poll::Ready(Some(item));
        }
        if self.shared.senders.load(Ordering::Acquire) == 0 {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Closes the queue: producers get [`OutboxError::Closed`] from now on.
    pub fn close(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.close();
        // What is still queued (subscriptions' cursors among it) goes now, not with the last producer.
        let rest = std::mem::take(&mut *self.shared.items());
        drop(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WsFrame;
    use std::task::Waker;

    fn frame(len: usize) -> Outgoing {
        Outgoing::Frame(WsFrame::binary(&vec![7u8; len]))
    }

    #[test]
    fn bytes_bound_the_queue_and_come_back_when_taken() {
        let (tx, mut rx) = Outbox::new(1024, 10_000);
        let mut sent = 0;
        while tx.try_send(frame(3_000)).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 4, "accepted while under 10,000 bytes: 0, 3k, 6k, 9k");
        assert_eq!(tx.try_send(frame(10)), Err(OutboxError::Full));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(Some(_))));
        assert!(tx.queued_bytes() < 10_000);
        assert!(
            tx.try_send(frame(10)).is_ok(),
            "room again after a frame left"
        );
    }

    #[test]
    fn frames_bound_the_queue_too() {
        let (tx, _rx) = Outbox::new(2, usize::MAX);
        assert!(tx.try_send(frame(1)).is_ok());
        assert!(tx.try_send(frame(1)).is_ok());
        assert_eq!(tx.try_send(frame(1)), Err(OutboxError::Full));
        assert_eq!(
            tx.queued_bytes(),
            2 * frame(1).wire_len(),
            "a refused frame is not counted"
        );
    }

    #[test]
    fn a_drained_outbox_holds_no_memory_and_ends_with_its_last_producer() {
        let (tx, mut rx) = Outbox::new(1024, usize::MAX);
        assert_eq!(
            tx.shared.items().capacity(),
            0,
            "nothing allocated up front"
        );
        for _ in 0..100 {
            tx.try_send(frame(10)).unwrap();
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut taken = 0;
        while let Poll::Ready(Some(_)) = rx.poll_recv(&mut cx) {
            taken += 1;
            if taken == 100 {
                break;
            }
        }
        assert_eq!(taken, 100);
        assert_eq!(tx.shared.items().capacity(), 0, "given back once drained");
        let tx2 = tx.clone();
        drop(tx);
        assert!(rx.poll_recv(&mut cx).is_pending(), "one producer is left");
        tx2.try_send(frame(1)).unwrap();
        drop(tx2);
        assert!(
            matches!(rx.poll_recv(&mut cx), Poll::Ready(Some(_))),
            "queued frames come first"
        );
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn a_closed_outbox_refuses() {
        let (tx, mut rx) = Outbox::new(16, usize::MAX);
        rx.close();
        assert_eq!(tx.try_send(frame(1)), Err(OutboxError::Closed));
        let (tx, rx) = Outbox::new(16, usize::MAX);
        drop(rx);
        assert_eq!(tx.try_send(frame(1)), Err(OutboxError::Closed));
    }
}
