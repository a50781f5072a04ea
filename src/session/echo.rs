//! A conformance echo endpoint, off by default (`server.conformance_echo`).
//!
//! Autobahn|Testsuite checks a server's WebSocket framing by having it echo every message back. herald's
//! real endpoint speaks a protocol instead of echoing, so this route runs the same stack (actix-ws stream,
//! the same frame-size limit, the same protocol-error-to-close-code mapping, the same writer task) with an
//! actor that echoes. It must never be enabled in production: it has no auth and no rate limit.

use std::sync::Arc;

use actix::{Actor, ActorContext, AsyncContext, StreamHandler};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, ProtocolError};
use tokio::sync::oneshot;

use super::{close_reply_code, protocol_close, writer};
use crate::channel::Outbox;
use crate::node::Node;
use crate::protocol::{CloseCode, Outgoing, WsFrame};

struct Echo {
    outbox: Outbox,
    closer: Option<oneshot::Sender<writer::CloseRequest>>,
}

impl Echo {
    fn close(&mut self, code: u16, ctx: &mut actix::Context<Self>) {
        if let Some(c) = self.closer.take() {
            let _ = c.send(writer::CloseRequest {
                last: None,
                code,
                reason: String::new(),
            });
        }
        ctx.stop();
    }

    fn push(&mut self, out: Outgoing, ctx: &mut actix::Context<Self>) {
        if self.outbox.try_send(out).is_err() {
            self.close(CloseCode::SlowConsumer.code(), ctx);
        }
    }
}

impl Actor for Echo {
    type Context = actix::Context<Self>;
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for Echo {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Self::Context) {
        match item {
            Ok(AggregatedMessage::Text(t)) => {
                self.push(Outgoing::Frame(WsFrame::text(t.as_bytes())), ctx)
            }
            Ok(AggregatedMessage::Binary(b)) => {
                self.push(Outgoing::Frame(WsFrame::binary(&b)), ctx)
            }
            Ok(AggregatedMessage::Ping(p)) => self.push(Outgoing::Pong(p), ctx),
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(reason)) => {
                self.close(close_reply_code(reason.map(|r| u16::from(r.code))), ctx)
            }
            Err(e) => self.close(protocol_close(&e).code(), ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// `GET /conformance/echo`.
pub async fn route(
    req: HttpRequest,
    body: web::Payload,
    node: web::Data<Arc<Node>>,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, ws, stream) = actix_ws::handle(&req, body)?;
    drop(ws);
    let stream = writer::limited(stream, node.config.limits.max_frame_bytes);
    let (tx, rx) = Outbox::new(
        node.config.session.outbox_capacity,
        node.config.session.outbox_bytes,
    );
    let (close_tx, close_rx) = oneshot::channel();
    Echo::create(move |ctx| {
        ctx.add_stream(stream);
        Echo {
            outbox: tx,
            closer: Some(close_tx),
        }
    });
    Ok(writer::attach(
        response,
        rx,
        close_rx,
        node.config.session.write_buffer_bytes,
    ))
}
