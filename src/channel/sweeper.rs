//! Retention for channels nobody is using, and expiry of idempotency keys.
//!
//! Active channels trim their own history (they know which replays are in progress). Channels without an
//! actor are trimmed here, under the registry lock, so no actor can start for a channel while it is being
//! trimmed. A channel without an actor that is left with no message and no idempotency key has its
//! metadata removed too, so channel names do not accumulate on disk.

use std::sync::Arc;
use std::time::Duration;

use super::actor::{namespace_of, retention_of};
use super::Hub;
use crate::protocol::now_ms;
use crate::stats::Stats;

/// Channels examined per registry page.
const PAGE: usize = 512;

/// Starts the periodic sweep on the current arbiter.
pub fn start_sweeper(node: Arc<Hub>) {
    let every = Duration::from_millis(node.config.history.sweep_interval_ms.max(100));
    actix_rt::spawn(async move {
        let mut tick = actix_rt::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if node.is_draining() {
                return;
            }
            let n = node.clone();
            let swept = actix_rt::task::spawn_blocking(move || sweep(&n)).await;
            if let Ok(Err(e)) = swept {
                tracing::warn!(error = %e, "retention sweep failed");
            }
        }
    });
}

fn sweep(node: &Hub) -> Result<(), crate::history::HistoryError> {
    let now = now_ms();
    node.store.sweep_idempotency(now)?;
    let mut after: Option<String> = None;
    loop {
        let page = node.store.channels("", after.as_deref(), PAGE)?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        after = Some(last.clone());
        for (name, _) in &page {
            let retention = retention_of(&node.config.namespace(namespace_of(name)));
            let swept = node.channels.with_inactive(name, || {
                let trimmed = node.store.trim(name, &retention, now, None)?;
                let forgotten = node.store.forget_if_empty(name)?;
                Ok::<_, crate::history::HistoryError>((trimmed, forgotten))
            });
            match swept {
                Some(Ok((n, forgotten))) => {
                    Stats::add(&node.stats.history_trimmed, n);
                    if forgotten {
                        tracing::debug!(channel = %name, "empty channel forgotten");
                    }
                }
                Some(Err(e)) => tracing::warn!(channel = %name, error = %e, "trim failed"),
                None => {}
            }
        }
        if page.len() < PAGE {
            return Ok(());
        }
    }
}
