//! The WebSocket handshake: everything decided before the upgrade (subprotocol, Origin), then the start of
//! the session actor and its writer on the accepting worker.

use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::{writer, Session};
use crate::node::Node;
use crate::protocol::{Encoding, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};

/// Picks the encoding from `Sec-WebSocket-Protocol`. `Ok(None)` means nothing was offered (JSON, and no
/// header in the answer); `Err` means only unknown subprotocols were offered.
fn choose_subprotocol(req: &HttpRequest) -> Result<Option<&'static str>, ()> {
    let mut offered = false;
    for value in req.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else {
            offered = true;
            continue;
        };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            offered = true;
            match name {
                SUBPROTOCOL_JSON => return Ok(Some(SUBPROTOCOL_JSON)),
                SUBPROTOCOL_MSGPACK => return Ok(Some(SUBPROTOCOL_MSGPACK)),
                _ => {}
            }
        }
    }
    if offered {
        Err(())
    } else {
        Ok(None)
    }
}

/// Whether the request's Origin (if any) is allowed. Requests without Origin come from non-browser clients
/// and are allowed; browsers always send it.
fn origin_allowed(req: &HttpRequest, allowed: &[String]) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

/// `GET /ws`.
pub async fn route(
    req: HttpRequest,
    body: web::Payload,
    node: web::Data<Arc<Node>>,
) -> Result<HttpResponse, actix_web::Error> {
    let node: Arc<Node> = node.get_ref().clone();
    if node.is_draining() {
        return Ok(HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "1"))
            .body("node is shutting down; retry another node or later"));
    }
    if !origin_allowed(&req, &node.config.server.allowed_origins) {
        return Ok(HttpResponse::Forbidden().body("origin not allowed"));
    }
    let protocol = match choose_subprotocol(&req) {
        Ok(p) => p,
        Err(()) => {
            return Ok(HttpResponse::BadRequest().body(format!(
                "unsupported subprotocol; supported: {SUBPROTOCOL_JSON}, {SUBPROTOCOL_MSGPACK}"
            )))
        }
    };
    let encoding = protocol
        .and_then(Encoding::from_subprotocol)
        .unwrap_or(Encoding::Json);
    let protocols: Vec<&str> = protocol.into_iter().collect();
    let (response, ws, stream) = actix_ws::handle_with_protocols(&req, body, &protocols)?;
    let max = node.config.limits.max_frame_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let peer = req.peer_addr();
    let (session, outbox, close) = Session::new(node, encoding, None, peer);
    Session::create(move |ctx| {
        ctx.add_stream(stream);
        session
    });
    actix_web::rt::spawn(writer::run(ws, outbox, close));
    Ok(response)
}
