//! The cluster log: RabbitMQ streams, one per shard, shared by every node of a cluster.
//!
//! Exists so several nodes apply one order: every node publishes its entries to the shard stream of the
//! entry's channel and every node consumes every shard, so each node applies the same entries in the same
//! order and computes the same offsets and epochs. The facts and traps behind each choice are in
//! `../shared/cluster.md` (rules 1-10); in short:
//! - A channel lives in shard `stable_hash(name) % shards` (SHA-256, the same in every process).
//! - Streams are `herald.<cluster>.log.<generation>.<shard>`; the generation is agreed through the
//!   metadata stream `herald.<cluster>.meta` (no retention): every node appends a proposal at start and
//!   adopts the first record in stream order. The epoch of a shard's channels is `<generation>.<shard>`.
//! - Proposals are coalesced per shard (`cluster.coalesce_ms`, at most `cluster.batch_max` entries) into
//!   one AMQP message: MessagePack, named fields. Published with confirms and `mandatory`; a nack, a
//!   returned message, a connection error or a confirm timeout answers `unavailable` (not written).
//!   While RabbitMQ is unreachable, proposals fail at once: nothing is buffered across an outage.
//! - Entry `i` of the AMQP message at stream offset `o` has log index `(o + 1) * 256 + i`, which is also
//!   its message's offset in its channel: strictly increasing per channel, with gaps, the same on every
//!   node, below 2^53 while `o < 2^45`.
//! - Consumers start from the stored position *inclusive* (the batch holding the last applied entry) and
//!   skip what was applied; acks are `multiple`; never a nack. A consumer error ends the follow stream
//!   with an error and the applier follows again (a fresh connection, from its stored positions): no
//!   lapin auto-recovery.
//!
//! The bridge is two kinds of actix actors on a thread of their own: the node's [`Publisher`]
//! (`publisher.rs`) and one `ShardConsumer` per shard (`consumer.rs`). This file holds the [`Log`]
//! implementation and what both share (the batch format, stream names, connecting, declaring, confirmed
//! publishing, the generation agreement).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::consumer;
use super::publisher::{Propose, Publisher};
use super::{Committed, Entry, Log, LogError, Position, Proposal};
use crate::config::{ClusterConfig, MAX_BATCH};
use crate::history::Store;

/// Pause before reconnecting after a failure (doubled up to [`MAX_BACKOFF`], with jitter).
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The shard of a channel: stable across processes, machines and versions (not std's `DefaultHasher`).
pub fn shard_of(channel: &str, shards: u32) -> u32 {
    let digest = ring::digest::digest(&ring::digest::SHA256, channel.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_be_bytes(first) % u64::from(shards.max(1))) as u32
}

/// The log index of entry `i` of the AMQP message at stream offset `offset`.
pub fn entry_index(offset: u64, i: usize) -> u64 {
    (offset + 1) * MAX_BATCH as u64 + i as u64
}

/// The stream offset of the AMQP message holding the entry at `index` (`None` before the first).
pub(super) fn batch_offset(index: u64) -> Option<u64> {
    (index / MAX_BATCH as u64).checked_sub(1)
}

/// One AMQP message of a shard stream.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Batch {
    /// The publishing node (for operators reading a stream).
    pub node: String,
    pub entries: Vec<Entry>,
}

/// A record of the metadata stream: a node's proposal for the cluster's generation.
#[derive(Debug, Serialize, Deserialize)]
struct MetaRecord {
    generation: String,
    shards: u32,
    node: String,
}

/// Stream names of a cluster.
#[derive(Debug, Clone)]
pub struct StreamNames {
    pub cluster: String,
}

impl StreamNames {
    pub fn meta(&self) -> String {
        format!("herald.{}.meta", self.cluster)
    }

    pub fn shard(&self, generation: &str, shard: u32) -> String {
        format!("herald.{}.log.{generation}.{shard}", self.cluster)
    }
}

/// See the module docs.
pub struct StreamLog {
    cfg: ClusterConfig,
    /// The node's store: where each shard's applied position, and the id of the entry there, live.
    store: Store,
    names: StreamNames,
    publisher: Addr<Publisher>,
    /// Whether the publisher is connected (proposals fail at once when not).
    connected: Arc<AtomicBool>,
    /// The cluster's generation, once agreed.
    generation: watch::Receiver<Option<String>>,
    /// The thread the publisher and the consumers run on (lapin's I/O too).
    arbiter: actix_rt::ArbiterHandle,
    _owned: actix_rt::Arbiter,
}

impl StreamLog {
    /// Starts the bridge to RabbitMQ on a thread of its own. Must run inside an actix system. Connecting
    /// happens in the background (and again after every failure): until it succeeds, proposals get
    /// `unavailable` and nothing is applied.
    pub fn start(cfg: ClusterConfig, node_id: String, store: Store) -> StreamLog {
        let owned = actix_rt::Arbiter::new();
        let arbiter = owned.handle();
        let (gen_tx, gen_rx) = watch::channel(None);
        let connected = Arc::new(AtomicBool::new(false));
        let names = StreamNames {
            cluster: cfg.name.clone(),
        };
        let publisher = {
            let (cfg, names, connected) = (cfg.clone(), names.clone(), connected.clone());
            Publisher::start_in_arbiter(&arbiter, move |_| {
                Publisher::new(cfg, names, node_id, gen_tx, connected)
            })
        };
        StreamLog {
            cfg,
            store,
            names,
            publisher,
            connected,
            generation: gen_rx,
            arbiter,
            _owned: owned,
        }
    }

    /// Whether proposals can be written now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

impl Log for StreamLog {
    fn shards(&self) -> u32 {
        self.cfg.shards
    }

    fn propose(&self, entry: Entry) -> Proposal {
        let (reply, answer) = oneshot::channel();
        let shard = shard_of(&entry.channel, self.cfg.shards);
        let queued = if self.is_connected() {
            self.publisher
                .try_send(Propose {
                    shard,
                    entry,
                    reply,
                })
                .map_err(|_| LogError::Unavailable("too many entries waiting for RabbitMQ".into()))
        } else {
            Err(LogError::Unavailable("not connected to RabbitMQ".into()))
        };
        Box::pin(async move {
            queued?;
            answer
                .await
                .unwrap_or_else(|_| Err(LogError::Unavailable("the publisher stopped".into())))
        })
    }

    fn follow(&self, after: &[u64]) -> Committed {
        let (tx, mut rx) = mpsc::channel(4096);
        self.arbiter.spawn(consumer::follow(
            self.cfg.clone(),
            self.names.clone(),
            self.store.clone(),
            self.generation.clone(),
            after.to_vec(),
            tx,
        ));
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    fn shard_of(&self, channel: &str) -> u32 {
        shard_of(channel, self.cfg.shards)
    }

    fn is_writable(&self) -> bool {
        self.is_connected()
    }

    fn stop(&self) {
        self.arbiter.stop();
    }

    fn decides_epochs(&self) -> bool {
        true
    }

    fn epoch_for(&self, channel: &str) -> Option<String> {
        let generation = self.generation.borrow().clone()?;
        Some(format!(
            "{generation}.{}",
            shard_of(channel, self.cfg.shards)
        ))
    }

    /// Streams keep entries by their own retention (`cluster.max_age_secs`, `cluster.max_bytes`); the
    /// consumers' positions live in the store, so there is nothing to forget here.
    fn applied(&self, _position: Position) {}
}

/// Connects with a timeout. lapin's automatic recovery stays off (see the module docs).
pub(super) async fn connect(cfg: &ClusterConfig) -> Result<Connection, LogError> {
    let timeout = Duration::from_millis(cfg.connect_timeout_ms);
    match tokio::time::timeout(
        timeout,
        Connection::connect(&cfg.amqp_url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(LogError::Unavailable(format!("RabbitMQ: {e}"))),
        Err(_) => Err(LogError::Unavailable(format!(
            "RabbitMQ did not answer within {timeout:?}"
        ))),
    }
}

/// Runs a link's whole set-up (connect, generation, declares, consumers) within
/// `connect_timeout_ms + 2 x confirm_timeout_ms`: a step RabbitMQ never answers (a stream declare
/// on a broker whose stream coordinator is not up yet can hang) fails the attempt, which is retried
/// with backoff, instead of leaving the link "connecting" forever.
pub(super) async fn set_up_within<T>(
    cfg: &ClusterConfig,
    what: &str,
    setup: impl std::future::Future<Output = Result<T, LogError>>,
) -> Result<T, LogError> {
    let limit = Duration::from_millis(
        cfg.connect_timeout_ms
            .saturating_add(cfg.confirm_timeout_ms.saturating_mul(2)),
    );
    tokio::time::timeout(limit, setup)
        .await
        .unwrap_or_else(|_| {
            Err(LogError::Unavailable(format!(
                "RabbitMQ: {what} did not finish within {limit:?}"
            )))
        })
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("RabbitMQ: {e}"))
}

pub(super) fn stream_args(cfg: &ClusterConfig, retention: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    if retention {
        args.insert(
            "x-max-age".into(),
            AMQPValue::LongString(format!("{}s", cfg.max_age_secs).into()),
        );
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(cfg.max_bytes.min(i64::MAX as u64) as i64),
        );
        args.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(cfg.segment_bytes.min(i64::MAX as u64) as i64),
        );
    }
    args
}

pub(super) async fn declare_stream(
    ch: &Channel,
    name: &str,
    args: FieldTable,
) -> Result<(), LogError> {
    ch.queue_declare(name.into(), QueueDeclareOptions::durable(), args)
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// Publishes `body` to `stream` with `mandatory` and waits for its confirm: `Ok` only for a positive
/// confirm without a returned message.
pub(super) async fn publish_confirmed(
    ch: &Channel,
    stream: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(), LogError> {
    let confirm = ch
        .basic_publish(
            "".into(),
            stream.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .map_err(unavailable)?;
    let confirmation = tokio::time::timeout(timeout, confirm)
        .await
        .map_err(|_| LogError::Unavailable("RabbitMQ did not confirm in time".into()))?
        .map_err(unavailable)?;
    if !confirmation.is_ack() {
        return Err(LogError::Unavailable("RabbitMQ refused the entries".into()));
    }
    if let Some(returned) = confirmation.take_message() {
        return Err(LogError::Unavailable(format!(
            "RabbitMQ returned the entries: {} {}",
            returned.reply_code, returned.reply_text
        )));
    }
    Ok(())
}

/// Agrees on the cluster's generation: appends this node's proposal to the metadata stream and adopts
/// the first record in stream order.
pub(super) async fn agree_generation(
    conn: &Connection,
    cfg: &ClusterConfig,
    names: &StreamNames,
    node: &str,
) -> Result<String, LogError> {
    let ch = conn.create_channel().await.map_err(unavailable)?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    let meta = names.meta();
    declare_stream(&ch, &meta, stream_args(cfg, false)).await?;
    let proposal = MetaRecord {
        generation: ulid::Ulid::new().to_string(),
        shards: cfg.shards,
        node: node.to_string(),
    };
    let body = rmp_serde::to_vec_named(&proposal).map_err(|e| LogError::History(e.to_string()))?;
    let timeout = Duration::from_millis(cfg.confirm_timeout_ms);
    publish_confirmed(&ch, &meta, &body, timeout).await?;
    ch.basic_qos(10, BasicQosOptions::default())
        .await
        .map_err(unavailable)?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(
            meta.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .map_err(unavailable)?;
    let first = tokio::time::timeout(timeout, consumer.next())
        .await
        .map_err(|_| LogError::Unavailable("the metadata stream did not answer".into()))?
        .ok_or_else(|| LogError::Unavailable("the metadata stream ended".into()))?
        .map_err(unavailable)?;
    let record: MetaRecord = rmp_serde::from_slice(&first.data)
        .map_err(|e| LogError::History(format!("metadata record does not decode: {e}")))?;
    let _ = ch.close(200, "generation agreed".into()).await;
    if record.shards != cfg.shards {
        return Err(LogError::History(format!(
            "cluster {} has {} shards, this node is configured with {}",
            cfg.name, record.shards, cfg.shards
        )));
    }
    Ok(record.generation)
}

/// Backoff with jitter: `base` doubled per failure, capped, plus up to half again at random.
pub(super) fn backoff(failures: u32) -> Duration {
    let base = MIN_BACKOFF
        .saturating_mul(1 << failures.min(5))
        .min(MAX_BACKOFF);
    let jitter = (ulid::Ulid::new().random() as u64) % (base.as_millis() as u64 / 2 + 1);
    base + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed values (SHA-256, first 8 bytes big-endian, mod shards; checked with Python's hashlib):
        // a change here moves channels between shards of a running cluster.
        assert_eq!(shard_of("chat:room1", 8), 3);
        assert_eq!(shard_of("room:one", 8), 1);
        assert_eq!(shard_of("a", 8), 2);
        assert_eq!(shard_of("chat:room1", 1024), 555);
        let counts = (0..800).fold([0u32; 8], |mut acc, i| {
            acc[shard_of(&format!("ch{i}"), 8) as usize] += 1;
            acc
        });
        assert!(counts.iter().all(|&c| c > 50), "{counts:?}");
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn indexes_order_batches_and_entries() {
        assert_eq!(batch_offset(0), None);
        assert_eq!(entry_index(0, 0), 256);
        assert_eq!(batch_offset(entry_index(0, 5)), Some(0));
        assert_eq!(batch_offset(entry_index(41, 255)), Some(41));
        assert!(entry_index(1, 0) > entry_index(0, 255));
        assert!(entry_index((1 << 45) - 2, 255) < 1 << 53);
    }
}
