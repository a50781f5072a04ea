//! The sled-backed [`Store`]: open (with move-aside of corrupt dirs), append, range, trim, reset,
//! idempotency, channel listing and cursors.
//!
//! Exists to keep every sled access of the history in one file, so the atomicity argument (see
//! `mod.rs`) can be checked by reading one place. Layout and codecs live in `keys.rs`, group commit in
//! `commit.rs`.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;
use sled::Tree;

use super::commit::{Durable, Flusher};
use super::error::HistoryError;
use super::keys::{self, IdemEntry, Meta};
use super::{ChannelState, IdempotentHit, OpenReport, StoreConfig, StoredMessage};
use crate::metrics::{Histogram, HistogramSnapshot, LATENCY_BUCKETS};

/// Keys removed per transaction by trim / reset / sweep: bounds the memory and lock time of one
/// transaction while keeping each step crash-consistent.
pub(super) const CHUNK: usize = 1024;

/// Offsets stay below 2^53 (protocol rule).
pub(super) const MAX_OFFSET: u64 = 1 << 53;

pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<HistoryError>>;

pub(super) fn abort<T>(e: HistoryError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// Handle to the history store. Cheap to clone; all clones share one sled `Db` and one flusher
/// thread, which stops when the last clone is dropped (or on [`Store::close`]).
#[derive(Clone)]
pub struct Store {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    // `flusher` is declared first so it is dropped (thread stopped, pending waiters answered) first.
    pub(super) flusher: Flusher,
    pub(super) db: sled::Db,
    pub(super) messages: Tree,
    pub(super) meta: Tree,
    pub(super) idem: Tree,
    pub(super) idem_exp: Tree,
    pub(super) cursors: Tree,
    /// The local log ([`crate::cluster::LocalLog`]): position (u64 BE) -> encoded [`super::Entry`].
    pub(super) log: Tree,
    pub(super) flushes: Arc<AtomicU64>,
    /// Duration of group-commit flushes.
    pub(super) flush_seconds: Arc<Histogram>,
    pub(super) path: PathBuf,
}

/// Why an open attempt failed.
enum OpenFailure {
    /// Locked, not accessible, disk full, out of file descriptors, an I/O error: the store may be
    /// healthy, so moving it aside (and changing every epoch) would be wrong. Start-up stops instead.
    Unavailable(sled::Error),
    /// sled reports corruption, its files cannot be parsed, or the format marker / metadata is wrong:
    /// move it aside and start fresh.
    Corrupt(String, Option<sled::Error>),
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn new_epoch() -> String {
    ulid::Ulid::new().to_string()
}

/// Only what says "these bytes are not a sled store" is corruption: sled's own verdict, or file
/// contents too short or malformed to parse. Every other error (permissions, locks, a full disk, too
/// many open files, EIO, a path that is not a directory) says nothing about the data.
fn classify(e: sled::Error) -> OpenFailure {
    use std::io::ErrorKind;
    match &e {
        // `Unsupported` is sled failing to recognise its own files ("created using a sled version
        // earlier than 0.29" is what garbage in its config file yields).
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => {
            OpenFailure::Corrupt(e.to_string(), Some(e))
        }
        sled::Error::Io(io)
            if matches!(io.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData) =>
        {
            OpenFailure::Corrupt(e.to_string(), Some(e))
        }
        _ => OpenFailure::Unavailable(e),
    }
}

fn try_open(cfg: &StoreConfig) -> Result<Store, OpenFailure> {
    let path = cfg.path.clone();
    let cache = cfg.cache_bytes;
    // sled may panic on some kinds of garbage instead of returning an error.
    let opened = std::panic::catch_unwind(move || -> Result<_, sled::Error> {
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache)
            .open()?;
        let trees = (
            db.open_tree("messages")?,
            db.open_tree("meta")?,
            db.open_tree("idem")?,
            db.open_tree("idem_exp")?,
            db.open_tree("cursors")?,
            db.open_tree("log")?,
        );
        Ok((db, trees))
    });
    let (db, (messages, meta, idem, idem_exp, cursors, log)) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(classify(e)),
        Err(_) => {
            return Err(OpenFailure::Corrupt(
                "sled panicked while opening".into(),
                None,
            ))
        }
    };
    // Format marker and a cheap sanity read.
    let check = || -> Result<(), HistoryError> {
        match db.get(keys::FORMAT_KEY)? {
            Some(v) if v.as_ref() == keys::FORMAT_VALUE => {}
            Some(v) => {
                return Err(HistoryError::corrupt(format!(
                    "unknown store format {:?}",
                    v.as_ref()
                )))
            }
            None => {
                db.insert(keys::FORMAT_KEY, keys::FORMAT_VALUE)?;
            }
        }
        if let Some(kv) = meta.iter().next() {
            let (_, v) = kv?;
            keys::decode_meta(&v)?;
        }
        Ok(())
    };
    if let Err(e) = check() {
        return Err(OpenFailure::Corrupt(e.to_string(), None));
    }
    let flushes = Arc::new(AtomicU64::new(0));
    let flush_seconds = Arc::new(Histogram::new(LATENCY_BUCKETS));
    let flusher = Flusher::start(
        db.clone(),
        cfg.group_commit,
        Arc::clone(&flushes),
        Arc::clone(&flush_seconds),
    )
    .map_err(|e| OpenFailure::Unavailable(sled::Error::Io(e)))?;
    Ok(Store {
        inner: Arc::new(Inner {
            flusher,
            db,
            messages,
            meta,
            idem,
            idem_exp,
            cursors,
            log,
            flushes,
            flush_seconds,
            path: cfg.path.clone(),
        }),
    })
}

/// How long `open` waits for sled's file lock. sled releases it from its own background threads a
/// moment after the previous `Db` in this process was dropped (seen in tests as a reopen race).
const LOCK_WAIT: Duration = Duration::from_secs(3);

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn try_open_waiting_for_lock(cfg: &StoreConfig) -> Result<Store, OpenFailure> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match try_open(cfg) {
            Err(OpenFailure::Unavailable(e))
                if is_lock_error(&e) && start.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn aside_path(path: &Path, ms: u64) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".corrupt-{ms}"));
    path.with_file_name(name)
}

impl Store {
    /// Opens (creates) the store. If the dir cannot be opened or is corrupt it is renamed to
    /// `<path>.corrupt-<unix_ms>` (logged with `tracing::error!`) and a fresh empty store is opened,
    /// so every channel gets a new epoch. A dir that is locked by another process or not accessible
    /// (permission denied) is NOT moved aside: that is [`HistoryError::Unavailable`] (a held lock is
    /// waited for up to 3 s first, since sled releases it asynchronously after a `Db` is dropped).
    pub fn open(cfg: &StoreConfig) -> Result<(Store, OpenReport), HistoryError> {
        let reason = match try_open_waiting_for_lock(cfg) {
            Ok(s) => return Ok((s, OpenReport { moved_aside: None })),
            Err(OpenFailure::Unavailable(source)) => {
                return Err(HistoryError::Unavailable {
                    path: cfg.path.clone(),
                    source,
                })
            }
            Err(OpenFailure::Corrupt(reason, _)) => reason,
        };
        let to = aside_path(&cfg.path, unix_ms());
        let moved_aside = if cfg.path.exists() {
            std::fs::rename(&cfg.path, &to).map_err(|source| HistoryError::MoveAside {
                from: cfg.path.clone(),
                to: to.clone(),
                source,
            })?;
            tracing::error!(
                path = %cfg.path.display(),
                moved_to = %to.display(),
                %reason,
                "HISTORY STORE CORRUPT: moved aside, starting an empty store; every channel gets a new epoch"
            );
            Some(to)
        } else {
            tracing::error!(path = %cfg.path.display(), %reason, "history store cannot be opened");
            None
        };
        match try_open_waiting_for_lock(cfg) {
            Ok(s) => Ok((s, OpenReport { moved_aside })),
            Err(OpenFailure::Unavailable(source)) | Err(OpenFailure::Corrupt(_, Some(source))) => {
                Err(HistoryError::Open {
                    path: cfg.path.clone(),
                    source,
                })
            }
            Err(OpenFailure::Corrupt(reason, None)) => Err(HistoryError::Open {
                path: cfg.path.clone(),
                source: sled::Error::Unsupported(reason),
            }),
        }
    }

    /// Directory of the store.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(super) fn get_meta(&self, channel: &str) -> Result<Option<Meta>, HistoryError> {
        match self.inner.meta.get(channel.as_bytes())? {
            Some(v) => Ok(Some(keys::decode_meta(&v)?)),
            None => Ok(None),
        }
    }

    /// The channel's current epoch, if it has one (its meta only: no scan).
    pub fn epoch_of(&self, channel: &str) -> Result<Option<String>, HistoryError> {
        keys::check_channel(channel)?;
        Ok(self.get_meta(channel)?.map(|m| m.epoch))
    }

    /// Oldest retained offset of a channel (first key of its range: one seek, no scan).
    fn oldest(&self, channel: &str) -> Result<Option<u64>, HistoryError> {
        let prefix = keys::channel_prefix(channel);
        match self.inner.messages.scan_prefix(&prefix).keys().next() {
            Some(k) => Ok(Some(keys::message_key_offset(&k?, prefix.len())?)),
            None => Ok(None),
        }
    }

    /// Whether the oldest retained message of `channel` is the first of its epoch (message number 1):
    /// nothing was trimmed, so a subscriber that has seen nothing of the epoch can be given all of it.
    /// False when nothing is retained or the messages carry no number (storage format V1).
    pub fn holds_the_first_message(&self, channel: &str) -> Result<bool, HistoryError> {
        let prefix = keys::channel_prefix(channel);
        match self.inner.messages.scan_prefix(&prefix).values().next() {
            Some(v) => Ok(keys::message_seq(&v?)? == Some(1)),
            None => Ok(false),
        }
    }

    pub(super) fn state_of(&self, channel: &str, m: Meta) -> Result<ChannelState, HistoryError> {
        Ok(ChannelState {
            oldest: self.oldest(channel)?,
            epoch: m.epoch,
            head: m.head,
        })
    }

    /// Current state; for an unknown channel creates and persists a fresh epoch (ULID) with head 0.
    pub fn channel_state(&self, channel: &str) -> Result<ChannelState, HistoryError> {
        keys::check_channel(channel)?;
        if let Some(m) = self.get_meta(channel)? {
            return self.state_of(channel, m);
        }
        let fresh = Meta::fresh(new_epoch());
        let cas = self.inner.meta.compare_and_swap(
            channel.as_bytes(),
            None::<&[u8]>,
            Some(keys::encode_meta(&fresh)),
        )?;
        let m = match cas {
            Ok(()) => fresh,
            // Someone else created it first: use theirs.
            Err(e) => match e.current {
                Some(v) => keys::decode_meta(&v)?,
                None => {
                    return Err(HistoryError::corrupt(
                        "channel meta vanished during creation",
                    ))
                }
            },
        };
        self.state_of(channel, m)
    }

    /// Like [`Store::channel_state`] but never creates anything (`None` if unknown).
    pub fn peek_state(&self, channel: &str) -> Result<Option<ChannelState>, HistoryError> {
        keys::check_channel(channel)?;
        match self.get_meta(channel)? {
            Some(m) => Ok(Some(self.state_of(channel, m)?)),
            None => Ok(None),
        }
    }

    /// Appends `msg` (`msg.offset` must be head+1 of the current epoch, else `OffsetMismatch`) and, if
    /// given, an idempotency entry `(key, expires_at_ms)`. One sled transaction over the messages,
    /// meta, idem and idem_exp trees, so message, head and idempotency entry land together or not at
    /// all. Does NOT flush: durability comes from [`Store::durable`].
    pub fn append(
        &self,
        channel: &str,
        msg: &StoredMessage,
        idem: Option<(&str, u64)>,
    ) -> Result<(), HistoryError> {
        keys::check_channel(channel)?;
        // After a failed flush nothing new is written: nobody could be told whether it is durable.
        self.inner.flusher.health()?;
        if msg.offset >= MAX_OFFSET {
            return Err(HistoryError::OffsetOverflow {
                channel: channel.to_owned(),
                offset: msg.offset,
            });
        }
        let ikey = idem.map(|(k, exp)| (keys::idem_key(channel, k), exp));
        let digest = keys::data_digest(&msg.data);
        let epoch_if_new = new_epoch();
        let i = &self.inner;
        (&i.messages, &i.meta, &i.idem, &i.idem_exp).transaction(|(tm, tmeta, ti, tx)| {
            let meta = match tmeta.get(channel.as_bytes())? {
                Some(v) => match keys::decode_meta(&v) {
                    Ok(m) => m,
                    Err(e) => return abort(e),
                },
                None => Meta::fresh(epoch_if_new.clone()),
            };
            if msg.offset != meta.head + 1 {
                return abort(HistoryError::OffsetMismatch {
                    channel: channel.to_owned(),
                    expected: meta.head + 1,
                    got: msg.offset,
                });
            }
            let idem = ikey.as_ref().map(|(k, exp)| (k.as_slice(), *exp, digest));
            let written = MessageWrite {
                channel,
                id: &msg.id,
                offset: msg.offset,
                ts_ms: msg.ts_ms,
                from: msg.from.as_deref(),
                data: &msg.data,
                idem,
            };
            put_message((tm, tmeta, ti, tx), meta, &written)
        })?;
        Ok(())
    }

    /// Idempotency lookup; entries with `expires_at_ms <= now_ms` count as absent.
    pub fn idempotent(
        &self,
        channel: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotentHit>, HistoryError> {
        keys::check_channel(channel)?;
        let Some(v) = self.inner.idem.get(keys::idem_key(channel, key))? else {
            return Ok(None);
        };
        let e = keys::decode_idem(&v)?;
        if e.expires_at_ms <= now_ms {
            return Ok(None);
        }
        Ok(Some(IdempotentHit {
            id: e.id,
            epoch: e.epoch,
            offset: e.offset,
            digest: e.digest,
        }))
    }

    /// Messages with offset > `after`, ascending, at most `limit`.
    pub fn range(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, HistoryError> {
        self.range_bounded(channel, after, limit, usize::MAX)
    }

    /// Like [`Store::range`], but stops before the message that would take the total `data` bytes over
    /// `max_bytes` (the first message is always included, whatever its size).
    pub fn range_bounded(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, HistoryError> {
        keys::check_channel(channel)?;
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let prefix = keys::channel_prefix(channel);
        let mut end = prefix.clone();
        if let Some(last) = end.last_mut() {
            *last = 1; // channel ++ 0x01: just past every channel ++ 0x00 ++ offset key
        }
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut bytes = 0usize;
        for kv in self
            .inner
            .messages
            .range(keys::message_key(channel, first)..end)
            .take(limit)
        {
            let (k, v) = kv?;
            let offset = keys::message_key_offset(&k, prefix.len())?;
            let m = keys::decode_message(&v)?;
            bytes = bytes.saturating_add(m.data.len());
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(StoredMessage {
                offset,
                id: m.id,
                ts_ms: m.ts_ms,
                from: m.from,
                data: m.data,
            });
        }
        Ok(out)
    }

    /// How many messages are stored with an offset in `(after, upto]`. Never computed from the offsets
    /// (they may have gaps): from the seqs of the first and the last of them (each message is numbered
    /// in its epoch), two lookups; by scanning the range for messages stored before seqs existed.
    pub fn count_range(&self, channel: &str, after: u64, upto: u64) -> Result<u64, HistoryError> {
        keys::check_channel(channel)?;
        if after >= upto {
            return Ok(0);
        }
        let range = keys::message_key(channel, after + 1)..=keys::message_key(channel, upto);
        let msgs = &self.inner.messages;
        let first = msgs.range(range.clone()).next().transpose()?;
        let last = msgs.range(range.clone()).next_back().transpose()?;
        let (Some((_, first)), Some((_, last))) = (first, last) else {
            return Ok(0);
        };
        if let (Some(a), Some(b)) = (keys::message_seq(&first)?, keys::message_seq(&last)?) {
            return Ok(b.saturating_sub(a) + 1);
        }
        let mut n = 0u64;
        for k in msgs.range(range).keys() {
            k?;
            n += 1;
        }
        Ok(n)
    }

    /// Known channels in name order, names starting with `prefix`, strictly after `after`, at most
    /// `limit`. A range scan starting at the cursor: cost is proportional to `limit`.
    pub fn channels(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, ChannelState)>, HistoryError> {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.as_bytes().to_vec()),
            _ => Bound::Included(prefix.as_bytes().to_vec()),
        };
        let mut out = Vec::new();
        for kv in self.inner.meta.range((start, Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let name = String::from_utf8(k.to_vec())
                .map_err(|_| HistoryError::corrupt("channel name is not UTF-8"))?;
            let m = keys::decode_meta(&v)?;
            let st = self.state_of(&name, m)?;
            out.push((name, st));
        }
        Ok(out)
    }

    /// Named cursor (e.g. the last applied cluster stream offset).
    pub fn get_cursor(&self, name: &str) -> Result<Option<u64>, HistoryError> {
        match self.inner.cursors.get(name.as_bytes())? {
            Some(v) => Ok(Some(keys::decode_u64(&v, "cursor")?)),
            None => Ok(None),
        }
    }

    /// Sets a named cursor. Not flushed: use [`Store::durable`].
    pub fn set_cursor(&self, name: &str, value: u64) -> Result<(), HistoryError> {
        self.inner
            .cursors
            .insert(name.as_bytes(), &keys::encode_u64(value))?;
        Ok(())
    }

    /// Group commit: resolves once a flush that started after this call completed. See `mod.rs`.
    pub fn durable(&self) -> Durable {
        self.inner.flusher.durable()
    }

    /// `Ok` while the store accepts writes; the reason otherwise (a flush failed, the flusher died).
    /// Readiness reports the node not ready while this is an error.
    pub fn health(&self) -> Result<(), HistoryError> {
        self.inner.flusher.health()
    }

    /// Makes the next group-commit flush fail or the flusher thread panic: for tests and fault drills
    /// only, never called by herald itself.
    #[doc(hidden)]
    pub fn inject_flush_fault(&self, fault: super::commit::FlushFault) {
        self.inner.flusher.inject(fault);
    }

    /// Synchronous flush (shutdown path).
    pub fn flush(&self) -> Result<(), HistoryError> {
        self.inner.db.flush()?;
        self.inner.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Durations of the group-commit flushes so far.
    pub fn flush_seconds(&self) -> HistogramSnapshot {
        self.inner.flush_seconds.snapshot()
    }

    /// Number of flushes run so far (group commit and [`Store::flush`]); for tests and metrics.
    pub fn flush_count(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }

    /// Stops the flusher thread (answering pending waiters first), then flushes. Later `durable()`
    /// calls resolve with [`HistoryError::Closed`]; the store stays usable otherwise.
    pub fn close(&self) -> Result<(), HistoryError> {
        self.inner.flusher.stop();
        self.flush()
    }

    /// Approximate on-disk size in bytes.
    pub fn size_on_disk(&self) -> Result<u64, HistoryError> {
        Ok(self.inner.db.size_on_disk()?)
    }
}

/// One message as [`put_message`] writes it.
pub(super) struct MessageWrite<'a> {
    pub channel: &'a str,
    pub id: &'a str,
    pub offset: u64,
    pub ts_ms: u64,
    pub from: Option<&'a str>,
    pub data: &'a [u8],
    /// The idempotency key (built by [`keys::idem_key`]), its expiry and the data's digest.
    pub idem: Option<(&'a [u8], u64, [u8; 32])>,
}

/// The one write of a message, shared by [`Store::append`] and [`Store::apply`]: the message at its
/// offset, its idempotency entry (if any), and the channel's new head, inside the caller's transaction.
pub(super) fn put_message(
    (tm, tmeta, ti, tx): (
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
    ),
    prev: Meta,
    m: &MessageWrite<'_>,
) -> TxResult<()> {
    let epoch = prev.epoch;
    // Numbered in its epoch, so a count of messages between two offsets is a subtraction of seqs.
    let seq = prev.count.map(|c| c + 1);
    if m.offset >= MAX_OFFSET {
        return abort(HistoryError::OffsetOverflow {
            channel: m.channel.to_owned(),
            offset: m.offset,
        });
    }
    let value = keys::encode_message(m.id, m.ts_ms, seq, m.from, m.data);
    tm.insert(keys::message_key(m.channel, m.offset), value)?;
    if let Some((ikey, expires_at_ms, digest)) = m.idem {
        replace_idem_index(ti, tx, ikey, expires_at_ms)?;
        let entry = IdemEntry {
            id: m.id.to_owned(),
            epoch: epoch.clone(),
            offset: m.offset,
            expires_at_ms,
            digest: Some(digest),
        };
        ti.insert(ikey, keys::encode_idem(&entry))?;
    }
    let head = Meta {
        epoch,
        head: m.offset,
        count: seq,
    };
    tmeta.insert(m.channel.as_bytes(), keys::encode_meta(&head))?;
    Ok(())
}

/// Drops the expiry-index entry of an idempotency entry about to be overwritten.
pub(super) fn replace_idem_index(
    ti: &TransactionalTree,
    tx: &TransactionalTree,
    ikey: &[u8],
    new_expiry: u64,
) -> TxResult<()> {
    if let Some(old) = ti.get(ikey)? {
        if let Ok(old) = keys::decode_idem(&old) {
            if old.expires_at_ms != new_expiry {
                tx.remove(keys::idem_exp_key(old.expires_at_ms, ikey))?;
            }
        }
    }
    tx.insert(keys::idem_exp_key(new_expiry, ikey), &[] as &[u8])?;
    Ok(())
}
