//! Driver behaviour against an in-memory mock broker: round trip, resume across dropped
//! connections with exactly-once delivery, publish re-send, give-up, close codes, heartbeat.

mod support;

use futures_util::StreamExt;
use herald_client::{
    BackoffPolicy, Client, ClientOptions, ConnectionState, StateStream, Subscription,
    SubscriptionEvent,
};
use serde_json::json;
use std::time::Duration;
use support::Mock;

fn fast(max_attempts: Option<u32>) -> ClientOptions {
    ClientOptions {
        backoff: BackoffPolicy {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
            max_attempts,
        },
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

async fn next_msg(sub: &mut Subscription) -> herald_client::Message {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("timely event")
            .expect("stream open");
        if let SubscriptionEvent::Message(m) = ev {
            return m;
        }
    }
}

async fn wait_state(
    states: &mut StateStream,
    pred: impl Fn(&ConnectionState) -> bool,
) -> ConnectionState {
    loop {
        let s = tokio::time::timeout(Duration::from_secs(10), states.next())
            .await
            .expect("timely state")
            .expect("state stream open");
        if pred(&s) {
            return s;
        }
    }
}

#[tokio::test]
async fn round_trip() {
    let mock = Mock::start(25_000, true).await;
    let (client, _states) = Client::connect(mock.url(), herald_client::no_token(), fast(None))
        .await
        .expect("connect");
    let mut sub = client.subscribe("chat:room1").await.expect("subscribe");
    let ack = client
        .publish("chat:room1", &json!({"text":"hi"}))
        .await
        .expect("publish");
    assert_eq!(ack.offset, 1);
    let m = next_msg(&mut sub).await;
    assert_eq!(m.offset, 1);
    assert_eq!(m.data_json().expect("json"), json!({"text":"hi"}));
    let p = client.presence("chat:room1").await.expect("presence");
    assert!(p.members.is_empty());
    let h = client
        .history("chat:room1", None, None)
        .await
        .expect("history");
    assert_eq!(h.messages.len(), 1);
    assert!(matches!(
        client.subscribe("chat:room1").await,
        Err(herald_client::Error::AlreadySubscribed(_))
    ));
    client.unsubscribe("chat:room1").await.expect("unsubscribe");
    client.close().await;
}

#[tokio::test]
async fn exactly_once_across_dropped_connections() {
    let mock = Mock::start(25_000, true).await;
    mock.state.lock().expect("lock").lose_reply_every = 7;
    let (sub_client, _s1) = Client::connect(mock.url(), herald_client::no_token(), fast(None))
        .await
        .expect("connect");
    let (pub_client, _s2) = Client::connect(mock.url(), herald_client::no_token(), fast(None))
        .await
        .expect("connect");
    let mut sub = sub_client.subscribe("c").await.expect("subscribe");
    const N: u64 = 300;
    let publisher = tokio::spawn(async move {
        for i in 1..=N {
            let ack = pub_client
                .publish("c", &json!({"i": i}))
                .await
                .expect("publish");
            assert_eq!(ack.offset, i, "publish {i} stored once");
        }
    });
    let killer = {
        let kill = std::sync::Arc::new(mock);
        let k = kill.clone();
        (
            tokio::spawn(async move {
                // Lost replies are only recovered by a reconnect: keep cutting until the end.
                for _ in 0..500 {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    if k.state.lock().expect("lock").lose_reply_every == 0 {
                        break;
                    }
                    k.kill_all();
                }
            }),
            kill,
        )
    };
    for i in 1..=N {
        let m = next_msg(&mut sub).await;
        assert_eq!(m.offset, i);
        assert_eq!(m.data_json().expect("json"), json!({"i": i}));
    }
    publisher.await.expect("publisher");
    killer.1.state.lock().expect("lock").lose_reply_every = 0;
    killer.0.await.expect("killer");
    assert!(killer.1.state.lock().expect("lock").connections > 4);
    // Nothing more (no duplicate) arrives.
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(extra.is_err(), "unexpected extra event {extra:?}");
}

#[tokio::test]
async fn gives_up_after_attempt_limit() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (client, mut states) =
        Client::start(url, herald_client::no_token(), fast(Some(3))).expect("start");
    let mut attempts = vec![];
    loop {
        match wait_state(&mut states, |_| true).await {
            ConnectionState::Connecting { attempt, .. } => attempts.push(attempt),
            ConnectionState::GaveUp { .. } => break,
            _ => {}
        }
    }
    assert_eq!(attempts, vec![1, 2, 3]);
    assert!(matches!(
        client.ping().await,
        Err(herald_client::Error::GaveUp(_))
    ));
}

#[tokio::test]
async fn close_codes_decide_reconnect() {
    let mock = Mock::start(25_000, true).await;
    mock.state.lock().expect("lock").close_next = Some((4001, true));
    let (client, mut states) = Client::connect(mock.url(), herald_client::no_token(), fast(None))
        .await
        .expect("connect");
    let s = wait_state(&mut states, |s| {
        matches!(s, ConnectionState::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(
            s,
            ConnectionState::Disconnected {
                code: Some(4001),
                ..
            }
        ),
        "{s:?}"
    );
    wait_state(&mut states, |s| {
        matches!(s, ConnectionState::Connected { .. })
    })
    .await;
    client.ping().await.expect("ping after reconnect");

    mock.state.lock().expect("lock").close_next = Some((4005, false));
    mock.kill_all();
    wait_state(&mut states, |s| matches!(s, ConnectionState::GaveUp { .. })).await;
    assert!(client.ping().await.is_err());
}

#[tokio::test]
async fn silent_server_is_detected() {
    let mock = Mock::start(100, false).await;
    let opts = ClientOptions {
        heartbeat_margin: Duration::from_millis(100),
        ..fast(None)
    };
    let (_client, mut states) = Client::connect(mock.url(), herald_client::no_token(), opts)
        .await
        .expect("connect");
    let t0 = std::time::Instant::now();
    let s = wait_state(&mut states, |s| {
        matches!(s, ConnectionState::Disconnected { .. })
    })
    .await;
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert!(format!("{s:?}").contains("presumed dead"));
    wait_state(&mut states, |s| {
        matches!(s, ConnectionState::Connected { .. })
    })
    .await;
}

#[tokio::test]
async fn lost_history_is_reported_not_recovered() {
    let mock = Mock::start(25_000, true).await;
    let (client, mut states) = Client::connect(mock.url(), herald_client::no_token(), fast(None))
        .await
        .expect("connect");
    let mut sub = client.subscribe("c").await.expect("subscribe");
    mock.publish("c", json!(1));
    assert_eq!(next_msg(&mut sub).await.offset, 1);
    {
        let mut st = mock.state.lock().expect("lock");
        st.epoch = "E2".into();
        st.log.clear();
    }
    mock.kill_all();
    wait_state(&mut states, |s| {
        matches!(s, ConnectionState::Disconnected { .. })
    })
    .await;
    let ev = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("timely")
        .expect("open");
    match ev {
        SubscriptionEvent::NotRecovered { epoch, head } => {
            assert_eq!(epoch, "E2");
            assert_eq!(head, 0);
        }
        other => panic!("expected NotRecovered, got {other:?}"),
    }
    mock.publish("c", json!("new-1"));
    let m = next_msg(&mut sub).await;
    assert_eq!((m.epoch.as_str(), m.offset), ("E2", 1));
}

#[tokio::test]
async fn a_server_that_accepts_and_drops_at_once_gets_growing_delays() {
    let mock = Mock::start(25_000, true).await;
    mock.state.lock().expect("lock").close_always = Some((1011, true));
    let opts = ClientOptions {
        stable_after: Duration::from_secs(5),
        ..fast(Some(4))
    };
    let (_client, mut states) =
        Client::start(mock.url(), herald_client::no_token(), opts).expect("start");
    let mut attempts = vec![];
    let mut windows_grow = vec![];
    loop {
        match wait_state(&mut states, |_| true).await {
            ConnectionState::Connecting { attempt, .. } => attempts.push(attempt),
            ConnectionState::Reconnecting { attempt, .. } => windows_grow.push(attempt),
            ConnectionState::GaveUp { .. } => break,
            _ => {}
        }
        if attempts.len() > 8 {
            break; // a client that never gives up fails the assertions below instead of hanging
        }
    }
    // Every accepted-then-dropped connection counts as a failed attempt, so the attempt number (and
    // with it the backoff window) grows until the limit, instead of restarting at 1 each time.
    assert_eq!(attempts, vec![1, 2, 3, 4], "{attempts:?}");
    assert_eq!(windows_grow, vec![2, 3, 4]);
    assert_eq!(mock.state.lock().expect("lock").connections, 4);
}
