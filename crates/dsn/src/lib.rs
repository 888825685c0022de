//! Millrace bounces: delivery status notifications (RFC 3464) that tell a
//! sender, in plain words, what happened to their message.
//!
//! [`compose`] takes what the queue knows about the recipients that failed
//! (or are delayed, or were relayed) and returns one complete message:
//! `multipart/report; report-type=delivery-status` with a human-readable
//! explanation per recipient (what the address was, what went wrong, what
//! the sender can do, and the remote server's reply verbatim), the
//! machine-readable `message/delivery-status` part, and the original
//! message or its headers (RET). Pure: no I/O, no clock, no randomness;
//! the same input gives the same bytes.
//!
//! ```
//! use millrace_dsn::*;
//! use millrace_proto::EnhancedCode;
//! let report = Report {
//!     reporting_mta: "relay.example.com",
//!     queue_id: "0123ABCD",
//!     original_sender: "alice@example.org",
//!     envid: None,
//!     arrival_unix: 1_795_887_720,
//!     now_unix: 1_795_887_780,
//!     ret_full: None,
//!     original: b"Subject: hi\r\n\r\nhello\r\n",
//!     max_queue_lifetime_secs: 5 * 86_400,
//!     recipients: vec![RecipientReport {
//!         final_recipient: "bob@example.net",
//!         original_recipient: None,
//!         action: Action::Failed,
//!         status: EnhancedCode::new(5, 1, 1),
//!         remote_mta: Some("mx.example.net"),
//!         diagnostic: Some("550 5.1.1 <bob@example.net>: no such user"),
//!         last_attempt_unix: Some(1_795_887_780),
//!         will_retry_until_unix: None,
//!     }],
//! };
//! let dsn = String::from_utf8(compose(&report)).unwrap();
//! assert!(dsn.contains("Final-Recipient: rfc822; bob@example.net\r\n"));
//! ```
//!
//! # Non goals
//! - Deciding who gets a DSN (NOTIFY, `<>` senders): the caller does.
//! - Dot-stuffing and storage: the caller stuffs the result when spooling.
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use millrace_proto::EnhancedCode;
use millrace_proto::date::write_rfc5322;

/// Originals above this size are returned as headers only unless the
/// sender asked for RET=FULL.
pub const FULL_RETURN_LIMIT: usize = 100 * 1024;

/// The `Action` field of RFC 3464 section 2.3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Delivery failed for good.
    Failed,
    /// Still being retried.
    Delayed,
    /// Delivered (to a final destination).
    Delivered,
    /// Relayed to a next hop that does not itself send DSNs.
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Delayed => "delayed",
            Self::Delivered => "delivered",
            Self::Relayed => "relayed",
        }
    }
}

/// What happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport<'a> {
    /// The address we tried.
    pub final_recipient: &'a str,
    /// ORCPT as `type;address`, if the client gave one.
    pub original_recipient: Option<&'a str>,
    /// Failed, delayed, delivered or relayed.
    pub action: Action,
    /// The status code (e.g. 5.1.1, 4.4.7).
    pub status: EnhancedCode,
    /// The host that gave the reply, if one was reached.
    pub remote_mta: Option<&'a str>,
    /// The reply verbatim, e.g. `550 5.1.1 <bob@x>: no such user`.
    pub diagnostic: Option<&'a str>,
    /// When we last tried.
    pub last_attempt_unix: Option<i64>,
    /// For delayed recipients: when we will give up.
    pub will_retry_until_unix: Option<i64>,
}

/// Everything a DSN says about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report<'a> {
    /// Our host name (Reporting-MTA, MAILER-DAEMON@).
    pub reporting_mta: &'a str,
    /// The original message's queue id.
    pub queue_id: &'a str,
    /// The original envelope sender (the DSN's recipient).
    pub original_sender: &'a str,
    /// ENVID of the original transaction.
    pub envid: Option<&'a str>,
    /// When the original arrived.
    pub arrival_unix: i64,
    /// Now (the DSN's Date).
    pub now_unix: i64,
    /// RET: Some(true) = FULL, Some(false) = HDRS, None = default.
    pub ret_full: Option<bool>,
    /// The original as stored: Received header plus the dot-stuffed body.
    pub original: &'a [u8],
    /// How long we keep trying (for the expiry explanation).
    pub max_queue_lifetime_secs: u64,
    /// The recipients this DSN reports on.
    pub recipients: Vec<RecipientReport<'a>>,
}

/// Whether the whole original is returned (else only its headers): RET
/// decides; by default, originals up to [`FULL_RETURN_LIMIT`] in full.
pub fn returns_full(r: &Report<'_>) -> bool {
    r.ret_full.unwrap_or(r.original.len() <= FULL_RETURN_LIMIT)
}

/// Replaces CR, LF and other control characters (a reply or address must
/// never break the message's structure) and non-ASCII (fields are 7-bit).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' })
        .collect()
}

/// Appends `name: value` folded at spaces so no line exceeds 78 octets
/// where possible (and 998 always).
fn field(out: &mut String, name: &str, value: &str) {
    let mut line_len = name.len() + 2;
    out.push_str(name);
    out.push_str(": ");
    let mut first = true;
    for word in value.split(' ') {
        let word = if word.len() > 900 { &word[..900] } else { word };
        if !first {
            if line_len + 1 + word.len() > 78 {
                out.push_str("\r\n ");
                line_len = 1;
            } else {
                out.push(' ');
                line_len += 1;
            }
        }
        out.push_str(word);
        line_len += word.len();
        first = false;
    }
    out.push_str("\r\n");
}

fn date(t: i64) -> String {
    let mut s = String::new();
    write_rfc5322(t, &mut s);
    s
}

/// A plain duration: "5 days", "4 hours", "30 minutes".
fn humanize(secs: u64) -> String {
    let (n, unit) = if secs >= 86_400 && secs.is_multiple_of(86_400) {
        (secs / 86_400, "day")
    } else if secs >= 3600 && secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else if secs >= 60 && secs.is_multiple_of(60) {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The explanation for one recipient, in plain words.
fn explain(r: &Report<'_>, x: &RecipientReport<'_>) -> String {
    let addr = clean(x.final_recipient);
    let code = x.status;
    let mut s = format!("<{addr}>\r\n");
    let (what, advice) = match (
        x.action,
        code.class,
        code.subject,
        code.detail,
    ) {
        (Action::Delayed, ..) => (
            "has not been delivered yet: the receiving side is not \
             accepting it at the moment."
                .to_owned(),
            format!(
                "Nothing needs to be done yet. We keep trying until {}; you \
                 will hear from us again only if it cannot be delivered.",
                date(x.will_retry_until_unix.unwrap_or(r.now_unix))
            ),
        ),
        (Action::Delivered | Action::Relayed, ..) => (
            "was delivered (or handed to a server that does not report \
             further)."
                .to_owned(),
            "Nothing needs to be done.".to_owned(),
        ),
        (_, 4, ..) => (
            format!(
                "could not be delivered: the receiving side kept refusing it \
                 or could not be reached, and we tried for {}.",
                humanize(r.max_queue_lifetime_secs)
            ),
            "The problem is probably temporary but lasted too long. Check \
             the address, then send the message again later; if it keeps \
             failing, the recipient's mail administrator should look into \
             it."
            .to_owned(),
        ),
        (_, 5, 1, 1) => (
            "does not exist: the recipient's mail server does not know this \
             mailbox."
                .to_owned(),
            "Check the spelling of the address (the part before the @), \
             correct it and send the message again."
                .to_owned(),
        ),
        (_, 5, 1, 10) => (
            "belongs to a domain that does not accept mail at all (it \
             publishes a \"null MX\" record)."
                .to_owned(),
            "Check the part after the @; if it is right, contact the \
             recipient another way."
                .to_owned(),
        ),
        (_, 5, 1, 2) | (_, 5, 4, 4) => (
            "belongs to a domain that does not exist or has no mail server."
                .to_owned(),
            "Check the spelling of the domain (the part after the @) and \
             send the message again."
                .to_owned(),
        ),
        (_, 5, 3, 4) | (_, 5, 2, 3) => (
            "was not accepted because the message is too large for the \
             receiving mail server."
                .to_owned(),
            "Send it again in smaller parts: keep attachments small, or \
             share large files by a link instead of attaching them."
                .to_owned(),
        ),
        (_, 5, 7, _) => (
            "was refused by the receiving mail server for policy reasons, \
             for example because our server's address is on a block list."
                .to_owned(),
            "Sending it again will not help. The operator of this mail \
             relay has to resolve it (for example by contacting the \
             block-list provider or the recipient's mail administrator); \
             please forward this report to them."
                .to_owned(),
        ),
        _ => (
            "could not be delivered: the receiving mail server refused it."
                .to_owned(),
            "Check the address and the server's reply below; if in doubt, \
             contact the recipient another way."
                .to_owned(),
        ),
    };
    let _ = write!(s, "    This address {what}\r\n    {advice}\r\n");
    match (x.remote_mta, x.diagnostic) {
        (Some(host), Some(d)) => {
            let _ = write!(
                s,
                "    The mail server {} said:\r\n        {}\r\n",
                clean(host),
                clean(d)
            );
        }
        (None, Some(d)) => {
            let _ = write!(
                s,
                "    No mail server accepted the message; the last error \
                 was:\r\n        {}\r\n",
                clean(d)
            );
        }
        _ => {}
    }
    s
}

/// The header block of the original (up to the first empty line).
fn header_block(msg: &[u8]) -> &[u8] {
    if let Some(p) = memchr::memmem::find(msg, b"\r\n\r\n") {
        &msg[..p + 2]
    } else {
        msg
    }
}

/// Composes the DSN: a complete RFC 5322 message with CRLF line endings,
/// not dot-stuffed.
pub fn compose(r: &Report<'_>) -> Vec<u8> {
    let failed = r.recipients.iter().any(|x| x.action == Action::Failed);
    let delayed = r.recipients.iter().all(|x| x.action == Action::Delayed);
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else if delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };
    let host = clean(r.reporting_mta);
    let qid = clean(r.queue_id);
    let full = returns_full(r);
    let mut original = Vec::with_capacity(r.original.len());
    millrace_proto::unstuff(r.original, &mut original);
    let returned: &[u8] =
        if full { &original } else { header_block(&original) };
    // A boundary that does not occur in what we quote.
    let mut boundary = format!("{qid}.{}/{host}", r.now_unix);
    let mut n = 0;
    while memchr::memmem::find(returned, boundary.as_bytes()).is_some() {
        n += 1;
        boundary = format!("{qid}.{}.{n}/{host}", r.now_unix);
    }

    let mut s = String::with_capacity(4096);
    field(
        &mut s,
        "From",
        &format!("MAILER-DAEMON@{host} (Mail Delivery System)"),
    );
    field(&mut s, "To", &format!("<{}>", clean(r.original_sender)));
    field(&mut s, "Subject", subject);
    field(&mut s, "Date", &date(r.now_unix));
    field(&mut s, "Message-ID", &format!("<{qid}.{}.dsn@{host}>", r.now_unix));
    field(&mut s, "Auto-Submitted", "auto-replied");
    field(&mut s, "MIME-Version", "1.0");
    field(
        &mut s,
        "Content-Type",
        &format!(
            "multipart/report; report-type=delivery-status; \
             boundary=\"{boundary}\""
        ),
    );
    s.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    // Part 1: plain words.
    let _ = write!(s, "--{boundary}\r\n");
    s.push_str("Content-Description: Notification\r\n");
    s.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\n");
    let _ = write!(s, "This is the mail system at host {host}.\r\n\r\n");
    if failed {
        s.push_str(
            "I'm sorry to have to tell you that your message could not be \
             delivered to one or more\r\nrecipients. The details for each \
             address follow.\r\n\r\n",
        );
    } else if delayed {
        s.push_str(
            "Your message has not been delivered yet to the recipients \
             below. This is only a\r\nwarning; we are still trying.\r\n\r\n",
        );
    } else {
        s.push_str(
            "Your message was delivered to the recipients below, as you \
             asked.\r\n\r\n",
        );
    }
    let _ = write!(
        s,
        "Your message (queue id {qid}) arrived here on {}.\r\n\r\n",
        date(r.arrival_unix)
    );
    for x in &r.recipients {
        s.push_str(&explain(r, x));
        s.push_str("\r\n");
    }
    if !full {
        s.push_str("Only the headers of your message are attached below.\r\n");
    }

    // Part 2: message/delivery-status.
    let _ = write!(s, "\r\n--{boundary}\r\n");
    s.push_str("Content-Description: Delivery report\r\n");
    s.push_str("Content-Type: message/delivery-status\r\n\r\n");
    field(&mut s, "Reporting-MTA", &format!("dns; {host}"));
    field(&mut s, "X-Millrace-Queue-ID", &qid);
    if let Some(e) = r.envid {
        field(&mut s, "Original-Envelope-Id", &clean(e));
    }
    field(&mut s, "Arrival-Date", &date(r.arrival_unix));
    for x in &r.recipients {
        s.push_str("\r\n");
        if let Some(o) = x.original_recipient {
            field(&mut s, "Original-Recipient", &clean(o));
        }
        let fr = x.final_recipient;
        let kind = if fr.is_ascii() { "rfc822" } else { "utf-8" };
        field(&mut s, "Final-Recipient", &format!("{kind}; {}", clean(fr)));
        field(&mut s, "Action", x.action.as_str());
        field(&mut s, "Status", &x.status.to_string());
        if let Some(m) = x.remote_mta {
            field(&mut s, "Remote-MTA", &format!("dns; {}", clean(m)));
        }
        if let Some(d) = x.diagnostic {
            field(&mut s, "Diagnostic-Code", &format!("smtp; {}", clean(d)));
        }
        if let Some(t) = x.last_attempt_unix {
            field(&mut s, "Last-Attempt-Date", &date(t));
        }
        if let Some(t) = x.will_retry_until_unix {
            field(&mut s, "Will-Retry-Until", &date(t));
        }
    }

    // Part 3: the original, or its headers.
    let _ = write!(s, "\r\n--{boundary}\r\n");
    if full {
        s.push_str("Content-Description: Undelivered Message\r\n");
        s.push_str("Content-Type: message/rfc822\r\n\r\n");
    } else {
        s.push_str("Content-Description: Undelivered Message Headers\r\n");
        s.push_str("Content-Type: text/rfc822-headers\r\n\r\n");
    }
    let mut out = s.into_bytes();
    out.extend_from_slice(returned);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}
