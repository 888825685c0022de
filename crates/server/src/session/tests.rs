//! Dialogue tests: one line per exchange, no sockets.

use super::*;

const HOST: &str = "mx.test";

/// A session under test plus the helpers that talk to it.
struct T {
    s: Session,
}

fn cfg() -> SessionConfig {
    SessionConfig::new(HOST)
}

impl T {
    /// A greeted session from 127.0.0.1 (in mynetworks).
    fn new() -> Self {
        Self::with(cfg(), "127.0.0.1:40000")
    }

    fn with(cfg: SessionConfig, peer: &str) -> Self {
        let mut s = Session::new(
            Arc::new(cfg),
            peer.parse().unwrap(),
            "127.0.0.1:25".parse().unwrap(),
        );
        s.greet(false);
        let g = take(&mut s);
        assert_eq!(g, "220 mx.test ESMTP Millrace\r\n");
        Self { s }
    }

    /// A session after EHLO.
    fn ehlo() -> Self {
        let mut t = Self::new();
        t.cmd("EHLO client.test", "250-mx.test");
        t
    }

    /// A session after EHLO, MAIL and one RCPT.
    fn rcpt() -> Self {
        let mut t = Self::ehlo();
        t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
        t.cmd("RCPT TO:<c@d.test>", "250 2.1.5");
        t
    }

    /// Sends raw bytes; returns (consumed, action, output).
    fn send(&mut self, bytes: &[u8]) -> (usize, Action, String) {
        let (n, a) = self.s.receive(bytes);
        (n, a, take(&mut self.s))
    }

    /// Sends one command line; checks it was consumed and that the output
    /// starts with `want`. Returns the output.
    fn cmd(&mut self, line: &str, want: &str) -> String {
        let wire = format!("{line}\r\n");
        let (n, _, out) = self.send(wire.as_bytes());
        assert_eq!(n, wire.len(), "{line}: not all consumed");
        assert!(out.starts_with(want), "{line}: want {want:?}, got {out:?}");
        assert!(out.ends_with("\r\n"));
        out
    }

    /// Sends a command and expects `Action`.
    fn act(&mut self, line: &str, want: &str) -> Action {
        let wire = format!("{line}\r\n");
        let (n, a, out) = self.send(wire.as_bytes());
        assert_eq!(n, wire.len());
        assert!(out.starts_with(want), "{line}: want {want:?}, got {out:?}");
        a
    }

    /// DATA then the whole `body` (wire form, terminator included);
    /// returns the action at the end of the body and the output.
    fn data(&mut self, body: &[u8]) -> (Action, String) {
        assert_eq!(self.act("DATA", "354 End data"), Action::StartBody);
        match self.s.body(body) {
            BodyStatus::End { consumed, action } => {
                assert_eq!(consumed, body.len());
                (action, take(&mut self.s))
            }
            BodyStatus::More { .. } => panic!("body did not end"),
        }
    }
}

/// Drains the output as text.
fn take(s: &mut Session) -> String {
    let out = String::from_utf8(s.output().clone()).unwrap();
    s.output().clear();
    out
}

/// The reply lines in `out`.
fn lines(out: &str) -> Vec<&str> {
    out.split_terminator("\r\n").collect()
}

fn commit(a: Action) -> Transaction {
    match a {
        Action::Commit(tx) => *tx,
        other => panic!("expected Commit, got {other:?}"),
    }
}

// ---- connect ----

#[test]
fn greeting_and_pregreet() {
    let _ = T::new();
    let mut s = Session::new(
        Arc::new(cfg()),
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:25".parse().unwrap(),
    );
    s.greet(true);
    assert_eq!(
        take(&mut s),
        "554 5.5.0 Error: SMTP protocol synchronization\r\n"
    );
    assert!(s.wants_close());
    assert_eq!(s.phase(), Phase::Closed);
    assert_eq!(s.receive(b"EHLO x\r\n"), (0, Action::Close));
}

#[test]
fn too_many_connections() {
    let mut out = Vec::new();
    Session::too_many_connections(HOST, &mut out);
    assert_eq!(
        out,
        b"421 4.7.0 mx.test Too many connections, try again later\r\n"
    );
}

// ---- EHLO / HELO ----

#[test]
fn ehlo_lists_capabilities() {
    let mut t = T::new();
    let out = t.cmd("EHLO client.test", "250-mx.test\r\n");
    let l = lines(&out);
    assert_eq!(
        l,
        [
            "250-mx.test",
            "250-PIPELINING",
            "250-SIZE 35882577",
            "250-8BITMIME",
            "250-ENHANCEDSTATUSCODES",
            "250-SMTPUTF8",
            "250-DSN",
            "250 CHUNKING",
        ]
    );
    assert!(!out.contains("STARTTLS") && !out.contains("AUTH"));
}

#[test]
fn ehlo_without_chunking() {
    let mut c = cfg();
    c.chunking = false;
    let mut t = T::with(c, "127.0.0.1:1");
    let out = t.cmd("EHLO client.test", "250-mx.test");
    assert!(!out.contains("CHUNKING"));
    assert!(out.ends_with("250 DSN\r\n"));
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("RCPT TO:<c@d.test>", "250 2.1.5");
    t.cmd("BDAT 0 LAST", "502 5.5.1");
}

#[test]
fn helo_and_bad_arguments() {
    let mut t = T::new();
    t.cmd("EHLO", "501 5.5.4");
    t.cmd("EHLO bad@name", "501 5.5.4");
    t.cmd("HELO", "501 5.5.4");
    assert_eq!(t.cmd("HELO client.test", "250 mx.test"), "250 mx.test\r\n");
    t.cmd("EHLO [127.0.0.1]", "250-mx.test");
}

#[test]
fn ehlo_again_resets_the_transaction() {
    let mut t = T::rcpt();
    t.cmd("EHLO again.test", "250-mx.test");
    t.cmd("RCPT TO:<c@d.test>", "503 5.5.1");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("HELO again.test", "250 mx.test");
    t.cmd("DATA", "503 5.5.1");
    assert_eq!(t.s.helo_name(), Some("again.test"));
}

// ---- MAIL ----

#[test]
fn mail_rows() {
    let mut t = T::new();
    t.cmd("MAIL FROM:<a@b.test>", "503 5.5.1 Error: send HELO/EHLO first");
    t.cmd("EHLO client.test", "250-");
    t.cmd("MAIL FROM:<a@b.test> FOO=1", "555 5.5.4");
    t.cmd("MAIL FROM:<a@b.test> SIZE=35882578", "552 5.3.4");
    t.cmd("MAIL FROM:a@b.test", "501 5.1.7");
    t.cmd("MAIL FROM:<a@@b>", "501 5.1.7");
    t.cmd("MAIL TO:<a@b.test>", "501 5.5.4");
    t.cmd("MAIL FROM:<a@b.test> SIZE=x", "501 5.5.4");
    t.cmd("MAIL FROM:<a@b.test> BODY=BINARYMIME", "555 5.5.4");
    let mut t = T::ehlo();
    t.cmd("MAIL FROM:<ü@b.test>", "553 5.6.7");
    assert_eq!(t.cmd("MAIL FROM:<>", "250 2.1.0"), "250 2.1.0 Ok\r\n");
    assert_eq!(t.s.sender(), Some(&ReversePath::Null));
    t.cmd("MAIL FROM:<a@b.test>", "503 5.5.1 Error: nested MAIL command");
    t.cmd("RSET", "250 2.0.0");
    t.cmd("MAIL FROM:<a@b.test> SIZE=35882577 BODY=8BITMIME", "250 2.1.0");
}

#[test]
fn mail_smtputf8() {
    let mut t = T::ehlo();
    t.cmd("MAIL FROM:<ü@b.test> SMTPUTF8", "250 2.1.0");
    t.cmd("RCPT TO:<ö@d.test>", "250 2.1.5");
    t.cmd("RSET", "250 2.0.0");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("RCPT TO:<ö@d.test>", "553 5.6.7");
}

// ---- RCPT ----

#[test]
fn rcpt_rows() {
    let mut t = T::ehlo();
    t.cmd("RCPT TO:<c@d.test>", "503 5.5.1 Error: need MAIL command");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("RCPT TO:<c@d.test>", "250 2.1.5 Ok");
    t.cmd("RCPT TO:c@d.test", "501 5.1.3");
    t.cmd("RCPT TO:<c@>", "501 5.1.3");
    t.cmd("RCPT TO:<c@d.test> BOGUS=1", "555 5.5.4");
    t.cmd("RCPT TO:<@hop1.test,@hop2.test:e@f.test>", "250 2.1.5");
    t.cmd("RCPT TO:<Postmaster>", "250 2.1.5");
    t.cmd("RCPT TO:<g@h.test> NOTIFY=SUCCESS,FAILURE", "250 2.1.5");
    let r: Vec<_> =
        t.s.recipients()
            .iter()
            .map(|(p, _)| (p.mailbox().as_str().to_owned(), p.0.route.clone()))
            .collect();
    assert_eq!(
        r,
        [
            ("c@d.test".to_owned(), None),
            ("e@f.test".to_owned(), None),
            ("Postmaster@mx.test".to_owned(), None),
            ("g@h.test".to_owned(), None),
        ]
    );
    assert!(t.s.recipients()[3].1.notify.success);
}

#[test]
fn relay_denied_outside_mynetworks() {
    let mut c = cfg();
    c.relay_domains = vec!["ok.test".into(), ".sub.test".into()];
    let mut t = T::with(c, "192.0.2.7:5000");
    t.cmd("EHLO client.test", "250-");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    assert_eq!(
        t.cmd("RCPT TO:<x@elsewhere.test>", "554 5.7.1"),
        "554 5.7.1 <x@elsewhere.test>: Relay access denied\r\n"
    );
    t.cmd("RCPT TO:<x@OK.test>", "250 2.1.5");
    t.cmd("RCPT TO:<x@a.sub.test>", "250 2.1.5");
    t.cmd("RCPT TO:<x@sub.test>", "554 5.7.1");
    t.cmd("RCPT TO:<postmaster>", "250 2.1.5");
    assert_eq!(t.s.recipients().len(), 3);
}

#[test]
fn relay_from_ipv6_loopback_and_mapped() {
    for peer in ["[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
        let mut t = T::with(cfg(), peer);
        t.cmd("EHLO client.test", "250-");
        t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
        t.cmd("RCPT TO:<x@anywhere.test>", "250 2.1.5");
    }
}

#[test]
fn max_recipients() {
    let mut c = cfg();
    c.max_recipients = 2;
    let mut t = T::with(c, "127.0.0.1:1");
    t.cmd("EHLO client.test", "250-");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("RCPT TO:<1@d.test>", "250 2.1.5");
    t.cmd("RCPT TO:<2@d.test>", "250 2.1.5");
    assert_eq!(
        t.cmd("RCPT TO:<3@d.test>", "452 4.5.3"),
        "452 4.5.3 Error: too many recipients\r\n"
    );
    assert_eq!(t.s.recipients().len(), 2);
}

// ---- DATA ----

#[test]
fn data_sequence_errors() {
    let mut t = T::ehlo();
    t.cmd("DATA", "503 5.5.1");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("RCPT TO:<x@elsewhere>", "250 2.1.5");
    t.cmd("RSET", "250 2.0.0");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("DATA", "503 5.5.1 Error: need RCPT command");
    t.cmd("RCPT TO:<c@d.test>", "250 2.1.5");
    t.cmd("DATA now", "501 5.5.4");
    assert_eq!(t.act("DATA", "354 "), Action::StartBody);
    assert_eq!(t.s.phase(), Phase::Body { discarding: false });
    assert_eq!(t.s.timeout_kind(), TimeoutKind::Data);
    assert_eq!(t.s.recipients().len(), 1);
}

#[test]
fn data_commit_and_reset() {
    let mut t = T::rcpt();
    let (a, out) = t.data(b"Subject: hi\r\n\r\nbody\r\n.\r\n");
    assert_eq!(out, "");
    let tx = commit(a);
    assert_eq!(tx.body_len, 21);
    assert_eq!(tx.helo, "client.test");
    assert!(tx.esmtp);
    assert_eq!(tx.recipients.len(), 1);
    assert_eq!(t.s.phase(), Phase::AwaitCommit);
    assert_eq!(t.s.receive(b"NOOP\r\n"), (0, Action::Continue));
    t.s.committed(Ok("0123ABCD"));
    assert_eq!(take(&mut t.s), "250 2.0.0 Ok: queued as 0123ABCD\r\n");
    assert_eq!(t.s.phase(), Phase::Command);
    assert_eq!(t.s.timeout_kind(), TimeoutKind::Command);
    // The transaction is gone, the HELO is kept.
    t.cmd("RCPT TO:<c@d.test>", "503 5.5.1");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
}

#[test]
fn commit_failure_is_451() {
    let mut t = T::rcpt();
    let (a, _) = t.data(b".\r\n");
    assert_eq!(commit(a).body_len, 0);
    t.s.committed(Err(()));
    assert_eq!(take(&mut t.s), "451 4.3.0 Error: queue file write error\r\n");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
}

#[test]
fn body_in_every_split() {
    let body = b"Subject: split\r\n\r\n..dot\r\nline\r\n.\r\n";
    for cut1 in 0..=body.len() {
        for cut2 in cut1..=body.len() {
            let mut t = T::rcpt();
            t.act("DATA", "354");
            let mut ends = Vec::new();
            let mut off = 0;
            for piece in [&body[..cut1], &body[cut1..cut2], &body[cut2..]] {
                match t.s.body(piece) {
                    BodyStatus::More { store } => assert!(store),
                    BodyStatus::End { consumed, action } => {
                        ends.push((off + consumed, action));
                        break;
                    }
                }
                off += piece.len();
            }
            assert_eq!(ends.len(), 1, "cuts {cut1} {cut2}");
            let (end, action) = ends.pop().unwrap();
            assert_eq!(end, body.len());
            assert_eq!(commit(action).body_len, body.len() as u64 - 3);
        }
    }
}

#[test]
fn size_limit_at_mail_and_in_data_then_success() {
    let mut c = cfg();
    c.max_message_size = 100;
    let mut t = T::with(c, "127.0.0.1:1");
    t.cmd("EHLO client.test", "250-");
    t.cmd("MAIL FROM:<a@b.test> SIZE=101", "552 5.3.4");
    t.cmd("MAIL FROM:<a@b.test> SIZE=50", "250 2.1.0");
    t.cmd("RCPT TO:<c@d.test>", "250 2.1.5");
    t.act("DATA", "354");
    let line = [b'x'; 78];
    let mut stored = 0;
    let mut discarding_seen = false;
    for _ in 0..5 {
        match t.s.body(&line) {
            BodyStatus::More { store } => {
                if store {
                    stored += 1;
                } else {
                    discarding_seen = true;
                }
            }
            BodyStatus::End { .. } => panic!("no end yet"),
        }
        assert!(matches!(t.s.body(b"\r\n"), BodyStatus::More { .. }));
    }
    assert!(discarding_seen && stored < 5);
    assert_eq!(t.s.phase(), Phase::Body { discarding: true });
    assert_eq!(
        t.s.body(b".\r\n"),
        BodyStatus::End { consumed: 3, action: Action::Continue }
    );
    assert_eq!(take(&mut t.s), "552 5.3.4 Error: message file too big\r\n");
    // Nothing kept; the session is usable.
    t.cmd("RCPT TO:<c@d.test>", "503 5.5.1");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("RCPT TO:<c@d.test>", "250 2.1.5");
    let (a, _) = t.data(b"short\r\n.\r\n");
    assert_eq!(commit(a).body_len, 7);
}

#[test]
fn over_size_in_one_chunk_with_terminator() {
    let mut c = cfg();
    c.max_message_size = 10;
    let mut t = T::with(c, "127.0.0.1:1");
    t.cmd("EHLO client.test", "250-");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("RCPT TO:<c@d.test>", "250 2.1.5");
    let (a, out) = t.data(b"0123456789ab\r\n.\r\n");
    assert_eq!(a, Action::Continue);
    assert!(out.starts_with("552 5.3.4"));
}

#[test]
fn smuggling_vectors_are_rejected_never_two_commits() {
    let vectors: [&[u8]; 5] =
        [b"\n.\r\n", b"\r\n.\n", b"\n.\n", b"\r.\r\n", b"\r\n.\r"];
    for v in vectors {
        let mut body = b"Subject: a\r\n\r\nfirst".to_vec();
        body.extend_from_slice(v);
        body.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nsmuggled\r\n.\r\n");
        for cut in [0, 5, body.len() / 2, body.len()] {
            let mut t = T::rcpt();
            t.act("DATA", "354");
            let mut commits = 0;
            let mut rest: Vec<u8> = Vec::new();
            let mut finished = None;
            for piece in [&body[..cut], &body[cut..]] {
                if let BodyStatus::End { consumed, action } = t.s.body(piece) {
                    if matches!(action, Action::Commit(_)) {
                        commits += 1;
                    }
                    rest.extend_from_slice(&piece[consumed..]);
                    finished = Some(take(&mut t.s));
                    break;
                }
            }
            let out = finished.expect("body ends at the real terminator");
            assert_eq!(commits, 0, "{v:?}");
            assert_eq!(out, "550 5.6.0 Error: bare <CR> or <LF> received\r\n");
            assert!(rest.is_empty(), "{v:?}: {rest:?}");
        }
    }
}

#[test]
fn pipelined_after_the_dot_waits_for_commit() {
    let mut t = T::rcpt();
    t.act("DATA", "354");
    let input = b"hello\r\n.\r\nMAIL FROM:<x@y.test>\r\nQUIT\r\n";
    let BodyStatus::End { consumed, action } = t.s.body(input) else {
        panic!("no end")
    };
    assert_eq!(consumed, 10);
    commit(action);
    let rest = &input[consumed..];
    assert_eq!(t.s.receive(rest), (0, Action::Continue));
    t.s.committed(Ok("ID1"));
    let (n, a, out) = t.send(rest);
    assert_eq!((n, a), (rest.len(), Action::Close));
    assert_eq!(
        lines(&out),
        ["250 2.0.0 Ok: queued as ID1", "250 2.1.0 Ok", "221 2.0.0 Bye"]
    );
}

// ---- other commands ----

#[test]
fn simple_commands() {
    let mut t = T::ehlo();
    t.cmd("RSET", "250 2.0.0 Ok");
    t.cmd("NOOP", "250 2.0.0 Ok");
    t.cmd("NOOP anything", "250 2.0.0 Ok");
    t.cmd("VRFY someone", "252 2.5.2");
    t.cmd("EXPN list", "502 5.5.1");
    for c in ["SEND FROM:<a@b>", "SOML FROM:<a@b>", "SAML FROM:<a@b>", "TURN"]
    {
        t.cmd(c, "502 5.5.1");
    }
    t.cmd("HELP", "214 2.0.0");
    t.cmd("STARTTLS", "502 5.5.1");
    t.cmd("AUTH PLAIN", "502 5.5.1");
    let mut t = T::ehlo();
    t.cmd("FROB", "500 5.5.2");
    t.cmd("RSET now", "501 5.5.4");
    t.cmd("VRFY", "501 5.5.4");
    t.cmd("noop", "250 2.0.0");
    let long = format!("NOOP {}", "x".repeat(600));
    t.cmd(&long, "500 5.5.6");
    let (n, a, out) = t.send(b"QUIT\r\n");
    assert_eq!((n, a, out.as_str()), (6, Action::Close, "221 2.0.0 Bye\r\n"));
    assert!(t.s.wants_close());
}

#[test]
fn bare_lf_commands_are_accepted() {
    let mut t = T::new();
    let (n, a, out) = t.send(b"EHLO client.test\n");
    assert_eq!((n, a), (17, Action::Continue));
    assert!(out.starts_with("250-"));
    let (_, _, out) = t.send(b"MAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\n");
    assert_eq!(lines(&out), ["250 2.1.0 Ok", "250 2.1.5 Ok"]);
}

#[test]
fn tenth_error_closes_with_421() {
    let mut t = T::ehlo();
    for _ in 0..9 {
        t.cmd("FROB", "500 5.5.2");
    }
    let (_, a, out) = t.send(b"FROB\r\n");
    assert_eq!(a, Action::Close);
    // The 10th error is answered with the 421 itself (DESIGN.md).
    assert_eq!(lines(&out), ["421 4.7.0 mx.test Error: too many errors"]);
    assert!(t.s.wants_close());
}

#[test]
fn errors_count_across_kinds() {
    let mut t = T::ehlo();
    let errs = [
        "RCPT TO:<a@b>",
        "DATA",
        "EXPN x",
        "TURN",
        "MAIL FROM:<a@b> X=1",
        "RCPT TO:<a@b>",
        "VRFY",
        "HELO",
        "STARTTLS",
    ];
    for e in errs {
        let out = t.cmd(e, "5");
        assert_eq!(lines(&out).len(), 1);
    }
    let (_, a, out) = t.send(b"FROB\r\n");
    assert_eq!(a, Action::Close);
    assert!(out.contains("421 4.7.0"));
}

#[test]
fn timeout_closes() {
    let mut t = T::rcpt();
    t.s.timeout();
    assert_eq!(
        take(&mut t.s),
        "421 4.4.2 mx.test Error: timeout exceeded\r\n"
    );
    assert!(t.s.wants_close());
    let mut t = T::rcpt();
    t.act("DATA", "354");
    t.s.timeout();
    assert!(take(&mut t.s).starts_with("421 4.4.2"));
    assert_eq!(t.s.phase(), Phase::Closed);
}

#[test]
fn shutdown_in_command_phase() {
    let mut t = T::rcpt();
    assert!(t.s.shutdown());
    assert_eq!(take(&mut t.s), "421 4.3.2 mx.test Service shutting down\r\n");
    assert!(t.s.wants_close());
}

#[test]
fn shutdown_during_data_finishes_the_message() {
    let mut t = T::rcpt();
    t.act("DATA", "354");
    assert!(!t.s.shutdown());
    assert_eq!(take(&mut t.s), "");
    assert!(matches!(t.s.body(b"hi\r\n"), BodyStatus::More { store: true }));
    let BodyStatus::End { action, .. } = t.s.body(b".\r\n") else {
        panic!("no end")
    };
    commit(action);
    assert!(!t.s.wants_close());
    t.s.committed(Ok("ID"));
    assert_eq!(
        lines(&take(&mut t.s)),
        [
            "250 2.0.0 Ok: queued as ID",
            "421 4.3.2 mx.test Service shutting down"
        ]
    );
    assert!(t.s.wants_close());
}

#[test]
fn shutdown_during_rejected_data_closes_after_reply() {
    let mut t = T::rcpt();
    t.act("DATA", "354");
    assert!(!t.s.shutdown());
    let status = t.s.body(b"a\nb\r\n.\r\n");
    assert_eq!(status, BodyStatus::End { consumed: 8, action: Action::Close });
    assert_eq!(
        lines(&take(&mut t.s)),
        [
            "550 5.6.0 Error: bare <CR> or <LF> received",
            "421 4.3.2 mx.test Service shutting down"
        ]
    );
}

// ---- pipelining ----

#[test]
fn pipelined_transaction_in_one_input() {
    let mut t = T::ehlo();
    let input = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n\
        RCPT TO:<e@f.test>\r\nDATA\r\n";
    let (n, a, out) = t.send(input);
    assert_eq!((n, a), (input.len(), Action::StartBody));
    assert_eq!(
        lines(&out),
        [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>"
        ]
    );
    assert_eq!(t.s.recipients().len(), 2);
}

#[test]
fn pipelining_violations_close() {
    let sync = "554 5.5.0 Error: SMTP protocol synchronization\r\n";
    // Without EHLO nothing may be pipelined.
    let mut t = T::new();
    let (_, a, out) = t.send(b"HELO c.test\r\nMAIL FROM:<a@b.test>\r\n");
    assert_eq!((a, out.as_str()), (Action::Close, sync));
    let mut t = T::new();
    t.cmd("HELO c.test", "250");
    let (n, a, out) =
        t.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n");
    assert_eq!((n, a, out.as_str()), (22, Action::Close, sync));
    // A group-ending command followed by more input.
    for first in ["NOOP", "EHLO x.test", "VRFY x", "HELP", "RSET x"] {
        let mut t = T::ehlo();
        let input = format!("{first}\r\nMAIL FROM:<a@b.test>\r\n");
        let (_, a, out) = t.send(input.as_bytes());
        if first == "RSET x" {
            // Not group-ending: a plain 501, and MAIL proceeds.
            assert_eq!(a, Action::Continue);
            assert_eq!(
                lines(&out),
                [
                    "501 5.5.4 Syntax error in parameters or arguments",
                    "250 2.1.0 Ok"
                ]
            );
        } else {
            assert_eq!((a, out.as_str()), (Action::Close, sync), "{first}");
        }
    }
    // DATA must wait for the 354.
    let mut t = T::rcpt();
    let (_, a, out) = t.send(b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n");
    assert_eq!((a, out.as_str()), (Action::Close, sync));
    // Even a partial line after a group-ending command counts.
    let mut t = T::ehlo();
    let (_, a, _) = t.send(b"NOOP\r\nMA");
    assert_eq!(a, Action::Close);
}

#[test]
fn long_line_is_discarded_with_bounded_buffering() {
    let mut t = T::ehlo();
    let chunk = vec![b'A'; 64 * 1024];
    let mut fed = 0;
    let mut buffered: Vec<u8> = Vec::new();
    while fed < 10 * 1024 * 1024 {
        buffered.extend_from_slice(&chunk);
        fed += chunk.len();
        let (n, a, out) = t.send(&buffered);
        assert_eq!(a, Action::Continue);
        assert_eq!(out, "");
        buffered.drain(..n);
        assert!(buffered.len() < 512, "the glue must not buffer the line");
    }
    buffered.extend_from_slice(b"\r\nNOOP\r\n");
    let (n, _, out) = t.send(&buffered);
    assert_eq!(n, buffered.len());
    assert_eq!(
        lines(&out),
        ["500 5.5.6 Error: line too long", "250 2.0.0 Ok"]
    );
}

#[test]
fn backpressure_asks_for_flush() {
    let mut c = cfg();
    c.max_pending_output = 40;
    let mut t = T::with(c, "127.0.0.1:1");
    t.cmd("EHLO client.test", "250-");
    let input = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<a@b.test>\r\n\
        RCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\n";
    let mut pos = 0;
    let mut flushes = 0;
    let mut all = String::new();
    loop {
        let (n, a, out) = t.send(&input[pos..]);
        pos += n;
        all.push_str(&out);
        match a {
            Action::Flush => flushes += 1,
            Action::Continue => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pos, input.len());
    assert!(flushes >= 1);
    assert_eq!(lines(&all).len(), 4);
}

// ---- BDAT ----

#[test]
fn bdat_chunks_then_last() {
    let mut t = T::rcpt();
    let (n, a, out) = t.send(b"BDAT 5\r\nhello");
    assert_eq!((n, out.as_str()), (8, ""));
    assert_eq!(a, Action::Bdat { size: 5, last: false, start: true });
    assert_eq!(t.s.phase(), Phase::Bdat { remaining: 5, discarding: false });
    assert_eq!(t.s.timeout_kind(), TimeoutKind::Data);
    assert_eq!(
        t.s.bdat_chunk(b"hel"),
        BdatStatus::More { consumed: 3, store: true }
    );
    assert_eq!(
        t.s.bdat_chunk(b"loBDAT 2 LAST\r\n"),
        BdatStatus::Done {
            consumed: 2,
            store: true,
            action: Action::Continue
        }
    );
    assert_eq!(take(&mut t.s), "250 2.0.0 Ok: 5 octets received\r\n");
    t.cmd("DATA", "503 5.5.1");
    t.cmd("RCPT TO:<x@y.test>", "503 5.5.1");
    let a = t.act("BDAT 2 LAST", "");
    assert_eq!(a, Action::Bdat { size: 2, last: true, start: false });
    let BdatStatus::Done { consumed: 2, store: true, action } =
        t.s.bdat_chunk(b"\r\nQUIT\r\n")
    else {
        panic!("chunk not done")
    };
    let tx = commit(action);
    assert_eq!(tx.body_len, 7);
    t.s.committed(Ok("B1"));
    assert_eq!(take(&mut t.s), "250 2.0.0 Ok: queued as B1\r\n");
}

#[test]
fn bdat_zero_last_and_empty_input() {
    let mut t = T::rcpt();
    assert_eq!(
        t.act("BDAT 0 LAST", ""),
        Action::Bdat { size: 0, last: true, start: true }
    );
    let BdatStatus::Done { consumed: 0, action, .. } = t.s.bdat_chunk(&[])
    else {
        panic!()
    };
    assert_eq!(commit(action).body_len, 0);
}

#[test]
fn bdat_refused_chunk_is_read_and_discarded() {
    let mut t = T::ehlo();
    let a = t.act("BDAT 3", "");
    assert_eq!(a, Action::Bdat { size: 3, last: false, start: false });
    assert_eq!(t.s.phase(), Phase::Bdat { remaining: 3, discarding: true });
    assert_eq!(
        t.s.bdat_chunk(b"abcNOOP\r\n"),
        BdatStatus::Done {
            consumed: 3,
            store: false,
            action: Action::Continue
        }
    );
    assert_eq!(take(&mut t.s), "503 5.5.1 Error: need MAIL command\r\n");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.act("BDAT 1 LAST", "");
    let st = t.s.bdat_chunk(b"x");
    assert!(matches!(st, BdatStatus::Done { store: false, .. }));
    assert!(take(&mut t.s).starts_with("503 5.5.1"));
    // The transaction survives: add a recipient and go on.
    t.cmd("RCPT TO:<c@d.test>", "250 2.1.5");
}

#[test]
fn bdat_over_size_and_bare_line_endings() {
    let mut c = cfg();
    c.max_message_size = 10;
    let mut t = T::with(c, "127.0.0.1:1");
    t.cmd("EHLO client.test", "250-");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("RCPT TO:<c@d.test>", "250 2.1.5");
    t.act("BDAT 8", "");
    assert!(matches!(t.s.bdat_chunk(b"12345678"), BdatStatus::Done { .. }));
    t.act("BDAT 8", "");
    assert_eq!(
        t.s.bdat_chunk(b"12345678"),
        BdatStatus::Done {
            consumed: 8,
            store: false,
            action: Action::Continue
        }
    );
    let out = take(&mut t.s);
    assert_eq!(out, "552 5.3.4 Error: message file too big\r\n");
    t.act("BDAT 2 LAST", "");
    assert_eq!(
        t.s.bdat_chunk(b"\r\n"),
        BdatStatus::Done {
            consumed: 2,
            store: false,
            action: Action::Continue
        }
    );
    assert!(take(&mut t.s).starts_with("552 5.3.4"));
    // Bare LF across chunks: rejected at LAST, nothing committed.
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("RCPT TO:<c@d.test>", "250 2.1.5");
    t.act("BDAT 2", "");
    t.s.bdat_chunk(b"a\r");
    assert!(take(&mut t.s).starts_with("250"));
    t.act("BDAT 2 LAST", "");
    let st = t.s.bdat_chunk(b"b\n");
    assert_eq!(
        st,
        BdatStatus::Done {
            consumed: 2,
            store: true,
            action: Action::Continue
        }
    );
    assert_eq!(
        take(&mut t.s),
        "550 5.6.0 Error: bare <CR> or <LF> received\r\n"
    );
}

#[test]
fn received_header_from_session_transaction() {
    let mut t = T::rcpt();
    let (a, _) = t.data(b"x\r\n.\r\n");
    let tx = commit(a);
    let h = tx.received_header(HOST, "QID", 0);
    assert!(h.starts_with("Received: from client.test ([127.0.0.1])\r\n"));
    assert!(h.contains("with ESMTP id QID\r\n\tfor <c@d.test>; Thu, 1 Jan"));
}

// ---- conformance review (real clients) ----

#[test]
fn helo_accepts_an_address_literal() {
    // Python's smtplib says `HELO [127.0.0.1]` when the host name has no
    // dot; Postfix accepts it, and so do we (EHLO always did).
    let mut t = T::new();
    t.cmd("HELO [127.0.0.1]", "250 mx.test");
    assert_eq!(t.s.helo_name(), Some("[127.0.0.1]"));
    t.cmd("HELO [IPv6:::1]", "250 mx.test");
    t.cmd("HELO [not.an.address]", "501 5.5.4");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
}

#[test]
fn huge_declared_size_is_552_not_501() {
    let mut t = T::ehlo();
    t.cmd("MAIL FROM:<a@b.test> SIZE=99999999999999999999", "552 5.3.4");
    t.cmd("MAIL FROM:<a@b.test> SIZE=123456789012345678901234", "552 5.3.4");
    t.cmd("MAIL FROM:<a@b.test> SIZE=0", "250 2.1.0");
}

#[test]
fn quit_with_pipelined_input_says_bye() {
    // QUIT ends the session anyway: bytes after it are dropped, not
    // answered with a synchronization error.
    for helo in ["EHLO c.test", "HELO c.test"] {
        let mut t = T::new();
        t.cmd(helo, "250");
        let (_, a, out) = t.send(b"QUIT\r\nNOOP\r\n");
        assert_eq!((a, out.as_str()), (Action::Close, "221 2.0.0 Bye\r\n"));
        assert!(t.s.wants_close());
    }
}

#[test]
fn data_or_bdat_without_rcpt_is_out_of_sequence() {
    // No RCPT at all: wrong order, 503 5.5.1 (DESIGN.md).
    let mut t = T::ehlo();
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("DATA", "503 5.5.1 Error: need RCPT command");
    t.act("BDAT 1 LAST", "");
    assert!(matches!(t.s.bdat_chunk(b"x"), BdatStatus::Done { .. }));
    assert_eq!(take(&mut t.s), "503 5.5.1 Error: need RCPT command\r\n");
    // Every RCPT refused (the client may have pipelined DATA behind
    // them): 554 5.5.1, as RFC 5321 section 3.3 allows.
    let mut c = cfg();
    c.max_recipients = 0;
    let mut t = T::with(c, "127.0.0.1:1");
    t.cmd("EHLO c.test", "250");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("RCPT TO:<c@d.test>", "452 4.5.3");
    t.cmd("DATA", "554 5.5.1 Error: no valid recipients");
    t.cmd("RSET", "250 2.0.0");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    t.cmd("DATA", "503 5.5.1");
}

#[test]
fn malformed_utf8_with_smtputf8_is_a_syntax_error() {
    // Not "553 5.6.7 Must declare SMTPUTF8": it was declared.
    let mut t = T::ehlo();
    let (_, _, out) = t.send(b"MAIL FROM:<j\xc3@b.test> SMTPUTF8\r\n");
    assert!(out.starts_with("501 5.1.7"), "{out}");
    t.cmd("MAIL FROM:<jö@b.test> SMTPUTF8", "250 2.1.0");
    let (_, _, out) = t.send(b"RCPT TO:<x\xff@d.test>\r\n");
    assert!(out.starts_with("501 5.1.3"), "{out}");
    t.cmd("RCPT TO:<xö@d.test>", "250 2.1.5");
}

#[test]
fn recipient_overshoot_is_not_a_session_error() {
    // A client with more recipients than max_recipients gets 452 for the
    // rest and sends them later (RFC 5321 section 4.5.3.1.10). Those 452s
    // must not reach the error limit and drop the transaction.
    let mut c = cfg();
    c.max_recipients = 2;
    let mut t = T::with(c, "127.0.0.1:1");
    t.cmd("EHLO c.test", "250");
    t.cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    for i in 0..30 {
        let want = if i < 2 { "250 2.1.5" } else { "452 4.5.3" };
        t.cmd(&format!("RCPT TO:<r{i}@d.test>"), want);
    }
    let (a, _) = t.data(b"x\r\n.\r\n");
    assert_eq!(commit(a).recipients.len(), 2);
}
