//! The incoming side of an upgraded connection: a stream of [`Incoming`] messages for the connection's
//! actor, read through one buffer per worker thread.
//!
//! Every read goes into the worker's shared buffer ([`with_read_buffer`], 64 KiB), the way uWebSockets
//! reads; the decoder copies out only messages and the start of a frame that has not fully arrived. So an
//! idle connection owns no read buffer at all. The stream reads the socket again only once the
//! messages of the last read have been taken: together with [`super::super::inflight::Gated`], which stops
//! polling at the cap of commands in flight, a client that pipelines is held back by TCP, not queued here.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use futures_util::Stream;

use super::Conn;
use crate::protocol::ws::{Incoming, WsError};

const READ_BUFFER_BYTES: usize = 64 * 1024;

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER_BYTES]);
}

/// Runs `f` with the worker thread's read buffer.
pub(super) fn with_read_buffer<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    READ_BUFFER.with_borrow_mut(|b| f(b))
}

/// Reads once from `conn` into the shared buffer and hands what came to `f`. `false` once the peer has
/// closed its side or the connection failed; `true` otherwise (also when nothing was there to read).
pub(super) fn read_once(conn: &Conn, f: impl FnOnce(&[u8])) -> bool {
    with_read_buffer(|buf| match conn.stream.try_read(buf) {
        Ok(0) => false,
        Ok(n) => {
            f(&buf[..n]);
            true
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
        Err(e) => {
            tracing::debug!(error = %e, "websocket read failed");
            false
        }
    })
}

/// The messages of a connection, in order; a protocol violation is the last item.
pub struct Reader {
    conn: Rc<Conn>,
    /// Messages decoded and not yet taken (empty, and unallocated, while idle).
    queue: VecDeque<Incoming>,
    failed: Option<WsError>,
    ended: bool,
}

impl Reader {
    /// A reader starting with `leftover`, bytes that arrived with the handshake.
    pub(super) fn new(conn: Rc<Conn>, leftover: &[u8]) -> Reader {
        let mut r = Reader {
            conn,
            queue: VecDeque::new(),
            failed: None,
            ended: false,
        };
        if !leftover.is_empty() {
            r.decode(leftover);
        }
        r
    }

    fn decode(&mut self, bytes: &[u8]) {
        let result = self.conn.decoder.borrow_mut().feed(bytes, &mut self.queue);
        if let Err(e) = result {
            self.failed = Some(e);
        }
    }
}

impl Stream for Reader {
    type Item = Result<Incoming, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(m) = this.queue.pop_front() {
                if this.queue.is_empty() {
                    this.queue = VecDeque::new();
                }
                return Poll::Ready(Some(Ok(m)));
            }
            if let Some(e) = this.failed.take() {
                this.ended = true;
                return Poll::Ready(Some(Err(e)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            if let Err(e) = ready!(this.conn.stream.poll_read_ready(cx)) {
                tracing::debug!(error = %e, "websocket read failed");
                this.ended = true;
                continue;
            }
            let conn = this.conn.clone();
            if !read_once(&conn, |bytes| this.decode(bytes)) {
                this.ended = true;
            }
        }
    }
}
