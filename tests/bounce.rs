//! Bounces (RFC 3461 / 3464) end to end: the relay sends DSNs from `<>`
//! through its own queue to a scripted sink.

use crate::util::sink::{Received, Sink};
use crate::util::{DEADLINE, Relay, wait_for};

/// A relay routing both the recipients' domain and the senders' domain to
/// `sink`, so bounces arrive there too.
fn relay_for(sink: &Sink, extra_delivery: &str) -> Relay {
    Relay::start(&format!(
        "[delivery]\n{extra_delivery}\n[routes]\n\"example.net\" = \"{a}\"\n\
         \"example.org\" = \"{a}\"\n",
        a = sink.addr
    ))
}

/// DSNs the sink received (envelope sender `<>`).
fn dsns(sink: &Sink) -> Vec<Received> {
    sink.received().into_iter().filter(|m| m.from.is_empty()).collect()
}

fn text(m: &Received) -> String {
    let mut body = Vec::new();
    millrace_proto::unstuff(&m.data, &mut body);
    String::from_utf8_lossy(&body).into_owned()
}

fn send(relay: &Relay, mail_from: &str, rcpts: &[&str], body: &str) {
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    s.expect(&format!("MAIL FROM:{mail_from}"), "250");
    for r in rcpts {
        s.expect(&format!("RCPT TO:{r}"), "250");
    }
    s.expect("DATA", "354");
    s.send(body.as_bytes());
    s.send(b".\r\n");
    assert_eq!(s.reply().0, 250);
    s.expect("QUIT", "221");
}

#[test]
fn refused_recipient_gets_exactly_one_dsn_others_delivered() {
    let sink = Sink::start();
    sink.script(
        "nobody@example.net",
        "550 5.1.1 <nobody@example.net>: no such user",
        None,
    );
    sink.script(
        "gone@example.net",
        "550 5.1.1 <gone@example.net>: no such user",
        None,
    );
    let relay = relay_for(&sink, "");
    send(
        &relay,
        "<sender@example.org>",
        &["<nobody@example.net>", "<ok@example.net>", "<gone@example.net>"],
        "Subject: hello\r\n\r\nbody\r\n",
    );
    relay.wait_events("DsnSent", 1);
    wait_for("the DSN at the sink", DEADLINE, || {
        (!dsns(&sink).is_empty()).then_some(())
    });
    assert_eq!(sink.count_for("ok@example.net"), 1);
    let d = dsns(&sink);
    assert_eq!(d.len(), 1, "one DSN for both failed recipients");
    assert_eq!(d[0].rcpts, vec!["sender@example.org".to_string()]);
    let t = text(&d[0]);
    assert!(t.contains("multipart/report"), "{t}");
    assert!(t.contains("report-type=delivery-status"), "{t}");
    assert!(t.contains("Final-Recipient: rfc822; nobody@example.net"), "{t}");
    assert!(t.contains("Final-Recipient: rfc822; gone@example.net"), "{t}");
    assert!(!t.contains("Final-Recipient: rfc822; ok@example.net"), "{t}");
    assert!(t.contains("Status: 5.1.1"), "{t}");
    assert!(t.contains("Action: failed"), "{t}");
    assert!(t.contains("550 5.1.1 <nobody@example.net>: no such user"), "{t}");
    assert!(t.contains("MAILER-DAEMON@relay.test.example"), "{t}");
}

#[test]
fn always_deferred_gets_a_delay_warning_then_a_failure() {
    let sink = Sink::start();
    sink.script("later@example.net", "451 4.3.0 mailbox busy", None);
    let relay = relay_for(
        &sink,
        "retry_intervals = [\"1s\"]\nmax_queue_lifetime = \"5s\"\ndelay_warning = \"2s\"",
    );
    send(&relay, "<sender@example.org>", &["<later@example.net>"], "x\r\n");
    relay.wait_events("Expiration", 1);
    wait_for("two DSNs", DEADLINE, || (dsns(&sink).len() >= 2).then_some(()));
    let d = dsns(&sink);
    assert_eq!(d.len(), 2);
    let first = text(&d[0]);
    let second = text(&d[1]);
    assert!(first.contains("Action: delayed"), "{first}");
    assert!(first.contains("Will-Retry-Until:"), "{first}");
    assert!(second.contains("Action: failed"), "{second}");
    assert!(second.contains("451 4.3.0 mailbox busy"), "{second}");
}

#[test]
fn notify_never_and_null_sender_produce_no_dsn() {
    let sink = Sink::start();
    sink.script("nobody@example.net", "550 5.1.1 no such user", None);
    let relay = relay_for(&sink, "");
    send(
        &relay,
        "<sender@example.org>",
        &["<nobody@example.net> NOTIFY=NEVER"],
        "a\r\n",
    );
    send(&relay, "<>", &["<nobody@example.net>"], "b\r\n");
    // A marker whose DSN does go out, after the two above.
    send(&relay, "<marker@example.org>", &["<nobody@example.net>"], "c\r\n");
    relay.wait_events("Bounce", 3);
    wait_for("the marker's DSN", DEADLINE, || {
        dsns(&sink)
            .iter()
            .any(|m| m.rcpts == ["marker@example.org"])
            .then_some(())
    });
    let d = dsns(&sink);
    assert_eq!(
        d.len(),
        1,
        "{:?}",
        d.iter().map(|m| &m.rcpts).collect::<Vec<_>>()
    );
}

#[test]
fn ret_full_returns_the_original_unstuffed() {
    let sink = Sink::start();
    sink.script("nobody@example.net", "550 5.1.1 no such user", None);
    let relay = relay_for(&sink, "");
    send(
        &relay,
        "<sender@example.org> RET=FULL ENVID=abc+2Bdef",
        &["<nobody@example.net> ORCPT=rfc822;Nobody@Example.NET"],
        "Subject: original\r\n\r\n..a line that starts with a dot\r\nend\r\n",
    );
    wait_for("the DSN", DEADLINE, || (!dsns(&sink).is_empty()).then_some(()));
    let t = text(&dsns(&sink)[0]);
    assert!(t.contains("message/rfc822"), "{t}");
    assert!(t.contains("\r\n.a line that starts with a dot\r\n"), "{t}");
    assert!(!t.contains("..a line"), "{t}");
    assert!(t.contains("Subject: original"), "{t}");
    assert!(
        t.contains("Original-Envelope-Id: abc+def")
            || t.contains("Original-Envelope-Id: abc+2Bdef"),
        "{t}"
    );
    assert!(
        t.contains("Original-Recipient: rfc822;Nobody@Example.NET"),
        "{t}"
    );
}

#[test]
fn notify_success_to_a_hop_without_dsn_gets_a_relayed_notice() {
    let sink = Sink::start();
    sink.set_ehlo_extra(&[]);
    let relay = relay_for(&sink, "");
    send(
        &relay,
        "<sender@example.org>",
        &[
            "<tracked@example.net> NOTIFY=SUCCESS,FAILURE",
            "<plain@example.net>",
        ],
        "Subject: track me\r\n\r\nhi\r\n",
    );
    wait_for("the relayed notice", DEADLINE, || {
        (!dsns(&sink).is_empty()).then_some(())
    });
    let d = dsns(&sink);
    assert_eq!(d.len(), 1);
    let t = text(&d[0]);
    assert!(t.contains("Action: relayed"), "{t}");
    assert!(t.contains("Final-Recipient: rfc822; tracked@example.net"), "{t}");
    assert!(!t.contains("plain@example.net"), "{t}");
    // The next hop offered no DSN: NOTIFY was not passed on.
    assert_eq!(sink.count_for("tracked@example.net"), 1);
}
