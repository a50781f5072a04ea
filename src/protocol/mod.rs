//! The wire protocol, version 1: the only module that knows how frames look on the socket.
//!
//! It turns bytes from a client into validated [`Request`]s (or a [`FrameError`] that names the problem and
//! the request id, if one could be read), and turns server frames into bytes for either encoding. It knows
//! nothing about actors, sockets or storage, so the codecs can be tested, fuzzed and benchmarked alone.
//! `docs/protocol.md` is the human-readable contract; keep the two in step.

pub mod batch;
mod close;
mod command;
mod decode;
mod error;
mod frames;
pub mod results;
pub mod ws;

pub use close::CloseCode;
pub use command::{Command, Position, Request, RequestId};
pub use decode::{decode_request, validate_channel, DecodeLimits};
pub use error::{ErrorCode, FrameError};
pub use frames::{
    close_frame, encode, encode_message_data, DisconnectBody, EncodeError, ErrorBody, MessageBody,
    Outgoing, PresenceBody, ServerFrame, UnsubscribedBody, WelcomeBody, WsFrame,
};

use std::time::{SystemTime, UNIX_EPOCH};

/// The protocol version every frame carries in `v`.
pub const VERSION: u64 = 1;

/// Subprotocol name of the JSON encoding.
pub const SUBPROTOCOL_JSON: &str = "herald.v1.json";
/// Subprotocol name of the MessagePack encoding.
pub const SUBPROTOCOL_MSGPACK: &str = "herald.v1.msgpack";

/// Wire encoding of one connection, chosen by subprotocol at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Text frames, one JSON object each.
    Json,
    /// Binary frames, one MessagePack map each.
    Msgpack,
}

impl Encoding {
    /// The name used in `welcome.encoding`.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
        }
    }

    /// The encoding a subprotocol name selects, if it is one of ours.
    pub fn from_subprotocol(name: &str) -> Option<Encoding> {
        match name {
            SUBPROTOCOL_JSON => Some(Encoding::Json),
            SUBPROTOCOL_MSGPACK => Some(Encoding::Msgpack),
            _ => None,
        }
    }
}

/// Milliseconds since the Unix epoch, the unit of every `ts`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
