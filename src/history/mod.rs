//! Durable channel history: a sled-backed store of each channel's messages, positions, idempotency
//! keys and named cursors.
//!
//! Exists so channels can replay what a resuming subscriber missed, answer `history` requests, keep
//! idempotent publishes idempotent across restarts, and so the cluster can remember the last stream
//! offset it applied. It knows no sockets and no actors: every call is synchronous and short
//! (microseconds, no flush), so it can be called from an actix actor thread or a tokio task; the only
//! waiting API, [`Store::durable`], returns a `Send + 'static` future.
//!
//! # Layout (sled `=0.34.7`)
//! See `keys.rs`: a `messages` tree keyed `channel ++ 0x00 ++ offset(u64 BE)` (a channel's messages
//! are one ordered key range, so replay is a range scan and the oldest retained offset is one seek),
//! a `meta` tree (epoch, head) keyed by channel name (listing = range scan from a cursor), an `idem`
//! tree plus an `idem_exp` expiry index (so sweeping visits only expired keys), and a `cursors` tree.
//! Message values carry their timestamp for age trimming. `Tree::len()` is never called (it scans).
//!
//! # Atomicity
//! [`Store::apply`] (the node's write path: one committed log entry) is ONE sled multi-tree transaction
//! over messages + meta + idem + idem_exp + cursors (the applied log position); [`Store::append`] (an
//! explicit offset, used by the store's own tests and benchmarks) is the same write without the log
//! position. Both write through one helper (`store::put_message`). A transaction
//! (rather than one prefixed tree + `apply_batch`) was chosen because the offset check
//! (`offset == head + 1`) must read the head and write the new one atomically; a batch cannot read,
//! so it would need an external lock per channel, and separate trees keep the layout the design
//! document describes. `trim`, `reset` and `sweep_idempotency` remove keys in chunked transactions
//! (at most 1024 keys each) that re-check the epoch, so a crash between chunks leaves a valid state
//! (a shorter, still contiguous history) and a concurrent reset is never undone.
//!
//! # Durability guarantee and cost
//! Writes are NOT flushed by the call that makes them. [`Store::durable`] returns a future that
//! resolves once an fsync-ing sled flush that *started after the call* completed, so it covers every
//! write (append, reset, cursor, ...) issued before the call. One background thread batches all
//! `durable()` waiters that arrive within `StoreConfig::group_commit` of the first waiter into one
//! `flush()`. Cost: a waiter waits up to one window plus one flush (≈ `group_commit` + fsync time);
//! the disk sees at most about one flush per window (plus sled's own periodic background flush)
//! however many writers ask. `group_commit == ZERO` flushes as soon as a waiter is seen (waiters that
//! arrive during a flush share the next one). If a flush fails, every waiter of that batch gets the
//! error; no waiter is ever dropped unanswered. After a crash, sled recovers a prefix of the writes;
//! what a resolved `durable()` covered is in that prefix.
//!
//! The flusher thread stops when the last [`Store`] clone is dropped (dropping blocks for at most one
//! window plus one flush, to answer pending waiters) or on [`Store::close`].
//!
//! # Corruption
//! [`Store::open`] moves an unreadable store dir aside to `<path>.corrupt-<unix_ms>` and starts empty
//! (every channel gets a new epoch, which makes the loss visible to clients). Bytes that fail to
//! decode later are reported as [`HistoryError::Corrupt`]; nothing read from disk is unwrapped.

mod applying;
mod commit;
mod entry;
mod error;
mod keys;
mod maintenance;
mod store;

#[cfg(test)]
mod apply_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use commit::{Durable, FlushFault};
pub use entry::{Applied, Entry, EntryKind, Placement, Position};
pub use error::HistoryError;
pub use keys::{data_digest, scoped_idem_key};
pub use store::Store;

/// How to open the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory of the sled database.
    pub path: PathBuf,
    /// Group-commit flush window; `Duration::ZERO` = flush as soon as asked.
    pub group_commit: Duration,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
}

impl StoreConfig {
    /// A config with a 2 ms group-commit window and a 64 MiB cache.
    pub fn new(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            path: path.into(),
            group_commit: Duration::from_millis(2),
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What [`Store::open`] had to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Where a corrupt store dir was moved, if it was.
    pub moved_aside: Option<PathBuf>,
}

/// A channel's position state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelState {
    pub epoch: String,
    /// Offset of the last message of the epoch (0 if none).
    pub head: u64,
    /// Oldest retained offset, `None` if no message is retained.
    pub oldest: Option<u64>,
}

/// A stored channel message.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    pub offset: u64,
    /// ULID string.
    pub id: String,
    pub ts_ms: u64,
    pub from: Option<String>,
    /// Opaque bytes (canonical MessagePack of the data).
    pub data: Vec<u8>,
}

/// The original result of an idempotent publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotentHit {
    pub id: String,
    pub epoch: String,
    pub offset: u64,
    /// SHA-256 of the data published under the key ([`data_digest`]); `None` for old entries.
    pub digest: Option<[u8; 32]>,
}

/// Retention policy applied by [`Store::trim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept per channel; 0 = keep none.
    pub max_len: u64,
    /// Messages older than this are removed.
    pub max_age: Option<Duration>,
}
