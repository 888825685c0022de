//! The composed DSNs parsed with a real MIME parser (mail-parser), field by
//! field, for each failure case; plus golden files so the wording is
//! reviewed (`UPDATE_GOLDEN=1 cargo test -p millrace-dsn` rewrites them).

use mail_parser::{MessageParser, MimeHeaders};
use millrace_dsn::{Action, RecipientReport, Report, compose};
use millrace_proto::EnhancedCode;

const ARRIVAL: i64 = 1_795_887_720; // Sat, 28 Nov 2026 17:42:00
const NOW: i64 = ARRIVAL + 5 * 86_400;
const ORIGINAL: &[u8] = b"Received: from client.example ([127.0.0.1])\r\n\tby relay.example.com (Millrace) with ESMTP id 0123ABCD; Sat, 28 Nov 2026 17:42:00 +0000\r\nFrom: Alice <alice@example.org>\r\nSubject: Quarterly numbers\r\n\r\nHello Bob,\r\n..this line started with a dot\r\nBye\r\n";

fn rcpt<'a>(
    addr: &'a str,
    action: Action,
    status: (u8, u16, u16),
    remote: Option<&'a str>,
    diag: Option<&'a str>,
) -> RecipientReport<'a> {
    RecipientReport {
        final_recipient: addr,
        original_recipient: None,
        action,
        status: EnhancedCode::new(status.0, status.1, status.2),
        remote_mta: remote,
        diagnostic: diag,
        last_attempt_unix: Some(NOW),
        will_retry_until_unix: (action == Action::Delayed)
            .then_some(ARRIVAL + 5 * 86_400),
    }
}

fn report<'a>(
    recipients: Vec<RecipientReport<'a>>,
    ret: Option<bool>,
    original: &'a [u8],
) -> Report<'a> {
    Report {
        reporting_mta: "relay.example.com",
        queue_id: "0123ABCD",
        original_sender: "alice@example.org",
        envid: Some("QQ314159"),
        arrival_unix: ARRIVAL,
        now_unix: NOW,
        ret_full: ret,
        original,
        max_queue_lifetime_secs: 5 * 86_400,
        recipients,
    }
}

/// Checks the structure every DSN must have; returns (notification text,
/// delivery-status text, third part's content type, third part body).
fn check(dsn: &[u8]) -> (String, String, String, Vec<u8>) {
    for line in dsn.split(|&b| b == b'\n') {
        assert!(line.len() <= 998, "line over 998 octets");
    }
    for (i, &b) in dsn.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && dsn[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(dsn.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    let msg = MessageParser::default().parse(dsn).expect("parses");
    let ct = msg.root_part().content_type().expect("content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let from = String::from_utf8_lossy(dsn);
    assert!(from.contains("From: MAILER-DAEMON@relay.example.com"));
    assert!(from.contains("To: <alice@example.org>"));
    assert!(from.contains("Auto-Submitted: auto-replied"));
    let leaf = |t: &str, s: &str| {
        msg.parts.iter().find_map(|p| {
            let c = p.content_type()?;
            (c.ctype() == t && c.subtype() == Some(s)).then(|| {
                let (a, b) = (
                    p.raw_body_offset() as usize,
                    p.raw_end_offset() as usize,
                );
                msg.raw_message[a..b].to_vec()
            })
        })
    };
    let text = leaf("text", "plain").expect("notification part");
    let status = leaf("message", "delivery-status").expect("status part");
    let (third_type, third) = if let Some(b) = leaf("message", "rfc822") {
        ("message/rfc822".to_owned(), b)
    } else {
        (
            "text/rfc822-headers".to_owned(),
            leaf("text", "rfc822-headers").expect("headers part"),
        )
    };
    (
        String::from_utf8(text).unwrap(),
        String::from_utf8(status).unwrap(),
        third_type,
        third,
    )
}

fn golden(name: &str, dsn: &[u8]) {
    let path =
        format!("{}/tests/golden/{name}.eml", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, dsn).unwrap();
    }
    let want = std::fs::read(&path).unwrap_or_else(|_| {
        panic!("missing {path}: run with UPDATE_GOLDEN=1 and review it")
    });
    assert!(
        want == dsn,
        "{name}: differs from {path} (UPDATE_GOLDEN=1 to accept)"
    );
}

#[test]
fn no_such_user() {
    let d = compose(&report(
        vec![rcpt(
            "bob@example.net",
            Action::Failed,
            (5, 1, 1),
            Some("mx.example.net"),
            Some(
                "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown",
            ),
        )],
        None,
        ORIGINAL,
    ));
    let (text, status, third_type, third) = check(&d);
    let subject = String::from_utf8_lossy(&d);
    assert!(subject.contains("Subject: Undelivered Mail Returned to Sender"));
    assert!(text.contains("<bob@example.net>"));
    assert!(text.contains("does not exist"));
    assert!(text.contains("Check the spelling"));
    assert!(text.contains("The mail server mx.example.net said:"));
    assert!(
        text.contains(
            "550 5.1.1 <bob@example.net>: Recipient address rejected"
        )
    );
    for f in [
        "Reporting-MTA: dns; relay.example.com",
        "Original-Envelope-Id: QQ314159",
        "Arrival-Date: Sat, 28 Nov 2026 17:42:00 +0000",
        "Final-Recipient: rfc822; bob@example.net",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.example.net",
        "Diagnostic-Code: smtp; 550 5.1.1",
        "Last-Attempt-Date: Thu, 3 Dec 2026 17:42:00 +0000",
    ] {
        assert!(status.contains(f), "{f} missing in\n{status}");
    }
    // Small original, default RET: returned in full, un-stuffed.
    assert_eq!(third_type, "message/rfc822");
    let third = String::from_utf8(third).unwrap();
    assert!(
        third.contains("\r\n.this line started with a dot\r\n"),
        "{third}"
    );
    assert!(!third.contains(".."));
    golden("no_such_user", &d);
}

#[test]
fn too_large() {
    let d = compose(&report(
        vec![rcpt(
            "bob@example.net",
            Action::Failed,
            (5, 3, 4),
            Some("mx.example.net"),
            Some(
                "552 5.3.4 Message size exceeds fixed limit of 10485760 bytes",
            ),
        )],
        None,
        ORIGINAL,
    ));
    let (text, status, ..) = check(&d);
    assert!(text.contains("too large"));
    assert!(text.contains("smaller parts"));
    assert!(text.contains("10485760 bytes"), "the limit, quoted");
    assert!(status.contains("Status: 5.3.4"));
    golden("too_large", &d);
}

#[test]
fn block_list() {
    let d = compose(&report(
        vec![rcpt(
            "bob@example.net",
            Action::Failed,
            (5, 7, 1),
            Some("mx.example.net"),
            Some(
                "554 5.7.1 Please contact your Internet service provider since part of their network is on our block list",
            ),
        )],
        None,
        ORIGINAL,
    ));
    let (text, status, ..) = check(&d);
    assert!(text.contains("block list"));
    assert!(text.contains("operator of this mail relay"));
    assert!(text.contains("part of their network is on our block list"));
    assert!(status.contains("Status: 5.7.1"));
    golden("block_list", &d);
}

#[test]
fn expired_after_five_days() {
    let d = compose(&report(
        vec![rcpt(
            "bob@example.net",
            Action::Failed,
            (4, 4, 1),
            None,
            Some("451 4.4.1 connection refused"),
        )],
        None,
        ORIGINAL,
    ));
    let (text, status, ..) = check(&d);
    assert!(text.contains("we tried for 5 days"), "{text}");
    assert!(text.contains("the last error"), "{text}");
    assert!(status.contains("Status: 4.4.1"));
    assert!(status.contains("Action: failed"));
    assert!(!status.contains("Remote-MTA"));
    golden("expired", &d);
}

#[test]
fn null_mx_and_no_such_domain_in_one_dsn() {
    let d = compose(&report(
        vec![
            rcpt(
                "x@nomail.example",
                Action::Failed,
                (5, 1, 10),
                None,
                Some(
                    "556 5.1.10 recipient domain does not accept mail (null MX)",
                ),
            ),
            rcpt(
                "y@nowhere.example",
                Action::Failed,
                (5, 1, 2),
                None,
                Some("550 5.1.2 recipient domain does not exist"),
            ),
        ],
        None,
        ORIGINAL,
    ));
    let (text, status, ..) = check(&d);
    assert!(text.contains("does not accept mail at all"));
    assert!(text.contains("domain that does not exist"));
    assert_eq!(status.matches("Final-Recipient:").count(), 2);
    assert!(status.contains("Status: 5.1.10"));
    assert!(status.contains("Status: 5.1.2"));
    golden("null_mx_nxdomain", &d);
}

#[test]
fn delayed_warning() {
    let d = compose(&report(
        vec![rcpt(
            "bob@example.net",
            Action::Delayed,
            (4, 3, 0),
            None,
            Some("451 4.3.0 mailbox busy"),
        )],
        None,
        ORIGINAL,
    ));
    let (text, status, ..) = check(&d);
    assert!(
        String::from_utf8_lossy(&d)
            .contains("Subject: Delayed Mail (still being retried)")
    );
    assert!(text.contains("Nothing needs to be done yet"));
    assert!(status.contains("Action: delayed"));
    assert!(
        status.contains("Will-Retry-Until: Thu, 3 Dec 2026 17:42:00 +0000")
    );
    golden("delayed", &d);
}

#[test]
fn relayed_success() {
    let mut r = rcpt(
        "bob@example.net",
        Action::Relayed,
        (2, 0, 0),
        Some("mx.example.net"),
        Some("250 2.0.0 Ok"),
    );
    r.original_recipient = Some("rfc822;Bob@Example.NET");
    let d = compose(&report(vec![r], Some(false), ORIGINAL));
    let (_, status, third_type, third) = check(&d);
    assert!(
        String::from_utf8_lossy(&d)
            .contains("Subject: Successful Mail Delivery Report")
    );
    assert!(status.contains("Action: relayed"));
    assert!(status.contains("Original-Recipient: rfc822;Bob@Example.NET"));
    assert_eq!(third_type, "text/rfc822-headers", "RET=HDRS");
    assert!(!String::from_utf8_lossy(&third).contains("Hello Bob"));
}

#[test]
fn return_rules_and_boundary() {
    let mut big = ORIGINAL.to_vec();
    while big.len() <= 100 * 1024 {
        big.extend_from_slice(
            b"filler filler filler filler filler filler\r\n",
        );
    }
    let one = || {
        vec![rcpt("bob@example.net", Action::Failed, (5, 1, 1), None, None)]
    };
    let (_, _, t, _) = check(&compose(&report(one(), None, &big)));
    assert_eq!(t, "text/rfc822-headers", "over 100 KiB: headers only");
    let (_, _, t, body) = check(&compose(&report(one(), Some(true), &big)));
    assert_eq!(t, "message/rfc822", "RET=FULL wins");
    assert!(body.len() > 100 * 1024);
    // An original that contains our first-choice boundary.
    let first = compose(&report(one(), None, ORIGINAL));
    let s = String::from_utf8_lossy(&first);
    let b = s
        .split("boundary=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let mut tricky = ORIGINAL.to_vec();
    tricky.extend_from_slice(format!("--{b}\r\n").as_bytes());
    let d = compose(&report(one(), None, &tricky));
    let s2 = String::from_utf8_lossy(&d);
    let b2 =
        s2.split("boundary=\"").nth(1).unwrap().split('"').next().unwrap();
    assert_ne!(b, b2);
    check(&d);
}

#[test]
fn deterministic_and_injection_safe() {
    let evil = "550 5.1.1 no\r\nBcc: victim@example.com";
    let r = || {
        report(
            vec![rcpt(
                "bob@example.net",
                Action::Failed,
                (5, 1, 1),
                Some("mx"),
                Some(evil),
            )],
            None,
            ORIGINAL,
        )
    };
    assert_eq!(compose(&r()), compose(&r()));
    let d = compose(&r());
    assert!(!String::from_utf8_lossy(&d).contains("\r\nBcc:"));
    check(&d);
}
