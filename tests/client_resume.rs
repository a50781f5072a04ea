//! The client against the real server: kill the server mid-stream, restart it on the same port
//! and data dir; the client reconnects with backoff, resumes with `since`, and the app sees every
//! message exactly once, in order. Publishes cut by the crash are re-sent with their key.

mod client_support;

use client_support::*;
use futures_util::StreamExt;
use herald_client::{Client, ConnectionState};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_server_resumes_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), 0);
    let port = server.ws_port;
    let url = server.url();
    let (sub_client, mut states) =
        Client::connect(&url, herald_client::no_token(), fast(100, 1000, None))
            .await
            .expect("connect subscriber");
    let (pub_client, _ps) = Client::connect(&url, herald_client::no_token(), fast(100, 1000, None))
        .await
        .expect("connect publisher");
    let mut sub = sub_client
        .subscribe("test:resume")
        .await
        .expect("subscribe");

    const N: u64 = 400;
    let publisher = tokio::spawn(async move {
        for i in 1..=N {
            pub_client
                .publish("test:resume", &json!({ "i": i }))
                .await
                .expect("publish (re-sent across the restart)");
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let mut got = Vec::new();
    while got.len() < 100 {
        got.push(next_message(&mut sub, Duration::from_secs(10)).await);
    }
    server.kill();
    let lost = wait_state(&mut states, Duration::from_secs(10), |s| {
        matches!(s, ConnectionState::Disconnected { .. })
    })
    .await;
    println!("subscriber saw: {lost:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = Server::start(dir.path(), port);
    let mut saw_backoff = false;
    loop {
        match wait_state(&mut states, Duration::from_secs(30), |_| true).await {
            ConnectionState::Reconnecting { delay, .. } => {
                assert!(
                    delay <= Duration::from_secs(1),
                    "delay over the cap: {delay:?}"
                );
                saw_backoff = true;
            }
            ConnectionState::Connected { .. } => break,
            _ => {}
        }
    }
    assert!(saw_backoff, "reconnect went through the backoff");
    while (got.len() as u64) < N {
        got.push(next_message(&mut sub, Duration::from_secs(20)).await);
    }
    publisher.await.expect("publisher finished");
    assert_exactly_once(&got, N);
    let extra = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(extra.is_err(), "a message arrived twice");
    drop(server);
}

#[tokio::test]
async fn msgpack_and_json_clients_interoperate() {
    use herald_client::{ClientOptions, Encoding, Value};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), 0);
    let mp = ClientOptions {
        encoding: Encoding::MsgPack,
        ..fast(50, 500, Some(3))
    };
    let (mp_client, _s1) = Client::connect(server.url(), herald_client::no_token(), mp)
        .await
        .expect("msgpack connect");
    let (json_client, _s2) = Client::connect(
        server.url(),
        herald_client::no_token(),
        fast(50, 500, Some(3)),
    )
    .await
    .expect("json connect");
    let mut mp_sub = mp_client.subscribe("test:enc").await.expect("subscribe");
    let mut json_sub = json_client.subscribe("test:enc").await.expect("subscribe");
    let data = Value::Map(vec![
        (Value::from("bin"), Value::Binary(vec![0, 7, 255])),
        (Value::from("big"), Value::from(u64::MAX)),
    ]);
    let ack = mp_client
        .publish_value("test:enc", data.clone(), None)
        .await
        .expect("publish");
    let m = next_message(&mut mp_sub, Duration::from_secs(5)).await;
    assert_eq!(m.data, data);
    assert_eq!((m.id.as_str(), m.offset), (ack.id.as_str(), ack.offset));
    let j = next_message(&mut json_sub, Duration::from_secs(5)).await;
    assert_eq!(
        j.data_json().expect("json"),
        json!({"bin": [0, 7, 255], "big": u64::MAX})
    );
    let page = json_client
        .history("test:enc", None, None)
        .await
        .expect("history");
    assert_eq!(page.messages.len(), 1);
}
