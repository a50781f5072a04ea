//! After a `refresh` to narrower patterns, no message of an ended channel follows its `unsubscribed` frame,
//! even while that channel is flooded: the session sends the frame only after the channel confirmed the
//! unsubscribe, so everything the channel queued before is ahead of it.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "refresh-order-secret";

fn token(subscribe: &[&str]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims =
        json!({"sub": "carol", "exp": now + 3600, "subscribe": subscribe, "publish": ["*"]});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_an_ended_channel_follows_its_unsubscribed_frame() {
    let (mut cfg, _dir) = test_config();
    cfg.auth.anonymous = false;
    cfg.auth.hmac_secret = SECRET.into();
    cfg.limits.messages_per_second = 1_000_000;
    cfg.limits.messages_burst = 1_000_000;
    let node = start(cfg);
    let url = node.ws_url();
    let bearer = format!("Bearer {}", token(&["chat:*", "news:*"]));
    let mut c = Client::try_connect(&url, Enc::Json, &[("authorization", &bearer)])
        .await
        .unwrap();
    c.subscribe("news:b").await;
    let mut publisher = Client::try_connect(&url, Enc::Msgpack, &[("authorization", &bearer)])
        .await
        .unwrap();
    // Flood news:b from another connection while the refresh happens.
    let flood = tokio::spawn(async move {
        for i in 0..2000 {
            publisher
                .send(json!({"v":1,"type":"publish","id":i,"channel":"news:b","data":i}))
                .await;
        }
        publisher
    });
    // Let the flood reach the subscriber, then narrow the token.
    loop {
        let f = c.next_frame().await;
        if f["type"] == "message" {
            break;
        }
    }
    c.send(json!({"v":1,"type":"refresh","id":"r","token": token(&["chat:*"])}))
        .await;
    let mut after_frame: Vec<Value> = Vec::new();
    let mut seen_frame = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        let Ok(ev) = tokio::time::timeout(Duration::from_millis(300), c.next_event()).await else {
            break;
        };
        let Event::Frame(f) = ev else { break };
        if f["type"] == "unsubscribed" {
            seen_frame = true;
        } else if seen_frame && f["type"] == "message" {
            after_frame.push(f);
        }
    }
    assert!(seen_frame, "an unsubscribed frame arrived");
    assert!(
        after_frame.is_empty(),
        "{} message(s) of the ended channel after its unsubscribed frame, first: {}",
        after_frame.len(),
        after_frame[0]
    );
    drop(flood.await.unwrap());
}
