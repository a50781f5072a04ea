//! Group commit: one background thread turns many "make my writes durable" requests into few flushes.
//!
//! Exists because `sled::Db::flush()` costs an fsync (hundreds of microseconds to milliseconds) and a
//! busy broker asks for durability thousands of times per second. [`Flusher::durable`] only registers
//! a waiter (a mutex push and a oneshot), the thread waits out the `group_commit` window counted from
//! the first waiter of a batch, takes every waiter registered so far, runs ONE flush and answers them
//! all. Because waiters are taken before the flush starts, each flush started after every waiter it
//! answers registered, so it covers every write issued before the corresponding `durable()` call.
//!
//! A flush error is sent to every waiter of that batch, and the flusher then fails every later waiter
//! with [`HistoryError::Failed`]: after a failed fsync nobody can say which writes reached the disk, so
//! the store stops accepting writes (see [`Flusher::health`]) rather than acknowledging more. If the
//! thread dies (panics), every waiter it held and every later one resolves with
//! [`HistoryError::FlusherGone`] instead of waiting forever. On shutdown the thread answers the pending
//! waiters with one last flush before exiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::HistoryError;
use crate::metrics::Histogram;

type Reply = oneshot::Sender<Result<(), HistoryError>>;

#[derive(Default)]
struct State {
    waiters: Vec<Reply>,
    /// When the first waiter of the current batch arrived (window start).
    first_at: Option<Instant>,
    shutdown: bool,
    /// Set once a flush failed: every later waiter gets [`HistoryError::Failed`].
    failed: Option<String>,
    /// Set when the thread died.
    dead: bool,
}

/// A fault the flusher injects into its next flush (tests and fault drills only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[doc(hidden)]
pub enum FlushFault {
    /// The next flush reports an I/O error.
    Error,
    /// The flusher thread panics at the next flush.
    Panic,
}

impl State {
    /// The answer for a waiter that cannot be served any more, if the flusher is failed or dead.
    fn refusal(&self) -> Option<HistoryError> {
        if self.dead {
            Some(HistoryError::FlusherGone)
        } else if let Some(why) = &self.failed {
            Some(HistoryError::Failed(why.clone()))
        } else if self.shutdown {
            Some(HistoryError::Closed)
        } else {
            None
        }
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    fault: Mutex<Option<FlushFault>>,
}

impl Shared {
    /// Locks the state, recovering from poisoning (the state stays consistent: a Vec and flags).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Owner of the flusher thread. Dropping it stops the thread after answering pending waiters.
pub(crate) struct Flusher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Flusher {
    /// Starts the flusher thread for `db`. `flushes` counts every flush it runs.
    pub(crate) fn start(
        db: sled::Db,
        window: Duration,
        flushes: Arc<AtomicU64>,
        flush_seconds: Arc<Histogram>,
    ) -> std::io::Result<Flusher> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            fault: Mutex::new(None),
        });
        let s2 = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("history-flusher".into())
            .spawn(move || {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&s2, &db, window, &flushes, &flush_seconds)
                }));
                if ran.is_err() {
                    tracing::error!("history flusher thread panicked: every publish now fails with `unavailable`");
                    // Waiters of the batch in hand were dropped (their receivers see FlusherGone);
                    // the queued ones and every later one are answered here and by `durable`.
                    let waiters = {
                        let mut st = s2.lock();
                        st.dead = true;
                        std::mem::take(&mut st.waiters)
                    };
                    for w in waiters {
                        let _ = w.send(Err(HistoryError::FlusherGone));
                    }
                }
            })?;
        Ok(Flusher {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Registers a waiter; see [`crate::history::Store::durable`].
    pub(crate) fn durable(&self) -> Durable {
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut st = self.shared.lock();
            if let Some(e) = st.refusal() {
                return Durable::ready(Err(e));
            }
            let first = st.waiters.is_empty();
            if first {
                st.first_at = Some(Instant::now());
            }
            st.waiters.push(tx);
            first
        };
        // Only the first waiter of a batch needs to wake the thread; later ones ride along.
        if first {
            self.shared.wake.notify_one();
        }
        Durable {
            inner: DurableInner::Wait(rx),
        }
    }

    /// `Ok` while flushes succeed; the reason writes are refused once a flush failed or the thread died.
    pub(crate) fn health(&self) -> Result<(), HistoryError> {
        let st = self.shared.lock();
        if st.dead || st.failed.is_some() {
            return Err(st.refusal().unwrap_or(HistoryError::FlusherGone));
        }
        Ok(())
    }

    /// Makes the next flush fail or panic (tests and fault drills).
    pub(crate) fn inject(&self, fault: FlushFault) {
        *self.shared.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(fault);
    }

    /// Stops the thread (after it answered every pending waiter) and waits for it. Idempotent.
    pub(crate) fn stop(&self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("history flusher thread panicked");
            }
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    shared: &Shared,
    db: &sled::Db,
    window: Duration,
    flushes: &AtomicU64,
    flush_seconds: &Histogram,
) {
    loop {
        let batch = {
            let mut st = shared.lock();
            // Sleep until there is work.
            while st.waiters.is_empty() && !st.shutdown {
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.waiters.is_empty() {
                // shutdown with nothing pending
                return;
            }
            // Wait out the window counted from the first waiter (unless shutting down).
            if !window.is_zero() {
                let deadline = st.first_at.unwrap_or_else(Instant::now) + window;
                loop {
                    let now = Instant::now();
                    if st.shutdown || now >= deadline {
                        break;
                    }
                    st = shared
                        .wake
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
            st.first_at = None;
            std::mem::take(&mut st.waiters)
        };
        // The flush starts strictly after every waiter in `batch` registered.
        let started = Instant::now();
        let fault = shared
            .fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let res = match fault {
            None => db.flush().map(|_| ()).map_err(|e| e.to_string()),
            Some(FlushFault::Error) => Err("injected flush fault".to_string()),
            Some(FlushFault::Panic) => panic!("injected flusher panic"),
        };
        flush_seconds.observe_duration(started.elapsed());
        flushes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &res {
            tracing::error!(error = %e, waiters = batch.len(),
                "history group-commit flush failed: the store accepts no more writes; restart the node");
            let mut st = shared.lock();
            st.failed = Some(e.clone());
            // Waiters that arrived meanwhile cannot be served by a later flush either.
            let more = std::mem::take(&mut st.waiters);
            drop(st);
            for tx in more {
                let _ = tx.send(Err(HistoryError::Failed(e.clone())));
            }
        }
        for tx in batch {
            // A waiter that gave up (dropped its future) is fine to ignore.
            let _ = tx.send(res.clone().map_err(HistoryError::Failed));
        }
    }
}

/// Future returned by [`crate::history::Store::durable`]: resolves once a flush that started after the
/// call completed. `Send + 'static`; needs no particular runtime (it wraps a tokio oneshot).
#[must_use = "durability is only known once the future resolves"]
pub struct Durable {
    inner: DurableInner,
}

enum DurableInner {
    Ready(Option<Result<(), HistoryError>>),
    Wait(oneshot::Receiver<Result<(), HistoryError>>),
}

impl Durable {
    pub(crate) fn ready(r: Result<(), HistoryError>) -> Durable {
        Durable {
            inner: DurableInner::Ready(Some(r)),
        }
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Durable")
    }
}

impl Future for Durable {
    type Output = Result<(), HistoryError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.inner {
            DurableInner::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(HistoryError::Closed))),
            DurableInner::Wait(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(r)) => Poll::Ready(r),
                Poll::Ready(Err(_)) => Poll::Ready(Err(HistoryError::FlusherGone)),
            },
        }
    }
}
