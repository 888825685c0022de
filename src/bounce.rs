//! Turns the queue's final failures and delay warnings into delivery status
//! notifications (RFC 3464): composed by `millrace-dsn`, stored durably in
//! the same spool from `<>`, and delivered by the same queue.
//!
//! Loop safety: never a DSN for a message from `<>` (which includes every
//! DSN), never for recipients whose NOTIFY excludes it.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use millrace_delivery::driver::Relayed;
use millrace_dsn::{Action, RecipientReport, Report};
use millrace_proto::{DotStuffer, EnhancedCode};
use millrace_queue::{Failure, Queue};
use millrace_spool::{Envelope, MessageId, Recipient, Spool};

use crate::events::{EventLog, fields};

/// NOTIFY bits as stored in the spool envelope.
const NOTIFY_NEVER: u8 = 1;
const NOTIFY_SUCCESS: u8 = 2;
const NOTIFY_FAILURE: u8 = 4;
const NOTIFY_DELAY: u8 = 8;

/// Composes and queues bounces.
pub(crate) struct Bouncer {
    spool: Spool,
    hostname: String,
    log: Arc<EventLog>,
    lifetime_secs: u64,
    queue: OnceLock<Queue>,
}

/// What a DSN quotes of the original (our Received header plus the stored
/// body), and the RET to compose it with. When only headers go back, only
/// they are copied: a 35 MB original is not read into memory for them.
fn returned_original(env: &Envelope, body: &[u8]) -> (Vec<u8>, Option<bool>) {
    let size = env.received.len() + body.len();
    let full = env.ret_full.unwrap_or(size <= millrace_dsn::FULL_RETURN_LIMIT);
    // Without header lines in the body, the Received header ends the
    // block.
    let part = if full { body } else { millrace_proto::header_section(body) };
    let mut original = Vec::with_capacity(env.received.len() + part.len());
    original.extend_from_slice(env.received.as_bytes());
    original.extend_from_slice(part);
    (original, Some(full))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Whether a recipient's NOTIFY asks for a failure (`delay == false`) or
/// delay notice. No NOTIFY given means failures and delays.
fn wants(notify: u8, bit: u8) -> bool {
    notify & NOTIFY_NEVER == 0
        && (notify & bit != 0
            || notify & (NOTIFY_SUCCESS | NOTIFY_FAILURE | NOTIFY_DELAY) == 0)
}

/// The status for a failed recipient: the enhanced code of the reply, or
/// one derived from its basic code; expiry without one is 4.4.7.
fn status_of(reply: &str, expired: bool) -> EnhancedCode {
    let rest = reply.get(4..).unwrap_or("");
    if let Some((code, _)) = EnhancedCode::parse(rest.as_bytes()) {
        return code;
    }
    match reply.as_bytes().first() {
        _ if expired => EnhancedCode::new(4, 4, 7),
        Some(b'5') => EnhancedCode::new(5, 0, 0),
        Some(b'2') => EnhancedCode::new(2, 0, 0),
        _ => EnhancedCode::new(4, 0, 0),
    }
}

impl Bouncer {
    /// A bouncer; the queue is set once it runs.
    pub(crate) fn new(
        spool: Spool,
        hostname: String,
        log: Arc<EventLog>,
        lifetime_secs: u64,
    ) -> Self {
        Self { spool, hostname, log, lifetime_secs, queue: OnceLock::new() }
    }

    /// Sets the queue bounces are injected into.
    pub(crate) fn set_queue(&self, queue: Queue) {
        let _ = self.queue.set(queue);
    }

    /// Final failures of one message: one DSN for all of them.
    pub(crate) fn failed(&self, id: MessageId, failures: &[Failure]) {
        let Ok(msg) = self.spool.open_message(id) else { return };
        let env = msg.envelope();
        if env.sender.is_empty() || env.is_dsn {
            // Never a bounce to `<>`: no loops.
            return;
        }
        let now = now_unix();
        let reports: Vec<RecipientReport<'_>> = failures
            .iter()
            .filter_map(|f| {
                let r = env.recipients.get(f.rcpt as usize)?;
                wants(r.notify, NOTIFY_FAILURE).then(|| RecipientReport {
                    final_recipient: &f.address,
                    original_recipient: r.orcpt.as_deref(),
                    action: Action::Failed,
                    status: status_of(&f.reply, f.expired),
                    remote_mta: f.remote.as_deref(),
                    diagnostic: Some(&f.reply),
                    last_attempt_unix: Some(now),
                    will_retry_until_unix: None,
                })
            })
            .collect();
        self.send(id, env, msg.body(), reports, now);
    }

    /// Recipients relayed to a next hop without DSN support, whose sender
    /// asked for NOTIFY=SUCCESS: one "relayed" DSN.
    pub(crate) fn relayed(&self, id: MessageId, relayed: &[Relayed]) {
        let Ok(msg) = self.spool.open_message(id) else { return };
        let env = msg.envelope();
        if env.sender.is_empty() || env.is_dsn {
            return;
        }
        let now = now_unix();
        let reports: Vec<RecipientReport<'_>> = relayed
            .iter()
            .filter_map(|x| {
                let r = env.recipients.get(x.rcpt as usize)?;
                Some(RecipientReport {
                    final_recipient: &r.address,
                    original_recipient: r.orcpt.as_deref(),
                    action: Action::Relayed,
                    status: status_of(&x.reply, false),
                    remote_mta: Some(&x.remote),
                    diagnostic: Some(&x.reply),
                    last_attempt_unix: Some(now),
                    will_retry_until_unix: None,
                })
            })
            .collect();
        self.send(id, env, msg.body(), reports, now);
    }

    /// A message still deferred after `delay_warning`: one "delayed" DSN.
    pub(crate) fn delayed(
        &self,
        id: MessageId,
        rcpts: &[String],
        reply: &str,
    ) {
        let Ok(msg) = self.spool.open_message(id) else { return };
        let env = msg.envelope();
        if env.sender.is_empty() || env.is_dsn {
            return;
        }
        let now = now_unix();
        let until = env.arrival_unix + self.lifetime_secs as i64;
        let reports: Vec<RecipientReport<'_>> = rcpts
            .iter()
            .filter_map(|addr| {
                let r = env.recipients.iter().find(|r| &r.address == addr)?;
                wants(r.notify, NOTIFY_DELAY).then(|| RecipientReport {
                    final_recipient: addr,
                    original_recipient: r.orcpt.as_deref(),
                    action: Action::Delayed,
                    status: status_of(reply, false),
                    remote_mta: None,
                    diagnostic: Some(reply),
                    last_attempt_unix: Some(now),
                    will_retry_until_unix: Some(until),
                })
            })
            .collect();
        self.send(id, env, msg.body(), reports, now);
    }

    /// Composes, stores durably and queues one DSN.
    fn send(
        &self,
        id: MessageId,
        env: &Envelope,
        body: &[u8],
        recipients: Vec<RecipientReport<'_>>,
        now: i64,
    ) {
        if recipients.is_empty() {
            return;
        }
        let (original, ret_full) = returned_original(env, body);
        let queue_id = id.to_string();
        let count = recipients.len();
        let text = millrace_dsn::compose(&Report {
            reporting_mta: &self.hostname,
            queue_id: &queue_id,
            original_sender: &env.sender,
            envid: env.envid.as_deref(),
            arrival_unix: env.arrival_unix,
            now_unix: now,
            ret_full,
            original: &original,
            max_queue_lifetime_secs: self.lifetime_secs,
            recipients,
        });
        if let Err(e) = self.inject(id, &env.sender, &text, count, now) {
            self.log.emit(
                "DsnFailed",
                Some(&queue_id),
                fields! {"error" => e.to_string()},
            );
        }
    }

    /// Stores the DSN (dot-stuffed wire form, from `<>`) and queues it
    /// once durable.
    fn inject(
        &self,
        original: MessageId,
        to: &str,
        text: &[u8],
        count: usize,
        now: i64,
    ) -> Result<(), millrace_spool::SpoolError> {
        let mut inc = self.spool.create(1)?;
        let mut wire = Vec::with_capacity(text.len() + text.len() / 32);
        DotStuffer::new().write(text, &mut wire);
        if !wire.is_empty() && !wire.ends_with(b"\r\n") {
            wire.extend_from_slice(b"\r\n");
        }
        inc.write_all(&wire)?;
        let new_id = inc.id();
        let mut received =
            format!("Received: by {} (Millrace) id {new_id}; ", self.hostname);
        millrace_proto::date::write_rfc5322(now, &mut received);
        received.push_str("\r\n");
        let env = Envelope {
            sender: String::new(),
            recipients: vec![Recipient {
                address: to.to_owned(),
                notify: 0,
                orcpt: None,
            }],
            body_8bitmime: true,
            client_ip: "127.0.0.1".into(),
            helo: self.hostname.clone(),
            arrival_unix: now,
            received,
            is_dsn: true,
            ..Envelope::default()
        };
        let queue = self.queue.get().cloned();
        let log = Arc::clone(&self.log);
        let env2 = env.clone();
        let to = to.to_owned();
        self.spool.commit(
            inc,
            &env,
            Box::new(move |res| match res {
                Ok(id) => {
                    log.emit(
                        "DsnSent",
                        Some(&id.to_string()),
                        fields! {
                            "original" => original.to_string(),
                            "to" => to,
                            "recipients" => count,
                        },
                    );
                    if let Some(q) = queue {
                        q.enqueue(id, &env2);
                    }
                }
                Err(e) => log.emit(
                    "DsnFailed",
                    Some(&original.to_string()),
                    fields! {"error" => e.to_string()},
                ),
            }),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_rules() {
        assert!(wants(0, NOTIFY_FAILURE), "default: failures");
        assert!(wants(0, NOTIFY_DELAY), "default: delays");
        assert!(!wants(NOTIFY_NEVER, NOTIFY_FAILURE));
        assert!(!wants(NOTIFY_SUCCESS, NOTIFY_FAILURE));
        assert!(wants(NOTIFY_SUCCESS | NOTIFY_FAILURE, NOTIFY_FAILURE));
        assert!(!wants(NOTIFY_FAILURE, NOTIFY_DELAY));
    }

    #[test]
    fn headers_only_dsn_is_the_same_without_copying_the_body() {
        fn report(original: &[u8], ret_full: Option<bool>) -> Report<'_> {
            Report {
                reporting_mta: "relay.example",
                queue_id: "ID",
                original_sender: "a@example.org",
                envid: None,
                arrival_unix: 1_700_000_000,
                now_unix: 1_700_000_100,
                ret_full,
                original,
                max_queue_lifetime_secs: 5 * 86_400,
                recipients: vec![RecipientReport {
                    final_recipient: "b@example.net",
                    original_recipient: None,
                    action: Action::Failed,
                    status: EnhancedCode::new(5, 1, 1),
                    remote_mta: Some("mx.example.net"),
                    diagnostic: Some("550 5.1.1 no such user"),
                    last_attempt_unix: Some(1_700_000_050),
                    will_retry_until_unix: None,
                }],
            }
        }
        let big = "x".repeat(200 * 1024);
        let bodies = [
            format!("Subject: big\r\n..dot\r\n\r\n{big}\r\n"),
            format!("\r\n{big}\r\n"),
            format!("Subject: all headers {big}\r\n"),
            "Subject: small\r\n\r\nhi\r\n".to_owned(),
        ];
        for ret in [None, Some(false), Some(true)] {
            for body in &bodies {
                let env = Envelope {
                    received: "Received: from c by relay; now\r\n".into(),
                    ret_full: ret,
                    ..Envelope::default()
                };
                let mut whole = env.received.clone().into_bytes();
                whole.extend_from_slice(body.as_bytes());
                let want = millrace_dsn::compose(&report(&whole, ret));
                let (part, r) = returned_original(&env, body.as_bytes());
                let got = millrace_dsn::compose(&report(&part, r));
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want),
                    "ret {ret:?}, body {:?}",
                    &body[..20.min(body.len())]
                );
                if r == Some(false) {
                    assert!(part.len() < 1024 || body.contains("all headers"));
                }
            }
        }
    }

    #[test]
    fn status_from_reply() {
        assert_eq!(
            status_of("550 5.1.1 no such user", false),
            EnhancedCode::new(5, 1, 1)
        );
        assert_eq!(
            status_of("550 no such user", false),
            EnhancedCode::new(5, 0, 0)
        );
        assert_eq!(
            status_of("451 try later", true),
            EnhancedCode::new(4, 4, 7)
        );
        assert_eq!(
            status_of("451 4.3.0 try later", true),
            EnhancedCode::new(4, 3, 0)
        );
    }
}
