//! The node's applier: the one path every message takes from the log to the store and the channel.
//!
//! `publish` and `reset` build an [`Entry`] and propose it to the node's [`Log`]; they register a waiter
//! under the entry's id first. The applier task follows the log from the position the store last applied,
//! applies each committed entry with [`crate::history::Store::apply`] (which assigns the offset and decides
//! idempotency), then tells the channel actor, if one runs, and answers the waiter, if this node proposed
//! the entry. Channels without an actor are applied without starting one. Every so often it asks for a
//! flush and then lets the log forget what is applied ([`Log::applied`]). After a crash it resumes from the
//! position stored with the last applied entry, so nothing is applied twice or skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::Hub;
use super::{ChannelActor, ChannelError, Publish, Published};
use crate::cluster::{CommittedEntry, Entry, EntryKind, Position};
use crate::history::Applied;
use crate::stats::Stats;

/// How often applied entries are made durable in the store and forgotten by the log.
const TRIM_EVERY: Duration = Duration::from_millis(200);
/// Pause before following the log again after it reported an error.
const RETRY: Duration = Duration::from_millis(500);

type Reply = oneshot::Sender<Result<Applied, ChannelError>>;

/// Proposals of this node waiting for their entry to be applied, by entry id.
#[derive(Default)]
pub struct Applier {
    waiters: Mutex<HashMap<String, (String, Reply)>>,
}

impl Applier {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (String, Reply)>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Proposals of this node for `channel` not applied yet.
    pub fn pending(&self, channel: &str) -> usize {
        self.lock().values().filter(|(c, _)| c == channel).count()
    }

    fn answer(&self, id: &str, result: Result<Applied, ChannelError>) {
        if let Some((_, tx)) = self.lock().remove(id) {
            let _ = tx.send(result);
        }
    }
}

/// Proposes `entry` now (so proposals of one session keep their order in the log) and returns a future
/// that resolves once this node has applied it.
fn propose(
    node: &Arc<Hub>,
    entry: Entry,
) -> impl std::future::Future<Output = Result<Applied, ChannelError>> {
    let (tx, rx) = oneshot::channel();
    let id = entry.id.clone();
    node.applier
        .lock()
        .insert(id.clone(), (entry.channel.clone(), tx));
    let proposal = node.log.propose(entry);
    let node = node.clone();
    async move {
        if let Err(e) = proposal.await {
            node.applier.lock().remove(&id);
            return Err(ChannelError::StoreFailed(e.to_string()));
        }
        rx.await.unwrap_or(Err(ChannelError::Unavailable))
    }
}

/// Publishes through the log. The entry takes its place in the log when this is called; the future
/// resolves once the message is applied (durable, with its offset).
pub fn publish(
    node: &Arc<Hub>,
    p: Publish,
) -> impl std::future::Future<Output = Result<Published, ChannelError>> {
    let entry = Entry {
        id: ulid::Ulid::new().to_string(),
        ts: crate::protocol::now_ms(),
        channel: p.channel,
        publisher: p.publisher,
        from: p.from.map(|f| f.to_string()),
        key: p.key,
        kind: EntryKind::Publish { data: p.raw },
    };
    Stats::add(&node.stats.publishes, 1);
    let id = entry.id.clone();
    let applied = propose(node, entry);
    async move {
        match applied.await? {
            Applied::Message { epoch, offset } => Ok(Published { id, epoch, offset }),
            Applied::Duplicate { id, epoch, offset } => Ok(Published { id, epoch, offset }),
            Applied::Conflict => Err(ChannelError::Conflict),
            other => Err(ChannelError::Storage(format!(
                "a publish was applied as {other:?}"
            ))),
        }
    }
}

/// Resets a channel's history through the log; resolves with the new epoch.
pub(super) async fn reset(node: &Arc<Hub>, channel: String) -> Result<String, ChannelError> {
    let entry = Entry {
        id: ulid::Ulid::new().to_string(),
        ts: crate::protocol::now_ms(),
        channel,
        publisher: super::ADMIN_PUBLISHER.to_string(),
        from: None,
        key: None,
        kind: EntryKind::Reset,
    };
    match propose(node, entry).await? {
        Applied::Reset { epoch } => Ok(epoch),
        other => Err(ChannelError::Storage(format!(
            "a reset was applied as {other:?}"
        ))),
    }
}

/// A message applied to the store, for the channel's actor to deliver.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Delivered {
    pub id: String,
    pub ts: u64,
    pub from: Option<String>,
    pub data: Vec<u8>,
    pub epoch: String,
    pub offset: u64,
}

/// A reset applied to the store: the channel continues in `epoch` from offset 0.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct ResetApplied {
    pub epoch: String,
}

/// Starts the applier on `arbiter` (a thread of its own: applying is blocking store work).
pub fn start_applier(node: Arc<Hub>, arbiter: &actix_rt::ArbiterHandle) {
    arbiter.spawn(run(node));
}

async fn run(node: Arc<Hub>) {
    // The last index applied in each shard of the log.
    let mut applied = match node.store.applied_positions(node.log.shards()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "applier: cannot read the applied positions; nothing is applied");
            return;
        }
    };
    // Per shard, the highest index whose forgetting was asked for; the flush it needs runs on its own,
    // so applying never waits for a group-commit window.
    let forgetting: Arc<Vec<AtomicU64>> =
        Arc::new(applied.iter().map(|&a| AtomicU64::new(a)).collect());
    let mut committed = node.log.follow(&applied);
    let mut tick = actix_rt::time::interval(TRIM_EVERY);
    loop {
        tokio::select! {
            item = committed.next() => match item {
                None => {
                    tracing::error!("applier: the log ended");
                    return;
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "applier: the log failed; following it again");
                    actix_rt::time::sleep(RETRY).await;
                    committed = node.log.follow(&applied);
                }
                Some(Ok(c)) => {
                    let Position { shard, index } = c.position;
                    let Some(slot) = applied.get_mut(shard as usize) else {
                        tracing::error!(shard, "applier: an entry of a shard the log does not have");
                        continue;
                    };
                    *slot = (*slot).max(index);
                    if !apply_one(&node, c) {
                        return;
                    }
                }
            },
            _ = tick.tick() => {
                let forget: Vec<Position> = applied
                    .iter()
                    .zip(forgetting.iter())
                    .enumerate()
                    .filter(|(_, (a, f))| **a > f.load(Ordering::Acquire))
                    .map(|(shard, (a, f))| {
                        f.store(*a, Ordering::Release);
                        Position::new(shard as u32, *a)
                    })
                    .collect();
                if !forget.is_empty() {
                    let durable = node.store.durable();
                    let node = node.clone();
                    actix_rt::spawn(async move {
                        if durable.await.is_ok() {
                            for p in forget {
                                node.log.applied(p);
                            }
                        }
                    });
                }
            }
        }
    }
}

/// Applies one entry, tells its channel and its proposer. `false` when the store stopped accepting
/// writes: nothing more can be applied.
fn apply_one(node: &Hub, committed: CommittedEntry) -> bool {
    let window = node.config.history.idempotency_window_ms;
    let CommittedEntry {
        position,
        placement,
        entry,
    } = committed;
    let outcome = match node.store.apply(position, &placement, &entry, window) {
        Ok(o) => o,
        Err(e) => {
            let err = ChannelError::from_store(&e);
            tracing::error!(shard = position.shard, index = position.index, channel = %entry.channel, error = %e, "applier: entry not applied");
            node.applier.answer(&entry.id, Err(err.clone()));
            return !matches!(err, ChannelError::StoreFailed(_));
        }
    };
    if outcome == Applied::AlreadyApplied {
        return true;
    }
    let id = entry.id.clone();
    match node.channels.get(&entry.channel) {
        Some(addr) => notify(&addr, &outcome, entry),
        // Nobody delivers this channel: retention by size is applied here, as its actor would.
        None => trim_inactive(node, &entry.channel),
    }
    node.applier.answer(&id, Ok(outcome));
    true
}

fn trim_inactive(node: &Hub, channel: &str) {
    let retention =
        super::actor::retention_of(&node.config.namespace(super::namespace_of(channel)));
    let now = crate::protocol::now_ms();
    match node
        .channels
        .with_inactive(channel, || node.store.trim(channel, &retention, now, None))
    {
        Some(Ok(n)) => Stats::add(&node.stats.history_trimmed, n),
        Some(Err(e)) => tracing::warn!(%channel, error = %e, "history trim failed"),
        None => {}
    }
}

fn notify(addr: &Addr<ChannelActor>, outcome: &Applied, entry: Entry) {
    match (outcome, entry.kind) {
        (Applied::Message { epoch, offset }, EntryKind::Publish { data }) => {
            addr.do_send(Delivered {
                id: entry.id,
                ts: entry.ts,
                from: entry.from,
                data,
                epoch: epoch.clone(),
                offset: *offset,
            })
        }
        (Applied::Reset { epoch }, _) => addr.do_send(ResetApplied {
            epoch: epoch.clone(),
        }),
        _ => {}
    }
}
