//! The `result` objects of `reply` frames, built as generic values so one builder serves both encodings.
//! The `history` result is the exception: it can be large, so it is serialized straight from the stored
//! bytes ([`HistoryResult`]) instead of being built as a value first.

use rmpv::Value;
use serde::ser::{Error as _, SerializeMap};
use serde::{Serialize, Serializer};

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// `{}`: the reply of `unsubscribe` and `ping`.
pub fn empty() -> Value {
    Value::Map(Vec::new())
}

/// Reply of `subscribe`; `resume` is `(recovered, replayed)` when the client sent `since`.
pub fn subscribed(channel: &str, epoch: &str, offset: u64, resume: Option<(bool, u64)>) -> Value {
    let mut e = vec![
        ("channel", Value::from(channel)),
        ("epoch", Value::from(epoch)),
        ("offset", Value::from(offset)),
    ];
    if let Some((recovered, replayed)) = resume {
        e.push(("recovered", Value::from(recovered)));
        e.push(("replayed", Value::from(replayed)));
    }
    map(e)
}

/// Reply of `publish`.
pub fn published(id: &str, epoch: &str, offset: u64) -> Value {
    map(vec![
        ("id", Value::from(id)),
        ("epoch", Value::from(epoch)),
        ("offset", Value::from(offset)),
    ])
}

/// Reply of `presence_count`.
pub fn presence_count(channel: &str, sessions: usize, users: usize) -> Value {
    map(vec![
        ("channel", Value::from(channel)),
        ("sessions", Value::from(sessions as u64)),
        ("users", Value::from(users as u64)),
    ])
}

/// Reply of `presence`: `members` is a page of (session, user); `next` is the `after` of the next page.
pub fn presence(channel: &str, members: &[(String, Option<String>)], next: Option<&str>) -> Value {
    let list = members
        .iter()
        .map(|(s, u)| {
            map(vec![
                ("session", Value::from(s.as_str())),
                ("user", u.as_deref().map(Value::from).unwrap_or(Value::Nil)),
            ])
        })
        .collect();
    map(vec![
        ("channel", Value::from(channel)),
        ("members", Value::Array(list)),
        ("next", next.map(Value::from).unwrap_or(Value::Nil)),
    ])
}

/// Reply of `history`. Its messages are serialized from their stored MessagePack bytes one at a time, so
/// a page is never held decoded or copied as a whole: memory is the stored page plus the encoded frame.
#[derive(Debug, Serialize)]
pub struct HistoryResult<'a> {
    pub channel: &'a str,
    pub epoch: &'a str,
    pub head: u64,
    pub oldest: Option<u64>,
    pub messages: &'a [StoredView<'a>],
    pub next: Option<u64>,
}

/// A stored message as a `history` page carries it (the fields of a `message` frame's body).
#[derive(Debug)]
pub struct StoredView<'a> {
    pub channel: &'a str,
    pub id: &'a str,
    pub epoch: &'a str,
    pub offset: u64,
    pub from: Option<&'a str>,
    /// Canonical MessagePack bytes of the data, as stored.
    pub data: &'a [u8],
}

impl Serialize for StoredView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let data = rmpv::decode::read_value(&mut &self.data[..])
            .map_err(|e| S::Error::custom(format!("stored message {}: {e}", self.offset)))?;
        let mut m = s.serialize_map(Some(if self.from.is_some() { 6 } else { 5 }))?;
        m.serialize_entry("channel", self.channel)?;
        m.serialize_entry("id", self.id)?;
        m.serialize_entry("epoch", self.epoch)?;
        m.serialize_entry("offset", &self.offset)?;
        m.serialize_entry("data", &data)?;
        if let Some(f) = self.from {
            m.serialize_entry("from", f)?;
        }
        m.end()
    }
}

/// Reply of `refresh`: the new expiry (seconds since the Unix epoch).
pub fn refreshed(expires_at: u64) -> Value {
    map(vec![("expires_at", Value::from(expires_at))])
}
