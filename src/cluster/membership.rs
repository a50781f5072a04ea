//! Membership: which nodes of the cluster are alive, with what load and how far each has applied.
//!
//! Every node publishes a [`Heartbeat`] on the bus every [`HEARTBEAT`] (id, incarnation, a version,
//! addresses, load, applied position per shard, its bus queue and presence version) and keeps the
//! latest heartbeat of every node it hears. A node unheard for [`DEAD_AFTER`] (3 heartbeats) is dead;
//! one unheard for [`FORGET_AFTER`] is forgotten. While this node's own bus link is down the table
//! ages and peers turn dead, which is what this node can honestly say about them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node unheard for this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(3);
/// A node unheard for this long leaves the table.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

/// What a node says about itself on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    /// Changes every time the node process starts.
    pub incarnation: String,
    /// Increases with every heartbeat of one incarnation.
    pub version: u64,
    /// Client (WebSocket) and admin listener addresses.
    pub address: String,
    pub admin_address: String,
    pub connections: u64,
    pub subscriptions: u64,
    /// The last log index applied, per shard.
    pub applied: Vec<u64>,
    /// The node's bus queue (where answers to its questions go); filled in by the bus.
    #[serde(default)]
    pub queue: String,
    /// The version its presence and connection counts reached ([`super::presence`]); filled in by
    /// the bus.
    #[serde(default)]
    pub state_version: u64,
}

/// A node as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub heartbeat: Heartbeat,
    pub alive: bool,
    /// Whether this is the node answering.
    pub me: bool,
    pub last_seen_ms: u64,
}

/// The table of nodes heard on the bus. Cheap to clone.
#[derive(Clone, Default)]
pub struct Membership {
    inner: Arc<Mutex<HashMap<String, (Heartbeat, Instant)>>>,
}

impl Membership {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Heartbeat, Instant)>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat (a newer incarnation replaces an older one; an older version is ignored).
    pub fn heard(&self, hb: Heartbeat) {
        let mut t = self.lock();
        let newer = match t.get(&hb.node) {
            Some((old, _)) => old.incarnation != hb.incarnation || old.version <= hb.version,
            None => true,
        };
        if newer {
            t.insert(hb.node.clone(), (hb, Instant::now()));
        }
    }

    /// Marks `node` as heard now (any frame of it proves it alive); unknown nodes wait for a heartbeat.
    pub fn touch(&self, node: &str) {
        if let Some((_, seen)) = self.lock().get_mut(node) {
            *seen = Instant::now();
        }
    }

    /// Whether `node` was heard within [`DEAD_AFTER`].
    pub fn is_alive(&self, node: &str) -> bool {
        self.lock()
            .get(node)
            .is_some_and(|(_, seen)| seen.elapsed() < DEAD_AFTER)
    }

    /// The other nodes heard, split into alive and dead.
    pub fn others(&self, me: &str) -> (Vec<Heartbeat>, Vec<Heartbeat>) {
        let (alive, dead): (Vec<_>, Vec<_>) = self
            .lock()
            .values()
            .filter(|(hb, _)| hb.node != me)
            .map(|(hb, seen)| (hb.clone(), seen.elapsed() < DEAD_AFTER))
            .partition(|(_, ok)| *ok);
        let strip = |v: Vec<(Heartbeat, bool)>| v.into_iter().map(|(hb, _)| hb).collect();
        (strip(alive), strip(dead))
    }

    /// Forgets nodes unheard for [`FORGET_AFTER`] (a node removed from the cluster leaves the table).
    pub fn forget_old(&self) {
        self.lock()
            .retain(|_, (_, seen)| seen.elapsed() < FORGET_AFTER);
    }

    /// Every node heard, with `me` (always alive: it is answering) first, then by id.
    pub fn members(&self, me: &Heartbeat) -> Vec<Member> {
        let now = Instant::now();
        let mut out: Vec<Member> = self
            .lock()
            .values()
            .filter(|(hb, _)| hb.node != me.node)
            .map(|(hb, seen)| {
                let age = now.saturating_duration_since(*seen);
                Member {
                    heartbeat: hb.clone(),
                    alive: age < DEAD_AFTER,
                    me: false,
                    last_seen_ms: age.as_millis() as u64,
                }
            })
            .collect();
        out.sort_by(|a, b| a.heartbeat.node.cmp(&b.heartbeat.node));
        out.insert(
            0,
            Member {
                heartbeat: me.clone(),
                alive: true,
                me: true,
                last_seen_ms: 0,
            },
        );
        out
    }

    /// Per shard, how many log indexes `me` is behind the most advanced alive node.
    pub fn lag(&self, me: &Heartbeat) -> Vec<u64> {
        let members = self.members(me);
        me.applied
            .iter()
            .enumerate()
            .map(|(s, mine)| {
                let top = members
                    .iter()
                    .filter(|m| m.alive)
                    .filter_map(|m| m.heartbeat.applied.get(s))
                    .max()
                    .copied()
                    .unwrap_or(0);
                top.saturating_sub(*mine)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(node: &str, incarnation: &str, version: u64, applied: Vec<u64>) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            incarnation: incarnation.into(),
            version,
            address: String::new(),
            admin_address: String::new(),
            connections: 0,
            subscriptions: 0,
            applied,
            queue: String::new(),
            state_version: 0,
        }
    }

    #[test]
    fn the_table_keeps_the_latest_heartbeat_and_computes_lag() {
        let m = Membership::default();
        let me = hb("a", "1", 5, vec![10, 20]);
        m.heard(hb("b", "1", 3, vec![30, 20]));
        m.heard(hb("b", "1", 2, vec![0, 0])); // older version: ignored
        let members = m.members(&me);
        assert_eq!(members.len(), 2);
        assert!(members[0].me && members[1].alive);
        assert_eq!(members[1].heartbeat.version, 3);
        assert_eq!(m.lag(&me), vec![20, 0]);
        m.heard(hb("b", "2", 1, vec![40, 40])); // a restart: a new incarnation replaces it
        assert_eq!(m.members(&me)[1].heartbeat.incarnation, "2");
    }
}
