//! The single-node log: entries in a sled tree of the history store, made durable by group commit.
//!
//! A proposal writes its entry at the next position (under a lock, so positions follow the order of
//! proposals) and registers for the next group-commit flush at once, so proposals made within one
//! `storage.group_commit_ms` window share one flush. When that flush is done, every position up to the
//! proposal's is durable (they were written before it), so the committed position becomes at least the
//! proposal's; proposals waiting for a position at or below it resolve, and followers read the new
//! entries. The wait for the flush runs as its own task, so an entry whose proposer went away is still
//! committed and applied. Entries whose effect is durable in the store are trimmed ([`Log::applied`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::sync::watch;

use super::{Committed, CommittedEntry, Entry, Log, LogError, Placement, Position, Proposal};
use crate::history::{HistoryError, Store};

/// Entries read from the tree per follower step.
const READ_BATCH: usize = 256;

/// Commit progress: the highest committed position, or why committing stopped.
#[derive(Debug, Clone, PartialEq)]
enum Progress {
    Committed(u64),
    Failed(String),
}

struct Shared {
    store: Store,
    /// The next position to write.
    next: Mutex<u64>,
    progress: watch::Sender<Progress>,
}

/// See the module docs.
#[derive(Clone)]
pub struct LocalLog {
    shared: Arc<Shared>,
}

impl LocalLog {
    /// Opens the log kept in `store`. Entries found in it were written before a restart and are on disk:
    /// they count as committed and are applied (again, if need be: applying skips what was applied).
    pub fn open(store: Store) -> Result<LocalLog, HistoryError> {
        let last = store.log_last()?.unwrap_or(0);
        let top = last.max(store.applied_position(0)?);
        let (progress, _) = watch::channel(Progress::Committed(top));
        let shared = Arc::new(Shared {
            store,
            next: Mutex::new(top + 1),
            progress,
        });
        Ok(LocalLog { shared })
    }

    fn write(&self, entry: &Entry) -> Result<u64, LogError> {
        let encoded = entry.encode()?;
        let mut next = self.shared.next.lock().unwrap_or_else(|p| p.into_inner());
        let position = *next;
        self.shared.store.log_put(position, &encoded)?;
        *next += 1;
        drop(next);
        // Registered now, so proposals of one window share its flush; awaited on its own (see above).
        let durable = self.shared.store.durable();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            match durable.await {
                Ok(()) => {
                    shared.progress.send_if_modified(|p| match p {
                        Progress::Committed(c) if *c < position => {
                            *c = position;
                            true
                        }
                        _ => false,
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "local log: commit failed; no further entries are committed");
                    shared
                        .progress
                        .send_replace(Progress::Failed(e.to_string()));
                }
            }
        });
        Ok(position)
    }
}

impl Log for LocalLog {
    /// One shard: the whole node's order.
    fn shards(&self) -> u32 {
        1
    }

    fn propose(&self, entry: Entry) -> Proposal {
        let mut progress = self.shared.progress.subscribe();
        let written = self.write(&entry);
        Box::pin(async move {
            let position = written?;
            let seen = progress
                .wait_for(|p| match p {
                    Progress::Committed(c) => *c >= position,
                    Progress::Failed(_) => true,
                })
                .await
                .map_err(|_| LogError::Unavailable("the local log stopped".into()))?;
            match &*seen {
                Progress::Committed(_) => Ok(()),
                Progress::Failed(why) => Err(LogError::Unavailable(why.clone())),
            }
        })
    }

    fn follow(&self, after: &[u64]) -> Committed {
        let state = (
            after.first().copied().unwrap_or(0),
            self.shared.progress.subscribe(),
            VecDeque::new(),
            self.shared.store.clone(),
        );
        futures_util::stream::unfold(state, |(mut after, mut rx, mut buf, store)| async move {
            loop {
                if after == u64::MAX {
                    return None; // the log failed; the error was reported
                }
                if let Some((index, entry)) = buf.pop_front() {
                    after = index;
                    let committed = CommittedEntry {
                        position: Position::new(0, index),
                        placement: Placement::Dense,
                        entry,
                    };
                    return Some((Ok(committed), (after, rx, buf, store)));
                }
                let progress = rx.borrow_and_update().clone();
                let committed = match progress {
                    Progress::Committed(c) => c,
                    Progress::Failed(why) => {
                        let e = LogError::Unavailable(why);
                        return Some((Err(e), (u64::MAX, rx, buf, store)));
                    }
                };
                if committed > after {
                    match store.log_range(after + 1, committed, READ_BATCH) {
                        Ok(batch) if batch.is_empty() => {
                            // Trimmed below us (already applied elsewhere): nothing to read here.
                            after = committed;
                        }
                        Ok(batch) => buf.extend(batch),
                        Err(e) => return Some((Err(e.into()), (after, rx, buf, store))),
                    }
                    continue;
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .boxed()
    }

    fn applied(&self, position: Position) {
        if let Err(e) = self.shared.store.log_trim(position.index) {
            tracing::warn!(error = %e, "local log: trimming applied entries failed");
        }
    }
}
