//! The state one node shares between its listeners, sessions and channels.
//!
//! [`AuthError::REASONS`](crate::auth::AuthError::REASONS) labels `auth_failures`, [`RefusedBy`] labels
//! `connections_refused`.
//!
//! Everything here is either immutable (config, ids) or a small thread-safe registry, so sessions on any
//! worker and channel actors on any arbiter can reach it without going through one actor.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use actix::Recipient;

use crate::auth::Authenticator;
use crate::channel::{Applier, Evict, Registry};
use crate::cluster::Log;
use crate::config::Config;
use crate::history::Store;
use crate::metrics::{Histogram, LAG_BUCKETS, LATENCY_BUCKETS, LIFETIME_BUCKETS};
use crate::session::admission::{Admission, RefusalLog, RefusedBy};

/// Counters, gauges and histograms of a node. Gauges are signed so a racing decrement never wraps.
/// The admin module renders them (and the store's flush histogram) as Prometheus metrics.
#[derive(Debug)]
pub struct Stats {
    pub sessions: AtomicI64,
    pub subscriptions: AtomicI64,
    pub channels: AtomicI64,
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub publishes: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub rate_limited: AtomicU64,
    pub bad_frames: AtomicU64,
    /// Messages removed by retention.
    pub history_trimmed: AtomicU64,
    /// Lifetime of closed connections.
    pub connection_lifetime: Histogram,
    /// From a publish reaching its channel to its delivery to the outboxes (includes the flush).
    pub publish_to_deliver: Histogram,
    /// Refused handshakes and refreshes, by [`AuthError::REASONS`] index.
    pub auth_failures: [AtomicU64; crate::auth::AuthError::REASONS.len()],
    /// Refused handshakes, by [`RefusedBy::index`] (every reason: Origin, subprotocol, draining, token,
    /// connection limits, connect rate).
    pub connections_refused: [AtomicU64; RefusedBy::ALL.len()],
    /// `join`/`leave` frames not sent because their channel was over `channel.join_leave_per_second`.
    pub join_leave_suppressed: AtomicU64,
    /// Connections closed with 4007 for flooding after `rate_limited`.
    pub rate_limit_closes: AtomicU64,
    /// Subscribers behind their channel's head at their channel's last lag check.
    pub catching_up: AtomicI64,
    /// Age of the oldest message a subscriber has not been sent yet (0 when caught up), sampled per
    /// subscriber at every lag check of its channel.
    pub subscriber_lag: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            sessions: AtomicI64::new(0),
            subscriptions: AtomicI64::new(0),
            channels: AtomicI64::new(0),
            connections_opened: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            publishes: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            history_trimmed: AtomicU64::new(0),
            connection_lifetime: Histogram::new(LIFETIME_BUCKETS),
            publish_to_deliver: Histogram::new(LATENCY_BUCKETS),
            auth_failures: Default::default(),
            connections_refused: Default::default(),
            join_leave_suppressed: AtomicU64::new(0),
            rate_limit_closes: AtomicU64::new(0),
            catching_up: AtomicI64::new(0),
            subscriber_lag: Histogram::new(LAG_BUCKETS),
        }
    }
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn gauge(g: &AtomicI64, delta: i64) {
        g.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn get(g: &AtomicI64) -> i64 {
        g.load(Ordering::Relaxed)
    }
}

/// What the node knows about one live session (for shutdown and, later, the admin API).
#[derive(Clone)]
pub struct SessionEntry {
    pub user: Option<Arc<str>>,
    pub peer: Option<SocketAddr>,
    pub connected_at: SystemTime,
    /// Asks the session to close with a code.
    pub evict: Recipient<Evict>,
}

/// Live sessions by id.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<Arc<str>, SessionEntry>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, SessionEntry>> {
        // A poisoned lock only means another thread panicked mid-insert; the map itself stays usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, id: Arc<str>, entry: SessionEntry) {
        self.lock().insert(id, entry);
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
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The shared state of one node.
pub struct Node {
    pub id: String,
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    pub admission: Arc<Admission>,
    /// Rate limit of the log lines about refused handshakes.
    pub refusal_log: RefusalLog,
    pub store: Store,
    pub log: Arc<dyn Log>,
    /// This node's proposals waiting to be applied (see [`crate::channel::Applier`]).
    pub applier: Applier,
    pub channels: Registry,
    pub sessions: Sessions,
    pub stats: Stats,
    pub started_at: SystemTime,
    /// The clock of every per-connection rate limiter. Made once: building a quanta clock probes the CPU
    /// (cpuid), which showed up at ~2% of the server's CPU when every connection built its own.
    pub clock: governor::clock::DefaultClock,
    draining: AtomicBool,
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
        Node {
            id,
            admission: Admission::new(&config.limits),
            refusal_log: RefusalLog::default(),
            auth,
            config,
            store,
            log,
            applier: Applier::default(),
            channels,
            sessions: Sessions::default(),
            stats: Stats::default(),
            started_at: SystemTime::now(),
            clock: governor::clock::DefaultClock::default(),
            draining: AtomicBool::new(false),
        }
    }

    /// True once shutdown has begun: no new connections or channels.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}
