//! Log entries: what a proposer hands to the log, and what the applier applies, in log order.
//!
//! Exists here (not in `cluster/`) because applying an entry is a store operation ([`Store::apply`]) and the
//! store must not depend on the log. The log (`cluster/`) carries entries encoded with
//! [`Entry::encode`]: MessagePack with named fields, the same bytes on every node.

use serde::{Deserialize, Serialize};

use super::error::HistoryError;

/// One entry of the log. Everything the apply decision needs is in the entry itself (id, timestamp,
/// publisher, key), so every node that applies the same log makes the same decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// ULID minted by the proposer; the message id of a publish, the new epoch of a reset.
    pub id: String,
    /// The proposer's clock when it proposed (ms since the Unix epoch); idempotency windows are measured
    /// against it, never against the applying node's clock.
    pub ts: u64,
    pub channel: String,
    /// The idempotency scope of the proposer (`user:<sub>`, `anonymous`, `admin`).
    pub publisher: String,
    /// The publishing user shown to subscribers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The client's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub kind: EntryKind,
}

/// What an entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum EntryKind {
    /// A message; `data` is its canonical MessagePack bytes.
    Publish {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The channel's history is deleted and a new epoch (the entry's id) starts.
    Reset,
}

impl Entry {
    pub fn encode(&self) -> Result<Vec<u8>, HistoryError> {
        rmp_serde::to_vec_named(self)
            .map_err(|e| HistoryError::corrupt(format!("log entry cannot be encoded: {e}")))
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, HistoryError> {
        rmp_serde::from_slice(bytes)
            .map_err(|e| HistoryError::corrupt(format!("log entry does not decode: {e}")))
    }
}

/// Where a committed entry sits in the log: a shard and its index there. A single-node log has one shard;
/// a cluster log has one per shard stream, each with its own order (entries of one channel are always in
/// one shard, so a channel has one order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub shard: u32,
    pub index: u64,
}

impl Position {
    pub fn new(shard: u32, index: u64) -> Position {
        Position { shard, index }
    }
}

/// How an applied message is placed in its channel: who decides its offset and epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The store numbers the channel's messages itself (offset = head + 1, dense), and the channel's
    /// first entry names its epoch. Right when one node's log is the whole history (the local log).
    Dense,
    /// The log decides, the same on every node that applies it: the message's offset (above the
    /// channel's head; gaps allowed) and the epoch it belongs to (a cluster log: the shard stream's offset
    /// + 1 and the shard's generation).
    At { offset: u64, epoch: String },
}

/// What applying an entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A new message at `offset` of `epoch`.
    Message { epoch: String, offset: u64 },
    /// The publisher's key was used within the window with the same data: nothing was written; this is
    /// where the original landed.
    Duplicate {
        id: String,
        epoch: String,
        offset: u64,
    },
    /// The publisher's key was used within the window with other data: nothing was written.
    Conflict,
    /// The channel's history was deleted; `epoch` starts now, at offset 0.
    Reset { epoch: String },
    /// The entry's position was applied before (a re-delivery): nothing was done.
    AlreadyApplied,
}
