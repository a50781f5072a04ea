//! The bodies of the long-polling transport (`session::polling`): batches of frames in the session's
//! encoding. Part of the wire contract, so it lives with the other codecs.
//!
//! A server batch carries the frames of one poll answer, each the protocol frame a WebSocket would
//! have carried, with the batch's sequence number (`seq`, what the next poll acknowledges), and on
//! the opening answer the session's id. In JSON it is `{"seq":N,"frames":[frame,...]}` with the frames
//! embedded as they are; in MessagePack (`application/msgpack`) it is the map `{seq, frames}` where each
//! frame is a `bin` holding that frame's MessagePack bytes. A client batch (`POST /poll/send`) is a
//! JSON array of frames, or a MessagePack array of `bin`s, one frame each. Frames are validated one by
//! one by the session, exactly as WebSocket frames are; only the envelope is checked here.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;

use super::Encoding;

/// Content type of JSON batches.
pub const JSON: &str = "application/json";
/// Content type of MessagePack batches.
pub const MSGPACK: &str = "application/msgpack";

/// Frames one client batch may hold.
pub const MAX_SEND_FRAMES: usize = 64;

pub fn content_type(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Json => JSON,
        Encoding::Msgpack => MSGPACK,
    }
}

/// Why a client batch was refused (the answer is 400 or 413, with this text).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BatchError {
    #[error("the body is not a {0} array of frames: {1}")]
    Envelope(&'static str, String),
    #[error("a batch holds at most {MAX_SEND_FRAMES} frames, this one {0}")]
    TooManyFrames(usize),
    #[error("a frame of {0} bytes is over limits.max_frame_bytes ({1})")]
    FrameTooBig(usize, usize),
}

/// Encodes a server batch. `session` is set on the answer that opens a session.
pub fn encode(encoding: Encoding, seq: u64, session: Option<&str>, frames: &[Bytes]) -> Bytes {
    let size = frames.iter().map(|f| f.len() + 5).sum::<usize>() + 64;
    let mut out = BytesMut::with_capacity(size);
    match encoding {
        Encoding::Json => {
            out.put_slice(b"{");
            if let Some(s) = session {
                // Session ids are hex: nothing to escape.
                out.put_slice(format!("\"session\":\"{s}\",").as_bytes());
            }
            out.put_slice(format!("\"seq\":{seq},\"frames\":[").as_bytes());
            for (i, f) in frames.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                out.put_slice(f);
            }
            out.put_slice(b"]}");
        }
        Encoding::Msgpack => {
            let mut w = out.writer();
            // Writing to a BytesMut cannot fail.
            let _ = rmp::encode::write_map_len(&mut w, 2 + u32::from(session.is_some()));
            if let Some(s) = session {
                let _ = rmp::encode::write_str(&mut w, "session");
                let _ = rmp::encode::write_str(&mut w, s);
            }
            let _ = rmp::encode::write_str(&mut w, "seq");
            let _ = rmp::encode::write_uint(&mut w, seq);
            let _ = rmp::encode::write_str(&mut w, "frames");
            let _ = rmp::encode::write_array_len(&mut w, frames.len() as u32);
            for f in frames {
                let _ = rmp::encode::write_bin(&mut w, f);
            }
            out = w.into_inner();
        }
    }
    out.freeze()
}

/// Splits a client batch into its frames (each still to be validated by the session).
pub fn decode(encoding: Encoding, body: &[u8], max_frame: usize) -> Result<Vec<Bytes>, BatchError> {
    let frames: Vec<Bytes> = match encoding {
        Encoding::Json => serde_json::from_slice::<Vec<Box<RawValue>>>(body)
            .map_err(|e| BatchError::Envelope("JSON", e.to_string()))?
            .into_iter()
            .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes()))
            .collect(),
        Encoding::Msgpack => rmp_serde::from_slice::<Vec<serde_bytes::ByteBuf>>(body)
            .map_err(|e| BatchError::Envelope("MessagePack", e.to_string()))?
            .into_iter()
            .map(|b| Bytes::from(b.into_vec()))
            .collect(),
    };
    if frames.len() > MAX_SEND_FRAMES {
        return Err(BatchError::TooManyFrames(frames.len()));
    }
    if let Some(big) = frames.iter().find(|f| f.len() > max_frame) {
        return Err(BatchError::FrameTooBig(big.len(), max_frame));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_batches_embed_the_frames_as_they_are() {
        let frames = [
            Bytes::from_static(br#"{"type":"welcome"}"#),
            Bytes::from_static(br#"{"type":"message","data":[1,2]}"#),
        ];
        let b = encode(Encoding::Json, 7, Some("ab12"), &frames);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["session"], "ab12");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["frames"][1]["data"][1], 2);
        let empty: serde_json::Value =
            serde_json::from_slice(&encode(Encoding::Json, 3, None, &[])).unwrap();
        assert_eq!(empty, serde_json::json!({"seq": 3, "frames": []}));
    }

    #[test]
    fn msgpack_batches_carry_each_frame_as_bin() {
        let frame = rmp_serde::to_vec_named(&serde_json::json!({"type": "pong"})).unwrap();
        let b = encode(Encoding::Msgpack, 2, None, &[Bytes::from(frame.clone())]);
        let v: rmpv::Value = rmpv::decode::read_value(&mut &b[..]).unwrap();
        let map: Vec<_> = v.as_map().unwrap().iter().collect();
        assert_eq!(map[0].0.as_str(), Some("seq"));
        assert_eq!(map[0].1.as_u64(), Some(2));
        let frames = map[1].1.as_array().unwrap();
        assert_eq!(frames[0].as_slice(), Some(&frame[..]));
    }

    #[test]
    fn client_batches_split_into_frames_and_bad_envelopes_are_named() {
        let frames = decode(
            Encoding::Json,
            br#"[{"type":"ping","id":1}, {"a" : [1]}]"#,
            100,
        )
        .unwrap();
        assert_eq!(frames[0], Bytes::from_static(br#"{"type":"ping","id":1}"#));
        assert_eq!(frames[1], Bytes::from_static(br#"{"a" : [1]}"#));
        assert!(matches!(
            decode(Encoding::Json, br#"{"type":"ping"}"#, 100),
            Err(BatchError::Envelope("JSON", _))
        ));
        assert!(matches!(
            decode(Encoding::Json, br#"[{"x":"0123456789"}]"#, 10),
            Err(BatchError::FrameTooBig(_, 10))
        ));
        let many = format!("[{}]", vec!["1"; MAX_SEND_FRAMES + 1].join(","));
        assert_eq!(
            decode(Encoding::Json, many.as_bytes(), 100),
            Err(BatchError::TooManyFrames(MAX_SEND_FRAMES + 1))
        );
        let mp = rmp_serde::to_vec(&vec![serde_bytes::ByteBuf::from(vec![0x80u8])]).unwrap();
        assert_eq!(
            decode(Encoding::Msgpack, &mp, 100).unwrap(),
            vec![Bytes::from_static(&[0x80])]
        );
        assert!(matches!(
            decode(Encoding::Msgpack, &[0x93, 1, 2, 3], 100),
            Err(BatchError::Envelope("MessagePack", _))
        ));
    }
}
