//! Tests of the history store against real sled databases in temporary directories.
//!
//! Exists to pin the behaviour the channel layer relies on: positions, epochs across reopen,
//! idempotency, retention, listing, cursors, corruption recovery and group commit.

use std::path::Path;
use std::time::Duration;

use super::*;

fn cfg(path: &Path) -> StoreConfig {
    StoreConfig {
        path: path.to_path_buf(),
        group_commit: Duration::from_millis(2),
        cache_bytes: 8 * 1024 * 1024,
    }
}

fn open(path: &Path) -> Store {
    let (s, report) = Store::open(&cfg(path)).unwrap();
    assert_eq!(report.moved_aside, None);
    s
}

fn msg(offset: u64, ts_ms: u64) -> StoredMessage {
    StoredMessage {
        offset,
        id: ulid::Ulid::new().to_string(),
        ts_ms,
        from: offset.is_multiple_of(2).then(|| format!("user{offset}")),
        data: vec![0x81, 0xa1, b'n', (offset % 100) as u8],
    }
}

fn fill(s: &Store, ch: &str, n: u64, ts: impl Fn(u64) -> u64) -> Vec<StoredMessage> {
    let head = s.channel_state(ch).unwrap().head;
    (head + 1..=head + n)
        .map(|o| {
            let m = msg(o, ts(o));
            s.append(ch, &m, None).unwrap();
            m
        })
        .collect()
}

#[test]
fn append_range_state_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("h"));
    let st = s.channel_state("chat:a").unwrap();
    assert_eq!((st.head, st.oldest), (0, None));
    assert_eq!(st.epoch.len(), 26, "ULID epoch");
    let written = fill(&s, "chat:a", 10, |o| 1000 + o);
    fill(&s, "chat:ab", 3, |o| o); // neighbour channel sharing a name prefix
    let st2 = s.channel_state("chat:a").unwrap();
    assert_eq!(
        (st2.epoch.as_str(), st2.head, st2.oldest),
        (st.epoch.as_str(), 10, Some(1))
    );
    assert_eq!(s.range("chat:a", 0, 100).unwrap(), written);
    assert_eq!(s.range("chat:a", 3, 4).unwrap(), written[3..7].to_vec());
    assert!(s.range("chat:a", 10, 100).unwrap().is_empty());
    assert!(s.range("chat:a", u64::MAX, 100).unwrap().is_empty());
    assert!(s.range("chat:a", 0, 0).unwrap().is_empty());
    assert_eq!(s.range("chat:ab", 0, 100).unwrap().len(), 3);
    assert!(s.range("chat:", 0, 100).unwrap().is_empty());
}

#[test]
fn offset_mismatch_and_bad_input_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("h"));
    fill(&s, "c", 2, |o| o);
    for bad in [1, 2, 4, 0] {
        match s.append("c", &msg(bad, 0), None) {
            Err(HistoryError::OffsetMismatch {
                channel,
                expected,
                got,
            }) => assert_eq!((channel.as_str(), expected, got), ("c", 3, bad)),
            other => panic!("expected OffsetMismatch, got {other:?}"),
        }
    }
    assert_eq!(s.channel_state("c").unwrap().head, 2);
    assert!(matches!(
        s.append("c", &msg(1 << 53, 0), None),
        Err(HistoryError::OffsetOverflow { .. })
    ));
    assert!(matches!(
        s.channel_state("a\0b"),
        Err(HistoryError::InvalidChannel { .. })
    ));
    assert!(matches!(
        s.channel_state(""),
        Err(HistoryError::InvalidChannel { .. })
    ));
}

#[test]
fn epochs_and_cursors_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h");
    let (epoch, written) = {
        let s = open(&p);
        let e = s.channel_state("c").unwrap().epoch;
        let w = fill(&s, "c", 5, |o| o);
        s.set_cursor("stream-3", 12345).unwrap();
        s.set_cursor("stream-4", 1).unwrap();
        s.set_cursor("stream-4", 2).unwrap();
        s.flush().unwrap();
        (e, w)
    };
    let s = open(&p);
    let st = s.peek_state("c").unwrap().unwrap();
    assert_eq!((st.epoch, st.head, st.oldest), (epoch, 5, Some(1)));
    assert_eq!(s.range("c", 0, 10).unwrap(), written);
    assert_eq!(s.get_cursor("stream-3").unwrap(), Some(12345));
    assert_eq!(s.get_cursor("stream-4").unwrap(), Some(2));
    assert_eq!(s.get_cursor("nope").unwrap(), None);
}

#[test]
fn unknown_channel_gets_new_persisted_epoch_and_peek_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h");
    let e1 = {
        let s = open(&p);
        assert_eq!(s.peek_state("x").unwrap(), None);
        assert!(s.channels("", None, 10).unwrap().is_empty());
        let a = s.channel_state("x").unwrap();
        let b = s.channel_state("y").unwrap();
        assert_ne!(a.epoch, b.epoch);
        assert_eq!(s.channel_state("x").unwrap(), a);
        s.flush().unwrap();
        a.epoch
    };
    let s = open(&p);
    assert_eq!(s.channel_state("x").unwrap().epoch, e1);
}

#[test]
fn reset_gives_new_epoch_and_empty_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("h"));
    let before = s.channel_state("c").unwrap();
    fill(&s, "c", 2500, |o| o); // more than one removal chunk
    s.append("c", &msg(2501, 0), Some(("k", u64::MAX))).unwrap();
    fill(&s, "other", 3, |o| o);
    s.append("other", &msg(4, 0), Some(("k", u64::MAX)))
        .unwrap();
    let after = s.reset("c").unwrap();
    assert_ne!(after.epoch, before.epoch);
    assert_eq!((after.head, after.oldest), (0, None));
    assert_eq!(s.channel_state("c").unwrap(), after);
    assert!(s.range("c", 0, 10).unwrap().is_empty());
    assert_eq!(s.idempotent("c", "k", 0).unwrap(), None);
    assert!(s.idempotent("other", "k", 0).unwrap().is_some());
    assert_eq!(s.range("other", 0, 10).unwrap().len(), 4);
    // appends start again at 1
    s.append("c", &msg(1, 0), None).unwrap();
    assert_eq!(s.channel_state("c").unwrap().oldest, Some(1));
    // reset of an unknown channel creates it
    assert_eq!(s.reset("new").unwrap().head, 0);
}

#[test]
fn idempotency_hit_miss_expiry_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h");
    let m1 = msg(1, 10);
    let epoch = {
        let s = open(&p);
        let epoch = s.channel_state("c").unwrap().epoch;
        s.append("c", &m1, Some(("key-1", 1000))).unwrap();
        s.append("c", &msg(2, 10), Some(("key-2", 500))).unwrap();
        s.append("c", &msg(3, 10), None).unwrap();
        let hit = s.idempotent("c", "key-1", 999).unwrap().unwrap();
        assert_eq!(
            hit,
            IdempotentHit {
                id: m1.id.clone(),
                epoch: epoch.clone(),
                offset: 1,
                digest: Some(crate::history::data_digest(&m1.data)),
            }
        );
        assert_eq!(
            s.idempotent("c", "key-1", 1000).unwrap(),
            None,
            "expired at expires_at"
        );
        assert_eq!(s.idempotent("c", "nope", 0).unwrap(), None);
        assert_eq!(
            s.idempotent("d", "key-1", 0).unwrap(),
            None,
            "keys are per channel"
        );
        s.flush().unwrap();
        epoch
    };
    let s = open(&p);
    assert_eq!(s.idempotent("c", "key-1", 0).unwrap().unwrap().epoch, epoch);
    assert_eq!(s.sweep_idempotency(499).unwrap(), 0);
    assert_eq!(s.sweep_idempotency(500).unwrap(), 1);
    assert_eq!(s.idempotent("c", "key-2", 0).unwrap(), None);
    assert!(s.idempotent("c", "key-1", 0).unwrap().is_some());
    // re-using an expired key with a later expiry: the old index entry must not delete it
    s.append("c", &msg(4, 10), Some(("key-1", 5000))).unwrap();
    assert_eq!(s.sweep_idempotency(1000).unwrap(), 0);
    assert_eq!(s.idempotent("c", "key-1", 1000).unwrap().unwrap().offset, 4);
    assert_eq!(s.sweep_idempotency(u64::MAX).unwrap(), 1);
    assert_eq!(s.idempotent("c", "key-1", 0).unwrap(), None);
}

#[test]
fn trim_by_size_age_and_floor() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("h"));
    fill(&s, "c", 20, |o| o * 100); // ts 100..2000
    let keep = |n| Retention {
        max_len: n,
        max_age: None,
    };
    assert_eq!(s.trim("c", &keep(100), 0, None).unwrap(), 0);
    assert_eq!(s.trim("c", &keep(15), 0, None).unwrap(), 5);
    assert_eq!(s.channel_state("c").unwrap().oldest, Some(6));
    // floor protects offsets >= floor
    assert_eq!(s.trim("c", &keep(5), 0, Some(9)).unwrap(), 3);
    assert_eq!(s.channel_state("c").unwrap().oldest, Some(9));
    // Counted over what is stored: 9..=20 remain.
    assert_eq!(s.count_range("c", 0, 20).unwrap(), 12);
    assert_eq!(s.count_range("c", 10, 15).unwrap(), 5);
    assert_eq!(s.count_range("c", 15, 15).unwrap(), 0);
    assert_eq!(s.count_range("other", 0, 20).unwrap(), 0);
    // age: now 2000, max_age 1.05 s => cutoff 950: offsets 9 (ts 900) removed, 10 (ts 1000) kept
    let age = Retention {
        max_len: 1000,
        max_age: Some(Duration::from_millis(1050)),
    };
    assert_eq!(s.trim("c", &age, 2000, None).unwrap(), 1);
    assert_eq!(s.range("c", 0, 1).unwrap()[0].offset, 10);
    assert_eq!(s.trim("c", &age, 2000, None).unwrap(), 0);
    // max_len 0 keeps none, head unchanged
    assert_eq!(s.trim("c", &keep(0), 0, None).unwrap(), 11);
    let st = s.channel_state("c").unwrap();
    assert_eq!((st.head, st.oldest), (20, None));
    s.append("c", &msg(21, 0), None).unwrap();
    assert_eq!(s.channel_state("c").unwrap().oldest, Some(21));
    assert_eq!(s.trim("unknown", &keep(0), 0, None).unwrap(), 0);
    assert_eq!(s.peek_state("unknown").unwrap(), None);
}

#[test]
fn channels_pagination_with_prefix_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("h"));
    for ch in [
        "a:1", "chat:a", "chat:b", "chat:c", "chat:d", "chat;x", "chatz", "z",
    ] {
        s.channel_state(ch).unwrap();
    }
    fill(&s, "chat:b", 2, |o| o);
    let names = |v: Vec<(String, ChannelState)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(
        names(s.channels("chat:", None, 2).unwrap()),
        ["chat:a", "chat:b"]
    );
    assert_eq!(
        names(s.channels("chat:", Some("chat:b"), 2).unwrap()),
        ["chat:c", "chat:d"]
    );
    assert!(s.channels("chat:", Some("chat:d"), 2).unwrap().is_empty());
    assert_eq!(
        names(s.channels("chat:", Some("a"), 1).unwrap()),
        ["chat:a"]
    );
    assert!(s.channels("chat:", Some("zz"), 5).unwrap().is_empty());
    assert_eq!(s.channels("", None, 100).unwrap().len(), 8);
    assert!(s.channels("chat:", None, 0).unwrap().is_empty());
    let b = &s.channels("chat:b", None, 1).unwrap()[0];
    assert_eq!((b.1.head, b.1.oldest), (2, Some(1)));
    // walking with the cursor visits each exactly once
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let page = s.channels("", after.as_deref(), 3).unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|(n, _)| n.clone());
        seen.extend(names(page));
    }
    assert_eq!(
        seen,
        ["a:1", "chat:a", "chat:b", "chat:c", "chat:d", "chat;x", "chatz", "z"]
    );
}

fn garble(dir: &Path) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for name in ["conf", "db"] {
        let p = dir.join(name);
        let len = std::fs::metadata(&p)
            .map(|m| m.len())
            .unwrap_or(4096)
            .max(4096) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        std::fs::write(&p, bytes).unwrap();
    }
}

#[test]
fn corrupt_store_is_moved_aside_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h");
    let old_epoch = {
        let s = open(&p);
        let e = s.channel_state("c").unwrap().epoch;
        fill(&s, "c", 10, |o| o);
        s.close().unwrap();
        e
    };
    garble(&p);
    let (s, report) = Store::open(&cfg(&p)).unwrap();
    let aside = report.moved_aside.expect("moved aside");
    assert!(aside.is_dir(), "{aside:?} exists");
    assert!(aside
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("h.corrupt-"));
    let st = s.channel_state("c").unwrap();
    assert_ne!(st.epoch, old_epoch);
    assert_eq!((st.head, st.oldest), (0, None));
    s.append("c", &msg(1, 0), None).unwrap();
    assert_eq!(s.range("c", 0, 10).unwrap().len(), 1);
}

#[test]
fn wrong_format_marker_is_treated_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h");
    {
        let db = sled::open(&p).unwrap();
        db.insert(keys::FORMAT_KEY, &b"999"[..]).unwrap();
        db.flush().unwrap();
    }
    let (s, report) = Store::open(&cfg(&p)).unwrap();
    assert!(report.moved_aside.is_some());
    assert_eq!(s.channel_state("c").unwrap().head, 0);
}

#[test]
fn locked_store_is_not_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h");
    let s = open(&p);
    s.channel_state("c").unwrap();
    // sled holds an exclusive flock on `db`; a second open must fail without moving the dir.
    let second = Store::open(&cfg(&p));
    assert!(
        matches!(second, Err(HistoryError::Unavailable { .. })),
        "{:?}",
        second.err()
    );
    assert!(p.is_dir());
    assert!(s.peek_state("c").unwrap().is_some());
}

#[test]
fn corrupt_value_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h");
    {
        let s = open(&p);
        fill(&s, "c", 2, |o| o);
        s.close().unwrap();
    }
    {
        let db = sled::open(&p).unwrap();
        db.open_tree("messages")
            .unwrap()
            .insert(keys::message_key("c", 2), &b"\x01\x02"[..])
            .unwrap();
        db.open_tree("cursors")
            .unwrap()
            .insert("k", &b"abc"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let s = open(&p);
    assert!(matches!(
        s.range("c", 0, 10),
        Err(HistoryError::Corrupt { .. })
    ));
    assert_eq!(s.range("c", 0, 1).unwrap().len(), 1);
    assert!(matches!(
        s.get_cursor("k"),
        Err(HistoryError::Corrupt { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_durable_waiters_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("h"));
    let mut tasks = Vec::new();
    for t in 0..50u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let ch = format!("c{t}");
            for o in 1..=20 {
                s.append(&ch, &msg(o, 0), None).unwrap();
                s.durable().await.unwrap();
            }
        }));
    }
    let waiters: Vec<_> = (0..2000).map(|_| s.durable()).collect();
    for w in waiters {
        w.await.unwrap();
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(s.flush_count() < 1500, "flushes: {}", s.flush_count());
}

#[tokio::test]
async fn group_commit_batches_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&dir.path().join("h"));
    c.group_commit = Duration::from_millis(20);
    let (s, _) = Store::open(&c).unwrap();
    let before = s.flush_count();
    let n = 1000u64;
    let mut waiters = Vec::new();
    for o in 1..=n {
        s.append("c", &msg(o, 0), None).unwrap();
        waiters.push(s.durable());
    }
    waiters.push(s.durable());
    for w in waiters {
        w.await.unwrap();
    }
    let flushes = s.flush_count() - before;
    assert!(
        flushes >= 1 && flushes < n / 10,
        "{flushes} flushes for {n} appends"
    );
    // ZERO window still works and answers
    c.path = dir.path().join("h0");
    c.group_commit = Duration::ZERO;
    let (s0, _) = Store::open(&c).unwrap();
    s0.append("c", &msg(1, 0), None).unwrap();
    s0.durable().await.unwrap();
    assert!(s0.flush_count() >= 1);
}

#[tokio::test]
async fn durable_after_close_and_drop_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&dir.path().join("h"));
    c.group_commit = Duration::from_millis(200);
    let (s, _) = Store::open(&c).unwrap();
    let pending = s.durable();
    s.close().unwrap(); // answers the pending waiter before stopping
    pending.await.unwrap();
    assert!(matches!(s.durable().await, Err(HistoryError::Closed)));
    // dropping the last clone stops the thread and answers pending waiters
    let (s2, _) = Store::open(&StoreConfig {
        path: dir.path().join("h2"),
        ..c
    })
    .unwrap();
    let w = s2.durable();
    drop(s2);
    w.await.unwrap();
}

#[test]
fn durable_is_usable_without_a_runtime_thread() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("h"));
    s.append("c", &msg(1, 0), None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(s.durable()).unwrap();
    assert!(s.size_on_disk().unwrap() > 0);
}

#[test]
fn an_io_error_at_open_leaves_the_store_alone() {
    // A path whose parent is a regular file: an I/O error (not a directory) that says nothing about
    // any store. Before, every such error counted as corruption and the path was renamed aside.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"an operator's file").unwrap();
    let err = Store::open(&cfg(&file.join("h")))
        .err()
        .expect("open fails");
    assert!(matches!(err, HistoryError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("left untouched"), "{err}");
    // A store that exists and is healthy, opened with a path that is a file: refused, file untouched.
    let err = Store::open(&cfg(&file)).err().expect("open fails");
    assert!(matches!(err, HistoryError::Unavailable { .. }), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"an operator's file");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["not-a-dir".to_string()],
        "nothing was moved aside"
    );
}

#[tokio::test]
async fn after_a_failed_flush_the_store_refuses_writes_and_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("h"));
    s.append("c", &msg(1, 0), None).unwrap();
    s.durable().await.unwrap();
    s.health().unwrap();
    s.inject_flush_fault(FlushFault::Error);
    s.append("c", &msg(2, 0), None).unwrap();
    assert!(matches!(s.durable().await, Err(HistoryError::Failed(_))));
    assert!(matches!(s.health(), Err(HistoryError::Failed(_))));
    assert!(
        matches!(s.durable().await, Err(HistoryError::Failed(_))),
        "later waiters fail at once instead of waiting for a flush that cannot be trusted"
    );
    assert!(
        matches!(
            s.append("c", &msg(3, 0), None),
            Err(HistoryError::Failed(_))
        ),
        "no new write is accepted"
    );
}

#[tokio::test]
async fn a_dead_flusher_fails_every_waiter_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("h"));
    s.inject_flush_fault(FlushFault::Panic);
    let first = tokio::time::timeout(Duration::from_secs(5), s.durable())
        .await
        .expect("the waiter of the dying flush is answered");
    assert!(matches!(first, Err(HistoryError::FlusherGone)), "{first:?}");
    let later = tokio::time::timeout(Duration::from_secs(5), s.durable())
        .await
        .expect("a later waiter is answered at once");
    assert!(matches!(later, Err(HistoryError::FlusherGone)), "{later:?}");
    assert!(s.health().is_err());
    assert!(s.append("c", &msg(1, 0), None).is_err());
}

#[test]
fn count_range_counts_by_seq_and_scans_messages_stored_before_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("h"));
    fill(&s, "c", 10, |o| o);
    // Numbered 1..=10 in the epoch: a count is two lookups.
    let seq_of = |o: u64| {
        let v = s
            .inner
            .messages
            .get(super::keys::message_key("c", o))
            .unwrap()
            .unwrap();
        super::keys::message_seq(&v).unwrap()
    };
    assert_eq!((seq_of(1), seq_of(10)), (Some(1), Some(10)));
    assert_eq!(s.count_range("c", 3, 10).unwrap(), 7);
    // A channel written in the old format (V1 meta and messages, no seq), with a hole in its offsets.
    let meta = super::keys::Meta {
        epoch: "old".into(),
        head: 9,
        count: None,
    };
    s.inner
        .meta
        .insert("v1", super::keys::encode_meta(&meta))
        .unwrap();
    for o in [1u64, 2, 5, 9] {
        let v = super::keys::encode_message(&format!("m{o}"), o, None, None, b"\x01");
        s.inner
            .messages
            .insert(super::keys::message_key("v1", o), v)
            .unwrap();
    }
    assert_eq!(s.count_range("v1", 0, 9).unwrap(), 4);
    assert_eq!(s.count_range("v1", 2, 9).unwrap(), 2);
    // New messages of an old epoch stay unnumbered; counting still scans.
    s.append("v1", &msg(10, 10), None).unwrap();
    assert_eq!(s.count_range("v1", 2, 10).unwrap(), 3);
}
