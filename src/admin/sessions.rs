//! `/api/connections` and `/api/disconnect`: who is connected, and cutting sessions off.
//!
//! Exists so operators can find a user's connections and close them. Both read the node's session registry
//! (ids, users, peers, connection times) and act only by message: a disconnect sends each session actor an
//! [`Evict`](crate::channel::Evict), and the session sends its client a `disconnect` frame and the close
//! itself. In a cluster a disconnect reaches every node ([`super::scatter`]); the connection listing is
//! this node's.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::params::{self, DEFAULT_LIMIT, MAX_LIMIT};
use super::{ApiError, NodeData};
use crate::channel::Evict;
use crate::node::Node;
use crate::protocol::CloseCode;

/// Longest close reason: a WebSocket close frame carries at most 123 bytes of reason.
const MAX_REASON_BYTES: usize = 123;

/// Query of `GET /api/connections`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConnectionsQuery {
    /// Only the sessions of this user.
    user: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One live connection.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ConnectionView {
    pub session: String,
    /// Authenticated user; null for anonymous connections.
    pub user: Option<String>,
    /// Client address as seen by the node.
    pub peer: Option<String>,
    /// `websocket` or `long_polling`.
    pub transport: String,
    /// When the connection was opened (ms since the Unix epoch).
    pub connected_at_ms: u64,
}

/// A page of connections, ordered by session id.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ConnectionList {
    pub connections: Vec<ConnectionView>,
    /// Connections matching the filter (all pages).
    pub total: usize,
    pub next_cursor: Option<String>,
}

/// Whom to disconnect: exactly one of `user` and `session`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    /// Every session of this user.
    pub user: Option<String>,
    /// One session.
    pub session: Option<String>,
    /// Close code (a herald close code, see docs/protocol.md); default 4004 `disconnected`.
    pub code: Option<u16>,
    /// Reason sent in the `disconnect` frame and the close (at most 123 bytes); default
    /// "disconnected by operator".
    pub reason: Option<String>,
}

/// How many sessions were told to close, on every node.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct DisconnectResponse {
    /// Sessions told to close, cluster-wide.
    pub disconnected: usize,
    /// Their ids, ordered.
    pub sessions: Vec<String>,
    /// Sessions told to close per node (this node included, even at 0).
    pub by_node: std::collections::BTreeMap<String, usize>,
    /// Nodes that did not answer within `cluster.admin_timeout_ms` (their sessions may still be open).
    pub not_answering: Vec<String>,
}

/// Whom a disconnect is for.
pub(super) enum Target<'a> {
    User(&'a str),
    Session(&'a str),
}

impl Target<'_> {
    fn matches(&self, session: &str, user: Option<&str>) -> bool {
        match self {
            Target::User(u) => user == Some(*u),
            Target::Session(s) => session == *s,
        }
    }
}

/// List live connections.
#[utoipa::path(get, path = "/api/connections", tag = "connections", params(ConnectionsQuery),
    responses((status = 200, body = ConnectionList), (status = 400, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn connections(
    node: NodeData,
    q: web::Query<ConnectionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = params::limit(&q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let user = params::opt(&q.user);
    let mut all: Vec<_> = node
        .sessions
        .snapshot()
        .into_iter()
        .filter(|(_, e)| user.is_none() || e.user.as_deref() == user)
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let total = all.len();
    let start = match params::opt(&q.cursor) {
        Some(c) => all.partition_point(|(id, _)| &**id <= c),
        None => 0,
    };
    let end = (start + limit).min(all.len());
    let connections = all[start..end]
        .iter()
        .map(|(id, e)| ConnectionView {
            session: id.to_string(),
            user: e.user.as_deref().map(str::to_owned),
            peer: e.peer.map(|p| p.to_string()),
            transport: e.transport.label().to_string(),
            connected_at_ms: params::unix_ms(e.connected_at),
        })
        .collect();
    let next_cursor = (end < all.len()).then(|| all[end - 1].0.to_string());
    Ok(HttpResponse::Ok().json(ConnectionList {
        connections,
        total,
        next_cursor,
    }))
}

/// Disconnect a user's sessions or one session.
#[utoipa::path(post, path = "/api/disconnect", tag = "connections", request_body = DisconnectRequest,
    responses((status = 200, body = DisconnectResponse), (status = 400, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn disconnect(
    node: NodeData,
    body: web::Json<DisconnectRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = body.into_inner();
    let code = match req.code {
        None => CloseCode::Disconnected,
        Some(c) => CloseCode::from_code(c)
            .filter(|c| c.code() >= 4000)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`code` {c} is not a herald close code (4000-4006, see docs/protocol.md)"
                ))
            })?,
    };
    if let Some(r) = &req.reason {
        if r.len() > MAX_REASON_BYTES {
            return Err(ApiError::bad_request(format!(
                "`reason` is longer than {MAX_REASON_BYTES} bytes"
            )));
        }
    }
    let target = match (req.user.as_deref(), req.session.as_deref()) {
        (Some(u), None) if !u.is_empty() => Target::User(u),
        (None, Some(s)) if !s.is_empty() => Target::Session(s),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `user` and `session` (non-empty)",
            ))
        }
    };
    let mut sessions = disconnect_here(&node, &target, code, req.reason.clone());
    let mut by_node = std::collections::BTreeMap::new();
    by_node.insert(node.id.clone(), sessions.len());
    let question = super::scatter::Question::Disconnect {
        user: req.user.clone(),
        session: req.session.clone(),
        code: code.code(),
        reason: req.reason.clone(),
    };
    let gathered = super::scatter::ask(&node, &question).await;
    for (other, answer) in gathered.answers {
        if let super::scatter::Answer::Disconnected(ids) = answer {
            by_node.insert(other, ids.len());
            sessions.extend(ids);
        }
    }
    sessions.sort();
    tracing::info!(
        user = req.user.as_deref(),
        session = req.session.as_deref(),
        code = code.code(),
        count = sessions.len(),
        not_answering = gathered.not_answering.len(),
        "admin disconnect"
    );
    Ok(HttpResponse::Ok().json(DisconnectResponse {
        disconnected: sessions.len(),
        sessions,
        by_node,
        not_answering: gathered.not_answering,
    }))
}

/// Tells this node's sessions matching `target` to close; returns their ids.
pub(super) fn disconnect_here(
    node: &Node,
    target: &Target<'_>,
    code: CloseCode,
    reason: Option<String>,
) -> Vec<String> {
    let mut sessions = Vec::new();
    for (id, entry) in node.sessions.snapshot() {
        if !target.matches(&id, entry.user.as_deref()) {
            continue;
        }
        let evict = Evict {
            code,
            reason: reason.clone(),
        };
        // A session whose actor is gone is closing anyway; it is not counted. `do_send` (not `try_send`)
        // so a busy session's full mailbox cannot drop an operator's disconnect.
        if entry.evict.connected() {
            entry.evict.do_send(evict);
            sessions.push(id.to_string());
        }
    }
    sessions
}
