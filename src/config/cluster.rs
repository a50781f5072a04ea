//! `[cluster]`: whether the node's log is RabbitMQ streams shared with other nodes, and how to reach them.

use serde::{Deserialize, Serialize};

/// Most entries in one AMQP message: an entry's log index is `(stream offset + 1) * 256 + i`.
pub const MAX_BATCH: usize = 256;

/// The cluster section. With `enabled = false` (the default) the node is a single node on its local log
/// and needs no RabbitMQ.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// AMQP URL of RabbitMQ. Keep `heartbeat` a few seconds: the default 60 s takes two minutes to
    /// notice a frozen broker.
    pub amqp_url: String,
    /// Name of the cluster: its streams are `herald.<name>.*`, so several clusters can share a RabbitMQ.
    pub name: String,
    /// Shard streams the channels are spread over (by a stable hash of the channel name). Every node of a
    /// cluster must use the same number.
    pub shards: u32,
    /// Stream retention by age (`x-max-age`), seconds. At least the longest history TTL plus a margin.
    pub max_age_secs: u64,
    /// Stream retention by size (`x-max-length-bytes`), per shard: a disk guard.
    pub max_bytes: u64,
    /// Stream segment size (`x-stream-max-segment-size-bytes`); retention removes whole segments. Only
    /// used when a stream is created.
    pub segment_bytes: u64,
    /// Connecting to RabbitMQ gives up after this long (a frozen broker accepts TCP and never answers).
    pub connect_timeout_ms: u64,
    /// A publish not confirmed by RabbitMQ within this long counts as not written.
    pub confirm_timeout_ms: u64,
    /// Entries proposed within this long are coalesced into one AMQP message per shard.
    pub coalesce_ms: u64,
    /// At most this many entries per AMQP message (at most 256: see docs/architecture.md, "Cluster").
    pub batch_max: usize,
    /// At most about this many bytes of entries per AMQP message.
    pub batch_bytes: usize,
    /// Entries waiting to be published, per node; beyond it a publish gets `unavailable` at once.
    pub max_pending: usize,
    /// How long the admin API waits for the other nodes' answers (scatter-gather); a node that has not
    /// answered by then is named in the reply as not answering.
    pub admin_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5".into(),
            name: "herald".into(),
            shards: 8,
            max_age_secs: 7 * 86_400,
            max_bytes: 20 << 30,
            segment_bytes: 64 << 20,
            connect_timeout_ms: 5_000,
            confirm_timeout_ms: 5_000,
            coalesce_ms: 1,
            batch_max: 64,
            batch_bytes: 256 * 1024,
            max_pending: 10_000,
            admin_timeout_ms: 1_000,
        }
    }
}
