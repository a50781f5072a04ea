//! The wire format: client commands and server frames, in both encodings.
//!
//! Exists so that exactly one place knows the field names of `docs/protocol.md` and how a frame
//! becomes a WebSocket message (`herald.v1.json` text frames, `herald.v1.msgpack` binary frames
//! holding a MessagePack map with the same field names, written with `rmp_serde::to_vec_named`).
//!
//! Channel data is carried as [`rmpv::Value`] in both encodings: it holds every value either
//! encoding can carry (64-bit integers of both signs, binary, maps), so a msgpack connection loses
//! nothing and a JSON connection maps onto it one to one.

use crate::error::{Error, Result};
use rmpv::Value;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Protocol version spoken by this crate.
pub const VERSION: u8 = 1;

/// The wire encoding of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// `herald.v1.json`: one JSON object per text frame.
    #[default]
    Json,
    /// `herald.v1.msgpack`: one MessagePack map per binary frame.
    MsgPack,
}

impl Encoding {
    /// The `Sec-WebSocket-Protocol` name of the encoding.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "herald.v1.json",
            Encoding::MsgPack => "herald.v1.msgpack",
        }
    }

    /// The encoding named by a subprotocol, if known.
    pub fn from_subprotocol(s: &str) -> Option<Self> {
        match s.trim() {
            "herald.v1.json" => Some(Encoding::Json),
            "herald.v1.msgpack" => Some(Encoding::MsgPack),
            _ => None,
        }
    }
}

/// A position in a channel: `{epoch, offset}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Opaque epoch; offsets of different epochs are not comparable.
    pub epoch: String,
    /// Offset of the message in the epoch (0 means before the first message).
    pub offset: u64,
}

/// A client command, without the envelope (`v`, `id`).
/// Field names and meanings are those of `docs/protocol.md`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Command {
    /// `subscribe`, optionally resuming after `since`.
    Subscribe {
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
    },
    /// `unsubscribe`.
    Unsubscribe { channel: String },
    /// `publish` with an idempotency key.
    Publish {
        channel: String,
        data: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// `presence`.
    Presence { channel: String },
    /// `history`.
    History {
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// `ping` (application-level).
    Ping,
}

#[derive(Serialize)]
struct Envelope<'a> {
    v: u8,
    id: u64,
    #[serde(flatten)]
    cmd: &'a Command,
}

/// Encodes a command with request id `id` as one WebSocket message.
pub fn encode(enc: Encoding, id: u64, cmd: &Command) -> Result<WsMessage> {
    let env = Envelope {
        v: VERSION,
        id,
        cmd,
    };
    match enc {
        Encoding::Json => Ok(WsMessage::text(
            serde_json::to_string(&env).map_err(Error::encode)?,
        )),
        Encoding::MsgPack => Ok(WsMessage::binary(
            rmp_serde::to_vec_named(&env).map_err(Error::encode)?,
        )),
    }
}

/// A request id as echoed by the server (we only send unsigned integers).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ReqId {
    /// An unsigned integer id.
    Uint(u64),
    /// A negative integer id.
    Int(i64),
    /// A string id.
    Str(String),
}

impl ReqId {
    /// The id as sent by this crate.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            ReqId::Uint(n) => Some(*n),
            _ => None,
        }
    }
}

/// A channel message as carried by `message` frames and history pages.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MessageFields {
    /// Channel name.
    pub channel: String,
    /// Message id (a ULID), the same on every delivery.
    pub id: String,
    /// Epoch of the channel.
    pub epoch: String,
    /// Offset in the epoch.
    pub offset: u64,
    /// The published value.
    #[serde(default = "nil")]
    pub data: Value,
    /// The publisher's user, if any.
    #[serde(default)]
    pub from: Option<String>,
}

fn nil() -> Value {
    Value::Nil
}

/// A frame sent by the server.
/// Field names and meanings are those of `docs/protocol.md`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// First frame of a connection.
    Welcome {
        session: String,
        #[serde(default)]
        node: Option<String>,
        heartbeat_ms: u64,
        #[serde(default)]
        encoding: Option<String>,
        #[serde(default)]
        user: Option<String>,
    },
    /// Success answer.
    Reply {
        id: ReqId,
        #[serde(default = "nil")]
        result: Value,
    },
    /// Failure answer.
    Error {
        #[serde(default)]
        id: Option<ReqId>,
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
    /// A channel message.
    Message(MessageFields),
    /// A session joined a channel.
    Join {
        channel: String,
        session: String,
        #[serde(default)]
        user: Option<String>,
    },
    /// A session left a channel.
    Leave {
        channel: String,
        session: String,
        #[serde(default)]
        user: Option<String>,
    },
    /// The server is about to close the socket.
    Disconnect {
        code: u16,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        reconnect: bool,
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
    /// A frame type this version does not know (ignored for forward compatibility).
    #[serde(other)]
    Unknown,
}

/// Decodes a data frame of encoding `enc`. Returns `Ok(None)` for frames that carry no protocol
/// payload (ping, pong, close, raw frames).
pub fn decode(enc: Encoding, msg: &WsMessage) -> Result<Option<ServerFrame>> {
    match (enc, msg) {
        (Encoding::Json, WsMessage::Text(t)) => serde_json::from_str(t.as_str())
            .map(Some)
            .map_err(|e| Error::Protocol(format!("bad JSON frame: {e}"))),
        (Encoding::MsgPack, WsMessage::Binary(b)) => rmp_serde::from_slice(b)
            .map(Some)
            .map_err(|e| Error::Protocol(format!("bad MessagePack frame: {e}"))),
        (_, WsMessage::Text(_)) | (_, WsMessage::Binary(_)) => Err(Error::Protocol(
            "frame kind does not match the encoding".into(),
        )),
        _ => Ok(None),
    }
}

/// Reply of `subscribe`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SubscribeReply {
    /// Channel name.
    pub channel: String,
    /// Current epoch of the channel.
    pub epoch: String,
    /// Current head offset.
    pub offset: u64,
    /// Present when `since` was sent.
    #[serde(default)]
    pub recovered: Option<bool>,
    /// Number of replayed messages that follow.
    #[serde(default)]
    pub replayed: Option<u64>,
}

/// Reply of `publish`: where the message was stored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PublishAck {
    /// Message id (ULID).
    pub id: String,
    /// Epoch of the channel.
    pub epoch: String,
    /// Offset of the message.
    pub offset: u64,
}

/// A member of a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    /// Session id.
    pub session: String,
    /// User, `None` for anonymous sessions.
    #[serde(default)]
    pub user: Option<String>,
}

/// Reply of `presence`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Presence {
    /// Channel name.
    pub channel: String,
    /// The subscribed sessions.
    pub members: Vec<Member>,
}

/// Reply of `history`: one page of retained messages, oldest first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryPage {
    /// Channel name.
    pub channel: String,
    /// Epoch of the channel.
    pub epoch: String,
    /// Head offset of the channel.
    pub head: u64,
    /// Oldest retained offset (absent or `null` when nothing is retained).
    #[serde(default)]
    pub oldest: Option<u64>,
    /// The messages of the page.
    pub messages: Vec<MessageFields>,
    /// The `since` of the next page, `None` when the page reached the head.
    #[serde(default)]
    pub next: Option<u64>,
}

/// Converts a reply's `result` into a typed value.
pub fn result_as<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    rmpv::ext::from_value(v).map_err(|e| Error::Protocol(e.to_string()))
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
