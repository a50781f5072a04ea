//! One long-polling session's transport state, and the node's registry of them.
//!
//! The session actor is the same as a WebSocket one; what differs is who reads its output. Here a
//! poll does: it takes the frames queued since the last poll (the [`Output`] the WebSocket writer
//! would drain), numbers them as one batch, and keeps that batch until a later poll acknowledges it.
//! Taking frames and keeping the batch happen in one synchronous step, so a poll cancelled at any
//! point (its HTTP request gone) loses nothing: either nothing was taken, or the batch is kept and the
//! next poll, naming the last batch it received, gets it again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix::Addr;
use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use crate::protocol::batch;
use crate::protocol::{Encoding, Outgoing};
use crate::session::inflight::Gate;
use crate::session::output::Output;
use crate::session::socket::CloseRequest;
use crate::session::{Seen, Session};

/// What a poll answers.
pub enum Answer {
    /// A batch (possibly empty) to send as the response body.
    Batch(Bytes),
    /// The session is over and its last batch was acknowledged.
    Closed,
}

/// The output side of a session, read by one poll at a time.
struct Reader {
    output: Output,
    close: oneshot::Receiver<CloseRequest>,
    /// The last batch handed out and not acknowledged yet.
    unacked: Option<(u64, Bytes)>,
    next_seq: u64,
    /// The session ended: its last batch (with `disconnect`) is formed; nothing follows it.
    closed: bool,
}

impl Reader {
    /// Takes the frames ready now, up to `max_bytes` (at least one frame). `Ready(None)` when the
    /// session is over with nothing left to send; `Pending` when there is nothing yet.
    fn poll_frames(&mut self, cx: &mut Context<'_>, max_bytes: usize) -> Poll<Option<Vec<Bytes>>> {
        if self.closed {
            return Poll::Ready(None);
        }
        // A close goes out before anything still queued (as on a WebSocket).
        match std::pin::Pin::new(&mut self.close).poll(cx) {
            Poll::Ready(Ok(req)) => {
                self.closed = true;
                let last = req.last.and_then(payload);
                return Poll::Ready(last.map(|f| vec![f]));
            }
            Poll::Ready(Err(_)) => {
                self.closed = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let mut frames = Vec::new();
        let mut bytes = 0;
        while bytes < max_bytes {
            match self.output.poll_next(cx) {
                Poll::Ready(Some(out)) => {
                    if let Some(f) = payload(out) {
                        bytes += f.len();
                        frames.push(f);
                    }
                }
                Poll::Ready(None) => {
                    self.closed = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        match (frames.is_empty(), self.closed) {
            (false, _) => Poll::Ready(Some(frames)),
            (true, true) => Poll::Ready(None),
            (true, false) => Poll::Pending,
        }
    }
}

/// The protocol frame inside an outgoing WebSocket frame; pings and pongs have no place here.
fn payload(out: Outgoing) -> Option<Bytes> {
    match out {
        Outgoing::Frame(f) => Some(Bytes::copy_from_slice(f.payload())),
        Outgoing::Ping | Outgoing::Pong(_) => None,
    }
}

/// One long-polling session.
pub struct PollEntry {
    /// The authenticated user the session belongs to; every request must prove to be that user.
    pub user: Option<Arc<str>>,
    pub session: Addr<Session>,
    pub encoding: Encoding,
    /// The session's in-flight gate: a send waits for room before handing over each frame.
    pub gate: Gate,
    /// Polls started; a held poll that is no longer the latest ends with an empty batch.
    polls: AtomicU64,
    superseded: Notify,
    reader: tokio::sync::Mutex<Reader>,
    /// The number of the last client batch handed to the session (sends are numbered 1, 2, ...),
    /// locked while a batch is being handed over.
    pub sends: Arc<tokio::sync::Mutex<u64>>,
    /// Since when the session actor is gone (the entry is dropped a poll wait later).
    gone_since: Mutex<Option<Instant>>,
}

impl PollEntry {
    pub fn new(
        user: Option<Arc<str>>,
        session: Addr<Session>,
        encoding: Encoding,
        gate: Gate,
        output: Output,
        close: oneshot::Receiver<CloseRequest>,
    ) -> Self {
        PollEntry {
            user,
            session,
            encoding,
            gate,
            polls: AtomicU64::new(0),
            superseded: Notify::new(),
            reader: tokio::sync::Mutex::new(Reader {
                output,
                close,
                unacked: None,
                next_seq: 1,
                closed: false,
            }),
            sends: Arc::new(tokio::sync::Mutex::new(0)),
            gone_since: Mutex::new(None),
        }
    }

    /// A poll that received every batch up to `ack`: answers the unacknowledged batch again if there
    /// is one, else the next batch as soon as frames are queued, else an empty batch after `wait` (or
    /// at once when a newer poll of this session arrives). `session` is named in the answer (the
    /// poll that opens the session).
    pub async fn poll(
        &self,
        ack: u64,
        wait: Duration,
        max_bytes: usize,
        session: Option<&str>,
    ) -> Answer {
        let me = self.polls.fetch_add(1, Ordering::AcqRel) + 1;
        self.superseded.notify_waiters();
        let empty = || Answer::Batch(batch::encode(self.encoding, ack, session, &[]));
        let mut reader = self.reader.lock().await;
        let superseded = self.superseded.notified();
        tokio::pin!(superseded);
        superseded.as_mut().enable();
        if self.polls.load(Ordering::Acquire) != me {
            return empty();
        }
        self.session.do_send(Seen);
        if let Some((seq, body)) = &reader.unacked {
            if *seq > ack {
                return Answer::Batch(body.clone());
            }
            reader.unacked = None;
        }
        let frames = tokio::select! {
            biased;
            _ = &mut superseded => return empty(),
            _ = tokio::time::sleep(wait) => return empty(),
            f = std::future::poll_fn(|cx| reader.poll_frames(cx, max_bytes)) => f,
        };
        // From taking the frames to keeping their batch there is no await: a poll dropped here
        // (its request gone) has either taken nothing or left the batch for the next one.
        let Some(frames) = frames else {
            return Answer::Closed;
        };
        let seq = reader.next_seq;
        reader.next_seq += 1;
        let body = batch::encode(self.encoding, seq, session, &frames);
        reader.unacked = Some((seq, body.clone()));
        Answer::Batch(body)
    }
}

/// The node's long-polling sessions by id. The ids are secrets (whoever holds one speaks for the
/// session): never logged, compared only through the map.
#[derive(Default)]
pub struct Polls {
    inner: Mutex<HashMap<String, Arc<PollEntry>>>,
}

impl Polls {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<PollEntry>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, id: String, entry: Arc<PollEntry>) {
        self.lock().insert(id, entry);
    }

    pub fn get(&self, id: &str) -> Option<Arc<PollEntry>> {
        self.lock().get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the entries whose session actor has been gone for `grace` (time enough for the client
    /// to fetch the last batch, with `disconnect`, again if its answer was lost).
    pub fn sweep(&self, grace: Duration) {
        let now = Instant::now();
        self.lock().retain(|_, e| {
            if e.session.connected() {
                return true;
            }
            let mut gone = e.gone_since.lock().unwrap_or_else(|p| p.into_inner());
            now.duration_since(*gone.get_or_insert(now)) < grace
        });
    }
}

/// A new session id: 128 random bits from the system's CSPRNG, in hex.
pub fn new_id() -> Option<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
