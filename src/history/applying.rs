//! Applying log entries, and the local log's own tree.
//!
//! Exists because the order of a channel is decided in one place: the log. [`Store::apply`] turns one
//! committed entry into store state in ONE sled transaction: it decides idempotency from the entry alone
//! (the key is scoped per publisher, its window measured against the entry's timestamp), assigns the
//! channel offset, and writes the message, the channel meta, the idempotency key and the log position
//! applied (per shard of the log). A position at or below the one applied in its shard is skipped, so a
//! re-delivered entry, or the re-reading of the log after a crash, applies nothing twice. The same log
//! applied on any node gives the same offsets, epochs and decisions: the offset and epoch come either
//! from the store's own numbering ([`Placement::Dense`], the local log) or from the log
//! ([`Placement::At`], a cluster log, where every node must compute the same ones).
//!
//! The `log` tree holds the single-node log ([`crate::cluster::LocalLog`]): encoded entries by position.
//! Entries are made durable there (group commit) before they are applied, so applied state never needs
//! its own flush to be correct: after a crash it is re-derived from the log.

use sled::Transactional;

use super::entry::{Applied, Entry, EntryKind, Placement, Position};
use super::error::HistoryError;
use super::keys::{self, Meta};
use super::store::{abort, put_message, MessageWrite};
use super::Store;

/// Cursor holding the last log position applied in shard 0 (the name predates shards).
pub(super) const APPLIED: &[u8] = b"log.applied";

/// The cursor key of the last position applied in `shard`.
pub(super) fn applied_key(shard: u32) -> Vec<u8> {
    if shard == 0 {
        APPLIED.to_vec()
    } else {
        format!("log.applied.{shard}").into_bytes()
    }
}

/// The cursor key of the id of the last entry applied in `shard` (a cluster log checks continuity with
/// it when it resumes: the entry at the stored position must still have this id).
pub(super) fn applied_id_key(shard: u32) -> Vec<u8> {
    format!("log.applied_id.{shard}").into_bytes()
}

/// The cursor key of the first index of `shard` this node holds after its log was truncated below it.
fn truncated_key(shard: u32) -> String {
    format!("log.truncated.{shard}")
}

impl Store {
    /// The id of the last entry applied in `shard`, if any was applied since ids were kept.
    pub fn applied_id(&self, shard: u32) -> Result<Option<String>, HistoryError> {
        match self.inner.cursors.get(applied_id_key(shard))? {
            Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            None => Ok(None),
        }
    }

    /// Records that this node's history of `shard` starts again at `index`: the log lost what lay
    /// between the position this node had applied and `index` (retention truncated it while the node
    /// was away). Resumes from before `index` in that shard are not recoverable on this node.
    pub fn record_truncation(&self, shard: u32, index: u64) -> Result<(), HistoryError> {
        let key = truncated_key(shard);
        if self.get_cursor(&key)?.unwrap_or(0) < index {
            self.set_cursor(&key, index)?;
        }
        Ok(())
    }

    /// The first index of `shard` after the latest truncation this node saw (0: none).
    pub fn truncated_below(&self, shard: u32) -> Result<u64, HistoryError> {
        Ok(self.get_cursor(&truncated_key(shard))?.unwrap_or(0))
    }

    /// The last index applied in `shard` of the log (0 before the first).
    pub fn applied_position(&self, shard: u32) -> Result<u64, HistoryError> {
        match self.inner.cursors.get(applied_key(shard))? {
            Some(v) => keys::decode_u64(&v, "applied position"),
            None => Ok(0),
        }
    }

    /// The last index applied in each of `shards` shards.
    pub fn applied_positions(&self, shards: u32) -> Result<Vec<u64>, HistoryError> {
        (0..shards).map(|s| self.applied_position(s)).collect()
    }

    /// Applies the committed entry at `position`, placed as `placement` says. See the module docs.
    pub fn apply(
        &self,
        position: Position,
        placement: &Placement,
        entry: &Entry,
        window_ms: u64,
    ) -> Result<Applied, HistoryError> {
        keys::check_channel(&entry.channel)?;
        self.inner.flusher.health()?;
        if position.index <= self.applied_position(position.shard)? {
            return Ok(Applied::AlreadyApplied);
        }
        match &entry.kind {
            EntryKind::Reset => {
                let epoch = match placement {
                    Placement::Dense => entry.id.clone(),
                    Placement::At { epoch, .. } => epoch.clone(),
                };
                let st = self.reset_as(&entry.channel, epoch, Some((position, &entry.id)))?;
                Ok(Applied::Reset { epoch: st.epoch })
            }
            EntryKind::Publish { data } => {
                if let Placement::At { epoch, .. } = placement {
                    // A new generation of the channel's shard: the history of the old one is gone
                    // (every node deletes it the same way before applying the first entry).
                    if self
                        .get_meta(&entry.channel)?
                        .is_some_and(|m| m.epoch != *epoch)
                    {
                        self.reset_as(&entry.channel, epoch.clone(), None)?;
                    }
                }
                self.apply_publish(position, placement, entry, data, window_ms)
            }
        }
    }

    fn apply_publish(
        &self,
        position: Position,
        placement: &Placement,
        entry: &Entry,
        data: &[u8],
        window_ms: u64,
    ) -> Result<Applied, HistoryError> {
        let channel = entry.channel.as_str();
        let ikey = entry
            .key
            .as_deref()
            .map(|k| keys::idem_key(channel, &keys::scoped_idem_key(&entry.publisher, k)));
        let digest = keys::data_digest(data);
        let expires_at_ms = entry.ts.saturating_add(window_ms);
        let pos = keys::encode_u64(position.index);
        let cursor = applied_key(position.shard);
        let i = &self.inner;
        let out = (&i.messages, &i.meta, &i.idem, &i.idem_exp, &i.cursors).transaction(
            |(tm, tmeta, ti, tx, tc)| {
                if let Some(v) = tc.get(&cursor)? {
                    match keys::decode_u64(&v, "applied position") {
                        Ok(applied) if applied >= position.index => {
                            return Ok(Applied::AlreadyApplied)
                        }
                        Ok(_) => {}
                        Err(e) => return abort(e),
                    }
                }
                tc.insert(cursor.as_slice(), &pos)?;
                tc.insert(applied_id_key(position.shard), entry.id.as_bytes())?;
                let meta = match tmeta.get(channel.as_bytes())? {
                    Some(v) => match keys::decode_meta(&v) {
                        Ok(m) => m,
                        Err(e) => return abort(e),
                    },
                    // A channel's first entry names its epoch (or the log does): the same on every node.
                    None => Meta::fresh(match placement {
                        Placement::Dense => entry.id.clone(),
                        Placement::At { epoch, .. } => epoch.clone(),
                    }),
                };
                if let Some(ikey) = &ikey {
                    if let Some(v) = ti.get(ikey)? {
                        let hit = match keys::decode_idem(&v) {
                            Ok(h) => h,
                            Err(e) => return abort(e),
                        };
                        if hit.expires_at_ms > entry.ts && hit.epoch == meta.epoch {
                            if hit.digest.is_some_and(|d| d != digest) {
                                return Ok(Applied::Conflict);
                            }
                            return Ok(Applied::Duplicate {
                                id: hit.id,
                                epoch: hit.epoch,
                                offset: hit.offset,
                            });
                        }
                    }
                }
                let offset = match placement {
                    Placement::Dense => meta.head + 1,
                    Placement::At { offset, .. } if *offset > meta.head => *offset,
                    Placement::At { offset, .. } => {
                        return abort(HistoryError::OffsetMismatch {
                            channel: channel.to_owned(),
                            expected: meta.head + 1,
                            got: *offset,
                        })
                    }
                };
                let written = MessageWrite {
                    channel,
                    id: &entry.id,
                    offset,
                    ts_ms: entry.ts,
                    from: entry.from.as_deref(),
                    data,
                    idem: ikey.as_deref().map(|k| (k, expires_at_ms, digest)),
                };
                let epoch = meta.epoch.clone();
                put_message((tm, tmeta, ti, tx), meta, &written)?;
                Ok(Applied::Message { epoch, offset })
            },
        )?;
        Ok(out)
    }

    /// Writes an encoded entry at `position` of the local log (not flushed: see [`Store::durable`]).
    pub fn log_put(&self, position: u64, encoded: &[u8]) -> Result<(), HistoryError> {
        self.inner.flusher.health()?;
        self.inner.log.insert(keys::encode_u64(position), encoded)?;
        Ok(())
    }

    /// Up to `limit` entries of the local log from `from` (inclusive) to `upto` (inclusive).
    pub fn log_range(
        &self,
        from: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Entry)>, HistoryError> {
        let mut out = Vec::new();
        if from > upto {
            return Ok(out);
        }
        let range = keys::encode_u64(from)..=keys::encode_u64(upto);
        for kv in self.inner.log.range(range).take(limit) {
            let (k, v) = kv?;
            out.push((keys::decode_u64(&k, "log position")?, Entry::decode(&v)?));
        }
        Ok(out)
    }

    /// The last position in the local log, if it holds any entry.
    pub fn log_last(&self) -> Result<Option<u64>, HistoryError> {
        match self.inner.log.last()? {
            Some((k, _)) => Ok(Some(keys::decode_u64(&k, "log position")?)),
            None => Ok(None),
        }
    }

    /// Forgets local-log entries up to `upto` (their effect is applied and durable). Returns how many.
    pub fn log_trim(&self, upto: u64) -> Result<u64, HistoryError> {
        let mut removed = 0;
        loop {
            let batch: Vec<sled::IVec> = self
                .inner
                .log
                .range(..=keys::encode_u64(upto))
                .keys()
                .take(super::store::CHUNK)
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                return Ok(removed);
            }
            let mut b = sled::Batch::default();
            for k in &batch {
                b.remove(k);
            }
            removed += batch.len() as u64;
            self.inner.log.apply_batch(b)?;
        }
    }
}
