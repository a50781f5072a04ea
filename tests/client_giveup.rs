//! Give-up after the attempt limit when no server listens, and refusal of a client that gave up.

mod client_support;

use client_support::*;
use herald_client::{Client, ConnectionState, Error};
use std::time::{Duration, Instant};

#[tokio::test]
async fn gives_up_after_max_attempts_without_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port(); // released: nothing listens there now
    let url = format!("ws://127.0.0.1:{port}/ws");
    let started = Instant::now();
    let (client, mut states) =
        Client::start(url, herald_client::no_token(), fast(50, 400, Some(4))).expect("start");
    let mut attempts = Vec::new();
    let reason = loop {
        match wait_state(&mut states, Duration::from_secs(20), |_| true).await {
            ConnectionState::Connecting { attempt, .. } => attempts.push(attempt),
            ConnectionState::Reconnecting { delay, .. } => {
                assert!(delay <= Duration::from_millis(400), "{delay:?}")
            }
            ConnectionState::GaveUp { reason, .. } => break reason,
            ConnectionState::Connected { .. } => panic!("nothing should be listening"),
            _ => {}
        }
    };
    assert_eq!(attempts, vec![1, 2, 3, 4]);
    assert!(reason.contains("4 attempts"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(client.ping().await, Err(Error::GaveUp(_))));
    assert!(matches!(client.subscribe("a").await, Err(Error::GaveUp(_))));
    // The stream ends after GaveUp.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), states.next_state())
            .await
            .expect("stream ends")
            .is_none()
    );
}

#[tokio::test]
async fn connect_reports_give_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), 0);
    let url = server.url();
    server.kill();
    let r = Client::connect(url, herald_client::no_token(), fast(20, 100, Some(2))).await;
    assert!(matches!(r, Err(Error::GaveUp(_))), "{r:?}");
}
