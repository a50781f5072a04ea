//! Client commands: one variant per command, parsed from a decoded frame with precise errors.

use rmpv::Value;
use serde::{Serialize, Serializer};

use super::decode::{validate_channel, DecodeLimits};
use super::error::{ErrorCode, FrameError};
use super::VERSION;

/// The `id` a client puts in a command; the answer echoes it unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestId {
    Int(i64),
    UInt(u64),
    Str(String),
}

impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RequestId::Int(i) => s.serialize_i64(*i),
            RequestId::UInt(u) => s.serialize_u64(*u),
            RequestId::Str(t) => s.serialize_str(t),
        }
    }
}

/// A position in a channel: the epoch and the offset of the last message seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// A validated client command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Subscribe {
        channel: String,
        since: Option<Position>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        data: Value,
        key: Option<String>,
    },
    /// A page of the channel's members across the cluster: sessions after `after`, at most `limit`.
    Presence {
        channel: String,
        after: Option<String>,
        limit: Option<u64>,
    },
    /// How many sessions and users are present, without the list.
    PresenceCount {
        channel: String,
    },
    History {
        channel: String,
        since: u64,
        limit: Option<u64>,
    },
    Refresh {
        token: String,
    },
    Ping,
}

impl Command {
    /// The channel the command is about, if any.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Command::Subscribe { channel, .. }
            | Command::Unsubscribe { channel }
            | Command::Publish { channel, .. }
            | Command::Presence { channel, .. }
            | Command::PresenceCount { channel }
            | Command::History { channel, .. } => Some(channel),
            Command::Ping | Command::Refresh { .. } => None,
        }
    }
}

/// A command and the id to answer it with.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: RequestId,
    pub command: Command,
}

/// Largest string id accepted.
const MAX_ID_LEN: usize = 64;
/// Largest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 128;
/// Largest offsets stay below 2^53 so JavaScript clients hold them exactly.
pub const MAX_OFFSET: u64 = (1 << 53) - 1;

/// Fields of a frame, looked up by name.
struct Fields<'a> {
    map: &'a [(Value, Value)],
    id: Option<RequestId>,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v)
            .filter(|v| !v.is_nil())
    }

    fn bad(&self, message: impl Into<String>) -> FrameError {
        FrameError::bad(self.id.clone(), message)
    }

    fn string(&self, name: &str) -> Result<String, FrameError> {
        match self.get(name) {
            Some(Value::String(s)) => s
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| self.bad(format!("`{name}` is not valid UTF-8"))),
            Some(_) => Err(self.bad(format!("`{name}` must be a string"))),
            None => Err(self.bad(format!("missing field `{name}`"))),
        }
    }

    fn opt_u64(&self, name: &str) -> Result<Option<u64>, FrameError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.bad(format!("`{name}` must be a non-negative integer"))),
        }
    }

    fn channel(&self, limits: &DecodeLimits) -> Result<String, FrameError> {
        let channel = self.string("channel")?;
        validate_channel(&channel, limits.max_channel_len).map_err(|m| self.bad(m))?;
        Ok(channel)
    }
}

fn read_id(map: &[(Value, Value)]) -> Result<RequestId, String> {
    let v = map
        .iter()
        .find(|(k, _)| k.as_str() == Some("id"))
        .map(|(_, v)| v);
    match v {
        None | Some(Value::Nil) => Err("missing field `id`".into()),
        Some(Value::String(s)) => match s.as_str() {
            Some(t) if t.len() <= MAX_ID_LEN => Ok(RequestId::Str(t.to_owned())),
            Some(_) => Err(format!("`id` longer than {MAX_ID_LEN} bytes")),
            None => Err("`id` is not valid UTF-8".into()),
        },
        Some(Value::Integer(i)) => {
            if let Some(u) = i.as_u64() {
                Ok(RequestId::UInt(u))
            } else if let Some(s) = i.as_i64() {
                Ok(RequestId::Int(s))
            } else {
                Err("`id` out of range".into())
            }
        }
        Some(_) => Err("`id` must be a string or an integer".into()),
    }
}

/// The fields of every client frame, in the order the docs list them.
const ENVELOPE: [&str; 3] = ["v", "type", "id"];

/// The one error for a frame that lacks `type` or `id`: every missing envelope field at once, and where
/// the frame's shape is described.
fn missing_envelope(missing: &[&str]) -> String {
    let names: Vec<String> = missing.iter().map(|n| format!("`{n}`")).collect();
    let list = match names.split_last() {
        Some((last, [])) => format!("field {last}"),
        Some((last, rest)) => format!("fields {} and {last}", rest.join(", ")),
        None => String::new(),
    };
    format!(
        "missing {list}: every client frame carries `v` (1), `type` (the command) and `id` (a string \
         or integer echoed in the answer), e.g. {{\"v\":1,\"type\":\"subscribe\",\"id\":1,\"channel\":\"chat:a\"}}; \
         see docs/protocol.md (Envelope)"
    )
}

/// Turns a decoded frame into a request. The order of checks is part of the contract: a frame without
/// `type` or `id` gets one `bad_request` naming every missing envelope field (`v` too); then an
/// unreadable id yields `id: null`, then the version (a missing `v` is `unsupported_version`), then the
/// type, then the fields.
pub(super) fn parse(frame: Value, limits: &DecodeLimits) -> Result<Request, FrameError> {
    let Value::Map(map) = frame else {
        return Err(FrameError::bad(None, "frame must be an object"));
    };
    let present = |name: &str| {
        map.iter()
            .any(|(k, v)| k.as_str() == Some(name) && !v.is_nil())
    };
    if !(present("type") && present("id")) {
        let missing: Vec<&str> = ENVELOPE.into_iter().filter(|n| !present(n)).collect();
        return Err(FrameError::bad(
            read_id(&map).ok(),
            missing_envelope(&missing),
        ));
    }
    let id = read_id(&map).map_err(|m| FrameError::bad(None, m))?;
    let f = Fields {
        map: &map,
        id: Some(id.clone()),
    };
    match f.get("v").and_then(Value::as_u64) {
        Some(VERSION) => {}
        _ => {
            return Err(FrameError::new(
                f.id.clone(),
                ErrorCode::UnsupportedVersion,
                format!("`v` must be {VERSION}"),
            ))
        }
    }
    let kind = f.string("type")?;
    let command = match kind.as_str() {
        "subscribe" => Command::Subscribe {
            channel: f.channel(limits)?,
            since: parse_since(&f)?,
        },
        "unsubscribe" => Command::Unsubscribe {
            channel: f.channel(limits)?,
        },
        "publish" => {
            let channel = f.channel(limits)?;
            let data = f
                .map
                .iter()
                .find(|(k, _)| k.as_str() == Some("data"))
                .map(|(_, v)| v.clone())
                .ok_or_else(|| f.bad("missing field `data`"))?;
            let key = match f.get("key") {
                None => None,
                Some(_) => {
                    let k = f.string("key")?;
                    if k.is_empty() || k.len() > MAX_KEY_LEN {
                        return Err(f.bad(format!("`key` must be 1 to {MAX_KEY_LEN} bytes")));
                    }
                    Some(k)
                }
            };
            Command::Publish { channel, data, key }
        }
        "presence" => Command::Presence {
            channel: f.channel(limits)?,
            after: match f.get("after") {
                None => None,
                Some(_) => Some(f.string("after")?),
            },
            limit: f.opt_u64("limit")?,
        },
        "presence_count" => Command::PresenceCount {
            channel: f.channel(limits)?,
        },
        "history" => Command::History {
            channel: f.channel(limits)?,
            since: f.opt_u64("since")?.unwrap_or(0),
            limit: f.opt_u64("limit")?,
        },
        "ping" => Command::Ping,
        "refresh" => Command::Refresh {
            token: f.string("token")?,
        },
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(FrameError::new(
                f.id.clone(),
                ErrorCode::UnknownType,
                format!("unknown type `{shown}`"),
            ));
        }
    };
    Ok(Request { id, command })
}

fn parse_since(f: &Fields<'_>) -> Result<Option<Position>, FrameError> {
    let Some(since) = f.get("since") else {
        return Ok(None);
    };
    let Value::Map(entries) = since else {
        return Err(f.bad("`since` must be an object {epoch, offset}"));
    };
    let inner = Fields {
        map: entries,
        id: f.id.clone(),
    };
    let epoch = inner.string("epoch")?;
    let offset = inner
        .opt_u64("offset")?
        .ok_or_else(|| inner.bad("missing field `offset` in `since`"))?;
    if offset > MAX_OFFSET {
        return Err(inner.bad("`since.offset` out of range"));
    }
    Ok(Some(Position { epoch, offset }))
}
