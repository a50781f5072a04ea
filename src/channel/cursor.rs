//! Subscriber cursors: a subscription is a position in its channel's feed.
//!
//! The connection's writer owns the [`Cursor`]s of its subscriptions and, whenever its socket has room,
//! takes the next frame from one of them: from the channel's in-memory window if the message is still
//! there, else from history on disk. Replaying a backlog and following live messages are the same loop,
//! so there is no seam between them, no replay task and no live buffer. A subscriber that falls behind
//! costs its channel nothing: it only holds its position (and, while it reads from disk, one chunk).
//!
//! History is read off the connection's thread: a cursor behind the window asks a blocking-pool thread for
//! the next chunk (read and encoded there) and reads the following chunk ahead while the socket drains the
//! current one, so a long catch-up runs as a pipeline over two threads. At most one and a half chunks
//! (a chunk is at most 512 messages / 128 KiB of data, plus their frames) are held per subscription.
//!
//! The channel actor keeps the other end, [`CursorShared`]: it reads the position (for the lag check and
//! the retention floor), wakes the writer when a message arrives, and cancels the cursor when the
//! subscription ends. A cancelled cursor yields nothing more; the actor cancels before it confirms an
//! unsubscribe, so no frame of the ended subscription follows the reply.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::oneshot;

use super::feed::{DiskError, Feed, Next};
use super::Evict;
use super::Hub;
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
    /// Frames read ahead from disk, with their offsets.
    ready: VecDeque<(u64, Outgoing)>,
    /// The chunk being read, if any.
    reading: Option<oneshot::Receiver<DiskChunk>>,
    /// Where the history being read ends for now: (epoch, head, offset of the last message read).
    disk: Option<(Arc<str>, u64, u64)>,
    /// Whether the last chunk read was cut by its bounds (more may follow it).
    more_on_disk: bool,
    /// Frames in the last chunk read.
    chunk_len: usize,
    /// The session, asked to close when the cursor cannot continue.
    evict: super::Evictor,
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
        evict: super::Evictor,
    ) -> Self {
        Cursor {
            node,
            generation: feed.generation(),
            pos: shared.pos(),
            feed,
            shared,
            encoding,
            ready: VecDeque::new(),
            reading: None,
            disk: None,
            more_on_disk: false,
            chunk_len: 0,
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

    /// Starts reading the chunk after `after` on a blocking-pool thread.
    fn start_read(&mut self, after: u64, head: u64, epoch: Arc<str>) {
        let (tx, rx) = oneshot::channel();
        let feed = self.feed.clone();
        let encoding = self.encoding;
        let e = epoch.clone();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(feed.read_disk(after, head, &e, encoding));
        });
        self.reading = Some(rx);
        self.disk = Some((epoch, head, after));
    }

    /// Reads the next chunk ahead while the current one drains.
    fn read_ahead(&mut self) {
        // The next chunk is read once half of the current one is sent: few hand-overs between threads
        // (each costs a wake-up on both sides), and the socket never waits for the disk.
        if self.reading.is_some() || !self.more_on_disk || self.ready.len() > self.chunk_len / 2 {
            return;
        }
        if let Some((epoch, head, last)) = self.disk.clone() {
            if last < head {
                self.start_read(last, head, epoch);
            }
        }
    }

    /// Takes a finished history read. `Some` when the cursor must stop with that result.
    fn take_chunk(
        &mut self,
        chunk: Result<DiskChunk, oneshot::error::RecvError>,
    ) -> Option<Poll<Option<Outgoing>>> {
        match chunk {
            Ok(Ok(Some(frames))) => {
                let after = self.disk.as_ref().map_or(0, |d| d.2);
                if frames.is_empty() && after <= self.pos {
                    // Trimmed away before this subscriber was sent it.
                    return Some(self.fail(
                        CloseCode::SlowConsumer,
                        "the subscription fell out of the channel's retention; resume with since",
                    ));
                }
                self.more_on_disk = !frames.is_empty();
                self.chunk_len = frames.len();
                if let (Some(d), Some((last, _))) = (self.disk.as_mut(), frames.last()) {
                    d.2 = *last;
                }
                self.ready.extend(frames);
                None
            }
            // The history was reset; the feed learns it shortly and wakes the writer.
            Ok(Ok(None)) => {
                self.disk = None;
                self.more_on_disk = false;
                None
            }
            Ok(Err(e)) => Some(self.fail(CloseCode::Internal, &e.to_string())),
            Err(_) => Some(self.fail(CloseCode::Internal, "a history read failed")),
        }
    }

    /// The next frame of this subscription. `Ready(None)` once the cursor has ended (cancelled, or failed
    /// and its session asked to close); `Pending` with the waker registered when it is caught up or
    /// waiting for history.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        let mut registered = false;
        loop {
            if self.shared.is_cancelled() {
                return Poll::Ready(None);
            }
            if let Some((offset, out)) = self.ready.pop_front() {
                if self.feed.generation() != self.generation {
                    // A reset: what was read ahead belongs to the old epoch.
                    self.ready.clear();
                    self.reading = None;
                    self.disk = None;
                    continue;
                }
                if offset <= self.pos {
                    continue;
                }
                self.advance(offset);
                self.read_ahead();
                return Poll::Ready(Some(out));
            }
            if let Some(rx) = self.reading.as_mut() {
                let chunk = match Pin::new(rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(chunk) => chunk,
                };
                self.reading = None;
                if let Some(stop) = self.take_chunk(chunk) {
                    return stop;
                }
                if self.disk.is_none() && self.ready.is_empty() {
                    // Reset on disk: wait for the feed to say so.
                    if registered {
                        return Poll::Pending;
                    }
                    self.shared.waker.register(cx.waker());
                    registered = true;
                }
                continue;
            }
            match self.feed.next_after(self.pos, self.generation) {
                Next::Window(item) => {
                    self.advance(item.offset());
                    if let Some(out) = item.frame(self.feed.channel(), self.encoding) {
                        return Poll::Ready(Some(out));
                    }
                }
                Next::Disk(epoch, head) => self.start_read(self.pos, head, epoch),
                Next::Reset(generation, _) => {
                    self.generation = generation;
                    self.pos = 0;
                    self.shared.pos.store(0, Ordering::Release);
                    self.ready.clear();
                    self.reading = None;
                    self.disk = None;
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

/// What a history read yields: frames with their offsets, `None` after a reset, or why it failed.
type DiskChunk = Result<Option<Vec<(u64, Outgoing)>>, DiskError>;

impl Drop for Cursor {
    fn drop(&mut self) {
        self.count();
    }
}
