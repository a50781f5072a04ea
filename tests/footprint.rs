//! What an idle WebSocket connection costs the node, in heap bytes, measured with a counting allocator.
//!
//! Every allocation made on the node's threads is counted; the clients run on threads marked as client
//! threads and are not. The node runs in this process on real sockets; 1,000 raw WebSocket clients
//! connect, subscribe to two channels each (one shared by all, one shared by 20), and go idle. The test
//! prints what each stage adds per connection and asserts the total stays within the seed's budget for an
//! idle connection (3-5 KB, the target 4 KB), also after a burst of large messages.
//!
//! Heap bytes are what the allocator was asked for; RSS adds the allocator's rounding and the untouched
//! tails of pages (measured by `herald-bench idle`, docs/benchmarks.md S1).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use common::raw::*;
use common::*;
use serde_json::json;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static CLIENT: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    !CLIENT.try_with(Cell::get).unwrap_or(true)
}

fn mark_client() {
    CLIENT.with(|c| c.set(true));
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated around it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && counted() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counted() {
            LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
            LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && counted() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Live heap bytes and allocations of the node's threads.
fn live() -> (isize, isize) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_ALLOCS.load(Ordering::Relaxed),
    )
}

const N: usize = 1_000;

async fn subscribe(ws: &mut RawWs, id: usize, channel: &str) {
    ws.send_json(json!({"v": 1, "type": "subscribe", "id": id, "channel": channel}))
        .await;
    let reply = ws.expect_frame().await.json();
    assert_eq!(reply["type"], "reply", "{reply}");
}

async fn read_messages(ws: &mut RawWs, n: usize) {
    let mut seen = 0;
    while seen < n {
        let f = ws.expect_frame().await.json();
        if f["type"] == "message" {
            seen += 1;
        }
    }
}

#[test]
fn an_idle_connection_with_two_subscriptions_costs_at_most_4_kb_of_heap() {
    mark_client();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(mark_client)
        .enable_all()
        .build()
        .expect("client runtime");
    let (mut cfg, _dir) = test_config();
    cfg.limits.max_connections_per_ip = 10 * N;
    cfg.limits.connects_per_second_per_ip = 1_000_000;
    let node = start(cfg);
    let addr = node.client_addr;
    rt.block_on(async move {
        // Warm-up: everything allocated once per node or per thread (the read buffers, channel actors'
        // first use, lazy statics) is allocated before the first measurement.
        let mut warm = Vec::new();
        for i in 0..8 {
            let mut ws = raw_connect(addr).await;
            subscribe(&mut ws, 1, "fp-all").await;
            subscribe(&mut ws, 2, &format!("fp-{}", i % 50)).await;
            warm.push(ws);
        }
        drop(warm);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let m0 = live();

        let mut conns = Vec::with_capacity(N);
        for _ in 0..N {
            conns.push(raw_connect(addr).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let m1 = live();

        for (i, ws) in conns.iter_mut().enumerate() {
            subscribe(ws, 1, "fp-all").await;
            subscribe(ws, 2, &format!("fp-{}", i % 50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let m2 = live();
        if std::env::var_os("FOOTPRINT_EXIT_WHEN_IDLE").is_some() {
            // For heap profilers: what is live now is reported as leaked, by allocation site
            // (`heaptrack --record-only` + `heaptrack_print --print-leaks`).
            eprintln!(
                "idle: {:.0} B per connection",
                (m2.0 - m0.0) as f64 / N as f64
            );
            std::process::exit(0);
        }

        // A burst of large messages to everyone, then rest.
        let mut publisher = raw_connect(addr).await;
        let big = "x".repeat(30_000);
        for k in 0..5 {
            publisher
                .send_json(
                    json!({"v": 1, "type": "publish", "id": k, "channel": "fp-all", "data": big}),
                )
                .await;
        }
        for ws in conns.iter_mut() {
            read_messages(ws, 5).await;
        }
        drop(publisher);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let m3 = live();

        let per = |a: (isize, isize), b: (isize, isize)| {
            ((b.0 - a.0) as f64 / N as f64, (b.1 - a.1) as f64 / N as f64)
        };
        let (open, open_n) = per(m0, m1);
        let (subs, subs_n) = per(m1, m2);
        let (idle, idle_n) = per(m0, m2);
        let (after, after_n) = per(m0, m3);
        eprintln!("heap per idle connection ({N} connections):");
        eprintln!("  upgraded, welcomed:       {open:>8.0} B in {open_n:.1} allocations");
        eprintln!("  + 2 subscriptions:        {subs:>8.0} B in {subs_n:.1} allocations");
        eprintln!("  = idle, 2 subscriptions:  {idle:>8.0} B in {idle_n:.1} allocations");
        eprintln!("  after 5 x 30 KB and rest: {after:>8.0} B in {after_n:.1} allocations");
        assert!(idle <= 4096.0, "{idle:.0} B per idle connection");
        // The burst's messages stay in the channel's window and history (shared, ~150 KB for all), not per
        // connection.
        assert!(
            after <= 4096.0 + 1024.0,
            "{after:.0} B per connection after a burst"
        );
        drop(conns);
    });
    shutdown_blocking(node);
}

fn shutdown_blocking(node: herald::server::RunningNode) {
    node.shutdown().expect("clean shutdown");
}
