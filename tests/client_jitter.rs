//! 100 clients lose the server at the same instant; their first reconnect attempts (stamped in
//! the state stream) must spread over the first backoff window with no identical instants, and
//! all of them must come back once the server is restarted on the same port.

mod client_support;

use client_support::*;
use herald_client::{Client, ConnectionState};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_of_many_clients_spread_out() {
    const CLIENTS: usize = 100;
    const BASE_MS: u64 = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), 0);
    let port = server.ws_port;
    let url = server.url();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (c, states) =
            Client::connect(&url, herald_client::no_token(), fast(BASE_MS, 8000, None))
                .await
                .expect("connect");
        clients.push((c, states));
    }
    let killed_at = Instant::now();
    server.kill();

    // The first reconnect attempt of each client.
    let mut firsts = Vec::new();
    for (_, states) in clients.iter_mut() {
        // Skip the states of the initial connection.
        wait_state(states, Duration::from_secs(10), |s| {
            matches!(s, ConnectionState::Disconnected { .. })
        })
        .await;
        let s = wait_state(states, Duration::from_secs(10), |s| {
            matches!(s, ConnectionState::Connecting { .. })
        })
        .await;
        if let ConnectionState::Connecting { at, attempt } = s {
            assert_eq!(attempt, 1);
            firsts.push(at);
        }
    }
    let server = Server::start(dir.path(), port);

    let mut offsets: Vec<Duration> = firsts.iter().map(|t| t.duration_since(killed_at)).collect();
    offsets.sort();
    let min = offsets[0];
    let max = offsets[CLIENTS - 1];
    println!("first reconnect attempts from {min:?} to {max:?} after the kill");
    // All inside the first window [0, base] (plus detection and scheduling slack).
    assert!(max <= Duration::from_millis(BASE_MS + 300), "{max:?}");
    // Spread over most of it, not bunched.
    assert!(
        max - min >= Duration::from_millis(BASE_MS / 2),
        "spread {:?}",
        max - min
    );
    let mut instants = firsts.clone();
    instants.sort();
    instants.dedup();
    assert_eq!(instants.len(), CLIENTS, "identical attempt instants");
    // No tenth of the window holds more than a quarter of the clients.
    let mut buckets = [0usize; 10];
    for o in &offsets {
        let i = ((o.as_millis() as u64 * 10) / BASE_MS).min(9) as usize;
        buckets[i] += 1;
    }
    assert!(
        buckets.iter().all(|&n| n <= CLIENTS / 4),
        "bunched: {buckets:?}"
    );

    // Everyone comes back.
    for (c, states) in clients.iter_mut() {
        wait_state(states, Duration::from_secs(60), |s| {
            matches!(s, ConnectionState::Connected { .. })
        })
        .await;
        c.ping().await.expect("ping after reconnect");
    }
    drop(server);
}
