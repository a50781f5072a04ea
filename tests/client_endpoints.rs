//! herald-client with a list of endpoints (`Client::start_any`) against real nodes: clients spread
//! over the nodes, a node that shuts down gracefully (close 1001) sends its client to another URL of
//! the list, an unreachable URL is skipped, and a rolling restart of a 3-node cluster (RabbitMQ on
//! 127.0.0.1:5672) moves the clients without losing or doubling a message.

mod client_support;
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use client_support::next_message;
use common::cluster::{cluster_config, delete_streams, publish_when_ready, StreamsGuard};
use common::{eventually, shutdown, start, test_config};
use futures_util::StreamExt;
use herald::server::RunningNode;
use herald_client::{
    no_token, BackoffPolicy, Client, ClientOptions, ConnectionState, StateStream, SubscriptionEvent,
};
use serde_json::json;

/// Every state up to the next `Connected` (panics on `GaveUp`), and the URL it went to.
async fn until_connected(
    states: &mut StateStream,
    within: Duration,
) -> (Vec<ConnectionState>, String) {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let s = tokio::time::timeout_at(deadline, states.next())
            .await
            .unwrap_or_else(|_| panic!("not connected in time; states: {seen:?}"))
            .expect("state stream open");
        match s {
            ConnectionState::Connected { url, .. } => return (seen, url),
            ConnectionState::GaveUp { reason, .. } => panic!("gave up: {reason}; {seen:?}"),
            s => seen.push(s),
        }
    }
}

/// Connection attempts among `states`.
fn attempts(states: &[ConnectionState]) -> usize {
    states
        .iter()
        .filter(|s| matches!(s, ConnectionState::Connecting { .. }))
        .count()
}

/// Three independent single nodes on port 0 (with their data dirs).
fn three_nodes() -> Vec<(RunningNode, tempfile::TempDir)> {
    (0..3)
        .map(|_| {
            let (cfg, dir) = test_config();
            (start(cfg), dir)
        })
        .collect()
}

/// A URL where nothing listens (a port bound and released again).
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    format!("ws://127.0.0.1:{port}/ws")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_the_nodes() {
    let nodes = three_nodes();
    let urls: Vec<String> = nodes.iter().map(|(n, _)| n.ws_url()).collect();
    let mut clients = Vec::new();
    let mut per_url: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let (client, mut states) =
            Client::start_any(urls.clone(), no_token(), ClientOptions::default()).expect("start");
        let (before, url) = until_connected(&mut states, Duration::from_secs(10)).await;
        assert_eq!(attempts(&before), 1, "every node is up: {before:?}");
        assert!(urls.contains(&url), "{url} is not in the list");
        *per_url.entry(url).or_default() += 1;
        clients.push((client, states));
    }
    let counts: Vec<usize> = urls
        .iter()
        .map(|u| per_url.get(u).copied().unwrap_or(0))
        .collect();
    println!("clients per node: {counts:?}");
    // Each node holds exactly the sessions of the clients that said they went there.
    for ((node, _), &n) in nodes.iter().zip(&counts) {
        eventually("the node's sessions match the clients' urls", || {
            node.node().sessions.len() == n
        })
        .await;
    }
    // Uniform random starts: a node is left out with probability 3 * (2/3)^30, about 2e-5; clients
    // that all started at the same index would put 30 on one node.
    assert!(
        counts.iter().all(|&n| n >= 1),
        "a node got no client: {counts:?}"
    );
    for (client, _) in &clients {
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutting_down_sends_its_client_to_another_url() {
    let mut nodes = three_nodes();
    let urls: Vec<String> = nodes.iter().map(|(n, _)| n.ws_url()).collect();
    // The default options: the delay after the lost connection is the backoff's (at most 1 s here).
    let (client, mut states) =
        Client::start_any(urls.clone(), no_token(), ClientOptions::default()).expect("start");
    let (_, first) = until_connected(&mut states, Duration::from_secs(10)).await;
    let mut sub = client.subscribe("room:drain").await.expect("subscribe");
    client
        .publish("room:drain", &json!({"before": true}))
        .await
        .expect("publish");
    next_message(&mut sub, Duration::from_secs(5)).await;

    let i = urls.iter().position(|u| *u == first).expect("listed");
    let (node, _dir) = nodes.remove(i);
    let started = Instant::now();
    let stopping = tokio::spawn(shutdown(node));
    let (between, url) = until_connected(&mut states, Duration::from_secs(5)).await;
    let took = started.elapsed();
    println!("moved from {first} to {url} in {took:?}: {between:?}");
    let lost = between.iter().find_map(|s| match s {
        ConnectionState::Disconnected { code, .. } => Some(*code),
        _ => None,
    });
    assert_eq!(lost, Some(Some(1001)), "{between:?}");
    assert_ne!(url, first, "reconnected to the node that went away");
    assert_eq!(attempts(&between), 1, "the next node is up: {between:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    stopping.await.expect("node a stopped");

    // The subscription lives on at the new node (independent nodes share no log: not recovered).
    client
        .publish("room:drain", &json!({"after": true}))
        .await
        .expect("publish on the new node");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ev = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("the message published on the new node")
            .expect("subscription open");
        match ev {
            SubscriptionEvent::Message(m) => {
                assert_eq!(m.data_json().expect("json"), json!({"after": true}));
                break;
            }
            SubscriptionEvent::NotRecovered { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_url_first_is_skipped() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let live = node.ws_url();
    let urls = vec![closed_url(), live.clone()];
    // Two attempts at most: a client that tried the closed port again would give up.
    let options = || ClientOptions {
        backoff: BackoffPolicy {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
            max_attempts: Some(2),
        },
        ..ClientOptions::default()
    };
    // Half the clients start on the closed port; go on until three of them did.
    let (mut skipped, mut clients) = (0, 0);
    while skipped < 3 && clients < 64 {
        clients += 1;
        let (client, mut states) =
            Client::start_any(urls.clone(), no_token(), options()).expect("start");
        let (before, url) = until_connected(&mut states, Duration::from_secs(10)).await;
        assert_eq!(url, live);
        match attempts(&before) {
            1 => {}
            2 => {
                assert!(
                    before
                        .iter()
                        .any(|s| matches!(s, ConnectionState::Disconnected { code: None, .. })),
                    "{before:?}"
                );
                skipped += 1;
            }
            n => panic!("{n} attempts: {before:?}"),
        }
        client.ping().await.expect("ping");
        client.close().await;
    }
    assert_eq!(
        skipped, 3,
        "{clients} clients, {skipped} started on the closed port"
    );
    // Connecting through the closed port first also works for connect_any.
    let (client, _states) = Client::connect_any(urls.clone(), no_token(), options())
        .await
        .expect("connect_any");
    client.ping().await.expect("ping");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_a_cluster_moves_the_clients_and_loses_nothing() {
    let name = format!("test-{}", ulid::Ulid::new());
    let _cleanup = StreamsGuard(name.clone());
    let mut nodes: Vec<(RunningNode, herald::config::Config, tempfile::TempDir)> = (0..3)
        .map(|_| {
            let (mut cfg, dir) = cluster_config(&name);
            let node = start(cfg.clone());
            // Restarted on the same address, as a restarted service is.
            cfg.server.listen = node.client_addr;
            (node, cfg, dir)
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(|(n, _, _)| n.ws_url()).collect();
    let mut epoch = String::new();
    for url in &urls {
        let mut raw = common::Client::connect(url, common::Enc::Json).await;
        let r = publish_when_ready(&mut raw, "room:warm", json!(1)).await;
        epoch = r["epoch"].as_str().expect("epoch").to_string();
    }

    let channel = "room:rolling";
    let (sub_client, mut sub_states) =
        Client::start_any(urls.clone(), no_token(), ClientOptions::default()).expect("start");
    let (_, sub_first) = until_connected(&mut sub_states, Duration::from_secs(10)).await;
    let mut sub = sub_client.subscribe(channel).await.expect("subscribe");
    let (pub_client, _pub_states) =
        Client::connect_any(urls.clone(), no_token(), ClientOptions::default())
            .await
            .expect("publisher connects");
    const N: u64 = 300;
    let publisher = tokio::spawn(async move {
        for i in 1..=N {
            pub_client
                .publish(channel, &json!({ "i": i }))
                .await
                .expect("publish (re-sent on another node when its node went away)");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // The subscriber's urls, from its state stream (read while the test waits for messages).
    let (url_tx, mut url_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(s) = sub_states.next().await {
            if let ConnectionState::Connected { url, .. } = s {
                let _ = url_tx.send(url);
            }
        }
    });

    let mut got = Vec::new();
    // One node after the other: stop it gracefully, start it again on its address and data dir.
    for k in 0..3 {
        while (got.len() as u64) < 50 * (k + 1) {
            got.push(next_message(&mut sub, Duration::from_secs(20)).await);
        }
        let (node, cfg, dir) = nodes.remove(0);
        shutdown(node).await;
        let node = start(cfg.clone());
        let mut raw = common::Client::connect(&node.ws_url(), common::Enc::Json).await;
        publish_when_ready(&mut raw, "room:warm", json!(1)).await;
        nodes.push((node, cfg, dir));
    }
    while (got.len() as u64) < N {
        got.push(next_message(&mut sub, Duration::from_secs(20)).await);
    }
    publisher.await.expect("publisher finished");
    // Every message once, in order, in one epoch (a cluster's offsets may have gaps).
    for (k, m) in got.iter().enumerate() {
        assert_eq!(
            m.data_json().expect("json"),
            json!({ "i": k + 1 }),
            "message #{k} missing, doubled or out of order"
        );
        if k > 0 {
            assert_eq!(m.epoch, got[k - 1].epoch, "epoch changed");
            assert!(m.offset > got[k - 1].offset, "offsets go back at #{k}");
        }
    }
    let extra = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(extra.is_err(), "an extra event: {extra:?}");

    // The subscriber's node went away once during the restart: it moved on to another url.
    let mut visited = vec![sub_first.clone()];
    while let Ok(url) = url_rx.try_recv() {
        visited.push(url);
    }
    println!("subscriber connected to: {visited:?}");
    assert!(
        visited.len() >= 2,
        "the subscriber never moved: {visited:?}"
    );
    for pair in visited.windows(2) {
        assert_ne!(pair[1], pair[0], "moved to the same url: {visited:?}");
    }
    sub_client.close().await;
    for (node, _, _) in nodes {
        shutdown(node).await;
    }
    delete_streams(&name, &epoch).await;
}
