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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::Cursor;
use crate::protocol::Outgoing;

/// What the writer takes out of an outbox.
pub enum Item {
    /// A frame to write.
    Frame(Outgoing),
    /// The reply to a subscribe, then the subscription's messages from its cursor.
    Subscribed(Outgoing, Cursor),
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

struct Shared {
    queued: AtomicUsize,
    max_bytes: usize,
}

/// The producers' end. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Item>,
    shared: Arc<Shared>,
}

/// The writer's end.
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Item>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued_bytes", &self.queued_bytes())
            .finish()
    }
}

impl Outbox {
    /// An outbox holding at most `frames` frames and (about) `max_bytes` bytes.
    pub fn new(frames: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::channel(frames.max(1));
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            max_bytes,
        });
        (
            Outbox {
                tx,
                shared: shared.clone(),
            },
            OutboxReceiver { rx, shared },
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
        self.try_push(Item::Subscribed(reply, cursor))
    }

    fn try_push(&self, out: Item) -> Result<(), OutboxError> {
        if self.tx.is_closed() {
            return Err(OutboxError::Closed);
        }
        if !self.has_room() {
            return Err(OutboxError::Full);
        }
        let len = out.wire_len();
        // Counted before the frame can be taken, so the receiver never subtracts what was not added.
        self.shared.queued.fetch_add(len, Ordering::AcqRel);
        self.tx.try_send(out).map_err(|e| {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => OutboxError::Full,
                mpsc::error::TrySendError::Closed(_) => OutboxError::Closed,
            }
        })
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }
}

impl OutboxReceiver {
    /// The next queued item.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(out)) = &polled {
            self.shared
                .queued
                .fetch_sub(out.wire_len(), Ordering::AcqRel);
        }
        polled
    }

    /// Closes the queue: producers get [`OutboxError::Closed`] from now on.
    pub fn close(&mut self) {
        self.rx.close();
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
}
