//! Read-only questions to a channel (presence, history pages, inspection) and the operator reset.
//!
//! Split from `actor.rs` so the sequencing and fan-out path stays short to read. Read-only questions
//! never start an actor or create a channel: [`history_page`] and [`presence_members`] ask the live
//! actor if there is one, and otherwise answer from the store under the registry lock (so no actor
//! can start and append meanwhile). A client reading channels nobody uses therefore costs no actor, no
//! metadata on disk, and no slot of `limits.max_channels`.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use super::actor::{namespace_of, ChannelActor};
use super::Hub;
use super::{
    ChannelError, ChannelInfo, History, HistoryPage, Inspect, Presence, ResetHistory,
    SubscriberInfo,
};
use crate::history::{HistoryError, Store};

/// How often a read retries when actors start and stop under it (each miss means one just changed).
const READ_ATTEMPTS: usize = 3;

/// A page of `name`'s history, without starting an actor for it.
pub async fn history_page(
    node: &Arc<Hub>,
    name: &str,
    q: History,
) -> Result<HistoryPage, ChannelError> {
    for _ in 0..READ_ATTEMPTS {
        if let Some(addr) = node.channels.get(name) {
            match addr.send(q).await {
                Ok(page) => return page,
                Err(_) => continue, // stopped meanwhile: its history is on disk now
            }
        }
        if let Some(page) = node
            .channels
            .with_inactive(name, || stored_page(&node.store, name, q))
        {
            return page;
        }
    }
    Err(ChannelError::Unavailable)
}

/// A page read straight from the store: every stored message is durable (it was applied from a
/// committed log entry).
fn stored_page(store: &Store, name: &str, q: History) -> Result<HistoryPage, ChannelError> {
    let storage = |e: HistoryError| ChannelError::from_store(&e);
    let Some(state) = store.peek_state(name).map_err(storage)? else {
        return Ok(HistoryPage {
            epoch: String::new(),
            head: 0,
            oldest: None,
            messages: Vec::new(),
            next: None,
        });
    };
    let mut messages = if q.since < state.head {
        store
            .range_bounded(name, q.since, q.limit, q.max_bytes)
            .map_err(storage)?
    } else {
        Vec::new()
    };
    // Applied after the state was read: part of the next page.
    messages.retain(|m| m.offset <= state.head);
    let next = match messages.last() {
        Some(m) if m.offset < state.head => Some(m.offset),
        _ => None,
    };
    Ok(HistoryPage {
        epoch: state.epoch,
        head: state.head,
        oldest: state.oldest,
        messages,
        next,
    })
}

/// Largest (and default) page of `presence`.
pub const PRESENCE_PAGE: usize = 1000;

/// The sessions subscribed to `name` on this node and, in a cluster, on every other node heard on the
/// bus (session, user), ordered by session. Empty when nobody is subscribed anywhere.
pub async fn presence_members(
    node: &Arc<Hub>,
    name: &str,
) -> Result<Vec<(String, Option<String>)>, ChannelError> {
    let mut members = local_presence(node, name).await?;
    members.extend(node.cluster_state.remote_members(name));
    members.sort();
    Ok(members)
}

/// A page of [`presence_members`]: the members after the session `after`, at most `limit` (capped at
/// [`PRESENCE_PAGE`]), and the `after` of the next page when more follow.
pub async fn presence_page(
    node: &Arc<Hub>,
    name: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<(String, Option<String>)>, Option<String>), ChannelError> {
    let limit = limit.clamp(1, PRESENCE_PAGE);
    let members = presence_members(node, name).await?;
    let start = after.map_or(0, |a| members.partition_point(|(s, _)| s.as_str() <= a));
    let rest = &members[start..];
    let page: Vec<_> = rest.iter().take(limit).cloned().collect();
    let next = (rest.len() > limit).then(|| page.last().map(|(s, _)| s.clone()));
    Ok((page, next.flatten()))
}

/// How many sessions and distinct users are present in `name` across the cluster.
pub async fn presence_count(node: &Arc<Hub>, name: &str) -> Result<(usize, usize), ChannelError> {
    let mut members = local_presence(node, name).await?;
    members.extend(node.cluster_state.remote_members(name));
    let users: std::collections::HashSet<&str> =
        members.iter().filter_map(|(_, u)| u.as_deref()).collect();
    Ok((members.len(), users.len()))
}

async fn local_presence(
    node: &Arc<Hub>,
    name: &str,
) -> Result<Vec<(String, Option<String>)>, ChannelError> {
    for _ in 0..READ_ATTEMPTS {
        let Some(addr) = node.channels.get(name) else {
            return Ok(Vec::new());
        };
        if let Ok(members) = addr.send(Presence).await {
            return members;
        }
    }
    Err(ChannelError::Unavailable)
}

impl Handler<Presence> for ChannelActor {
    type Result = Result<Vec<(String, Option<String>)>, ChannelError>;

    fn handle(&mut self, _msg: Presence, _ctx: &mut Self::Context) -> Self::Result {
        if !self.ns.presence {
            return Err(ChannelError::PresenceDisabled);
        }
        let mut members: Vec<_> = self
            .subscribers
            .iter()
            .map(|(s, sub)| (s.to_string(), sub.user.as_deref().map(str::to_owned)))
            .collect();
        members.sort();
        Ok(members)
    }
}

impl Handler<History> for ChannelActor {
    type Result = Result<HistoryPage, ChannelError>;

    /// Straight from the store: everything stored is applied from committed entries, so a publisher that
    /// reads right after its reply sees its message even before this actor delivered it.
    fn handle(&mut self, msg: History, _ctx: &mut Self::Context) -> Self::Result {
        self.last_activity = Instant::now();
        stored_page(&self.node.store, &self.name, msg)
    }
}

impl Handler<Inspect> for ChannelActor {
    type Result = MessageResult<Inspect>;

    fn handle(&mut self, _msg: Inspect, _ctx: &mut Self::Context) -> Self::Result {
        let mut subscribers: Vec<SubscriberInfo> = self
            .subscribers
            .iter()
            .map(|(id, s)| SubscriberInfo {
                session: id.to_string(),
                user: s.user.as_deref().map(str::to_owned),
                since_ms: s.since_ms,
            })
            .collect();
        subscribers.sort_by(|a, b| a.session.cmp(&b.session));
        MessageResult(ChannelInfo {
            name: self.name.to_string(),
            namespace: namespace_of(&self.name).to_string(),
            options: self.ns.clone(),
            epoch: self.epoch.to_string(),
            head: self.durable,
            pending: self.node.applier.pending(&self.name),
            subscribers,
            last_publish_ms: self.last_publish_ms,
        })
    }
}

impl Handler<ResetHistory> for ChannelActor {
    type Result = ResponseFuture<Result<String, ChannelError>>;

    /// Proposes a reset entry; the applier deletes the history and tells this actor the new epoch
    /// (`ResetApplied`, from the applier) before the answer arrives. Subscribers still catching up in the
    /// old epoch continue from the start of the new one (the history they were reading is gone).
    fn handle(&mut self, _msg: ResetHistory, _ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span.clone().entered();
        let node = self.node.clone();
        let name = self.name.to_string();
        Box::pin(async move { super::applier::reset(&node, name).await })
    }
}
