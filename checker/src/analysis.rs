//! The records of one checker run and the counters computed from them.
//!
//! herald promises that every message of a channel reaches every subscriber once, in one order (offset
//! order), across reconnects and crashes. This module turns that promise into numbers: the workload
//! records what the server acknowledged (`Ack`), what was sent (`Attempt`), what each subscriber's
//! client handed to the application (`Delivery`) and what happened around it (`Event`); [`analyze`]
//! then counts, per channel, the messages that were lost, duplicated, reordered, never published or
//! altered. A run is only good when all of those are zero ([`ChannelReport::is_clean`]).
//!
//! Rules worth knowing when reading a report:
//! - A subscriber's deliveries are judged in the order they appear in `Records::deliveries` (the order
//!   its client handed them over), not sorted by time.
//! - A repeated (publisher, seq) at one subscriber counts once in `duplicated` and is left out of the
//!   order and content checks, so one fault moves one counter. A delivery of a never-published
//!   (publisher, seq) counts in `unexpected` and is likewise left out of the order check.
//! - A subscriber with a NotRecovered event on a channel did not stay subscribed throughout: it is
//!   counted in `not_recovered` and left out of `lost` and `converge_ms`.
//! - [`self_test`] injects each kind of fault into a clean synthetic run, so the checker itself is
//!   checked: a counter that stays zero when it should not would make every clean report worthless.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// How many examples a report keeps per kind.
pub const MAX_EXAMPLES: usize = 10;

/// A publish the server acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub publisher: u32,
    pub channel: String,
    pub seq: u64,
    pub id: String,
    pub epoch: String,
    pub offset: u64,
    pub at_ms: u64,
}

/// A publish that was sent at least once, acknowledged or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub publisher: u32,
    pub channel: String,
    pub seq: u64,
}

/// A message handed to the application by a subscriber's client; publisher and seq come from the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub subscriber: u32,
    pub channel: String,
    pub publisher: u32,
    pub seq: u64,
    pub id: String,
    pub epoch: String,
    pub offset: u64,
    pub at_ms: u64,
}

/// Something that happened during the run besides publishes and deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A resume was answered with recovered:false.
    NotRecovered {
        subscriber: u32,
        channel: String,
        at_ms: u64,
    },
    /// A publish attempt failed (it may have been retried and acknowledged later).
    PublishFailed {
        publisher: u32,
        channel: String,
        seq: u64,
        error: String,
        at_ms: u64,
    },
    /// A fault the scenario injected.
    Fault { what: String, at_ms: u64 },
}

/// Everything recorded during one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Records {
    pub acks: Vec<Ack>,
    pub attempts: Vec<Attempt>,
    pub deliveries: Vec<Delivery>,
    pub events: Vec<Event>,
    /// (subscriber, channel): subscribed from the start, never unsubscribed.
    pub subscriptions: Vec<(u32, String)>,
}

/// An acknowledged message a subscriber that stayed subscribed never got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostExample {
    pub subscriber: u32,
    pub publisher: u32,
    pub seq: u64,
}

/// A delivery that came out of order, and the delivery before it at the same subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReorderExample {
    pub delivered: Delivery,
    pub previous: Option<Delivery>,
}

/// The counters of one channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelReport {
    pub channel: String,
    /// Subscribers of the channel (subscribed, or delivered to).
    pub subscribers: u64,
    /// Subscribers left out of `lost` and `converge_ms` because a resume was not recovered.
    pub excluded_subscribers: Vec<u32>,
    /// Distinct (publisher, seq) sent at least once.
    pub attempted: u64,
    /// Distinct (publisher, seq) acknowledged.
    pub acked: u64,
    /// Deliveries in total.
    pub delivered: u64,
    /// (subscriber, message) pairs: acknowledged, never delivered to a subscriber that stayed.
    pub lost: u64,
    /// Distinct acknowledged messages missing at at least one subscriber that stayed.
    pub lost_messages: u64,
    pub lost_examples: Vec<LostExample>,
    /// Copies of a (publisher, seq) at one subscriber beyond the first.
    pub duplicated: u64,
    /// Deliveries behind the previous one (same epoch, offset not higher) or behind their publisher.
    pub reordered: u64,
    pub reorder_examples: Vec<ReorderExample>,
    /// Deliveries of a (publisher, seq) that was never published.
    pub unexpected: u64,
    /// Deliveries of an acknowledged message whose id, epoch or offset differ from every ack of it.
    pub mismatched: u64,
    /// NotRecovered events on this channel.
    pub not_recovered: u64,
    /// PublishFailed events on this channel (retried and acknowledged later still counts).
    pub failed_publishes: u64,
    /// From the last fault (or the first ack) until every subscriber that stayed had every acked
    /// message; None if one never did.
    pub converge_ms: Option<u64>,
}

impl ChannelReport {
    /// The counters that must be zero for the channel to keep herald's promise.
    pub fn must_be_zero(&self) -> [(&'static str, u64); 6] {
        [
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("reordered", self.reordered),
            ("unexpected", self.unexpected),
            ("mismatched", self.mismatched),
            ("not_recovered", self.not_recovered),
        ]
    }

    /// True when every counter of [`Self::must_be_zero`] is zero.
    pub fn is_clean(&self) -> bool {
        self.must_be_zero().iter().all(|(_, n)| *n == 0)
    }
}

/// The result of one scenario run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub duration_ms: u64,
    pub channels: Vec<ChannelReport>,
    pub ok: bool,
}

impl Report {
    /// Analyzes `records`; `ok` when every channel [`is_clean`](ChannelReport::is_clean).
    pub fn new(scenario: impl Into<String>, duration_ms: u64, records: &Records) -> Self {
        let channels = analyze(records);
        let ok = channels.iter().all(ChannelReport::is_clean);
        Self {
            scenario: scenario.into(),
            duration_ms,
            channels,
            ok,
        }
    }

    /// A counter (a `must_be_zero` name or `lost_messages`) summed over all channels.
    pub fn total(&self, counter: &str) -> u64 {
        self.channels
            .iter()
            .map(|c| match counter {
                "lost_messages" => c.lost_messages,
                _ => c
                    .must_be_zero()
                    .iter()
                    .find(|(n, _)| *n == counter)
                    .map_or(0, |(_, v)| *v),
            })
            .sum()
    }
}

type Key = (u32, u64);

/// Counts per channel, sorted by channel name.
pub fn analyze(records: &Records) -> Vec<ChannelReport> {
    let mut names: BTreeSet<&str> = BTreeSet::new();
    names.extend(records.acks.iter().map(|a| a.channel.as_str()));
    names.extend(records.attempts.iter().map(|a| a.channel.as_str()));
    names.extend(records.deliveries.iter().map(|d| d.channel.as_str()));
    names.extend(records.subscriptions.iter().map(|(_, c)| c.as_str()));
    let mut last_fault = None;
    for e in &records.events {
        match e {
            Event::NotRecovered { channel, .. } | Event::PublishFailed { channel, .. } => {
                names.insert(channel);
            }
            Event::Fault { at_ms, .. } => last_fault = last_fault.max(Some(*at_ms)),
        }
    }
    let analyze_one = |name| analyze_channel(records, name, last_fault);
    names.into_iter().map(analyze_one).collect()
}

fn analyze_channel(r: &Records, name: &str, last_fault: Option<u64>) -> ChannelReport {
    let mut acks: BTreeMap<Key, Vec<&Ack>> = BTreeMap::new();
    for a in r.acks.iter().filter(|a| a.channel == name) {
        acks.entry((a.publisher, a.seq)).or_default().push(a);
    }
    let attempts = r.attempts.iter().filter(|a| a.channel == name);
    let attempts: HashSet<Key> = attempts.map(|a| (a.publisher, a.seq)).collect();
    let published: HashSet<Key> = attempts.iter().chain(acks.keys()).copied().collect();

    let mut per_sub: BTreeMap<u32, Vec<&Delivery>> = BTreeMap::new();
    for (s, _) in r.subscriptions.iter().filter(|(_, c)| c == name) {
        per_sub.entry(*s).or_default();
    }
    for d in r.deliveries.iter().filter(|d| d.channel == name) {
        per_sub.entry(d.subscriber).or_default().push(d);
    }

    let (mut not_recovered, mut failed_publishes) = (0, 0);
    let mut excluded = BTreeSet::new();
    for e in &r.events {
        match e {
            Event::NotRecovered {
                subscriber,
                channel,
                ..
            } if channel == name => {
                not_recovered += 1;
                excluded.insert(*subscriber);
            }
            Event::PublishFailed { channel, .. } if channel == name => failed_publishes += 1,
            _ => {}
        }
    }

    let first_ack = acks.values().flatten().map(|a| a.at_ms).min();
    let base = last_fault.or(first_ack).unwrap_or(0);
    let mut report = ChannelReport {
        channel: name.to_string(),
        subscribers: per_sub.len() as u64,
        excluded_subscribers: excluded.iter().copied().collect(),
        attempted: attempts.len() as u64,
        acked: acks.len() as u64,
        not_recovered,
        failed_publishes,
        ..ChannelReport::default()
    };
    let mut lost_messages: BTreeSet<Key> = BTreeSet::new();
    // The latest time a subscriber that stayed completed its set; None once one never did.
    let mut converged = Some(base);

    for (&sub, list) in &per_sub {
        let mut seen: HashSet<Key> = HashSet::new();
        let mut missing: BTreeSet<Key> = acks.keys().copied().collect();
        let mut completed_at = missing.is_empty().then_some(base);
        let mut prev: Option<&Delivery> = None;
        let mut last_seq: HashMap<u32, u64> = HashMap::new();
        for &d in list {
            report.delivered += 1;
            let key = (d.publisher, d.seq);
            if !seen.insert(key) {
                report.duplicated += 1;
                continue;
            }
            if missing.remove(&key) && missing.is_empty() {
                completed_at = Some(d.at_ms);
            }
            if !published.contains(&key) {
                report.unexpected += 1;
                continue;
            }
            let same = |a: &&Ack| a.id == d.id && a.epoch == d.epoch && a.offset == d.offset;
            if acks.get(&key).is_some_and(|acked| !acked.iter().any(same)) {
                report.mismatched += 1;
            }
            let offset_back = prev.is_some_and(|p| p.epoch == d.epoch && d.offset <= p.offset);
            let seq_back = last_seq.get(&d.publisher).is_some_and(|&s| d.seq <= s);
            if offset_back || seq_back {
                report.reordered += 1;
                if report.reorder_examples.len() < MAX_EXAMPLES {
                    let (delivered, previous) = (d.clone(), prev.cloned());
                    report.reorder_examples.push(ReorderExample {
                        delivered,
                        previous,
                    });
                }
            }
            prev = Some(d);
            last_seq.insert(d.publisher, d.seq);
        }
        if excluded.contains(&sub) {
            continue;
        }
        report.lost += missing.len() as u64;
        for &(publisher, seq) in &missing {
            lost_messages.insert((publisher, seq));
            if report.lost_examples.len() < MAX_EXAMPLES {
                let subscriber = sub;
                report.lost_examples.push(LostExample {
                    subscriber,
                    publisher,
                    seq,
                });
            }
        }
        converged = converged.zip(completed_at).map(|(a, b)| a.max(b));
    }
    report.lost_messages = lost_messages.len() as u64;
    report.converge_ms = converged.map(|t| t.saturating_sub(base));
    report
}

/// One injected fault of the self test and whether the checker saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfTestCase {
    pub name: String,
    /// The counter the case targets.
    pub counter: String,
    pub report: Report,
    pub passed: bool,
}

const SYNTH_MESSAGES: u64 = 50;
const SYNTH_FAULT_MS: u64 = 1500;

/// An acknowledged message of a synthetic run (self test, unit tests).
fn ack(channel: &str, (publisher, seq): Key, epoch: &str, offset: u64, at_ms: u64) -> Ack {
    let (id, epoch) = (format!("{channel}-{publisher}-{seq}"), epoch.to_string());
    let channel = channel.to_string();
    Ack {
        publisher,
        channel,
        seq,
        id,
        epoch,
        offset,
        at_ms,
    }
}

impl Records {
    fn publish(&mut self, a: Ack) {
        let (publisher, channel, seq) = (a.publisher, a.channel.clone(), a.seq);
        self.attempts.push(Attempt {
            publisher,
            channel,
            seq,
        });
        self.acks.push(a);
    }

    /// Hands the acknowledged messages `acks[range]` to `subscriber`, `subscriber` ms after each ack.
    fn deliver(&mut self, subscriber: u32, range: std::ops::Range<usize>) {
        for a in self.acks.get(range).unwrap_or_default() {
            let (channel, id, epoch) = (a.channel.clone(), a.id.clone(), a.epoch.clone());
            let (publisher, seq, offset) = (a.publisher, a.seq, a.offset);
            let at_ms = a.at_ms + u64::from(subscriber);
            let d = Delivery {
                subscriber,
                channel,
                publisher,
                seq,
                id,
                epoch,
                offset,
                at_ms,
            };
            self.deliveries.push(d);
        }
    }
}

/// A clean run: 2 publishers x 2 channels x 50 messages, 3 subscribers on both channels, one fault.
pub fn synthetic_run() -> Records {
    let mut r = Records::default();
    for channel in ["alpha", "beta"] {
        let first = r.acks.len();
        for (seq, publisher) in (1..=SYNTH_MESSAGES).flat_map(|s| [(s, 1u32), (s, 2)]) {
            let offset = 2 * (seq - 1) + u64::from(publisher);
            r.publish(ack(
                channel,
                (publisher, seq),
                "e1",
                offset,
                1000 + offset * 10,
            ));
        }
        for sub in 1..=3 {
            r.subscriptions.push((sub, channel.to_string()));
            r.deliver(sub, first..r.acks.len());
        }
    }
    let what = "synthetic cut".to_string();
    r.events.push(Event::Fault {
        what,
        at_ms: SYNTH_FAULT_MS,
    });
    r
}

/// The faults the self test injects, each into its own copy of the synthetic run.
#[derive(Clone, Copy)]
enum Inject {
    Clean,
    Dropped,
    Doubled,
    Swapped,
    NeverPublished,
    OtherId,
    NotRecovered,
}

impl Inject {
    /// The case's name and the counter that must read 1 (all others 0; `lost_messages` = `lost`).
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Inject::Clean => ("clean run", "none"),
            Inject::Dropped => ("dropped delivery", "lost"),
            Inject::Doubled => ("doubled delivery", "duplicated"),
            Inject::Swapped => ("adjacent deliveries swapped", "reordered"),
            Inject::NeverPublished => ("never-published seq delivered", "unexpected"),
            Inject::OtherId => ("delivery with another id than its ack", "mismatched"),
            Inject::NotRecovered => ("not recovered, then missing messages", "not_recovered"),
        }
    }

    /// Applies the fault at subscriber 2's 31st delivery on "alpha".
    fn apply(self, r: &mut Records) {
        let of = |d: &Delivery| d.subscriber == 2 && d.channel == "alpha";
        let mut at = r.deliveries.iter().enumerate().filter(|(_, d)| of(d));
        let Some((i, d)) = at.nth(30).map(|(i, d)| (i, d.clone())) else {
            return;
        };
        match self {
            Inject::Clean => {}
            Inject::Dropped => drop(r.deliveries.remove(i)),
            Inject::Doubled => r.deliveries.insert(i + 1, d),
            Inject::Swapped => r.deliveries.swap(i, i + 1),
            Inject::NeverPublished => {
                let (seq, id, at_ms) = (SYNTH_MESSAGES + 1, "never-published".into(), d.at_ms + 1);
                r.deliveries.insert(
                    i + 1,
                    Delivery {
                        seq,
                        id,
                        at_ms,
                        ..d
                    },
                );
            }
            Inject::OtherId => r.deliveries[i].id = "another-id".into(),
            Inject::NotRecovered => {
                let (channel, at_ms) = (d.channel, d.at_ms);
                r.events.push(Event::NotRecovered {
                    subscriber: 2,
                    channel,
                    at_ms,
                });
                let mut kept = 0;
                r.deliveries.retain(|d| {
                    kept += usize::from(of(d));
                    !of(d) || kept <= 31 // everything after the event is missing
                });
            }
        }
    }
}

/// Runs the checker on a clean synthetic run and on copies with one fault injected each. A case
/// passes when its counter reads exactly 1 and every other counter 0.
pub fn self_test() -> Vec<SelfTestCase> {
    use Inject::*;
    let clean = synthetic_run();
    let counters = ChannelReport::default().must_be_zero().map(|(c, _)| c);
    let run = |fault: Inject| {
        let (name, counter) = fault.describe();
        let mut records = clean.clone();
        fault.apply(&mut records);
        let report = Report::new(format!("self-test: {name}"), 0, &records);
        let expected = |c: &str| u64::from(c == counter);
        let passed = counters.iter().all(|c| report.total(c) == expected(c))
            && report.total("lost_messages") == report.total("lost")
            && report.channels.len() == 2
            && report.channels.iter().all(|c| {
                c.acked == 100 && c.subscribers == 3 && (c.lost > 0) == c.converge_ms.is_none()
            });
        let (name, counter) = (name.to_string(), counter.to_string());
        SelfTestCase {
            name,
            counter,
            report,
            passed,
        }
    };
    let faults = [
        Clean,
        Dropped,
        Doubled,
        Swapped,
        NeverPublished,
        OtherId,
        NotRecovered,
    ];
    faults.into_iter().map(run).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Publisher 1's seqs on channel "c" in `epoch`, at offset seq - `shift`, acked at 100 + seq.
    fn acks(seqs: std::ops::RangeInclusive<u64>, epoch: &str, shift: u64) -> Vec<Ack> {
        seqs.map(|s| ack("c", (1, s), epoch, s - shift, 100 + s))
            .collect()
    }

    /// Subscriber 1 on "c", which gets every message in ack order.
    fn run(acks: Vec<Ack>) -> Records {
        let mut r = Records::default();
        r.subscriptions.push((1, "c".into()));
        acks.into_iter().for_each(|a| r.publish(a));
        r.deliver(1, 0..r.acks.len());
        r
    }

    fn fault(at_ms: u64) -> Event {
        Event::Fault {
            what: "cut".into(),
            at_ms,
        }
    }

    #[test]
    fn self_test_passes() {
        let cases = self_test();
        assert_eq!(cases.len(), 7);
        for c in &cases {
            assert!(
                c.passed,
                "case {:?} ({}) failed: {:#?}",
                c.name, c.counter, c.report
            );
        }
        let json = serde_json::to_string(&cases).expect("serializable");
        let back: Vec<SelfTestCase> = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, cases);
    }

    #[test]
    fn epoch_change_resets_offset_order() {
        let mut a = acks(1..=5, "e1", 0);
        a.extend(acks(6..=8, "e2", 5)); // offsets 1..=3 again, in a new epoch
        let report = &analyze(&run(a.clone()))[0];
        assert!(report.is_clean(), "{report:#?}");
        let counts = (report.acked, report.delivered, report.converge_ms);
        assert_eq!(counts, (8, 8, Some(8))); // first ack at 101, last delivery at 109

        // Same epoch, lower offset: reordered once, even though the seq goes up.
        a[5..].iter_mut().for_each(|a| a.epoch = "e1".into());
        let report = &analyze(&run(a))[0];
        assert_eq!(report.reordered, 1, "{report:#?}");
        let example = &report.reorder_examples[0];
        let previous = example.previous.as_ref().map(|p| p.seq);
        assert_eq!((example.delivered.seq, previous), (6, Some(5)));
    }

    #[test]
    fn seq_going_back_is_reordered_and_duplicates_are_not() {
        let mut a = acks(1..=3, "e", 0);
        a.swap(1, 2);
        (a[1].offset, a[2].offset) = (2, 3); // offsets rise, seqs go 1, 3, 2
        let mut r = run(a);
        r.deliveries.push(r.deliveries[2].clone());
        let report = &analyze(&r)[0];
        let counts = (report.reordered, report.duplicated, report.mismatched);
        assert_eq!(counts, (1, 1, 0));
    }

    #[test]
    fn not_recovered_subscriber_is_excluded_from_lost_and_convergence() {
        let mut r = run(acks(1..=4, "e", 0));
        r.subscriptions.extend([(2, "c".into()), (3, "c".into())]);
        r.deliver(2, 0..1); // misses 2..=4 after its NotRecovered
        r.deliver(3, 0..3); // misses 4
        let channel = "c".to_string();
        r.events.push(Event::NotRecovered {
            subscriber: 2,
            channel,
            at_ms: 102,
        });
        let report = &analyze(&r)[0];
        let counts = (report.not_recovered, report.lost, report.lost_messages);
        assert_eq!(counts, (1, 1, 1));
        let examples: Vec<_> = report
            .lost_examples
            .iter()
            .map(|e| (e.subscriber, e.seq))
            .collect();
        assert_eq!((examples, report.converge_ms), (vec![(3, 4)], None));
        assert_eq!(report.excluded_subscribers, vec![2]);

        r.deliver(3, 3..4);
        let report = &analyze(&r)[0];
        assert_eq!((report.lost, report.converge_ms), (0, Some(6))); // 101 -> 107
        assert!(!report.is_clean(), "not_recovered must fail the run");
    }

    #[test]
    fn convergence_counts_from_the_last_fault() {
        let mut r = run(acks(1..=3, "e", 0));
        r.events.extend([fault(90), fault(102)]);
        assert_eq!(analyze(&r)[0].converge_ms, Some(2)); // completed at 104
        r.events.push(fault(500));
        assert_eq!(analyze(&r)[0].converge_ms, Some(0));
    }

    #[test]
    fn failed_publish_retried_is_counted_but_not_lost() {
        let mut r = run(acks(1..=3, "e", 0));
        let (channel, error) = ("c".to_string(), "timeout".to_string());
        let failed = Event::PublishFailed {
            publisher: 1,
            channel,
            seq: 2,
            error,
            at_ms: 1,
        };
        r.events.push(failed);
        let report = &analyze(&r)[0];
        assert_eq!((report.failed_publishes, report.lost), (1, 0));
        assert!(report.is_clean());
    }

    #[test]
    fn unacked_but_attempted_delivery_is_fine_and_offset_mismatch_is_caught() {
        let mut r = run(acks(1..=3, "e", 0));
        r.acks.retain(|a| a.seq != 3); // the ack was lost, the publish went through
        r.deliveries[1].offset = 7; // seq 2 arrives with another offset than its ack
        let report = &analyze(&r)[0];
        let counts = (report.acked, report.unexpected, report.mismatched);
        assert_eq!(counts, (2, 0, 1));
    }

    #[test]
    fn report_from_records_sorts_channels_and_sets_ok() {
        let mut r = synthetic_run();
        r.subscriptions.push((9, "aardvark".into()));
        let report = Report::new("s", 42, &r);
        let names: Vec<_> = report.channels.iter().map(|c| c.channel.as_str()).collect();
        assert_eq!(names, ["aardvark", "alpha", "beta"]);
        assert!(report.ok);
        let last = 1000 + 100 * 10 + 3;
        assert_eq!(report.channels[1].converge_ms, Some(last - SYNTH_FAULT_MS));
    }
}
