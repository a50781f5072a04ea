//! The outgoing side of an upgraded connection: one task per connection that drains the session's
//! [`Output`] (outbox first, then subscription cursors) straight onto the socket.
//!
//! Frames leave as they are: the shared, already-framed `Bytes` of a channel message go to `writev`
//! together (up to 64 frames or `session.write_buffer_bytes` per call), with no copy into a
//! per-connection buffer. A frame the socket did not fully take stays in the queue, advanced past what
//! was written; the queue is empty (and unallocated) whenever the connection is idle, so an idle
//! connection owns no write buffer either.
//!
//! A close request takes priority over queued frames: only a frame already partly on the wire is finished
//! first, then the `disconnect` frame and the close frame. After a close the server started, the task
//! lingers: it keeps reading and discarding, frame by frame, until the client's close frame, the end of
//! the stream or `session.close_linger_ms`, and only then drops the socket. Closing at once would let the
//! kernel answer a client still sending (an oversized frame, say) with a reset, which can destroy the
//! close frame before the client reads it; the client would see an abnormal closure instead of 1009.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::reader::read_once;
use super::Conn;
use crate::protocol::{close_frame, Outgoing};
use crate::session::output::Output;

/// Most frames handed to one `writev`.
const MAX_IOV: usize = 64;
/// Writes (or lingering reads) per poll before the task yields to the other connections of its thread.
const ROUNDS: usize = 32;

/// A request to close the connection: an optional last frame (the `disconnect` frame), then a close frame.
pub struct CloseRequest {
    pub last: Option<Outgoing>,
    pub code: u16,
    pub reason: String,
    /// Wait for the client's close frame before dropping the socket: the server started the close. A
    /// reply to the client's own close frame does not wait.
    pub linger: bool,
}

enum State {
    Open,
    /// The close frame is queued; once it is written, the socket is dropped or lingers.
    Closing {
        linger: bool,
    },
    Lingering(Pin<Box<Sleep>>),
}

/// The writing task of one connection.
pub(super) struct Writer {
    conn: Rc<Conn>,
    output: Output,
    close: oneshot::Receiver<CloseRequest>,
    /// Frames taken from the output and not yet fully written.
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    queued: usize,
    /// The first frame of `queue` is partly on the wire (a close waits for it).
    started: bool,
    state: State,
    max_batch: usize,
    linger: Duration,
}

impl Writer {
    pub(super) fn new(
        conn: Rc<Conn>,
        output: Output,
        close: oneshot::Receiver<CloseRequest>,
        max_batch: usize,
        linger: Duration,
    ) -> Writer {
        Writer {
            conn,
            output,
            close,
            queue: VecDeque::new(),
            queued: 0,
            started: false,
            state: State::Open,
            max_batch: max_batch.max(1),
            linger,
        }
    }

    fn push(&mut self, frame: Bytes) {
        if !frame.is_empty() {
            self.queued += frame.len();
            self.queue.push_back(frame);
        }
    }

    /// Takes frames from the output until a batch is full or nothing more is ready.
    fn gather(&mut self, cx: &mut Context<'_>) {
        while self.queued < self.max_batch && self.queue.len() < MAX_IOV {
            match self.output.poll_next(cx) {
                Poll::Ready(Some(out)) => self.push(out.into_wire()),
                // The session is gone.
                Poll::Ready(None) => return self.start_close(None),
                Poll::Pending => return,
            }
        }
    }

    /// Drops every queued frame but one already partly written, then queues the last frames. `None`: the
    /// session ended without asking (the peer went away): a plain close frame.
    fn start_close(&mut self, req: Option<CloseRequest>) {
        self.queue.truncate(usize::from(self.started));
        self.queued = self.queue.iter().map(Bytes::len).sum();
        self.output.clear_cursors();
        let linger = match req {
            Some(req) => {
                if let Some(last) = req.last {
                    self.push(last.into_wire());
                }
                self.push(close_frame(Some((req.code, &req.reason))));
                req.linger
            }
            None => {
                self.push(close_frame(None));
                true
            }
        };
        self.state = State::Closing { linger };
    }

    /// One vectored write of the queue's head; `Ready(Ok)` once something was written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.conn.stream.poll_write_ready(cx))?;
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = self
                .queue
                .iter()
                .zip(iov.iter_mut())
                .map(|(frame, slot)| *slot = IoSlice::new(frame))
                .count();
            match self.conn.stream.try_write_vectored(&iov[..n]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => {
                    self.advance(written);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn advance(&mut self, mut written: usize) {
        self.queued -= written;
        while written > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
                self.started = false;
            } else {
                front.advance(written);
                self.started = true;
                written = 0;
            }
        }
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
    }

    /// Reads and discards until the client's close frame or the end of the stream: `Ready` then.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..ROUNDS {
            if ready!(self.conn.stream.poll_read_ready(cx)).is_err() {
                return Poll::Ready(());
            }
            let mut closed = false;
            let conn = self.conn.clone();
            let open = read_once(&conn, |bytes| {
                closed = conn.decoder.borrow_mut().skip(bytes)
            });
            if !open || closed {
                return Poll::Ready(());
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Future for Writer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..ROUNDS {
            if matches!(this.state, State::Open) {
                match Pin::new(&mut this.close).poll(cx) {
                    Poll::Ready(Ok(req)) => this.start_close(Some(req)),
                    // The session actor is gone without asking (the peer went away).
                    Poll::Ready(Err(_)) => this.start_close(None),
                    Poll::Pending => this.gather(cx),
                }
            }
            if !this.queue.is_empty() {
                match this.poll_write(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, "websocket write failed");
                        return Poll::Ready(());
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            match &mut this.state {
                // Nothing queued, the output is pending: woken by the next frame or the close request.
                State::Open => return Poll::Pending,
                State::Closing { linger: false } => return Poll::Ready(()),
                State::Closing { linger: true } => {
                    if this.conn.decoder.borrow_mut().discard() {
                        return Poll::Ready(());
                    }
                    this.state = State::Lingering(Box::pin(tokio::time::sleep(this.linger)));
                }
                State::Lingering(deadline) => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    return this.poll_linger(cx);
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
