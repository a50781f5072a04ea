//! A channel's feed: the shared tail of its log that subscriber cursors read from.
//!
//! The channel actor pushes every applied message into its feed, in log order. The feed keeps the most
//! recent ones in memory (the window: `channel.window` messages, `channel.window_bytes` bytes of data),
//! each encoded lazily, at most once per wire encoding, by the first connection that needs it, and
//! shared by all. A cursor further behind than the window reads history from the store in small chunks.
//! So a channel's memory is bounded by its window however far its subscribers lag, and a subscriber that
//! is behind costs nothing until its socket has room.
//!
//! Offsets are strictly increasing but may have gaps (in a cluster an offset is a log position): the
//! feed never computes with them, it only looks for "the first message after this offset".

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::history::{HistoryError, Store, StoredMessage};
use crate::protocol::{encode, Encoding, MessageBody, Outgoing, ServerFrame};

/// Stored messages read per chunk for a cursor behind the window.
const DISK_CHUNK: usize = 512;
/// Bytes of data read per chunk (the first message is always read, whatever its size).
const DISK_CHUNK_BYTES: usize = 128 * 1024;

/// A message that cannot be turned into a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stored message {0} cannot be decoded: {1}")]
    Corrupt(u64, String),
    #[error("message encoding failed: {0}")]
    Encode(#[from] crate::protocol::EncodeError),
}

/// Why history could not be read for a cursor.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("history read failed: {0}")]
    Store(#[from] HistoryError),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Builds the `message` frame of a stored message.
pub fn message_frame(
    channel: &str,
    epoch: &str,
    encoding: Encoding,
    m: &StoredMessage,
) -> Result<Outgoing, FrameError> {
    let data = rmpv::decode::read_value(&mut &m.data[..])
        .map_err(|e| FrameError::Corrupt(m.offset, e.to_string()))?;
    let frame = ServerFrame::Message(MessageBody {
        channel,
        id: &m.id,
        epoch,
        offset: m.offset,
        data: &data,
        from: m.from.as_deref(),
    });
    Ok(encode(encoding, &frame)?)
}

/// One message of the window, with its frames once some subscriber needed them.
pub struct WindowItem {
    pub message: StoredMessage,
    epoch: Arc<str>,
    frames: [OnceLock<Option<Outgoing>>; 2],
}

impl WindowItem {
    pub fn new(message: StoredMessage, epoch: Arc<str>) -> Self {
        WindowItem {
            message,
            epoch,
            frames: [OnceLock::new(), OnceLock::new()],
        }
    }

    pub fn offset(&self) -> u64 {
        self.message.offset
    }

    /// The frame for `encoding`, encoded on first use. `None` if it cannot be encoded (logged once).
    pub fn frame(&self, channel: &str, encoding: Encoding) -> Option<Outgoing> {
        self.frames[encoding as usize]
            .get_or_init(|| {
                message_frame(channel, &self.epoch, encoding, &self.message)
                    .map_err(|e| tracing::error!(%channel, error = %e, "message frame not built"))
                    .ok()
            })
            .clone()
    }

    /// Memory the window counts for this message: its data, about twice more for frames, and overhead.
    fn weight(&self) -> usize {
        self.message.data.len() * 3 + 128
    }
}

/// The index of the first item of `window` after `pos` (offsets strictly increase, with gaps in a
/// cluster). Every delivery asks this, so the two common answers come without a search: the newest item
/// (a subscriber that keeps up), and the item at `pos + 1` where offsets are dense (one catching up).
fn next_index(window: &VecDeque<Arc<WindowItem>>, pos: u64) -> usize {
    let n = window.len();
    if n == 0 || window[n - 1].offset() <= pos {
        return n;
    }
    if n == 1 || window[n - 2].offset() <= pos {
        return n - 1;
    }
    let guess = (pos + 1).saturating_sub(window[0].offset());
    match usize::try_from(guess)
        .ok()
        .and_then(|g| window.get(g).map(|it| (g, it)))
    {
        // Offsets strictly increase, so everything before an item at `pos + 1` is at or before `pos`.
        Some((g, item)) if item.offset() == pos + 1 => g,
        _ => window.partition_point(|item| item.offset() <= pos),
    }
}

/// What comes after a cursor's position.
pub enum Next {
    /// The next message, from the window.
    Window(Arc<WindowItem>),
    /// The next messages are older than the window: read them from the store (epoch, head).
    Disk(Arc<str>, u64),
    /// Nothing after the position yet.
    Idle,
    /// The channel's history was reset: continue from the start of this (generation, epoch).
    Reset(u64, Arc<str>),
}

struct State {
    epoch: Arc<str>,
    /// Bumped by every reset, so a cursor knows its position belongs to an old epoch.
    generation: u64,
    /// Offset of the last message pushed.
    head: u64,
    /// Every message of the epoch with an offset above this is in `window`.
    from: u64,
    window: VecDeque<Arc<WindowItem>>,
    bytes: usize,
}

/// The shared tail of one channel. See the module docs.
pub struct Feed {
    channel: Arc<str>,
    store: Store,
    max_len: usize,
    max_bytes: usize,
    state: RwLock<State>,
}

impl Feed {
    /// A feed of `channel` whose history ends at `head` in `epoch`.
    pub fn new(
        channel: Arc<str>,
        store: Store,
        epoch: Arc<str>,
        head: u64,
        max_len: usize,
        max_bytes: usize,
    ) -> Self {
        Feed {
            channel,
            store,
            max_len: max_len.max(1),
            max_bytes,
            state: RwLock::new(State {
                epoch,
                generation: 0,
                head,
                from: head,
                window: VecDeque::new(),
                bytes: 0,
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn channel(&self) -> &Arc<str> {
        &self.channel
    }

    /// The current generation (see [`Next::Reset`]).
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Appends the next message, dropping the oldest ones beyond the window's bounds.
    pub fn push(&self, item: WindowItem) {
        let mut s = self.write();
        s.head = item.offset();
        s.bytes += item.weight();
        s.window.push_back(Arc::new(item));
        while s.window.len() > self.max_len || (s.bytes > self.max_bytes && s.window.len() > 1) {
            pop_front(&mut s);
        }
    }

    /// Forgets the messages at or below `pos` (every subscriber has been sent them).
    pub fn forget_through(&self, pos: u64) {
        let mut s = self.write();
        while s.window.front().is_some_and(|i| i.offset() <= pos) {
            pop_front(&mut s);
        }
    }

    /// Starts a new epoch with no messages.
    pub fn reset(&self, epoch: Arc<str>) {
        let mut s = self.write();
        s.epoch = epoch;
        s.generation += 1;
        s.head = 0;
        s.from = 0;
        s.window.clear();
        s.bytes = 0;
    }

    /// What follows `pos` for a cursor of `generation`.
    pub fn next_after(&self, pos: u64, generation: u64) -> Next {
        let s = self.read();
        if generation != s.generation {
            return Next::Reset(s.generation, s.epoch.clone());
        }
        if pos >= s.head {
            return Next::Idle;
        }
        if pos < s.from {
            return Next::Disk(s.epoch.clone(), s.head);
        }
        match s.window.get(next_index(&s.window, pos)) {
            Some(item) => Next::Window(item.clone()),
            None => Next::Idle,
        }
    }

    /// Server time of the first message after `pos`, if there is one (window first, then the store).
    pub fn ts_after(&self, pos: u64) -> Result<Option<u64>, HistoryError> {
        {
            let s = self.read();
            if pos >= s.head {
                return Ok(None);
            }
            if pos >= s.from {
                let i = s.window.partition_point(|item| item.offset() <= pos);
                return Ok(s.window.get(i).map(|item| item.message.ts_ms));
            }
        }
        Ok(self
            .store
            .range(&self.channel, pos, 1)?
            .first()
            .map(|m| m.ts_ms))
    }

    /// The frames of the stored messages after `pos` up to `head`, in a bounded chunk, with their
    /// offsets. `None` when the store's history is no longer the one of `epoch` (a reset is on its way
    /// to this feed). Blocking store work: cursors run it off the connection's thread.
    pub fn read_disk(
        &self,
        pos: u64,
        head: u64,
        epoch: &str,
        encoding: Encoding,
    ) -> Result<Option<Vec<(u64, Outgoing)>>, DiskError> {
        let mut chunk =
            self.store
                .range_bounded(&self.channel, pos, DISK_CHUNK, DISK_CHUNK_BYTES)?;
        chunk.retain(|m| m.offset <= head);
        // Read after the messages: a reset applied meanwhile shows here, so no message of a new epoch is
        // sent under the old one.
        if self.store.epoch_of(&self.channel)?.as_deref() != Some(epoch) {
            return Ok(None);
        }
        let frames = chunk
            .iter()
            .map(|m| Ok((m.offset, message_frame(&self.channel, epoch, encoding, m)?)))
            .collect::<Result<Vec<_>, FrameError>>()?;
        Ok(Some(frames))
    }

    /// Messages and bytes in the window now.
    pub fn window_size(&self) -> (usize, usize) {
        let s = self.read();
        (s.window.len(), s.bytes)
    }
}

fn pop_front(s: &mut State) {
    if let Some(old) = s.window.pop_front() {
        s.bytes -= old.weight();
        s.from = old.offset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(offset: u64, len: usize) -> StoredMessage {
        StoredMessage {
            offset,
            id: format!("id{offset}"),
            ts_ms: offset,
            from: None,
            data: {
                let mut v = Vec::new();
                rmpv::encode::write_value(&mut v, &rmpv::Value::from("x".repeat(len))).unwrap();
                v
            },
        }
    }

    fn feed(max_len: usize, max_bytes: usize) -> (Feed, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&crate::history::StoreConfig::new(dir.path())).unwrap();
        let f = Feed::new("c".into(), store, "e".into(), 0, max_len, max_bytes);
        (f, dir)
    }

    fn offset_of(n: Next) -> Option<u64> {
        match n {
            Next::Window(i) => Some(i.offset()),
            _ => None,
        }
    }

    #[test]
    fn next_after_finds_the_first_later_message_across_gaps() {
        let (f, _d) = feed(16, 1 << 20);
        for o in [3, 7, 8, 20] {
            f.push(WindowItem::new(msg(o, 1), "e".into()));
        }
        assert_eq!(offset_of(f.next_after(0, 0)), Some(3));
        assert_eq!(offset_of(f.next_after(3, 0)), Some(7));
        assert_eq!(offset_of(f.next_after(10, 0)), Some(20));
        assert!(matches!(f.next_after(20, 0), Next::Idle));
        assert!(matches!(f.next_after(25, 0), Next::Idle));
    }

    #[test]
    fn the_fast_paths_find_what_a_search_finds() {
        let sets: [&[u64]; 5] = [
            &[],
            &[5],
            &[1, 2, 3, 4, 5],
            &[3, 7, 8, 20],
            &[10, 11, 12, 40, 41, 42, 256],
        ];
        for offsets in sets {
            let window: VecDeque<Arc<WindowItem>> = offsets
                .iter()
                .map(|&o| Arc::new(WindowItem::new(msg(o, 1), "e".into())))
                .collect();
            for pos in 0..300 {
                let searched = window.partition_point(|item| item.offset() <= pos);
                assert_eq!(
                    next_index(&window, pos),
                    searched,
                    "{offsets:?} after {pos}"
                );
            }
        }
    }

    #[test]
    fn the_window_is_bounded_and_older_positions_go_to_disk() {
        let (f, _d) = feed(4, 1 << 20);
        for o in 1..=10 {
            f.push(WindowItem::new(msg(o, 1), "e".into()));
        }
        assert_eq!(f.window_size().0, 4);
        assert!(matches!(f.next_after(5, 0), Next::Disk(_, 10)));
        assert_eq!(offset_of(f.next_after(6, 0)), Some(7));
        let (f, _d) = feed(1000, 1000);
        for o in 1..=10 {
            f.push(WindowItem::new(msg(o, 100), "e".into()));
        }
        let (n, bytes) = f.window_size();
        assert!(bytes <= 1000 && n >= 1, "{n} items, {bytes} bytes");
    }

    #[test]
    fn forgetting_and_resets() {
        let (f, _d) = feed(16, 1 << 20);
        for o in 1..=5 {
            f.push(WindowItem::new(msg(o, 1), "e".into()));
        }
        f.forget_through(3);
        assert_eq!(f.window_size().0, 2);
        assert!(matches!(f.next_after(2, 0), Next::Disk(_, 5)));
        f.reset("e2".into());
        assert!(matches!(f.next_after(2, 0), Next::Reset(1, ref e) if &**e == "e2"));
        assert!(matches!(f.next_after(0, 1), Next::Idle));
    }

    #[test]
    fn frames_are_built_once_per_encoding_and_shared() {
        let item = WindowItem::new(msg(1, 3), "e".into());
        let a = item.frame("c", Encoding::Json).unwrap();
        let b = item.frame("c", Encoding::Json).unwrap();
        let (Outgoing::Frame(a), Outgoing::Frame(b)) = (a, b) else {
            panic!("data frames expected")
        };
        assert_eq!(a.wire().as_ptr(), b.wire().as_ptr(), "the same bytes");
        assert!(item.frame("c", Encoding::Msgpack).is_some());
    }
}
