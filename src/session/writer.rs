//! The response body of a WebSocket connection: it drains the connection's outbox straight onto the socket.
//!
//! Everything a connection sends goes through its bounded outbox, filled with `try_send` by the session
//! actor and by channel actors, so nobody ever awaits a socket on their own thread. The HTTP layer polls
//! this body whenever it has room to write; each poll takes every frame that is queued (up to
//! [`MAX_CHUNK`] bytes), encodes them as WebSocket frames into one buffer, and hands that over as one chunk,
//! which leaves in one write. There is no task in between and no second queue: one hop and one wake-up
//! from outbox to socket. A close request takes priority over queued frames, so a slow consumer is not
//! made to read its backlog before it learns it is being cut off.
//!
//! actix-ws still parses the incoming side. Its own response body is kept (never polled) only because
//! dropping it is how its message stream learns that the connection is gone.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_codec::Encoder;
use actix_http::ws::{CloseCode as WsCloseCode, CloseReason, Codec, Message};
use actix_web::body::{BodySize, BoxBody, MessageBody};
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::Outgoing;

/// Most bytes encoded into one chunk before it is handed to the HTTP layer.
pub const MAX_CHUNK: usize = 64 * 1024;

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
    outbox: mpsc::Receiver<Outgoing>,
    close: oneshot::Receiver<CloseRequest>,
) -> actix_web::HttpResponse {
    response
        .map_body(|_, ws_body| OutboxBody::new(ws_body, outbox, close))
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
    outbox: mpsc::Receiver<Outgoing>,
    close: oneshot::Receiver<CloseRequest>,
    codec: Codec,
    buf: BytesMut,
    closing: bool,
    /// actix-ws's body, held so that dropping ours tells its message stream the connection ended.
    _ws_body: BoxBody,
}

impl OutboxBody {
    pub fn new(
        ws_body: BoxBody,
        outbox: mpsc::Receiver<Outgoing>,
        close: oneshot::Receiver<CloseRequest>,
    ) -> Self {
        OutboxBody {
            outbox,
            close,
            codec: Codec::new(),
            buf: BytesMut::new(),
            closing: false,
            _ws_body: ws_body,
        }
    }

    fn encode(&mut self, msg: Message) {
        // Encoding a server frame into a growable buffer cannot fail; if it ever did, the frame is dropped
        // and the error logged rather than panicking on the I/O path.
        if let Err(e) = self.codec.encode(msg, &mut self.buf) {
            tracing::error!(error = %e, "websocket frame encoding failed");
        }
    }

    fn encode_outgoing(&mut self, out: Outgoing) {
        let msg = match out {
            Outgoing::Text(t) => Message::Text(t),
            Outgoing::Binary(b) => Message::Binary(b),
            Outgoing::Ping => Message::Ping(Bytes::new()),
            Outgoing::Pong(p) => Message::Pong(p),
        };
        self.encode(msg);
    }

    fn encode_close(&mut self, req: Option<CloseRequest>) {
        let reason = req.map(|req| {
            if let Some(last) = req.last {
                self.encode_outgoing(last);
            }
            CloseReason {
                code: WsCloseCode::from(req.code),
                description: Some(req.reason),
            }
        });
        self.encode(Message::Close(reason));
        self.closing = true;
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
                // Close now: drop whatever is still queued.
                Poll::Ready(Ok(req)) => {
                    this.buf.clear();
                    this.encode_close(Some(req));
                }
                // The session actor is gone without asking (the peer went away): close plainly.
                Poll::Ready(Err(_)) => this.encode_close(None),
                Poll::Pending => {}
            }
        }
        while !this.closing && this.buf.len() < MAX_CHUNK {
            match this.outbox.poll_recv(cx) {
                Poll::Ready(Some(out)) => this.encode_outgoing(out),
                Poll::Ready(None) => this.encode_close(None),
                Poll::Pending => break,
            }
        }
        if !this.buf.is_empty() {
            // Hand the whole allocation over with the chunk (not `split`, which would keep the rest of
            // it, however large a burst made it, alive in `buf`): an idle connection holds no buffer.
            let chunk = std::mem::take(&mut this.buf).freeze();
            return Poll::Ready(Some(Ok(chunk)));
        }
        if this.closing {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}
