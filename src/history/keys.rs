//! On-disk layout: key builders and value codecs.
//!
//! Exists so the byte layout lives in one place, is documented, and every decode of bytes read from
//! disk is checked (a short or malformed value is [`HistoryError::Corrupt`], never a panic).
//!
//! Trees (all in one sled `Db`):
//! - `messages`: `channel ++ 0x00 ++ offset (u64 BE)` -> [`encode_message`]. Big-endian offsets make a
//!   channel's messages one contiguous, ordered key range.
//! - `meta`: `channel` -> [`Meta`] (epoch, head). Keyed by the bare name, so listing channels in name
//!   order with a prefix and a cursor is a plain range scan.
//! - `idem`: `channel ++ 0x00 ++ key` -> [`IdemEntry`]. `key` is the publisher-scoped key built by
//!   [`scoped_idem_key`], so two publishers never share a key.
//! - `idem_exp`: `expires_at_ms (u64 BE) ++ channel ++ 0x00 ++ key` -> empty. Expiry index, so the
//!   store-wide sweep only visits expired entries.
//! - `cursors`: `name` -> u64 BE.
//!
//! Values start with a format byte ([`V1`]) so the layout can evolve.

use super::error::HistoryError;

/// Format byte at the start of every value (except cursors, which are a bare u64).
pub(crate) const V1: u8 = 1;
/// Format byte of idempotency entries that carry the digest of the published data.
pub(crate) const V2: u8 = 2;

/// The key an idempotency entry is stored under: the publisher's identity, length-prefixed so no
/// publisher/key pair can be mistaken for another, then the client's key.
pub fn scoped_idem_key(publisher: &str, key: &str) -> String {
    format!("{}:{publisher}{key}", publisher.len())
}

/// SHA-256 of published data: a key reused with other data is a conflict, not a retry.
pub fn data_digest(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Key of the store-wide format marker in the default tree.
pub(crate) const FORMAT_KEY: &[u8] = b"herald.history.format";
pub(crate) const FORMAT_VALUE: &[u8] = b"1";

/// Checks that a channel name can be used inside keys.
pub(crate) fn check_channel(channel: &str) -> Result<(), HistoryError> {
    if channel.is_empty() {
        return Err(HistoryError::InvalidChannel {
            channel: channel.to_owned(),
            why: "empty",
        });
    }
    if channel.as_bytes().contains(&0) {
        return Err(HistoryError::InvalidChannel {
            channel: channel.to_owned(),
            why: "contains 0x00",
        });
    }
    Ok(())
}

/// `channel ++ 0x00`: the prefix of a channel's messages and idempotency keys.
pub(crate) fn channel_prefix(channel: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(channel.len() + 1);
    k.extend_from_slice(channel.as_bytes());
    k.push(0);
    k
}

pub(crate) fn message_key(channel: &str, offset: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(channel.len() + 9);
    k.extend_from_slice(channel.as_bytes());
    k.push(0);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// Offset part of a message key (the key must start with `prefix`).
pub(crate) fn message_key_offset(key: &[u8], prefix_len: usize) -> Result<u64, HistoryError> {
    let tail = key
        .get(prefix_len..)
        .ok_or_else(|| HistoryError::corrupt("message key shorter than its prefix"))?;
    let arr: [u8; 8] = tail.try_into().map_err(|_| {
        HistoryError::corrupt(format!("message key with {} offset bytes", tail.len()))
    })?;
    Ok(u64::from_be_bytes(arr))
}

pub(crate) fn idem_key(channel: &str, key: &str) -> Vec<u8> {
    let mut k = channel_prefix(channel);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn idem_exp_key(expires_at_ms: u64, idem_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + idem_key.len());
    k.extend_from_slice(&expires_at_ms.to_be_bytes());
    k.extend_from_slice(idem_key);
    k
}

/// Splits an `idem_exp` key into (expires_at_ms, idem key).
pub(crate) fn split_idem_exp_key(k: &[u8]) -> Result<(u64, &[u8]), HistoryError> {
    if k.len() < 8 {
        return Err(HistoryError::corrupt(
            "idempotency expiry key shorter than 8 bytes",
        ));
    }
    let (ts, rest) = k.split_at(8);
    let mut arr = [0u8; 8];
    arr.copy_from_slice(ts);
    Ok((u64::from_be_bytes(arr), rest))
}

pub(crate) fn encode_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub(crate) fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, HistoryError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| HistoryError::corrupt(format!("{what}: {} bytes, expected 8", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

/// Bounds-checked reader over a value.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'a str,
}

impl<'a> Reader<'a> {
    /// A reader over a value whose format byte is `V1..=newest`; returns the byte too.
    fn versioned(buf: &'a [u8], what: &'a str, newest: u8) -> Result<(Self, u8), HistoryError> {
        let mut r = Reader { buf, what };
        let v = r.u8()?;
        if !(V1..=newest).contains(&v) {
            return Err(HistoryError::corrupt(format!(
                "{what}: unknown format byte {v}"
            )));
        }
        Ok((r, v))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], HistoryError> {
        if self.buf.len() < n {
            return Err(HistoryError::corrupt(format!(
                "{}: truncated value",
                self.what
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, HistoryError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, HistoryError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, HistoryError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn string(&mut self) -> Result<String, HistoryError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        self.utf8(b)
    }

    fn utf8(&self, b: &[u8]) -> Result<String, HistoryError> {
        String::from_utf8(b.to_vec())
            .map_err(|_| HistoryError::corrupt(format!("{}: invalid UTF-8", self.what)))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    // Strings stored here (ids, user names, epochs) are far below 4 GiB.
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Channel metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub epoch: String,
    pub head: u64,
    /// Messages written in this epoch (the `seq` of the last one). `None` for an epoch begun before
    /// messages were numbered (format V1): its messages carry no `seq` and are counted by scanning.
    pub count: Option<u64>,
}

impl Meta {
    /// The meta of an epoch that has no message yet.
    pub fn fresh(epoch: String) -> Meta {
        Meta {
            epoch,
            head: 0,
            count: Some(0),
        }
    }
}

/// `[V2][head u64][count u64][epoch utf8 ...rest]`; V1 lacks the count.
pub(crate) fn encode_meta(m: &Meta) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + m.epoch.len());
    out.push(if m.count.is_some() { V2 } else { V1 });
    out.extend_from_slice(&m.head.to_be_bytes());
    if let Some(c) = m.count {
        out.extend_from_slice(&c.to_be_bytes());
    }
    out.extend_from_slice(m.epoch.as_bytes());
    out
}

pub(crate) fn decode_meta(b: &[u8]) -> Result<Meta, HistoryError> {
    let (mut r, v) = Reader::versioned(b, "channel meta", V2)?;
    let head = r.u64()?;
    let count = if v == V2 { Some(r.u64()?) } else { None };
    let rest = r.rest();
    let epoch = r.utf8(rest)?;
    Ok(Meta { epoch, head, count })
}

/// Message value without the offset (the offset is in the key).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MessageValue {
    pub id: String,
    pub ts_ms: u64,
    pub from: Option<String>,
    pub data: Vec<u8>,
    /// The message's number in its epoch (1, 2, 3, ... however its offsets step); `None` in format V1.
    pub seq: Option<u64>,
}

/// `[V2][ts_ms u64][seq u64][id: u32 len + utf8][from: 0 | 1 + u32 len + utf8][data ...rest]`; V1 lacks
/// the seq.
pub(crate) fn encode_message(
    id: &str,
    ts_ms: u64,
    seq: Option<u64>,
    from: Option<&str>,
    data: &[u8],
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(1 + 16 + 4 + id.len() + 5 + from.map_or(0, str::len) + data.len());
    out.push(if seq.is_some() { V2 } else { V1 });
    out.extend_from_slice(&ts_ms.to_be_bytes());
    if let Some(s) = seq {
        out.extend_from_slice(&s.to_be_bytes());
    }
    put_string(&mut out, id);
    match from {
        None => out.push(0),
        Some(f) => {
            out.push(1);
            put_string(&mut out, f);
        }
    }
    out.extend_from_slice(data);
    out
}

pub(crate) fn decode_message(b: &[u8]) -> Result<MessageValue, HistoryError> {
    let (mut r, v) = Reader::versioned(b, "message", V2)?;
    let ts_ms = r.u64()?;
    let seq = if v == V2 { Some(r.u64()?) } else { None };
    let id = r.string()?;
    let from = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        x => {
            return Err(HistoryError::corrupt(format!(
                "message: bad `from` tag {x}"
            )))
        }
    };
    let data = r.rest().to_vec();
    Ok(MessageValue {
        id,
        ts_ms,
        from,
        data,
        seq,
    })
}

/// Reads only the timestamp of a message value (used by age trimming).
pub(crate) fn message_ts(b: &[u8]) -> Result<u64, HistoryError> {
    let (mut r, _) = Reader::versioned(b, "message", V2)?;
    r.u64()
}

/// Reads only the seq of a message value (`None` in format V1).
pub(crate) fn message_seq(b: &[u8]) -> Result<Option<u64>, HistoryError> {
    let (mut r, v) = Reader::versioned(b, "message", V2)?;
    r.u64()?;
    if v == V2 {
        Ok(Some(r.u64()?))
    } else {
        Ok(None)
    }
}

/// Idempotency entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdemEntry {
    pub id: String,
    pub epoch: String,
    pub offset: u64,
    pub expires_at_ms: u64,
    /// SHA-256 of the data; `None` for entries written before digests were kept (format V1).
    pub digest: Option<[u8; 32]>,
}

/// `[V2][offset u64][expires_at_ms u64][id: u32 len + utf8][digest 32][epoch ...rest]`; V1 lacks the
/// digest.
pub(crate) fn encode_idem(e: &IdemEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 16 + 4 + e.id.len() + 32 + e.epoch.len());
    out.push(if e.digest.is_some() { V2 } else { V1 });
    out.extend_from_slice(&e.offset.to_be_bytes());
    out.extend_from_slice(&e.expires_at_ms.to_be_bytes());
    put_string(&mut out, &e.id);
    if let Some(d) = &e.digest {
        out.extend_from_slice(d);
    }
    out.extend_from_slice(e.epoch.as_bytes());
    out
}

pub(crate) fn decode_idem(b: &[u8]) -> Result<IdemEntry, HistoryError> {
    let (mut r, version) = Reader::versioned(b, "idempotency entry", V2)?;
    let offset = r.u64()?;
    let expires_at_ms = r.u64()?;
    let id = r.string()?;
    let digest = if version == V2 {
        let mut d = [0u8; 32];
        d.copy_from_slice(r.take(32)?);
        Some(d)
    } else {
        None
    };
    let rest = r.rest();
    let epoch = r.utf8(rest)?;
    Ok(IdemEntry {
        id,
        epoch,
        offset,
        expires_at_ms,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_round_trip_and_reject_garbage() {
        for count in [Some(3), None] {
            let m = Meta {
                epoch: "E".into(),
                head: 7,
                count,
            };
            assert_eq!(decode_meta(&encode_meta(&m)).unwrap(), m);
        }
        for seq in [Some(4), None] {
            let v = encode_message("id", 5, seq, Some("al"), b"\x81\xa1x\x01");
            let d = decode_message(&v).unwrap();
            assert_eq!(
                (d.id.as_str(), d.ts_ms, d.from.as_deref(), d.seq),
                ("id", 5, Some("al"), seq)
            );
            assert_eq!(d.data, b"\x81\xa1x\x01");
            assert_eq!(message_ts(&v).unwrap(), 5);
            assert_eq!(message_seq(&v).unwrap(), seq);
        }
        let e = IdemEntry {
            id: "i".into(),
            epoch: "E".into(),
            offset: 3,
            expires_at_ms: 9,
            digest: None,
        };
        assert_eq!(decode_idem(&encode_idem(&e)).unwrap(), e);
        let with_digest = IdemEntry {
            digest: Some(data_digest(b"data")),
            ..e.clone()
        };
        assert_eq!(
            decode_idem(&encode_idem(&with_digest)).unwrap(),
            with_digest
        );
        assert_ne!(
            scoped_idem_key("ab", "c"),
            scoped_idem_key("a", "bc"),
            "publisher and key cannot run into each other"
        );
        for bad in [
            &b""[..],
            b"\x02",
            b"\x01\x00",
            b"\x01\x00\x00\x00\x00\x00\x00\x00\x01\xff",
        ] {
            assert!(matches!(
                decode_message(bad),
                Err(HistoryError::Corrupt { .. })
            ));
            assert!(matches!(
                decode_idem(bad),
                Err(HistoryError::Corrupt { .. })
            ));
        }
        assert!(matches!(
            decode_meta(b"\x01\x00"),
            Err(HistoryError::Corrupt { .. })
        ));
        assert!(decode_u64(b"abc", "cursor").is_err());
        assert!(message_key_offset(b"a\0\x01", 2).is_err());
        assert_eq!(message_key_offset(&message_key("a", 9), 2).unwrap(), 9);
    }
}
