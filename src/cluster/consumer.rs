//! The consumer bridge actors: one per shard per node, reading the shard stream into the applier.
//!
//! [`follow`] connects (one connection for all shards, one AMQP channel each, prefetch [`PREFETCH`]) and
//! starts a [`ShardConsumer`] per shard from the position the store applied, *inclusive*: the batch
//! holding the last applied entry comes again and its applied entries are skipped. The first delivery
//! is checked ([`check_resume`]). Each delivery's entries go to the applier through a bounded channel;
//! the actor waits while it is full, so a slow applier slows the consumer (and, through prefetch, the
//! broker), never memory. Acks are `multiple`, every [`ACK_EVERY`] deliveries; never a nack. An error
//! ends the follow stream with that error (the applier follows again, from its stored positions, on a
//! new connection); when the applier drops the stream, every consumer of it stops and the connection
//! closes.

use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::Either;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use tokio::sync::{mpsc, watch};

use super::stream::{
    batch_offset, connect, entry_index, set_up_within, unavailable, Batch, StreamNames,
};
use super::{CommittedEntry, LogError, Placement, Position};
use crate::config::{ClusterConfig, MAX_BATCH};
use crate::history::Store;

/// Deliveries between two (multiple) acks.
const ACK_EVERY: u64 = 200;
/// Unacknowledged deliveries a consumer may hold.
const PREFETCH: u16 = 1000;

type Sink = mpsc::Sender<Result<CommittedEntry, LogError>>;

/// Connects and starts one [`ShardConsumer`] per shard, from `after` (per shard). Runs on the cluster
/// arbiter; errors are sent into `tx`.
pub(super) async fn follow(
    cfg: ClusterConfig,
    names: StreamNames,
    store: Store,
    mut generation: watch::Receiver<Option<String>>,
    after: Vec<u64>,
    tx: Sink,
) {
    let gen = match generation.wait_for(Option::is_some).await {
        Ok(g) => g.clone().unwrap_or_default(),
        Err(_) => return,
    };
    let start = start_consumers(&cfg, &names, &store, &gen, &after, &tx);
    if let Err(e) = set_up_within(&cfg, "the consumers' set-up", start).await {
        let _ = tx.send(Err(e)).await;
    }
}

async fn start_consumers(
    cfg: &ClusterConfig,
    names: &StreamNames,
    store: &Store,
    gen: &str,
    after: &[u64],
    tx: &Sink,
) -> Result<(), LogError> {
    let conn = Arc::new(connect(cfg).await?);
    for shard in 0..cfg.shards {
        let ch = conn.create_channel().await.map_err(unavailable)?;
        ch.basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let applied = after.get(shard as usize).copied().unwrap_or(0);
        let start = match batch_offset(applied) {
            Some(o) => AMQPValue::LongLongInt(o.min(i64::MAX as u64) as i64),
            None => AMQPValue::LongString("first".into()),
        };
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), start);
        let deliveries = ch
            .basic_consume(
                names.shard(gen, shard).as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(unavailable)?;
        let consumer = ShardConsumer {
            shard,
            store: store.clone(),
            epoch: format!("{gen}.{shard}"),
            last: applied,
            resumed: false,
            stopped: false,
            unacked: 0,
            tx: tx.clone(),
            _conn: conn.clone(),
        };
        ShardConsumer::create(|ctx| {
            ctx.add_stream(deliveries);
            consumer
        });
    }
    // The connection closes once the applier drops this follow stream (every consumer stops then).
    let closer = conn.clone();
    let tx = tx.clone();
    actix_rt::spawn(async move {
        tx.closed().await;
        let _ = closer.close(200, "follow ended".into()).await;
    });
    Ok(())
}

/// One shard's consumer. See the module docs.
pub(super) struct ShardConsumer {
    shard: u32,
    store: Store,
    epoch: String,
    /// The last index handed to the applier (the stored one at start).
    last: u64,
    resumed: bool,
    /// The stream was re-created under this node: nothing more is applied from it.
    stopped: bool,
    unacked: u64,
    tx: Sink,
    _conn: Arc<Connection>,
}

impl ShardConsumer {
    /// The entries of one delivery that are not applied yet, and whether to ack now.
    fn entries(&mut self, d: &Delivery) -> Result<Vec<CommittedEntry>, LogError> {
        let offset = stream_offset(&d.properties)
            .ok_or_else(|| LogError::History("a stream delivery without x-stream-offset".into()))?;
        let batch: Batch = rmp_serde::from_slice(&d.data)
            .map_err(|e| LogError::History(format!("a stream batch does not decode: {e}")))?;
        if !self.resumed {
            self.resumed = true;
            self.stopped = !check_resume(&self.store, self.shard, self.last, offset, &batch)?;
        }
        if self.stopped {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (i, entry) in batch.entries.into_iter().enumerate().take(MAX_BATCH) {
            let index = entry_index(offset, i);
            if index <= self.last {
                continue;
            }
            self.last = index;
            out.push(CommittedEntry {
                position: Position::new(self.shard, index),
                placement: Placement::At {
                    offset: index,
                    epoch: self.epoch.clone(),
                },
                entry,
            });
        }
        Ok(out)
    }

    fn fail(&mut self, e: LogError, ctx: &mut Context<Self>) {
        tracing::warn!(shard = self.shard, error = %e, "cluster consumer stopped");
        let _ = self.tx.try_send(Err(e));
        ctx.stop();
    }
}

impl Actor for ShardConsumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The applier dropped the follow stream: this consumer is done.
        let tx = self.tx.clone();
        ctx.spawn(
            async move { tx.closed().await }
                .into_actor(self)
                .map(|_, _, ctx| ctx.stop()),
        );
    }
}

impl StreamHandler<lapin::Result<Delivery>> for ShardConsumer {
    fn handle(&mut self, item: lapin::Result<Delivery>, ctx: &mut Self::Context) {
        let delivery = match item {
            Ok(d) => d,
            Err(e) => return self.fail(unavailable(e), ctx),
        };
        let entries = match self.entries(&delivery) {
            Ok(e) => e,
            Err(e) => return self.fail(e, ctx),
        };
        self.unacked += 1;
        let ack = (self.unacked >= ACK_EVERY).then(|| {
            self.unacked = 0;
            delivery.acker.clone()
        });
        let tx = self.tx.clone();
        // Waits (the actor takes no further delivery) while the applier's channel is full.
        let forward = async move {
            for e in entries {
                if tx.send(Ok(e)).await.is_err() {
                    return Either::Left(());
                }
            }
            if let Some(acker) = ack {
                if let Err(e) = acker.ack(BasicAckOptions { multiple: true }).await {
                    return Either::Right(unavailable(e));
                }
            }
            Either::Left(())
        };
        ctx.wait(forward.into_actor(self).map(|res, act, ctx| {
            if let Either::Right(e) = res {
                act.fail(e, ctx);
            }
        }));
    }

    /// A consumer stream that ends without an error: its stream was deleted.
    fn finished(&mut self, ctx: &mut Self::Context) {
        self.fail(
            LogError::Unavailable(format!("shard stream {} ended (deleted?)", self.shard)),
            ctx,
        );
    }
}

/// Checks the first delivery of a shard after a resume from `stored` (inclusive):
/// - at the stored batch, the entry at the stored index must have the stored id: continuity proven;
/// - a different id there: the stream was re-created; `false` stops the shard (an alarm in the log; a new
///   epoch comes only through the metadata stream);
/// - past the stored batch: retention truncated the stream below this node's position; the node records
///   where its history of the shard starts again, and refuses resumes from before it.
fn check_resume(
    store: &Store,
    shard: u32,
    stored: u64,
    offset: u64,
    batch: &Batch,
) -> Result<bool, LogError> {
    let Some(at) = batch_offset(stored) else {
        return Ok(true); // nothing applied yet: any start is a start
    };
    if offset > at {
        let first = entry_index(offset, 0);
        tracing::warn!(shard, stored, first, "cluster: the shard stream was truncated below this node's position; resumes from before {first} are not recoverable here");
        store.record_truncation(shard, first)?;
        return Ok(true);
    }
    if offset < at {
        return Ok(true); // an earlier batch: its entries are skipped as applied
    }
    let expected = store.applied_id(shard)?;
    let found = batch
        .entries
        .get((stored % MAX_BATCH as u64) as usize)
        .map(|e| e.id.as_str());
    match (expected.as_deref(), found) {
        (Some(want), Some(got)) if want == got => Ok(true),
        (None, _) => Ok(true), // applied before ids were kept
        (want, got) => {
            tracing::error!(shard, stored, ?want, ?got, "ALARM cluster: the shard stream was re-created (another entry at this node's position); the shard is stopped on this node");
            Ok(false)
        }
    }
}

fn stream_offset(props: &BasicProperties) -> Option<u64> {
    match props.headers().as_ref()?.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(o) => u64::try_from(*o).ok(),
        AMQPValue::LongInt(o) => u64::try_from(*o).ok(),
        _ => None,
    }
}
