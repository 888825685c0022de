//! Test message generation: address patterns, headers and body text.
//!
//! A generated message is realistic text: headers `From`, `To`, `Subject`,
//! `Date`, a unique `Message-ID`, then lines of about 70 characters, some
//! of them starting with `.` so that dot-stuffing is exercised. The body is
//! built and dot-stuffed once; only the headers differ per message.

use std::fmt::Write as _;
use std::sync::Arc;

use millrace_proto::{DotStuffer, Mailbox};

use crate::LoadError;

/// An address pattern such as `user{n}@example.net`: `{n}` is replaced by a
/// counter and `{d}` by a domain index (counter modulo the number of
/// domains). With more than one domain and no `{d}`, the domain gets a
/// `d<index>.` label in front (`user7@d3.example.net`).
#[derive(Debug, Clone)]
pub struct AddressPattern {
    pattern: String,
    domains: u64,
    prefix_domain: bool,
}

impl AddressPattern {
    /// Checks the pattern: expanded, it must be a valid mailbox.
    pub fn new(
        option: &'static str,
        pattern: &str,
        domains: u32,
    ) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::InvalidOption { option, reason };
        if domains == 0 {
            return Err(LoadError::InvalidOption {
                option: "domains",
                reason: "must be at least 1".into(),
            });
        }
        if !pattern.contains('@') {
            return Err(bad(format!("{pattern:?} has no @domain")));
        }
        let me = Self {
            pattern: pattern.to_owned(),
            domains: u64::from(domains),
            prefix_domain: domains > 1 && !pattern.contains("{d}"),
        };
        for n in [0, u64::from(u32::MAX), u64::MAX] {
            let mut s = String::new();
            me.expand(n, &mut s);
            Mailbox::parse(s.as_bytes(), false).map_err(|e| {
                bad(format!("{pattern:?} expands to {s:?}: {e}"))
            })?;
        }
        Ok(me)
    }

    /// Appends the address for counter `n` to `out`.
    pub fn expand(&self, n: u64, out: &mut String) {
        let d = n % self.domains;
        let mut rest = self.pattern.as_str();
        while let Some(open) = rest.find('{') {
            let (head, tail) = rest.split_at(open);
            self.push_literal(head, d, out);
            if let Some(t) = tail.strip_prefix("{n}") {
                let _ = write!(out, "{n}");
                rest = t;
            } else if let Some(t) = tail.strip_prefix("{d}") {
                let _ = write!(out, "{d}");
                rest = t;
            } else {
                out.push('{');
                rest = &tail[1..];
            }
        }
        self.push_literal(rest, d, out);
    }

    fn push_literal(&self, s: &str, d: u64, out: &mut String) {
        match s.find('@').filter(|_| self.prefix_domain) {
            Some(at) => {
                out.push_str(&s[..=at]);
                let _ = write!(out, "d{d}.");
                out.push_str(&s[at + 1..]);
            }
            None => out.push_str(s),
        }
    }
}

const WORDS: &[&str] = &[
    "the",
    "relay",
    "queue",
    "message",
    "delivery",
    "spool",
    "mill",
    "water",
    "wheel",
    "turns",
    "and",
    "every",
    "recipient",
    "gets",
    "a",
    "copy",
    "of",
    "this",
    "text",
    "which",
    "is",
    "only",
    "load",
    "test",
    "data",
    "sent",
    "over",
    "loopback",
    "to",
    "measure",
    "throughput",
];

/// Builds `size` bytes of text (unstuffed): CRLF lines of 50 to 70
/// characters, every ninth starting with `.` (sometimes `..`). A `size` of
/// 1 is rounded up to 2 so the text ends with CRLF.
pub fn body_text(size: usize) -> Vec<u8> {
    let size = if size == 1 { 2 } else { size };
    let mut out = Vec::with_capacity(size);
    let mut line_no = 0usize;
    let mut word = 0usize;
    while out.len() < size {
        let remaining = size - out.len();
        let mut len = 50 + (line_no * 7) % 21;
        if remaining < len + 2 + 3 {
            // Too little left for another line after this one.
            len = remaining - 2;
        }
        let start = out.len();
        if line_no % 9 == 4 {
            out.push(b'.');
            if line_no % 18 == 4 {
                out.push(b'.');
            }
        }
        while out.len() - start < len {
            let w = WORDS[word % WORDS.len()].as_bytes();
            word = word.wrapping_mul(31).wrapping_add(7) % 1009;
            out.extend_from_slice(w);
            out.push(b' ');
        }
        out.truncate(start + len);
        out.extend_from_slice(b"\r\n");
        line_no += 1;
    }
    out
}

/// The shared parts of every message of one run.
#[derive(Debug, Clone)]
pub struct MessageFactory {
    from: AddressPattern,
    to: AddressPattern,
    recipients: u32,
    /// The dot-stuffed body, without the terminating `.CRLF`.
    body: Arc<[u8]>,
    /// False for `--body-file`: the file is the whole message.
    headers: bool,
    run_id: String,
}

/// The envelope of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// MAIL FROM address.
    pub from: String,
    /// RCPT TO addresses.
    pub to: Vec<String>,
}

impl MessageFactory {
    /// A factory for generated messages with a body of `size` bytes.
    pub fn generated(
        from: AddressPattern,
        to: AddressPattern,
        recipients: u32,
        size: usize,
        run_id: String,
    ) -> Self {
        let mut body = Vec::with_capacity(size + size / 32);
        DotStuffer::new().write(&body_text(size), &mut body);
        Self { from, to, recipients, body: body.into(), headers: true, run_id }
    }

    /// A factory that sends `message` (a whole message as found in a
    /// file) verbatim but dot-stuffed, with bare line endings made CRLF.
    pub fn from_message(
        from: AddressPattern,
        to: AddressPattern,
        recipients: u32,
        message: &[u8],
    ) -> Self {
        let mut body = Vec::with_capacity(message.len() + 64);
        stuff_whole(message, &mut body);
        Self {
            from,
            to,
            recipients,
            body: body.into(),
            headers: false,
            run_id: String::new(),
        }
    }

    /// Recipients per message.
    pub fn recipients(&self) -> u32 {
        self.recipients
    }

    /// The envelope of message `index`; recipient `j` uses counter
    /// `index * recipients + j`.
    pub fn envelope(&self, index: u64) -> Envelope {
        let mut from = String::new();
        self.from.expand(index, &mut from);
        let k = u64::from(self.recipients);
        let to = (0..k)
            .map(|j| {
                let mut s = String::new();
                self.to.expand(index.wrapping_mul(k).wrapping_add(j), &mut s);
                s
            })
            .collect();
        Envelope { from, to }
    }

    /// Appends the headers of message `index` (empty for a body file);
    /// they never start a line with `.`, so they need no stuffing.
    pub fn write_headers(
        &self,
        index: u64,
        env: &Envelope,
        date: &str,
        out: &mut Vec<u8>,
    ) {
        if !self.headers {
            return;
        }
        let mut h = String::with_capacity(256);
        let _ = write!(h, "From: <{}>\r\n", env.from);
        match env.to.first() {
            Some(first) if env.to.len() > 1 => {
                let n = env.to.len() - 1;
                let _ = write!(h, "To: <{first}> (and {n} more)\r\n");
            }
            Some(first) => {
                let _ = write!(h, "To: <{first}>\r\n");
            }
            None => {}
        }
        let _ = write!(
            h,
            "Subject: Millrace load test message {index}\r\n\
             Date: {date}\r\n\
             Message-ID: <{index}.{}@millrace-load.invalid>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\r\n",
            self.run_id
        );
        out.extend_from_slice(h.as_bytes());
    }

    /// The dot-stuffed body shared by all messages, without `.CRLF`.
    pub fn body(&self) -> &Arc<[u8]> {
        &self.body
    }
}

/// Stuffs a whole message, ends it with CRLF, and leaves out the `.CRLF`
/// terminator (the sender appends its own).
fn stuff_whole(message: &[u8], out: &mut Vec<u8>) {
    let mut stuffer = DotStuffer::new();
    stuffer.write(message, out);
    stuffer.finish(out);
    debug_assert!(out.ends_with(b".\r\n"));
    out.truncate(out.len().saturating_sub(3));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(p: &str, d: u32) -> AddressPattern {
        AddressPattern::new("to", p, d).unwrap()
    }

    #[test]
    fn patterns_expand_counters_and_domains() {
        let mut s = String::new();
        pat("user{n}@example.net", 1).expand(42, &mut s);
        assert_eq!(s, "user42@example.net");
        s.clear();
        pat("user{n}@example.net", 4).expand(7, &mut s);
        assert_eq!(s, "user7@d3.example.net");
        s.clear();
        pat("u{n}@ex{d}.net", 5).expand(12, &mut s);
        assert_eq!(s, "u12@ex2.net");
        s.clear();
        pat("fixed@example.net", 1).expand(3, &mut s);
        assert_eq!(s, "fixed@example.net");
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(AddressPattern::new("to", "nodomain", 1).is_err());
        assert!(AddressPattern::new("to", "a b@c.d", 1).is_err());
        assert!(AddressPattern::new("to", "a@b", 0).is_err());
    }

    #[test]
    fn body_has_exact_size_crlf_lines_and_dots() {
        for size in [0usize, 2, 3, 10, 71, 72, 73, 1024, 10_000] {
            let b = body_text(size);
            assert_eq!(b.len(), size, "size {size}");
            if size > 0 {
                assert!(b.ends_with(b"\r\n"), "size {size}");
            }
            for line in b.split(|&c| c == b'\n') {
                assert!(line.len() <= 73);
            }
            assert!(!b.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        }
        assert_eq!(body_text(1), b"\r\n");
        let big = body_text(4096);
        assert!(big.windows(3).any(|w| w == b"\n.."));
        assert!(
            big.windows(3)
                .any(|w| w[0] == b'\n' && w[1] == b'.' && w[2] != b'.')
        );
    }

    #[test]
    fn envelope_counters_are_per_recipient() {
        let f = MessageFactory::generated(
            pat("s{n}@example.com", 1),
            pat("r{n}@example.net", 1),
            3,
            100,
            "run".into(),
        );
        let env = f.envelope(2);
        assert_eq!(env.from, "s2@example.com");
        assert_eq!(
            env.to,
            ["r6@example.net", "r7@example.net", "r8@example.net"]
        );
        let mut h = Vec::new();
        f.write_headers(2, &env, "Thu, 1 Jan 1970 00:00:00 +0000", &mut h);
        let h = String::from_utf8(h).unwrap();
        assert!(h.contains("Message-ID: <2.run@millrace-load.invalid>"));
        assert!(h.ends_with("\r\n\r\n"));
    }
}
