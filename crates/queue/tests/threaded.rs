//! The threaded queue over a real spool: the test thread plays the
//! delivery driver, waiting on channels with deadlines (no sleeps).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, unbounded};
use millrace_queue::{
    Destination, Dispatcher, Events, Job, Outcome, Queue, QueueConfig,
    QueueEvent, RcptOutcome, Router,
};
use millrace_spool::{Envelope, MessageId, Recipient, Spool, SpoolOptions};

const WAIT: Duration = Duration::from_secs(10);

struct ByDomain;
impl Router for ByDomain {
    fn destination(&self, domain: &str) -> Destination {
        Destination::new(&format!("mx:{domain}"))
    }
}

struct Chan<T>(Sender<T>);
impl Dispatcher for Chan<Job> {
    fn dispatch(&self, job: Job) {
        let _ = self.0.send(job);
    }
}
impl Events for Chan<QueueEvent> {
    fn event(&self, e: QueueEvent) {
        let _ = self.0.send(e);
    }
}

struct Rig {
    queue: Queue,
    jobs: Receiver<Job>,
    events: Receiver<QueueEvent>,
}

fn start(spool: &Spool, cfg: QueueConfig) -> Rig {
    let (jt, jobs) = unbounded();
    let (et, events) = unbounded();
    let queue = Queue::start(
        cfg,
        Arc::new(spool.clone()),
        Arc::new(ByDomain),
        Arc::new(Chan(jt)),
        Arc::new(Chan(et)),
    )
    .unwrap();
    Rig { queue, jobs, events }
}

fn commit(spool: &Spool, rcpts: &[&str]) -> (MessageId, Envelope) {
    let mut m = spool.create(rcpts.len()).unwrap();
    m.write_all(b"Subject: t\r\n\r\nbody\r\n").unwrap();
    let env = Envelope {
        sender: "s@example.org".into(),
        recipients: rcpts
            .iter()
            .map(|a| Recipient { address: (*a).into(), ..Default::default() })
            .collect(),
        arrival_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
        ..Default::default()
    };
    (spool.commit_sync(m, &env).unwrap(), env)
}

fn report(q: &Queue, id: MessageId, rcpts: &[u32], code: u16) {
    let outcomes = rcpts
        .iter()
        .map(|&r| {
            let reply = format!("{code} test");
            RcptOutcome {
                rcpt: r,
                address: format!("r{r}"),
                outcome: if code < 300 {
                    Outcome::Delivered { remote: "sink".into(), reply }
                } else {
                    Outcome::Transient { remote: None, reply }
                },
            }
        })
        .collect();
    q.report(id, outcomes);
}

fn poll(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn config() -> QueueConfig {
    QueueConfig {
        retry_intervals: vec![Duration::from_millis(20)],
        max_queue_lifetime: Duration::from_secs(3600),
        delay_warning: None,
        max_connections_per_destination: 2,
        max_messages_per_connection: 10,
        max_recipients_per_transaction: 10,
    }
}

#[test]
fn load_from_spool_deliver_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    for _ in 0..5 {
        commit(&spool, &["a@x.net", "b@y.net"]);
    }
    let committed = spool.recover().unwrap().committed;
    assert_eq!(committed.len(), 5);
    let rig = start(&spool, config());
    rig.queue.load(committed);
    let mut delivered = 0;
    while delivered < 10 {
        let job = rig.jobs.recv_timeout(WAIT).expect("a job");
        let mut items = job.items;
        while !items.is_empty() {
            for it in &items {
                report(&rig.queue, it.id, &it.rcpts, 250);
                delivered += it.rcpts.len();
            }
            items = rig
                .queue
                .take_more(&job.dest, 10)
                .map_or(Vec::new(), |j| j.items);
        }
        rig.queue.connection_done(&job.dest);
    }
    poll("the spool to empty", || spool.list().unwrap().is_empty());
    poll("stats to drain", || rig.queue.stats().messages == 0);
    let s = rig.queue.stats();
    assert_eq!((s.recipients_pending, s.in_flight), (0, 0));
    let ev: Vec<_> = rig.events.try_iter().collect();
    assert_eq!(ev.len(), 10);
    assert!(ev.iter().all(|e| matches!(e, QueueEvent::Delivery { .. })));
    rig.queue.shutdown();
}

#[test]
fn retry_then_restart_skips_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    let (id, env) = commit(&spool, &["a@x.net", "b@x.net"]);
    let rig = start(&spool, config());
    rig.queue.enqueue(id, &env);
    let job = rig.jobs.recv_timeout(WAIT).expect("first job");
    assert_eq!(job.items[0].rcpts, vec![0, 1]);
    report(&rig.queue, id, &[0], 250);
    report(&rig.queue, id, &[1], 451);
    rig.queue.connection_done(&job.dest);
    // Retried after the 20 ms interval, only the deferred recipient.
    let job = rig.jobs.recv_timeout(WAIT).expect("retry job");
    assert_eq!(job.items[0].rcpts, vec![1]);
    // Crash-like stop: the recipient is in flight and never reported.
    rig.queue.shutdown();
    assert!(spool.open_message(id).unwrap().is_done(0));

    let rig = start(&spool, config());
    rig.queue.load(spool.recover().unwrap().committed);
    let job = rig.jobs.recv_timeout(WAIT).expect("job after restart");
    assert_eq!(job.items.len(), 1);
    assert_eq!(job.items[0].rcpts, vec![1], "delivered one not resent");
    report(&rig.queue, id, &[1], 250);
    rig.queue.connection_done(&job.dest);
    poll("the spool to empty", || spool.list().unwrap().is_empty());
    rig.queue.shutdown();
}
