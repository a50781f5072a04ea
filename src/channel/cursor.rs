//! Subscriber cursors: a subscription is a position in its channel's feed.
//!
//! The connection's writer owns the [`Cursor`]s of its subscriptions and, whenever its socket has room,
//! takes the next frame from one of them: from the channel's in-memory window if the message is still
//! there, else from history on disk. Replaying a backlog and following live messages are the same loop,
//! so there is no seam between them, no replay task and no live buffer. A subscriber that falls behind
//! costs its channel nothing: it only holds its position (and, while it reads from disk, one chunk).
//!
//! The channel actor keeps the other end, [`CursorShared`]: it reads the position (for the lag check and
//! the retention floor), wakes the writer when a message arrives, and cancels the cursor when the
//! subscription ends. A cancelled cursor yields nothing more; the actor cancels before it confirms an
//! unsubscribe, so no frame of the ended subscription follows the reply.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use actix::Recipient;
use futures_util::task::AtomicWaker;

use super::feed::{message_frame, Feed, Next};
use super::Evict;
use super::Hub;
use crate::history::StoredMessage;
use crate::protocol::{CloseCode, Encoding, Outgoing};
use crate::stats::Stats;

/// Frames counted locally before they are added to the node's `messages_out`.
const COUNT_EVERY: u64 = 64;

/// The part of a cursor its channel sees.
#[derive(Debug, Default)]
pub struct CursorShared {
    /// Offset of the last message handed to the writer.
    pos: AtomicU64,
    waker: AtomicWaker,
    cancelled: AtomicBool,
}

impl CursorShared {
    pub fn new(pos: u64) -> Arc<Self> {
        Arc::new(CursorShared {
            pos: AtomicU64::new(pos),
            ..Default::default()
        })
    }

    pub fn pos(&self) -> u64 {
        self.pos.load(Ordering::Acquire)
    }

    /// Tells the writer there may be more to read.
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Ends the cursor: once this returns, the writer takes no further frame from it.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// The writer's end of one subscription.
pub struct Cursor {
    feed: Arc<Feed>,
    shared: Arc<CursorShared>,
    encoding: Encoding,
    generation: u64,
    pos: u64,
    /// Stored messages read ahead from disk, with the epoch they belong to.
    disk: VecDeque<StoredMessage>,
    disk_epoch: Arc<str>,
    /// The session, asked to close when the cursor cannot continue.
    evict: Recipient<Evict>,
    node: Arc<Hub>,
    /// Frames handed out, not yet added to the node's `messages_out`.
    sent: u64,
}

impl Cursor {
    pub fn new(
        node: Arc<Hub>,
        feed: Arc<Feed>,
        shared: Arc<CursorShared>,
        encoding: Encoding,
        evict: Recipient<Evict>,
    ) -> Self {
        Cursor {
            node,
            generation: feed.generation(),
            pos: shared.pos(),
            feed,
            shared,
            encoding,
            disk: VecDeque::new(),
            disk_epoch: Arc::from(""),
            evict,
            sent: 0,
        }
    }

    /// Whether the cursor has ended (cancelled by its channel, or failed).
    pub fn is_ended(&self) -> bool {
        self.shared.is_cancelled()
    }

    fn advance(&mut self, offset: u64) {
        self.pos = offset;
        self.shared.pos.store(offset, Ordering::Release);
        self.sent += 1;
        if self.sent >= COUNT_EVERY {
            self.count();
        }
    }

    fn count(&mut self) {
        Stats::add(
            &self.node.stats.messages_out,
            std::mem::take(&mut self.sent),
        );
    }

    /// Stops the cursor and asks the session to close with `code`.
    fn fail(&mut self, code: CloseCode, reason: &str) -> Poll<Option<Outgoing>> {
        tracing::warn!(channel = %self.feed.channel(), pos = self.pos, reason, "subscriber cursor stopped");
        self.shared.cancel();
        self.evict.do_send(Evict {
            code,
            reason: Some(reason.to_string()),
        });
        Poll::Ready(None)
    }

    /// The next frame of this subscription. `Ready(None)` once the cursor has ended (cancelled, or failed
    /// and its session asked to close); `Pending` with the waker registered when it is caught up.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        let mut registered = false;
        loop {
            if self.shared.is_cancelled() {
                return Poll::Ready(None);
            }
            if let Some(m) = self.disk.pop_front() {
                let channel = self.feed.channel().clone();
                match message_frame(&channel, &self.disk_epoch, self.encoding, &m) {
                    Ok(out) => {
                        self.advance(m.offset);
                        return Poll::Ready(Some(out));
                    }
                    Err(e) => return self.fail(CloseCode::Internal, &e.to_string()),
                }
            }
            match self.feed.next_after(self.pos, self.generation) {
                Next::Window(item) => {
                    self.advance(item.offset());
                    if let Some(out) = item.frame(self.feed.channel(), self.encoding) {
                        return Poll::Ready(Some(out));
                    }
                }
                Next::Disk(epoch, head) => match self.feed.read_disk(self.pos, head, &epoch) {
                    Ok(Some(chunk)) if chunk.is_empty() => {
                        // Trimmed away before this subscriber was sent it.
                        return self.fail(
                            CloseCode::SlowConsumer,
                            "the subscription fell out of the channel's retention; resume with since",
                        );
                    }
                    Ok(Some(chunk)) => {
                        self.disk = chunk.into();
                        self.disk_epoch = epoch;
                    }
                    // The history was reset; the feed learns it shortly and wakes us.
                    Ok(None) if registered => return Poll::Pending,
                    Ok(None) => {
                        self.shared.waker.register(cx.waker());
                        registered = true;
                    }
                    Err(e) => return self.fail(CloseCode::Internal, &e.to_string()),
                },
                Next::Reset(generation, _) => {
                    self.generation = generation;
                    self.pos = 0;
                    self.shared.pos.store(0, Ordering::Release);
                    self.disk.clear();
                }
                Next::Idle if registered => {
                    self.count();
                    return Poll::Pending;
                }
                // Registered, then looked again: a message pushed in between is not missed.
                Next::Idle => {
                    self.shared.waker.register(cx.waker());
                    registered = true;
                }
            }
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        self.count();
    }
}
