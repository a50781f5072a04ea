//! The `result` objects of `reply` frames, built as generic values so one builder serves both encodings.

use rmpv::Value;

use super::frames::MessageBody;

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

/// Reply of `presence`: `members` is a list of (session, user).
pub fn presence(channel: &str, members: &[(String, Option<String>)]) -> Value {
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
    ])
}

/// Reply of `history`.
pub fn history(
    channel: &str,
    epoch: &str,
    head: u64,
    oldest: Option<u64>,
    messages: &[MessageBody<'_>],
    next: Option<u64>,
) -> Value {
    let list = messages
        .iter()
        .map(|m| {
            let mut e = vec![
                ("channel", Value::from(m.channel)),
                ("id", Value::from(m.id)),
                ("epoch", Value::from(m.epoch)),
                ("offset", Value::from(m.offset)),
                ("data", m.data.clone()),
            ];
            if let Some(f) = m.from {
                e.push(("from", Value::from(f)));
            }
            map(e)
        })
        .collect();
    let opt = |o: Option<u64>| o.map(Value::from).unwrap_or(Value::Nil);
    map(vec![
        ("channel", Value::from(channel)),
        ("epoch", Value::from(epoch)),
        ("head", Value::from(head)),
        ("oldest", opt(oldest)),
        ("messages", Value::Array(list)),
        ("next", opt(next)),
    ])
}

/// Reply of `refresh`: the new expiry (seconds since the Unix epoch).
pub fn refreshed(expires_at: u64) -> Value {
    map(vec![("expires_at", Value::from(expires_at))])
}
