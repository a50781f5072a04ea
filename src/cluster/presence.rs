//! Presence and per-user connection counts across the cluster: who is subscribed where, and how many
//! connections each user holds on every node.
//!
//! Each node owns the entries of its own connections, so no two nodes ever write the same entry and the
//! state needs no merge rules: a node's entries are whatever that node last said. A node numbers every
//! change of its entries (a `version`, one per change, reset by a restart: a new incarnation) and sends
//! the changes on the bus in batches ([`Changes`]); its heartbeat carries the version it has reached.
//! A receiver that sees a gap (a batch that does not follow what it has, a heartbeat ahead of it, or a
//! node it does not know) asks the owner for a [`Snapshot`] and ignores that node's batches until the
//! snapshot arrives. Applying a snapshot compares it with what the receiver had, so every member that
//! appeared or vanished produces exactly one `join` or `leave` event. When a node is declared dead
//! (unheard for [`super::DEAD_AFTER`]), its entries are dropped, again with one `leave` per member.
//!
//! This module is only the state and its rules; the [`super::Bus`] carries the frames, and the node
//! turns the events into `join`/`leave` frames for local subscribers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::{Deserialize, Serialize};

/// One change of a node's own entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Join {
        channel: String,
        session: String,
        user: Option<String>,
    },
    Leave {
        channel: String,
        session: String,
    },
    /// The number of connections `user` now holds on the node (0 removes it).
    Connections {
        user: String,
        count: u64,
    },
}

/// Everything a node owns, at one version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// (channel, session, user)
    pub members: Vec<(String, String, Option<String>)>,
    /// (user, connections)
    pub connections: Vec<(String, u64)>,
}

/// A batch of changes: versions `first ..= first + changes.len() - 1` of `node`'s `incarnation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub node: String,
    pub incarnation: String,
    pub first: u64,
    pub changes: Vec<Change>,
}

/// A member that appeared on or vanished from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    pub channel: String,
    pub session: String,
    pub user: Option<String>,
    pub join: bool,
}

/// Receives the events of remote members (the node hands them to its channel actors).
pub type PresenceSink = Arc<dyn Fn(Vec<PresenceEvent>) + Send + Sync>;

/// What a receiver must do after hearing from a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Up to date (or the frame was old news).
    Current,
    /// Ask the owner for a snapshot.
    NeedSnapshot,
}

#[derive(Default)]
struct Local {
    version: u64,
    channels: HashMap<String, BTreeMap<String, Option<String>>>,
    connections: HashMap<String, u64>,
    /// Changes not yet handed to the bus: versions `version - pending.len() + 1 ..= version`.
    pending: Vec<Change>,
}

struct Remote {
    incarnation: String,
    version: u64,
    /// False until a snapshot of this incarnation arrived: its batches are ignored meanwhile.
    synced: bool,
    channels: HashMap<String, BTreeMap<String, Option<String>>>,
    connections: HashMap<String, u64>,
}

/// A page of members: (session, user), ordered by session.
pub type Members = Vec<(String, Option<String>)>;

/// This node's entries and what it heard of the others'. Shared by the channel actors (local
/// changes), admission (connection counts), the bus, and the queries.
pub struct ClusterState {
    /// Off on a single node: local changes are not recorded (nobody would read them).
    tracking: bool,
    local: Mutex<Local>,
    remote: Mutex<HashMap<String, Remote>>,
    sink: OnceLock<PresenceSink>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a thread panicked while holding it; the maps stay usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClusterState {
    pub fn new(tracking: bool) -> Arc<Self> {
        Arc::new(ClusterState {
            tracking,
            local: Mutex::new(Local::default()),
            remote: Mutex::new(HashMap::new()),
            sink: OnceLock::new(),
        })
    }

    /// Where remote join/leave events go (set once, when the node starts its bus).
    pub fn set_sink(&self, sink: PresenceSink) {
        let _ = self.sink.set(sink);
    }

    fn emit(&self, events: Vec<PresenceEvent>) {
        if events.is_empty() {
            return;
        }
        if let Some(sink) = self.sink.get() {
            sink(events);
        }
    }

    fn record(&self, change: Change) {
        if !self.tracking {
            return;
        }
        let mut l = lock(&self.local);
        match &change {
            Change::Join {
                channel,
                session,
                user,
            } => {
                l.channels
                    .entry(channel.clone())
                    .or_default()
                    .insert(session.clone(), user.clone());
            }
            Change::Leave { channel, session } => {
                if let Some(m) = l.channels.get_mut(channel) {
                    m.remove(session);
                    if m.is_empty() {
                        l.channels.remove(channel);
                    }
                }
            }
            Change::Connections { user, count } => {
                if *count == 0 {
                    l.connections.remove(user);
                } else {
                    l.connections.insert(user.clone(), *count);
                }
            }
        }
        l.version += 1;
        l.pending.push(change);
    }

    /// A local session subscribed to `channel`.
    pub fn local_join(&self, channel: &str, session: &str, user: Option<&str>) {
        self.record(Change::Join {
            channel: channel.into(),
            session: session.into(),
            user: user.map(str::to_owned),
        });
    }

    /// A local session left `channel`.
    pub fn local_leave(&self, channel: &str, session: &str) {
        self.record(Change::Leave {
            channel: channel.into(),
            session: session.into(),
        });
    }

    /// `user` now holds `count` connections on this node.
    pub fn local_connections(&self, user: &str, count: u64) {
        self.record(Change::Connections {
            user: user.into(),
            count,
        });
    }

    /// The changes not yet sent, as one batch, and the version they reach (the heartbeat's).
    pub fn take_pending(&self, node: &str, incarnation: &str) -> (Option<Changes>, u64) {
        let mut l = lock(&self.local);
        let version = l.version;
        if l.pending.is_empty() {
            return (None, version);
        }
        let changes = std::mem::take(&mut l.pending);
        let first = version + 1 - changes.len() as u64;
        let batch = Changes {
            node: node.into(),
            incarnation: incarnation.into(),
            first,
            changes,
        };
        (Some(batch), version)
    }

    /// Everything this node owns and its version. Pending changes are part of it (and of the version):
    /// they are dropped, since the snapshot already says them.
    pub fn snapshot(&self) -> (Snapshot, u64) {
        let mut l = lock(&self.local);
        l.pending.clear();
        let members = l
            .channels
            .iter()
            .flat_map(|(c, m)| {
                m.iter()
                    .map(move |(s, u)| (c.clone(), s.clone(), u.clone()))
            })
            .collect();
        let connections = l.connections.iter().map(|(u, n)| (u.clone(), *n)).collect();
        (
            Snapshot {
                members,
                connections,
            },
            l.version,
        )
    }

    /// A heartbeat of `node` said it reached `version`.
    pub fn heard_version(&self, node: &str, incarnation: &str, version: u64) -> Heard {
        match lock(&self.remote).get(node) {
            Some(r) if r.incarnation == incarnation && r.synced && r.version >= version => {
                Heard::Current
            }
            _ => Heard::NeedSnapshot,
        }
    }

    /// Applies a batch of another node's changes, emitting their events.
    pub fn apply_changes(&self, batch: Changes) -> Heard {
        let mut events = Vec::new();
        let heard = {
            let mut remote = lock(&self.remote);
            let Some(r) = remote.get_mut(&batch.node) else {
                return Heard::NeedSnapshot;
            };
            if r.incarnation != batch.incarnation || !r.synced {
                return Heard::NeedSnapshot;
            }
            let last = batch.first + batch.changes.len() as u64 - 1;
            if last <= r.version {
                return Heard::Current;
            }
            if batch.first != r.version + 1 {
                r.synced = false;
                return Heard::NeedSnapshot;
            }
            for c in batch.changes {
                apply_one(r, c, &mut events);
            }
            r.version = last;
            Heard::Current
        };
        self.emit(events);
        heard
    }

    /// Replaces what this node knew of `node` with its snapshot: one event per member that differs.
    pub fn apply_snapshot(&self, node: &str, incarnation: &str, version: u64, snap: Snapshot) {
        let mut channels: HashMap<String, BTreeMap<String, Option<String>>> = HashMap::new();
        for (c, s, u) in snap.members {
            channels.entry(c).or_default().insert(s, u);
        }
        let mut events = Vec::new();
        {
            let mut remote = lock(&self.remote);
            if let Some(r) = remote.get(node) {
                // An older snapshot of the same incarnation arriving late changes nothing.
                if r.incarnation == incarnation && r.synced && r.version > version {
                    return;
                }
            }
            let old = remote.remove(node).map(|r| r.channels).unwrap_or_default();
            diff(&old, &channels, &mut events);
            remote.insert(
                node.into(),
                Remote {
                    incarnation: incarnation.into(),
                    version,
                    synced: true,
                    channels,
                    connections: snap.connections.into_iter().collect(),
                },
            );
        }
        self.emit(events);
    }

    /// Nodes whose entries this node holds.
    pub fn remote_nodes(&self) -> Vec<String> {
        lock(&self.remote).keys().cloned().collect()
    }

    /// Drops everything of a node declared dead: one `leave` per member it had.
    pub fn expire(&self, node: &str) {
        let Some(r) = lock(&self.remote).remove(node) else {
            return;
        };
        let mut events = Vec::new();
        diff(&r.channels, &HashMap::new(), &mut events);
        self.emit(events);
    }

    /// Members of `channel` on other nodes.
    pub fn remote_members(&self, channel: &str) -> Members {
        let remote = lock(&self.remote);
        let mut out = Vec::new();
        for r in remote.values() {
            if let Some(m) = r.channels.get(channel) {
                out.extend(m.iter().map(|(s, u)| (s.clone(), u.clone())));
            }
        }
        out
    }

    /// Connections `user` holds on other nodes, as last heard.
    pub fn remote_connections(&self, user: &str) -> u64 {
        lock(&self.remote)
            .values()
            .filter_map(|r| r.connections.get(user))
            .sum()
    }
}

fn apply_one(r: &mut Remote, c: Change, events: &mut Vec<PresenceEvent>) {
    match c {
        Change::Join {
            channel,
            session,
            user,
        } => {
            let m = r.channels.entry(channel.clone()).or_default();
            if m.insert(session.clone(), user.clone()).is_none() {
                events.push(PresenceEvent {
                    channel,
                    session,
                    user,
                    join: true,
                });
            }
        }
        Change::Leave { channel, session } => {
            let Some(m) = r.channels.get_mut(&channel) else {
                return;
            };
            if let Some(user) = m.remove(&session) {
                if m.is_empty() {
                    r.channels.remove(&channel);
                }
                events.push(PresenceEvent {
                    channel,
                    session,
                    user,
                    join: false,
                });
            }
        }
        Change::Connections { user, count } => {
            if count == 0 {
                r.connections.remove(&user);
            } else {
                r.connections.insert(user, count);
            }
        }
    }
}

type ChannelMap = HashMap<String, BTreeMap<String, Option<String>>>;

/// Events that turn `old` into `new`: a leave for each member only in `old`, a join for each only in
/// `new`.
fn diff(old: &ChannelMap, new: &ChannelMap, events: &mut Vec<PresenceEvent>) {
    let mut one_way = |from: &ChannelMap, to: &ChannelMap, join: bool| {
        for (c, members) in from {
            let other = to.get(c);
            for (s, u) in members {
                if other.is_none_or(|o| !o.contains_key(s)) {
                    events.push(PresenceEvent {
                        channel: c.clone(),
                        session: s.clone(),
                        user: u.clone(),
                        join,
                    });
                }
            }
        }
    };
    one_way(old, new, false);
    one_way(new, old, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording() -> (Arc<ClusterState>, Arc<Mutex<Vec<PresenceEvent>>>) {
        let s = ClusterState::new(true);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        s.set_sink(Arc::new(move |e| lock(&sink).extend(e)));
        (s, seen)
    }

    fn joins_and_leaves(seen: &Mutex<Vec<PresenceEvent>>) -> Vec<(String, bool)> {
        std::mem::take(&mut *lock(seen))
            .into_iter()
            .map(|e| (e.session, e.join))
            .collect()
    }

    #[test]
    fn batches_apply_in_order_and_a_gap_asks_for_a_snapshot() {
        let owner = ClusterState::new(true);
        let (rx, seen) = recording();
        owner.local_join("c", "s1", Some("u"));
        // Unknown node: a snapshot first.
        let (batch, v) = owner.take_pending("a", "i1");
        assert_eq!(v, 1);
        assert_eq!(rx.apply_changes(batch.unwrap()), Heard::NeedSnapshot);
        let (snap, v) = owner.snapshot();
        rx.apply_snapshot("a", "i1", v, snap);
        assert_eq!(joins_and_leaves(&seen), vec![("s1".into(), true)]);
        assert_eq!(rx.heard_version("a", "i1", 1), Heard::Current);
        // In order.
        owner.local_join("c", "s2", None);
        owner.local_leave("c", "s1");
        let (batch, _) = owner.take_pending("a", "i1");
        assert_eq!(rx.apply_changes(batch.unwrap()), Heard::Current);
        assert_eq!(
            joins_and_leaves(&seen),
            vec![("s2".into(), true), ("s1".into(), false)]
        );
        assert_eq!(rx.remote_members("c"), vec![("s2".into(), None)]);
        // A lost batch: the next one is a gap, and so is the heartbeat.
        owner.local_join("c", "s3", None);
        let _lost = owner.take_pending("a", "i1");
        owner.local_join("c", "s4", None);
        let (batch, v) = owner.take_pending("a", "i1");
        assert_eq!(rx.apply_changes(batch.unwrap()), Heard::NeedSnapshot);
        assert_eq!(rx.heard_version("a", "i1", v), Heard::NeedSnapshot);
        let (snap, v) = owner.snapshot();
        rx.apply_snapshot("a", "i1", v, snap);
        let mut got = joins_and_leaves(&seen);
        got.sort();
        assert_eq!(got, vec![("s3".into(), true), ("s4".into(), true)]);
        assert_eq!(rx.remote_members("c").len(), 3);
    }

    #[test]
    fn a_restart_or_a_death_leaves_each_member_once() {
        let (rx, seen) = recording();
        let snap = |members: &[&str]| Snapshot {
            members: members
                .iter()
                .map(|s| ("c".to_string(), s.to_string(), None))
                .collect(),
            connections: vec![("u".into(), 2)],
        };
        rx.apply_snapshot("a", "i1", 5, snap(&["s1", "s2"]));
        joins_and_leaves(&seen);
        assert_eq!(rx.remote_connections("u"), 2);
        // Restarted: its new snapshot keeps s2 (same session id cannot survive a restart in practice,
        // but the rule is by entry) and drops s1.
        rx.apply_snapshot("a", "i2", 1, snap(&["s2", "s3"]));
        let mut got = joins_and_leaves(&seen);
        got.sort();
        assert_eq!(got, vec![("s1".into(), false), ("s3".into(), true)]);
        rx.expire("a");
        let mut got = joins_and_leaves(&seen);
        got.sort();
        assert_eq!(got, vec![("s2".into(), false), ("s3".into(), false)]);
        rx.expire("a");
        assert!(joins_and_leaves(&seen).is_empty());
        assert_eq!(rx.remote_connections("u"), 0);
    }

    #[test]
    fn a_snapshot_covers_pending_changes() {
        let owner = ClusterState::new(true);
        owner.local_connections("u", 1);
        owner.local_join("c", "s1", None);
        let (snap, v) = owner.snapshot();
        assert_eq!(v, 2);
        assert_eq!(snap.connections, vec![("u".into(), 1)]);
        assert_eq!(owner.take_pending("a", "i"), (None, 2));
        let off = ClusterState::new(false);
        off.local_join("c", "s1", None);
        assert_eq!(off.snapshot().1, 0);
    }
}
