//! Layered configuration.
//!
//! herald reads its settings in this order, each layer overriding the one before: built-in defaults,
//! `config/default.toml` (if present in the working directory), the file given with `--config`,
//! `HERALD_<SECTION>__<KEY>` environment variables, then command-line flags. Every struct denies unknown
//! fields, so a typo fails start-up with a message that names the key instead of being silently ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod cluster;
mod error;

pub use cluster::{ClusterConfig, MAX_BATCH};

use error::describe;
pub use error::ConfigError;

/// The whole configuration of a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub session: SessionConfig,
    pub limits: LimitsConfig,
    pub channel: ChannelConfig,
    pub storage: StorageConfig,
    pub history: HistoryConfig,
    pub admin: AdminConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
    /// Per-namespace options. `default` applies to channels without a `:` and to namespaces not listed;
    /// a listed namespace inherits every option it does not set from `default`.
    pub namespaces: BTreeMap<String, NamespaceOverrides>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub allowed_origins: Vec<String>,
    /// Length of the client listener's accept queue (the kernel caps it at `net.core.somaxconn`).
    pub backlog: u32,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Arbiter threads that host channel actors; 0 means one per core.
    pub channel_threads: usize,
    /// Node id reported in `welcome`; empty means a fresh ULID at every start.
    pub node_id: String,
    /// How long shutdown waits for sessions to receive their `disconnect` frame.
    pub shutdown_grace_ms: u64,
    /// Serve `GET /conformance/echo`, an echo endpoint for the Autobahn conformance suite. Never in production.
    pub conformance_echo: bool,
    /// Serve the chat example page at `/` (development; the JS client at `/client/herald.js` is always
    /// served).
    pub examples: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Interval of server WebSocket pings, announced in `welcome`.
    pub heartbeat_ms: u64,
    /// A connection that sends nothing (no pong, no frame) for this long is closed with 4002.
    pub heartbeat_timeout_ms: u64,
    /// Frames a session may have queued for its socket; a full outbox means a slow consumer (close 4001).
    pub outbox_capacity: usize,
    /// Bytes of frames handed to one socket write (`writev`, at most 64 frames).
    pub write_buffer_bytes: usize,
    /// After a close the server started, the longest wait for the client's close frame (reading and
    /// discarding) before the socket is dropped.
    pub close_linger_ms: u64,
    /// Time a client has to send its complete handshake request; slower ones get 408.
    pub handshake_timeout_ms: u64,
    /// Bytes of frames a session may have queued for its socket (a frame is accepted while less than this
    /// is queued); beyond it the connection is a slow consumer (close 4001).
    pub outbox_bytes: usize,
    /// Commands of one session being processed at once (publish, history, presence, subscribe,
    /// unsubscribe); at the cap the session stops reading its socket until one finishes.
    pub max_inflight: usize,
    /// A subscriber behind for longer than this (its oldest message not yet sent is older, counted from
    /// its subscribe at most) is cut with 4001 (it resumes with `since`). Subscribers behind by less catch up from the channel's window or history.
    pub max_lag_ms: u64,
    /// How long a `subscribe` with `since` ahead of what this node has applied (in the channel's epoch)
    /// waits for the node to apply it before it is answered `recovered: false`.
    pub resume_wait_ms: u64,
    /// Long-polling: how long a poll with nothing to return is held before it answers an empty batch.
    /// Keep it below the idle timeout of the proxies in front of the node. Capped at half of
    /// `heartbeat_timeout_ms`, so a client that keeps polling is never taken for a silent one.
    pub poll_wait_ms: u64,
    /// Long-polling: bytes of frames gathered into one poll answer (at least one frame, whatever its
    /// size).
    pub poll_batch_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest WebSocket frame or aggregated message accepted; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Largest encoded `data` of a publish; larger gets `too_large`.
    pub max_publish_bytes: usize,
    /// Deepest nesting of arrays/maps in a client frame.
    pub max_depth: usize,
    pub max_channel_len: usize,
    /// Consecutive bad frames after which the connection is closed with 4000.
    pub max_bad_frames: u32,
    /// Sustained client frames per second per connection (token bucket).
    pub messages_per_second: u32,
    /// Bucket size of the per-connection rate limit.
    pub messages_burst: u32,
    pub max_subscriptions_per_connection: usize,
    /// Active channel actors per node; beyond it subscribing to a new channel gets `unavailable`.
    pub max_channels: usize,
    /// Open connections per node; beyond it handshakes get 503 with `Retry-After`.
    pub max_connections: usize,
    /// Open connections per client IP; beyond it handshakes get 429 with `Retry-After`.
    pub max_connections_per_ip: usize,
    /// Open connections per authenticated user; beyond it handshakes get 429 with `Retry-After`.
    pub max_connections_per_user: usize,
    /// New connections per second per client IP (token bucket, burst of the same size).
    pub connects_per_second_per_ip: u32,
    /// IPv6 clients are counted per network of this prefix length (per-IP limits and connect rate).
    pub ipv6_prefix_len: u8,
    /// Frames refused with `rate_limited` in a row after which the connection is closed with 4007.
    pub max_rate_limited: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// A channel actor with no subscribers and no traffic for this long stops (its history stays on disk).
    pub idle_ms: u64,
    /// Recent messages a channel keeps in memory (shared, encoded once per encoding) for subscribers that
    /// are a little behind; further behind, they read history from disk.
    pub window: usize,
    /// Bytes of message data the in-memory window of one channel may hold.
    pub window_bytes: usize,
    /// `join`/`leave` frames a channel sends per second (token bucket, burst of the same size); beyond it
    /// they are not sent and `herald_join_leave_suppressed_total` counts them.
    pub join_leave_per_second: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Group-commit window: publishes within it share one fsync. 0 flushes as soon as asked.
    pub group_commit_ms: u64,
    /// sled page cache size.
    pub cache_mb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Largest page a `history` command returns.
    pub max_page: usize,
    /// Largest total `data` bytes of one `history` page; a page stops early (with `next`) at this size,
    /// but always holds at least one message.
    pub max_page_bytes: usize,
    /// How long a publish `key` is remembered for idempotency.
    pub idempotency_window_ms: u64,
    /// How often retention (TTL) and expired idempotency keys are swept.
    pub sweep_interval_ms: u64,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for `/api/*` on the admin listener. Empty refuses every `/api/*` request.
    pub token: String,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Allow connections without a token (development only; a warning is logged at start-up).
    pub anonymous: bool,
    /// HS256 secret. Empty disables HS256.
    pub hmac_secret: String,
    /// Path to an RSA public key (PEM) for RS256. Empty disables RS256.
    pub rsa_public_key: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// When set, tokens must carry this `iss`.
    pub issuer: String,
    /// When set, tokens must carry this `aud`.
    pub audience: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: false,
            hmac_secret: String::new(),
            rsa_public_key: String::new(),
            leeway_secs: 5,
            issuer: String::new(),
            audience: String::new(),
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("anonymous", &self.anonymous)
            .field(
                "hmac_secret",
                &if self.hmac_secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("rsa_public_key", &self.rsa_public_key)
            .field("leeway_secs", &self.leeway_secs)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// Effective options of one namespace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamespaceOptions {
    pub presence: bool,
    pub join_leave: bool,
    pub allow_publish: bool,
    /// Messages kept per channel; 0 keeps none (resume then only works when nothing was missed).
    pub history_size: u64,
    /// Age after which messages are trimmed; 0 means no age limit.
    pub history_ttl_secs: u64,
}

/// Options as written in a `[namespaces.<name>]` table; unset ones come from `namespaces.default`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_leave: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_publish: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_ttl_secs: Option<u64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8001)),
            data_dir: PathBuf::from("./data"),
            allowed_origins: Vec::new(),
            backlog: 1024,
            workers: 0,
            channel_threads: 0,
            node_id: String::new(),
            shutdown_grace_ms: 2000,
            conformance_echo: false,
            examples: false,
        }
    }
}

impl SessionConfig {
    /// The poll wait in effect: `poll_wait_ms`, at most half the heartbeat timeout.
    pub fn poll_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.poll_wait_ms.min(self.heartbeat_timeout_ms / 2).max(1),
        )
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            heartbeat_ms: 25_000,
            heartbeat_timeout_ms: 60_000,
            outbox_capacity: 1024,
            write_buffer_bytes: 65_536,
            close_linger_ms: 2_000,
            handshake_timeout_ms: 5_000,
            outbox_bytes: 1 << 20,
            max_inflight: 32,
            max_lag_ms: 30_000,
            resume_wait_ms: 2_000,
            poll_wait_ms: 20_000,
            poll_batch_bytes: 256 << 10,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 65_536,
            max_publish_bytes: 32_768,
            max_depth: 32,
            max_channel_len: 128,
            max_bad_frames: 10,
            messages_per_second: 1000,
            messages_burst: 2000,
            max_subscriptions_per_connection: 256,
            max_channels: 1_000_000,
            max_connections: 100_000,
            max_connections_per_ip: 20_000,
            max_connections_per_user: 100,
            connects_per_second_per_ip: 5_000,
            ipv6_prefix_len: 64,
            max_rate_limited: 100,
        }
    }
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            idle_ms: 30_000,
            window: 1024,
            window_bytes: 4 << 20,
            join_leave_per_second: 20,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            group_commit_ms: 2,
            cache_mb: 64,
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_page: 1000,
            max_page_bytes: 256 * 1024,
            idempotency_window_ms: 600_000,
            sweep_interval_ms: 10_000,
        }
    }
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        NamespaceOptions {
            presence: true,
            join_leave: false,
            allow_publish: true,
            history_size: 1000,
            history_ttl_secs: 86_400,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut namespaces = BTreeMap::new();
        let d = NamespaceOptions::default();
        namespaces.insert(
            DEFAULT_NAMESPACE.to_string(),
            NamespaceOverrides {
                presence: Some(d.presence),
                join_leave: Some(d.join_leave),
                allow_publish: Some(d.allow_publish),
                history_size: Some(d.history_size),
                history_ttl_secs: Some(d.history_ttl_secs),
            },
        );
        Config {
            server: ServerConfig::default(),
            session: SessionConfig::default(),
            limits: LimitsConfig::default(),
            channel: ChannelConfig::default(),
            storage: StorageConfig::default(),
            history: HistoryConfig::default(),
            admin: AdminConfig::default(),
            auth: AuthConfig::default(),
            cluster: ClusterConfig::default(),
            namespaces,
        }
    }
}

/// Name of the namespace that channels without `:` belong to.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

/// Prefix of the environment variables read as configuration.
const ENV_PREFIX: &str = "HERALD_";

/// Deserializes the merged layers, with errors that name keys the way the files write them.
fn extract(fig: Figment) -> Result<Config, ConfigError> {
    fig.extract().map_err(|e| ConfigError::Invalid(describe(e)))
}

impl Config {
    /// Loads every layer. `base_file` is the development defaults file (`config/default.toml`), read only if it
    /// exists.
    pub fn load(base_file: &Path, cli: &CliOverrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if base_file.exists() {
            fig = fig.merge(Toml::file_exact(base_file));
        }
        if let Some(file) = &cli.config_file {
            fig = fig.merge(Toml::file_exact(file));
        }
        fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__"));
        if let Some(v) = cli.listen {
            fig = fig.merge(Serialized::default("server.listen", v));
        }
        if let Some(v) = cli.admin_listen {
            fig = fig.merge(Serialized::default("server.admin_listen", v));
        }
        if let Some(v) = &cli.data_dir {
            fig = fig.merge(Serialized::default("server.data_dir", v));
        }
        let config = extract(fig)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks relations between values that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| {
            Err(ConfigError::Semantic {
                key: key.to_string(),
                reason: reason.to_string(),
            })
        };
        if self.session.heartbeat_ms == 0 {
            return bad("session.heartbeat_ms", "must be greater than 0");
        }
        if self.session.heartbeat_timeout_ms <= self.session.heartbeat_ms {
            return bad(
                "session.heartbeat_timeout_ms",
                "must be greater than session.heartbeat_ms",
            );
        }
        if self.session.close_linger_ms > 60_000 {
            return bad("session.close_linger_ms", "must be at most 60000");
        }
        if self.session.poll_wait_ms == 0 {
            return bad("session.poll_wait_ms", "must be greater than 0");
        }
        if self.session.poll_batch_bytes < 1024 {
            return bad("session.poll_batch_bytes", "must be at least 1024");
        }
        if self.session.outbox_capacity < 16 {
            return bad("session.outbox_capacity", "must be at least 16");
        }
        if !(512..=1 << 20).contains(&self.session.write_buffer_bytes) {
            return bad(
                "session.write_buffer_bytes",
                "must be between 512 and 1048576",
            );
        }
        if self.limits.max_frame_bytes < 1024 {
            return bad("limits.max_frame_bytes", "must be at least 1024");
        }
        if self.limits.max_depth < 2 || self.limits.max_depth > 128 {
            return bad("limits.max_depth", "must be between 2 and 128");
        }
        if self.limits.max_channel_len == 0 || self.limits.max_channel_len > 1024 {
            return bad("limits.max_channel_len", "must be between 1 and 1024");
        }
        if self.limits.connects_per_second_per_ip == 0 {
            return bad(
                "limits.connects_per_second_per_ip",
                "must be greater than 0",
            );
        }
        if self.limits.messages_per_second == 0 || self.limits.messages_burst == 0 {
            return bad(
                "limits.messages_per_second",
                "rate and burst must be greater than 0",
            );
        }
        if !self.auth.anonymous
            && self.auth.hmac_secret.is_empty()
            && self.auth.rsa_public_key.is_empty()
        {
            return bad(
                "auth.anonymous",
                "is false but neither auth.hmac_secret nor auth.rsa_public_key is set: nobody could connect \
                 (set HERALD_AUTH__HMAC_SECRET, or auth.rsa_public_key for RS256)",
            );
        }
        if self.history.max_page == 0 {
            return bad("history.max_page", "must be greater than 0");
        }
        if self.history.max_page_bytes < 1024 {
            return bad("history.max_page_bytes", "must be at least 1024");
        }
        if self.limits.max_publish_bytes > self.limits.max_frame_bytes {
            return bad(
                "limits.max_publish_bytes",
                "must not be larger than limits.max_frame_bytes (a publish travels in one frame)",
            );
        }
        // Ranges that would otherwise overflow a timer or an allocation, or hang the node.
        let ranges: [(&str, u64, u64, u64); 23] = [
            (
                "server.shutdown_grace_ms",
                self.server.shutdown_grace_ms,
                0,
                600_000,
            ),
            (
                "storage.group_commit_ms",
                self.storage.group_commit_ms,
                0,
                10_000,
            ),
            ("storage.cache_mb", self.storage.cache_mb, 1, 1 << 20),
            ("auth.leeway_secs", self.auth.leeway_secs, 0, 3_600),
            ("channel.window", self.channel.window as u64, 1, 1 << 20),
            (
                "channel.window_bytes",
                self.channel.window_bytes as u64,
                1024,
                1 << 30,
            ),
            ("cluster.shards", self.cluster.shards.into(), 1, 1024),
            (
                "cluster.batch_max",
                self.cluster.batch_max as u64,
                1,
                cluster::MAX_BATCH as u64,
            ),
            ("cluster.coalesce_ms", self.cluster.coalesce_ms, 0, 1_000),
            (
                "cluster.connect_timeout_ms",
                self.cluster.connect_timeout_ms,
                100,
                600_000,
            ),
            (
                "cluster.confirm_timeout_ms",
                self.cluster.confirm_timeout_ms,
                100,
                600_000,
            ),
            (
                "cluster.max_pending",
                self.cluster.max_pending as u64,
                1,
                10_000_000,
            ),
            (
                "cluster.admin_timeout_ms",
                self.cluster.admin_timeout_ms,
                50,
                60_000,
            ),
            (
                "session.resume_wait_ms",
                self.session.resume_wait_ms,
                0,
                60_000,
            ),
            (
                "session.max_lag_ms",
                self.session.max_lag_ms,
                100,
                86_400_000,
            ),
            (
                "channel.join_leave_per_second",
                self.channel.join_leave_per_second.into(),
                1,
                1 << 20,
            ),
            (
                "limits.max_channels",
                self.limits.max_channels as u64,
                1,
                u32::MAX.into(),
            ),
            (
                "limits.ipv6_prefix_len",
                self.limits.ipv6_prefix_len.into(),
                1,
                128,
            ),
            (
                "limits.max_rate_limited",
                self.limits.max_rate_limited.into(),
                1,
                u32::MAX.into(),
            ),
            (
                "session.outbox_bytes",
                self.session.outbox_bytes as u64,
                4096,
                1 << 30,
            ),
            (
                "session.max_inflight",
                self.session.max_inflight as u64,
                1,
                10_000,
            ),
            ("channel.idle_ms", self.channel.idle_ms, 1, 86_400_000),
            (
                "history.sweep_interval_ms",
                self.history.sweep_interval_ms,
                10,
                86_400_000,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return bad(key, &format!("{value} is out of range {min}..={max}"));
            }
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name_ok(&self.cluster.name) {
            return bad("cluster.name", "1 to 64 characters of A-Z a-z 0-9 - _");
        }
        for name in self.namespaces.keys() {
            if name.is_empty() || name.contains(':') {
                return bad(&format!("namespaces.{name}"), "bad namespace name");
            }
        }
        Ok(())
    }

    /// Effective options for a namespace: its own table over `namespaces.default` over the built-ins.
    pub fn namespace(&self, name: &str) -> NamespaceOptions {
        let mut out = NamespaceOptions::default();
        let layers = [
            self.namespaces.get(DEFAULT_NAMESPACE),
            self.namespaces
                .get(name)
                .filter(|_| name != DEFAULT_NAMESPACE),
        ];
        for o in layers.into_iter().flatten() {
            out.presence = o.presence.unwrap_or(out.presence);
            out.join_leave = o.join_leave.unwrap_or(out.join_leave);
            out.allow_publish = o.allow_publish.unwrap_or(out.allow_publish);
            out.history_size = o.history_size.unwrap_or(out.history_size);
            out.history_ttl_secs = o.history_ttl_secs.unwrap_or(out.history_ttl_secs);
        }
        out
    }
}

#[cfg(test)]
mod tests;
