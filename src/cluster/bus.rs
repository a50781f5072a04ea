//! The cluster bus and membership: which nodes are alive, with what load and how far each has applied.
//!
//! Ephemeral state does not belong in the streams (replays after a restart and retention would fight
//! with leases), so it travels on a bus: a fanout exchange `herald.<cluster>.bus` with one exclusive,
//! auto-delete queue per node. Every node publishes a [`Heartbeat`] every [`HEARTBEAT`] (id, incarnation,
//! a version, addresses, load, applied position per shard) and keeps the latest heartbeat of every node
//! it hears. A node unheard for [`DEAD_AFTER`] (3 heartbeats) is dead. The [`Bus`] actor keeps its own
//! link to RabbitMQ (reconnecting with backoff); while the link is down the table ages and peers turn
//! dead, which is what this node can honestly say about them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde::{Deserialize, Serialize};

use super::stream::{backoff, connect, unavailable};
use super::LogError;
use crate::config::ClusterConfig;

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node unheard for this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(3);

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

/// Builds this node's heartbeat (load and positions read when it is sent).
pub type HeartbeatSource = Arc<dyn Fn(u64) -> Heartbeat + Send + Sync>;

/// The bus member of this node: publishes its heartbeat and records everybody's. An actix actor on the
/// node's applier thread.
pub struct Bus {
    cfg: ClusterConfig,
    source: HeartbeatSource,
    membership: Membership,
    version: u64,
    link: Option<(Arc<Connection>, Channel)>,
    connecting: bool,
    failures: u32,
}

impl Bus {
    pub fn new(cfg: ClusterConfig, source: HeartbeatSource, membership: Membership) -> Self {
        Bus {
            cfg,
            source,
            membership,
            version: 0,
            link: None,
            connecting: false,
            failures: 0,
        }
    }

    fn exchange(&self) -> String {
        format!("herald.{}.bus", self.cfg.name)
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting {
            return;
        }
        self.connecting = true;
        let cfg = self.cfg.clone();
        let exchange = self.exchange();
        let membership = self.membership.clone();
        let setup = async move {
            let conn = connect(&cfg).await?;
            let ch = conn.create_channel().await.map_err(unavailable)?;
            ch.exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                // Gone with the last node's queue: nothing of the bus outlives the cluster.
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
            let queue = ch
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(unavailable)?;
            ch.queue_bind(
                queue.name().clone(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
            let consumer = ch
                .basic_consume(
                    queue.name().clone(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(unavailable)?;
            let heard = consumer.filter_map(move |d| {
                let membership = membership.clone();
                async move {
                    let d = d.ok()?;
                    let hb: Heartbeat = rmp_serde::from_slice(&d.data).ok()?;
                    membership.heard(hb);
                    None::<()>
                }
            });
            Ok::<_, LogError>((Arc::new(conn), ch, heard))
        };
        ctx.spawn(setup.into_actor(self).map(|res, act, ctx| {
            act.connecting = false;
            match res {
                Ok((conn, ch, heard)) => {
                    act.failures = 0;
                    act.link = Some((conn, ch));
                    // Drains the bus queue; it ends when the connection does.
                    ctx.spawn(
                        heard
                            .for_each(|_| async {})
                            .into_actor(act)
                            .map(|_, act, ctx| act.link_down("the bus consumer ended", ctx)),
                    );
                }
                Err(e) => act.link_down(&e.to_string(), ctx),
            }
        }));
    }

    fn link_down(&mut self, why: &str, ctx: &mut Context<Self>) {
        tracing::warn!(error = why, "cluster bus: not connected");
        self.link = None;
        let wait = backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        ctx.run_later(wait, |act, ctx| act.connect(ctx));
    }

    fn beat(&mut self, ctx: &mut Context<Self>) {
        self.version += 1;
        let hb = (self.source)(self.version);
        self.membership.heard(hb.clone());
        let Some((conn, ch)) = &self.link else {
            return;
        };
        if !conn.status().connected() {
            return self.link_down("the bus connection closed", ctx);
        }
        let Ok(body) = rmp_serde::to_vec_named(&hb) else {
            return;
        };
        let ch = ch.clone();
        let exchange = self.exchange();
        ctx.spawn(
            async move {
                ch.basic_publish(
                    exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .map(|_| ())
            }
            .into_actor(self)
            .map(|res, act, ctx| {
                if let Err(e) = res {
                    act.link_down(&e.to_string(), ctx);
                }
            }),
        );
    }
}

impl Actor for Bus {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.connect(ctx);
        self.beat(ctx);
        ctx.run_interval(HEARTBEAT, |act, ctx| act.beat(ctx));
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
