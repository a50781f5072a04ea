//! Benchmarks of the sled history store (`herald::history::Store`), on a real temp dir:
//!
//! - `append`: throughput of appends made durable by group commit (N appends, then one `durable().await`)
//!   against one `durable().await` per append (window 0 = flush as soon as asked, and the default 2 ms
//!   window), and against many concurrent writers that each wait for their own append (they share flushes).
//! - `replay`: reading a channel's retained history back in 256-message range reads (what a resuming
//!   subscriber's replay does) for 1,000 and 100,000 messages.
//!
//! - `listing`: one page of the channel index (`Store::channels`, what `GET /api/channels` reads) with
//!   100,000 channels stored, from the start and from a cursor deep inside: the cost must not grow with the
//!   number of channels.
//!
//! Run: `cargo bench --bench history` (quick: `cargo bench --bench history -- --quick`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::history::{Store, StoreConfig, StoredMessage};

/// Payload size of one message (canonical MessagePack bytes; opaque to the store).
const PAYLOAD: usize = 128;
/// Messages per range read during replay (as `channel::replay`).
const CHUNK: usize = 256;

fn open(dir: &tempfile::TempDir, group_commit: Duration) -> Store {
    let mut cfg = StoreConfig::new(dir.path().join("history"));
    cfg.group_commit = group_commit;
    Store::open(&cfg).expect("open store").0
}

fn message(offset: u64) -> StoredMessage {
    StoredMessage {
        offset,
        id: ulid::Ulid::new().to_string(),
        ts_ms: 1_764_124_800_000 + offset,
        from: None,
        data: vec![0xa5; PAYLOAD],
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn append(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("append");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));

    // N appends then one durable(): the pattern of a channel under load (one flush covers the batch).
    for n in [100u64, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, Duration::from_millis(2));
        let mut head = 0u64;
        g.throughput(Throughput::Elements(n));
        g.bench_function(BenchmarkId::new("batch_then_durable", n), |b| {
            b.iter(|| {
                for _ in 0..n {
                    head += 1;
                    store.append("bench:batch", &message(head), None).unwrap();
                }
                rt.block_on(store.durable()).unwrap();
            })
        });
        store.close().unwrap();
    }

    // The append call alone (one sled transaction over messages + meta), never flushed.
    {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, Duration::from_millis(2));
        let mut head = 0u64;
        g.throughput(Throughput::Elements(1));
        g.bench_function("append_only_no_durable", |b| {
            b.iter(|| {
                head += 1;
                store
                    .append("bench:nodurable", &message(head), None)
                    .unwrap();
            })
        });
        store.close().unwrap();
    }

    // One durable() per append, one writer: every message pays a whole flush (plus the window).
    for window_ms in [0u64, 2] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, Duration::from_millis(window_ms));
        let mut head = 0u64;
        g.throughput(Throughput::Elements(1));
        g.bench_function(
            BenchmarkId::new("durable_per_append_window_ms", window_ms),
            |b| {
                b.iter(|| {
                    head += 1;
                    store.append("bench:each", &message(head), None).unwrap();
                    rt.block_on(store.durable()).unwrap();
                })
            },
        );
        store.close().unwrap();
    }

    // 64 concurrent writers (one channel each), every append awaiting its own durable(): group commit
    // lets them share flushes.
    const WRITERS: u64 = 64;
    const PER_WRITER: u64 = 16;
    {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, Duration::from_millis(2));
        let heads: Arc<Vec<AtomicU64>> =
            Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
        g.throughput(Throughput::Elements(WRITERS * PER_WRITER));
        g.bench_function(
            BenchmarkId::new("concurrent_durable_per_append_writers", WRITERS),
            |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        rt.block_on(async {
                            let tasks: Vec<_> = (0..WRITERS)
                                .map(|w| {
                                    let store = store.clone();
                                    let heads = heads.clone();
                                    tokio::spawn(async move {
                                        let channel = format!("bench:w{w}");
                                        for _ in 0..PER_WRITER {
                                            let off = heads[w as usize]
                                                .fetch_add(1, Ordering::Relaxed)
                                                + 1;
                                            store.append(&channel, &message(off), None).unwrap();
                                            store.durable().await.unwrap();
                                        }
                                    })
                                })
                                .collect();
                            for t in tasks {
                                t.await.unwrap();
                            }
                        });
                    }
                    start.elapsed()
                })
            },
        );
        store.close().unwrap();
    }
    g.finish();
}

fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, Duration::from_millis(2));
    for n in [1_000u64, 100_000] {
        let channel = format!("bench:replay{n}");
        for off in 1..=n {
            store.append(&channel, &message(off), None).unwrap();
        }
        store.flush().unwrap();
        g.throughput(Throughput::Elements(n));
        g.bench_function(BenchmarkId::new("range_reads_256", n), |b| {
            b.iter(|| {
                let mut last = 0u64;
                while last < n {
                    let chunk = store.range(&channel, last, CHUNK).unwrap();
                    assert!(!chunk.is_empty());
                    for m in &chunk {
                        assert_eq!(m.offset, last + 1);
                        last = m.offset;
                    }
                }
                last
            })
        });
    }
    store.close().unwrap();
    g.finish();
}

fn listing(c: &mut Criterion) {
    const CHANNELS: usize = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, Duration::from_millis(2));
    for i in 0..CHANNELS {
        store
            .channel_state(&format!("room:{i:06}"))
            .expect("create channel");
    }
    let mut group = c.benchmark_group("listing_100k_channels");
    group.throughput(Throughput::Elements(100));
    for (name, after) in [("first_page", None), ("page_at_90k", Some("room:090000"))] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let page = store.channels("room:", after, 100).expect("page");
                assert_eq!(page.len(), 100);
                page
            })
        });
    }
    group.finish();
}

criterion_group!(benches, append, replay, listing);
criterion_main!(benches);
