//! Encode/decode tests of both encodings.

use super::*;

fn json_of(msg: &WsMessage) -> serde_json::Value {
    match msg {
        WsMessage::Text(t) => serde_json::from_str(t.as_str()).expect("json"),
        other => panic!("expected text, got {other:?}"),
    }
}

fn msgpack_of(msg: &WsMessage) -> Value {
    match msg {
        WsMessage::Binary(b) => rmpv::decode::read_value(&mut &b[..]).expect("msgpack"),
        other => panic!("expected binary, got {other:?}"),
    }
}

fn map_get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

#[test]
fn subscribe_json_matches_protocol() {
    let cmd = Command::Subscribe {
        channel: "chat:room1".into(),
        since: Some(Position {
            epoch: "E1".into(),
            offset: 30,
        }),
    };
    let v = json_of(&encode(Encoding::Json, 2, &cmd).unwrap());
    assert_eq!(
        v,
        serde_json::json!({"v":1,"type":"subscribe","id":2,"channel":"chat:room1","since":{"epoch":"E1","offset":30}})
    );
    let plain = Command::Subscribe {
        channel: "a".into(),
        since: None,
    };
    let v = json_of(&encode(Encoding::Json, 1, &plain).unwrap());
    assert_eq!(
        v,
        serde_json::json!({"v":1,"type":"subscribe","id":1,"channel":"a"})
    );
}

#[test]
fn publish_and_history_json() {
    let data = rmpv::ext::to_value(serde_json::json!({"text":"hi","n":-3,"big":u64::MAX})).unwrap();
    let cmd = Command::Publish {
        channel: "c".into(),
        data,
        key: Some("k1".into()),
    };
    let v = json_of(&encode(Encoding::Json, 4, &cmd).unwrap());
    assert_eq!(
        v,
        serde_json::json!({"v":1,"type":"publish","id":4,"channel":"c","data":{"text":"hi","n":-3,"big":u64::MAX},"key":"k1"})
    );
    let h = Command::History {
        channel: "c".into(),
        since: Some(30),
        limit: Some(100),
    };
    let v = json_of(&encode(Encoding::Json, 6, &h).unwrap());
    assert_eq!(
        v,
        serde_json::json!({"v":1,"type":"history","id":6,"channel":"c","since":30,"limit":100})
    );
    let p = json_of(&encode(Encoding::Json, 8, &Command::Ping).unwrap());
    assert_eq!(p, serde_json::json!({"v":1,"type":"ping","id":8}));
}

#[test]
fn msgpack_commands_are_named_maps() {
    let data = Value::Map(vec![
        (Value::from("bin"), Value::Binary(vec![0, 1, 255])),
        (Value::from("n"), Value::from(u64::MAX)),
    ]);
    let cmd = Command::Publish {
        channel: "c".into(),
        data: data.clone(),
        key: Some("k".into()),
    };
    let v = msgpack_of(&encode(Encoding::MsgPack, 9, &cmd).unwrap());
    assert_eq!(map_get(&v, "v"), Some(&Value::from(1)));
    assert_eq!(map_get(&v, "type"), Some(&Value::from("publish")));
    assert_eq!(map_get(&v, "id"), Some(&Value::from(9)));
    assert_eq!(map_get(&v, "channel"), Some(&Value::from("c")));
    assert_eq!(map_get(&v, "key"), Some(&Value::from("k")));
    assert_eq!(map_get(&v, "data"), Some(&data));
    let sub = Command::Subscribe {
        channel: "c".into(),
        since: Some(Position {
            epoch: "E".into(),
            offset: 5,
        }),
    };
    let v = msgpack_of(&encode(Encoding::MsgPack, 1, &sub).unwrap());
    let since = map_get(&v, "since").expect("since");
    assert_eq!(map_get(since, "epoch"), Some(&Value::from("E")));
    assert_eq!(map_get(since, "offset"), Some(&Value::from(5)));
}

fn decode_json(s: &str) -> ServerFrame {
    decode(Encoding::Json, &WsMessage::text(s.to_string()))
        .unwrap()
        .unwrap()
}

#[test]
fn decodes_server_frames_json() {
    let w = decode_json(
        r#"{"v":1,"type":"welcome","ts":1,"session":"S","node":"N","heartbeat_ms":25000,"encoding":"json","user":null}"#,
    );
    assert!(
        matches!(w, ServerFrame::Welcome { ref session, heartbeat_ms: 25000, user: None, .. } if session == "S")
    );
    let m = decode_json(
        r#"{"v":1,"type":"message","ts":2,"channel":"chat:room1","id":"01J","epoch":"E","offset":42,"data":{"text":"hi"},"from":"alice"}"#,
    );
    match m {
        ServerFrame::Message(f) => {
            assert_eq!(f.offset, 42);
            assert_eq!(f.from.as_deref(), Some("alice"));
            assert_eq!(map_get(&f.data, "text"), Some(&Value::from("hi")));
        }
        other => panic!("{other:?}"),
    }
    let e = decode_json(
        r#"{"v":1,"type":"error","ts":1,"id":null,"code":"rate_limited","message":"m","retry_after_ms":120}"#,
    );
    assert!(matches!(
        e,
        ServerFrame::Error {
            id: None,
            retry_after_ms: Some(120),
            ..
        }
    ));
    let r = decode_json(
        r#"{"v":1,"type":"reply","ts":1,"id":7,"result":{"id":"M","epoch":"E","offset":3}}"#,
    );
    match r {
        ServerFrame::Reply { id, result } => {
            assert_eq!(id.as_u64(), Some(7));
            let ack: PublishAck = result_as(result).unwrap();
            assert_eq!(ack.offset, 3);
        }
        other => panic!("{other:?}"),
    }
    let d = decode_json(
        r#"{"v":1,"type":"disconnect","ts":4,"code":1001,"reason":"bye","reconnect":true}"#,
    );
    assert!(matches!(
        d,
        ServerFrame::Disconnect {
            code: 1001,
            reconnect: true,
            ..
        }
    ));
    let u = decode_json(r#"{"v":1,"type":"future_thing","ts":4,"x":1}"#);
    assert_eq!(u, ServerFrame::Unknown);
}

#[test]
fn decodes_server_frames_msgpack() {
    #[derive(Serialize)]
    struct Msg<'a> {
        v: u8,
        #[serde(rename = "type")]
        kind: &'a str,
        ts: u64,
        channel: &'a str,
        id: &'a str,
        epoch: &'a str,
        offset: u64,
        data: Value,
    }
    let data = Value::Array(vec![Value::Binary(vec![1, 2]), Value::from(-5i64)]);
    let bytes = rmp_serde::to_vec_named(&Msg {
        v: 1,
        kind: "message",
        ts: 1,
        channel: "c",
        id: "M1",
        epoch: "E",
        offset: 1,
        data: data.clone(),
    })
    .unwrap();
    match decode(Encoding::MsgPack, &WsMessage::binary(bytes)).unwrap() {
        Some(ServerFrame::Message(f)) => {
            assert_eq!(f.data, data);
            assert_eq!(f.from, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_frame_kind_is_an_error() {
    assert!(decode(Encoding::MsgPack, &WsMessage::text("{}")).is_err());
    assert!(decode(Encoding::Json, &WsMessage::binary(vec![0x80])).is_err());
    assert!(decode(Encoding::Json, &WsMessage::text("not json")).is_err());
    assert!(decode(Encoding::Json, &WsMessage::Ping(vec![].into()))
        .unwrap()
        .is_none());
}

#[test]
fn typed_replies() {
    let v = rmpv::ext::to_value(serde_json::json!({
        "channel":"c","epoch":"E","head":41,"oldest":12,
        "messages":[{"channel":"c","id":"M","epoch":"E","offset":31,"data":null}],
        "next":null
    }))
    .unwrap();
    let page: HistoryPage = result_as(v).unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.next, None);
    let v = rmpv::ext::to_value(serde_json::json!({
        "channel":"c","epoch":"E","offset":41,"recovered":false,"replayed":0
    }))
    .unwrap();
    let s: SubscribeReply = result_as(v).unwrap();
    assert_eq!(s.recovered, Some(false));
    let v = rmpv::ext::to_value(serde_json::json!({
        "channel":"c","members":[{"session":"S","user":null}]
    }))
    .unwrap();
    let p: Presence = result_as(v).unwrap();
    assert_eq!(p.members[0].user, None);
}
