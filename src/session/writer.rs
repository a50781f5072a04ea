//! The response body of a WebSocket connection: it drains the connection's outbox and its subscriptions'
//! cursors straight onto the socket.
//!
//! Control frames (replies, errors, pings, pongs, `join`/`leave`) come from the connection's bounded
//! outbox, filled with `try_send` by the session actor and by channel actors, so nobody ever awaits a
//! socket on their own thread. Channel messages come from the subscriptions' cursors
//! ([`crate::channel::Cursor`]): a subscription arrives through the outbox with its subscribe reply, and
//! from then on the writer takes its next message from the channel's window or history whenever the
//! socket has room, taking turns between subscriptions. The outbox is always drained first, so a control
//! frame never waits behind data; a subscriber that reads slowly falls behind without queueing anything
//! here. The HTTP layer polls
//! this body whenever it has room to write and keeps polling until its write buffer holds
//! `session.write_buffer_bytes`, so frames queued together leave in one write. Data frames arrive already
//! framed (see [`crate::protocol::WsFrame`]): a poll hands out the shared bytes of the next frame, in slices
//! of at most `session.write_buffer_bytes`, with no encoding and no copy here. actix-http keeps a
//! connection's write buffer at the largest size it ever reached (up to 128 KiB); since it stops polling
//! once it holds `write_buffer_bytes` and a slice adds at most as much again, the default of 4 KiB never
//! grows it past its initial 8 KiB, and a burst of large messages leaves nothing behind. There is no task in between and no
//! second queue: one hop and one wake-up from outbox to socket. A close request takes priority over queued
//! frames (only a frame already partly handed out is finished first), so a slow consumer is not made to
//! read its backlog before it learns it is being cut off.
//!
//! actix-ws still parses the incoming side. Its own response body is kept (never polled) only because
//! dropping it is how its message stream learns that the connection is gone.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::output::Output;
use crate::channel::OutboxReceiver;
use crate::protocol::{close_frame, Outgoing};

/// Applies the frame-size limit to actix-ws's incoming side and aggregates continuation frames.
pub fn limited(
    stream: actix_ws::MessageStream,
    max_bytes: usize,
) -> actix_ws::AggregatedMessageStream {
    stream
        .max_frame_size(max_bytes)
        .aggregate_continuations()
        .max_continuation_size(max_bytes)
}

/// Puts an [`OutboxBody`] in place of actix-ws's response body (which it keeps, unpolled).
pub fn attach(
    response: actix_web::HttpResponse,
    outbox: OutboxReceiver,
    close: oneshot::Receiver<CloseRequest>,
    max_chunk: usize,
) -> actix_web::HttpResponse {
    response
        .map_body(|_, ws_body| OutboxBody::new(ws_body, outbox, close, max_chunk))
        .map_into_boxed_body()
}

/// A request to close the connection: an optional last frame (the `disconnect` frame), then a close frame.
pub struct CloseRequest {
    pub last: Option<Outgoing>,
    pub code: u16,
    pub reason: String,
}

/// The body of an upgraded connection.
pub struct OutboxBody {
    output: Output,
    close: oneshot::Receiver<CloseRequest>,
    /// What is left of the frame being handed out. A frame is never interrupted, not even by a close.
    rest: Bytes,
    /// The last frames (`disconnect`, then close), written once `rest` is empty.
    last: Option<Bytes>,
    closing: bool,
    /// Most bytes handed out per poll (`session.write_buffer_bytes`).
    max_chunk: usize,
    /// actix-ws's body, held so that dropping ours tells its message stream the connection ended.
    _ws_body: BoxBody,
}

impl OutboxBody {
    pub fn new(
        ws_body: BoxBody,
        outbox: OutboxReceiver,
        close: oneshot::Receiver<CloseRequest>,
        max_chunk: usize,
    ) -> Self {
        OutboxBody {
            output: Output::new(outbox),
            close,
            rest: Bytes::new(),
            last: None,
            closing: false,
            max_chunk: max_chunk.max(1),
            _ws_body: ws_body,
        }
    }

    /// Queues the last frames and stops taking frames from the outbox (whatever is still queued there is
    /// dropped with it).
    fn start_close(&mut self, req: Option<CloseRequest>) {
        let close = match req {
            Some(req) => {
                let close = close_frame(Some((req.code, &req.reason)));
                match req.last {
                    Some(last) => [last.into_wire(), close].concat().into(),
                    None => close,
                }
            }
            None => close_frame(None),
        };
        self.last = Some(close);
        self.closing = true;
        self.output.clear_cursors();
    }
}

impl MessageBody for OutboxBody {
    type Error = std::io::Error;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if !this.closing {
            match Pin::new(&mut this.close).poll(cx) {
                Poll::Ready(Ok(req)) => this.start_close(Some(req)),
                // The session actor is gone without asking (the peer went away): close plainly.
                Poll::Ready(Err(_)) => this.start_close(None),
                Poll::Pending => {}
            }
        }
        if this.rest.is_empty() {
            if this.closing {
                match this.last.take() {
                    Some(last) => this.rest = last,
                    None => return Poll::Ready(None),
                }
            } else {
                match this.output.poll_next(cx) {
                    Poll::Ready(Some(out)) => this.rest = out.into_wire(),
                    Poll::Ready(None) => {
                        this.start_close(None);
                        this.rest = this.last.take().unwrap_or_default();
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        let n = this.rest.len().min(this.max_chunk);
        Poll::Ready(Some(Ok(this.rest.split_to(n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WsFrame;

    fn body(
        max_chunk: usize,
    ) -> (
        OutboxBody,
        crate::channel::Outbox,
        oneshot::Sender<CloseRequest>,
    ) {
        let (tx, rx) = crate::channel::Outbox::new(16, usize::MAX);
        let (close_tx, close_rx) = oneshot::channel();
        let b = OutboxBody::new(BoxBody::new(()), rx, close_rx, max_chunk);
        (b, tx, close_tx)
    }

    /// Polls until the body is pending or ends; returns the bytes and whether it ended.
    fn drain(b: &mut OutboxBody) -> (Vec<u8>, Vec<usize>, bool) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (mut out, mut sizes) = (Vec::new(), Vec::new());
        loop {
            match Pin::new(&mut *b).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    sizes.push(chunk.len());
                    out.extend_from_slice(&chunk);
                }
                Poll::Ready(Some(Err(e))) => panic!("body error: {e}"),
                Poll::Ready(None) => return (out, sizes, true),
                Poll::Pending => return (out, sizes, false),
            }
        }
    }

    #[test]
    fn frames_leave_whole_in_order_and_in_slices_of_at_most_max_chunk() {
        let (mut b, tx, _close) = body(1000);
        let big = WsFrame::text(&[b'x'; 2500]);
        let small = WsFrame::text(b"hi");
        tx.try_send(Outgoing::Frame(big.clone())).unwrap();
        tx.try_send(Outgoing::Frame(small.clone())).unwrap();
        let (bytes, sizes, ended) = drain(&mut b);
        assert!(!ended);
        assert!(sizes.iter().all(|&n| n <= 1000), "{sizes:?}");
        assert_eq!(bytes, [big.wire().as_ref(), small.wire().as_ref()].concat());
    }

    #[test]
    fn a_close_finishes_the_frame_in_progress_drops_the_queue_and_ends_with_close() {
        let (mut b, tx, close) = body(1000);
        let big = WsFrame::text(&[b'y'; 2500]);
        tx.try_send(Outgoing::Frame(big.clone())).unwrap();
        tx.try_send(Outgoing::Frame(WsFrame::text(b"queued")))
            .unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Hand out the first slice of the big frame, then ask to close.
        let Poll::Ready(Some(Ok(first))) = Pin::new(&mut b).poll_next(&mut cx) else {
            panic!("expected a chunk")
        };
        let last = WsFrame::text(b"bye");
        close
            .send(CloseRequest {
                last: Some(Outgoing::Frame(last.clone())),
                code: 4001,
                reason: "slow".into(),
            })
            .map_err(|_| ())
            .unwrap();
        let (rest, _, ended) = drain(&mut b);
        assert!(ended, "the body ends after the close frame");
        let all = [first.as_ref(), &rest].concat();
        // The big frame whole, then `disconnect`, then a close frame with 4001; the queued frame is dropped.
        let tail = &all[big.wire().len()..];
        assert_eq!(&all[..big.wire().len()], big.wire().as_ref());
        assert_eq!(&tail[..last.wire().len()], last.wire().as_ref());
        let close_frame = &tail[last.wire().len()..];
        assert_eq!(close_frame[0], 0x88, "FIN + close opcode");
        assert_eq!(&close_frame[2..4], &4001u16.to_be_bytes());
        assert_eq!(&close_frame[4..], b"slow");
    }

    #[test]
    fn control_frames_and_a_closed_outbox() {
        let (mut b, tx, _close) = body(4096);
        tx.try_send(Outgoing::Ping).unwrap();
        tx.try_send(Outgoing::Pong(Bytes::from_static(b"p")))
            .unwrap();
        drop(tx);
        let (bytes, _, ended) = drain(&mut b);
        assert!(ended, "a closed outbox ends the body with a close frame");
        assert_eq!(&bytes[..2], &[0x89, 0x00], "ping");
        assert_eq!(&bytes[2..5], &[0x8a, 0x01, b'p'], "pong");
        assert_eq!(&bytes[5..], &[0x88, 0x00], "plain close");
    }
}
