//! A conformance echo endpoint, off by default (`server.conformance_echo`).
//!
//! Autobahn|Testsuite checks a server's WebSocket framing by having it echo every message back. herald's
//! real endpoint speaks a protocol instead of echoing, so this route runs the same stack (the same upgrade,
//! reader, frame decoder and limits, close-code mapping and writer task, see [`super::socket`]) with an
//! actor that echoes. It must never be enabled in production: it has no auth and no rate limit.

use std::sync::Arc;

use actix::{Actor, ActorContext, AsyncContext, StreamHandler};
use actix_web::{web, HttpRequest, HttpResponse};
use tokio::sync::oneshot;

use super::close_reply_code;
use super::socket::{self, CloseRequest, Incoming, WsError};
use crate::channel::Outbox;
use crate::node::Node;
use crate::protocol::{CloseCode, Outgoing, WsFrame};

struct Echo {
    outbox: Outbox,
    closer: Option<oneshot::Sender<CloseRequest>>,
}

impl Echo {
    fn close(&mut self, code: u16, linger: bool, ctx: &mut actix::Context<Self>) {
        if let Some(c) = self.closer.take() {
            let _ = c.send(CloseRequest {
                last: None,
                code,
                reason: String::new(),
                linger,
            });
        }
        ctx.stop();
    }

    fn push(&mut self, out: Outgoing, ctx: &mut actix::Context<Self>) {
        if self.outbox.try_send(out).is_err() {
            self.close(CloseCode::SlowConsumer.code(), true, ctx);
        }
    }
}

impl Actor for Echo {
    type Context = actix::Context<Self>;
}

impl StreamHandler<Result<Incoming, WsError>> for Echo {
    fn handle(&mut self, item: Result<Incoming, WsError>, ctx: &mut Self::Context) {
        match item {
            Ok(Incoming::Text(t)) => self.push(Outgoing::Frame(WsFrame::text(&t)), ctx),
            Ok(Incoming::Binary(b)) => self.push(Outgoing::Frame(WsFrame::binary(&b)), ctx),
            Ok(Incoming::Ping(p)) => self.push(Outgoing::Pong(p), ctx),
            Ok(Incoming::Pong) => {}
            Ok(Incoming::Close(code)) => self.close(close_reply_code(code), false, ctx),
            Err(e) => self.close(e.close_code().code(), true, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// `GET /conformance/echo`.
pub async fn route(
    req: HttpRequest,
    node: web::Data<Arc<Node>>,
) -> Result<HttpResponse, actix_web::Error> {
    let mut response = match super::handshake::switching_protocols(&req, None) {
        Ok(r) => r,
        Err(answer) => return Ok(*answer),
    };
    let (capacity, bytes) = (
        node.config.session.outbox_capacity,
        node.config.session.outbox_bytes,
    );
    socket::hand_over(
        &mut response,
        socket::Settings::of(&node.config),
        move |mut socket| {
            let (tx, rx) = Outbox::new(capacity, bytes);
            let (close_tx, close_rx) = oneshot::channel();
            let reader = socket.reader();
            Echo::create(move |ctx| {
                ctx.add_stream(reader);
                Echo {
                    outbox: tx,
                    closer: Some(close_tx),
                }
            });
            socket.spawn_writer(rx, close_rx);
        },
    );
    Ok(response)
}
