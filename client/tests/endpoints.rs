//! A client with several endpoints against in-memory mock nodes sharing one channel log (a
//! cluster): the next attempt after a drain (1001), a broken connection or a failed attempt goes to
//! another URL of the list, and the subscription moves along exactly once, in order.

mod support;

use futures_util::StreamExt;
use herald_client::{
    BackoffPolicy, Client, ClientOptions, ConnectionState, StateStream, Subscription,
    SubscriptionEvent,
};
use serde_json::json;
use std::time::Duration;
use support::Mock;

fn fast() -> ClientOptions {
    ClientOptions {
        backoff: BackoffPolicy {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
            max_attempts: None,
        },
        connect_timeout: Duration::from_secs(2),
        stable_after: Duration::ZERO,
        ..Default::default()
    }
}

/// Every state up to the next `Connected`, and the URL it went to.
async fn until_connected(states: &mut StateStream) -> (Vec<ConnectionState>, String) {
    let mut seen = Vec::new();
    loop {
        let s = tokio::time::timeout(Duration::from_secs(10), states.next())
            .await
            .expect("timely state")
            .expect("state stream open");
        if let ConnectionState::Connected { url, .. } = &s {
            return (seen, url.clone());
        }
        if let ConnectionState::GaveUp { reason, .. } = &s {
            panic!("gave up: {reason}");
        }
        seen.push(s);
    }
}

fn attempts(states: &[ConnectionState]) -> usize {
    states
        .iter()
        .filter(|s| matches!(s, ConnectionState::Connecting { .. }))
        .count()
}

async fn next_msg(sub: &mut Subscription) -> herald_client::Message {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("timely event")
            .expect("stream open");
        match ev {
            SubscriptionEvent::Message(m) => return m,
            SubscriptionEvent::NotRecovered { .. } => panic!("resume failed on the next node"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_lost_connection_moves_the_client_to_another_url() {
    let state = Mock::shared_state();
    let mocks = [
        Mock::start_shared(25_000, true, state.clone()).await,
        Mock::start_shared(25_000, true, state.clone()).await,
        Mock::start_shared(25_000, true, state.clone()).await,
    ];
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        format!("ws://127.0.0.1:{port}/ws") // released: nothing listens there now
    };
    // The closed port sits between two nodes: reaching the third node from the first costs one
    // failed attempt.
    let urls = vec![
        mocks[0].url(),
        closed.clone(),
        mocks[1].url(),
        mocks[2].url(),
    ];
    let mock_of = |url: &str| {
        mocks
            .iter()
            .position(|m| m.url() == url)
            .unwrap_or_else(|| panic!("connected to {url}, not a node"))
    };

    let (client, mut states) =
        Client::start_any(urls.clone(), herald_client::no_token(), fast()).expect("start");
    let (before, first) = until_connected(&mut states).await;
    let mut at = urls.iter().position(|u| *u == first).expect("listed");
    // Only attempts on the closed port fail (each then picks another URL).
    assert!(attempts(&before) <= 4, "{before:?}");
    let mut sub = client.subscribe("c").await.expect("subscribe");

    let mut visited = vec![mock_of(&first)];
    let mut published = 0u64;
    let mut received = Vec::new();
    for round in 0..8 {
        for _ in 0..5 {
            published += 1;
            mocks[0].publish("c", json!({ "i": published }));
        }
        while (received.len() as u64) < published {
            received.push(next_msg(&mut sub).await);
        }
        // Alternately a drain (1001 going away) and a broken connection of the current node.
        let drain = round % 2 == 0;
        if drain {
            mocks[mock_of(&urls[at])].drain_all(1001);
        } else {
            mocks[mock_of(&urls[at])].kill_all();
        }
        // Published while the client moves: replayed on the next node.
        published += 1;
        mocks[0].publish("c", json!({ "i": published }));

        // Another node, picked among the others; an attempt on the closed port fails and the
        // next one picks again.
        let (between, url) = until_connected(&mut states).await;
        let failed = attempts(&between) - 1;
        assert!(failed <= 4, "round {round}: {between:?}");
        if failed == 0 {
            assert_ne!(
                url, urls[at],
                "round {round}: stayed on the node that went away"
            );
        }
        let lost = between
            .iter()
            .find_map(|s| match s {
                ConnectionState::Disconnected { code, .. } => Some(*code),
                _ => None,
            })
            .expect("the lost connection is reported");
        assert_eq!(lost, drain.then_some(1001), "round {round}: {between:?}");
        for s in &between {
            if let ConnectionState::Reconnecting { delay, .. } = s {
                assert!(
                    *delay <= Duration::from_millis(200),
                    "{delay:?} over the cap"
                );
            }
        }
        visited.push(mock_of(&url));
        at = urls.iter().position(|u| *u == url).expect("listed");
    }
    while (received.len() as u64) < published {
        received.push(next_msg(&mut sub).await);
    }
    for (k, m) in received.iter().enumerate() {
        assert_eq!(m.offset, k as u64 + 1, "gap or duplicate");
        assert_eq!(m.data_json().expect("json"), json!({ "i": k + 1 }));
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(extra.is_err(), "unexpected extra event {extra:?}");
    // It moved between nodes (never onto the closed port: `mock_of` would have panicked).
    visited.sort();
    visited.dedup();
    assert!(visited.len() >= 2, "{visited:?}");
    client.close().await;
}

#[tokio::test]
async fn one_url_stays_on_it() {
    let mock = Mock::start(25_000, true).await;
    let (client, mut states) =
        Client::start(mock.url(), herald_client::no_token(), fast()).expect("start");
    for _ in 0..3 {
        let (_, url) = until_connected(&mut states).await;
        assert_eq!(url, mock.url());
        mock.drain_all(1001);
    }
    client.close().await;
}

#[tokio::test]
async fn urls_are_validated() {
    for bad in [
        vec![],
        vec!["http://127.0.0.1:1/ws".to_string()],
        vec!["ws://127.0.0.1:1/ws".to_string(), "127.0.0.1:2".to_string()],
    ] {
        let r = Client::start_any(bad.clone(), herald_client::no_token(), fast());
        assert!(
            matches!(r, Err(herald_client::Error::Config(_))),
            "{bad:?} accepted"
        );
        let r = Client::connect_any(bad.clone(), herald_client::no_token(), fast()).await;
        assert!(
            matches!(r, Err(herald_client::Error::Config(_))),
            "{bad:?} accepted"
        );
    }
    assert!(matches!(
        Client::start("tcp://x", herald_client::no_token(), fast()),
        Err(herald_client::Error::Config(_))
    ));
}
