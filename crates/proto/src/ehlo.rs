//! The EHLO capability set: building the server's 250 reply and reading a
//! remote server's.

use crate::params::{parse_u64, push_u64};
use crate::reply::Reply;

/// Case-insensitive `starts_with`.
fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len()).is_some_and(|h| h.eq_ignore_ascii_case(prefix))
}

/// Appends `s` with CR and LF replaced by spaces.
fn push_clean(out: &mut Vec<u8>, s: &[u8]) {
    out.extend(
        s.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
}

/// Capabilities a server offers in its EHLO reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870); `Some(0)` means SIZE without a limit.
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
    /// CHUNKING (RFC 3030).
    pub chunking: bool,
    /// BINARYMIME (RFC 3030).
    pub binarymime: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// AUTH mechanisms (RFC 4954); empty = not offered.
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Writes the multi-line EHLO reply: `250-<hostname> <greeting>` then
    /// one line per capability.
    ///
    /// `SIZE` is written with its number (`Some(0)` as a bare `SIZE`: no
    /// fixed limit); AUTH only when mechanisms are given.
    pub fn encode_ehlo_reply(
        &self,
        hostname: &str,
        greeting: &str,
        out: &mut Vec<u8>,
    ) {
        // Every line is written as a continuation; the last one's `-` is
        // turned into a space at the end.
        let mut last = out.len();
        let mut line = |out: &mut Vec<u8>, parts: &[&[u8]]| {
            last = out.len();
            out.extend_from_slice(b"250-");
            for part in parts {
                push_clean(out, part);
            }
            out.extend_from_slice(b"\r\n");
        };
        if greeting.is_empty() {
            line(out, &[hostname.as_bytes()]);
        } else {
            line(out, &[hostname.as_bytes(), b" ", greeting.as_bytes()]);
        }
        if self.pipelining {
            line(out, &[b"PIPELINING"]);
        }
        match self.size {
            None => {}
            Some(0) => line(out, &[b"SIZE"]),
            Some(n) => {
                let mut num = Vec::with_capacity(20);
                push_u64(&mut num, n);
                line(out, &[b"SIZE ", &num]);
            }
        }
        for (on, word) in [
            (self.eightbitmime, &b"8BITMIME"[..]),
            (self.enhanced_status_codes, b"ENHANCEDSTATUSCODES"),
            (self.smtputf8, b"SMTPUTF8"),
            (self.dsn, b"DSN"),
            (self.chunking, b"CHUNKING"),
            (self.binarymime, b"BINARYMIME"),
            (self.starttls, b"STARTTLS"),
        ] {
            if on {
                line(out, &[word]);
            }
        }
        if !self.auth.is_empty() {
            let mut mechs = Vec::new();
            for m in &self.auth {
                mechs.push(b' ');
                mechs.extend_from_slice(m.as_bytes());
            }
            line(out, &[b"AUTH", &mechs]);
        }
        out[last + 3] = b' ';
    }

    /// Reads the capabilities from a remote server's EHLO reply (the first
    /// line is the greeting; keywords are case-insensitive; unknown ones are
    /// ignored).
    pub fn from_ehlo_reply(reply: &Reply) -> Self {
        let mut caps = Self::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else { continue };
            let is = |k: &str| keyword.eq_ignore_ascii_case(k);
            if is("PIPELINING") {
                caps.pipelining = true;
            } else if is("SIZE") {
                let n = words.next().and_then(|w| parse_u64(w.as_bytes()));
                caps.size = Some(n.unwrap_or(0));
            } else if is("8BITMIME") {
                caps.eightbitmime = true;
            } else if is("ENHANCEDSTATUSCODES") {
                caps.enhanced_status_codes = true;
            } else if is("SMTPUTF8") {
                caps.smtputf8 = true;
            } else if is("DSN") {
                caps.dsn = true;
            } else if is("CHUNKING") {
                caps.chunking = true;
            } else if is("BINARYMIME") {
                caps.binarymime = true;
            } else if is("STARTTLS") {
                caps.starttls = true;
            } else if is("AUTH") || starts_with_ci(keyword, "AUTH=") {
                // `AUTH=LOGIN PLAIN` is the pre-standard form.
                let first = keyword.get(5..).filter(|s| !s.is_empty());
                for mech in first.into_iter().chain(words) {
                    let mech = mech.to_ascii_uppercase();
                    if !caps.auth.contains(&mech) {
                        caps.auth.push(mech);
                    }
                }
            }
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ReplyParser, Status};

    fn full() -> Capabilities {
        Capabilities {
            pipelining: true,
            size: Some(35882577),
            eightbitmime: true,
            enhanced_status_codes: true,
            smtputf8: true,
            dsn: true,
            chunking: true,
            binarymime: true,
            starttls: true,
            auth: vec!["PLAIN".into(), "LOGIN".into()],
        }
    }

    fn parse(bytes: &[u8]) -> Reply {
        match ReplyParser::new().parse(bytes) {
            Ok(Status::Complete((r, n))) => {
                assert_eq!(n, bytes.len());
                r
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn encode_full() {
        let mut out = b"junk".to_vec();
        full().encode_ehlo_reply("mx.example", "Hello", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "junk250-mx.example Hello\r\n250-PIPELINING\r\n\
250-SIZE 35882577\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n\
250-SMTPUTF8\r\n250-DSN\r\n250-CHUNKING\r\n250-BINARYMIME\r\n\
250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"
        );
    }

    #[test]
    fn encode_minimal_and_bare_size() {
        let mut out = Vec::new();
        Capabilities::default().encode_ehlo_reply("mx", "", &mut out);
        assert_eq!(out, b"250 mx\r\n");
        out.clear();
        let c = Capabilities { size: Some(0), ..Default::default() };
        c.encode_ehlo_reply("mx", "hi\r\n", &mut out);
        assert_eq!(out, b"250-mx hi  \r\n250 SIZE\r\n");
    }

    #[test]
    fn round_trip() {
        for caps in [
            full(),
            Capabilities::default(),
            Capabilities { size: Some(0), dsn: true, ..Default::default() },
        ] {
            let mut out = Vec::new();
            caps.encode_ehlo_reply("mx.example", "ESMTP", &mut out);
            assert_eq!(Capabilities::from_ehlo_reply(&parse(&out)), caps);
        }
    }

    #[test]
    fn from_remote_reply() {
        let r = parse(
            b"250-smtp.example.com at your service\r\n250-size\r\n\
250-8bitmime\r\n250-Pipelining\r\n250-AUTH=LOGIN\r\n\
250-auth login plain xoauth2\r\n250-X-UNKNOWN foo\r\n250 starttls\r\n",
        );
        let c = Capabilities::from_ehlo_reply(&r);
        assert_eq!(
            c,
            Capabilities {
                pipelining: true,
                size: Some(0),
                eightbitmime: true,
                starttls: true,
                auth: vec!["LOGIN".into(), "PLAIN".into(), "XOAUTH2".into()],
                ..Default::default()
            }
        );
        // The greeting line is never read as a keyword.
        let r = parse(b"250-PIPELINING\r\n250 SIZE 1000\r\n");
        let c = Capabilities::from_ehlo_reply(&r);
        assert!(!c.pipelining);
        assert_eq!(c.size, Some(1000));
        // HELO-style single line: nothing.
        let r = parse(b"250 mx.example\r\n");
        assert_eq!(Capabilities::from_ehlo_reply(&r), Capabilities::default());
    }
}
