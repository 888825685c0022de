//! The threaded queue: a scheduler thread that owns a [`QueueCore`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use millrace_spool::{Envelope, MessageId};
use parking_lot::Mutex;

use crate::core::{QueueCore, Shared, route};
use crate::types::{
    Destination, Dispatcher, Events, Job, QueueConfig, QueueError, QueueStats,
    RcptOutcome, Router, Store,
};

/// Messages loaded per scheduler turn, so a big spool does not stall
/// new work.
const LOAD_CHUNK: usize = 256;
/// Commands handled per scheduler turn before timers run again.
const CMD_CHUNK: usize = 4096;
/// Longest sleep when no timer is pending.
const IDLE: Duration = Duration::from_secs(3600);

enum Cmd {
    Insert { id: MessageId, arrival: i64, rcpts: Vec<(u32, Destination)> },
    Load(Vec<MessageId>),
    Report(MessageId, Vec<RcptOutcome>),
    Done(Destination),
    Shutdown,
}

struct Inner {
    tx: Sender<Cmd>,
    shared: Arc<Shared>,
    router: Arc<dyn Router>,
    stats: Arc<Mutex<QueueStats>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The outbound queue: an index of pending recipients grouped by
/// destination, with a scheduler thread for dispatch, retries and
/// expiry. Cheap to clone.
///
/// Commands (`enqueue`, `report`, `connection_done`, `load`) go to the
/// scheduler over a channel; `take_more` pops the lock-free ready
/// queue directly. The channel is unbounded: its backlog is bounded by
/// the messages and connections the server and driver admit.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("stats", &self.stats()).finish()
    }
}

impl Queue {
    /// Validates `cfg` and spawns the scheduler thread.
    pub fn start<S: Store>(
        cfg: QueueConfig,
        store: Arc<S>,
        router: Arc<dyn Router>,
        dispatcher: Arc<dyn Dispatcher>,
        events: Arc<dyn Events>,
    ) -> Result<Self, QueueError> {
        let core =
            QueueCore::new(cfg, store, router.clone(), dispatcher, events)?;
        let shared = core.shared();
        let (tx, rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(Mutex::new(QueueStats::default()));
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("millrace-queue".into())
            .spawn(move || scheduler(core, &rx, &st))
            .map_err(QueueError::Spawn)?;
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                shared,
                router,
                stats,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Rebuilds the index from committed spool ids, in the background
    /// on the scheduler thread (recipients already done are skipped).
    pub fn load(&self, ids: Vec<MessageId>) {
        self.send(Cmd::Load(ids));
    }

    /// A message was just committed: its recipients become ready at
    /// once. Routing runs on the calling thread.
    pub fn enqueue(&self, id: MessageId, env: &Envelope) {
        let rcpts = route(
            &*self.inner.router,
            env.recipients.iter().map(|r| &*r.address),
        );
        self.send(Cmd::Insert { id, arrival: env.arrival_unix, rcpts });
    }

    /// For a connection to `dest` that finished a transaction and may
    /// carry more: up to `max` ready items, or None (then the driver
    /// QUITs and calls [`Queue::connection_done`]).
    pub fn take_more(&self, dest: &Destination, max: usize) -> Option<Job> {
        self.inner.shared.take_more(dest, max)
    }

    /// Per-recipient outcomes of one transaction of message `id`.
    pub fn report(&self, id: MessageId, outcomes: Vec<RcptOutcome>) {
        self.send(Cmd::Report(id, outcomes));
    }

    /// A connection to `dest` ended (frees a slot).
    pub fn connection_done(&self, dest: &Destination) {
        self.send(Cmd::Done(dest.clone()));
    }

    /// The sizes as of the scheduler's last turn (`in_flight` is live).
    pub fn stats(&self) -> QueueStats {
        let mut s = *self.inner.stats.lock();
        let live = self.inner.shared.in_flight();
        s.ready = (s.ready + s.in_flight).saturating_sub(live);
        s.in_flight = live;
        s
    }

    /// Stops the scheduler and waits for it (unless called on it).
    /// Pending state is dropped; the spool still has every message.
    pub fn shutdown(&self) {
        self.send(Cmd::Shutdown);
        let handle = self.inner.thread.lock().take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }

    fn send(&self, cmd: Cmd) {
        // Fails only after shutdown, when nothing is listening.
        let _ = self.inner.tx.send(cmd);
    }
}

fn scheduler<S: Store>(
    mut core: QueueCore<S>,
    rx: &Receiver<Cmd>,
    stats: &Mutex<QueueStats>,
) {
    let mut loads: VecDeque<MessageId> = VecDeque::new();
    loop {
        let now = SystemTime::now();
        let timeout = if loads.is_empty() {
            core.next_deadline().map_or(IDLE, |d| {
                d.duration_since(now).unwrap_or(Duration::ZERO).min(IDLE)
            })
        } else {
            Duration::ZERO
        };
        let first = match rx.recv_timeout(timeout) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let cmds = first.into_iter().chain(rx.try_iter().take(CMD_CHUNK));
        for cmd in cmds {
            let now = SystemTime::now();
            match cmd {
                Cmd::Insert { id, arrival, rcpts } => {
                    core.insert(id, arrival, rcpts, now);
                }
                Cmd::Load(ids) => loads.extend(ids),
                Cmd::Report(id, o) => core.report(id, o, now),
                Cmd::Done(dest) => core.connection_done(&dest, now),
                Cmd::Shutdown => return,
            }
        }
        for _ in 0..LOAD_CHUNK {
            let Some(id) = loads.pop_front() else { break };
            core.load(id, SystemTime::now());
        }
        core.tick(SystemTime::now());
        *stats.lock() = core.stats();
    }
}
