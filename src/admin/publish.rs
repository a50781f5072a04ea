//! `POST /api/publish`: publish from the operator's backend.
//!
//! Exists so servers can push into channels without a WebSocket. The message goes through exactly the path a
//! client publish takes (the same data validation with `protocol::encode_message_data`, the same
//! `limits.max_publish_bytes`, the channel actor's idempotency check and group-commit durability), with
//! `from: null`. The namespace option `allow_publish` binds clients only (see docs/architecture.md).

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{params, ApiError, NodeData};
use crate::channel::Publish;
use crate::protocol::encode_message_data;

/// Largest idempotency key, as for clients (`protocol::command::MAX_KEY_LEN`).
const MAX_KEY_LEN: usize = 128;

/// A message to publish.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    #[schema(example = "chat:lobby")]
    pub channel: String,
    /// Any JSON value (encoded like a client's `data`).
    #[schema(value_type = Object)]
    pub data: rmpv::Value,
    /// Idempotency key: a retry with the same key and data within `history.idempotency_window_ms` returns
    /// the first publish's result instead of publishing twice; the same key with other data is 409
    /// `conflict`. The admin API has its own key scope, apart from every client's.
    pub key: Option<String>,
}

/// Where the message landed.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct PublishResponse {
    pub id: String,
    pub epoch: String,
    pub offset: u64,
}

/// Nesting depth of containers (a scalar is 0, `[]` is 1), without recursion.
fn depth(v: &rmpv::Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            rmpv::Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            rmpv::Value::Map(entries) => {
                max = max.max(d + 1);
                stack.extend(entries.iter().map(|(_, i)| (i, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// Publish a message as the server.
#[utoipa::path(post, path = "/api/publish", tag = "publish", request_body = PublishRequest,
    responses((status = 200, body = PublishResponse), (status = 400, body = super::error::ErrorBody),
              (status = 409, description = "key reused with different data", body = super::error::ErrorBody),
              (status = 413, description = "data over limits.max_publish_bytes", body = super::error::ErrorBody),
              (status = 503, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn publish(
    node: NodeData,
    body: web::Json<PublishRequest>,
) -> Result<HttpResponse, ApiError> {
    let PublishRequest { channel, data, key } = body.into_inner();
    let limits = &node.config.limits;
    params::channel(&channel, limits.max_channel_len)?;
    if let Some(k) = &key {
        if k.is_empty() || k.len() > MAX_KEY_LEN {
            return Err(ApiError::bad_request(format!(
                "`key` must be 1 to {MAX_KEY_LEN} bytes"
            )));
        }
    }
    // A client frame counts itself as one level; `data` sits one level below it.
    if depth(&data) + 1 > limits.max_depth {
        return Err(ApiError::bad_request(format!(
            "data nests deeper than {}",
            limits.max_depth
        )));
    }
    let raw = encode_message_data(&data).map_err(ApiError::bad_request)?;
    if raw.len() > limits.max_publish_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "data is {} bytes encoded; the limit is {}",
                raw.len(),
                limits.max_publish_bytes
            ),
        ));
    }
    let msg = Publish {
        channel,
        raw,
        from: None,
        publisher: crate::channel::ADMIN_PUBLISHER.to_string(),
        key,
    };
    let p = crate::channel::publish(&node.hub, msg)
        .await
        .map_err(|e| ApiError::from_channel(&e))?;
    Ok(HttpResponse::Ok().json(PublishResponse {
        id: p.id,
        epoch: p.epoch,
        offset: p.offset,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_containers() {
        let v: rmpv::Value = serde_json::from_str(r#"{"a":[1,{"b":[]}]}"#).unwrap();
        assert_eq!(depth(&v), 4);
        assert_eq!(depth(&rmpv::Value::from(1)), 0);
    }
}
