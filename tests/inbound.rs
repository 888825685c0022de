//! The inbound behaviour table of DESIGN.md, over TCP against the real
//! binary.

use crate::util::{Relay, Smtp};

#[test]
fn greeting_ehlo_helo() {
    let relay = Relay::start("");
    let mut s = Smtp::connect(relay.addr);
    let (code, lines) = s.reply();
    assert_eq!(code, 220);
    assert!(
        lines[0].starts_with("relay.test.example ESMTP Millrace"),
        "{lines:?}"
    );
    s.send(b"EHLO client.example\r\n");
    let (code, lines) = s.reply();
    assert_eq!(code, 250);
    assert!(lines[0].starts_with("relay.test.example"), "{lines:?}");
    for cap in [
        "PIPELINING",
        "SIZE 35882577",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "DSN",
    ] {
        assert!(lines.iter().any(|l| l == cap), "{cap} missing in {lines:?}");
    }
    s.expect("HELO client.example", "250 relay.test.example");
    s.expect("QUIT", "221 2.0.0");
    assert!(s.closed());
}

#[test]
fn the_whole_table() {
    let relay = Relay::start("");
    let mut s = relay.connect();
    s.expect("MAIL FROM:<a@example.org>", "503 5.5.1");
    s.expect("EHLO client.example", "250");
    s.expect("RCPT TO:<b@example.net>", "503 5.5.1");
    s.expect("DATA", "503 5.5.1");
    s.expect("MAIL FROM:<a@example.org> SIZE=99999999999", "552 5.3.4");
    s.expect("MAIL FROM:<a@example.org> FROBNICATE=1", "555 5.5.4");
    s.expect("MAIL FROM:<>", "250 2.1.0");
    s.expect("MAIL FROM:<a@example.org>", "503 5.5.1");
    s.expect(
        "RCPT TO:<@hosta.example,@hostb.example:b@example.net>",
        "250 2.1.5",
    );
    s.expect("RSET", "250 2.0.0");
    s.expect("NOOP", "250 2.0.0");
    s.expect("VRFY Smith", "252 2.5.2");
    s.expect("QUIT", "221 2.0.0");
    // A fresh session: the errors below would otherwise reach the limit.
    let mut s = relay.connect();
    s.expect("EXPN Example-People", "502 5.5.1");
    for obsolete in [
        "SEND FROM:<a@example.org>",
        "SOML FROM:<a@example.org>",
        "SAML FROM:<a@example.org>",
        "TURN",
    ] {
        s.expect(obsolete, "502 5.5.1");
    }
    s.expect("HELP", "214");
    s.expect("FROBNICATE", "500 5.5.2");
    s.expect("MAIL FROM:a@example.org", "501");
    let long = format!("NOOP {}", "x".repeat(600));
    s.expect(&long, "500 5.5.6");
    s.expect("NOOP", "250 2.0.0");
    s.expect("QUIT", "221 2.0.0");
}

#[test]
fn transaction_is_queued_and_logged() {
    let relay = Relay::start("");
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    let id = s.send_mail(
        "sender@example.org",
        &["rcpt@example.net"],
        "Subject: hi\r\n\r\nhello\r\n",
    );
    assert!(
        id.len() >= 12 && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
    let ev = relay.wait_events("Reception", 1);
    assert_eq!(ev[0]["id"], id.as_str());
    assert_eq!(ev[0]["sender"], "sender@example.org");
    s.expect("QUIT", "221");
}

#[test]
fn pipelined_transaction_in_one_write() {
    let relay = Relay::start("");
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    s.send(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n\
          RCPT TO:<c@example.net>\r\nDATA\r\n",
    );
    assert_eq!(s.reply().0, 250);
    assert_eq!(s.reply().0, 250);
    assert_eq!(s.reply().0, 250);
    assert_eq!(s.reply().0, 354);
    // Body, the dot, and the next commands in one write.
    s.send(b"Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@example.org>\r\nRSET\r\n");
    let (code, lines) = s.reply();
    assert_eq!(code, 250, "{lines:?}");
    assert!(lines[0].starts_with("2.0.0 Ok: queued as "), "{lines:?}");
    s.expect("NOOP", "250");
    // The two pipelined replies arrive before the NOOP's.
    assert_eq!(relay.wait_events("Reception", 1).len(), 1);
}

#[test]
fn size_limit_in_data_keeps_the_session_usable() {
    let relay = Relay::start("max_message_size = 1000");
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    s.expect("MAIL FROM:<a@example.org> SIZE=2000", "552 5.3.4");
    s.expect("MAIL FROM:<a@example.org>", "250");
    s.expect("RCPT TO:<b@example.net>", "250");
    s.expect("DATA", "354");
    let line = format!("{}\r\n", "y".repeat(98));
    for _ in 0..50 {
        s.send(line.as_bytes());
    }
    s.send(b".\r\n");
    let (code, lines) = s.reply();
    assert_eq!(code, 552, "{lines:?}");
    assert!(lines[0].starts_with("5.3.4"), "{lines:?}");
    // A second transaction on the same session succeeds.
    s.send_mail("a@example.org", &["b@example.net"], "small\r\n");
    assert_eq!(relay.wait_events("Reception", 1).len(), 1);
}

#[test]
fn smuggling_variants_never_queue_a_second_message() {
    let relay = Relay::start("");
    for (i, v) in ["\n.\r\n", "\r\n.\n", "\n.\n", "\r.\r\n", "\r\n.\r"]
        .iter()
        .enumerate()
    {
        let mut s = relay.connect();
        s.expect("EHLO client.example", "250");
        s.expect("MAIL FROM:<a@example.org>", "250");
        s.expect("RCPT TO:<b@example.net>", "250");
        s.expect("DATA", "354");
        let body = format!(
            "Subject: smuggle {i}\r\n\r\nhello{v}MAIL FROM:<evil@example.org>\r\n\
             RCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"
        );
        s.send(body.as_bytes());
        s.send(b".\r\n");
        let (code, lines) = s.reply();
        // Either refused outright (bare line ending) or queued as ONE message.
        assert!(code == 550 || code == 250, "variant {v:?}: {code} {lines:?}");
        if code == 550 {
            assert!(
                lines[0].starts_with("5.6.0") || lines[0].starts_with("5.5.2"),
                "{lines:?}"
            );
        }
        // The session is still in the command phase: nothing smuggled runs.
        s.expect("NOOP", "250");
        s.expect("QUIT", "221");
    }
    // Five sessions, at most five messages, none from evil@.
    let rec = relay.events("Reception");
    assert!(rec.len() <= 5, "{rec:?}");
    assert!(rec.iter().all(|e| e["sender"] != "evil@example.org"), "{rec:?}");
}

#[test]
fn bare_lf_in_body_is_refused_by_default() {
    let relay = Relay::start("");
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    s.expect("MAIL FROM:<a@example.org>", "250");
    s.expect("RCPT TO:<b@example.net>", "250");
    s.expect("DATA", "354");
    s.send(b"line one\nline two\r\n.\r\n");
    let (code, lines) = s.reply();
    assert_eq!(code, 550, "{lines:?}");
    s.expect("NOOP", "250");
    assert!(relay.events("Reception").is_empty());
}

#[test]
fn relay_control_and_max_recipients() {
    let relay = Relay::start(
        "mynetworks = []\nrelay_domains = [\"allowed.example\"]\nmax_recipients = 2",
    );
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    s.expect("MAIL FROM:<a@example.org>", "250");
    s.expect("RCPT TO:<x@elsewhere.example>", "554 5.7.1");
    s.expect("RCPT TO:<x@allowed.example>", "250 2.1.5");
    s.expect("RCPT TO:<y@allowed.example>", "250 2.1.5");
    s.expect("RCPT TO:<z@allowed.example>", "452 4.5.3");
}

#[test]
fn ten_errors_close_the_session() {
    let relay = Relay::start("");
    let mut s = relay.connect();
    let mut last = (0, String::new());
    for _ in 0..10 {
        last = s.cmd("BOGUS");
    }
    assert_eq!(last.0, 421, "{last:?}");
    assert!(last.1.starts_with("4.7.0"), "{last:?}");
    assert!(s.closed());
}

#[test]
fn command_timeout() {
    let relay = Relay::start("[timeouts]\ncommand = \"1s\"");
    let mut s = relay.connect();
    let (code, lines) = s.reply();
    assert_eq!(code, 421, "{lines:?}");
    assert!(lines[0].starts_with("4.4.2"), "{lines:?}");
    assert!(s.closed());
}

#[test]
fn ten_megabyte_line_is_refused_with_bounded_memory() {
    let relay = Relay::start("");
    let mut s = relay.connect();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..10 {
        s.send(&chunk);
    }
    s.send(b"\r\n");
    let (code, lines) = s.reply();
    assert_eq!(code, 500, "{lines:?}");
    assert!(lines[0].starts_with("5.5.6"), "{lines:?}");
    s.expect("NOOP", "250");
    let pid = relay.child.as_ref().unwrap().id();
    let rss = rss_kib(pid);
    assert!(rss < 64 * 1024, "RSS {rss} KiB after a 10 MB line");
}

#[test]
fn commands_before_the_greeting_are_refused() {
    let relay = Relay::start("");
    let mut s = Smtp::connect(relay.addr);
    s.send(b"EHLO early.example\r\n");
    // Either the pregreet check catches it (554) or, if the greeting was
    // already on its way, the session proceeds normally; the only thing
    // never allowed is silence or a crash.
    let (code, _) = s.reply();
    assert!(code == 554 || code == 220, "{code}");
}

#[test]
fn pipelining_after_helo_is_refused() {
    let relay = Relay::start("");
    let mut s = relay.connect();
    s.send(b"HELO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n");
    let mut codes = Vec::new();
    while !s.closed_or_reply(&mut codes) {}
    assert!(codes.contains(&554), "{codes:?}");
}

#[test]
fn two_thousand_idle_connections_then_a_transaction() {
    raise_nofile();
    let relay = Relay::start("");
    let pid = relay.child.as_ref().unwrap().id();
    let before = rss_kib(pid);
    let mut conns = Vec::new();
    for _ in 0..2000 {
        conns.push(relay.connect());
    }
    let after = rss_kib(pid);
    let per_conn = (after.saturating_sub(before)) * 1024 / 2000;
    eprintln!(
        "RSS per idle connection: {per_conn} bytes ({before} -> {after} KiB)"
    );
    assert!(per_conn < 16 * 1024, "{per_conn} bytes per idle connection");
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    s.send_mail("a@example.org", &["b@example.net"], "hi\r\n");
    drop(conns);
}

#[test]
fn sigterm_says_421_and_exits_zero() {
    let mut relay = Relay::start("");
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    let status = relay.terminate();
    assert!(status.success(), "{status}");
    let (code, lines) = s.reply();
    assert_eq!(code, 421, "{lines:?}");
    assert!(lines[0].starts_with("4.3.2"), "{lines:?}");
}

#[test]
fn check_config_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "threads = 1\n[delivery]\nmax_queue_lifetime = \"1d\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[timeouts]\ncommand = \"soon\"\n").unwrap();
    let run = |p: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
            .arg("check-config")
            .arg(p)
            .output()
            .unwrap()
    };
    assert!(run(&good).status.success());
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timeouts.command"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // serve refuses a bad config the same way, and starts nothing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Resident set size of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Raises this process's open-file soft limit to the hard limit.
fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

impl Smtp {
    /// Reads one reply into `codes`; true when the connection is closed.
    fn closed_or_reply(&mut self, codes: &mut Vec<u16>) -> bool {
        use std::io::BufRead;
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) | Err(_) => true,
            Ok(_) => {
                if let Ok(c) = line.get(..3).unwrap_or("").parse() {
                    codes.push(c);
                }
                false
            }
        }
    }
}

#[test]
fn bdat_chunks_are_stored_dot_stuffed() {
    let relay = Relay::start("");
    let mut s = relay.connect();
    s.send(b"EHLO client.example\r\n");
    let (_, caps) = s.reply();
    assert!(caps.iter().any(|c| c == "CHUNKING"), "{caps:?}");
    s.expect("MAIL FROM:<a@example.org>", "250");
    s.expect("RCPT TO:<b@example.net>", "250");
    s.send(b"BDAT 9\r\n.dot\r\nhel");
    assert_eq!(s.reply().0, 250);
    s.send(b"BDAT 4 LAST\r\nlo\r\n");
    let (code, lines) = s.reply();
    assert_eq!(code, 250, "{lines:?}");
    let id: millrace_spool::MessageId =
        crate::util::queue_id(&lines[0]).parse().unwrap();
    s.expect("QUIT", "221");
    let spool_dir = relay.spool.clone();
    let _dir = relay.into_dir();
    let spool = millrace_spool::Spool::open(
        &spool_dir,
        millrace_spool::SpoolOptions::default(),
    )
    .unwrap();
    spool.recover().unwrap();
    let m = spool.open_message(id).unwrap();
    assert_eq!(m.body(), b"..dot\r\nhello\r\n");
}

#[test]
fn over_max_connections_gets_421() {
    let relay = Relay::start("max_connections = 2");
    let _a = relay.connect();
    let _b = relay.connect();
    let mut c = Smtp::connect(relay.addr);
    let (code, lines) = c.reply();
    assert_eq!(code, 421, "{lines:?}");
    assert!(lines[0].starts_with("4.7.0"), "{lines:?}");
    assert!(c.closed());
    // A slot frees up when a client leaves.
    drop(_a);
    crate::util::wait_for("a free slot", crate::util::DEADLINE, || {
        let mut d = Smtp::connect(relay.addr);
        (d.reply().0 == 220).then_some(())
    });
}

/// What Python's smtplib, swaks and Postfix's smtp-source send, found in
/// the conformance review with those clients.
#[test]
fn real_client_habits() {
    let relay = Relay::start("max_recipients = 3");
    let mut s = relay.connect();
    // smtplib's helo() on a host whose name has no dot.
    s.expect("HELO [127.0.0.1]", "250 relay.test.example");
    // MAIL then DATA with no RCPT: wrong order.
    s.expect("MAIL FROM:<a@example.org>", "250 2.1.0");
    s.expect("DATA", "503 5.5.1");
    // A huge declared SIZE is over the limit, not a syntax error.
    s.expect("RSET", "250 2.0.0");
    s.expect(
        "MAIL FROM:<a@example.org> SIZE=99999999999999999999",
        "552 5.3.4",
    );
    // More recipients than max_recipients: 452 for each extra one, and
    // the transaction survives however many there are.
    s.expect("MAIL FROM:<a@example.org>", "250 2.1.0");
    for i in 0..15 {
        let want = if i < 3 { "250 2.1.5" } else { "452 4.5.3" };
        s.expect(&format!("RCPT TO:<r{i}@example.net>"), want);
    }
    s.expect("DATA", "354");
    s.send(b"Subject: many\r\n\r\nbody\r\n.\r\n");
    assert_eq!(s.reply().0, 250);
    let ev = relay.wait_events("Reception", 1);
    assert_eq!(ev[0]["recipients"].as_array().map(Vec::len), Some(3));
    // QUIT with more bytes after it: 221, then close.
    s.send(b"QUIT\r\nNOOP\r\n");
    let (code, lines) = s.reply();
    assert_eq!(code, 221, "{lines:?}");
    assert!(s.closed());
}
