//! The workload of a check: numbered publishers and resuming subscribers, all herald-client, recording
//! everything they see.
//!
//! Each publisher numbers its messages per channel (`{"p": publisher, "s": seq}`) and has one publish in
//! flight per channel, so its own order is defined: seq n+1 is sent only after n was answered (or
//! failed). Every acknowledgement `(id, epoch, offset)` is recorded. Subscribers subscribe to every
//! channel before the first publish and never unsubscribe; herald-client resumes them after every
//! reconnect and suppresses what it already handed over. Every message handed to the application is
//! recorded, with the time, for [`crate::analysis`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use herald_client::{BackoffPolicy, Client, ClientOptions, SubscriptionEvent};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::analysis::{Ack, Attempt, Delivery, Event, Records};

/// Records of one run, shared by every task.
pub struct Recorder {
    records: Mutex<Records>,
    t0: Instant,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            records: Mutex::new(Records::default()),
            t0: Instant::now(),
        }
    }
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    /// A fault the scenario injects.
    pub fn fault(&self, what: impl Into<String>) {
        let at_ms = self.now_ms();
        let what = what.into();
        tracing::info!(at_ms, %what, "fault");
        self.lock().events.push(Event::Fault { what, at_ms });
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Records {
        self.lock().clone()
    }
}

/// How much load.
#[derive(Debug, Clone)]
pub struct Load {
    pub publishers: u32,
    pub subscribers: u32,
    pub channels: Vec<String>,
    /// Messages per second per publisher and channel.
    pub rate: u32,
}

/// Why the workload could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("client: {0}")]
    Client(#[from] herald_client::Error),
}

fn options() -> ClientOptions {
    ClientOptions {
        backoff: BackoffPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(2),
            max_attempts: None,
        },
        connect_timeout: Duration::from_secs(3),
        // A publish is re-sent (same idempotency key) across reconnects until answered.
        command_retries: 20,
        event_buffer: 4096,
        ..ClientOptions::default()
    }
}

/// A running workload.
pub struct Running {
    stop: watch::Sender<bool>,
    publishers: Vec<JoinHandle<()>>,
    subscriber_tasks: Vec<JoinHandle<()>>,
    pub clients: Vec<Client>,
    /// Subscribers that pause reading (see [`Running::stall`]).
    stalls: Vec<watch::Sender<Option<Duration>>>,
}

/// Starts subscribers (subscribed before anything is published), then publishers.
pub async fn start(
    urls: &[String],
    load: &Load,
    rec: &Arc<Recorder>,
) -> Result<Running, WorkloadError> {
    let (stop, stopped) = watch::channel(false);
    let mut running = Running {
        stop,
        publishers: Vec::new(),
        subscriber_tasks: Vec::new(),
        clients: Vec::new(),
        stalls: Vec::new(),
    };
    for s in 0..load.subscribers {
        let (client, _states) =
            Client::connect_any(urls.to_vec(), herald_client::no_token(), options()).await?;
        let (stall_tx, stall_rx) = watch::channel(None);
        for channel in &load.channels {
            let sub = client.subscribe(channel.clone()).await?;
            rec.lock().subscriptions.push((s, channel.clone()));
            let rec = rec.clone();
            let channel = channel.clone();
            let mut stall_rx = stall_rx.clone();
            running.subscriber_tasks.push(tokio::spawn(async move {
                let mut sub = sub;
                loop {
                    let stalled = *stall_rx.borrow_and_update();
                    if let Some(pause) = stalled {
                        tokio::time::sleep(pause).await;
                    }
                    let Some(ev) = sub.next_event().await else {
                        return;
                    };
                    match ev {
                        SubscriptionEvent::Message(m) => {
                            let data = m.data_json().unwrap_or_default();
                            let at_ms = rec.now_ms();
                            rec.lock().deliveries.push(Delivery {
                                subscriber: s,
                                channel: channel.clone(),
                                publisher: data["p"].as_u64().unwrap_or(u64::MAX) as u32,
                                seq: data["s"].as_u64().unwrap_or(0),
                                id: m.id,
                                epoch: m.epoch,
                                offset: m.offset,
                                at_ms,
                            });
                        }
                        SubscriptionEvent::NotRecovered { .. } => {
                            let at_ms = rec.now_ms();
                            rec.lock().events.push(Event::NotRecovered {
                                subscriber: s,
                                channel: channel.clone(),
                                at_ms,
                            });
                        }
                        SubscriptionEvent::Ended(e) => {
                            tracing::warn!(subscriber = s, %channel, error = %e, "subscription ended");
                            return;
                        }
                        _ => {}
                    }
                }
            }));
        }
        running.stalls.push(stall_tx);
        running.clients.push(client);
    }
    for p in 0..load.publishers {
        let (client, _states) =
            Client::connect_any(urls.to_vec(), herald_client::no_token(), options()).await?;
        for channel in &load.channels {
            let client = client.clone();
            let rec = rec.clone();
            let channel = channel.clone();
            let mut stopped = stopped.clone();
            let every = Duration::from_secs_f64(1.0 / f64::from(load.rate.max(1)));
            running.publishers.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut seq = 0u64;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped.changed() => return,
                    }
                    if *stopped.borrow() {
                        return;
                    }
                    seq += 1;
                    rec.lock().attempts.push(Attempt {
                        publisher: p,
                        channel: channel.clone(),
                        seq,
                    });
                    let res = client
                        .publish(channel.clone(), &json!({"p": p, "s": seq}))
                        .await;
                    let at_ms = rec.now_ms();
                    match res {
                        Ok(ack) => rec.lock().acks.push(Ack {
                            publisher: p,
                            channel: channel.clone(),
                            seq,
                            id: ack.id,
                            epoch: ack.epoch,
                            offset: ack.offset,
                            at_ms,
                        }),
                        Err(e) => rec.lock().events.push(Event::PublishFailed {
                            publisher: p,
                            channel: channel.clone(),
                            seq,
                            error: e.to_string(),
                            at_ms,
                        }),
                    }
                }
            }));
        }
        running.clients.push(client);
    }
    Ok(running)
}

impl Running {
    /// Stops publishing and waits for the publishes in flight to be answered.
    pub async fn stop_publishing(&mut self) {
        let _ = self.stop.send(true);
        for p in self.publishers.drain(..) {
            let _ = p.await;
        }
    }

    /// Makes subscriber `s` stop reading for `pause` (from its next event on).
    pub fn stall(&self, s: usize, pause: Duration) {
        if let Some(tx) = self.stalls.get(s) {
            let _ = tx.send(Some(pause));
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                let _ = tx.send(None);
            });
        }
    }

    /// How many subscriber clients there are.
    pub fn subscribers(&self) -> usize {
        self.stalls.len()
    }

    /// Whether every client is connected now.
    pub fn all_connected(&self) -> bool {
        self.clients.iter().all(Client::is_connected)
    }

    /// Closes every client.
    pub async fn close(self) {
        for c in &self.clients {
            c.close().await;
        }
        for t in self.subscriber_tasks {
            t.abort();
        }
    }
}
