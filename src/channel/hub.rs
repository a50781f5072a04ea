//! The channel layer's shared state: what publishing, applying, channel actors and subscriber cursors
//! need, and nothing about connections.
//!
//! It exists so dependencies point one way: the node (`crate::node`) holds a hub and adds what only
//! connections need (auth, admission, the session registry); the channel layer knows the hub, never
//! the node or the sessions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{Applier, Registry};
use crate::cluster::{ClusterState, Log};
use crate::config::Config;
use crate::history::Store;
use crate::stats::Stats;

/// See the module docs.
pub struct Hub {
    pub config: Arc<Config>,
    pub store: Store,
    pub log: Arc<dyn Log>,
    /// This node's proposals waiting to be applied (see [`Applier`]).
    pub applier: Applier,
    pub channels: Registry,
    pub stats: Stats,
    /// The clock of every rate limiter (per connection, per channel). Made once: building a quanta clock
    /// probes the CPU (cpuid), which showed up at ~2% of the server's CPU when every connection built
    /// its own.
    pub clock: governor::clock::DefaultClock,
    /// Presence and connection counts shared with the other nodes (records nothing on a single node).
    pub cluster_state: Arc<ClusterState>,
    draining: AtomicBool,
}

impl Hub {
    pub fn new(config: Arc<Config>, store: Store, log: Arc<dyn Log>, channels: Registry) -> Self {
        Hub {
            cluster_state: ClusterState::new(config.cluster.enabled),
            config,
            store,
            log,
            applier: Applier::default(),
            channels,
            stats: Stats::default(),
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
