//! Where the order of messages is decided: the [`Log`].
//!
//! Nothing else picks an offset. A proposer (a session's publish, the admin API, an operator reset) hands
//! an [`Entry`] to the log with [`Log::propose`]; the log decides where it goes and resolves the proposal
//! once the entry is committed (durable in the log). The node's applier reads committed entries in log
//! order with [`Log::follow`] and applies each to the store ([`crate::history::Store::apply`]), which
//! assigns the channel offset and decides idempotency from the entry alone. On a single node the log is
//! [`LocalLog`] (sled, group commit); the cluster (RabbitMQ streams, a later issue) is a second
//! implementation of the same trait. The log is injected into the node, so tests can run a node on a log
//! that delays, batches, re-delivers or fails entries.

mod local;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub use crate::history::{Entry, EntryKind};
pub use local::LocalLog;

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

/// A proposal: resolves with the entry's log position once it is committed.
pub type Proposal = BoxFuture<'static, Result<u64, LogError>>;

/// Committed entries in log order, with their positions.
pub type Committed = BoxStream<'static, Result<(u64, Entry), LogError>>;

/// An ordered, durable log of entries.
pub trait Log: Send + Sync + 'static {
    /// Hands `entry` to the log. The entry takes its place in the log's order when this is called (so
    /// entries proposed one after the other by one proposer stay in that order); the returned future
    /// resolves with its position once it is committed, and an error means it was not written.
    /// Dropping the future does not withdraw the entry.
    fn propose(&self, entry: Entry) -> Proposal;

    /// Every committed entry with a position greater than `after`, in log order, waiting for new ones.
    fn follow(&self, after: u64) -> Committed;

    /// Tells the log that the effect of every entry up to `position` is durable in the store, so it may
    /// forget them.
    fn applied(&self, position: u64);
}
