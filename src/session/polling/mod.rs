//! The long-polling transport: the same sessions as over WebSocket, carried by plain HTTP requests for
//! clients behind proxies and firewalls that refuse WebSocket (seed §3.4).
//!
//! A session opened here is the same [`Session`] actor, with the same outbox, limits, subscriptions,
//! permissions, resume, heartbeat timeout and close codes; only the way bytes leave differs. Four
//! endpoints on the client listener (the wire contract is docs/protocol.md, "Long-polling
//! transport"):
//!
//! - `POST /poll/open` opens a session (same Origin rules, token and admission limits as the
//!   WebSocket handshake) and answers its first batch, with `welcome`, and the session id;
//! - `GET /poll/recv?ack=N` answers the next batch of frames, held until frames are queued or for
//!   `session.poll_wait_ms`; `N` is the last batch received, and an unacknowledged batch is sent again,
//!   so a lost answer or a cut held poll loses and doubles nothing ([`entry`]);
//! - `POST /poll/send?seq=K` hands the session a batch of client frames, numbered so that a batch sent
//!   again after a lost answer is not applied twice;
//! - `POST /poll/close` ends the session (as a WebSocket close with 1000).
//!
//! The session id travels in the `Herald-Session` header, never in a URL (so proxies do not log it),
//! and is 128 random bits. A session of an authenticated user answers only requests whose token names
//! that user. No cookies are used, so there is no CSRF surface; CORS answers only the origins of
//! `server.allowed_origins`.

pub mod entry;

use std::sync::Arc;

use actix::Actor;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use serde::Deserialize;

use self::entry::{Answer, PollEntry};
use super::handshake::{
    admit, authenticate, check_node_and_origin, origin_allowed, unauthorized, Refused,
};
use super::output::Output;
use super::{ClientClose, Received, Session, Transport};
use crate::channel::Evict;
use crate::node::Node;
use crate::protocol::{batch, CloseCode, Encoding};

pub use entry::Polls;

/// The request header that names the session.
pub const SESSION_HEADER: &str = "herald-session";

/// The routes of the transport, for the client listener's app, with the node's registry of
/// long-polling sessions (one per node, shared by every worker).
pub fn routes(cfg: &mut web::ServiceConfig, polls: web::Data<Arc<Polls>>, max_frame_bytes: usize) {
    cfg.service(
        web::scope("/poll")
            .app_data(polls)
            .app_data(web::PayloadConfig::new(
                max_frame_bytes.saturating_mul(4).max(64 << 10),
            ))
            .route("/open", web::post().to(open))
            .route("/recv", web::get().to(recv))
            .route("/send", web::post().to(send))
            .route("/close", web::post().to(close))
            .default_service(web::route().to(preflight_or_404)),
    );
}

type NodeData = web::Data<Arc<Node>>;
/// The node's long-polling sessions (app data of the client listener).
type PollsData = web::Data<Arc<Polls>>;

#[derive(Deserialize)]
struct OpenQuery {
    encoding: Option<String>,
}

#[derive(Deserialize)]
struct RecvQuery {
    ack: Option<u64>,
}

#[derive(Deserialize)]
struct SendQuery {
    seq: Option<u64>,
}

/// A JSON error body: `{"error": code, "message": text}`.
fn error(
    mut resp: HttpResponseBuilder,
    code: &str,
    message: impl std::fmt::Display,
) -> HttpResponse {
    resp.insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"error": code, "message": message.to_string()}))
}

/// Adds the CORS headers for an allowed browser origin (none for requests without Origin).
fn with_cors(req: &HttpRequest, node: &Node, mut resp: HttpResponse) -> HttpResponse {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        if origin_allowed(req, &node.config.server.allowed_origins) {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
    resp
}

/// `OPTIONS /poll/*`: the CORS preflight, for allowed origins only.
async fn preflight_or_404(req: HttpRequest, node: NodeData) -> HttpResponse {
    if req.method() != actix_web::http::Method::OPTIONS {
        return error(HttpResponse::NotFound(), "not_found", "no such endpoint");
    }
    if req.headers().get(header::ORIGIN).is_none()
        || !origin_allowed(&req, &node.config.server.allowed_origins)
    {
        return HttpResponse::Forbidden().body("origin not allowed");
    }
    let resp = HttpResponse::NoContent()
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "authorization, content-type, herald-session",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
        .finish();
    with_cors(&req, &node, resp)
}

fn batch_response(encoding: Encoding, body: bytes::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(batch::content_type(encoding))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

/// `POST /poll/open?encoding=json|msgpack`.
async fn open(req: HttpRequest, node: NodeData, polls: PollsData) -> HttpResponse {
    let node = node.get_ref().clone();
    let resp = open_session(&req, &node, &polls).await;
    with_cors(&req, &node, resp)
}

async fn open_session(req: &HttpRequest, node: &Arc<Node>, polls: &Polls) -> HttpResponse {
    if let Err(answer) = check_node_and_origin(req, node) {
        return *answer;
    }
    let q = web::Query::<OpenQuery>::from_query(req.query_string()).ok();
    let encoding = match q.as_ref().and_then(|q| q.encoding.as_deref()) {
        None | Some("json") => Encoding::Json,
        Some("msgpack") => Encoding::Msgpack,
        Some(_) => {
            return error(
                HttpResponse::BadRequest(),
                "bad_request",
                "encoding must be json or msgpack",
            )
        }
    };
    let (claims, ticket) = match admit(req, node) {
        Ok(admitted) => admitted,
        Err(answer) => return *answer,
    };
    let Some(id) = entry::new_id() else {
        tracing::error!("long-polling: the system's random generator failed");
        return error(
            HttpResponse::InternalServerError(),
            "internal",
            "no session id",
        );
    };
    let user = claims.as_ref().map(|c| Arc::from(c.sub.as_str()));
    let (session, outbox, close) = Session::new(
        node.clone(),
        Transport::LongPolling,
        encoding,
        claims,
        ticket,
        req.peer_addr(),
    );
    let gate = session.gate();
    let addr = session.start();
    let entry = Arc::new(PollEntry::new(
        user,
        addr,
        encoding,
        gate,
        Output::new(outbox),
        close,
    ));
    polls.insert(id.clone(), entry.clone());
    let cfg = &node.config.session;
    match entry
        .poll(0, cfg.poll_wait(), cfg.poll_batch_bytes, Some(&id))
        .await
    {
        Answer::Batch(body) => batch_response(encoding, body),
        Answer::Closed => error(HttpResponse::Gone(), "closed", "the session ended"),
    }
}

/// The session a request names, if the request may speak for it. `Err` is the answer to send.
fn session_of(req: &HttpRequest, node: &Node, polls: &Polls) -> Result<Arc<PollEntry>, Refused> {
    if !origin_allowed(req, &node.config.server.allowed_origins) {
        return Err(Box::new(
            HttpResponse::Forbidden().body("origin not allowed"),
        ));
    }
    let id = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Box::new(error(
                HttpResponse::BadRequest(),
                "bad_request",
                "the Herald-Session header is missing",
            ))
        })?;
    let entry = polls.get(id).ok_or_else(|| {
        Box::new(error(
            HttpResponse::NotFound(),
            "unknown_session",
            "no such session (it ended, or never existed): open a new one",
        ))
    })?;
    if let Some(user) = &entry.user {
        let claims = authenticate(req, node).map_err(|e| Box::new(unauthorized(node, req, e)))?;
        if claims.as_ref().map(|c| c.sub.as_str()) != Some(&**user) {
            return Err(Box::new(error(
                HttpResponse::Forbidden(),
                "forbidden",
                "the session belongs to another user",
            )));
        }
    }
    Ok(entry)
}

/// `GET /poll/recv?ack=N`.
async fn recv(req: HttpRequest, node: NodeData, polls: PollsData) -> HttpResponse {
    let resp = match session_of(&req, &node, &polls) {
        Err(answer) => *answer,
        Ok(entry) => {
            let Ok(q) = web::Query::<RecvQuery>::from_query(req.query_string()) else {
                let resp = error(
                    HttpResponse::BadRequest(),
                    "bad_request",
                    "ack must be the seq of the last batch received (a whole number)",
                );
                return with_cors(&req, &node, resp);
            };
            let ack = q.ack.unwrap_or(0);
            let cfg = &node.config.session;
            match entry
                .poll(ack, cfg.poll_wait(), cfg.poll_batch_bytes, None)
                .await
            {
                Answer::Batch(body) => batch_response(entry.encoding, body),
                Answer::Closed => error(
                    HttpResponse::Gone(),
                    "closed",
                    "the session ended (its last batch held the disconnect frame)",
                ),
            }
        }
    };
    with_cors(&req, &node, resp)
}

/// `POST /poll/send?seq=K` with a batch of frames.
async fn send(
    req: HttpRequest,
    body: web::Bytes,
    node: NodeData,
    polls: PollsData,
) -> HttpResponse {
    let resp = match session_of(&req, &node, &polls) {
        Err(answer) => *answer,
        Ok(entry) => hand_over(&req, &body, &node, &entry).await,
    };
    with_cors(&req, &node, resp)
}

async fn hand_over(req: &HttpRequest, body: &[u8], node: &Node, entry: &PollEntry) -> HttpResponse {
    let Some(seq) = web::Query::<SendQuery>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.seq)
        .filter(|&k| k > 0)
    else {
        return error(
            HttpResponse::BadRequest(),
            "bad_request",
            "seq must number the batch (1, 2, 3, ...)",
        );
    };
    let expected = batch::content_type(entry.encoding);
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let essence = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        if !essence.eq_ignore_ascii_case(expected) {
            return error(
                HttpResponse::UnsupportedMediaType(),
                "unsupported_media_type",
                format!("this session's batches are {expected}"),
            );
        }
    }
    // One batch at a time, in order: the lock is held until every frame is handed over.
    let mut last = entry.sends.clone().lock_owned().await;
    if seq <= *last {
        // Sent again after its answer was lost: already handed over.
        return HttpResponse::NoContent().finish();
    }
    if seq != *last + 1 {
        return error(
            HttpResponse::Conflict(),
            "out_of_order",
            format!("expected batch {}", *last + 1),
        );
    }
    let max_frame = node.config.limits.max_frame_bytes;
    let frames = match batch::decode(entry.encoding, body, max_frame) {
        Ok(f) => f,
        Err(e @ batch::BatchError::FrameTooBig(..)) => {
            // As a WebSocket frame over the limit: the session is closed with 1009.
            entry.session.do_send(Evict {
                code: CloseCode::TooBig,
                reason: None,
            });
            return error(HttpResponse::PayloadTooLarge(), "too_big", e);
        }
        Err(e) => return error(HttpResponse::BadRequest(), "bad_request", e),
    };
    *last = seq;
    // From here the batch counts as handed over (a repeat of `seq` is a no-op), so it is handed over
    // in full even if this request goes away meanwhile: by a task of its own, not by the request.
    let (gate, session) = (entry.gate.clone(), entry.session.clone());
    let handing = actix_web::rt::spawn(async move {
        let _in_order = last; // the next batch waits until this one is handed over
        for frame in frames {
            // At `session.max_inflight` commands in flight the session reads no further (as it
            // stops reading a socket); this batch waits, and so does the client's next one.
            gate.room().await;
            if session.send(Received(frame)).await.is_err() {
                return false;
            }
        }
        true
    });
    match handing.await {
        Ok(true) => HttpResponse::NoContent().finish(),
        _ => error(HttpResponse::Gone(), "closed", "the session ended"),
    }
}

/// `POST /poll/close`.
async fn close(req: HttpRequest, node: NodeData, polls: PollsData) -> HttpResponse {
    let resp = match session_of(&req, &node, &polls) {
        Err(answer) => *answer,
        Ok(entry) => {
            entry.session.do_send(ClientClose);
            HttpResponse::NoContent().finish()
        }
    };
    with_cors(&req, &node, resp)
}

/// Drops the entries of ended sessions, every second, a poll wait after their end.
pub fn start_sweeper(polls: Arc<Polls>, grace: std::time::Duration) {
    actix_rt::spawn(async move {
        let mut tick = actix_rt::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            polls.sweep(grace);
        }
    });
}
