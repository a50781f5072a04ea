//! A connection's outbox: the queue of encoded frames waiting for its socket, bounded in frames AND bytes.
//!
//! Exists because a bound in frames alone lets one connection hold a lot of memory: 1024 queued frames
//! of a 256 KiB `history` page each are 256 MiB. Every producer (the session itself, channel actors,
//! history replays) puts frames in with [`Outbox::try_send`] or [`Outbox::send_unless`]; the connection's
//! writer takes them out with [`OutboxReceiver::poll_recv`]. A frame is accepted while fewer than
//! `session.outbox_bytes` are queued, so the queue holds at most that plus one frame per producer racing
//! for the last room. Queued bytes are counted from the frames' wire size (the frame bytes are shared
//! between subscribers, so this counts what the connection would hold if it were the only one).

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, Notify};

use crate::protocol::Outgoing;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    #[error("the outbox is full")]
    Full,
    #[error("the connection is gone")]
    Closed,
    #[error("the sender was cancelled")]
    Cancelled,
}

struct Shared {
    queued: AtomicUsize,
    max_bytes: usize,
    /// Set by an async sender waiting for byte room; the receiver then wakes it.
    waiting: AtomicBool,
    room: Notify,
}

/// The producers' end. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
}

/// The writer's end.
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Outgoing>,
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
            waiting: AtomicBool::new(false),
            room: Notify::new(),
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

    /// Queues a frame, waiting for room (in frames and bytes), but only while `cancelled` holds `false`,
    /// checked under its lock at the moment of queueing. For producers that may wait, such as a history
    /// replay; never awaited inside an actor's handler. Whoever sets it to `true` under the same lock knows that no
    /// frame of this sender is queued after that point.
    pub async fn send_unless(
        &self,
        out: Outgoing,
        cancelled: &std::sync::Mutex<bool>,
    ) -> Result<(), OutboxError> {
        loop {
            self.wait_for_room().await?;
            let permit = self.tx.reserve().await.map_err(|_| OutboxError::Closed)?;
            let stop = cancelled.lock().unwrap_or_else(|p| p.into_inner());
            if *stop {
                return Err(OutboxError::Cancelled);
            }
            if !self.has_room() {
                continue; // another producer took the byte room meanwhile
            }
            self.shared
                .queued
                .fetch_add(out.wire_len(), Ordering::AcqRel);
            permit.send(out);
            return Ok(());
        }
    }

    async fn wait_for_room(&self) -> Result<(), OutboxError> {
        while !self.has_room() {
            let mut notified = pin!(self.shared.room.notified());
            notified.as_mut().enable();
            self.shared.waiting.store(true, Ordering::Release);
            if self.has_room() {
                break;
            }
            if self.tx.is_closed() {
                return Err(OutboxError::Closed);
            }
            notified.await;
        }
        Ok(())
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
    /// The next queued frame.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(out)) = &polled {
            self.shared
                .queued
                .fetch_sub(out.wire_len(), Ordering::AcqRel);
            if self.shared.waiting.swap(false, Ordering::AcqRel) {
                self.shared.room.notify_waiters();
            }
        }
        polled
    }

    /// Closes the queue: producers get [`OutboxError::Closed`] from now on.
    pub fn close(&mut self) {
        self.rx.close();
        self.shared.room.notify_waiters();
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

    #[tokio::test]
    async fn an_async_sender_waits_for_byte_room() {
        let (tx, mut rx) = Outbox::new(1024, 1_000);
        tx.try_send(frame(2_000)).unwrap();
        let tx2 = tx.clone();
        let waiter = tokio::spawn(async move {
            let cancelled = std::sync::Mutex::new(false);
            tx2.send_unless(frame(5), &cancelled).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "no room: the sender waits");
        let first = std::future::poll_fn(|cx| rx.poll_recv(cx)).await;
        assert!(first.is_some());
        waiter.await.unwrap().unwrap();
        let second = std::future::poll_fn(|cx| rx.poll_recv(cx)).await;
        assert_eq!(second, Some(frame(5)));
        drop(rx);
        assert_eq!(tx.try_send(frame(1)), Err(OutboxError::Closed));
    }
}
