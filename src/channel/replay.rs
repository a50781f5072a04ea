//! Replay of retained history to one resuming subscriber.
//!
//! A replay runs as its own task next to the channel actor, so a long backlog never blocks the channel for
//! other subscribers. It reads history in bounded chunks and awaits room in the subscriber's outbox, so a
//! backlog of any size costs a bounded amount of memory and goes out as ordinary `message` frames. While it
//! runs, the channel buffers that subscriber's live messages and flushes them when `ReplayDone` arrives: the
//! seam between replay and live has no gap and no duplicate.
//!
//! Every replay has a [`ReplayTicket`]: its id tells the channel which replay a `ReplayDone` is about (an
//! old replay's end must not end a newer subscription's), and cancelling it (when the subscription ends)
//! stops the replay before its next frame. A frame is queued only under the ticket's lock while it is not
//! cancelled, so once the channel has cancelled it, no frame of that replay can follow: not after the
//! `unsubscribe` reply, not after a new subscription's reply.

use std::sync::{Arc, Mutex};

use actix::Message;

use super::Outbox;
use crate::history::Store;
use crate::protocol::{encode, Encoding, MessageBody, ServerFrame};

/// Messages read from the store per chunk.
const CHUNK: usize = 256;

/// Identity and cancellation of one replay.
#[derive(Debug)]
pub(super) struct ReplayTicket {
    pub id: u64,
    cancelled: Mutex<bool>,
}

impl ReplayTicket {
    pub fn new(id: u64) -> Arc<ReplayTicket> {
        Arc::new(ReplayTicket {
            id,
            cancelled: Mutex::new(false),
        })
    }

    /// Stops the replay: when this returns, none of its frames will be queued any more.
    pub fn cancel(&self) {
        *self.cancelled.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }
}

/// What to replay, to whom.
pub(super) struct ReplayJob {
    pub ticket: Arc<ReplayTicket>,
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
    /// The [`ReplayTicket`] id of the replay that ended.
    pub replay: u64,
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
    #[error("the subscription ended")]
    Cancelled,
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
                .send_unless(out, &job.ticket.cancelled)
                .await
                .map_err(|e| match e {
                    super::OutboxError::Cancelled => ReplayError::Cancelled,
                    _ => ReplayError::Closed,
                })?;
            last = m.offset;
        }
    }
    Ok(())
}
