//! The state one node shares between its listeners, sessions and channels.
//!
//! [`AuthError::REASONS`](crate::auth::AuthError::REASONS) labels `auth_failures`, [`RefusedBy`](crate::admission::RefusedBy) labels
//! `connections_refused`.
//!
//! Everything here is either immutable (config, ids) or a small thread-safe registry, so sessions on any
//! worker and channel actors on any arbiter can reach it without going through one actor.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::admission::{Admission, RefusalLog};
use crate::auth::Authenticator;
use crate::channel::{Hub, Registry};
use crate::cluster::{Bus, Heartbeat, Log, Membership};
use crate::config::Config;
use crate::history::Store;

pub use crate::stats::Stats;

/// How a session's frames travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    /// HTTP long-polling (`session::polling`).
    LongPolling,
}

impl Transport {
    /// The `transport` label of metrics and the admin API.
    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::LongPolling => "long_polling",
        }
    }
}

/// What the node knows about one live session (for shutdown and the admin API).
#[derive(Clone)]
pub struct SessionEntry {
    pub user: Option<Arc<str>>,
    pub peer: Option<SocketAddr>,
    pub transport: Transport,
    pub connected_at: SystemTime,
    /// Asks the session to close with a code.
    pub evict: crate::channel::Evictor,
}

/// Live sessions by id.
#[derive(Default)]
pub struct Sessions {
    /// Entries are boxed: the table keeps room for up to twice as many slots as sessions, and an empty
    /// slot then costs a pointer instead of a whole entry.
    inner: Mutex<HashMap<Arc<str>, Box<SessionEntry>>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Box<SessionEntry>>> {
        // A poisoned lock only means another thread panicked mid-insert; the map itself stays usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, id: Arc<str>, entry: SessionEntry) {
        self.lock().insert(id, Box::new(entry));
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of every session.
    pub fn snapshot(&self) -> Vec<(Arc<str>, SessionEntry)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), SessionEntry::clone(v)))
            .collect()
    }
}

/// The shared state of one node: the channel layer's [`Hub`] (config, store, log, applier, channel
/// registry, stats), which it derefs to, plus what only connections need (auth, admission, sessions).
pub struct Node {
    pub id: String,
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    pub admission: Arc<Admission>,
    /// Rate limit of the log lines about refused handshakes.
    pub refusal_log: RefusalLog,
    pub sessions: Sessions,
    pub started_at: SystemTime,
    /// Changes every time the process starts (membership tells a restarted node from a silent one).
    pub incarnation: String,
    /// The other nodes of the cluster, as heard on the bus (empty on a single node).
    pub membership: Membership,
    /// The client and admin listener addresses, once bound.
    pub addresses: std::sync::OnceLock<(String, String)>,
    /// The cluster bus, once started (never on a single node): the admin API asks the other nodes
    /// through it.
    pub bus: std::sync::OnceLock<actix::Addr<Bus>>,
}

impl std::ops::Deref for Node {
    type Target = Hub;

    fn deref(&self) -> &Hub {
        &self.hub
    }
}

impl Node {
    pub fn new(
        config: Arc<Config>,
        auth: Arc<Authenticator>,
        store: Store,
        log: Arc<dyn Log>,
        channels: Registry,
    ) -> Self {
        let id = if config.server.node_id.is_empty() {
            ulid::Ulid::new().to_string()
        } else {
            config.server.node_id.clone()
        };
        let hub = Arc::new(Hub::new(config.clone(), store, log, channels));
        Node {
            id,
            admission: Admission::new(&config.limits, hub.cluster_state.clone()),
            refusal_log: RefusalLog::default(),
            auth,
            hub,
            sessions: Sessions::default(),
            started_at: SystemTime::now(),
            incarnation: ulid::Ulid::new().to_string(),
            membership: Membership::default(),
            addresses: std::sync::OnceLock::new(),
            bus: std::sync::OnceLock::new(),
        }
    }

    /// What this node says about itself on the cluster bus.
    pub fn heartbeat(&self, version: u64) -> Heartbeat {
        let (address, admin_address) = self.addresses.get().cloned().unwrap_or_default();
        Heartbeat {
            node: self.id.clone(),
            incarnation: self.incarnation.clone(),
            version,
            address,
            admin_address,
            connections: Stats::get(&self.stats.sessions).max(0) as u64,
            subscriptions: Stats::get(&self.stats.subscriptions).max(0) as u64,
            applied: self
                .store
                .applied_positions(self.log.shards())
                .unwrap_or_default(),
            queue: String::new(),
            state_version: 0,
        }
    }
}
