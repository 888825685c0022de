//! Unit tests of the core with a fake store, driving time by hand.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use millrace_spool::{Envelope, MessageId, Recipient};
use parking_lot::Mutex;

use crate::*;

const T0: u64 = 1_700_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

fn mid(n: u128) -> MessageId {
    MessageId::from_u128(n)
}

#[derive(Default)]
struct FakeStore {
    msgs: Mutex<HashMap<MessageId, LoadedMessage>>,
    marked: Mutex<Vec<(MessageId, Vec<u32>)>>,
    deleted: Mutex<Vec<MessageId>>,
}

#[derive(Debug, thiserror::Error)]
#[error("no such message")]
struct Missing;

impl Store for FakeStore {
    type Error = Missing;
    fn load(&self, id: MessageId) -> Result<LoadedMessage, Missing> {
        self.msgs.lock().get(&id).cloned().ok_or(Missing)
    }
    fn mark_done(&self, id: MessageId, rcpts: &[u32]) -> Result<(), Missing> {
        let mut m = self.msgs.lock();
        let msg = m.get_mut(&id).ok_or(Missing)?;
        for &r in rcpts {
            msg.recipients[r as usize].1 = true;
        }
        self.marked.lock().push((id, rcpts.to_vec()));
        Ok(())
    }
    fn delete(&self, id: MessageId) -> Result<(), Missing> {
        self.msgs.lock().remove(&id);
        self.deleted.lock().push(id);
        Ok(())
    }
}

struct MxRouter;
impl Router for MxRouter {
    fn destination(&self, domain: &str) -> Destination {
        Destination::new(&format!("mx:{domain}"))
    }
}

#[derive(Default)]
struct Rec {
    jobs: Mutex<Vec<Job>>,
    events: Mutex<Vec<QueueEvent>>,
    failed: Mutex<Vec<(MessageId, Vec<Failure>)>>,
    nudges: Mutex<Vec<Destination>>,
}
impl Dispatcher for Rec {
    fn dispatch(&self, job: Job) {
        self.jobs.lock().push(job);
    }
    fn nudge(&self, dest: &Destination) {
        self.nudges.lock().push(dest.clone());
    }
}
impl Events for Rec {
    fn event(&self, e: QueueEvent) {
        self.events.lock().push(e);
    }
    fn failed(&self, id: MessageId, failures: &[Failure]) {
        self.failed.lock().push((id, failures.to_vec()));
    }
}

struct H {
    core: QueueCore<FakeStore>,
    store: Arc<FakeStore>,
    rec: Arc<Rec>,
}

fn cfg() -> QueueConfig {
    QueueConfig {
        retry_intervals: vec![
            Duration::from_secs(60),
            Duration::from_secs(300),
        ],
        max_queue_lifetime: Duration::from_secs(3600),
        delay_warning: None,
        max_connections_per_destination: 4,
        max_messages_per_connection: 100,
        max_recipients_per_transaction: 100,
    }
}

fn harness(cfg: QueueConfig) -> H {
    let store = Arc::new(FakeStore::default());
    let rec = Arc::new(Rec::default());
    let core = QueueCore::new(
        cfg,
        store.clone(),
        Arc::new(MxRouter),
        rec.clone(),
        rec.clone(),
    )
    .unwrap();
    H { core, store, rec }
}

fn env(rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: "s@example.org".into(),
        recipients: rcpts
            .iter()
            .map(|a| Recipient { address: (*a).into(), ..Default::default() })
            .collect(),
        arrival_unix: T0 as i64,
        ..Default::default()
    }
}

impl H {
    fn add(&mut self, n: u128, rcpts: &[&str], now: SystemTime) {
        let e = env(rcpts);
        self.store.msgs.lock().insert(
            mid(n),
            LoadedMessage {
                arrival_unix: e.arrival_unix,
                recipients: rcpts
                    .iter()
                    .map(|a| ((*a).into(), false))
                    .collect(),
            },
        );
        self.core.enqueue(mid(n), &e, now);
    }
    fn jobs(&self) -> Vec<Job> {
        std::mem::take(&mut *self.rec.jobs.lock())
    }
    fn events(&self) -> Vec<QueueEvent> {
        std::mem::take(&mut *self.rec.events.lock())
    }
    fn deleted(&self) -> Vec<MessageId> {
        self.store.deleted.lock().clone()
    }
    /// Reports one outcome kind for every recipient of `item`, then
    /// ends the connection.
    fn finish(&mut self, job: &Job, code: u16, now: SystemTime) {
        for item in &job.items {
            self.report(item, code, now);
        }
        self.core.connection_done(&job.dest, now);
    }
    fn report(&mut self, item: &JobItem, code: u16, now: SystemTime) {
        let outcomes = item
            .rcpts
            .iter()
            .map(|&r| RcptOutcome {
                rcpt: r,
                address: format!("rcpt{r}"),
                outcome: outcome(code),
            })
            .collect();
        self.core.report(item.id, outcomes, now);
    }
}

fn outcome(code: u16) -> Outcome {
    let reply = format!("{code} test");
    match code / 100 {
        2 => Outcome::Delivered { remote: "sink".into(), reply },
        4 => Outcome::Transient { remote: Some("sink".into()), reply },
        _ => Outcome::Permanent { remote: Some("sink".into()), reply },
    }
}

fn dest(d: &str) -> Destination {
    Destination::new(d)
}

#[test]
fn delivered_message_is_deleted() {
    let mut h = harness(cfg());
    h.add(1, &["a@x.net"], at(0));
    let jobs = h.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].dest, dest("mx:x.net"));
    assert_eq!(jobs[0].items, vec![JobItem { id: mid(1), rcpts: vec![0] }]);
    let s = h.core.stats();
    assert_eq!((s.messages, s.in_flight, s.active_connections), (1, 1, 1));
    h.finish(&jobs[0], 250, at(1));
    assert_eq!(h.deleted(), vec![mid(1)]);
    assert!(h.store.marked.lock().is_empty());
    let ev = h.events();
    assert!(matches!(&ev[..], [QueueEvent::Delivery { id, rcpt, .. }]
        if *id == mid(1) && rcpt == "rcpt0"));
    assert_eq!(h.core.stats(), QueueStats::default());
    assert_eq!(h.core.next_deadline(), None, "timers of a gone message");
    assert!(h.core.take_more(&jobs[0].dest, 10).is_none());
}

#[test]
fn two_destinations_two_jobs() {
    let mut h = harness(cfg());
    h.add(1, &["a@x.net", "b@y.net", "c@x.net"], at(0));
    let mut jobs = h.jobs();
    jobs.sort_by(|a, b| a.dest.cmp(&b.dest));
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].dest, dest("mx:x.net"));
    assert_eq!(jobs[0].items[0].rcpts, vec![0, 2]);
    assert_eq!(jobs[1].dest, dest("mx:y.net"));
    assert_eq!(jobs[1].items[0].rcpts, vec![1]);
    h.finish(&jobs[0], 250, at(1));
    assert_eq!(*h.store.marked.lock(), vec![(mid(1), vec![0, 2])]);
    assert!(h.deleted().is_empty());
    h.finish(&jobs[1], 250, at(2));
    assert_eq!(h.deleted(), vec![mid(1)]);
}

#[test]
fn deferred_twice_then_delivered_once() {
    let mut h = harness(cfg());
    h.add(1, &["a@x.net"], at(0));
    let j = h.jobs();
    h.finish(&j[0], 451, at(0));
    let ev = h.events();
    assert!(matches!(&ev[..], [QueueEvent::TransientFailure {
        next_attempt, .. }] if *next_attempt == at(60)));
    assert_eq!(h.core.stats().deferred, 1);
    assert_eq!(h.core.next_deadline(), Some(at(60)));
    h.core.tick(at(59));
    assert!(h.jobs().is_empty(), "no retry before the interval");
    h.core.tick(at(60));
    let j = h.jobs();
    assert_eq!(j.len(), 1, "retried at the first interval");
    h.finish(&j[0], 451, at(61));
    let ev = h.events();
    assert!(matches!(&ev[..], [QueueEvent::TransientFailure {
        next_attempt, .. }] if *next_attempt == at(361)));
    h.core.tick(at(360));
    assert!(h.jobs().is_empty());
    h.core.tick(at(361));
    let j = h.jobs();
    assert_eq!(j.len(), 1, "retried at the second interval");
    h.finish(&j[0], 250, at(362));
    let ev = h.events();
    assert_eq!(ev.len(), 1);
    assert!(matches!(ev[0], QueueEvent::Delivery { .. }));
    assert_eq!(h.deleted(), vec![mid(1)]);
    h.core.tick(at(100_000));
    assert!(h.jobs().is_empty() && h.events().is_empty());
}

#[test]
fn always_deferred_expires_at_lifetime() {
    let mut c = cfg();
    c.retry_intervals = vec![Duration::from_secs(60)];
    c.max_queue_lifetime = Duration::from_secs(300);
    let mut h = harness(c);
    h.add(1, &["a@x.net"], at(0));
    let mut now = 0;
    let mut attempts = 0;
    let expired_at = loop {
        h.core.tick(at(now));
        for j in h.jobs() {
            attempts += 1;
            h.finish(&j, 451, at(now));
        }
        let ev = h.events();
        if let Some(QueueEvent::Expiration { reply, rcpt, .. }) = ev.last() {
            assert_eq!(reply, "451 test", "last reply seen");
            assert_eq!(rcpt, "a@x.net", "address read from the store");
            break now;
        }
        now += 1;
        assert!(now < 1000, "never expired");
    };
    assert_eq!(expired_at, 300);
    assert_eq!(attempts, 5, "attempts at 0, 60, 120, 180, 240");
    assert_eq!(h.deleted(), vec![mid(1)]);
    assert_eq!(h.core.stats(), QueueStats::default());
}

#[test]
fn expiry_while_throttled_and_in_flight() {
    let mut c = cfg();
    c.max_connections_per_destination = 1;
    c.max_queue_lifetime = Duration::from_secs(300);
    let mut h = harness(c);
    h.add(1, &["a@x.net"], at(0));
    h.add(2, &["b@x.net"], at(0));
    h.add(3, &["c@x.net"], at(0));
    let j = h.jobs();
    assert_eq!(j.len(), 1, "one connection allowed");
    assert_eq!(j[0].items[0].id, mid(1));
    h.core.tick(at(300));
    let ev = h.events();
    let expired: Vec<_> = ev
        .iter()
        .map(|e| match e {
            QueueEvent::Expiration { id, .. } => *id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(expired, vec![mid(2), mid(3)], "throttled ones expire");
    assert_eq!(h.deleted(), vec![mid(2), mid(3)]);
    // The stale ready entries are skipped.
    assert!(h.core.take_more(&j[0].dest, 10).is_none());
    // The in-flight one expires when its deferral comes back.
    h.finish(&j[0], 421, at(301));
    let ev = h.events();
    assert!(matches!(&ev[..], [QueueEvent::Expiration { id, reply, .. }]
        if *id == mid(1) && reply == "421 test"));
    assert_eq!(h.deleted(), vec![mid(2), mid(3), mid(1)]);
    assert_eq!(h.core.stats(), QueueStats::default());
    assert!(h.jobs().is_empty());
}

#[test]
fn in_flight_delivery_after_expiry_counts() {
    let mut c = cfg();
    c.max_queue_lifetime = Duration::from_secs(300);
    let mut h = harness(c);
    h.add(1, &["a@x.net"], at(0));
    let j = h.jobs();
    h.core.tick(at(400));
    assert!(h.events().is_empty(), "in flight: not expired yet");
    h.finish(&j[0], 250, at(401));
    assert!(matches!(&h.events()[..], [QueueEvent::Delivery { .. }]));
    assert_eq!(h.deleted(), vec![mid(1)]);
}

#[test]
fn partial_acceptance_retries_only_deferred() {
    let mut h = harness(cfg());
    h.add(1, &["a@x.net", "b@x.net", "c@x.net"], at(0));
    let j = h.jobs();
    assert_eq!(j[0].items[0].rcpts, vec![0, 1, 2]);
    let outcomes = [(0, 250), (1, 451), (2, 550)]
        .iter()
        .map(|&(r, c)| RcptOutcome {
            rcpt: r,
            address: format!("r{r}"),
            outcome: outcome(c),
        })
        .collect();
    h.core.report(mid(1), outcomes, at(1));
    h.core.connection_done(&j[0].dest, at(1));
    assert_eq!(*h.store.marked.lock(), vec![(mid(1), vec![0, 2])]);
    let kinds: Vec<_> = h
        .events()
        .iter()
        .map(|e| match e {
            QueueEvent::Delivery { .. } => "delivery",
            QueueEvent::TransientFailure { .. } => "transient",
            QueueEvent::Bounce { .. } => "bounce",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["delivery", "transient", "bounce"]);
    h.core.tick(at(61));
    let j = h.jobs();
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].items, vec![JobItem { id: mid(1), rcpts: vec![1] }]);
    h.finish(&j[0], 250, at(62));
    assert_eq!(h.deleted(), vec![mid(1)]);
}

#[test]
fn max_connections_per_destination_respected() {
    let mut c = cfg();
    c.max_connections_per_destination = 2;
    let mut h = harness(c);
    for n in 0..5 {
        h.add(n, &["a@x.net"], at(0));
    }
    let j = h.jobs();
    assert_eq!(j.len(), 2);
    assert_eq!(h.core.stats().active_connections, 2);
    assert_eq!(h.core.stats().ready, 3);
    // Ending one connection (without take_more) dispatches another.
    h.finish(&j[0], 250, at(1));
    let j2 = h.jobs();
    assert_eq!(j2.len(), 1);
    assert_eq!(h.core.stats().active_connections, 2);
    // An unknown destination's done is ignored.
    h.core.connection_done(&dest("mx:nowhere"), at(1));
    assert_eq!(h.core.stats().active_connections, 2);
}

#[test]
fn recipients_split_per_transaction() {
    let mut c = cfg();
    c.max_recipients_per_transaction = 2;
    c.max_connections_per_destination = 1;
    let mut h = harness(c);
    h.add(1, &["a@x.net", "b@x.net", "c@x.net", "d@x.net", "e@x.net"], at(0));
    let j = h.jobs();
    assert_eq!(j.len(), 1);
    let more = h.core.take_more(&j[0].dest, 10).unwrap();
    let mut all = j[0].items.clone();
    all.extend(more.items);
    let sets: Vec<_> = all.iter().map(|i| i.rcpts.clone()).collect();
    assert_eq!(sets, vec![vec![0, 1], vec![2, 3], vec![4]]);
}

/// Plays a delivery driver: each connection carries up to
/// `max_messages_per_connection` items, pulling more with take_more.
#[test]
fn connection_reuse_bounds_connections() {
    let mut c = cfg();
    c.max_connections_per_destination = 3;
    c.max_messages_per_connection = 100;
    let per_conn = c.max_messages_per_connection;
    let mut h = harness(c);
    let n = 1000;
    for i in 0..n {
        h.add(i, &["a@x.net"], at(0));
    }
    let mut connections = 0;
    let mut delivered = 0;
    loop {
        let jobs = h.jobs();
        if jobs.is_empty() {
            break;
        }
        for job in jobs {
            connections += 1;
            let mut carried = 0;
            let mut items = job.items.clone();
            while !items.is_empty() {
                for item in &items {
                    h.report(item, 250, at(1));
                    carried += 1;
                    delivered += 1;
                }
                let room = per_conn - carried;
                items = match h.core.take_more(&job.dest, room.min(1)) {
                    Some(m) if room > 0 => m.items,
                    _ => Vec::new(),
                };
            }
            assert!(carried <= per_conn);
            h.core.connection_done(&job.dest, at(1));
        }
    }
    assert_eq!(delivered, n);
    assert_eq!(h.deleted().len(), n as usize);
    assert!(connections <= 1000usize.div_ceil(per_conn) + 3, "{connections}");
    assert_eq!(h.core.stats(), QueueStats::default());
}

#[test]
fn load_after_restart_skips_done_recipients() {
    let mut h = harness(cfg());
    h.store.msgs.lock().insert(
        mid(1),
        LoadedMessage {
            arrival_unix: T0 as i64,
            recipients: vec![
                ("a@x.net".into(), true),
                ("b@x.net".into(), false),
            ],
        },
    );
    h.store.msgs.lock().insert(
        mid(2),
        LoadedMessage {
            arrival_unix: T0 as i64,
            recipients: vec![("a@x.net".into(), true)],
        },
    );
    h.core.load(mid(1), at(10));
    h.core.load(mid(2), at(10));
    h.core.load(mid(3), at(10));
    let j = h.jobs();
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].items, vec![JobItem { id: mid(1), rcpts: vec![1] }]);
    assert_eq!(h.deleted(), vec![mid(2)], "all done: deleted");
    assert!(matches!(
        &h.events()[..],
        [QueueEvent::StoreFailure { op: "load", .. }]
    ));
    // Lifetime counts from arrival, not from the load.
    h.core.tick(at(3600));
    assert_eq!(h.events().len(), 0, "in flight");
    h.finish(&j[0], 451, at(3601));
    assert!(matches!(&h.events()[..], [QueueEvent::Expiration { .. }]));
}

#[test]
fn delay_warning_once() {
    let mut c = cfg();
    c.retry_intervals = vec![Duration::from_secs(60)];
    c.delay_warning = Some(Duration::from_secs(150));
    let mut h = harness(c);
    h.add(1, &["a@x.net", "b@y.net"], at(0));
    let mut warnings = Vec::new();
    for now in 0..400 {
        h.core.tick(at(now));
        for j in h.jobs() {
            let code = if j.dest == dest("mx:x.net") { 250 } else { 451 };
            h.finish(&j, code, at(now));
        }
        for e in h.events() {
            if let QueueEvent::DelayWarning { rcpts, .. } = e {
                warnings.push((now, rcpts));
            }
        }
    }
    assert_eq!(warnings, vec![(150, vec!["b@y.net".to_string()])]);
}

#[test]
fn duplicate_and_unknown_reports_are_ignored() {
    let mut h = harness(cfg());
    h.add(1, &["a@x.net"], at(0));
    h.add(1, &["a@x.net"], at(0));
    let j = h.jobs();
    assert_eq!(j.len(), 1);
    h.report(&JobItem { id: mid(9), rcpts: vec![0] }, 250, at(1));
    h.report(&JobItem { id: mid(1), rcpts: vec![7] }, 250, at(1));
    assert!(h.events().is_empty());
    h.report(&j[0].items[0], 250, at(1));
    h.report(&j[0].items[0], 550, at(1));
    assert_eq!(h.events().len(), 1);
    assert_eq!(h.deleted(), vec![mid(1)]);
}

#[test]
fn bad_config_is_refused() {
    let mut c = cfg();
    c.retry_intervals.clear();
    let r = QueueCore::new(
        c,
        Arc::new(FakeStore::default()),
        Arc::new(MxRouter),
        Arc::new(Rec::default()),
        Arc::new(Rec::default()),
    );
    assert!(matches!(r, Err(QueueError::Config(_))));
}

#[test]
fn failures_of_one_step_are_grouped_per_message() {
    let mut h = harness(cfg());
    h.add(1, &["a@x.net", "b@x.net", "c@x.net"], at(0));
    let jobs = h.jobs();
    let item = &jobs[0].items[0];
    // a and c refused, b delivered, in one transaction.
    let outcomes = item
        .rcpts
        .iter()
        .map(|&r| RcptOutcome {
            rcpt: r,
            address: format!("rcpt{r}"),
            outcome: outcome(if r == 1 { 250 } else { 550 }),
        })
        .collect();
    h.core.report(item.id, outcomes, at(1));
    let failed = h.rec.failed.lock().clone();
    assert_eq!(failed.len(), 1, "one bounce per message per event");
    let (id, f) = &failed[0];
    assert_eq!(*id, mid(1));
    let got: Vec<(u32, bool)> =
        f.iter().map(|x| (x.rcpt, x.expired)).collect();
    assert_eq!(got, vec![(0, false), (2, false)]);
    assert_eq!(f[0].reply, "550 test");
    assert_eq!(f[0].remote.as_deref(), Some("sink"));
    // Reported before the store forgets the message.
    assert_eq!(h.deleted(), vec![mid(1)]);
}

#[test]
fn expiry_is_one_grouped_failure() {
    let mut c = cfg();
    c.max_queue_lifetime = Duration::from_secs(300);
    c.max_connections_per_destination = 1;
    let mut h = harness(c);
    h.add(1, &["busy@x.net"], at(0));
    h.add(2, &["a@y.net", "b@y.net"], at(0));
    for j in h.jobs() {
        if j.dest == dest("mx:y.net") {
            h.finish(&j, 451, at(1));
        }
    }
    h.core.tick(at(300));
    let failed = h.rec.failed.lock().clone();
    let two: Vec<_> = failed.iter().filter(|(id, _)| *id == mid(2)).collect();
    assert_eq!(two.len(), 1, "{failed:?}");
    assert_eq!(two[0].1.len(), 2);
    assert!(two[0].1.iter().all(|f| f.expired && f.reply == "451 test"));
}

#[test]
fn saturated_destination_nudges_its_idle_connections() {
    let mut c = cfg();
    c.max_connections_per_destination = 1;
    let mut h = harness(c);
    h.add(1, &["a@x.net"], at(0));
    assert_eq!(h.jobs().len(), 1);
    assert!(h.rec.nudges.lock().is_empty(), "a slot was free");
    // The one connection is open (maybe idle): new work nudges it.
    h.add(2, &["b@x.net"], at(0));
    assert!(h.jobs().is_empty(), "no second connection");
    assert_eq!(*h.rec.nudges.lock(), vec![dest("mx:x.net")]);
    let more = h.core.take_more(&dest("mx:x.net"), 10).unwrap();
    assert_eq!(more.items[0].id, mid(2));
}
