//! Error type of the history store.
//!
//! Exists so every failure carries enough context (which channel, which key, what was expected) to be
//! logged usefully by the channel actor, and so bytes read from disk that do not decode surface as
//! [`HistoryError::Corrupt`] instead of a panic.

use std::path::PathBuf;

/// Everything that can go wrong in [`crate::history::Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// sled itself failed (I/O, sled-detected corruption, ...).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),

    /// Bytes read from disk did not decode.
    #[error("corrupt history data: {what}")]
    Corrupt { what: String },

    /// `append` was given an offset that is not `head + 1`.
    #[error("offset mismatch on channel {channel:?}: expected {expected}, got {got}")]
    OffsetMismatch {
        channel: String,
        expected: u64,
        got: u64,
    },

    /// Offsets must stay below 2^53 (protocol rule, so JavaScript numbers hold them).
    #[error("offset {offset} on channel {channel:?} is not below 2^53")]
    OffsetOverflow { channel: String, offset: u64 },

    /// Channel names are part of keys and must not be empty or contain 0x00.
    #[error("invalid channel name {channel:?}: {why}")]
    InvalidChannel { channel: String, why: &'static str },

    /// The store directory could neither be opened nor replaced by a fresh one.
    #[error("cannot open history store at {path:?}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },

    /// The store directory is in use (locked) or not accessible; it is NOT moved aside in that case.
    #[error("history store at {path:?} is locked or inaccessible: {source}")]
    Unavailable {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },

    /// Moving a corrupt store directory aside failed.
    #[error("cannot move corrupt history store {from:?} to {to:?}: {source}")]
    MoveAside {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The store was closed with [`crate::history::Store::close`]; group commit is no longer available.
    #[error("history store is closed")]
    Closed,

    /// The background flusher thread went away without answering (it panicked).
    #[error("history flusher thread is gone")]
    FlusherGone,
}

impl HistoryError {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        HistoryError::Corrupt { what: what.into() }
    }
}

impl From<sled::transaction::TransactionError<HistoryError>> for HistoryError {
    fn from(e: sled::transaction::TransactionError<HistoryError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => HistoryError::Sled(e),
        }
    }
}
