//! The scheduling logic, without threads or a clock.
//!
//! [`QueueCore`] is owned by one thread (the scheduler). Every method
//! that changes state takes `now`, fires the timers that are due and
//! dispatches ready work, so tests drive time by passing later `now`s.
//! The only state shared with other threads is [`Shared`]: the map of
//! per-destination lock-free ready queues that connections pull from
//! with `take_more`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_queue::SegQueue;
use millrace_spool::{Envelope, MessageId};
use parking_lot::RwLock;

use crate::types::{
    Destination, Dispatcher, Events, Failure, Job, JobItem, Outcome,
    QueueConfig, QueueError, QueueEvent, QueueStats, RcptOutcome, Router,
    Store,
};

/// Reply text used when a message expires before any attempt finished.
const NO_ATTEMPT: &str = "message expired before a delivery attempt ended";

const READY: u8 = 0;
const TAKEN: u8 = 1;
const CANCELLED: u8 = 2;

/// One queued transaction. Whoever moves `state` away from READY owns
/// it: a connection (TAKEN, through `take_more`) or the expiry
/// (CANCELLED). Cancelled entries stay in the ready queue and are
/// skipped when popped.
struct Batch {
    state: AtomicU8,
    id: MessageId,
    rcpts: Box<[u32]>,
}

impl Batch {
    fn take(&self) -> bool {
        self.state
            .compare_exchange(
                READY,
                TAKEN,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// True when the batch is cancelled (now or before), false when a
    /// connection has it.
    fn cancel(&self) -> bool {
        match self.state.compare_exchange(
            READY,
            CANCELLED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(s) => s == CANCELLED,
        }
    }

    fn is_taken(&self) -> bool {
        self.state.load(Ordering::Acquire) == TAKEN
    }
}

/// A destination's ready queue and connection count.
struct DestQueue {
    ready: SegQueue<Arc<Batch>>,
    /// Written by the scheduler only.
    active: AtomicUsize,
}

/// The part of the queue other threads touch: per-destination ready
/// queues. Only the scheduler adds or removes destinations.
pub(crate) struct Shared {
    dests: RwLock<HashMap<Destination, Arc<DestQueue>>>,
    in_flight: AtomicUsize,
}

impl Shared {
    fn new() -> Self {
        Self {
            dests: RwLock::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn get(&self, dest: &Destination) -> Option<Arc<DestQueue>> {
        self.dests.read().get(dest).cloned()
    }

    /// Pops the next batch nobody owns yet and takes it.
    fn pop_ready(&self, dq: &DestQueue) -> Option<JobItem> {
        while let Some(b) = dq.ready.pop() {
            if b.take() {
                self.in_flight.fetch_add(b.rcpts.len(), Ordering::Relaxed);
                return Some(JobItem { id: b.id, rcpts: b.rcpts.to_vec() });
            }
        }
        None
    }

    /// Up to `max` ready items for `dest` (connection reuse).
    pub(crate) fn take_more(
        &self,
        dest: &Destination,
        max: usize,
    ) -> Option<Job> {
        let dq = self.get(dest)?;
        let mut items = Vec::new();
        while items.len() < max {
            match self.pop_ready(&dq) {
                Some(item) => items.push(item),
                None => break,
            }
        }
        if items.is_empty() {
            None
        } else {
            Some(Job { dest: dest.clone(), items })
        }
    }
}

/// Per-recipient state: final, waiting for a retry (`batch` None), or
/// queued (`batch` Some: ready, or taken by a connection).
struct Rcpt {
    dest: Destination,
    batch: Option<Arc<Batch>>,
    idx: u32,
    fin: bool,
}

const EXPIRED: u8 = 1;
const WARNED: u8 = 2;
const WARN_ARMED: u8 = 4;

/// Per-message state: compact, no envelope, no addresses.
struct Msg {
    arrival_ms: u64,
    /// When the pending retry is due (0 = none).
    retry_at: u64,
    rcpts: Box<[Rcpt]>,
    last_reply: Option<Box<str>>,
    attempts: u16,
    flags: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Expire,
    Retry,
    Warn,
}

/// One entry of the timer set, ordered by due time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: u64,
    kind: Kind,
    id: MessageId,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn dur_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The domain part of an address ("" when there is none).
pub(crate) fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// The queue's state machine: message index, timers, dispatch.
///
/// Sans-clock: callers pass `now`. Not thread safe by itself; the
/// [`crate::Queue`] runs one on its scheduler thread.
pub struct QueueCore<S: Store> {
    cfg: QueueConfig,
    store: Arc<S>,
    router: Arc<dyn Router>,
    dispatcher: Arc<dyn Dispatcher>,
    events: Arc<dyn Events>,
    shared: Arc<Shared>,
    msgs: HashMap<MessageId, Msg>,
    timers: BTreeSet<Timer>,
    dirty: Vec<Destination>,
    /// Recipients in batches (ready or taken).
    queued: usize,
    /// Recipients waiting for a retry.
    waiting: usize,
    /// Recipients not final.
    pending: usize,
    /// Connections dispatched and not done.
    active: usize,
}

impl<S: Store> fmt::Debug for QueueCore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueCore")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<S: Store> QueueCore<S> {
    /// A new, empty queue core.
    pub fn new(
        cfg: QueueConfig,
        store: Arc<S>,
        router: Arc<dyn Router>,
        dispatcher: Arc<dyn Dispatcher>,
        events: Arc<dyn Events>,
    ) -> Result<Self, QueueError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            store,
            router,
            dispatcher,
            events,
            shared: Arc::new(Shared::new()),
            msgs: HashMap::new(),
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            queued: 0,
            waiting: 0,
            pending: 0,
            active: 0,
        })
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The router (for callers that route before `insert`).
    pub fn router(&self) -> &Arc<dyn Router> {
        &self.router
    }

    /// A just-committed message: routes its recipients and makes them
    /// ready at once.
    pub fn enqueue(&mut self, id: MessageId, env: &Envelope, now: SystemTime) {
        let rcpts =
            route(&*self.router, env.recipients.iter().map(|r| &*r.address));
        self.insert(id, env.arrival_unix, rcpts, now);
    }

    /// Adds a message whose recipients (index, destination) are already
    /// routed. A known id is ignored; no recipients means delete.
    pub fn insert(
        &mut self,
        id: MessageId,
        arrival_unix: i64,
        rcpts: Vec<(u32, Destination)>,
        now: SystemTime,
    ) {
        if self.msgs.contains_key(&id) {
            return;
        }
        if rcpts.is_empty() {
            self.delete(id);
            return;
        }
        let arrival_ms =
            u64::try_from(arrival_unix).unwrap_or(0).saturating_mul(1000);
        let rcpts: Box<[Rcpt]> = {
            let dests = self.shared.dests.read();
            rcpts
                .into_iter()
                .map(|(idx, dest)| {
                    // Share one allocation per live destination.
                    let dest = match dests.get_key_value(&dest) {
                        Some((k, _)) => k.clone(),
                        None => dest,
                    };
                    Rcpt { dest, batch: None, idx, fin: false }
                })
                .collect()
        };
        self.pending += rcpts.len();
        self.waiting += rcpts.len();
        let mut msg = Msg {
            arrival_ms,
            retry_at: 0,
            rcpts,
            last_reply: None,
            attempts: 0,
            flags: 0,
        };
        self.queue_waiting(id, &mut msg);
        self.timers.insert(Timer {
            at: self.expiry_ms(&msg),
            kind: Kind::Expire,
            id,
        });
        self.msgs.insert(id, msg);
        self.run(now);
    }

    /// Rebuilds one message from the store (startup): skips recipients
    /// already final; deletes the message if none is left.
    pub fn load(&mut self, id: MessageId, now: SystemTime) {
        if self.msgs.contains_key(&id) {
            return;
        }
        let loaded = match self.store.load(id) {
            Ok(l) => l,
            Err(e) => {
                self.store_failure(id, "load", &e);
                return;
            }
        };
        let pending = loaded
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, (_, done))| !done)
            .map(|(i, (a, _))| (i, a.as_str()));
        let mut rcpts = Vec::new();
        for (i, addr) in pending {
            let Ok(i) = u32::try_from(i) else { break };
            rcpts.push((i, self.router.destination(domain_of(addr))));
        }
        self.insert(id, loaded.arrival_unix, rcpts, now);
    }

    /// Per-recipient outcomes of one transaction of message `id`.
    /// Outcomes for recipients not taken by a connection are ignored.
    pub fn report(
        &mut self,
        id: MessageId,
        outcomes: Vec<RcptOutcome>,
        now: SystemTime,
    ) {
        let now_ms = ms(now);
        let lifetime = dur_ms(self.cfg.max_queue_lifetime);
        let mut newly = Vec::new();
        let Some(msg) = self.msgs.get_mut(&id) else {
            self.run(now);
            return;
        };
        let expiry = msg.arrival_ms.saturating_add(lifetime);
        let mut failures = Vec::new();
        for o in outcomes {
            let Some(r) =
                msg.rcpts.iter_mut().find(|r| r.idx == o.rcpt && !r.fin)
            else {
                continue;
            };
            if !r.batch.as_ref().is_some_and(|b| b.is_taken()) {
                continue;
            }
            r.batch = None;
            self.queued -= 1;
            let _ = self.shared.in_flight.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |v| v.checked_sub(1),
            );
            let rcpt = o.address;
            let event = match o.outcome {
                Outcome::Delivered { remote, reply } => {
                    r.fin = true;
                    newly.push(r.idx);
                    QueueEvent::Delivery { id, rcpt, remote, reply }
                }
                Outcome::Permanent { remote, reply } => {
                    r.fin = true;
                    newly.push(r.idx);
                    failures.push(Failure {
                        rcpt: r.idx,
                        address: rcpt.clone(),
                        remote: remote.clone(),
                        reply: reply.clone(),
                        expired: false,
                    });
                    QueueEvent::Bounce { id, rcpt, remote, reply }
                }
                Outcome::Transient { remote, reply } => {
                    msg.last_reply = Some(reply.as_str().into());
                    let expired = msg.flags & EXPIRED != 0 || now_ms >= expiry;
                    if !expired && msg.retry_at == 0 {
                        let n = usize::from(msg.attempts)
                            .min(self.cfg.retry_intervals.len() - 1);
                        let next = now_ms.saturating_add(dur_ms(
                            self.cfg.retry_intervals[n],
                        ));
                        if next <= expiry {
                            msg.attempts = msg.attempts.saturating_add(1);
                            msg.retry_at = next;
                            self.timers.insert(Timer {
                                at: next,
                                kind: Kind::Retry,
                                id,
                            });
                            if let Some(d) = self.cfg.delay_warning
                                && msg.flags & WARN_ARMED == 0
                            {
                                msg.flags |= WARN_ARMED;
                                self.timers.insert(Timer {
                                    at: msg
                                        .arrival_ms
                                        .saturating_add(dur_ms(d))
                                        .max(now_ms),
                                    kind: Kind::Warn,
                                    id,
                                });
                            }
                        }
                    }
                    if expired || msg.retry_at == 0 {
                        r.fin = true;
                        newly.push(r.idx);
                        failures.push(Failure {
                            rcpt: r.idx,
                            address: rcpt.clone(),
                            remote,
                            reply: reply.clone(),
                            expired: true,
                        });
                        QueueEvent::Expiration { id, rcpt, reply }
                    } else {
                        self.waiting += 1;
                        QueueEvent::TransientFailure {
                            id,
                            rcpt,
                            remote,
                            reply,
                            next_attempt: time(msg.retry_at),
                        }
                    }
                }
            };
            self.events.event(event);
        }
        if !failures.is_empty() {
            self.events.failed(id, &failures);
        }
        self.finish(id, &newly);
        self.run(now);
    }

    /// A connection to `dest` ended: frees its slot.
    pub fn connection_done(&mut self, dest: &Destination, now: SystemTime) {
        if let Some(dq) = self.shared.get(dest) {
            let a = dq.active.load(Ordering::Relaxed);
            if a > 0 {
                dq.active.store(a - 1, Ordering::Relaxed);
                self.active -= 1;
                self.dirty.push(dest.clone());
            }
        }
        self.run(now);
    }

    /// Up to `max` ready items for `dest`, for a connection that can
    /// carry more (it stays counted as active).
    pub fn take_more(&self, dest: &Destination, max: usize) -> Option<Job> {
        self.shared.take_more(dest, max)
    }

    /// Fires the timers due at `now` and dispatches ready work.
    pub fn tick(&mut self, now: SystemTime) {
        self.run(now);
    }

    /// When the next timer is due, if any.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.timers.first().map(|t| time(t.at))
    }

    /// Sizes of the queue.
    pub fn stats(&self) -> QueueStats {
        let in_flight = self.shared.in_flight.load(Ordering::Relaxed);
        QueueStats {
            messages: self.msgs.len(),
            recipients_pending: self.pending,
            ready: self.queued.saturating_sub(in_flight),
            deferred: self.waiting,
            in_flight,
            active_connections: self.active,
        }
    }

    fn expiry_ms(&self, msg: &Msg) -> u64 {
        msg.arrival_ms.saturating_add(dur_ms(self.cfg.max_queue_lifetime))
    }

    fn run(&mut self, now: SystemTime) {
        let now_ms = ms(now);
        while let Some(&t) = self.timers.first() {
            if t.at > now_ms {
                break;
            }
            self.timers.pop_first();
            match t.kind {
                Kind::Expire => self.expire(t.id),
                Kind::Retry => self.retry(t.id, t.at),
                Kind::Warn => self.warn(t.id),
            }
        }
        self.dispatch_dirty();
    }

    /// Groups the waiting recipients of `msg` by destination into
    /// batches and pushes them onto the ready queues.
    fn queue_waiting(&mut self, id: MessageId, msg: &mut Msg) {
        let max = self.cfg.max_recipients_per_transaction;
        let mut todo: Vec<usize> = (0..msg.rcpts.len())
            .filter(|&i| !msg.rcpts[i].fin && msg.rcpts[i].batch.is_none())
            .collect();
        todo.sort_by(|&a, &b| msg.rcpts[a].dest.cmp(&msg.rcpts[b].dest));
        let mut start = 0;
        while start < todo.len() {
            let dest = msg.rcpts[todo[start]].dest.clone();
            let len = todo[start..]
                .iter()
                .take_while(|&&i| msg.rcpts[i].dest == dest)
                .count();
            let group = &todo[start..start + len];
            start += len;
            for chunk in group.chunks(max) {
                let batch = Arc::new(Batch {
                    state: AtomicU8::new(READY),
                    id,
                    rcpts: chunk.iter().map(|&i| msg.rcpts[i].idx).collect(),
                });
                for &i in chunk {
                    msg.rcpts[i].batch = Some(batch.clone());
                }
                self.waiting -= chunk.len();
                self.queued += chunk.len();
                self.push(&dest, batch);
            }
            self.dirty.push(dest);
        }
    }

    fn push(&self, dest: &Destination, batch: Arc<Batch>) {
        if let Some(dq) = self.shared.get(dest) {
            dq.ready.push(batch);
            return;
        }
        let mut map = self.shared.dests.write();
        let dq = map.entry(dest.clone()).or_insert_with(|| {
            Arc::new(DestQueue {
                ready: SegQueue::new(),
                active: AtomicUsize::new(0),
            })
        });
        dq.ready.push(batch);
    }

    fn dispatch_dirty(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let max = self.cfg.max_connections_per_destination;
        for dest in dirty {
            let Some(dq) = self.shared.get(&dest) else { continue };
            while dq.active.load(Ordering::Relaxed) < max {
                let Some(item) = self.shared.pop_ready(&dq) else { break };
                dq.active.fetch_add(1, Ordering::Relaxed);
                self.active += 1;
                self.dispatcher
                    .dispatch(Job { dest: dest.clone(), items: vec![item] });
            }
            if dq.active.load(Ordering::Relaxed) >= max && !dq.ready.is_empty()
            {
                self.dispatcher.nudge(&dest);
            }
            if dq.active.load(Ordering::Relaxed) == 0 && dq.ready.is_empty() {
                self.shared.dests.write().remove(&dest);
            }
        }
    }

    fn retry(&mut self, id: MessageId, at: u64) {
        let Some(mut msg) = self.msgs.remove(&id) else { return };
        if msg.retry_at == at {
            msg.retry_at = 0;
            self.queue_waiting(id, &mut msg);
        }
        self.msgs.insert(id, msg);
    }

    /// Expires every pending recipient of `id` that no connection holds;
    /// held ones expire when their outcome comes back.
    fn expire(&mut self, id: MessageId) {
        let Some(msg) = self.msgs.get_mut(&id) else { return };
        msg.flags |= EXPIRED;
        let mut newly = Vec::new();
        for r in msg.rcpts.iter_mut().filter(|r| !r.fin) {
            match &r.batch {
                Some(b) => {
                    if b.cancel() {
                        r.batch = None;
                        r.fin = true;
                        self.queued -= 1;
                        newly.push(r.idx);
                    }
                }
                None => {
                    r.fin = true;
                    self.waiting -= 1;
                    newly.push(r.idx);
                }
            }
        }
        if newly.is_empty() {
            return;
        }
        let reply = msg.last_reply.as_deref().unwrap_or(NO_ATTEMPT).to_owned();
        let addrs = self.addresses(id);
        let mut failures = Vec::with_capacity(newly.len());
        for &i in &newly {
            let rcpt = address(&addrs, i);
            failures.push(Failure {
                rcpt: i,
                address: rcpt.clone(),
                remote: None,
                reply: reply.clone(),
                expired: true,
            });
            self.events.event(QueueEvent::Expiration {
                id,
                rcpt,
                reply: reply.clone(),
            });
        }
        self.events.failed(id, &failures);
        self.finish(id, &newly);
    }

    fn warn(&mut self, id: MessageId) {
        let Some(msg) = self.msgs.get_mut(&id) else { return };
        if msg.flags & WARNED != 0 {
            return;
        }
        msg.flags |= WARNED;
        let pending: Vec<u32> =
            msg.rcpts.iter().filter(|r| !r.fin).map(|r| r.idx).collect();
        if pending.is_empty() {
            return;
        }
        let reply = msg.last_reply.as_deref().unwrap_or(NO_ATTEMPT).to_owned();
        let addrs = self.addresses(id);
        let rcpts = pending.iter().map(|&i| address(&addrs, i)).collect();
        self.events.event(QueueEvent::DelayWarning { id, rcpts, reply });
    }

    /// Records newly final recipients: deletes the message when all are
    /// final, else marks them done in the store.
    fn finish(&mut self, id: MessageId, newly: &[u32]) {
        if newly.is_empty() {
            return;
        }
        self.pending -= newly.len();
        let Some(msg) = self.msgs.get(&id) else { return };
        if msg.rcpts.iter().all(|r| r.fin) {
            let expiry = self.expiry_ms(msg);
            let warn = self
                .cfg
                .delay_warning
                .map(|d| msg.arrival_ms.saturating_add(dur_ms(d)));
            let retry = msg.retry_at;
            self.timers.remove(&Timer { at: expiry, kind: Kind::Expire, id });
            if retry != 0 {
                self.timers.remove(&Timer {
                    at: retry,
                    kind: Kind::Retry,
                    id,
                });
            }
            if let Some(w) = warn {
                // Armed warn timers sit at max(arrival + d, arm time);
                // an armed one past that point is removed lazily.
                self.timers.remove(&Timer { at: w, kind: Kind::Warn, id });
            }
            self.msgs.remove(&id);
            self.delete(id);
        } else if let Err(e) = self.store.mark_done(id, newly) {
            self.store_failure(id, "mark_done", &e);
        }
    }

    fn delete(&self, id: MessageId) {
        if let Err(e) = self.store.delete(id) {
            self.store_failure(id, "delete", &e);
        }
    }

    fn store_failure(&self, id: MessageId, op: &'static str, e: &S::Error) {
        self.events.event(QueueEvent::StoreFailure {
            id,
            op,
            error: e.to_string(),
        });
    }

    /// Recipient addresses for events the scheduler originates (rare:
    /// expiry, delay warning); read from the store.
    fn addresses(&self, id: MessageId) -> Vec<String> {
        match self.store.load(id) {
            Ok(l) => l.recipients.into_iter().map(|(a, _)| a).collect(),
            Err(e) => {
                self.store_failure(id, "load", &e);
                Vec::new()
            }
        }
    }
}

fn address(addrs: &[String], i: u32) -> String {
    usize::try_from(i)
        .ok()
        .and_then(|i| addrs.get(i))
        .cloned()
        .unwrap_or_else(|| format!("<recipient #{i}>"))
}

/// Routes addresses to (index, destination) pairs.
pub(crate) fn route<'a>(
    router: &dyn Router,
    addrs: impl Iterator<Item = &'a str>,
) -> Vec<(u32, Destination)> {
    addrs
        .enumerate()
        .map_while(|(i, a)| {
            let i = u32::try_from(i).ok()?;
            Some((i, router.destination(domain_of(a))))
        })
        .collect()
}
