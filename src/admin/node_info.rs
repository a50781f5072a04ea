//! `GET /api/node` and the probes `GET /healthz`, `GET /readyz`.
//!
//! Exists so an operator (or an orchestrator) can tell what a node is and whether it takes clients. The node
//! summary includes the effective configuration with every secret blanked: the config is `Serialize`, and
//! [`redact`] walks the JSON tree, so secrets added to the config later are caught by name without touching
//! this file.

use std::path::Path;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{params, ApiError, NodeData};
use crate::node::Stats;

/// What replaces a secret in the config summary.
pub const REDACTED: &str = "<redacted>";

/// Key name parts that mark a secret (matched on `_`-separated words, case-insensitive).
const SECRET_WORDS: &[&str] = &[
    "token",
    "tokens",
    "secret",
    "secrets",
    "password",
    "passwords",
    "key",
    "keys",
    "private",
    "credential",
    "credentials",
    "hmac",
];

/// A node's identity and state.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct NodeView {
    pub node_id: String,
    pub version: String,
    pub started_at_ms: u64,
    pub uptime_seconds: u64,
    /// True while shutting down (no new connections).
    pub draining: bool,
    /// Live client connections.
    pub sessions: usize,
    /// Subscriptions over all sessions.
    pub subscriptions: i64,
    /// Channels with a running actor.
    pub active_channels: usize,
    pub data_dir: String,
    /// Bytes of every file under `server.data_dir`.
    pub data_dir_bytes: u64,
    /// sled's own estimate of the history store's size.
    pub history_bytes: Option<u64>,
    /// Effective configuration with secrets replaced by `"<redacted>"` (an unset secret stays `""`).
    #[schema(value_type = Object)]
    pub config: Value,
}

/// Replaces the value of every key that names a secret. An empty string stays empty, so "not configured"
/// remains visible.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let lower = k.to_ascii_lowercase();
                if lower
                    .split(['_', '-', '.'])
                    .any(|w| SECRET_WORDS.contains(&w))
                {
                    let empty = matches!(val, Value::Null)
                        || val.as_str().is_some_and(str::is_empty)
                        || val.as_array().is_some_and(Vec::is_empty)
                        || val.as_object().is_some_and(|o| o.is_empty());
                    if !empty {
                        *val = Value::String(REDACTED.into());
                    }
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Total size of the files under `dir` (symlinks not followed; unreadable entries skipped).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

/// Node summary.
#[utoipa::path(get, path = "/api/node", tag = "node",
    responses((status = 200, body = NodeView), (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn node(node: NodeData) -> Result<HttpResponse, ApiError> {
    let mut config = serde_json::to_value(&*node.config)
        .map_err(|e| ApiError::internal(format!("cannot serialize config: {e}")))?;
    redact(&mut config);
    let data_dir = node.config.server.data_dir.clone();
    let data_dir_bytes = web::block(move || dir_size(&data_dir))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let uptime = node.started_at.elapsed().map_or(0, |d| d.as_secs());
    Ok(HttpResponse::Ok().json(NodeView {
        node_id: node.id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms: params::unix_ms(node.started_at),
        uptime_seconds: uptime,
        draining: node.is_draining(),
        sessions: node.sessions.len(),
        subscriptions: Stats::get(&node.stats.subscriptions).max(0),
        active_channels: node.channels.len(),
        data_dir: node.config.server.data_dir.display().to_string(),
        data_dir_bytes,
        history_bytes: node.store.size_on_disk().ok(),
        config,
    }))
}

/// One node of the cluster as this node sees it.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct MemberView {
    pub node_id: String,
    /// Changes every time the node process starts.
    pub incarnation: String,
    /// `self` (the node answering), `alive`, or `dead` (unheard for 3 heartbeats).
    pub state: String,
    pub last_seen_ms: u64,
    pub address: String,
    pub admin_address: String,
    pub connections: u64,
    pub subscriptions: u64,
    /// Last log index applied, per shard.
    pub applied: Vec<u64>,
    /// Per shard, how many log indexes this node is behind the most advanced alive node (as last
    /// heard).
    pub lag: Vec<u64>,
}

/// The cluster as this node sees it.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ClusterView {
    pub enabled: bool,
    pub name: String,
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    pub nodes: Vec<MemberView>,
    /// Per shard, how many log indexes the answering node is behind the most advanced alive node.
    pub lag: Vec<u64>,
}

/// Cluster membership: every node heard on the bus, with its state, load and applied positions.
#[utoipa::path(get, path = "/api/cluster", tag = "node",
    responses((status = 200, body = ClusterView), (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn cluster(node: NodeData) -> HttpResponse {
    let me = node.heartbeat(0);
    let nodes = node
        .membership
        .members(&me)
        .into_iter()
        .map(|m| MemberView {
            lag: node.membership.lag(&m.heartbeat),
            state: if m.me {
                "self"
            } else if m.alive {
                "alive"
            } else {
                "dead"
            }
            .to_string(),
            node_id: m.heartbeat.node,
            incarnation: m.heartbeat.incarnation,
            last_seen_ms: m.last_seen_ms,
            address: m.heartbeat.address,
            admin_address: m.heartbeat.admin_address,
            connections: m.heartbeat.connections,
            subscriptions: m.heartbeat.subscriptions,
            applied: m.heartbeat.applied,
        })
        .collect();
    HttpResponse::Ok().json(ClusterView {
        enabled: node.config.cluster.enabled,
        name: node.config.cluster.name.clone(),
        heartbeat_ms: crate::cluster::HEARTBEAT.as_millis() as u64,
        dead_after_ms: crate::cluster::DEAD_AFTER.as_millis() as u64,
        lag: node.membership.lag(&me),
        nodes,
    })
}

/// Liveness: 200 while the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, description = "process up")))]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Readiness: 200 while accepting clients with storage open and (in a cluster) the log writable; 503
/// while draining, if storage fails, or while the cluster log cannot take publishes (RabbitMQ down).
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses((status = 200, description = "accepting clients"), (status = 503, description = "draining, storage failing, or the cluster log unreachable")))]
pub(crate) async fn readyz(node: NodeData) -> HttpResponse {
    if node.is_draining() {
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "draining"}));
    }
    // A cheap read proves the store answers; `health` says whether it still accepts writes.
    if let Err(e) = node
        .store
        .get_cursor("herald.readyz")
        .and_then(|_| node.store.health())
    {
        return HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "storage_unavailable", "error": e.to_string()}));
    }
    if !node.log.is_writable() {
        return HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "log_unavailable"}));
    }
    HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secret_keys_at_any_depth() {
        let mut v = serde_json::json!({
            "admin": {"token": "s3cret"},
            "auth": {"jwt_secret": "x", "hmac_keys": ["a"], "public_key_path": "", "issuer": "me"},
            "limits": {"max_publish_bytes": 5},
            "history": {"idempotency_window_ms": 3},
        });
        redact(&mut v);
        assert_eq!(v["admin"]["token"], REDACTED);
        assert_eq!(v["auth"]["jwt_secret"], REDACTED);
        assert_eq!(v["auth"]["hmac_keys"], REDACTED);
        assert_eq!(v["auth"]["public_key_path"], "");
        assert_eq!(v["auth"]["issuer"], "me");
        assert_eq!(v["limits"]["max_publish_bytes"], 5);
        assert_eq!(v["history"]["idempotency_window_ms"], 3);
        let mut empty = serde_json::json!({"admin": {"token": ""}});
        redact(&mut empty);
        assert_eq!(empty["admin"]["token"], "");
    }
}
