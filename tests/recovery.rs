//! Durability: a 250 after DATA means the message is on disk. Kill the
//! server with SIGKILL while many sessions are sending, restart it on the
//! same spool, and check every acknowledged message is there, intact, and
//! nothing partial is.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use millrace_spool::{MessageId, Spool, SpoolOptions};

use crate::util::sink::Sink;
use crate::util::{DEADLINE, Relay, Smtp, queue_id, wait_for};

#[test]
fn sigkill_mid_injection_loses_nothing_acknowledged() {
    // No route anywhere: messages stay queued (delivery would need DNS).
    let mut relay = Relay::start(
        "[delivery]\nsmarthost = \"127.0.0.1:9\"\nretry_intervals = [\"1h\"]",
    );
    let acked = inject_until_killed(&mut relay, 300, || true);
    let dir = relay.into_dir();

    // Restart on the same spool: the recovery scan finds them all.
    let relay = Relay::start_in(
        dir,
        "[delivery]\nsmarthost = \"127.0.0.1:9\"\nretry_intervals = [\"1h\"]",
    );
    let rec = relay.wait_events("Recovery", 1);
    let committed = rec.last().unwrap()["committed"].as_u64().unwrap();
    assert!(
        committed as usize >= acked.len(),
        "{committed} < {}",
        acked.len()
    );
    let spool_dir = relay.spool.clone();
    // Stop it, keeping the directory alive for the inspection below.
    let _dir = relay.into_dir();

    let spool = Spool::open(&spool_dir, SpoolOptions::default()).unwrap();
    let rec = spool.recover().unwrap();
    assert_eq!(rec.removed_incomplete, 0, "the restart removed those");
    assert!(rec.corrupt.is_empty(), "{:?}", rec.corrupt);
    for (id, body) in &acked {
        let id: MessageId = id.parse().unwrap();
        assert!(
            rec.committed.contains(&id),
            "acknowledged {id} lost ({} committed, {} acked)",
            rec.committed.len(),
            acked.len(),
        );
        let m = spool.open_message(id).unwrap();
        assert_eq!(m.body(), &body[..], "{id} body");
        assert_eq!(m.envelope().sender, "a@example.org");
        assert_eq!(m.envelope().recipients[0].address, "b@example.net");
    }
    // Nothing partial: every file in the spool is a committed message.
    assert_eq!(spool.list().unwrap().len(), rec.committed.len());
}

/// Eight sessions send distinct messages until `relay` is killed, which
/// happens once `at_least` were acknowledged and `also()` holds. Returns
/// (queue id, body as sent) for every 250 received.
fn inject_until_killed(
    relay: &mut Relay,
    at_least: usize,
    also: impl Fn() -> bool,
) -> Vec<(String, Vec<u8>)> {
    type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for t in 0..8 {
        let (acked, stop, addr) = (acked.clone(), stop.clone(), relay.addr);
        senders.push(std::thread::spawn(move || {
            let mut s = Smtp::connect(addr);
            if s.try_reply().map(|r| r.0) != Some(220) {
                return;
            }
            let _ = s.try_cmd("EHLO t.example");
            for n in 0.. {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let body = format!(
                    "Subject: t{t} n{n}\r\n\r\n{}\r\n..dot line\r\n",
                    "x".repeat(100 + n % 900)
                );
                let ok = s.try_cmd("MAIL FROM:<a@example.org>").map(|r| r.0)
                    == Some(250)
                    && s.try_cmd("RCPT TO:<b@example.net>").map(|r| r.0)
                        == Some(250)
                    && s.try_cmd("DATA").map(|r| r.0) == Some(354);
                if !ok {
                    return;
                }
                let mut wire = body.clone().into_bytes();
                wire.extend_from_slice(b".\r\n");
                if s.try_send(&wire).is_err() {
                    return;
                }
                match s.try_reply() {
                    Some((250, lines)) => acked
                        .lock()
                        .unwrap()
                        .push((queue_id(&lines[0]), body.into_bytes())),
                    _ => return,
                }
            }
        }));
    }
    wait_for("acknowledged messages", DEADLINE, || {
        (acked.lock().unwrap().len() >= at_least && also()).then_some(())
    });
    relay.kill();
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.join().unwrap();
    }
    acked.lock().unwrap().clone()
}

#[test]
fn sigkill_while_delivering_and_reusing_files_loses_nothing() {
    // Delivery runs during injection, so spool files are freed and
    // reused for new messages while the relay is killed.
    let sink = Sink::start();
    let config = format!("[delivery]\nsmarthost = \"{}\"\n", sink.addr);
    let mut relay = Relay::start(&config);
    // Killed once some were delivered (so freed, and their files reused).
    let acked =
        inject_until_killed(&mut relay, 600, || sink.received().len() >= 100);
    let relay = Relay::start_in(relay.into_dir(), &config);
    let rec = relay.wait_events("Recovery", 1);
    assert_eq!(rec.last().unwrap()["corrupt"].as_u64(), Some(0), "{rec:?}");
    let subject = |body: &[u8]| {
        let text = String::from_utf8_lossy(body).into_owned();
        text.lines().next().unwrap_or_default().to_owned()
    };
    let want: HashSet<String> =
        acked.iter().map(|(_, b)| subject(b)).collect();
    let got = || -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in sink.received() {
            let text = String::from_utf8_lossy(&r.data).into_owned();
            if let Some(s) = text.lines().find(|l| l.starts_with("Subject: "))
            {
                *m.entry(s.to_owned()).or_default() += 1;
            }
        }
        m
    };
    wait_for("every acknowledged message at the sink", DEADLINE, || {
        let got = got();
        want.iter().all(|s| got.contains_key(s)).then_some(())
    });
    wait_for("the spool to empty", DEADLINE, || {
        relay.spool_files().is_empty().then_some(())
    });
    // At least once; a duplicate only for a message in flight at the
    // kill (its delivery was not yet recorded), so only a few.
    let dups: usize = got().values().map(|&n| n - 1).sum();
    assert!(dups <= 64, "{dups} duplicates");
}

impl Smtp {
    fn try_reply(&mut self) -> Option<(u16, Vec<String>)> {
        use std::io::BufRead;
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).ok()? == 0 || line.len() < 4 {
                return None;
            }
            let code = line[..3].parse().ok()?;
            lines.push(line[4..].trim_end().to_owned());
            if line.as_bytes()[3] != b'-' {
                return Some((code, lines));
            }
        }
    }

    fn try_send(&mut self, b: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.r.get_mut().write_all(b)
    }

    fn try_cmd(&mut self, line: &str) -> Option<(u16, Vec<String>)> {
        self.try_send(format!("{line}\r\n").as_bytes()).ok()?;
        self.try_reply()
    }
}
