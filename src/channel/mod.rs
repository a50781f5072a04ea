//! Channels: publishing through the log, the node's applier, and one actor per active channel as the
//! fan-out point.
//!
//! [`publish`] proposes an entry to the node's [`Log`](crate::cluster::Log); the applier
//! (`applier.rs`) applies committed entries in log order and hands each applied message to its channel's
//! actor, if one runs. A channel actor is started on first subscribe on one of the channel arbiters
//! (chosen by a hash of the name, so channels spread over threads), and stops after `channel.idle_ms`
//! without subscribers or traffic. It pushes each message into the channel's feed (`feed.rs`: a window
//! of recent messages, each encoded at most once per wire encoding, over history on disk). Every
//! subscription is a cursor into that feed (`cursor.rs`), read by its connection's writer at the speed
//! the socket drains. The actor never awaits a socket and queues nothing per subscriber: a subscriber
//! that falls behind catches up, and is cut only when it stays behind longer than `session.max_lag_ms`.

mod actor;
mod applier;
mod cursor;
mod feed;
mod hub;
mod outbox;
mod queries;
mod registry;
mod sweeper;

pub use actor::{namespace_of, ChannelActor};
pub use applier::{publish, start_applier, Applier};
pub use cursor::Cursor;
pub use hub::Hub;
pub use outbox::{Item, Outbox, OutboxError, OutboxReceiver};
pub use queries::{history_page, presence_count, presence_members, presence_page, PRESENCE_PAGE};
pub use registry::Registry;
pub use sweeper::start_sweeper;

use std::sync::Arc;

use actix::prelude::*;

use crate::protocol::{CloseCode, Encoding, Position, RequestId};

/// Asks a session to close with a code (slow consumer, shutdown, operator).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Evict {
    pub code: CloseCode,
    pub reason: Option<String>,
}

/// Why a channel refused a command.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum ChannelError {
    #[error("presence is disabled in this namespace")]
    PresenceDisabled,
    #[error("publishing is disabled in this namespace")]
    PublishDisabled,
    #[error("the session is already subscribed")]
    AlreadySubscribed,
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("the channel is shutting down")]
    Unavailable,
    /// The history store accepts no writes (a flush failed or the flusher died); see docs/operations.md.
    #[error("storage is not accepting writes: {0}")]
    StoreFailed(String),
    /// The publisher reused an idempotency key with different data.
    #[error("this idempotency key was already used with different data")]
    Conflict,
    /// `since` is ahead of what this node has applied (it may still be applying the log, e.g. after a
    /// restart); the session asks again shortly, within `session.resume_wait_ms`.
    #[error("this node has not applied the log up to the position to resume from yet")]
    NotAppliedYet,
}

impl ChannelError {
    /// A store error as the channel reports it: a store that stopped accepting writes is `StoreFailed`
    /// (clients see `unavailable`), anything else is a storage failure (`internal`).
    pub fn from_store(e: &crate::history::HistoryError) -> Self {
        use crate::history::HistoryError as H;
        match e {
            H::Failed(_) | H::FlusherGone | H::Closed => ChannelError::StoreFailed(e.to_string()),
            _ => ChannelError::Storage(e.to_string()),
        }
    }
}

/// A session's address for [`Evict`], shared by all its subscriptions and cursors: cloning a
/// `Recipient` allocates (actix gives every sender its own task slot); cloning this does not.
pub type Evictor = Arc<Recipient<Evict>>;

/// Subscribes a session. On success the channel itself queues the `reply` (before any replayed message).
#[derive(Message)]
#[rtype(result = "Result<(), ChannelError>")]
pub struct Subscribe {
    pub session: Arc<str>,
    pub user: Option<Arc<str>>,
    pub encoding: Encoding,
    pub outbox: Outbox,
    pub evict: Evictor,
    pub request: RequestId,
    pub since: Option<Position>,
    /// Answer [`ChannelError::NotAppliedYet`] rather than `recovered: false` when `since` is in the
    /// channel's epoch but ahead of what this node has applied.
    pub may_wait: bool,
}

/// Removes a session from the channel. `announce` is false when the session is gone anyway.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Unsubscribe {
    pub session: Arc<str>,
}

/// A message to publish with [`publish`]: proposed to the log, answered once applied.
#[derive(Debug)]
pub struct Publish {
    pub channel: String,
    /// Canonical MessagePack bytes of the data, already validated by the protocol module.
    pub raw: Vec<u8>,
    pub from: Option<Arc<str>>,
    /// Who publishes, for the scope of `key`: `user:<sub>`, `anonymous` or `admin` (see [`publisher_of`]).
    pub publisher: String,
    pub key: Option<String>,
}

/// The idempotency scope of a publisher: a user's keys never meet another user's or the admin API's.
/// Anonymous connections share one scope (they have no identity to tell them apart).
pub fn publisher_of(user: Option<&str>) -> String {
    match user {
        Some(u) => format!("user:{u}"),
        None => "anonymous".to_string(),
    }
}

/// The idempotency scope of the admin API.
pub const ADMIN_PUBLISHER: &str = "admin";

/// Where a published message landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub id: String,
    pub epoch: String,
    pub offset: u64,
}

/// Members that joined or left on other nodes: the channel tells its subscribers (`join`/`leave`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemotePresence(pub Vec<crate::cluster::PresenceEvent>);

/// Hands remote presence events to the channels that have an actor here (a channel without one has no
/// subscriber to tell). The node's presence sink.
pub fn deliver_remote_presence(hub: &Hub, events: Vec<crate::cluster::PresenceEvent>) {
    let mut by_channel: std::collections::HashMap<String, Vec<_>> = Default::default();
    for e in events {
        by_channel.entry(e.channel.clone()).or_default().push(e);
    }
    for (name, events) in by_channel {
        if let Some(addr) = hub.channels.get(&name) {
            addr.do_send(RemotePresence(events));
        }
    }
}

/// Lists the sessions present.
#[derive(Message)]
#[rtype(result = "Result<Vec<(String, Option<String>)>, ChannelError>")]
pub struct Presence;

/// Reads a page of retained history.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<HistoryPage, ChannelError>")]
pub struct History {
    pub since: u64,
    pub limit: usize,
    /// The page ends before the message that would take its data over this many bytes (but holds at
    /// least one message).
    pub max_bytes: usize,
}

/// A page of history, with the channel's bounds.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The channel's epoch; `""` for a channel that has no history on this node.
    pub epoch: String,
    pub head: u64,
    pub oldest: Option<u64>,
    pub messages: Vec<crate::history::StoredMessage>,
    pub next: Option<u64>,
}

/// Asks a channel for its state, for operators (admin API).
#[derive(Message)]
#[rtype(result = "ChannelInfo")]
pub struct Inspect;

/// A channel's live state as its actor sees it.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub name: String,
    pub namespace: String,
    pub options: crate::config::NamespaceOptions,
    pub epoch: String,
    /// Offset of the last durable (delivered) message.
    pub head: u64,
    /// Messages appended but waiting for their flush.
    pub pending: usize,
    /// Subscribers, ordered by session id.
    pub subscribers: Vec<SubscriberInfo>,
    /// Server time (ms) of the last publish this actor accepted, if any since it started.
    pub last_publish_ms: Option<u64>,
}

/// One subscriber of a channel.
#[derive(Debug, Clone)]
pub struct SubscriberInfo {
    pub session: String,
    pub user: Option<String>,
    /// When it subscribed (ms since the Unix epoch).
    pub since_ms: u64,
}

/// Operator reset: deletes the channel's history and starts a new epoch. Subscribers stay subscribed and
/// continue from offset 1 of the new epoch; resuming clients see `recovered: false`.
#[derive(Message)]
#[rtype(result = "Result<String, ChannelError>")]
pub struct ResetHistory;
