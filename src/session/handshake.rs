//! The WebSocket handshake: everything decided before the upgrade (draining, Origin, subprotocol, token,
//! connection limits), then the start of the session actor and its writer on the accepting worker.
//! The long-polling transport ([`super::polling`]) opens its sessions through the same checks.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::{socket, Session, Transport};
use crate::admission::{Refusal, RefusedBy};
use crate::auth::{AuthError, Claims};
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
pub(crate) fn origin_allowed(req: &HttpRequest, allowed: &[String]) -> bool {
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

/// The bearer token of a handshake: the `Authorization` header, else the `token` query parameter.
fn token_of(req: &HttpRequest) -> Result<Option<String>, AuthError> {
    if let Some(h) = req.headers().get(header::AUTHORIZATION) {
        let v = h.to_str().map_err(|_| AuthError::Malformed)?;
        return v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(|t| Some(t.trim().to_string()))
            .ok_or(AuthError::Malformed);
    }
    Ok(web::Query::<TokenQuery>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().token))
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Verifies the handshake's token, if any. No token is fine only when anonymous connections are allowed.
pub(crate) fn authenticate(req: &HttpRequest, node: &Node) -> Result<Option<Claims>, AuthError> {
    match token_of(req)? {
        Some(t) => node.auth.verify(&t).map(Some),
        None if node.auth.anonymous => Ok(None),
        None => Err(AuthError::Missing),
    }
}

/// Counts a refused handshake under its reason and logs it at info: at most one line per reason per
/// second ([`crate::admission::RefusalLog`]), with how many were not logged since the last one.
/// Origin refusals name the refused origin, so a developer sees which entry `server.allowed_origins`
/// lacks.
fn refused(node: &Node, req: &HttpRequest, by: RefusedBy, why: &dyn std::fmt::Display) {
    node.stats.connections_refused[by.index()].fetch_add(1, Ordering::Relaxed);
    let Some(suppressed) = node.refusal_log.should_log(by) else {
        return;
    };
    let peer = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    if by == RefusedBy::Origin {
        // Client-controlled: Debug-quoted (escapes control characters) and cut to a sane length.
        let origin: String = req
            .headers()
            .get(header::ORIGIN)
            .map(|o| {
                String::from_utf8_lossy(o.as_bytes())
                    .chars()
                    .take(200)
                    .collect()
            })
            .unwrap_or_default();
        tracing::info!(reason = %by.label(), %peer, ?origin, suppressed, "handshake refused: {why}");
    } else {
        tracing::info!(reason = %by.label(), %peer, suppressed, "handshake refused: {why}");
    }
}

/// The answer to a handshake refused by admission control: 503 or 429 with `Retry-After`.
fn refuse(node: &Node, req: &HttpRequest, refusal: &Refusal) -> HttpResponse {
    refused(node, req, refusal.refused_by(), refusal);
    let mut resp = match refusal {
        Refusal::NodeFull => HttpResponse::ServiceUnavailable(),
        _ => HttpResponse::TooManyRequests(),
    };
    let secs = refusal.retry_after_secs();
    resp.insert_header((header::RETRY_AFTER, secs.to_string()))
        .body(format!("{refusal}; retry after {secs} s"))
}

/// The answer to a request that was refused (boxed: refusals are the cold path).
pub(crate) type Refused = Box<HttpResponse>;

/// The checks every new session passes before its transport is chosen: the node is not draining, and
/// the Origin is allowed. `Err` is the answer to send.
pub(crate) fn check_node_and_origin(req: &HttpRequest, node: &Node) -> Result<(), Refused> {
    if node.is_draining() {
        refused(node, req, RefusedBy::Draining, &"the node is shutting down");
        return Err(Box::new(
            HttpResponse::ServiceUnavailable()
                .insert_header((header::RETRY_AFTER, "1"))
                .body("node is shutting down; retry another node or later"),
        ));
    }
    if !origin_allowed(req, &node.config.server.allowed_origins) {
        refused(
            node,
            req,
            RefusedBy::Origin,
            &"origin not in server.allowed_origins",
        );
        return Err(Box::new(
            HttpResponse::Forbidden().body("origin not allowed"),
        ));
    }
    Ok(())
}

/// The connect rate, the token and the connection limits, in that order (the connect rate comes
/// before the signature check, so a flood of forged tokens costs no RSA work). `Ok` holds the claims
/// and the admission slot of the new session.
pub(crate) fn admit(
    req: &HttpRequest,
    node: &Node,
) -> Result<(Option<Claims>, crate::admission::Ticket), Refused> {
    if let Err(refusal) = node.admission.check_rate(req.peer_addr().map(|a| a.ip())) {
        return Err(Box::new(refuse(node, req, &refusal)));
    }
    let claims = authenticate(req, node).map_err(|e| Box::new(unauthorized(node, req, e)))?;
    let user: Option<Arc<str>> = claims.as_ref().map(|c| Arc::from(c.sub.as_str()));
    match node.admission.admit(req.peer_addr().map(|a| a.ip()), user) {
        Ok(t) => Ok((claims, t)),
        Err(refusal) => Err(Box::new(refuse(node, req, &refusal))),
    }
}

/// 401 for a token that does not verify (counted by reason).
pub(crate) fn unauthorized(node: &Node, req: &HttpRequest, e: AuthError) -> HttpResponse {
    node.stats.auth_failures[e.index()].fetch_add(1, Ordering::Relaxed);
    refused(node, req, RefusedBy::Auth, &e);
    HttpResponse::Unauthorized()
        .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
        .body(format!("unauthorized: {e}"))
}

/// The `101` answer to a valid WebSocket handshake, with the chosen subprotocol. `Err` is the answer to
/// a malformed one (not a GET: 405; no `Upgrade: websocket`, a version other than 13 or a bad key: 400).
pub(crate) fn switching_protocols(
    req: &HttpRequest,
    protocol: Option<&'static str>,
) -> Result<HttpResponse, Refused> {
    let mut answer = actix_http::ws::handshake(req.head())
        .map_err(|e| Box::new(HttpResponse::from(actix_http::Response::from(e))))?;
    if let Some(p) = protocol {
        answer.insert_header((header::SEC_WEBSOCKET_PROTOCOL, p));
    }
    Ok(HttpResponse::from(answer.finish()).map_into_boxed_body())
}

/// `GET /ws`.
pub async fn route(
    req: HttpRequest,
    node: web::Data<Arc<Node>>,
) -> Result<HttpResponse, actix_web::Error> {
    let node: Arc<Node> = node.get_ref().clone();
    if let Err(answer) = check_node_and_origin(&req, &node) {
        return Ok(*answer);
    }
    let protocol = match choose_subprotocol(&req) {
        Ok(p) => p,
        Err(()) => {
            refused(
                &node,
                &req,
                RefusedBy::Subprotocol,
                &"only unknown subprotocols offered",
            );
            return Ok(HttpResponse::BadRequest().body(format!(
                "unsupported subprotocol; supported: {SUBPROTOCOL_JSON}, {SUBPROTOCOL_MSGPACK}"
            )));
        }
    };
    let encoding = protocol
        .and_then(Encoding::from_subprotocol)
        .unwrap_or(Encoding::Json);
    // A malformed handshake is refused before it takes an admission slot.
    let mut response = match switching_protocols(&req, protocol) {
        Ok(r) => r,
        Err(answer) => return Ok(*answer),
    };
    let (claims, ticket) = match admit(&req, &node) {
        Ok(admitted) => admitted,
        Err(answer) => return Ok(*answer),
    };
    let peer = req.peer_addr();
    let settings = socket::Settings::of(&node.config);
    socket::hand_over(&mut response, settings, move |mut socket| {
        let (session, outbox, close) =
            Session::new(node, Transport::WebSocket, encoding, claims, ticket, peer);
        let reader = super::inflight::Gated::new(socket.reader(), session.gate());
        Session::create(move |ctx| {
            ctx.add_stream(reader);
            session
        });
        socket.spawn_writer(outbox, close);
    });
    Ok(response)
}
