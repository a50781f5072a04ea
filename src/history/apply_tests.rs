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

#[test]
fn offsets_follow_the_log_and_positions_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let a = s
        .apply(1, &publish("A", 10, "u", None, b"\x01"), WINDOW)
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
        s.apply(1, &publish("A", 10, "u", None, b"\x01"), WINDOW)
            .unwrap(),
        Applied::AlreadyApplied,
        "a re-delivered position is skipped"
    );
    let b = s
        .apply(5, &publish("B", 11, "u", None, b"\x02"), WINDOW)
        .unwrap();
    assert_eq!(
        b,
        Applied::Message {
            epoch: "A".into(),
            offset: 2
        }
    );
    assert_eq!(s.applied_position().unwrap(), 5);
    assert_eq!(
        s.apply(3, &publish("C", 12, "u", None, b"\x03"), WINDOW)
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
    s.apply(1, &publish("A", 100, "alice", Some("k"), b"\x01"), WINDOW)
        .unwrap();
    assert_eq!(
        s.apply(2, &publish("B", 200, "alice", Some("k"), b"\x01"), WINDOW)
            .unwrap(),
        Applied::Duplicate {
            id: "A".into(),
            epoch: "A".into(),
            offset: 1
        }
    );
    assert_eq!(
        s.apply(3, &publish("C", 300, "alice", Some("k"), b"\x09"), WINDOW)
            .unwrap(),
        Applied::Conflict
    );
    assert!(
        matches!(
            s.apply(4, &publish("D", 300, "bob", Some("k"), b"\x09"), WINDOW)
                .unwrap(),
            Applied::Message { offset: 2, .. }
        ),
        "another publisher's key is another key"
    );
    // The window is measured against the entry's timestamp, not the clock of the applying node.
    assert!(matches!(
        s.apply(
            5,
            &publish("E", 100 + WINDOW, "alice", Some("k"), b"\x01"),
            WINDOW
        )
        .unwrap(),
        Applied::Message { offset: 3, .. }
    ));
    assert_eq!(
        s.applied_position().unwrap(),
        5,
        "refused entries are applied positions too"
    );
}

#[test]
fn a_reset_entry_starts_the_epoch_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.apply(1, &publish("A", 1, "u", None, b"\x01"), WINDOW)
        .unwrap();
    let reset = Entry {
        kind: EntryKind::Reset,
        ..publish("R", 2, "admin", None, b"")
    };
    assert_eq!(
        s.apply(2, &reset, WINDOW).unwrap(),
        Applied::Reset { epoch: "R".into() }
    );
    assert_eq!(s.apply(2, &reset, WINDOW).unwrap(), Applied::AlreadyApplied);
    assert_eq!(
        s.apply(3, &publish("B", 3, "u", None, b"\x02"), WINDOW)
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
