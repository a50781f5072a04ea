//! The publisher bridge actor: one per node, the only writer of this node's entries to the shard streams.
//!
//! It keeps the node's link to RabbitMQ (connect with a timeout, agree on the generation, make sure the
//! shard streams exist, confirms on), coalesces the proposals it receives per shard for
//! `cluster.coalesce_ms`, and publishes each shard's batch as one AMQP message with `mandatory` and a
//! confirm. One round of batches is in flight at a time; proposals arriving meanwhile wait for the next
//! round (bounded by the mailbox, `cluster.max_pending`). Every proposal of a batch is answered when its
//! confirm is known: a positive confirm without a returned message is `Ok`, anything else `unavailable`
//! (not written). While the link is down, proposals are answered `unavailable` at once, and the link is
//! re-established with backoff and jitter; nothing is buffered across an outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{oneshot, watch};

use super::stream::{
    agree_generation, backoff, connect, declare_stream, publish_confirmed, set_up_within,
    stream_args, unavailable, Batch, StreamNames,
};
use super::{Entry, EntryKind, LogError};
use crate::config::{ClusterConfig, MAX_BATCH};

/// How often the link is checked while idle (a broker that went away is noticed without a publish).
const LINK_CHECK: Duration = Duration::from_secs(1);

/// A proposal for the publisher.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Propose {
    pub shard: u32,
    pub entry: Entry,
    pub reply: oneshot::Sender<Result<(), LogError>>,
}

/// The link to RabbitMQ.
enum Link {
    Down,
    Connecting,
    Up {
        conn: Arc<Connection>,
        ch: Channel,
        generation: String,
    },
}

/// See the module docs.
pub(super) struct Publisher {
    cfg: ClusterConfig,
    names: StreamNames,
    node: String,
    /// Published for the consumers (and `Log::epoch_for`) once agreed.
    generation: watch::Sender<Option<String>>,
    /// Read by `StreamLog::propose` to refuse at once while the link is down.
    connected: Arc<AtomicBool>,
    link: Link,
    /// Proposals waiting for the next round, per shard.
    queued: Vec<Vec<Propose>>,
    /// A round of batches is being published.
    flushing: bool,
    flush_scheduled: bool,
    failures: u32,
    /// The shard streams were created (at the first connect): later connects only check them.
    created: bool,
}

impl Publisher {
    pub fn new(
        cfg: ClusterConfig,
        names: StreamNames,
        node: String,
        generation: watch::Sender<Option<String>>,
        connected: Arc<AtomicBool>,
    ) -> Self {
        let shards = cfg.shards.max(1) as usize;
        Publisher {
            cfg,
            names,
            node,
            generation,
            connected,
            link: Link::Down,
            queued: (0..shards).map(|_| Vec::new()).collect(),
            flushing: false,
            flush_scheduled: false,
            failures: 0,
            created: false,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.link = Link::Connecting;
        let (cfg, names, node, created) = (
            self.cfg.clone(),
            self.names.clone(),
            self.node.clone(),
            self.created,
        );
        let setup = async move {
            set_up_within(
                &cfg,
                "the publisher's set-up",
                open_link(&cfg, &names, &node, created),
            )
            .await
        };
        ctx.spawn(setup.into_actor(self).map(|res, act, ctx| match res {
            Ok((conn, ch, generation)) => {
                tracing::info!(cluster = %act.cfg.name, %generation, shards = act.cfg.shards, "cluster publisher connected");
                act.generation.send_replace(Some(generation.clone()));
                act.link = Link::Up {
                    conn: Arc::new(conn),
                    ch,
                    generation,
                };
                act.created = true;
                act.failures = 0;
                act.connected.store(true, Ordering::Release);
                act.schedule_flush(ctx);
            }
            Err(e) => act.link_down(e, ctx),
        }));
    }

    /// The link failed: every waiting proposal is answered, and a reconnect is scheduled.
    fn link_down(&mut self, err: LogError, ctx: &mut Context<Self>) {
        if matches!(self.link, Link::Down) {
            return;
        }
        tracing::warn!(error = %err, "cluster publisher: not connected to RabbitMQ");
        self.connected.store(false, Ordering::Release);
        self.link = Link::Down;
        for p in self.queued.iter_mut().flat_map(std::mem::take) {
            let _ = p.reply.send(Err(err.clone()));
        }
        let wait = backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        ctx.run_later(wait, |act, ctx| act.connect(ctx));
    }

    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.flush_scheduled || self.queued.iter().all(Vec::is_empty) {
            return;
        }
        self.flush_scheduled = true;
        ctx.run_later(Duration::from_millis(self.cfg.coalesce_ms), |act, ctx| {
            act.flush_scheduled = false;
            act.flush(ctx);
        });
    }

    /// Publishes one round: each shard's waiting proposals as AMQP messages of at most `batch_max`
    /// entries and about `batch_bytes`.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let Link::Up { ch, generation, .. } = &self.link else {
            return;
        };
        if self.flushing {
            return;
        }
        let mut round = Vec::new();
        for (shard, waiting) in self.queued.iter_mut().enumerate() {
            let stream = self.names.shard(generation, shard as u32);
            for part in split(
                std::mem::take(waiting),
                self.cfg.batch_max,
                self.cfg.batch_bytes,
            ) {
                round.push((stream.clone(), part));
            }
        }
        if round.is_empty() {
            return;
        }
        self.flushing = true;
        let ch = ch.clone();
        let node = self.node.clone();
        let timeout = Duration::from_millis(self.cfg.confirm_timeout_ms);
        let publish = async move {
            let mut failed = None;
            for (stream, part) in round {
                let written = match &failed {
                    Some(e) => Err(Clone::clone(e)),
                    None => publish_part(&ch, &stream, &node, &part, timeout).await,
                };
                if let Err(e @ LogError::Unavailable(_)) = &written {
                    failed.get_or_insert_with(|| e.clone());
                }
                for p in part {
                    let _ = p.reply.send(written.clone());
                }
            }
            failed
        };
        ctx.spawn(publish.into_actor(self).map(|failed, act, ctx| {
            act.flushing = false;
            match failed {
                Some(e) => act.link_down(e, ctx),
                None => act.schedule_flush(ctx),
            }
        }));
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cfg.max_pending.max(1));
        self.connect(ctx);
        ctx.run_interval(LINK_CHECK, |act, ctx| {
            if let Link::Up { conn, .. } = &act.link {
                if !conn.status().connected() {
                    act.link_down(
                        LogError::Unavailable("the connection to RabbitMQ closed".into()),
                        ctx,
                    );
                }
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.connected.store(false, Ordering::Release);
    }
}

impl Handler<Propose> for Publisher {
    type Result = ();

    fn handle(&mut self, p: Propose, ctx: &mut Self::Context) {
        if !matches!(self.link, Link::Up { .. }) {
            let _ = p.reply.send(Err(LogError::Unavailable(
                "not connected to RabbitMQ".into(),
            )));
            return;
        }
        let slot = p.shard as usize % self.queued.len();
        self.queued[slot].push(p);
        self.schedule_flush(ctx);
    }
}

/// Connects, agrees on the generation and makes sure the shard streams exist: created when `created` is
/// false (the node's first connect), only checked (passive declare) afterwards, so a node never
/// re-creates a deleted stream at runtime.
async fn open_link(
    cfg: &ClusterConfig,
    names: &StreamNames,
    node: &str,
    created: bool,
) -> Result<(Connection, Channel, String), LogError> {
    let conn = connect(cfg).await?;
    let generation = agree_generation(&conn, cfg, names, node).await?;
    for shard in 0..cfg.shards {
        let name = names.shard(&generation, shard);
        // A throwaway channel each: a failed passive declare closes its channel.
        let ch = conn.create_channel().await.map_err(unavailable)?;
        if created {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::durable()
            };
            ch.queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await
                .map_err(|e| LogError::Unavailable(format!("shard stream {name}: {e}")))?;
        } else {
            declare_stream(&ch, &name, stream_args(cfg, true)).await?;
        }
        let _ = ch.close(200, "declared".into()).await;
    }
    let ch = conn.create_channel().await.map_err(unavailable)?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    Ok((conn, ch, generation))
}

async fn publish_part(
    ch: &Channel,
    stream: &str,
    node: &str,
    part: &[Propose],
    timeout: Duration,
) -> Result<(), LogError> {
    let body = Batch {
        node: node.to_string(),
        entries: part.iter().map(|p| p.entry.clone()).collect(),
    };
    let bytes = rmp_serde::to_vec_named(&body)
        .map_err(|e| LogError::History(format!("entries cannot be encoded: {e}")))?;
    publish_confirmed(ch, stream, &bytes, timeout).await
}

/// Splits a shard's proposals into AMQP messages of at most `max` entries and about `max_bytes`.
fn split(batch: Vec<Propose>, max: usize, max_bytes: usize) -> Vec<Vec<Propose>> {
    let mut out: Vec<Vec<Propose>> = Vec::new();
    let mut bytes = 0usize;
    for p in batch {
        let size = match &p.entry.kind {
            EntryKind::Publish { data } => data.len() + 128,
            EntryKind::Reset => 128,
        };
        let start_new = match out.last() {
            None => true,
            Some(cur) => cur.len() >= max.min(MAX_BATCH) || bytes + size > max_bytes,
        };
        if start_new {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(cur) = out.last_mut() {
            cur.push(p);
        }
    }
    out
}
