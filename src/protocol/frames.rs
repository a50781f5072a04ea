//! Server frames and their encoding. Every frame gets `v`, `type` and `ts` here, in one place.

use actix_http::ws::{CloseCode as WsCloseCode, CloseReason, OpCode, Parser};
use bytes::{Bytes, BytesMut};
use rmpv::Value;
use serde::Serialize;

use super::command::RequestId;
use super::{now_ms, Encoding, ErrorCode, VERSION};

/// One encoded frame, ready for the socket. Cloning is cheap (shared buffers), so a message encoded once
/// can go to many subscribers.
///
/// Data frames are whole WebSocket frames, header included. Server frames are unmasked, so the bytes on the
/// wire are the same for every connection: a channel frames a message once per encoding and each
/// subscriber's writer hands out the same shared bytes, with no per-connection encoding or copy.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A complete WebSocket text or binary frame.
    Frame(WsFrame),
    /// WebSocket ping (heartbeat).
    Ping,
    /// WebSocket pong answering a client ping, with its payload.
    Pong(Bytes),
}

impl Outgoing {
    /// Size on the wire, in bytes (what the connection's outbox budget counts).
    pub fn wire_len(&self) -> usize {
        match self {
            Outgoing::Frame(f) => f.wire.len(),
            Outgoing::Ping => 2,
            Outgoing::Pong(p) => p.len() + 2,
        }
    }

    /// The bytes on the wire: the shared frame, or a freshly framed ping/pong.
    pub fn into_wire(self) -> Bytes {
        match self {
            Outgoing::Frame(f) => f.wire,
            Outgoing::Ping => WsFrame::new(OpCode::Ping, &[]).wire,
            Outgoing::Pong(p) => WsFrame::new(OpCode::Pong, &p).wire,
        }
    }
}

/// The bytes of a WebSocket close frame: status code and reason, or no payload at all.
pub fn close_frame(reason: Option<(u16, &str)>) -> Bytes {
    let mut wire = BytesMut::new();
    let reason = reason.map(|(code, text)| CloseReason {
        code: WsCloseCode::from(code),
        description: Some(text.to_string()),
    });
    Parser::write_close(&mut wire, reason, false);
    wire.freeze()
}

/// A complete, unmasked WebSocket data frame: header, then payload.
#[derive(Debug, Clone, PartialEq)]
pub struct WsFrame {
    wire: Bytes,
    header: usize,
}

impl WsFrame {
    fn new(op: OpCode, payload: &[u8]) -> WsFrame {
        let mut wire = BytesMut::with_capacity(payload.len() + 10);
        Parser::write_message(&mut wire, payload, op, true, false);
        WsFrame {
            header: wire.len() - payload.len(),
            wire: wire.freeze(),
        }
    }

    /// A text frame (`payload` must be UTF-8; every caller passes JSON or an echoed text message).
    pub fn text(payload: &[u8]) -> WsFrame {
        WsFrame::new(OpCode::Text, payload)
    }

    pub fn binary(payload: &[u8]) -> WsFrame {
        WsFrame::new(OpCode::Binary, payload)
    }

    /// The bytes to write to the socket.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    /// The frame's payload (the encoded server frame).
    pub fn payload(&self) -> &[u8] {
        &self.wire[self.header..]
    }
}

/// A frame could not be encoded (only possible for values that break the cross-encoding rules, which
/// publish validation refuses first).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("JSON encoding failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("MessagePack encoding failed: {0}")]
    Msgpack(#[from] rmp_serde::encode::Error),
}

/// The server frames, each with its body.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Welcome(WelcomeBody<'a>),
    Reply {
        id: &'a RequestId,
        result: &'a Value,
    },
    Error(ErrorBody<'a>),
    Message(MessageBody<'a>),
    Join(PresenceBody<'a>),
    Leave(PresenceBody<'a>),
    Disconnect(DisconnectBody<'a>),
    /// The server ended a subscription (for example a `refresh` to a token that no longer allows it).
    Unsubscribed(UnsubscribedBody<'a>),
    /// The reply of `history`, encoded straight from stored bytes (see [`super::results::HistoryResult`]).
    #[serde(rename = "reply")]
    HistoryReply {
        id: &'a RequestId,
        result: super::results::HistoryResult<'a>,
    },
}

#[derive(Debug, Serialize)]
pub struct UnsubscribedBody<'a> {
    pub channel: &'a str,
    pub reason: &'a str,
}

#[derive(Debug, Serialize)]
pub struct WelcomeBody<'a> {
    pub session: &'a str,
    pub node: &'a str,
    pub heartbeat_ms: u64,
    pub encoding: &'static str,
    pub user: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub id: Option<&'a RequestId>,
    #[serde(serialize_with = "code_str")]
    pub code: ErrorCode,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

fn code_str<S: serde::Serializer>(c: &ErrorCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.as_str())
}

/// A channel message as it appears in `message` frames and in `history` replies.
#[derive(Debug, Serialize)]
pub struct MessageBody<'a> {
    pub channel: &'a str,
    pub id: &'a str,
    pub epoch: &'a str,
    pub offset: u64,
    pub data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct PresenceBody<'a> {
    pub channel: &'a str,
    pub session: &'a str,
    pub user: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct DisconnectBody<'a> {
    pub code: u16,
    pub reason: &'a str,
    pub reconnect: bool,
}

#[derive(Serialize)]
struct Envelope<'a, 'b> {
    v: u64,
    ts: u64,
    #[serde(flatten)]
    frame: &'b ServerFrame<'a>,
}

/// Encodes a server frame for one connection's encoding, stamping `v` and `ts`.
pub fn encode(encoding: Encoding, frame: &ServerFrame<'_>) -> Result<Outgoing, EncodeError> {
    let env = Envelope {
        v: VERSION,
        ts: now_ms(),
        frame,
    };
    Ok(match encoding {
        Encoding::Json => Outgoing::Frame(WsFrame::text(&serde_json::to_vec(&env)?)),
        Encoding::Msgpack => Outgoing::Frame(WsFrame::binary(&rmp_serde::to_vec_named(&env)?)),
    })
}

/// Checks that published `data` can cross encodings (string map keys, no extension types) and returns its
/// canonical MessagePack bytes, the form stored in history. The error text is for a `bad_request`.
pub fn encode_message_data(data: &Value) -> Result<Vec<u8>, String> {
    check_portable(data)?;
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, data).map_err(|e| format!("cannot encode data: {e}"))?;
    Ok(out)
}

fn check_portable(v: &Value) -> Result<(), String> {
    // Iterative, so even a value built outside the decoders cannot overflow the stack.
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Ext(..) => {
                return Err("MessagePack extension types are not allowed in data".into())
            }
            Value::String(s) if s.as_str().is_none() => {
                return Err("strings in data must be valid UTF-8".into())
            }
            Value::Array(items) => stack.extend(items.iter()),
            Value::Map(entries) => {
                for (k, val) in entries {
                    if k.as_str().is_none() {
                        return Err("map keys in data must be strings".into());
                    }
                    stack.push(val);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frame_has_envelope_fields_in_both_encodings() {
        let data = Value::from(vec![(Value::from("k"), Value::Binary(vec![1, 2]))]);
        let frame = ServerFrame::Message(MessageBody {
            channel: "a",
            id: "01",
            epoch: "e",
            offset: 5,
            data: &data,
            from: None,
        });
        let Outgoing::Frame(t) = encode(Encoding::Json, &frame).unwrap() else {
            panic!()
        };
        assert_eq!(t.wire()[0], 0x81, "FIN + text opcode");
        let j: serde_json::Value = serde_json::from_slice(t.payload()).unwrap();
        assert_eq!(j["v"], 1);
        assert_eq!(j["type"], "message");
        assert!(j["ts"].as_u64().unwrap() > 0);
        assert_eq!(j["data"]["k"], serde_json::json!([1, 2]));
        let Outgoing::Frame(b) = encode(Encoding::Msgpack, &frame).unwrap() else {
            panic!()
        };
        assert_eq!(b.wire()[0], 0x82, "FIN + binary opcode");
        let m = rmpv::decode::read_value(&mut b.payload()).unwrap();
        let get = |name: &str| {
            m.as_map()
                .unwrap()
                .iter()
                .find(|(k, _)| k.as_str() == Some(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("type"), Some(Value::from("message")));
        assert_eq!(get("offset"), Some(Value::from(5)));
    }

    #[test]
    fn frames_carry_the_right_header_at_each_length_boundary() {
        // RFC 6455 5.2: 7-bit length up to 125, 16-bit after 126 up to 65535, 64-bit after 127 beyond.
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let f = WsFrame::binary(&payload);
            assert_eq!(f.wire().len(), len + header, "length {len}");
            assert_eq!(f.payload(), &payload[..], "length {len}");
            assert_eq!(f.wire()[0], 0x82);
            assert_eq!(f.wire()[1] & 0x80, 0, "server frames are unmasked");
        }
        let t = WsFrame::text("héllo".as_bytes());
        assert_eq!(t.wire()[0], 0x81);
        assert_eq!(t.payload(), "héllo".as_bytes());
    }

    #[test]
    fn non_portable_data_is_refused() {
        assert!(encode_message_data(&Value::Ext(1, vec![0])).is_err());
        assert!(encode_message_data(&Value::from(vec![(Value::from(1), Value::Nil)])).is_err());
        assert!(encode_message_data(&Value::from("ok")).is_ok());
    }
}
