//! Bytes to requests: the decoders for both encodings, with depth and shape checks.
//!
//! Both encodings decode into one generic value tree (`rmpv::Value`) with a hard nesting cap, so a deeply
//! nested frame is an error, never a stack overflow. JSON goes through serde_json (whose own recursion
//! limit of 128 is above any depth we accept), MessagePack through rmpv's depth-limited reader, which does not
//! preallocate from untrusted lengths.

use rmpv::Value;

use super::command::{parse, Request};
use super::error::FrameError;
use super::Encoding;

/// Limits applied while decoding a client frame.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Deepest nesting of maps and arrays, counting the frame object itself as 1.
    pub max_depth: usize,
    pub max_channel_len: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_depth: 32,
            max_channel_len: 128,
        }
    }
}

/// Decodes and validates one client frame. Every failure is a [`FrameError`] carrying the request id when
/// it could be read; this function never panics on any input.
pub fn decode_request(
    bytes: &[u8],
    encoding: Encoding,
    limits: &DecodeLimits,
) -> Result<Request, FrameError> {
    let value = match encoding {
        Encoding::Json => decode_json(bytes, limits.max_depth)?,
        Encoding::Msgpack => decode_msgpack(bytes, limits.max_depth)?,
    };
    parse(value, limits)
}

fn decode_json(bytes: &[u8], max_depth: usize) -> Result<Value, FrameError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        let msg = if e.to_string().contains("recursion limit") {
            format!("nesting deeper than {max_depth}")
        } else {
            format!("invalid JSON: {e}")
        };
        FrameError::bad(None, msg)
    })?;
    if depth(&value) > max_depth {
        return Err(FrameError::bad(
            None,
            format!("nesting deeper than {max_depth}"),
        ));
    }
    Ok(value)
}

fn decode_msgpack(bytes: &[u8], max_depth: usize) -> Result<Value, FrameError> {
    let mut rd = bytes;
    // rmpv spends 2 units of its depth budget per container level and up to 3 on a leaf, so give it room
    // for `max_depth` levels and check the real depth below, as for JSON.
    let value =
        rmpv::decode::read_value_with_max_depth(&mut rd, 2 * max_depth + 3).map_err(|e| {
            let msg = match e {
                rmpv::decode::Error::DepthLimitExceeded => {
                    format!("nesting deeper than {max_depth}")
                }
                other => format!("invalid MessagePack: {other}"),
            };
            FrameError::bad(None, msg)
        })?;
    if !rd.is_empty() {
        return Err(FrameError::bad(
            None,
            "trailing bytes after the MessagePack frame",
        ));
    }
    if depth(&value) > max_depth {
        return Err(FrameError::bad(
            None,
            format!("nesting deeper than {max_depth}"),
        ));
    }
    Ok(value)
}

/// Nesting depth of containers (a scalar is 0). Recursion is bounded by the decoder's own limits.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

/// Checks a channel name: 1 to `max_len` bytes of `A-Z a-z 0-9 _ - . : @ / =`.
pub fn validate_channel(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("channel name is empty".into());
    }
    if name.len() > max_len {
        return Err(format!("channel name longer than {max_len} bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-.:@/=".contains(*c)))
    {
        return Err(format!(
            "channel name contains {c:?}; allowed: A-Z a-z 0-9 _ - . : @ / ="
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Command, ErrorCode, RequestId};

    fn json(s: &str) -> Result<Request, FrameError> {
        decode_request(s.as_bytes(), Encoding::Json, &DecodeLimits::default())
    }

    #[test]
    fn subscribe_parses() {
        let r = json(r#"{"v":1,"type":"subscribe","id":7,"channel":"chat:a","since":{"epoch":"e","offset":3}}"#)
            .unwrap();
        assert_eq!(r.id, RequestId::UInt(7));
        assert!(
            matches!(r.command, Command::Subscribe { ref since, .. } if since.as_ref().map(|p| p.offset) == Some(3))
        );
    }

    #[test]
    fn errors_carry_the_id_when_readable() {
        let e = json(r#"{"v":2,"type":"ping","id":"x"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
        assert_eq!(e.id, Some(RequestId::Str("x".into())));
        let e = json(r#"{"v":1,"type":"nope","id":1}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        let e = json(r#"{"v":1,"type":"subscribe","id":1,"channel":"bad name"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = json(r#"[1,2]"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, None));
    }

    #[test]
    fn a_frame_without_type_or_id_gets_one_error_naming_every_missing_field() {
        let both = |v: serde_json::Value| {
            let mp = rmp_serde::to_vec_named(&v).unwrap();
            let from_json = json(&v.to_string()).unwrap_err();
            let from_mp =
                decode_request(&mp, Encoding::Msgpack, &DecodeLimits::default()).unwrap_err();
            assert_eq!(from_json, from_mp, "{v}");
            from_json
        };
        let e = both(serde_json::json!({"cmd": "subscribe", "channel": "x"}));
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, None));
        for field in ["`v`", "`type`", "`id`", "docs/protocol.md"] {
            assert!(e.message.contains(field), "{field}: {}", e.message);
        }
        let e = both(serde_json::json!({"v": 1, "id": 5, "channel": "x"}));
        assert_eq!(
            (e.code, e.id.clone()),
            (ErrorCode::BadRequest, Some(RequestId::UInt(5)))
        );
        assert!(
            e.message.starts_with("missing field `type`:"),
            "{}",
            e.message
        );
        let e = both(serde_json::json!({"type": "ping", "id": "a", "v": null}));
        assert_eq!(e.code, ErrorCode::UnsupportedVersion, "{}", e.message);
        assert_eq!(e.id, Some(RequestId::Str("a".into())));
    }

    #[test]
    fn deep_nesting_is_refused_in_both_encodings() {
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let frame = format!(r#"{{"v":1,"type":"publish","id":1,"channel":"a","data":{deep}}}"#);
        assert_eq!(json(&frame).unwrap_err().code, ErrorCode::BadRequest);
        let mut mp = vec![0x91u8; 100_000];
        mp.push(0xc0);
        let e = decode_request(&mp, Encoding::Msgpack, &DecodeLimits::default()).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
