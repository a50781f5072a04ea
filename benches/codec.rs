//! Micro-benchmarks of the wire codecs (`herald::protocol`), both encodings:
//!
//! - `decode/<encoding>/<command>`: `decode_request` of every client command (subscribe, subscribe with
//!   `since`, unsubscribe, publish with 64 B and 1 KiB `data`, presence, history, refresh, ping).
//! - `encode/<encoding>/<frame>`: `encode` of every server frame type (welcome, reply, error, message with
//!   64 B and 1 KiB `data`, join, leave, disconnect), plus `encode_message_data` (the canonical MessagePack
//!   form that publish validation produces and history stores).
//!
//! Throughput is reported in bytes of the encoded frame, so ns/frame and MB/s are both visible.
//!
//! Run: `cargo bench --bench codec` (quick: `cargo bench --bench codec -- --sample-size 10 --warm-up-time 1
//! --measurement-time 1`).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use herald::protocol::{
    decode_request, encode, encode_message_data, results, DecodeLimits, DisconnectBody, Encoding,
    ErrorBody, ErrorCode, MessageBody, Outgoing, PresenceBody, RequestId, ServerFrame, WelcomeBody,
};
use rmpv::Value;
use serde_json::json;

const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::Msgpack];

/// A `data` object of roughly `n` bytes: `{"t": <u64>, "p": "xxxx..."}` (the load tool's shape).
fn data_json(n: usize) -> serde_json::Value {
    json!({"t": 1_764_124_800_000_000_000u64, "p": "x".repeat(n.saturating_sub(30))})
}

fn data_value(n: usize) -> Value {
    Value::Map(vec![
        (Value::from("t"), Value::from(1_764_124_800_000_000_000u64)),
        (
            Value::from("p"),
            Value::from("x".repeat(n.saturating_sub(30))),
        ),
    ])
}

/// Client frames, one per command, as JSON values (turned into bytes per encoding below).
fn client_frames() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "subscribe",
            json!({"v":1,"type":"subscribe","id":1,"channel":"chat:room-42"}),
        ),
        (
            "subscribe_since",
            json!({"v":1,"type":"subscribe","id":2,"channel":"chat:room-42",
                   "since":{"epoch":"01JDQ3W8Z6X7G2N5K9R4T1V0AB","offset":123456}}),
        ),
        (
            "unsubscribe",
            json!({"v":1,"type":"unsubscribe","id":3,"channel":"chat:room-42"}),
        ),
        (
            "publish_64B",
            json!({"v":1,"type":"publish","id":4,"channel":"chat:room-42","data":data_json(64)}),
        ),
        (
            "publish_1KiB",
            json!({"v":1,"type":"publish","id":5,"channel":"chat:room-42","data":data_json(1024),
                   "key":"idem-0001"}),
        ),
        (
            "presence",
            json!({"v":1,"type":"presence","id":"p-6","channel":"chat:room-42"}),
        ),
        (
            "history",
            json!({"v":1,"type":"history","id":7,"channel":"chat:room-42","since":100,"limit":50}),
        ),
        (
            "refresh",
            json!({"v":1,"type":"refresh","id":8,"token":format!("eyJhbGciOiJIUzI1NiJ9.{}.sig", "a".repeat(120))}),
        ),
        ("ping", json!({"v":1,"type":"ping","id":9})),
    ]
}

fn to_bytes(enc: Encoding, v: &serde_json::Value) -> Vec<u8> {
    match enc {
        Encoding::Json => serde_json::to_vec(v).unwrap(),
        Encoding::Msgpack => rmp_serde::to_vec_named(v).unwrap(),
    }
}

fn bench_decode(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    for enc in ENCODINGS {
        let mut g = c.benchmark_group(format!("decode/{}", enc.name()));
        for (name, frame) in client_frames() {
            let bytes = to_bytes(enc, &frame);
            // Sanity: every frame must decode.
            decode_request(&bytes, enc, &limits).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            g.throughput(Throughput::Bytes(bytes.len() as u64));
            g.bench_function(name, |b| {
                b.iter(|| decode_request(black_box(&bytes), enc, &limits).unwrap())
            });
        }
        g.finish();
    }
}

/// Bytes on the wire (WebSocket header included) of an encoded frame.
fn frame_len(o: &Outgoing) -> u64 {
    match o {
        Outgoing::Frame(f) => f.wire().len() as u64,
        Outgoing::Ping | Outgoing::Pong(_) => 0,
    }
}

fn bench_encode(c: &mut Criterion) {
    let id = RequestId::UInt(42);
    let reply_subscribed = results::subscribed(
        "chat:room-42",
        "01JDQ3W8Z6X7G2N5K9R4T1V0AB",
        123456,
        Some((true, 12)),
    );
    let reply_published = results::published(
        "01JDQ3W8Z6X7G2N5K9R4T1V0AC",
        "01JDQ3W8Z6X7G2N5K9R4T1V0AB",
        123457,
    );
    let d64 = data_value(64);
    let d1k = data_value(1024);
    let msg = |data| {
        ServerFrame::Message(MessageBody {
            channel: "chat:room-42",
            id: "01JDQ3W8Z6X7G2N5K9R4T1V0AC",
            epoch: "01JDQ3W8Z6X7G2N5K9R4T1V0AB",
            offset: 123457,
            data,
            from: Some("user-17"),
        })
    };
    let presence = PresenceBody {
        channel: "chat:room-42",
        session: "01JDQ3W8Z6X7G2N5K9R4T1V0AD",
        user: Some("user-17"),
    };
    let frames: Vec<(&str, ServerFrame<'_>)> = vec![
        (
            "welcome",
            ServerFrame::Welcome(WelcomeBody {
                session: "01JDQ3W8Z6X7G2N5K9R4T1V0AD",
                node: "node-1",
                heartbeat_ms: 25_000,
                encoding: "json",
                user: Some("user-17"),
            }),
        ),
        (
            "reply_subscribed",
            ServerFrame::Reply {
                id: &id,
                result: &reply_subscribed,
            },
        ),
        (
            "reply_published",
            ServerFrame::Reply {
                id: &id,
                result: &reply_published,
            },
        ),
        (
            "error",
            ServerFrame::Error(ErrorBody {
                id: Some(&id),
                code: ErrorCode::RateLimited,
                message: "too many messages",
                retry_after_ms: Some(250),
            }),
        ),
        ("message_64B", msg(&d64)),
        ("message_1KiB", msg(&d1k)),
        (
            "join",
            ServerFrame::Join(PresenceBody {
                channel: presence.channel,
                session: presence.session,
                user: presence.user,
            }),
        ),
        ("leave", ServerFrame::Leave(presence)),
        (
            "disconnect",
            ServerFrame::Disconnect(DisconnectBody {
                code: 1001,
                reason: "server shutting down",
                reconnect: true,
            }),
        ),
    ];
    for enc in ENCODINGS {
        let mut g = c.benchmark_group(format!("encode/{}", enc.name()));
        for (name, frame) in &frames {
            let n = frame_len(&encode(enc, frame).unwrap());
            g.throughput(Throughput::Bytes(n));
            g.bench_function(*name, |b| b.iter(|| encode(enc, black_box(frame)).unwrap()));
        }
        g.finish();
    }
    let mut g = c.benchmark_group("encode_message_data");
    for (name, d) in [("64B", &d64), ("1KiB", &d1k)] {
        g.bench_function(name, |b| {
            b.iter(|| encode_message_data(black_box(d)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
