//! Where the order of a channel's messages is decided.
//!
//! Sessions and channels never pick offsets on their own: a channel actor hands each new message to a
//! [`Log`], which makes it the next entry of that channel and says when it is durable. On a single node the
//! [`LocalLog`] is a sequencer persisted in sled (the history store checks that every append is exactly
//! `head + 1`, so one writer and one order per channel are enforced below the actor too). The cluster
//! (RabbitMQ streams, a later issue) implements the same trait, so sessions and channels do not change when
//! it lands.

use crate::history::{Durable, HistoryError, Store, StoredMessage};

/// Why an entry could not be appended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("history store: {0}")]
    History(#[from] HistoryError),
}

/// An append-only, per-channel ordered log.
pub trait Log: Send + Sync + 'static {
    /// Appends `msg` as the next entry of `channel` (its `offset` must be the channel's head + 1), with an
    /// optional idempotency key `(key, expires_at_ms)`. Returns a future that resolves once the entry is
    /// durable; nothing may be acknowledged or delivered before that.
    fn append(
        &self,
        channel: &str,
        msg: &StoredMessage,
        idem: Option<(&str, u64)>,
    ) -> Result<Durable, LogError>;
}

/// The single-node log: sled with group commit.
pub struct LocalLog {
    store: Store,
}

impl LocalLog {
    pub fn new(store: Store) -> Self {
        LocalLog { store }
    }
}

impl Log for LocalLog {
    fn append(
        &self,
        channel: &str,
        msg: &StoredMessage,
        idem: Option<(&str, u64)>,
    ) -> Result<Durable, LogError> {
        self.store.append(channel, msg, idem)?;
        Ok(self.store.durable())
    }
}
