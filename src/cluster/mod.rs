//! Where the order of messages is decided: the [`Log`].
//!
//! Nothing else picks an offset. A proposer (a session's publish, the admin API, an operator reset) hands
//! an [`Entry`] to the log with [`Log::propose`]; the log decides where it goes and resolves the proposal
//! once the entry is committed (durable in the log). The node's applier reads committed entries in log
//! order with [`Log::follow`] and applies each to the store ([`crate::history::Store::apply`]), which
//! decides idempotency from the entry alone and places the message where the log says
//! ([`Placement`]). A log has one or more shards, each with its own order and positions; a channel's
//! entries are always in one shard, so a channel has one order. On a single node the log is [`LocalLog`]
//! (sled, group commit, one shard, the store numbers each channel densely); the cluster (RabbitMQ
//! streams, one per shard, a later issue) is a second implementation of the same trait, where the log
//! gives offsets and epochs so every node computes the same ones. The log is injected into the node, so tests can run a node on a log
//! that delays, batches, re-delivers or fails entries.

mod bus;
mod consumer;
mod local;
mod membership;
pub mod presence;
mod publisher;
mod stream;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub use crate::history::{Entry, EntryKind, Placement, Position};
pub use bus::{Answerer, Ask, Bus, BusHooks, HeartbeatSource, NodeAnswer, EXPIRE_EVERY};
pub use local::LocalLog;
pub use membership::{Heartbeat, Member, Membership, DEAD_AFTER, FORGET_AFTER, HEARTBEAT};
pub use presence::{ClusterState, PresenceEvent};
pub use stream::{entry_index, shard_of, StreamLog, StreamNames};

use crate::history::HistoryError;

/// Why the log could not take or give an entry.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("history store: {0}")]
    History(String),
    /// The log cannot commit now (storage failed, broker unreachable); the entry was not written.
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
}

impl From<HistoryError> for LogError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Failed(_) | HistoryError::FlusherGone | HistoryError::Closed => {
                LogError::Unavailable(e.to_string())
            }
            other => LogError::History(other.to_string()),
        }
    }
}

/// A proposal: resolves once the entry is committed (its position shows when it is followed: a cluster
/// log learns it only then).
pub type Proposal = BoxFuture<'static, Result<(), LogError>>;

/// A committed entry: where it is in the log, and where its message goes in its channel.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedEntry {
    pub position: Position,
    pub placement: Placement,
    pub entry: Entry,
}

/// Committed entries, in order within each shard (shards interleave).
pub type Committed = BoxStream<'static, Result<CommittedEntry, LogError>>;

/// An ordered, durable log of entries.
pub trait Log: Send + Sync + 'static {
    /// How many shards the log has (positions are per shard, numbered from 0).
    fn shards(&self) -> u32;

    /// Hands `entry` to the log. The entry takes its place in the log's order when this is called (so
    /// entries proposed one after the other by one proposer stay in that order); the returned future
    /// resolves once it is committed, and an error means it was not written.
    /// Dropping the future does not withdraw the entry.
    fn propose(&self, entry: Entry) -> Proposal;

    /// Every committed entry after `after[shard]` in each shard, in order within its shard, waiting for
    /// new ones. `after` has one index per shard.
    fn follow(&self, after: &[u64]) -> Committed;

    /// Tells the log that the effect of every entry of `position.shard` up to `position` is durable in
    /// the store, so it may forget them.
    fn applied(&self, position: Position);

    /// Whether the log decides epochs ([`Placement::At`]); if not, the store mints them.
    fn decides_epochs(&self) -> bool {
        false
    }

    /// The epoch a channel with no history yet belongs to, when the log decides epochs; `None` while the
    /// log does not know it yet.
    fn epoch_for(&self, _channel: &str) -> Option<String> {
        None
    }

    /// The shard a channel's entries are in.
    fn shard_of(&self, _channel: &str) -> u32 {
        0
    }

    /// Stops the log's background work at node shutdown.
    fn stop(&self) {}

    /// Whether proposals can be written now (`/readyz`); a cluster log is not while its broker is
    /// unreachable.
    fn is_writable(&self) -> bool {
        true
    }
}
