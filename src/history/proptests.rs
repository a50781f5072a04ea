//! Model-based property test: random append / trim / range / reset sequences on a real store agree
//! with a simple in-memory model (a `VecDeque` per channel).
//!
//! Exists because retention, floors and resets interact in ways example tests miss.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    Append {
        ch: usize,
        ts: u64,
        len: usize,
        idem: bool,
    },
    Trim {
        ch: usize,
        max_len: u64,
        max_age: Option<u64>,
        now: u64,
        floor: Option<u64>,
    },
    Range {
        ch: usize,
        after: u64,
        limit: usize,
    },
    Reset {
        ch: usize,
    },
    Reopen,
}

const CHANNELS: [&str; 3] = ["a", "ab", "b"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..1000u64, 0..16usize, any::<bool>())
            .prop_map(|(ch, ts, len, idem)| Op::Append { ch, ts, len, idem }),
        2 => (0..3usize, 0..12u64, proptest::option::of(0..800u64), 0..1500u64, proptest::option::of(0..30u64))
            .prop_map(|(ch, max_len, max_age, now, floor)| Op::Trim { ch, max_len, max_age, now, floor }),
        3 => (0..3usize, 0..30u64, 0..8usize).prop_map(|(ch, after, limit)| Op::Range { ch, after, limit }),
        1 => (0..3usize).prop_map(|ch| Op::Reset { ch }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    head: u64,
    msgs: VecDeque<StoredMessage>,
}

impl Model {
    /// Same rule as the store: remove a leading run below the floor that is over size or too old.
    fn trim(&mut self, max_len: u64, max_age: Option<u64>, now: u64, floor: Option<u64>) -> u64 {
        let keep_from = (self.head + 1).saturating_sub(max_len);
        let cutoff = max_age.map(|a| now.saturating_sub(a));
        let mut n = 0;
        while let Some(m) = self.msgs.front() {
            let below_floor = floor.is_none_or(|f| m.offset < f);
            let drop = below_floor && (m.offset < keep_from || cutoff.is_some_and(|c| m.ts_ms < c));
            if !drop {
                break;
            }
            self.msgs.pop_front();
            n += 1;
        }
        n
    }
}

fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        path: dir.path().join("h"),
        group_commit: Duration::ZERO,
        cache_bytes: 1 << 20,
    };
    let mut store = Some(Store::open(&cfg).unwrap().0);
    let mut model: HashMap<usize, Model> = HashMap::new();
    let mut epochs: HashMap<usize, String> = HashMap::new();
    for (i, op) in ops.into_iter().enumerate() {
        let s = store.as_ref().unwrap();
        match op {
            Op::Append { ch, ts, len, idem } => {
                let m = model.entry(ch).or_default();
                let msg = StoredMessage {
                    offset: m.head + 1,
                    id: format!("id{i}"),
                    ts_ms: ts,
                    from: (len % 3 == 0).then(|| "u".to_string()),
                    data: vec![i as u8; len],
                };
                let key = format!("k{}", i % 4);
                s.append(CHANNELS[ch], &msg, idem.then_some((key.as_str(), 10_000)))
                    .unwrap();
                if idem {
                    let hit = s.idempotent(CHANNELS[ch], &key, 0).unwrap().unwrap();
                    prop_assert_eq!(hit.offset, msg.offset);
                }
                let bad = StoredMessage {
                    offset: msg.offset + 2,
                    ..msg.clone()
                };
                let refused = matches!(
                    s.append(CHANNELS[ch], &bad, None),
                    Err(HistoryError::OffsetMismatch { .. })
                );
                prop_assert!(refused);
                m.head += 1;
                m.msgs.push_back(msg);
            }
            Op::Trim {
                ch,
                max_len,
                max_age,
                now,
                floor,
            } => {
                let m = model.entry(ch).or_default();
                let r = Retention {
                    max_len,
                    max_age: max_age.map(Duration::from_millis),
                };
                let got = s.trim(CHANNELS[ch], &r, now, floor).unwrap();
                // the store does not know a channel that was never touched: nothing to trim there
                let want = m.trim(max_len, max_age, now, floor);
                prop_assert_eq!(got, want);
            }
            Op::Range { ch, after, limit } => {
                let m = model.entry(ch).or_default();
                let got = s.range(CHANNELS[ch], after, limit).unwrap();
                let want: Vec<_> = m
                    .msgs
                    .iter()
                    .filter(|x| x.offset > after)
                    .take(limit)
                    .cloned()
                    .collect();
                prop_assert_eq!(got, want);
            }
            Op::Reset { ch } => {
                let st = s.reset(CHANNELS[ch]).unwrap();
                prop_assert_eq!(st.head, 0);
                if let Some(old) = epochs.get(&ch) {
                    prop_assert_ne!(old, &st.epoch);
                }
                prop_assert_eq!(s.idempotent(CHANNELS[ch], "k0", 0).unwrap(), None);
                epochs.insert(ch, st.epoch.clone());
                model.insert(ch, Model::default());
            }
            Op::Reopen => {
                s.flush().unwrap();
                drop(store.take());
                store = Some(Store::open(&cfg).unwrap().0);
            }
        }
        // state agrees after every step
        let s = store.as_ref().unwrap();
        for (ch, m) in &model {
            let st = s.channel_state(CHANNELS[*ch]).unwrap();
            prop_assert_eq!(st.head, m.head);
            prop_assert_eq!(st.oldest, m.msgs.front().map(|x| x.offset));
            if let Some(old) = epochs.get(ch) {
                prop_assert_eq!(old, &st.epoch, "epoch changes only on reset");
            }
            epochs.insert(*ch, st.epoch);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_model(ops in proptest::collection::vec(op(), 1..60)) {
        check(ops)?;
    }
}
