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

    /// The store directory is in use (locked), not accessible, or failed with an I/O error that says
    /// nothing about its contents (disk full, too many open files, EIO); it is NOT moved aside.
    #[error("history store at {path:?} cannot be opened (left untouched; fix the cause and restart): {source}")]
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

    /// A flush failed earlier: what was written since the last good flush may or may not be on disk,
    /// so the store accepts no more writes until the node is restarted.
    #[error("history store stopped accepting writes after a failed flush ({0}); restart the node")]
    Failed(String),
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
