//! A TCP relay between the clients and the real server cuts every connection at random moments
//! while messages flow; the app must see zero gaps and zero duplicates, and every publish must be
//! stored exactly once (re-sent with its idempotency key after a cut).

mod client_support;

use client_support::*;
use herald_client::Client;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A relay on a loopback port; `cut()` drops every open relayed connection.
struct Relay {
    port: u16,
    cut: watch::Sender<u64>,
    cuts: Arc<AtomicU64>,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("addr").port();
        let (cut, cut_rx) = watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut cut_rx = cut_rx.clone();
                cut_rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                    // Dropping both sockets cuts the connection mid-stream.
                });
            }
        });
        Relay {
            port,
            cut,
            cuts: Arc::new(AtomicU64::new(0)),
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
        self.cuts.fetch_add(1, Ordering::Relaxed);
    }
}

/// xorshift64*, seeded from the clock: random cut moments without an extra dependency.
fn rng_from_clock() -> impl FnMut() -> u64 {
    let mut s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
        | 1;
    move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cuts_lose_and_double_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), 0);
    let relay = Arc::new(Relay::start(server.ws_port).await);
    let opts = fast(20, 300, None);
    let (sub_client, _s1) = Client::connect(relay.url(), herald_client::no_token(), opts.clone())
        .await
        .expect("connect subscriber");
    let (pub_client, _s2) = Client::connect(relay.url(), herald_client::no_token(), opts)
        .await
        .expect("connect publisher");
    let mut sub = sub_client.subscribe("test:relay").await.expect("subscribe");

    const N: u64 = 500;
    let publisher = tokio::spawn(async move {
        let mut offsets = Vec::new();
        for i in 1..=N {
            let ack = pub_client
                .publish("test:relay", &json!({ "i": i }))
                .await
                .expect("publish");
            offsets.push(ack.offset);
        }
        offsets
    });
    let done = Arc::new(AtomicBool::new(false));
    let cutter = {
        let relay = relay.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut rng = rng_from_clock();
            // Bounded: at most 400 cuts, stops when the test is done.
            for _ in 0..400 {
                let pause = 20 + rng() % 180;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                if done.load(Ordering::Relaxed) {
                    break;
                }
                relay.cut();
            }
        })
    };

    let mut got = Vec::new();
    while (got.len() as u64) < N {
        got.push(next_message(&mut sub, Duration::from_secs(30)).await);
    }
    let offsets = publisher.await.expect("publisher");
    done.store(true, Ordering::Relaxed);
    cutter.await.expect("cutter");
    assert_exactly_once(&got, N);
    // Every publish was stored once: acks are consecutive and match what was delivered.
    for w in offsets.windows(2) {
        assert_eq!(w[1], w[0] + 1, "a publish was stored twice or lost");
    }
    assert_eq!(offsets.first().copied(), got.first().map(|m| m.offset));
    let cuts = relay.cuts.load(Ordering::Relaxed);
    assert!(cuts >= 3, "only {cuts} cuts happened");
    println!("{N} messages, {cuts} cuts: no gap, no duplicate");
}
