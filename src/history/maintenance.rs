//! Retention and cleanup: `trim`, `reset`, `sweep_idempotency` and `forget_if_empty`.
//!
//! Exists apart from `store.rs` because these are the multi-step operations: each removes keys in
//! chunked transactions (at most [`CHUNK`] keys) that re-check the channel's epoch or meta, so a crash
//! between chunks leaves a valid state (a shorter, still contiguous history) and a concurrent reset is
//! never undone by a stale trim.

use std::ops::Bound;

use sled::transaction::ConflictableTransactionError;
use sled::{IVec, Transactional};

use super::error::HistoryError;
use super::keys::{self, Meta};
use super::store::{abort, new_epoch, CHUNK};
use super::{ChannelState, Retention, Store};

impl Store {
    /// Removes the metadata of a channel that holds no message and no idempotency key any more, so
    /// names that were used once (or only read) do not stay on disk forever. Returns whether it did.
    /// The caller guarantees that nothing appends to the channel meanwhile (the sweeper holds the
    /// registry lock for channels without an actor). A later use starts a new epoch: a client resuming
    /// from the old one gets `recovered: false`, which is always safe.
    pub fn forget_if_empty(&self, channel: &str) -> Result<bool, HistoryError> {
        keys::check_channel(channel)?;
        let prefix = keys::channel_prefix(channel);
        if self.inner.messages.scan_prefix(&prefix).next().is_some()
            || self.inner.idem.scan_prefix(&prefix).next().is_some()
        {
            return Ok(false);
        }
        Ok(self.inner.meta.remove(channel.as_bytes())?.is_some())
    }

    /// Enforces retention: removes the oldest messages beyond `max_len` and those older than
    /// `now_ms - max_age`, but never a message with offset >= `floor`. Returns how many were removed.
    /// Only a leading run of messages is ever removed. `max_len` counts messages, not offsets (offsets may
    /// have gaps): by their number in the epoch (`seq`), or by offset for messages stored before seqs.
    pub fn trim(
        &self,
        channel: &str,
        retention: &Retention,
        now_ms: u64,
        floor: Option<u64>,
    ) -> Result<u64, HistoryError> {
        keys::check_channel(channel)?;
        let Some(meta) = self.get_meta(channel)? else {
            return Ok(0);
        };
        // Messages numbered below `seq_from` exceed max_len; for unnumbered (old) messages, offsets
        // below `keep_from` (their offsets are dense).
        let seq_from = meta
            .count
            .map(|c| (c + 1).saturating_sub(retention.max_len));
        let keep_from = (meta.head + 1).saturating_sub(retention.max_len);
        let cutoff = retention
            .max_age
            .map(|a| now_ms.saturating_sub(u64::try_from(a.as_millis()).unwrap_or(u64::MAX)));
        let floor = floor.unwrap_or(u64::MAX);
        self.remove_leading(channel, &meta.epoch, |offset, value| {
            if offset >= floor {
                return Ok(false);
            }
            let beyond_len = match (seq_from, keys::message_seq(value)?) {
                (Some(from), Some(seq)) => seq < from,
                _ => offset < keep_from,
            };
            if beyond_len {
                return Ok(true);
            }
            match cutoff {
                Some(c) => Ok(keys::message_ts(value)? < c),
                None => Ok(false),
            }
        })
    }

    /// Removes the leading run of a channel's messages for which `pred(offset, value)` holds, in
    /// chunks; each chunk is a transaction that first checks the epoch is still `epoch` (stops if a
    /// reset happened meanwhile). Returns how many messages were removed.
    fn remove_leading(
        &self,
        channel: &str,
        epoch: &str,
        mut pred: impl FnMut(u64, &[u8]) -> Result<bool, HistoryError>,
    ) -> Result<u64, HistoryError> {
        let prefix = keys::channel_prefix(channel);
        let mut removed = 0u64;
        loop {
            let mut batch: Vec<IVec> = Vec::new();
            let mut stopped = false;
            for kv in self.inner.messages.scan_prefix(&prefix) {
                let (k, v) = kv?;
                let offset = keys::message_key_offset(&k, prefix.len())?;
                if !pred(offset, &v)? {
                    stopped = true;
                    break;
                }
                batch.push(k);
                if batch.len() >= CHUNK {
                    break;
                }
            }
            if batch.is_empty() {
                return Ok(removed);
            }
            let i = &self.inner;
            let n = (&i.messages, &i.meta).transaction(|(tm, tmeta)| {
                let current = match tmeta.get(channel.as_bytes())? {
                    Some(v) => keys::decode_meta(&v).map(|m| m.epoch),
                    None => return Ok(None),
                };
                match current {
                    Ok(e) if e == epoch => {}
                    Ok(_) => return Ok(None),
                    Err(e) => return abort(e),
                }
                let mut n = 0u64;
                for k in &batch {
                    if tm.remove(k)?.is_some() {
                        n += 1;
                    }
                }
                Ok(Some(n))
            })?;
            match n {
                Some(n) => removed += n,
                None => return Ok(removed), // epoch changed under us
            }
            if stopped {
                return Ok(removed);
            }
        }
    }

    /// Operator reset: deletes the channel's messages and idempotency keys, new epoch, head 0.
    ///
    /// Messages and idempotency entries are first removed in chunks (a crash in between leaves the
    /// old epoch with a trimmed-looking history, a valid state); the final transaction removes any
    /// leftovers and writes the new epoch only if the meta did not change meanwhile (else retries).
    pub fn reset(&self, channel: &str) -> Result<ChannelState, HistoryError> {
        self.reset_as(channel, new_epoch(), None)
    }

    /// [`Store::reset`] to a given epoch; with `applied`, the final transaction also records that log
    /// position as applied (a reset entry, see [`Store::apply`]).
    pub(super) fn reset_as(
        &self,
        channel: &str,
        epoch: String,
        applied: Option<(super::Position, &str)>,
    ) -> Result<ChannelState, HistoryError> {
        keys::check_channel(channel)?;
        let prefix = keys::channel_prefix(channel);
        loop {
            let before = self.inner.meta.get(channel.as_bytes())?;
            if let Some(v) = &before {
                let m = keys::decode_meta(v)?;
                self.remove_leading(channel, &m.epoch, |_, _| Ok(true))?;
            }
            self.remove_idem_prefix(&prefix)?;
            let leftover_msgs: Vec<IVec> = self
                .inner
                .messages
                .scan_prefix(&prefix)
                .keys()
                .collect::<Result<_, _>>()?;
            let leftover_idem = self.idem_entries(&prefix, usize::MAX)?;
            let fresh = Meta::fresh(epoch.clone());
            let i = &self.inner;
            let done = (&i.messages, &i.meta, &i.idem, &i.idem_exp, &i.cursors).transaction(
                |(tm, tmeta, ti, tx, tc)| {
                    if tmeta.get(channel.as_bytes())? != before {
                        return Ok(false);
                    }
                    if let Some((p, id)) = applied {
                        tc.insert(
                            super::applying::applied_key(p.shard),
                            &keys::encode_u64(p.index),
                        )?;
                        tc.insert(super::applying::applied_id_key(p.shard), id.as_bytes())?;
                    }
                    for k in &leftover_msgs {
                        tm.remove(k)?;
                    }
                    for (ik, ek) in &leftover_idem {
                        ti.remove(ik)?;
                        tx.remove(ek.as_slice())?;
                    }
                    tmeta.insert(channel.as_bytes(), keys::encode_meta(&fresh))?;
                    Ok(true)
                },
            )?;
            if done {
                return self.state_of(channel, fresh);
            }
        }
    }

    /// Up to `limit` idempotency entries under `prefix`, as (idem key, idem_exp key). Entries that
    /// do not decode get an expiry-index key that matches nothing.
    fn idem_entries(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(IVec, Vec<u8>)>, HistoryError> {
        let mut out = Vec::new();
        for kv in self.inner.idem.scan_prefix(prefix).take(limit) {
            let (k, v) = kv?;
            let exp = match keys::decode_idem(&v) {
                Ok(e) => keys::idem_exp_key(e.expires_at_ms, &k),
                Err(e) => {
                    tracing::warn!(error = %e, "dropping corrupt idempotency entry");
                    Vec::new()
                }
            };
            out.push((k, exp));
        }
        Ok(out)
    }

    fn remove_idem_prefix(&self, prefix: &[u8]) -> Result<(), HistoryError> {
        loop {
            let batch = self.idem_entries(prefix, CHUNK)?;
            if batch.is_empty() {
                return Ok(());
            }
            let i = &self.inner;
            (&i.idem, &i.idem_exp).transaction(|(ti, tx)| {
                for (ik, ek) in &batch {
                    ti.remove(ik)?;
                    tx.remove(ek.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<HistoryError>>(())
            })?;
        }
    }

    /// Removes expired idempotency entries store-wide (visits only the expired part of the expiry
    /// index); returns how many entries were removed.
    pub fn sweep_idempotency(&self, now_ms: u64) -> Result<u64, HistoryError> {
        let end = match now_ms.checked_add(1) {
            Some(e) => Bound::Excluded(e.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut removed = 0u64;
        loop {
            let batch: Vec<IVec> = self
                .inner
                .idem_exp
                .range((Bound::Unbounded, end.clone()))
                .keys()
                .take(CHUNK)
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                return Ok(removed);
            }
            let i = &self.inner;
            removed += (&i.idem, &i.idem_exp).transaction(|(ti, tx)| {
                let mut n = 0u64;
                for ek in &batch {
                    tx.remove(ek)?;
                    let ik = match keys::split_idem_exp_key(ek) {
                        Ok((_, ik)) => ik,
                        Err(_) => continue, // garbage index key: removing it is all we can do
                    };
                    let Some(v) = ti.get(ik)? else { continue };
                    // The entry may have been re-used with a later expiry: only drop it if expired.
                    let expired = keys::decode_idem(&v).map_or(true, |e| e.expires_at_ms <= now_ms);
                    if expired {
                        ti.remove(ik)?;
                        n += 1;
                    }
                }
                Ok::<_, ConflictableTransactionError<HistoryError>>(n)
            })?;
        }
    }
}
