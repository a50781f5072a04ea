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
//!   skip what was applied; acks are `multiple` every [`ACK_EVERY`] deliveries; never a nack. A consumer
//!   error ends the follow stream with an error and the applier follows again (a fresh connection,
//!   from its stored positions): no lapin auto-recovery.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Committed, CommittedEntry, Entry, Log, LogError, Placement, Position, Proposal};
use crate::config::{ClusterConfig, MAX_BATCH};
use crate::history::Store;

/// Deliveries between two (multiple) acks.
const ACK_EVERY: u64 = 200;
/// Unacknowledged deliveries a consumer may hold (per shard).
const PREFETCH: u16 = 1000;
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
fn batch_offset(index: u64) -> Option<u64> {
    (index / MAX_BATCH as u64).checked_sub(1)
}

/// One AMQP message of a shard stream.
#[derive(Debug, Serialize, Deserialize)]
struct Batch {
    /// The publishing node (for operators reading a stream).
    node: String,
    entries: Vec<Entry>,
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

/// A proposal waiting for its batch to be confirmed.
struct Pending {
    shard: u32,
    entry: Entry,
    reply: oneshot::Sender<Result<(), LogError>>,
}

/// See the module docs.
pub struct StreamLog {
    cfg: ClusterConfig,
    /// The node's store: where each shard's applied position, and the id of the entry there, live.
    store: Store,
    names: StreamNames,
    pending: mpsc::Sender<Pending>,
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
        let (pending_tx, pending_rx) = mpsc::channel(cfg.max_pending.max(1));
        let (gen_tx, gen_rx) = watch::channel(None);
        let connected = Arc::new(AtomicBool::new(false));
        let names = StreamNames {
            cluster: cfg.name.clone(),
        };
        arbiter.spawn(publisher(
            cfg.clone(),
            names.clone(),
            node_id,
            pending_rx,
            gen_tx,
            connected.clone(),
        ));
        StreamLog {
            cfg,
            store,
            names,
            pending: pending_tx,
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
            self.pending
                .try_send(Pending {
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
        self.arbiter.spawn(consume(
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
async fn connect(cfg: &ClusterConfig) -> Result<Connection, LogError> {
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

fn unavailable(e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("RabbitMQ: {e}"))
}

fn stream_args(cfg: &ClusterConfig, retention: bool) -> FieldTable {
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

async fn declare_stream(ch: &Channel, name: &str, args: FieldTable) -> Result<(), LogError> {
    ch.queue_declare(name.into(), QueueDeclareOptions::durable(), args)
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// Publishes `body` to `stream` with `mandatory` and waits for its confirm: `Ok` only for a positive
/// confirm without a returned message.
async fn publish_confirmed(
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
async fn agree_generation(
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
fn backoff(failures: u32) -> Duration {
    let base = MIN_BACKOFF
        .saturating_mul(1 << failures.min(5))
        .min(MAX_BACKOFF);
    let jitter = (ulid::Ulid::new().random() as u64) % (base.as_millis() as u64 / 2 + 1);
    base + Duration::from_millis(jitter)
}

/// The publisher: connects, agrees on the generation, declares the shard streams, then publishes
/// proposals in coalesced, confirmed batches. Reconnects with backoff after any failure; while it is
/// not connected, every waiting proposal is answered `unavailable`.
async fn publisher(
    cfg: ClusterConfig,
    names: StreamNames,
    node: String,
    mut pending: mpsc::Receiver<Pending>,
    generation: watch::Sender<Option<String>>,
    connected: Arc<AtomicBool>,
) {
    let mut failures = 0u32;
    let mut started = false;
    loop {
        let session = publish_session(
            &cfg,
            &names,
            &node,
            &mut pending,
            &generation,
            &connected,
            &mut started,
        );
        let err = match session.await {
            Ok(()) => return, // every proposer is gone: the node stopped
            Err(e) => e,
        };
        connected.store(false, Ordering::Release);
        tracing::warn!(error = %err, "cluster publisher: not connected to RabbitMQ");
        while let Ok(p) = pending.try_recv() {
            let _ = p.reply.send(Err(err.clone()));
        }
        tokio::time::sleep(backoff(failures)).await;
        failures = failures.saturating_add(1);
    }
}

async fn publish_session(
    cfg: &ClusterConfig,
    names: &StreamNames,
    node: &str,
    pending: &mut mpsc::Receiver<Pending>,
    generation: &watch::Sender<Option<String>>,
    connected: &AtomicBool,
    started: &mut bool,
) -> Result<(), LogError> {
    let conn = connect(cfg).await?;
    let gen = agree_generation(&conn, cfg, names, node).await?;
    // When the node starts, it creates the shard streams of the agreed generation if they are missing.
    // Afterwards (reconnects) it only checks they exist: a node never re-creates a stream at runtime
    // (a deleted stream must not come back empty under the same name while others hold positions in it).
    for shard in 0..cfg.shards {
        let name = names.shard(&gen, shard);
        // A throwaway channel each: a failed passive declare closes its channel.
        let ch = conn.create_channel().await.map_err(unavailable)?;
        if *started {
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::durable()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| LogError::Unavailable(format!("shard stream {name}: {e}")))?;
        } else {
            declare_stream(&ch, &name, stream_args(cfg, true)).await?;
        }
        let _ = ch.close(200, "declared".into()).await;
    }
    *started = true;
    let ch = conn.create_channel().await.map_err(unavailable)?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    generation.send_replace(Some(gen.clone()));
    connected.store(true, Ordering::Release);
    tracing::info!(cluster = %cfg.name, generation = %gen, shards = cfg.shards, "cluster publisher connected");
    let timeout = Duration::from_millis(cfg.confirm_timeout_ms);
    let coalesce = Duration::from_millis(cfg.coalesce_ms);
    loop {
        let Some(first) = pending.recv().await else {
            return Ok(());
        };
        // Coalesce: whatever arrives within the tick joins its shard's batch.
        let mut batches: Vec<Vec<Pending>> = (0..cfg.shards).map(|_| Vec::new()).collect();
        let mut count = 1usize;
        let n = batches.len();
        batches[first.shard as usize % n].push(first);
        let deadline = tokio::time::Instant::now() + coalesce;
        while count < cfg.batch_max * cfg.shards as usize {
            match tokio::time::timeout_at(deadline, pending.recv()).await {
                Ok(Some(p)) => {
                    let slot = p.shard as usize % batches.len();
                    batches[slot].push(p);
                    count += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        for (shard, batch) in batches.into_iter().enumerate() {
            for part in split(batch, cfg.batch_max, cfg.batch_bytes) {
                let entries: Vec<Entry> = part.iter().map(|p| p.entry.clone()).collect();
                let body = Batch {
                    node: node.to_string(),
                    entries,
                };
                let written = match rmp_serde::to_vec_named(&body) {
                    Ok(bytes) => {
                        publish_confirmed(&ch, &names.shard(&gen, shard as u32), &bytes, timeout)
                            .await
                    }
                    Err(e) => Err(LogError::History(format!("entries cannot be encoded: {e}"))),
                };
                let failed = written.as_ref().err().cloned();
                for p in part {
                    let _ = p.reply.send(written.clone());
                }
                if let Some(e @ LogError::Unavailable(_)) = failed {
                    return Err(e);
                }
            }
        }
    }
}

/// Splits a shard's proposals into AMQP messages of at most `max` entries and about `max_bytes`.
fn split(batch: Vec<Pending>, max: usize, max_bytes: usize) -> Vec<Vec<Pending>> {
    let mut out: Vec<Vec<Pending>> = Vec::new();
    let mut bytes = 0usize;
    for p in batch {
        let size = match &p.entry.kind {
            super::EntryKind::Publish { data } => data.len() + 128,
            super::EntryKind::Reset => 128,
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

/// Follows every shard from `after` (per shard) and sends committed entries to `tx` until an error
/// (sent as the last item) or until the receiver is gone.
async fn consume(
    cfg: ClusterConfig,
    names: StreamNames,
    store: Store,
    mut generation: watch::Receiver<Option<String>>,
    after: Vec<u64>,
    tx: mpsc::Sender<Result<CommittedEntry, LogError>>,
) {
    let gen = match generation.wait_for(Option::is_some).await {
        Ok(g) => g.clone().unwrap_or_default(),
        Err(_) => return,
    };
    if let Err(e) = consume_shards(&cfg, &names, &store, &gen, &after, &tx).await {
        let _ = tx.send(Err(e)).await;
    }
}

async fn consume_shards(
    cfg: &ClusterConfig,
    names: &StreamNames,
    store: &Store,
    gen: &str,
    after: &[u64],
    tx: &mpsc::Sender<Result<CommittedEntry, LogError>>,
) -> Result<(), LogError> {
    let conn = connect(cfg).await?;
    let mut streams = Vec::new();
    for shard in 0..cfg.shards {
        let ch = conn.create_channel().await.map_err(unavailable)?;
        ch.basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let applied = after.get(shard as usize).copied().unwrap_or(0);
        // Inclusive: the batch holding the last applied entry comes again; what was applied is skipped.
        let start = match batch_offset(applied) {
            Some(o) => AMQPValue::LongLongInt(o.min(i64::MAX as u64) as i64),
            None => AMQPValue::LongString("first".into()),
        };
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), start);
        let consumer = ch
            .basic_consume(
                names.shard(gen, shard).as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(unavailable)?;
        streams.push(consumer.map(move |d| (shard, d)).boxed());
    }
    let epochs: Vec<String> = (0..cfg.shards).map(|s| format!("{gen}.{s}")).collect();
    let mut last = after.to_vec();
    last.resize(cfg.shards as usize, 0);
    let mut unacked = vec![0u64; cfg.shards as usize];
    let mut resumed = vec![false; cfg.shards as usize];
    // Shards whose stream was re-created under this node: nothing more is applied from them.
    let mut stopped = vec![false; cfg.shards as usize];
    let mut all = futures_util::stream::select_all(streams);
    while let Some((shard, delivery)) = all.next().await {
        let delivery = delivery.map_err(unavailable)?;
        let offset = stream_offset(&delivery.properties)
            .ok_or_else(|| LogError::History("a stream delivery without x-stream-offset".into()))?;
        let batch: Batch = rmp_serde::from_slice(&delivery.data)
            .map_err(|e| LogError::History(format!("a stream batch does not decode: {e}")))?;
        let s = shard as usize;
        if !resumed[s] {
            resumed[s] = true;
            stopped[s] = !check_resume(store, shard, last[s], offset, &batch)?;
        }
        if stopped[s] {
            continue;
        }
        for (i, entry) in batch.entries.into_iter().enumerate().take(MAX_BATCH) {
            let index = entry_index(offset, i);
            if index <= last[s] {
                continue;
            }
            last[s] = index;
            let committed = CommittedEntry {
                position: Position::new(shard, index),
                placement: Placement::At {
                    offset: index,
                    epoch: epochs[s].clone(),
                },
                entry,
            };
            if tx.send(Ok(committed)).await.is_err() {
                return Ok(()); // the applier stopped following
            }
        }
        unacked[s] += 1;
        if unacked[s] >= ACK_EVERY {
            unacked[s] = 0;
            delivery
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(unavailable)?;
        }
    }
    // A consumer stream that ends without an error: its stream was deleted.
    Err(LogError::Unavailable(
        "a shard stream ended (deleted?)".into(),
    ))
}

/// Checks the first delivery of a shard after a resume from `stored` (inclusive, see the module docs):
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed values: a change here moves channels between shards of a running cluster.
        assert_eq!(shard_of("chat:room1", 8), shard_of("chat:room1", 8));
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
