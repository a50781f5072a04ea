//! Replay of retained history to one resuming subscriber.
//!
//! A replay runs as its own task next to the channel actor, so a long backlog never blocks the channel for
//! other subscribers. It reads history in bounded chunks and awaits room in the subscriber's outbox, so a
//! backlog of any size costs a bounded amount of memory and goes out as ordinary `message` frames. While it
//! runs, the channel buffers that subscriber's live messages and flushes them when `ReplayDone` arrives: the
//! seam between replay and live has no gap and no duplicate.

use std::sync::Arc;

use actix::Message;

use super::Outbox;
use crate::history::Store;
use crate::protocol::{encode, Encoding, MessageBody, ServerFrame};

/// Messages read from the store per chunk.
const CHUNK: usize = 256;

/// What to replay, to whom.
pub(super) struct ReplayJob {
    pub store: Store,
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    pub encoding: Encoding,
    pub outbox: Outbox,
    /// Replay offsets strictly after this one...
    pub after: u64,
    /// ...up to and including this one.
    pub upto: u64,
}

/// Sent to the channel actor when a replay ended.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct ReplayDone {
    pub session: Arc<str>,
    pub ok: Result<(), ReplayError>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ReplayError {
    #[error("history read failed: {0}")]
    Store(#[from] crate::history::HistoryError),
    #[error("history has a hole at offset {0}")]
    Gap(u64),
    #[error("stored message {0} cannot be decoded: {1}")]
    Corrupt(u64, String),
    #[error("message encoding failed: {0}")]
    Encode(#[from] crate::protocol::EncodeError),
    #[error("the session went away")]
    Closed,
}

/// Runs one replay to the end.
pub(super) async fn run(job: ReplayJob) -> Result<(), ReplayError> {
    let mut last = job.after;
    while last < job.upto {
        let want = ((job.upto - last) as usize).min(CHUNK);
        let chunk = job.store.range(&job.channel, last, want)?;
        if chunk.is_empty() {
            return Err(ReplayError::Gap(last + 1));
        }
        for m in chunk {
            if m.offset != last + 1 {
                return Err(ReplayError::Gap(last + 1));
            }
            if m.offset > job.upto {
                return Ok(());
            }
            let data = rmpv::decode::read_value(&mut &m.data[..])
                .map_err(|e| ReplayError::Corrupt(m.offset, e.to_string()))?;
            let frame = ServerFrame::Message(MessageBody {
                channel: &job.channel,
                id: &m.id,
                epoch: &job.epoch,
                offset: m.offset,
                data: &data,
                from: m.from.as_deref(),
            });
            let out = encode(job.encoding, &frame)?;
            job.outbox
                .send(out)
                .await
                .map_err(|_| ReplayError::Closed)?;
            last = m.offset;
        }
    }
    Ok(())
}
