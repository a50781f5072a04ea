//! The cluster bus: ephemeral state between nodes (membership, presence, connection counts) and
//! questions every node answers for itself (the admin API's scatter-gather).
//!
//! Ephemeral state does not belong in the streams (replays after a restart and retention would fight
//! with leases), so it travels on a bus: a fanout exchange `herald.<cluster>.bus` with one exclusive,
//! auto-delete queue per node. Frames are MessagePack [`BusFrame`]s. Every frame of one node leaves in
//! the order it was queued (one publishing task at a time), so a receiver sees a node's presence
//! batches, snapshots and heartbeats in the order the node produced them; [`super::presence`] relies on
//! it. Answers to a question go straight to the asker's queue (named in its heartbeat). The [`Bus`]
//! keeps its own link to RabbitMQ (reconnecting with backoff); frames queued while it is down are
//! dropped: heartbeats carry the presence version, so peers notice what they missed and ask for a
//! snapshot.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::membership::{Heartbeat, Membership, HEARTBEAT};
use super::presence::{Changes, ClusterState, Heard, Snapshot};
use super::stream::{backoff, connect, unavailable};
use super::LogError;
use crate::config::ClusterConfig;

/// How often queued presence changes are sent (they are batched in between).
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// How often dead nodes' presence is expired.
pub const EXPIRE_EVERY: Duration = Duration::from_millis(250);
/// A snapshot is asked of one node at most this often.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);

/// Builds this node's heartbeat (load and positions read when it is sent).
pub type HeartbeatSource = Arc<dyn Fn(u64) -> Heartbeat + Send + Sync>;
/// Answers a question of another node (the bodies are the asker's business: the admin API's).
pub type Answerer = Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, Vec<u8>> + Send + Sync>;

/// What travels on the bus.
#[derive(Debug, Serialize, Deserialize)]
pub enum BusFrame {
    Heartbeat(Heartbeat),
    Changes(Changes),
    /// Asks `node` (of `incarnation`) for a full snapshot of its presence and counts.
    SnapshotWanted {
        node: String,
    },
    Snapshot {
        node: String,
        incarnation: String,
        version: u64,
        snapshot: Snapshot,
    },
    /// A question to every node; answers go to the queue `reply_to`.
    Ask {
        id: u64,
        from: String,
        reply_to: String,
        body: Vec<u8>,
    },
    Answer {
        id: u64,
        node: String,
        body: Vec<u8>,
    },
}

/// One node's part of the answer to an [`Ask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAnswer {
    pub node: String,
    /// `None`: the node did not answer in time (or is dead).
    pub body: Option<Vec<u8>>,
}

/// Asks every other node a question; answers within `timeout`, naming every node that did not answer.
#[derive(Message)]
#[rtype(result = "Vec<NodeAnswer>")]
pub struct Ask {
    pub body: Vec<u8>,
    pub timeout: Duration,
}

/// What the bus needs from its node.
pub struct BusHooks {
    pub heartbeat: HeartbeatSource,
    pub membership: Membership,
    pub state: Arc<ClusterState>,
    pub answer: Answerer,
}

struct Link {
    conn: Arc<Connection>,
    channel: Channel,
    queue: String,
    generation: u64,
}

struct Pending {
    waiting: HashSet<String>,
    answers: Vec<NodeAnswer>,
    done: Option<oneshot::Sender<Vec<NodeAnswer>>>,
}

/// The bus member of this node. An actix actor on the node's applier thread.
pub struct Bus {
    cfg: ClusterConfig,
    hooks: BusHooks,
    me: String,
    incarnation: String,
    version: u64,
    link: Option<Link>,
    generation: u64,
    connecting: bool,
    failures: u32,
    /// Frames waiting to be published: (exchange, routing key, body).
    out: VecDeque<(String, String, Vec<u8>)>,
    sending: bool,
    snapshot_due: bool,
    asked: HashMap<String, Instant>,
    next_ask: u64,
    asks: HashMap<u64, Pending>,
}

enum Incoming {
    /// A frame's body, or why the consumer failed.
    Frame(u64, Result<Vec<u8>, String>),
    End(u64),
}

impl Bus {
    pub fn new(cfg: ClusterConfig, hooks: BusHooks) -> Self {
        let hb = (hooks.heartbeat)(0);
        Bus {
            cfg,
            hooks,
            me: hb.node,
            incarnation: hb.incarnation,
            version: 0,
            link: None,
            generation: 0,
            connecting: false,
            failures: 0,
            out: VecDeque::new(),
            sending: false,
            snapshot_due: false,
            asked: HashMap::new(),
            next_ask: 1,
            asks: HashMap::new(),
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
            Ok::<_, LogError>((Arc::new(conn), ch, queue.name().to_string(), consumer))
        };
        ctx.spawn(setup.into_actor(self).map(|res, act, ctx| {
            act.connecting = false;
            match res {
                Ok((conn, channel, queue, consumer)) => {
                    act.failures = 0;
                    act.generation += 1;
                    let generation = act.generation;
                    act.link = Some(Link {
                        conn,
                        channel,
                        queue,
                        generation,
                    });
                    let end = futures_util::stream::once(async move { Incoming::End(generation) });
                    ctx.add_stream(
                        consumer
                            .map(move |d: Result<Delivery, lapin::Error>| {
                                let body = d.map(|d| d.data).map_err(|e| e.to_string());
                                Incoming::Frame(generation, body)
                            })
                            .chain(end),
                    );
                    // Peers learn our queue at once, and ask for our snapshot.
                    act.beat(ctx);
                }
                Err(e) => act.link_down(&e.to_string(), ctx),
            }
        }));
    }

    fn link_down(&mut self, why: &str, ctx: &mut Context<Self>) {
        tracing::warn!(error = why, "cluster bus: not connected");
        self.link = None;
        self.out.clear();
        let wait = backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        ctx.run_later(wait, |act, ctx| act.connect(ctx));
    }

    /// Queues a frame for `key` on `exchange` (the bus exchange for everyone, `""` with a queue name
    /// for one node) and starts publishing.
    fn send(&mut self, exchange: String, key: String, frame: &BusFrame, ctx: &mut Context<Self>) {
        if self.link.is_none() {
            return;
        }
        match rmp_serde::to_vec_named(frame) {
            Ok(body) => self.out.push_back((exchange, key, body)),
            Err(e) => tracing::error!(error = %e, "cluster bus: a frame could not be encoded"),
        }
        self.pump(ctx);
    }

    fn broadcast(&mut self, frame: &BusFrame, ctx: &mut Context<Self>) {
        let exchange = self.exchange();
        self.send(exchange, String::new(), frame, ctx);
    }

    /// Publishes the queued frames in order, one task at a time.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.sending || self.out.is_empty() {
            return;
        }
        let Some(link) = &self.link else {
            self.out.clear();
            return;
        };
        if !link.conn.status().connected() {
            return self.link_down("the bus connection closed", ctx);
        }
        let batch: Vec<_> = self.out.drain(..).collect();
        let channel = link.channel.clone();
        self.sending = true;
        ctx.spawn(
            async move {
                for (exchange, key, body) in batch {
                    channel
                        .basic_publish(
                            exchange.as_str().into(),
                            key.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            BasicProperties::default(),
                        )
                        .await?;
                }
                Ok::<_, lapin::Error>(())
            }
            .into_actor(self)
            .map(|res, act, ctx| {
                act.sending = false;
                match res {
                    Ok(()) => act.pump(ctx),
                    Err(e) => act.link_down(&e.to_string(), ctx),
                }
            }),
        );
    }

    /// Sends queued presence changes (and a snapshot when one was asked for); returns the version
    /// they reach.
    fn flush(&mut self, ctx: &mut Context<Self>) -> u64 {
        let state = self.hooks.state.clone();
        if self.snapshot_due && self.link.is_some() {
            self.snapshot_due = false;
            let (snapshot, version) = state.snapshot();
            let frame = BusFrame::Snapshot {
                node: self.me.clone(),
                incarnation: self.incarnation.clone(),
                version,
                snapshot,
            };
            self.broadcast(&frame, ctx);
            return version;
        }
        let (batch, version) = state.take_pending(&self.me, &self.incarnation);
        if let Some(batch) = batch {
            // Without a link the batch is lost; the next heartbeats tell peers to ask for a snapshot.
            self.broadcast(&BusFrame::Changes(batch), ctx);
        }
        version
    }

    fn beat(&mut self, ctx: &mut Context<Self>) {
        self.version += 1;
        let state_version = self.flush(ctx);
        let mut hb = (self.hooks.heartbeat)(self.version);
        hb.state_version = state_version;
        hb.queue = self
            .link
            .as_ref()
            .map(|l| l.queue.clone())
            .unwrap_or_default();
        self.hooks.membership.heard(hb.clone());
        self.hooks.membership.forget_old();
        self.broadcast(&BusFrame::Heartbeat(hb), ctx);
    }

    /// Drops the presence of nodes declared dead.
    fn expire(&mut self) {
        let state = &self.hooks.state;
        for node in state.remote_nodes() {
            if !self.hooks.membership.is_alive(&node) {
                tracing::info!(node = %node, "cluster bus: node dead, its presence expires");
                state.expire(&node);
            }
        }
    }

    fn want_snapshot(&mut self, node: &str, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if self
            .asked
            .get(node)
            .is_some_and(|t| now.duration_since(*t) < SNAPSHOT_RETRY)
        {
            return;
        }
        self.asked.insert(node.to_string(), now);
        let frame = BusFrame::SnapshotWanted {
            node: node.to_string(),
        };
        self.broadcast(&frame, ctx);
    }

    fn on_frame(&mut self, frame: BusFrame, ctx: &mut Context<Self>) {
        let state = self.hooks.state.clone();
        match frame {
            BusFrame::Heartbeat(hb) if hb.node != self.me => {
                let (node, inc, v) = (hb.node.clone(), hb.incarnation.clone(), hb.state_version);
                self.hooks.membership.heard(hb);
                if state.heard_version(&node, &inc, v) == Heard::NeedSnapshot {
                    self.want_snapshot(&node, ctx);
                }
            }
            BusFrame::Changes(batch) if batch.node != self.me => {
                self.hooks.membership.touch(&batch.node);
                let node = batch.node.clone();
                if state.apply_changes(batch) == Heard::NeedSnapshot {
                    self.want_snapshot(&node, ctx);
                }
            }
            BusFrame::SnapshotWanted { node } if node == self.me => self.snapshot_due = true,
            BusFrame::Snapshot {
                node,
                incarnation,
                version,
                snapshot,
            } if node != self.me => {
                // Snapshots are broadcast: one asked for by another node can reach a node that has not
                // heard this one's heartbeat yet; it asks for its own once it has (else the entries of a
                // node unknown to the membership would expire at once).
                if !self.hooks.membership.is_alive(&node) {
                    return;
                }
                self.hooks.membership.touch(&node);
                self.asked.remove(&node);
                state.apply_snapshot(&node, &incarnation, version, snapshot);
            }
            BusFrame::Ask {
                id,
                from,
                reply_to,
                body,
            } if from != self.me => {
                let answer = (self.hooks.answer)(body);
                ctx.spawn(answer.into_actor(self).map(move |body, act, ctx| {
                    let frame = BusFrame::Answer {
                        id,
                        node: act.me.clone(),
                        body,
                    };
                    act.send(String::new(), reply_to, &frame, ctx);
                }));
            }
            BusFrame::Answer { id, node, body } => {
                if let Some(p) = self.asks.get_mut(&id) {
                    if p.waiting.remove(&node) {
                        p.answers.push(NodeAnswer {
                            node,
                            body: Some(body),
                        });
                    }
                    if p.waiting.is_empty() {
                        self.finish_ask(id);
                    }
                }
            }
            _ => {}
        }
    }

    fn finish_ask(&mut self, id: u64) {
        let Some(mut p) = self.asks.remove(&id) else {
            return;
        };
        for node in p.waiting.drain() {
            p.answers.push(NodeAnswer { node, body: None });
        }
        p.answers.sort_by(|a, b| a.node.cmp(&b.node));
        if let Some(done) = p.done.take() {
            let _ = done.send(p.answers);
        }
    }
}

impl Actor for Bus {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.connect(ctx);
        self.beat(ctx);
        ctx.run_interval(HEARTBEAT, |act, ctx| act.beat(ctx));
        ctx.run_interval(FLUSH_EVERY, |act, ctx| {
            act.flush(ctx);
        });
        ctx.run_interval(EXPIRE_EVERY, |act, _| act.expire());
    }
}

impl StreamHandler<Incoming> for Bus {
    fn handle(&mut self, item: Incoming, ctx: &mut Self::Context) {
        let current = self.link.as_ref().map(|l| l.generation);
        match item {
            Incoming::Frame(g, Ok(data)) if Some(g) == current => {
                match rmp_serde::from_slice::<BusFrame>(&data) {
                    Ok(frame) => self.on_frame(frame, ctx),
                    Err(e) => tracing::warn!(error = %e, "cluster bus: unreadable frame ignored"),
                }
            }
            Incoming::Frame(g, Err(e)) if Some(g) == current => self.link_down(&e, ctx),
            Incoming::End(g) if Some(g) == current => self.link_down("the bus consumer ended", ctx),
            _ => {}
        }
    }

    /// A consumer of an old link ended: nothing to do (the default would stop the actor).
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl Handler<Ask> for Bus {
    type Result = ResponseFuture<Vec<NodeAnswer>>;

    fn handle(&mut self, msg: Ask, ctx: &mut Self::Context) -> Self::Result {
        let (alive, dead) = self.hooks.membership.others(&self.me);
        let mut answers: Vec<NodeAnswer> = dead
            .into_iter()
            .map(|hb| NodeAnswer {
                node: hb.node,
                body: None,
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        let id = self.next_ask;
        self.next_ask += 1;
        let reply_to = self.link.as_ref().map(|l| l.queue.clone());
        match reply_to {
            Some(reply_to) if !alive.is_empty() => {
                self.asks.insert(
                    id,
                    Pending {
                        waiting: alive.into_iter().map(|hb| hb.node).collect(),
                        answers,
                        done: Some(tx),
                    },
                );
                let frame = BusFrame::Ask {
                    id,
                    from: self.me.clone(),
                    reply_to,
                    body: msg.body,
                };
                self.broadcast(&frame, ctx);
                ctx.run_later(msg.timeout, move |act, _| act.finish_ask(id));
            }
            // No link: nobody can be asked; no other node alive: nobody to wait for.
            _ => {
                answers.extend(alive.into_iter().map(|hb| NodeAnswer {
                    node: hb.node,
                    body: None,
                }));
                answers.sort_by(|a, b| a.node.cmp(&b.node));
                let _ = tx.send(answers);
            }
        }
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}
