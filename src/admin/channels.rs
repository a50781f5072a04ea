//! `/api/channels/*`: channel listing, inspection, history, presence and history reset.
//!
//! Exists so operators can see which channels exist and how far their history reaches. The listing walks the
//! store's name-ordered channel index from the cursor (cost proportional to the page, not to the number of
//! channels) and asks each channel that has a live actor for its live state with
//! [`Inspect`](crate::channel::Inspect); channels without an actor have no subscribers by definition.
//! History, presence and reset go through the channel actor, the only writer of a channel's history.

use actix_web::{web, HttpResponse};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::params::{self, DEFAULT_LIMIT, MAX_LIMIT};
use super::scatter;
use super::{ApiError, NodeData};
use crate::channel::{history_page, namespace_of, ChannelInfo, History, Inspect, ResetHistory};
use crate::history::ChannelState;
use crate::node::Node;

/// One channel in a listing.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone)]
pub struct ChannelSummary {
    pub name: String,
    pub namespace: String,
    /// Whether a channel actor is running for it (it has subscribers or recent traffic).
    pub active: bool,
    /// Current subscribers on every node that answered (this node's are 0 when not active here).
    pub subscribers: usize,
    /// Subscribers per node that answered, this node included.
    pub subscribers_by_node: std::collections::BTreeMap<String, usize>,
    /// Epoch of the channel's history (ULID); changes when history is lost or reset.
    pub epoch: String,
    /// Offset of the last durable message (0 if none).
    pub head: u64,
    /// Oldest retained offset, null if nothing is retained.
    pub oldest: Option<u64>,
    /// Messages retained (counted: offsets may have gaps).
    pub retained: u64,
    /// Bytes of retained history, null when not known (not tracked per channel yet).
    pub bytes: Option<u64>,
    /// Server time (ms since the Unix epoch) of the last publish seen by the running actor; null when the
    /// channel is not active or had no publish since its actor started.
    pub last_publish_ms: Option<u64>,
}

/// A page of channels.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ChannelList {
    pub channels: Vec<ChannelSummary>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
    /// Nodes that did not answer within `cluster.admin_timeout_ms`: their subscribers are not counted.
    pub not_answering: Vec<String>,
}

/// Namespace options in force for a channel.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct NamespaceView {
    pub presence: bool,
    pub join_leave: bool,
    pub allow_publish: bool,
    pub history_size: u64,
    pub history_ttl_secs: u64,
}

impl From<crate::config::NamespaceOptions> for NamespaceView {
    fn from(o: crate::config::NamespaceOptions) -> Self {
        NamespaceView {
            presence: o.presence,
            join_leave: o.join_leave,
            allow_publish: o.allow_publish,
            history_size: o.history_size,
            history_ttl_secs: o.history_ttl_secs,
        }
    }
}

/// One subscriber of a channel.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct SubscriberView {
    pub session: String,
    pub user: Option<String>,
    /// When it subscribed to this channel (ms since the Unix epoch).
    pub subscribed_at_ms: u64,
    /// When its connection was opened (ms since the Unix epoch); null if it is gone meanwhile.
    pub connected_at_ms: Option<u64>,
}

/// A channel with its subscribers and namespace options.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ChannelDetail {
    #[serde(flatten)]
    pub summary: ChannelSummary,
    pub options: NamespaceView,
    /// Messages appended but not yet durable.
    pub pending: usize,
    /// A page of this node's subscribers, ordered by session id (other nodes' are counted in
    /// `subscribers_by_node`; ask their admin API for the list).
    pub subscribers_page: Vec<SubscriberView>,
    /// Pass as `cursor` for the next page of subscribers; null on the last page.
    pub next_cursor: Option<String>,
    /// Nodes that did not answer within `cluster.admin_timeout_ms`: their subscribers are not counted.
    pub not_answering: Vec<String>,
}

/// Query of `GET /api/channels`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only channels whose name starts with this.
    prefix: Option<String>,
    /// Page size, 1 to 1000 (default 100; larger values are clamped).
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Query of the paginated sub-lists (`limit`, `cursor`).
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Query of `GET /api/channels/{name}/history`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Return messages with offsets greater than this (default 0: from the oldest retained).
    #[param(value_type = Option<u64>)]
    since: Option<String>,
    /// Page size, 1 to `history.max_page` (default 100).
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
}

/// One retained message.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct HistoryMessage {
    pub offset: u64,
    pub id: String,
    /// Server time of the publish (ms since the Unix epoch).
    pub ts_ms: u64,
    /// Publishing user; null for anonymous clients and the admin API.
    pub from: Option<String>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A page of history.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct HistoryView {
    pub channel: String,
    pub epoch: String,
    pub head: u64,
    pub oldest: Option<u64>,
    pub messages: Vec<HistoryMessage>,
    /// Pass as `since` for the next page; null when this page reaches the head.
    pub next: Option<u64>,
}

/// One member of a channel's presence.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct Member {
    pub session: String,
    pub user: Option<String>,
}

/// Who is in a channel.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct PresenceView {
    pub channel: String,
    /// Sessions subscribed on every node (others as heard on the cluster bus), ordered by session id.
    pub members: Vec<Member>,
    /// Distinct non-null users among the members.
    pub users: usize,
}

/// Result of a history reset.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ResetView {
    pub channel: String,
    /// The new epoch; resuming clients get `recovered: false`.
    pub epoch: String,
}

fn summary(
    node: &Node,
    name: &str,
    stored: Option<&ChannelState>,
    live: Option<&ChannelInfo>,
) -> ChannelSummary {
    let epoch = live
        .map(|i| i.epoch.clone())
        .or_else(|| stored.map(|s| s.epoch.clone()))
        .unwrap_or_default();
    let head = live.map(|i| i.head).or(stored.map(|s| s.head)).unwrap_or(0);
    // The store may already hold appended-but-not-durable messages; the epoch must match too.
    let oldest = stored
        .filter(|s| s.epoch == epoch)
        .and_then(|s| s.oldest)
        .filter(|o| *o <= head);
    let store = &node.store;
    let here = live.map_or(0, |i| i.subscribers.len());
    ChannelSummary {
        name: name.to_string(),
        namespace: namespace_of(name).to_string(),
        active: live.is_some(),
        subscribers: here,
        subscribers_by_node: [(node.id.clone(), here)].into(),
        epoch,
        head,
        oldest,
        // Counted (offsets may have gaps), from the messages' numbers: two lookups.
        retained: oldest.map_or(0, |o| {
            store
                .count_range(name, o.saturating_sub(1), head)
                .unwrap_or(0)
        }),
        bytes: None,
        last_publish_ms: live.and_then(|i| i.last_publish_ms),
    }
}

/// Adds the other nodes' subscribers to each summary; returns the nodes that did not answer.
async fn add_other_nodes(node: &Node, summaries: &mut [ChannelSummary]) -> Vec<String> {
    let channels = summaries.iter().map(|c| c.name.clone()).collect();
    let gathered = scatter::ask(node, &scatter::Question::Subscribers { channels }).await;
    for (other, answer) in gathered.answers {
        let scatter::Answer::Subscribers(counts) = answer else {
            continue;
        };
        for (summary, n) in summaries.iter_mut().zip(counts) {
            summary.subscribers += n;
            summary.subscribers_by_node.insert(other.clone(), n);
        }
    }
    gathered.not_answering
}

/// Asks the live actor of `name`, if any, for its state. A channel that stops meanwhile counts as inactive.
async fn inspect(node: &Node, name: &str) -> Option<ChannelInfo> {
    let addr = node.channels.get(name)?;
    addr.send(Inspect).await.ok()
}

/// The stored state of `name`, or 404 if neither the store nor the registry knows it.
async fn known(
    node: &Node,
    name: &str,
) -> Result<(Option<ChannelState>, Option<ChannelInfo>), ApiError> {
    params::channel(name, node.config.limits.max_channel_len)?;
    let stored = node
        .store
        .peek_state(name)
        .map_err(|e| ApiError::storage(&e))?;
    let live = inspect(node, name).await;
    if stored.is_none() && live.is_none() {
        return Err(ApiError::not_found(format!("unknown channel {name:?}")));
    }
    Ok((stored, live))
}

/// List channels.
#[utoipa::path(get, path = "/api/channels", tag = "channels", params(ListQuery),
    responses((status = 200, body = ChannelList), (status = 400, body = super::error::ErrorBody),
              (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list(
    node: NodeData,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = params::limit(&q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let prefix = params::opt(&q.prefix).unwrap_or("");
    let cursor = params::opt(&q.cursor);
    // One more than the page tells whether there is a next page without a second scan.
    let mut page = node
        .store
        .channels(prefix, cursor, limit + 1)
        .map_err(|e| ApiError::storage(&e))?;
    let more = page.len() > limit;
    page.truncate(limit);
    let lives = join_all(page.iter().map(|(name, _)| inspect(&node, name))).await;
    let channels: Vec<ChannelSummary> = page
        .iter()
        .zip(&lives)
        .map(|((name, st), live)| summary(&node, name, Some(st), live.as_ref()))
        .collect();
    let mut channels = channels;
    let not_answering = add_other_nodes(&node, &mut channels).await;
    let next_cursor = if more {
        channels.last().map(|c| c.name.clone())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(ChannelList {
        channels,
        next_cursor,
        not_answering,
    }))
}

/// Inspect one channel: its state, namespace options and a page of subscribers.
#[utoipa::path(get, path = "/api/channels/{name}", tag = "channels",
    params(("name" = String, Path, description = "channel name"), PageQuery),
    responses((status = 200, body = ChannelDetail), (status = 400, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn detail(
    node: NodeData,
    name: web::Path<String>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = params::limit(&q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let (stored, live) = known(&node, &name).await?;
    let mut summary = summary(&node, &name, stored.as_ref(), live.as_ref());
    let not_answering = add_other_nodes(&node, std::slice::from_mut(&mut summary)).await;
    let options = match &live {
        Some(i) => i.options.clone(),
        None => node.config.namespace(namespace_of(&name)),
    };
    let subs = live.as_ref().map_or(&[][..], |i| &i.subscribers[..]);
    let start = match params::opt(&q.cursor) {
        Some(c) => subs.partition_point(|s| s.session.as_str() <= c),
        None => 0,
    };
    let end = (start + limit).min(subs.len());
    let page = &subs[start..end];
    let connected: std::collections::HashMap<String, u64> = if page.is_empty() {
        Default::default()
    } else {
        node.sessions
            .snapshot()
            .into_iter()
            .map(|(id, e)| (id.to_string(), params::unix_ms(e.connected_at)))
            .collect()
    };
    let subscribers_page = page
        .iter()
        .map(|s| SubscriberView {
            session: s.session.clone(),
            user: s.user.clone(),
            subscribed_at_ms: s.since_ms,
            connected_at_ms: connected.get(&s.session).copied(),
        })
        .collect();
    let next_cursor = (end < subs.len()).then(|| subs[end - 1].session.clone());
    Ok(HttpResponse::Ok().json(ChannelDetail {
        summary,
        options: options.into(),
        pending: live.as_ref().map_or(0, |i| i.pending),
        subscribers_page,
        next_cursor,
        not_answering,
    }))
}

/// Retained messages of a channel, paged by offset.
#[utoipa::path(get, path = "/api/channels/{name}/history", tag = "channels",
    params(("name" = String, Path, description = "channel name"), HistoryQuery),
    responses((status = 200, body = HistoryView), (status = 400, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn history(
    node: NodeData,
    name: web::Path<String>,
    q: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let max = node.config.history.max_page;
    let limit = params::limit(&q.limit, DEFAULT_LIMIT, max)?;
    let since = params::opt_u64("since", &q.since)?.unwrap_or(0);
    known(&node, &name).await?;
    let q = History {
        since,
        limit,
        max_bytes: node.config.history.max_page_bytes,
    };
    let page = history_page(&node.hub, &name, q)
        .await
        .map_err(|e| ApiError::from_channel(&e))?;
    let mut messages = Vec::with_capacity(page.messages.len());
    for m in page.messages {
        let value = rmpv::decode::read_value(&mut &m.data[..])
            .map_err(|e| ApiError::internal(format!("message {} is unreadable: {e}", m.offset)))?;
        let data = serde_json::to_value(&value)
            .map_err(|e| ApiError::internal(format!("message {} is unreadable: {e}", m.offset)))?;
        messages.push(HistoryMessage {
            offset: m.offset,
            id: m.id,
            ts_ms: m.ts_ms,
            from: m.from,
            data,
        });
    }
    Ok(HttpResponse::Ok().json(HistoryView {
        channel: name.into_inner(),
        epoch: page.epoch,
        head: page.head,
        oldest: page.oldest,
        messages,
        next: page.next,
    }))
}

/// Sessions subscribed to a channel (shown even where the namespace disables client `presence`).
#[utoipa::path(get, path = "/api/channels/{name}/presence", tag = "channels",
    params(("name" = String, Path, description = "channel name")),
    responses((status = 200, body = PresenceView), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn presence(
    node: NodeData,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, live) = known(&node, &name).await?;
    let mut members: Vec<Member> = live
        .map(|i| i.subscribers)
        .unwrap_or_default()
        .into_iter()
        .map(|s| Member {
            session: s.session,
            user: s.user,
        })
        .collect();
    members.extend(
        node.cluster_state
            .remote_members(&name)
            .into_iter()
            .map(|(session, user)| Member { session, user }),
    );
    members.sort_by(|a, b| a.session.cmp(&b.session));
    let users = members
        .iter()
        .filter_map(|m| m.user.as_deref())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Ok(HttpResponse::Ok().json(PresenceView {
        channel: name.into_inner(),
        members,
        users,
    }))
}

/// Deletes a channel's history and starts a new epoch. Subscribers stay subscribed.
#[utoipa::path(delete, path = "/api/channels/{name}/history", tag = "channels",
    params(("name" = String, Path, description = "channel name")),
    responses((status = 200, body = ResetView), (status = 404, body = super::error::ErrorBody),
              (status = 503, description = "publishes in flight; retry", body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn reset_history(
    node: NodeData,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    known(&node, &name).await?;
    let addr = node
        .channels
        .get_or_start(&node.hub, &name)
        .map_err(|e| ApiError::from_channel(&e))?;
    let epoch = addr
        .send(ResetHistory)
        .await
        .map_err(ApiError::mailbox)?
        .map_err(|e| ApiError::from_channel(&e))?;
    Ok(HttpResponse::Ok().json(ResetView {
        channel: name.into_inner(),
        epoch,
    }))
}
