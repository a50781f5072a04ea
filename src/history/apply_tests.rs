//! Tests of [`Store::apply`] and the local log's tree: the apply decision is a function of the log.

use std::time::Duration;

use super::*;

fn store(dir: &std::path::Path) -> Store {
    let (s, _) = Store::open(&StoreConfig {
        path: dir.join("h"),
        group_commit: Duration::from_millis(1),
        cache_bytes: 8 << 20,
    })
    .unwrap();
    s
}

fn publish(id: &str, ts: u64, publisher: &str, key: Option<&str>, data: &[u8]) -> Entry {
    Entry {
        id: id.into(),
        ts,
        channel: "c".into(),
        publisher: publisher.into(),
        from: None,
        key: key.map(Into::into),
        kind: EntryKind::Publish {
            data: data.to_vec(),
        },
    }
}

const WINDOW: u64 = 1_000;

impl Store {
    /// Applies at `index` of the single shard of a local log.
    fn apply_dense(&self, index: u64, entry: &Entry, window: u64) -> Result<Applied, HistoryError> {
        self.apply(Position::new(0, index), &Placement::Dense, entry, window)
    }
}

#[test]
fn offsets_follow_the_log_and_positions_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let a = s
        .apply_dense(1, &publish("A", 10, "u", None, b"\x01"), WINDOW)
        .unwrap();
    assert_eq!(
        a,
        Applied::Message {
            epoch: "A".into(),
            offset: 1
        },
        "a channel's first entry names its epoch"
    );
    assert_eq!(
        s.apply_dense(1, &publish("A", 10, "u", None, b"\x01"), WINDOW)
            .unwrap(),
        Applied::AlreadyApplied,
        "a re-delivered position is skipped"
    );
    let b = s
        .apply_dense(5, &publish("B", 11, "u", None, b"\x02"), WINDOW)
        .unwrap();
    assert_eq!(
        b,
        Applied::Message {
            epoch: "A".into(),
            offset: 2
        }
    );
    assert_eq!(s.applied_position(0).unwrap(), 5);
    assert_eq!(
        s.apply_dense(3, &publish("C", 12, "u", None, b"\x03"), WINDOW)
            .unwrap(),
        Applied::AlreadyApplied,
        "positions below the applied one are skipped too"
    );
    assert_eq!(s.range("c", 0, 10).unwrap().len(), 2);
}

#[test]
fn idempotency_is_decided_from_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.apply_dense(1, &publish("A", 100, "alice", Some("k"), b"\x01"), WINDOW)
        .unwrap();
    assert_eq!(
        s.apply_dense(2, &publish("B", 200, "alice", Some("k"), b"\x01"), WINDOW)
            .unwrap(),
        Applied::Duplicate {
            id: "A".into(),
            epoch: "A".into(),
            offset: 1
        }
    );
    assert_eq!(
        s.apply_dense(3, &publish("C", 300, "alice", Some("k"), b"\x09"), WINDOW)
            .unwrap(),
        Applied::Conflict
    );
    assert!(
        matches!(
            s.apply_dense(4, &publish("D", 300, "bob", Some("k"), b"\x09"), WINDOW)
                .unwrap(),
            Applied::Message { offset: 2, .. }
        ),
        "another publisher's key is another key"
    );
    // The window is measured against the entry's timestamp, not the clock of the applying node.
    assert!(matches!(
        s.apply_dense(
            5,
            &publish("E", 100 + WINDOW, "alice", Some("k"), b"\x01"),
            WINDOW
        )
        .unwrap(),
        Applied::Message { offset: 3, .. }
    ));
    assert_eq!(
        s.applied_position(0).unwrap(),
        5,
        "refused entries are applied positions too"
    );
}

#[test]
fn a_reset_entry_starts_the_epoch_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.apply_dense(1, &publish("A", 1, "u", None, b"\x01"), WINDOW)
        .unwrap();
    let reset = Entry {
        kind: EntryKind::Reset,
        ..publish("R", 2, "admin", None, b"")
    };
    assert_eq!(
        s.apply_dense(2, &reset, WINDOW).unwrap(),
        Applied::Reset { epoch: "R".into() }
    );
    assert_eq!(
        s.apply_dense(2, &reset, WINDOW).unwrap(),
        Applied::AlreadyApplied
    );
    assert_eq!(
        s.apply_dense(3, &publish("B", 3, "u", None, b"\x02"), WINDOW)
            .unwrap(),
        Applied::Message {
            epoch: "R".into(),
            offset: 1
        }
    );
}

#[test]
fn the_local_log_tree_reads_and_trims_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    for p in 1..=5 {
        let e = publish(&format!("E{p}"), p, "u", None, b"\x01");
        s.log_put(p, &e.encode().unwrap()).unwrap();
    }
    assert_eq!(s.log_last().unwrap(), Some(5));
    let got: Vec<u64> = s
        .log_range(2, 4, 10)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(got, vec![2, 3, 4]);
    assert_eq!(s.log_range(2, 4, 10).unwrap()[0].1.id, "E2");
    assert_eq!(s.log_trim(3).unwrap(), 3);
    assert_eq!(s.log_range(1, 5, 10).unwrap().len(), 2);
}

#[test]
fn a_cluster_log_places_messages_and_each_shard_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let at = |offset: u64, epoch: &str| Placement::At {
        offset,
        epoch: epoch.into(),
    };
    // Offsets and the epoch come from the log, gaps and all.
    let a = s
        .apply(
            Position::new(3, 7),
            &at(8, "G1"),
            &publish("A", 1, "u", None, b"\x01"),
            WINDOW,
        )
        .unwrap();
    assert_eq!(
        a,
        Applied::Message {
            epoch: "G1".into(),
            offset: 8
        }
    );
    let b = s
        .apply(
            Position::new(3, 20),
            &at(21, "G1"),
            &publish("B", 2, "u", None, b"\x02"),
            WINDOW,
        )
        .unwrap();
    assert_eq!(
        b,
        Applied::Message {
            epoch: "G1".into(),
            offset: 21
        }
    );
    assert_eq!(
        s.count_range("c", 0, 21).unwrap(),
        2,
        "counted, not subtracted"
    );
    // Positions are per shard: index 20 of shard 3 is applied, index 5 of shard 1 is not.
    assert_eq!(
        s.apply(
            Position::new(3, 20),
            &at(21, "G1"),
            &publish("B", 2, "u", None, b"\x02"),
            WINDOW
        )
        .unwrap(),
        Applied::AlreadyApplied
    );
    assert_eq!(
        (
            s.applied_position(3).unwrap(),
            s.applied_position(1).unwrap()
        ),
        (20, 0)
    );
    // An offset at or below the channel's head is refused (the log broke its promise), not applied.
    assert!(s
        .apply(
            Position::new(3, 21),
            &at(21, "G1"),
            &publish("C", 3, "u", None, b"\x03"),
            WINDOW
        )
        .is_err());
    // A new generation of the shard: the old history goes, the channel continues in the new epoch.
    let d = s
        .apply(
            Position::new(3, 22),
            &at(1, "G2"),
            &publish("D", 4, "u", None, b"\x04"),
            WINDOW,
        )
        .unwrap();
    assert_eq!(
        d,
        Applied::Message {
            epoch: "G2".into(),
            offset: 1
        }
    );
    let st = s.channel_state("c").unwrap();
    assert_eq!((st.epoch.as_str(), st.head, st.oldest), ("G2", 1, Some(1)));
}

#[test]
fn retention_by_length_counts_messages_not_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    for k in 1..=5u64 {
        let placement = Placement::At {
            offset: k * 256,
            epoch: "G".into(),
        };
        let id = format!("M{k}");
        s.apply(
            Position::new(0, k * 256),
            &placement,
            &publish(&id, k, "u", None, b"\x01"),
            WINDOW,
        )
        .unwrap();
    }
    let keep = |n| crate::history::Retention {
        max_len: n,
        max_age: None,
    };
    // Offsets 256..1280: a subtraction would keep everything above 1280 - 2 (one message).
    assert_eq!(s.trim("c", &keep(2), 0, None).unwrap(), 3);
    let kept: Vec<u64> = s
        .range("c", 0, 10)
        .unwrap()
        .iter()
        .map(|m| m.offset)
        .collect();
    assert_eq!(kept, [1024, 1280]);
}
