//! Shared helpers of the `client_*` integration tests: start/kill the real `herald` binary and
//! build fast-reconnecting clients.

#![allow(dead_code)]

use futures_util::StreamExt;
use herald_client::{
    BackoffPolicy, ClientOptions, ConnectionState, StateStream, Subscription, SubscriptionEvent,
};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `herald serve` process (killed on drop).
pub struct Server {
    child: Child,
    pub ws_port: u16,
}

impl Server {
    /// Starts the server on `port` (0: any) with `data_dir`, waiting for its "listening" line.
    pub fn start(data_dir: &Path, port: u16) -> Server {
        let mut last_err = String::new();
        // The port of a killed server may take a moment to be free again.
        for _ in 0..50 {
            match Self::try_start(data_dir, port) {
                Ok(s) => return s,
                Err(e) => {
                    last_err = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!("herald did not start: {last_err}");
    }

    fn try_start(data_dir: &Path, port: u16) -> Result<Server, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if line.starts_with("herald listening") {
                    let _ = tx.send(line);
                    break;
                }
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                let ws_port = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("ws="))
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("bad listening line: {line}"))?;
                Ok(Server { child, ws_port })
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err("no listening line (port busy?)".into())
            }
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.ws_port)
    }

    /// Kills the process abruptly (SIGKILL), like a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options with a fast backoff so tests finish quickly.
pub fn fast(base_ms: u64, cap_ms: u64, max_attempts: Option<u32>) -> ClientOptions {
    ClientOptions {
        backoff: BackoffPolicy {
            base: Duration::from_millis(base_ms),
            cap: Duration::from_millis(cap_ms),
            max_attempts,
        },
        connect_timeout: Duration::from_secs(5),
        // These tests' connections live for fractions of a second; count every accepted one as
        // established (client/tests/driver.rs covers the growing backoff of unstable ones).
        stable_after: Duration::ZERO,
        ..Default::default()
    }
}

/// The next message of a subscription (other events are returned as errors).
pub async fn next_message(sub: &mut Subscription, within: Duration) -> herald_client::Message {
    loop {
        let ev = tokio::time::timeout(within, sub.next())
            .await
            .expect("a message in time")
            .expect("subscription open");
        match ev {
            SubscriptionEvent::Message(m) => return m,
            SubscriptionEvent::NotRecovered { epoch, head } => {
                panic!("history not recovered (epoch {epoch}, head {head})")
            }
            _ => {}
        }
    }
}

/// Waits for a state matching `pred`.
pub async fn wait_state(
    states: &mut StateStream,
    within: Duration,
    pred: impl Fn(&ConnectionState) -> bool,
) -> ConnectionState {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = tokio::time::timeout_at(deadline, states.next())
            .await
            .expect("state in time")
            .expect("state stream open");
        if pred(&s) {
            return s;
        }
    }
}

/// Asserts that the app saw `1..=n` exactly once, in order, in one epoch with consecutive offsets.
pub fn assert_exactly_once(msgs: &[herald_client::Message], n: u64) {
    assert_eq!(msgs.len() as u64, n, "message count");
    for (k, m) in msgs.iter().enumerate() {
        let i = m
            .data_json()
            .ok()
            .and_then(|v| v.get("i").and_then(|i| i.as_u64()));
        assert_eq!(
            i,
            Some(k as u64 + 1),
            "message #{k} out of order or duplicated"
        );
        if k > 0 {
            assert_eq!(m.epoch, msgs[k - 1].epoch, "epoch changed");
            assert_eq!(
                m.offset,
                msgs[k - 1].offset + 1,
                "gap or duplicate at offset"
            );
        }
    }
}
