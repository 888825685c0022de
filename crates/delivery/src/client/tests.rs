//! Dialogue tests for [`Client`]: scripted server replies in, the exact
//! bytes written and the events out. No sockets.

use super::*;
use millrace_proto::{Notify, Ret};

const HELO: &str = "relay.test";

/// Everything the client uses: PIPELINING, SIZE 10000, 8BITMIME, DSN,
/// SMTPUTF8.
const FULL: &[&str] = &[
    "PIPELINING",
    "SIZE 10000",
    "8BITMIME",
    "ENHANCEDSTATUSCODES",
    "DSN",
    "SMTPUTF8",
];

/// An EHLO reply offering `exts` (a single line when there are none).
fn ehlo(exts: &[&str]) -> String {
    let mut lines = vec!["mx.test Hello relay.test"];
    lines.extend_from_slice(exts);
    let last = lines.len() - 1;
    let mut s = String::new();
    for (i, l) in lines.iter().enumerate() {
        s.push_str(if i == last { "250 " } else { "250-" });
        s.push_str(l);
        s.push_str("\r\n");
    }
    s
}

/// A transaction of 500 octets without parameters.
fn tx(sender: &str, rcpts: &[&str]) -> Transaction {
    Transaction {
        sender: sender.to_owned(),
        mail_params: MailParams::default(),
        recipients: rcpts
            .iter()
            .map(|r| ((*r).to_owned(), RcptParams::default()))
            .collect(),
        size: 500,
        utf8_headers: false,
    }
}

/// One line per event; a `Done` is followed by one line per result,
/// `<index> <kind> <reply>`.
fn summary(events: impl IntoIterator<Item = ClientEvent>) -> Vec<String> {
    let mut out = Vec::new();
    for ev in events {
        match ev {
            ClientEvent::Ready => out.push("Ready".to_owned()),
            ClientEvent::SendBody => out.push("SendBody".to_owned()),
            ClientEvent::Closed => out.push("Closed".to_owned()),
            ClientEvent::Done(results) => {
                out.push("Done".to_owned());
                for (i, r) in results.iter().enumerate() {
                    assert_eq!(r.index, i, "results in index order");
                    // The kind follows the code, but for a 552 to RCPT
                    // (too many recipients: retried).
                    let kind = if r.reply.code == 552
                        && r.kind == RcptKind::Transient
                    {
                        RcptKind::Transient
                    } else {
                        RcptKind::of(&r.reply)
                    };
                    assert_eq!(r.kind, kind);
                    out.push(format!(
                        "{} {:?} {}",
                        r.index,
                        r.kind,
                        r.reply.to_single_line()
                    ));
                }
            }
        }
    }
    out
}

/// A client under test, fed the way the driver feeds it.
struct T {
    c: Client,
    /// Bytes read but not consumed yet (the driver keeps them).
    input: Vec<u8>,
}

impl T {
    fn new() -> Self {
        Self { c: Client::new(HELO), input: Vec::new() }
    }

    /// Greeted and past EHLO with these extensions (Ready taken).
    fn ready(exts: &[&str]) -> Self {
        let mut t = Self::new();
        t.recv("220 mx.test ESMTP\r\n");
        assert_eq!(t.out(), "EHLO relay.test\r\n");
        assert!(t.ev().is_empty());
        t.recv(&ehlo(exts));
        assert_eq!(t.ev(), ["Ready"]);
        assert_eq!(t.out(), "");
        assert!(t.c.is_idle());
        t
    }

    /// Appends `bytes` to what was left over, runs `receive` on it and
    /// drops what it consumed (the driver's loop).
    fn feed(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.input.extend_from_slice(bytes);
        match self.c.receive(&self.input) {
            Ok(n) => {
                assert!(n <= self.input.len());
                self.input.drain(..n);
                Ok(())
            }
            Err(e) => {
                self.input.clear();
                Err(e)
            }
        }
    }

    /// Feeds server text that must be accepted whole.
    fn recv(&mut self, s: &str) {
        self.feed(s.as_bytes()).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert!(self.input.is_empty(), "{s:?}: not all consumed");
    }

    /// Takes what the client wrote.
    fn out(&mut self) -> String {
        String::from_utf8(mem::take(self.c.output())).unwrap()
    }

    /// Takes the events, summarised.
    fn ev(&mut self) -> Vec<String> {
        summary(std::iter::from_fn(|| self.c.poll_event()))
    }

    /// Starts `tx`; returns what the client wrote.
    fn start(&mut self, tx: Transaction) -> String {
        self.c.start(tx).unwrap();
        self.out()
    }
}

// ---------------------------------------------------------------------
// Greeting and EHLO/HELO

#[test]
fn greeting_ehlo_and_capabilities() {
    let mut t = T::new();
    assert_eq!(t.out(), "");
    assert!(t.ev().is_empty());
    // A multi-line greeting, in two reads.
    t.feed(b"220-mx.test ESMTP\r\n220 no UCE\r").unwrap();
    assert_eq!(t.out(), "");
    t.recv("\n");
    assert_eq!(t.out(), "EHLO relay.test\r\n");
    assert!(t.ev().is_empty());
    assert!(!t.c.is_idle());
    t.recv(
        "250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 10000\r\n\
         250-8BITMIME\r\n250-dsn\r\n250-ENHANCEDSTATUSCODES\r\n\
         250 SMTPUTF8\r\n",
    );
    assert_eq!(t.ev(), ["Ready"]);
    assert_eq!(t.out(), "");
    let caps = t.c.capabilities();
    assert!(caps.pipelining);
    assert_eq!(caps.size, Some(10000));
    assert!(caps.eightbitmime);
    assert!(caps.dsn && t.c.dsn_offered());
    assert!(caps.smtputf8);
    assert!(caps.enhanced_status_codes);
    assert!(!caps.chunking);
    assert!(t.c.refusal().is_none());
    assert!(t.c.is_idle());
}

#[test]
fn helo_name_loses_control_characters() {
    let mut t = T { c: Client::new("relay\r\n.te\tst"), input: Vec::new() };
    t.recv("220 mx.test\r\n");
    assert_eq!(t.out(), "EHLO relay.test\r\n");
}

#[test]
fn ehlo_refused_falls_back_to_helo() {
    for code in ["500 5.5.2 What?", "502 5.5.1 Not implemented", "554 No"] {
        let mut t = T::new();
        t.recv("220 mx.test\r\n");
        assert_eq!(t.out(), "EHLO relay.test\r\n");
        t.recv(&format!("{code}\r\n"));
        assert_eq!(t.out(), "HELO relay.test\r\n", "{code}");
        assert!(t.ev().is_empty());
        t.recv("250 mx.test\r\n");
        assert_eq!(t.ev(), ["Ready"]);
        assert_eq!(*t.c.capabilities(), Capabilities::default());
        assert!(!t.c.dsn_offered());
        // No extensions: one command at a time, no parameters.
        let mut x = tx("s@x.test", &["a@y.test"]);
        x.mail_params.body = BodyType::EightBitMime;
        x.mail_params.smtputf8 = true;
        x.mail_params.ret = Some(Ret::Full);
        assert_eq!(t.start(x), "MAIL FROM:<s@x.test>\r\n");
    }
}

#[test]
fn ehlo_transient_refusal_quits() {
    let mut t = T::new();
    t.recv("220 mx.test\r\n");
    t.out();
    t.recv("451 4.3.0 Try later\r\n");
    assert_eq!(t.out(), "QUIT\r\n");
    assert!(t.ev().is_empty());
    assert_eq!(
        t.c.refusal().map(Reply::to_single_line).as_deref(),
        Some("451 4.3.0 Try later")
    );
    assert_eq!(
        t.start(tx("s@x.test", &["a@y.test"])),
        "",
        "nothing is sent after a refusal"
    );
    assert_eq!(t.ev(), ["Done", "0 Transient 451 4.3.0 Try later"]);
    t.recv("221 2.0.0 Bye\r\n");
    assert_eq!(t.ev(), ["Closed"]);
}

#[test]
fn helo_refused_quits() {
    let mut t = T::new();
    t.recv("220 mx.test\r\n");
    t.out();
    t.recv("502 5.5.1 No EHLO\r\n");
    assert_eq!(t.out(), "HELO relay.test\r\n");
    t.recv("550 5.7.1 Go away\r\n");
    assert_eq!(t.out(), "QUIT\r\n");
    assert!(t.ev().is_empty());
    assert_eq!(t.c.refusal().unwrap().code, 550);
    t.start(tx("s@x.test", &["a@y.test"]));
    assert_eq!(t.ev(), ["Done", "0 Permanent 550 5.7.1 Go away"]);
    // The server closes instead of answering QUIT.
    t.c.closed();
    assert_eq!(t.ev(), ["Closed"]);
    assert!(t.c.is_closed());
}

#[test]
fn greeting_554_refuses_every_transaction() {
    let mut t = T::new();
    t.recv("554 5.7.1 No SMTP service here\r\n");
    assert_eq!(t.out(), "QUIT\r\n", "QUIT, no EHLO");
    assert!(t.ev().is_empty());
    let refusal = "554 5.7.1 No SMTP service here";
    assert_eq!(
        t.c.refusal().map(Reply::to_single_line).as_deref(),
        Some(refusal)
    );
    assert_eq!(t.start(tx("s@x.test", &["a@y.test", "b@y.test"])), "");
    assert_eq!(
        t.ev(),
        [
            "Done",
            &format!("0 Permanent {refusal}"),
            &format!("1 Permanent {refusal}")
        ]
    );
    t.recv("221 2.0.0 Bye\r\n");
    assert_eq!(t.ev(), ["Closed"]);
    assert!(t.c.is_closed());
    // Still the refusal once the connection is gone, and no more output.
    assert_eq!(t.start(tx("s@x.test", &["c@y.test"])), "");
    assert_eq!(t.ev(), ["Done", &format!("0 Permanent {refusal}")]);
    assert!(t.c.quit().is_ok());
    assert_eq!(t.out(), "");
    assert!(t.ev().is_empty());
}

#[test]
fn greeting_421_refuses_every_transaction() {
    let mut t = T::new();
    t.recv("421 4.3.2 Shutting down\r\n");
    // The server closes after 421: no QUIT, the connection is over.
    assert_eq!(t.out(), "");
    assert_eq!(t.ev(), ["Closed"]);
    assert!(t.c.is_closed());
    assert_eq!(t.c.refusal().unwrap().code, 421);
    t.start(tx("s@x.test", &["a@y.test", "b@y.test"]));
    assert_eq!(
        t.ev(),
        [
            "Done",
            "0 Transient 421 4.3.2 Shutting down",
            "1 Transient 421 4.3.2 Shutting down"
        ]
    );
    // Later bytes are swallowed; the close changes nothing.
    t.recv("250 ignored\r\n");
    t.c.closed();
    assert!(t.ev().is_empty());
    assert_eq!(t.out(), "");
}

#[test]
fn ehlo_or_helo_421_refuses_every_transaction() {
    for (ehlo_reply, helo_reply) in [
        ("421 4.7.0 Too many connections\r\n", None),
        ("500 5.5.2 What\r\n", Some("421 4.7.0 Too many connections\r\n")),
    ] {
        let mut t = T::new();
        t.recv("220 mx.test\r\n");
        t.out();
        t.recv(ehlo_reply);
        if let Some(helo_reply) = helo_reply {
            assert_eq!(t.out(), "HELO relay.test\r\n");
            t.recv(helo_reply);
        }
        assert_eq!(t.out(), "");
        assert_eq!(t.ev(), ["Closed"]);
        assert_eq!(
            t.c.refusal().map(Reply::to_single_line).as_deref(),
            Some("421 4.7.0 Too many connections"),
        );
        t.start(tx("s@x.test", &["a@y.test"]));
        assert_eq!(
            t.ev(),
            ["Done", "0 Transient 421 4.7.0 Too many connections"]
        );
    }
}

// ---------------------------------------------------------------------
// MAIL, RCPT, DATA

#[test]
fn pipelined_batch_and_mixed_recipients() {
    let mut t = T::ready(FULL);
    let rcpts = ["a@y.test", "b@y.test", "c@y.test", "d@y.test"];
    assert_eq!(
        t.start(tx("s@x.test", &rcpts)),
        "MAIL FROM:<s@x.test> SIZE=500\r\n\
         RCPT TO:<a@y.test>\r\n\
         RCPT TO:<b@y.test>\r\n\
         RCPT TO:<c@y.test>\r\n\
         RCPT TO:<d@y.test>\r\n\
         DATA\r\n",
        "MAIL, every RCPT and DATA in one batch"
    );
    assert!(t.ev().is_empty());
    assert!(!t.c.is_idle());
    // Every reply in one read.
    t.recv(
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n451 4.2.0 Try later\r\n\
         550 5.1.1 No such user\r\n250 2.1.5 Ok\r\n354 Go ahead\r\n",
    );
    assert_eq!(t.ev(), ["SendBody"]);
    assert_eq!(t.out(), "");
    t.c.body_sent().unwrap();
    assert!(t.ev().is_empty());
    t.recv("250 2.0.0 Ok: queued as 1234\r\n");
    assert_eq!(
        t.ev(),
        [
            "Done",
            "0 Delivered 250 2.0.0 Ok: queued as 1234",
            "1 Transient 451 4.2.0 Try later",
            "2 Permanent 550 5.1.1 No such user",
            "3 Delivered 250 2.0.0 Ok: queued as 1234",
            "Ready",
        ]
    );
    assert_eq!(t.out(), "", "no RSET after a good transaction");
    assert!(t.c.is_idle());
}

#[test]
fn rcpt_552_is_too_many_recipients_so_transient() {
    let mut t = T::ready(FULL);
    t.start(tx("s@x.test", &["a@y.test", "b@y.test"]));
    t.recv(
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n552 5.5.3 Too many recipients\r\n\
         354 Go ahead\r\n",
    );
    assert_eq!(t.ev(), ["SendBody"]);
    t.c.body_sent().unwrap();
    t.recv("250 2.0.0 Ok\r\n");
    assert_eq!(
        t.ev(),
        [
            "Done",
            "0 Delivered 250 2.0.0 Ok",
            "1 Transient 552 5.5.3 Too many recipients",
            "Ready",
        ]
    );
}

#[test]
fn one_command_at_a_time_without_pipelining() {
    let mut t = T::ready(&["SIZE 10000", "8BITMIME"]);
    let rcpts = ["a@y.test", "b@y.test", "c@y.test"];
    assert_eq!(
        t.start(tx("s@x.test", &rcpts)),
        "MAIL FROM:<s@x.test> SIZE=500\r\n"
    );
    t.recv("250 2.1.0 Ok\r\n");
    assert_eq!(t.out(), "RCPT TO:<a@y.test>\r\n");
    t.recv("250 2.1.5 Ok\r\n");
    assert_eq!(t.out(), "RCPT TO:<b@y.test>\r\n");
    t.recv("550 5.1.1 No such user\r\n");
    assert_eq!(t.out(), "RCPT TO:<c@y.test>\r\n");
    // A reply in pieces: nothing is written before it is whole.
    t.feed(b"25").unwrap();
    t.feed(b"0 2.1.5 O").unwrap();
    assert_eq!(t.out(), "");
    t.recv("k\r\n");
    assert_eq!(t.out(), "DATA\r\n");
    assert!(t.ev().is_empty());
    t.recv("354 Go ahead\r\n");
    assert_eq!(t.ev(), ["SendBody"]);
    assert_eq!(t.out(), "");
    t.c.body_sent().unwrap();
    t.recv("250 2.0.0 Ok\r\n");
    assert_eq!(
        t.ev(),
        [
            "Done",
            "0 Delivered 250 2.0.0 Ok",
            "1 Permanent 550 5.1.1 No such user",
            "2 Delivered 250 2.0.0 Ok",
            "Ready",
        ]
    );
    assert_eq!(t.out(), "");
}

#[test]
fn all_recipients_refused_pipelined() {
    let mut t = T::ready(FULL);
    t.start(tx("s@x.test", &["a@y.test", "b@y.test"]));
    t.recv(
        "250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n450 4.2.1 Busy\r\n\
         554 5.5.1 No valid recipients\r\n",
    );
    assert_eq!(
        t.ev(),
        [
            "Done",
            "0 Permanent 550 5.1.1 No such user",
            "1 Transient 450 4.2.1 Busy"
        ]
    );
    assert_eq!(t.out(), "RSET\r\n", "no body; the transaction is reset");
    assert!(!t.c.is_idle());
    t.recv("250 2.0.0 Ok\r\n");
    assert_eq!(t.ev(), ["Ready"]);
    assert_eq!(t.out(), "");
}

#[test]
fn all_recipients_refused_but_data_354() {
    // RFC 2920 section 3.1: a server that says 354 although no RCPT
    // succeeded gets an empty message, and its reply is ignored.
    let mut t = T::ready(FULL);
    t.start(tx("s@x.test", &["a@y.test"]));
    t.recv("250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n354 Go ahead\r\n");
    assert_eq!(t.out(), ".\r\n");
    assert!(t.ev().is_empty(), "no SendBody: there is no body to send");
    t.recv("554 5.5.1 No valid recipients\r\n");
    assert_eq!(
        t.ev(),
        ["Done", "0 Permanent 550 5.1.1 No such user", "Ready"]
    );
    assert_eq!(t.out(), "");
}

#[test]
fn all_recipients_refused_one_at_a_time() {
    let mut t = T::ready(&[]);
    t.start(tx("s@x.test", &["a@y.test", "b@y.test"]));
    t.recv("250 Ok\r\n");
    assert_eq!(t.out(), "RCPT TO:<a@y.test>\r\n");
    t.recv("550 No such user\r\n");
    assert_eq!(t.out(), "RCPT TO:<b@y.test>\r\n");
    t.recv("451 Later\r\n");
    assert_eq!(t.out(), "RSET\r\n", "no DATA when every RCPT failed");
    assert_eq!(
        t.ev(),
        ["Done", "0 Permanent 550 No such user", "1 Transient 451 Later"]
    );
    t.recv("250 Ok\r\n");
    assert_eq!(t.ev(), ["Ready"]);
}

#[test]
fn mail_refused() {
    for (reply, kind) in [
        ("550 5.7.1 Sender rejected", "Permanent"),
        ("451 4.7.1 Greylisted", "Transient"),
    ] {
        // Pipelined: RCPT and DATA replies that follow change nothing.
        let mut t = T::ready(FULL);
        t.start(tx("s@x.test", &["a@y.test", "b@y.test"]));
        t.recv(&format!(
            "{reply}\r\n503 5.5.1 MAIL first\r\n503 5.5.1 MAIL first\r\n\
             503 5.5.1 MAIL first\r\n"
        ));
        assert_eq!(
            t.ev(),
            [
                "Done",
                &format!("0 {kind} {reply}"),
                &format!("1 {kind} {reply}")
            ]
        );
        assert_eq!(t.out(), "RSET\r\n");
        t.recv("250 2.0.0 Ok\r\n");
        assert_eq!(t.ev(), ["Ready"]);

        // One at a time: no RCPT after a refused MAIL.
        let mut t = T::ready(&["SIZE"]);
        assert_eq!(
            t.start(tx("s@x.test", &["a@y.test", "b@y.test"])),
            "MAIL FROM:<s@x.test> SIZE=500\r\n"
        );
        t.recv(&format!("{reply}\r\n"));
        assert_eq!(t.out(), "RSET\r\n");
        assert_eq!(
            t.ev(),
            [
                "Done",
                &format!("0 {kind} {reply}"),
                &format!("1 {kind} {reply}")
            ]
        );
    }
}

#[test]
fn data_refused() {
    let mut t = T::ready(FULL);
    t.start(tx("s@x.test", &["a@y.test", "b@y.test"]));
    t.recv(
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 Unknown\r\n\
         451 4.3.0 Cannot take DATA now\r\n",
    );
    assert_eq!(
        t.ev(),
        [
            "Done",
            "0 Transient 451 4.3.0 Cannot take DATA now",
            "1 Permanent 550 5.1.1 Unknown"
        ]
    );
    assert_eq!(t.out(), "RSET\r\n");
}

#[test]
fn final_reply_decides_the_accepted_recipients() {
    for (reply, kind) in [
        ("451 4.3.0 Queue file write error", "Transient"),
        ("552 5.3.4 Message too big", "Permanent"),
        ("554 5.7.1 Spam", "Permanent"),
    ] {
        let mut t = T::ready(FULL);
        t.start(tx("s@x.test", &["a@y.test", "b@y.test", "c@y.test"]));
        t.recv(
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 Unknown\r\n\
             250 2.1.5 Ok\r\n354 Go ahead\r\n",
        );
        assert_eq!(t.ev(), ["SendBody"]);
        t.c.body_sent().unwrap();
        t.recv(&format!("{reply}\r\n"));
        assert_eq!(
            t.ev(),
            [
                "Done",
                &format!("0 {kind} {reply}"),
                "1 Permanent 550 5.1.1 Unknown",
                &format!("2 {kind} {reply}"),
                "Ready",
            ]
        );
        // After the dot the transaction is over: no RSET needed.
        assert_eq!(t.out(), "");
        assert!(t.c.is_idle());
    }
}

// ---------------------------------------------------------------------
// Decided before anything is sent

#[test]
fn too_big_for_the_remote_size() {
    let mut t = T::ready(&["PIPELINING", "SIZE 1000"]);
    let mut x = tx("s@x.test", &["a@y.test", "b@y.test"]);
    x.size = 1001;
    assert_eq!(t.start(x), "", "nothing written");
    assert_eq!(
        t.ev(),
        [
            "Done",
            "0 Permanent 552 5.3.4 message too big for the next hop",
            "1 Permanent 552 5.3.4 message too big for the next hop",
            "Ready",
        ]
    );
    assert!(t.c.is_idle());
    // Exactly the limit is fine.
    let mut x = tx("s@x.test", &["a@y.test"]);
    x.size = 1000;
    assert_eq!(
        t.start(x),
        "MAIL FROM:<s@x.test> SIZE=1000\r\nRCPT TO:<a@y.test>\r\nDATA\r\n"
    );

    // SIZE without a number sets no limit.
    let mut t = T::ready(&["SIZE"]);
    let mut x = tx("s@x.test", &["a@y.test"]);
    x.size = u64::MAX;
    assert_eq!(
        t.start(x),
        format!("MAIL FROM:<s@x.test> SIZE={}\r\n", u64::MAX)
    );
    // No SIZE at all: no limit, no parameter.
    let mut t = T::ready(&[]);
    let mut x = tx("s@x.test", &["a@y.test"]);
    x.size = u64::MAX;
    assert_eq!(t.start(x), "MAIL FROM:<s@x.test>\r\n");
}

#[test]
fn non_ascii_recipient_without_smtputf8() {
    let mut t = T::ready(&["PIPELINING", "8BITMIME"]);
    let out =
        t.start(tx("s@x.test", &["a@y.test", "jörg@y.test", "b@y.test"]));
    assert_eq!(
        out,
        "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\n\
         RCPT TO:<b@y.test>\r\nDATA\r\n",
        "nothing is sent for the non-ASCII recipient"
    );
    t.recv("250 Ok\r\n250 Ok\r\n250 Ok\r\n354 Go\r\n");
    assert_eq!(t.ev(), ["SendBody"]);
    t.c.body_sent().unwrap();
    t.recv("250 Queued\r\n");
    assert_eq!(
        t.ev(),
        [
            "Done",
            "0 Delivered 250 Queued",
            "1 Permanent 553 5.6.7 non-ASCII address and the next hop does \
             not offer SMTPUTF8",
            "2 Delivered 250 Queued",
            "Ready",
        ]
    );
}

#[test]
fn non_ascii_sender_without_smtputf8() {
    let mut t = T::ready(&["PIPELINING", "8BITMIME"]);
    assert_eq!(t.start(tx("jörg@x.test", &["a@y.test", "b@y.test"])), "");
    let refused = "553 5.6.7 non-ASCII address and the next hop does not \
                   offer SMTPUTF8";
    assert_eq!(
        t.ev(),
        [
            "Done",
            &format!("0 Permanent {refused}"),
            &format!("1 Permanent {refused}"),
            "Ready"
        ]
    );
    assert!(t.c.is_idle());
}

#[test]
fn non_ascii_addresses_with_smtputf8() {
    let mut t = T::ready(FULL);
    let mut x = tx("jörg@x.test", &["ü@y.test"]);
    x.mail_params.smtputf8 = true;
    assert_eq!(
        t.start(x),
        "MAIL FROM:<jörg@x.test> SIZE=500 SMTPUTF8\r\n\
         RCPT TO:<ü@y.test>\r\nDATA\r\n"
    );
}

#[test]
fn smtputf8_whenever_needed() {
    // The SMTPUTF8 parameter goes with every transaction that needs it,
    // even when the envelope did not carry it.
    let mut t = T::ready(&["PIPELINING", "SMTPUTF8"]);
    assert_eq!(
        t.start(tx("s@x.test", &["a@y.test", "ü@y.test"])),
        "MAIL FROM:<s@x.test> SMTPUTF8\r\nRCPT TO:<a@y.test>\r\n\
         RCPT TO:<ü@y.test>\r\nDATA\r\n"
    );
    let mut t = T::ready(&["SMTPUTF8"]);
    let mut x = tx("s@x.test", &["a@y.test"]);
    x.utf8_headers = true;
    assert_eq!(t.start(x), "MAIL FROM:<s@x.test> SMTPUTF8\r\n");
    // All ASCII: none.
    let mut t = T::ready(&["SMTPUTF8"]);
    assert_eq!(
        t.start(tx("s@x.test", &["a@y.test"])),
        "MAIL FROM:<s@x.test>\r\n"
    );
}

#[test]
fn forbidden_octets_in_addresses() {
    let mut t = T::ready(FULL);
    let out = t
        .start(tx("s@x.test", &["a@y.test\r\nRSET", "b>@y.test", "c@y.test"]));
    assert_eq!(
        out,
        "MAIL FROM:<s@x.test> SIZE=500\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"
    );
    t.recv("250 Ok\r\n250 Ok\r\n354 Go\r\n");
    t.c.body_sent().unwrap();
    t.recv("250 Queued\r\n");
    assert_eq!(
        t.ev(),
        [
            "SendBody",
            "Done",
            "0 Permanent 553 5.1.3 address contains forbidden characters",
            "1 Permanent 553 5.1.3 address contains forbidden characters",
            "2 Delivered 250 Queued",
            "Ready"
        ]
    );
    // A bad sender decides everyone.
    assert_eq!(t.start(tx("s@x.test>\r\nRSET", &["a@y.test"])), "");
    assert_eq!(
        t.ev(),
        [
            "Done",
            "0 Permanent 553 5.1.7 address contains forbidden characters",
            "Ready"
        ]
    );
}

// ---------------------------------------------------------------------
// ESMTP parameters only where offered

/// A transaction with every parameter set.
fn tx_with_params() -> Transaction {
    let mut x = tx("s@x.test", &["a@y.test", "b@y.test"]);
    x.mail_params = MailParams {
        size: Some(1),
        body: BodyType::EightBitMime,
        smtputf8: true,
        ret: Some(Ret::Hdrs),
        envid: Some("q 1+".to_owned()),
        auth: Some("s@x.test".to_owned()),
    };
    x.recipients[0].1 = RcptParams {
        notify: Notify { success: true, failure: true, ..Notify::default() },
        orcpt: Some(("rfc822".to_owned(), "A+@y.test".to_owned())),
    };
    x.recipients[1].1.notify = Notify { never: true, ..Notify::default() };
    x
}

#[test]
fn parameters_with_everything_offered() {
    let mut t = T::ready(FULL);
    assert_eq!(
        t.start(tx_with_params()),
        "MAIL FROM:<s@x.test> SIZE=500 BODY=8BITMIME SMTPUTF8 RET=HDRS \
         ENVID=q+201+2B\r\n\
         RCPT TO:<a@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A+2B@y.test\r\n\
         RCPT TO:<b@y.test> NOTIFY=NEVER\r\n\
         DATA\r\n",
        "SIZE is ours, never AUTH"
    );
}

#[test]
fn parameters_with_nothing_offered() {
    let mut t = T::ready(&["PIPELINING"]);
    assert_eq!(
        t.start(tx_with_params()),
        "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\n\
         RCPT TO:<b@y.test>\r\nDATA\r\n"
    );
}

#[test]
fn parameters_each_only_where_offered() {
    let cases: [(&[&str], &str); 4] = [
        (&["PIPELINING", "DSN"], " RET=HDRS ENVID=q+201+2B"),
        (&["PIPELINING", "8BITMIME"], " BODY=8BITMIME"),
        (&["PIPELINING", "SMTPUTF8"], " SMTPUTF8"),
        (&["PIPELINING", "SIZE 600"], " SIZE=500"),
    ];
    for (exts, mail) in cases {
        let mut t = T::ready(exts);
        let out = t.start(tx_with_params());
        let first = out.lines().next().unwrap();
        assert_eq!(first, format!("MAIL FROM:<s@x.test>{mail}"), "{exts:?}");
        let dsn = exts.contains(&"DSN");
        assert_eq!(out.contains("NOTIFY=") && out.contains("ORCPT="), dsn);
    }
    // BINARYMIME is sent as 8BITMIME (we never use BDAT), 7BIT not at all.
    for (body, mail) in
        [(BodyType::BinaryMime, " BODY=8BITMIME"), (BodyType::SevenBit, "")]
    {
        let mut t = T::ready(&["8BITMIME"]);
        let mut x = tx("s@x.test", &["a@y.test"]);
        x.mail_params.body = body;
        assert_eq!(t.start(x), format!("MAIL FROM:<s@x.test>{mail}\r\n"));
    }
}

// ---------------------------------------------------------------------
// Failures of the connection

#[test]
fn connection_lost_mid_transaction() {
    let lost = "Transient 451 4.4.2 connection lost";
    // While RCPT replies are outstanding (one of them in pieces).
    let mut t = T::ready(FULL);
    t.start(tx("s@x.test", &["a@y.test", "b@y.test", "c@y.test"]));
    t.recv("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 Unknown\r\n");
    t.feed(b"250 2.1").unwrap();
    t.c.closed();
    assert_eq!(
        t.ev(),
        [
            "Done",
            &format!("0 {lost}"),
            "1 Permanent 550 5.1.1 Unknown",
            &format!("2 {lost}"),
            "Closed"
        ]
    );
    assert!(t.c.is_closed());
    assert_eq!(t.out(), "");
    // Closing twice reports nothing more.
    t.c.closed();
    assert!(t.ev().is_empty());
    // A transaction on a lost connection: transient, nothing written.
    t.start(tx("s@x.test", &["d@y.test"]));
    assert_eq!(t.ev(), ["Done", &format!("0 {lost}")]);
    assert_eq!(t.out(), "");

    // While the body is written, and while the final reply is awaited.
    for body_sent in [false, true] {
        let mut t = T::ready(FULL);
        t.start(tx("s@x.test", &["a@y.test", "b@y.test"]));
        t.recv("250 Ok\r\n550 No\r\n250 Ok\r\n354 Go\r\n");
        assert_eq!(t.ev(), ["SendBody"]);
        if body_sent {
            t.c.body_sent().unwrap();
        }
        t.c.closed();
        assert_eq!(
            t.ev(),
            ["Done", "0 Permanent 550 No", &format!("1 {lost}"), "Closed"]
        );
    }
}

#[test]
fn connection_lost_while_idle_or_quitting() {
    let mut t = T::ready(FULL);
    t.c.closed();
    assert_eq!(t.ev(), ["Closed"]);
    let mut t = T::ready(FULL);
    t.c.quit().unwrap();
    assert_eq!(t.out(), "QUIT\r\n");
    t.c.closed();
    assert_eq!(t.ev(), ["Closed"]);
    let mut t = T::new();
    t.c.closed();
    assert_eq!(t.ev(), ["Closed"]);
    assert_eq!(t.out(), "");
}

#[test]
fn service_closing_mid_transaction() {
    let mut t = T::ready(FULL);
    t.start(tx("s@x.test", &["a@y.test", "b@y.test", "c@y.test"]));
    t.recv(
        "250 2.1.0 Ok\r\n550 5.1.1 Unknown\r\n\
         421 4.4.2 mx.test Error: timeout exceeded\r\n",
    );
    let closing = "Transient 421 4.4.2 mx.test Error: timeout exceeded";
    assert_eq!(
        t.ev(),
        [
            "Done",
            "0 Permanent 550 5.1.1 Unknown",
            &format!("1 {closing}"),
            &format!("2 {closing}"),
            "Closed"
        ]
    );
    assert_eq!(t.out(), "", "no QUIT after 421");
    assert!(t.c.is_closed());
}

#[test]
fn malformed_reply_closes() {
    let bad: [(&str, ReplyError); 3] = [
        ("HELLO\r\n", ReplyError::Malformed),
        ("250-2.1.5 Ok\r\n251 Ok\r\n", ReplyError::InconsistentCode),
        ("199 Ok\r\n", ReplyError::Malformed),
    ];
    for (reply, err) in bad {
        let mut t = T::ready(FULL);
        t.start(tx("s@x.test", &["a@y.test", "b@y.test"]));
        let e = t
            .feed(
                format!("250 2.1.0 Ok\r\n550 5.1.1 No\r\n{reply}").as_bytes(),
            )
            .unwrap_err();
        assert_eq!(e, ClientError::Reply(err), "{reply:?}");
        assert_eq!(
            t.ev(),
            [
                "Done",
                "0 Permanent 550 5.1.1 No",
                "1 Transient 451 4.4.2 connection lost",
                "Closed"
            ]
        );
        assert!(t.c.is_closed());
        assert_eq!(t.out(), "");
        // Nothing more happens on a closed client.
        assert_eq!(t.c.receive(b"250 Ok\r\n"), Ok(8));
        assert!(t.ev().is_empty());
    }
    // A reply line that never ends.
    let mut t = T::ready(FULL);
    let long = vec![b'2'; ReplyParser::MAX_LINE + 1];
    assert_eq!(
        t.feed(&long),
        Err(ClientError::Reply(ReplyError::LineTooLong))
    );
    assert_eq!(t.ev(), ["Closed"]);
}

#[test]
fn unexpected_replies_close() {
    // While idle.
    let mut t = T::ready(FULL);
    let e = t.feed(b"250 2.0.0 Ok\r\n").unwrap_err();
    assert!(matches!(e, ClientError::Unexpected(r) if r.code == 250));
    assert_eq!(t.ev(), ["Closed"]);
    // While the body is being written: the remote gave up on it.
    let mut t = T::ready(FULL);
    t.start(tx("s@x.test", &["a@y.test"]));
    t.recv("250 Ok\r\n250 Ok\r\n354 Go\r\n");
    assert_eq!(t.ev(), ["SendBody"]);
    let e = t.feed(b"554 5.6.0 Bad body\r\n").unwrap_err();
    assert!(matches!(e, ClientError::Unexpected(r) if r.code == 554));
    assert_eq!(t.ev(), ["Done", "0 Permanent 554 5.6.0 Bad body", "Closed"]);
}

// ---------------------------------------------------------------------
// Connection reuse and QUIT

#[test]
fn second_transaction_on_the_same_connection() {
    let mut t = T::ready(FULL);
    let first = t.start(tx("s@x.test", &["a@y.test"]));
    t.recv("250 Ok\r\n250 Ok\r\n354 Go\r\n");
    t.c.body_sent().unwrap();
    t.recv("250 Queued\r\n");
    assert_eq!(
        t.ev(),
        ["SendBody", "Done", "0 Delivered 250 Queued", "Ready"]
    );
    // The same commands again, without RSET.
    assert_eq!(t.start(tx("s@x.test", &["a@y.test"])), first);
    t.recv("250 Ok\r\n250 Ok\r\n354 Go\r\n");
    t.c.body_sent().unwrap();
    t.recv("250 Queued\r\n");
    assert_eq!(
        t.ev(),
        ["SendBody", "Done", "0 Delivered 250 Queued", "Ready"]
    );
    t.c.quit().unwrap();
    assert_eq!(t.out(), "QUIT\r\n");
    assert!(t.ev().is_empty());
    t.recv("221 2.0.0 Bye\r\n");
    assert_eq!(t.ev(), ["Closed"]);
    assert!(t.c.is_closed());
    t.c.closed();
    assert!(t.ev().is_empty(), "one Closed only");
}

#[test]
fn reuse_after_rset() {
    let mut t = T::ready(FULL);
    t.start(tx("s@x.test", &["a@y.test"]));
    t.recv("250 Ok\r\n550 No\r\n554 No valid recipients\r\n");
    assert_eq!(t.ev(), ["Done", "0 Permanent 550 No"]);
    assert_eq!(t.out(), "RSET\r\n");
    // Not before the RSET is answered.
    assert_eq!(
        t.c.start(tx("s@x.test", &["b@y.test"])),
        Err(ClientError::Misuse("start while not idle"))
    );
    assert!(t.c.quit().is_err());
    t.recv("250 2.0.0 Ok\r\n");
    assert_eq!(t.ev(), ["Ready"]);
    assert_eq!(
        t.start(tx("s@x.test", &["b@y.test"])),
        "MAIL FROM:<s@x.test> SIZE=500\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
    );
    t.recv("250 Ok\r\n250 Ok\r\n354 Go\r\n");
    t.c.body_sent().unwrap();
    t.recv("250 Queued\r\n");
    assert_eq!(
        t.ev(),
        ["SendBody", "Done", "0 Delivered 250 Queued", "Ready"]
    );
}

#[test]
fn rset_refused_quits() {
    let mut t = T::ready(FULL);
    t.start(tx("s@x.test", &["a@y.test"]));
    t.recv("550 No\r\n503 No\r\n503 No\r\n");
    assert_eq!(t.ev(), ["Done", "0 Permanent 550 No"]);
    assert_eq!(t.out(), "RSET\r\n");
    t.recv("500 What\r\n");
    assert_eq!(t.out(), "QUIT\r\n");
    assert!(t.ev().is_empty());
    t.recv("221 Bye\r\n");
    assert_eq!(t.ev(), ["Closed"]);
}

#[test]
fn quit_without_a_transaction() {
    let mut t = T::ready(&[]);
    t.c.quit().unwrap();
    assert_eq!(t.out(), "QUIT\r\n");
    // A second quit writes nothing more.
    t.c.quit().unwrap();
    assert_eq!(t.out(), "");
    // Whatever the reply, the connection is over.
    t.recv("500 What\r\n");
    assert_eq!(t.ev(), ["Closed"]);
}

#[test]
fn misuse() {
    let mut t = T::new();
    assert_eq!(
        t.c.start(tx("s@x.test", &["a@y.test"])),
        Err(ClientError::Misuse("start while not idle"))
    );
    assert!(t.c.quit().is_err(), "before the greeting");
    let mut t = T::ready(FULL);
    assert!(t.c.body_sent().is_err());
    t.start(tx("s@x.test", &["a@y.test"]));
    assert!(t.c.body_sent().is_err(), "before 354");
    assert!(t.c.quit().is_err(), "mid-transaction");
    assert!(t.c.start(tx("s@x.test", &["a@y.test"])).is_err());
    assert_eq!(t.out(), "");
    // The misuse did not disturb the transaction.
    t.recv("250 Ok\r\n250 Ok\r\n354 Go\r\n");
    assert_eq!(t.ev(), ["SendBody"]);
    t.c.body_sent().unwrap();
    t.recv("250 Queued\r\n");
    assert_eq!(t.ev(), ["Done", "0 Delivered 250 Queued", "Ready"]);

    let mut t = T::ready(FULL);
    let many: Vec<String> =
        (0..=MAX_RECIPIENTS).map(|i| format!("r{i}@y.test")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        t.c.start(tx("s@x.test", &many)),
        Err(ClientError::TooManyRecipients)
    );
    assert!(t.c.is_idle());
    assert_eq!(t.out(), "");
    let empty = t.start(tx("s@x.test", &[]));
    assert_eq!(empty, "");
    assert_eq!(t.ev(), ["Done", "Ready"]);
}

// ---------------------------------------------------------------------
// The same dialogue however the replies are cut into reads

/// One step of a scripted dialogue.
#[derive(Debug, Clone)]
enum Step {
    /// One turn of the server: everything it sends before it waits for
    /// us (several replies when pipelined).
    Server(&'static str),
    Start(Transaction),
    BodySent,
    Quit,
}

/// Runs `steps`, feeding each server turn in the pieces `cut` makes of
/// it; returns everything written and every event (and error), in order.
fn run(
    steps: &[Step],
    cut: &dyn Fn(&[u8]) -> Vec<Vec<u8>>,
) -> (String, Vec<String>) {
    let mut t = T::new();
    let mut wire = String::new();
    let mut events = Vec::new();
    for step in steps {
        match step {
            Step::Server(s) => {
                for piece in cut(s.as_bytes()) {
                    if let Err(e) = t.feed(&piece) {
                        events.push(format!("Err {e}"));
                    }
                    wire += &t.out();
                    events.extend(t.ev());
                }
                assert!(t.input.is_empty(), "{s:?}: left over");
            }
            Step::Start(x) => t.c.start(x.clone()).unwrap(),
            Step::BodySent => t.c.body_sent().unwrap(),
            Step::Quit => t.c.quit().unwrap(),
        }
        wire += &t.out();
        events.extend(t.ev());
    }
    (wire, events)
}

fn whole(b: &[u8]) -> Vec<Vec<u8>> {
    vec![b.to_vec()]
}

fn bytewise(b: &[u8]) -> Vec<Vec<u8>> {
    b.iter().map(|&x| vec![x]).collect()
}

/// Checks `steps` against the expected transcript, fed whole, byte by
/// byte, and cut in two at every offset.
fn check_every_cut(steps: &[Step], wire: &str, events: &[&str]) {
    let want =
        (wire.to_owned(), events.iter().map(|&e| e.to_owned()).collect());
    assert_eq!(run(steps, &whole), want, "whole");
    assert_eq!(run(steps, &bytewise), want, "byte by byte");
    let longest = steps
        .iter()
        .map(|s| if let Step::Server(s) = s { s.len() } else { 0 })
        .max()
        .unwrap_or(0);
    for at in 1..longest {
        let cut = |b: &[u8]| {
            let at = at.min(b.len());
            vec![b[..at].to_vec(), b[at..].to_vec()]
        };
        assert_eq!(run(steps, &cut), want, "cut at {at}");
    }
}

#[test]
fn pipelined_dialogue_in_every_cut() {
    use Step::*;
    let steps = [
        Server("220-mx.test ESMTP\r\n220 no UCE\r\n"),
        Server(
            "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n\
             250-8BITMIME\r\n250 DSN\r\n",
        ),
        Start(tx("s@x.test", &["a@y.test", "b@y.test", "c@y.test"])),
        Server(
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n451 4.2.0 Later\r\n\
             250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
        ),
        BodySent,
        // Bare LF endings are tolerated.
        Server("250-2.0.0 Ok\n250 2.0.0 queued as 1234\n"),
        Start(tx("s@x.test", &["d@y.test"])),
        Server("250 2.1.0 Ok\r\n550 5.1.1 Unknown\r\n554 5.5.1 No rcpt\r\n"),
        Server("250 2.0.0 Ok\r\n"),
        Quit,
        Server("221 2.0.0 Bye\r\n"),
    ];
    check_every_cut(
        &steps,
        "EHLO relay.test\r\n\
         MAIL FROM:<s@x.test> SIZE=500\r\n\
         RCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n\
         DATA\r\n\
         MAIL FROM:<s@x.test> SIZE=500\r\nRCPT TO:<d@y.test>\r\nDATA\r\n\
         RSET\r\n\
         QUIT\r\n",
        &[
            "Ready",
            "SendBody",
            "Done",
            "0 Delivered 250 2.0.0 Ok queued as 1234",
            "1 Transient 451 4.2.0 Later",
            "2 Delivered 250 2.0.0 Ok queued as 1234",
            "Ready",
            "Done",
            "0 Permanent 550 5.1.1 Unknown",
            "Ready",
            "Closed",
        ],
    );
}

#[test]
fn one_at_a_time_dialogue_in_every_cut() {
    use Step::*;
    let steps = [
        Server("220 mx.test\r\n"),
        Server("502 5.5.1 EHLO not implemented\r\n"),
        Server("250 mx.test\r\n"),
        Start(tx("s@x.test", &["a@y.test", "b@y.test"])),
        Server("250 Ok\r\n"),
        Server("550 No such user\r\n"),
        Server("250 Ok\r\n"),
        Server("354 Go\r\n"),
        BodySent,
        Server("452 Out of space\r\n"),
        Quit,
        Server("221 Bye\r\n"),
    ];
    check_every_cut(
        &steps,
        "EHLO relay.test\r\nHELO relay.test\r\nMAIL FROM:<s@x.test>\r\n\
         RCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nQUIT\r\n",
        &[
            "Ready",
            "SendBody",
            "Done",
            "0 Permanent 550 No such user",
            "1 Transient 452 Out of space",
            "Ready",
            "Closed",
        ],
    );
}

#[test]
fn malformed_reply_in_every_cut() {
    use Step::*;
    let steps = [
        Server("220 mx.test\r\n"),
        Server("250-mx.test\r\n250 PIPELINING\r\n"),
        Start(tx("s@x.test", &["a@y.test"])),
        Server("250 Ok\r\n250 Ok\r\n35x Go\r\n"),
    ];
    check_every_cut(
        &steps,
        "EHLO relay.test\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\n\
         DATA\r\n",
        &[
            "Ready",
            "Err malformed reply from the remote: malformed reply line",
            "Done",
            "0 Transient 451 4.4.2 connection lost",
            "Closed",
        ],
    );
}

// ---------------------------------------------------------------------
// RFC 6531 section 3.4: UTF-8 headers need SMTPUTF8 at the next hop

#[test]
fn utf8_headers_without_smtputf8() {
    let refused = "554 5.6.7 message has UTF-8 headers and the next hop \
                   does not offer SMTPUTF8";
    for exts in [&["PIPELINING", "SIZE 10000", "8BITMIME", "DSN"][..], &[]] {
        let mut t = T::ready(exts);
        let mut x = tx("s@x.test", &["a@y.test", "b@y.test"]);
        x.mail_params.smtputf8 = true;
        x.utf8_headers = true;
        assert_eq!(t.start(x), "", "{exts:?}: nothing written");
        assert_eq!(
            t.ev(),
            [
                "Done",
                &format!("0 Permanent {refused}"),
                &format!("1 Permanent {refused}"),
                "Ready"
            ]
        );
        assert!(t.c.is_idle());
        // The connection stays usable for other messages.
        let mut x = tx("s@x.test", &["a@y.test"]);
        x.mail_params.smtputf8 = true;
        assert!(t.start(x).starts_with("MAIL FROM:<s@x.test>"));
    }
    // Also after HELO (no extensions at all).
    let mut t = T::new();
    t.recv("220 mx.test\r\n");
    t.recv("502 5.5.1 No\r\n");
    t.recv("250 mx.test\r\n");
    assert_eq!(t.out(), "EHLO relay.test\r\nHELO relay.test\r\n");
    assert_eq!(t.ev(), ["Ready"]);
    let mut x = tx("s@x.test", &["a@y.test"]);
    x.utf8_headers = true;
    assert_eq!(t.start(x), "");
    assert_eq!(t.ev(), ["Done", &format!("0 Permanent {refused}"), "Ready"]);
}

#[test]
fn utf8_headers_with_smtputf8() {
    let mut t = T::ready(FULL);
    let mut x = tx("s@x.test", &["a@y.test"]);
    x.mail_params.smtputf8 = true;
    x.utf8_headers = true;
    assert_eq!(
        t.start(x),
        "MAIL FROM:<s@x.test> SIZE=500 SMTPUTF8\r\nRCPT TO:<a@y.test>\r\n\
         DATA\r\n"
    );
    t.recv("250 Ok\r\n250 Ok\r\n354 Go\r\n");
    assert_eq!(t.ev(), ["SendBody"]);
    t.c.body_sent().unwrap();
    t.recv("250 Queued\r\n");
    assert_eq!(t.ev(), ["Done", "0 Delivered 250 Queued", "Ready"]);
}

#[test]
fn utf8_in_the_header_section() {
    let yes: [&[u8]; 5] = [
        "Subject: Grüße\r\n\r\nBody\r\n".as_bytes(),
        "From: a@b\r\nTo: \"Jörg\" <j@b>\r\n\r\n".as_bytes(),
        // No empty line: all of it is header.
        "Subject: ünfinished".as_bytes(),
        // An empty line cut short is no empty line.
        "X: y\r\n\rü\r\n\r\n".as_bytes(),
        b"X: \xff\r\n\r\n",
    ];
    for body in yes {
        assert!(has_utf8_headers(body), "{}", body.escape_ascii());
    }
    let no: [&[u8]; 6] = [
        b"",
        b"Subject: hi\r\n\r\nBody\r\n",
        "Subject: hi\r\n\r\nGrüße\r\n".as_bytes(),
        // No header section at all.
        "\r\nGrüße\r\n".as_bytes(),
        "Subject: hi\r\n\r\n\r\nü\r\n".as_bytes(),
        b"Subject: hi\r\n\r\n\x80",
    ];
    for body in no {
        assert!(!has_utf8_headers(body), "{}", body.escape_ascii());
    }
}
