//! The registry of active channel actors and the arbiters they run on.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use actix::prelude::*;
use actix_rt::{Arbiter, ArbiterHandle};

use super::ChannelActor;
use super::ChannelError;
use super::Hub;

/// Maps channel names to their actors and starts actors on demand, spread over arbiter threads by a hash
/// of the name.
pub struct Registry {
    actors: Mutex<HashMap<Arc<str>, Addr<ChannelActor>>>,
    arbiters: Vec<ArbiterHandle>,
    /// Owned arbiters, stopped on drop.
    _owned: Vec<Arbiter>,
    /// The thread of the node's applier (blocking store work, kept off the channel threads).
    applier: Arbiter,
    max_channels: usize,
}

impl Registry {
    /// Starts `threads` arbiters for channel actors. Must run inside an actix system.
    pub fn new(threads: usize, max_channels: usize) -> Self {
        let owned: Vec<Arbiter> = (0..threads.max(1)).map(|_| Arbiter::new()).collect();
        Registry {
            actors: Mutex::new(HashMap::new()),
            arbiters: owned.iter().map(|a| a.handle()).collect(),
            _owned: owned,
            applier: Arbiter::new(),
            max_channels,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Addr<ChannelActor>>> {
        self.actors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The actor of `name`, started if needed.
    pub fn get_or_start(
        &self,
        node: &Arc<Hub>,
        name: &str,
    ) -> Result<Addr<ChannelActor>, ChannelError> {
        let mut actors = self.lock();
        if let Some(addr) = actors.get(name) {
            if addr.connected() {
                return Ok(addr.clone());
            }
        }
        if node.is_draining() {
            return Err(ChannelError::Unavailable);
        }
        if actors.len() >= self.max_channels {
            return Err(ChannelError::Unavailable);
        }
        let name: Arc<str> = Arc::from(name);
        let actor = ChannelActor::load(name.clone(), node.clone())?;
        let mut h = DefaultHasher::new();
        name.hash(&mut h);
        let arbiter = &self.arbiters[(h.finish() as usize) % self.arbiters.len()];
        let addr = ChannelActor::start_in_arbiter(arbiter, move |_| actor);
        actors.insert(name, addr.clone());
        Ok(addr)
    }

    /// Removes `name` if it still maps to `addr`. Returns whether the caller may stop.
    pub fn remove_if(&self, name: &str, addr: &Addr<ChannelActor>) -> bool {
        let mut actors = self.lock();
        match actors.get(name) {
            Some(a) if a == addr => {
                actors.remove(name);
                true
            }
            Some(_) => true,
            None => true,
        }
    }

    /// The live actor of `name`, without starting one.
    pub fn get(&self, name: &str) -> Option<Addr<ChannelActor>> {
        self.lock().get(name).filter(|a| a.connected()).cloned()
    }

    /// Names of the active channels (a snapshot).
    pub fn names(&self) -> Vec<Arc<str>> {
        self.lock().keys().cloned().collect()
    }

    /// Whether `name` has a live actor.
    pub fn is_active(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Number of active channel actors.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` while holding the registry lock, if `name` has no active actor: no actor can start for it
    /// meanwhile. Used by the retention sweeper for channels nobody is using.
    pub fn with_inactive<R>(&self, name: &str, f: impl FnOnce() -> R) -> Option<R> {
        let actors = self.lock();
        if actors.contains_key(name) {
            return None;
        }
        let r = f();
        drop(actors);
        Some(r)
    }

    /// The arbiter the applier runs on.
    pub fn applier_arbiter(&self) -> actix_rt::ArbiterHandle {
        self.applier.handle()
    }

    /// Stops every arbiter (after shutdown).
    pub fn stop(&self) {
        for a in &self.arbiters {
            a.stop();
        }
        self.applier.stop();
    }
}
