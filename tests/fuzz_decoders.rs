//! Property tests (fuzzing) of the client frame decoders, JSON and MessagePack.
//!
//! Every input, arbitrary bytes or generated frame-like trees, must decode to a request or to a
//! `bad_request` / `unknown_type` / `unsupported_version` error, never panic, abort or hang. The same frame
//! must decode the same way in both encodings, and nesting is refused exactly beyond `max_depth`.
//!
//! Cases per property: `PROPTEST_CASES` (default 512). A long run for the record:
//! `PROPTEST_CASES=200000 cargo test --release --test fuzz_decoders -- --nocapture`; each property prints
//! how many inputs it ran.

use std::sync::atomic::{AtomicU64, Ordering};

use herald::protocol::{decode_request, DecodeLimits, Encoding, ErrorCode, FrameError, Request};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value as Json;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

/// Runs `test` on `cases()` inputs of `strategy` and reports the count.
fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let count = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |v| {
        count.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    eprintln!(
        "fuzz {name}: {} executions (including shrinking), {}",
        count.load(Ordering::Relaxed),
        if result.is_ok() {
            "0 failures"
        } else {
            "FAILED"
        }
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

fn check_outcome(r: &Result<Request, FrameError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(
            matches!(
                e.code,
                ErrorCode::BadRequest | ErrorCode::UnknownType | ErrorCode::UnsupportedVersion
            ),
            "decoder returned {:?}",
            e.code
        );
        prop_assert!(!e.message.is_empty());
        // Without a readable id, only bad_request is possible (the id is checked first).
        if e.id.is_none() {
            prop_assert_eq!(e.code, ErrorCode::BadRequest);
        }
    }
    Ok(())
}

fn both(bytes: &[u8]) -> Result<(), TestCaseError> {
    let limits = DecodeLimits::default();
    check_outcome(&decode_request(bytes, Encoding::Json, &limits))?;
    check_outcome(&decode_request(bytes, Encoding::Msgpack, &limits))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Arbitrary bytes
// ---------------------------------------------------------------------------------------------------------

#[test]
fn arbitrary_bytes_never_panic() {
    run(
        "arbitrary bytes",
        proptest::collection::vec(any::<u8>(), 0..512),
        |b| both(&b),
    );
}

/// Bytes biased towards MessagePack and JSON syntax: type markers with huge lengths, brackets, quotes.
fn syntax_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        // msgpack markers followed by (often huge) lengths
        (
            prop::sample::select(vec![
                0xc4u8, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf,
                0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xcf, 0xd3, 0xca, 0xcb,
            ]),
            any::<[u8; 4]>()
        )
            .prop_map(|(m, l)| {
                let mut v = vec![m];
                v.extend_from_slice(&l);
                v
            }),
        Just(vec![0xffu8, 0xff, 0xff, 0xff]),
        prop::sample::select(vec![
            0x80u8, 0x81, 0x8f, 0x90, 0x91, 0x9f, 0xa0, 0xa3, 0xc0, 0xc2, 0xc3
        ])
        .prop_map(|b| vec![b]),
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            "\"v\"",
            "\"type\"",
            "\"id\"",
            "1",
            "-1",
            "1e999",
            "18446744073709551616",
            "-9223372036854775809",
            "null",
            "true",
            "\\u0000",
            "\\ud800",
            "\"subscribe\"",
            "\"publish\"",
            "\"channel\"",
            "\"data\"",
            "\"since\"",
            " ",
            "0.5",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ];
    proptest::collection::vec(token, 0..64).prop_map(|ts| ts.concat())
}

#[test]
fn syntax_biased_bytes_never_panic() {
    run("syntax-biased bytes", syntax_bytes(), |b| both(&b));
}

#[test]
fn huge_declared_lengths_are_refused_without_allocating() {
    // Each declares ~4 GiB (or 4 G elements) and provides nothing.
    for marker in [0xc6u8, 0xc9, 0xdb, 0xdd, 0xdf] {
        let mut b = vec![0x81, 0xa1, b'x', marker, 0xff, 0xff, 0xff, 0xff];
        let e = decode_request(&b, Encoding::Msgpack, &DecodeLimits::default()).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        b.truncate(3);
        b.extend([0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]);
        let e = decode_request(&b, Encoding::Msgpack, &DecodeLimits::default()).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
    // Deep nesting far beyond the limit, both encodings.
    let mut mp = vec![0x91u8; 1_000_000];
    mp.push(0xc0);
    assert_eq!(
        decode_request(&mp, Encoding::Msgpack, &DecodeLimits::default())
            .unwrap_err()
            .code,
        ErrorCode::BadRequest
    );
    let js = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
    assert_eq!(
        decode_request(js.as_bytes(), Encoding::Json, &DecodeLimits::default())
            .unwrap_err()
            .code,
        ErrorCode::BadRequest
    );
    let js = "{\"a\":".repeat(200_000);
    assert_eq!(
        decode_request(js.as_bytes(), Encoding::Json, &DecodeLimits::default())
            .unwrap_err()
            .code,
        ErrorCode::BadRequest
    );
}

// ---------------------------------------------------------------------------------------------------------
// Structured generation: frame-like trees
// ---------------------------------------------------------------------------------------------------------

const FIELDS: &[&str] = &[
    "v", "type", "id", "channel", "data", "since", "epoch", "offset", "limit", "key", "token",
];
const TYPES: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "history",
    "ping",
    "refresh",
    "Ping",
    "",
    "teleport",
];

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(String::from),
        1 => "[a-zA-Z_]{0,8}",
        1 => any::<String>(),
    ]
}

fn json_leaf() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        prop::sample::select(vec![0u64, 1, 2, 127, 128, (1 << 53) - 1, 1 << 53, u64::MAX])
            .prop_map(Json::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Json::from),
        prop::sample::select(TYPES).prop_map(Json::from),
        "[a-zA-Z0-9_:.@/=-]{0,20}".prop_map(Json::from),
        "[ -~]{0,140}".prop_map(Json::from),
        any::<String>().prop_map(Json::from),
    ]
}

fn json_tree() -> impl Strategy<Value = Json> {
    json_leaf().prop_recursive(8, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            proptest::collection::vec((field_name(), inner), 0..6)
                .prop_map(|kv| Json::Object(kv.into_iter().collect())),
        ]
    })
}

/// A frame-like object: mostly the real fields with plausible or random values, plus random extras.
fn json_frame() -> impl Strategy<Value = Json> {
    let plausible = |name: &'static str| -> BoxedStrategy<Json> {
        match name {
            "v" => prop_oneof![4 => Just(Json::from(1)), 1 => json_leaf()].boxed(),
            "type" => {
                prop_oneof![4 => prop::sample::select(TYPES).prop_map(Json::from), 1 => json_leaf()]
                    .boxed()
            }
            "id" => prop_oneof![
                any::<u64>().prop_map(Json::from),
                any::<i64>().prop_map(Json::from),
                "[a-z0-9-]{0,70}".prop_map(Json::from),
                json_leaf()
            ]
            .boxed(),
            "channel" => prop_oneof![
                4 => "[a-z]{1,8}(:[a-zA-Z0-9_.@/=-]{1,20})?".prop_map(Json::from),
                1 => "[a-z]{120,140}".prop_map(Json::from),
                1 => json_leaf()
            ]
            .boxed(),
            "since" => prop_oneof![
                (any::<String>(), any::<u64>())
                    .prop_map(|(e, o)| serde_json::json!({"epoch": e, "offset": o})),
                any::<u64>().prop_map(Json::from),
                json_tree()
            ]
            .boxed(),
            _ => json_tree().boxed(),
        }
    };
    let known = FIELDS
        .iter()
        .map(|&f| proptest::option::weighted(0.7, plausible(f)).prop_map(move |v| (f, v)))
        .collect::<Vec<_>>();
    (
        known,
        proptest::collection::vec((field_name(), json_tree()), 0..3),
    )
        .prop_map(|(known, extra)| {
            let mut m = serde_json::Map::new();
            for (k, v) in known {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            for (k, v) in extra {
                m.entry(k).or_insert(v);
            }
            Json::Object(m)
        })
}

fn outcome_key(r: &Result<Request, FrameError>) -> String {
    match r {
        Ok(req) => format!("ok {req:?}"),
        Err(e) => format!("err {:?} {:?}", e.code, e.id),
    }
}

#[test]
fn frame_like_trees_decode_the_same_in_both_encodings() {
    let limits = DecodeLimits::default();
    run(
        "frame-like trees (JSON vs MessagePack)",
        prop_oneof![4 => json_frame(), 1 => json_tree()],
        |frame| {
            let js = serde_json::to_vec(&frame).unwrap();
            let mp = rmp_serde::to_vec_named(&frame).unwrap();
            let a = decode_request(&js, Encoding::Json, &limits);
            let b = decode_request(&mp, Encoding::Msgpack, &limits);
            check_outcome(&a)?;
            check_outcome(&b)?;
            prop_assert_eq!(outcome_key(&a), outcome_key(&b), "frame {}", frame);
            Ok(())
        },
    );
}

#[test]
fn mutated_frames_never_panic() {
    run(
        "mutated frames",
        (
            json_frame(),
            any::<bool>(),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            any::<prop::sample::Index>(),
        ),
        |(frame, msgpack, flips, cut)| {
            let mut bytes = if msgpack {
                rmp_serde::to_vec_named(&frame).unwrap()
            } else {
                serde_json::to_vec(&frame).unwrap()
            };
            for (i, b) in flips {
                let n = bytes.len();
                if n > 0 {
                    bytes[i.index(n)] = b;
                }
            }
            if cut.index(4) == 0 {
                let n = bytes.len();
                bytes.truncate(cut.index(n + 1));
            }
            both(&bytes)
        },
    );
}

/// Full MessagePack value trees, including what JSON cannot carry: binary, extension types, non-string
/// keys, 32-bit floats, NaN.
fn msgpack_tree() -> impl Strategy<Value = rmpv::Value> {
    use rmpv::Value as V;
    let leaf = prop_oneof![
        Just(V::Nil),
        any::<bool>().prop_map(V::from),
        any::<i64>().prop_map(V::from),
        any::<u64>().prop_map(V::from),
        any::<f32>().prop_map(V::F32),
        any::<f64>().prop_map(V::F64),
        prop::sample::select(TYPES).prop_map(V::from),
        "[a-z:]{0,12}".prop_map(V::from),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(V::Binary),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(t, d)| V::Ext(t, d)),
    ];
    leaf.prop_recursive(8, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(V::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        3 => field_name().prop_map(V::from),
                        1 => inner.clone()
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(V::Map),
        ]
    })
}

#[test]
fn msgpack_trees_never_panic() {
    let limits = DecodeLimits::default();
    run(
        "MessagePack trees",
        (
            msgpack_tree(),
            proptest::collection::vec((field_name(), msgpack_tree()), 0..4),
        ),
        |(tree, mut fields)| {
            // Half the time wrap the tree as `data` of an otherwise valid publish.
            fields.push(("data".into(), tree.clone()));
            let mut frame = vec![
                (rmpv::Value::from("v"), rmpv::Value::from(1)),
                (rmpv::Value::from("type"), rmpv::Value::from("publish")),
                (rmpv::Value::from("id"), rmpv::Value::from(7)),
                (rmpv::Value::from("channel"), rmpv::Value::from("chat:a")),
            ];
            frame.extend(fields.into_iter().map(|(k, v)| (rmpv::Value::from(k), v)));
            for v in [tree, rmpv::Value::Map(frame)] {
                let mut b = Vec::new();
                rmpv::encode::write_value(&mut b, &v).unwrap();
                check_outcome(&decode_request(&b, Encoding::Msgpack, &limits))?;
                // Trailing garbage is never accepted.
                b.push(0xc0);
                let r = decode_request(&b, Encoding::Msgpack, &limits);
                prop_assert!(r.is_err(), "trailing bytes accepted");
                check_outcome(&r)?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------------------
// Exact properties of valid frames
// ---------------------------------------------------------------------------------------------------------

#[test]
fn valid_publishes_decode_and_depth_is_exact() {
    let limits = DecodeLimits::default();
    run(
        "valid publishes with nesting",
        (
            "[a-z]{1,8}(:[a-zA-Z0-9_.@/=-]{1,20})?",
            any::<u64>(),
            json_leaf(),
            0usize..48,
            any::<bool>(),
        ),
        |(channel, id, leaf, depth, arrays)| {
            let data = (0..depth).fold(leaf.clone(), |v, _| {
                if arrays {
                    serde_json::json!([v])
                } else {
                    serde_json::json!({"k": v})
                }
            });
            let frame = serde_json::json!({"v": 1, "type": "publish", "id": id, "channel": channel, "data": data});
            let js = serde_json::to_vec(&frame).unwrap();
            let mp = rmp_serde::to_vec_named(&frame).unwrap();
            for (enc, bytes) in [(Encoding::Json, js), (Encoding::Msgpack, mp)] {
                let r = decode_request(&bytes, enc, &limits);
                // The frame object is depth 1, so the data may nest `max_depth - 1` deep.
                if depth < limits.max_depth {
                    let req = r.map_err(|e| TestCaseError::fail(format!("{enc:?}: {e}")))?;
                    prop_assert_eq!(req.id, herald::protocol::RequestId::UInt(id));
                    match req.command {
                        herald::protocol::Command::Publish {
                            channel: c, key, ..
                        } => {
                            prop_assert_eq!(c, channel.clone());
                            prop_assert_eq!(key, None);
                        }
                        other => prop_assert!(false, "decoded as {other:?}"),
                    }
                } else {
                    let e = r.expect_err("too deep must be refused");
                    prop_assert_eq!(e.code, ErrorCode::BadRequest);
                }
            }
            Ok(())
        },
    );
}

/// A float published on a JSON connection must reach subscribers with the same value (found by
/// `frame_like_trees_decode_the_same_in_both_encodings`: without serde_json's `float_roundtrip` feature,
/// some floats come out 1 ULP off).
#[test]
fn json_floats_decode_exactly() {
    for f in [
        -1.0249283591035817e-82f64,
        0.1,
        1e300,
        5e-324,
        2.2250738585072014e-308,
        std::f64::consts::PI,
    ] {
        let frame =
            serde_json::json!({"v": 1, "type": "publish", "id": 1, "channel": "a", "data": f});
        let bytes = serde_json::to_vec(&frame).unwrap();
        let req = decode_request(&bytes, Encoding::Json, &DecodeLimits::default()).unwrap();
        match req.command {
            herald::protocol::Command::Publish { data, .. } => {
                assert_eq!(
                    data.as_f64(),
                    Some(f),
                    "{}",
                    String::from_utf8_lossy(&bytes)
                )
            }
            other => panic!("decoded as {other:?}"),
        }
    }
}
