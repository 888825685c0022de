//! SMTP replies (RFC 5321 section 4.2) with enhanced status codes
//! (RFC 3463 / RFC 2034): formatting for the server, incremental parsing for
//! the outbound client.
//!
//! ```text
//! Reply-line     = *( Reply-code "-" [ textstring ] CRLF )
//!                  Reply-code [ SP textstring ] CRLF
//! ```

use std::borrow::Cow;
use std::fmt;

use crate::params::push_u64;

/// An enhanced status code `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2, 4 or 5.
    pub class: u8,
    /// Subject (0..=999).
    pub subject: u16,
    /// Detail (0..=999).
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds a code.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self { class, subject, detail }
    }

    /// Parses `d.ddd.ddd` at the start of `s`; returns the code and the
    /// number of bytes consumed.
    ///
    /// ```text
    /// status-code = class "." subject "." detail
    /// class       = "2" / "4" / "5"
    /// subject     = 1*3digit
    /// detail      = 1*3digit
    /// ```
    pub fn parse(s: &[u8]) -> Option<(Self, usize)> {
        let class = match s.first()? {
            c @ (b'2' | b'4' | b'5') => c - b'0',
            _ => return None,
        };
        if s.get(1) != Some(&b'.') {
            return None;
        }
        let (subject, n1) = parse_1_to_3_digits(&s[2..])?;
        let i = 2 + n1;
        if s.get(i) != Some(&b'.') {
            return None;
        }
        let (detail, n2) = parse_1_to_3_digits(&s[i + 1..])?;
        Some((Self::new(class, subject, detail), i + 1 + n2))
    }

    /// Appends `class.subject.detail`.
    fn encode(&self, out: &mut Vec<u8>) {
        push_u64(out, u64::from(self.class));
        out.push(b'.');
        push_u64(out, u64::from(self.subject));
        out.push(b'.');
        push_u64(out, u64::from(self.detail));
    }
}

/// 1 to 3 digits, not followed by a fourth.
fn parse_1_to_3_digits(s: &[u8]) -> Option<(u16, usize)> {
    let n = s.iter().take(4).take_while(|b| b.is_ascii_digit()).count();
    if !(1..=3).contains(&n) {
        return None;
    }
    let v = s[..n].iter().fold(0u16, |a, &b| a * 10 + u16::from(b - b'0'));
    Some((v, n))
}

/// Appends a reply code as exactly three digits.
fn push_code(out: &mut Vec<u8>, code: u16) {
    let code = code % 1000;
    out.extend_from_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
}

/// Appends reply text with any CR or LF replaced by a space, so a text can
/// never end the line early.
fn push_text(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    if memchr::memchr2(b'\r', b'\n', bytes).is_none() {
        out.extend_from_slice(bytes);
    } else {
        out.extend(bytes.iter().map(|&b| match b {
            b'\r' | b'\n' => b' ',
            b => b,
        }));
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A reply: code, optional enhanced code, one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced status code (written after the code on every line).
    pub enhanced: Option<EnhancedCode>,
    /// Text lines (at least one; may be empty strings).
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A single-line reply.
    pub fn new(
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self { code, enhanced, lines: vec![text.into()] }
    }

    /// Writes the reply in wire form (multi-line with `-`), CRLF-terminated.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let empty = [Cow::Borrowed("")];
        let lines: &[Cow<'static, str>] =
            if self.lines.is_empty() { &empty } else { &self.lines };
        let last = lines.len() - 1;
        for (i, text) in lines.iter().enumerate() {
            push_code(out, self.code);
            let cont = i != last;
            if cont {
                out.push(b'-');
            } else if self.enhanced.is_some() || !text.is_empty() {
                out.push(b' ');
            }
            if let Some(e) = &self.enhanced {
                e.encode(out);
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            push_text(out, text);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The whole text joined with spaces, e.g. for logs and DSNs:
    /// `550 5.1.1 No such user`.
    pub fn to_single_line(&self) -> String {
        let mut out = Vec::with_capacity(
            16 + self.lines.iter().map(|l| l.len() + 1).sum::<usize>(),
        );
        push_code(&mut out, self.code);
        if let Some(e) = &self.enhanced {
            out.push(b' ');
            e.encode(&mut out);
        }
        for line in self.lines.iter().filter(|l| !l.is_empty()) {
            out.push(b' ');
            push_text(&mut out, line);
        }
        // Only ASCII digits and text from `&str`s went in.
        String::from_utf8(out).unwrap_or_default()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_single_line())
    }
}

/// An enhanced code at the start of reply text, of the reply's class, and
/// followed by a space or the end of the line; returns the code and the
/// length to strip (its trailing space included).
fn enhanced_prefix(code: u16, text: &[u8]) -> Option<(EnhancedCode, usize)> {
    let (e, n) = EnhancedCode::parse(text)?;
    if u16::from(e.class) != code / 100 {
        return None;
    }
    match text.get(n) {
        None => Some((e, n)),
        Some(b' ') => Some((e, n + 1)),
        Some(_) => None,
    }
}

/// Why a reply from a remote server could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not three digits followed by SP, `-` or CRLF.
    #[error("malformed reply line")]
    Malformed,
    /// Continuation lines changed the code.
    #[error("reply code changed between lines")]
    InconsistentCode,
    /// A line exceeded the limit.
    #[error("reply line too long")]
    LineTooLong,
    /// More lines than the limit.
    #[error("too many reply lines")]
    TooManyLines,
}

/// Incremental parser for replies from a remote server.
///
/// Lines may end in CRLF or (leniently) a bare LF. The parser remembers
/// where it stopped, so each byte is looked at once however the input
/// arrives. After an error it starts afresh; the caller should close the
/// connection.
#[derive(Debug, Clone, Default)]
pub struct ReplyParser {
    lines: Vec<Cow<'static, str>>,
    code: Option<u16>,
    enhanced: Option<EnhancedCode>,
    searched: usize,
    /// Start of the line being looked for, in the caller's buffer.
    line_start: usize,
    /// Every line so far carried an enhanced code.
    all_enhanced: bool,
}

impl ReplyParser {
    /// Maximum lines accepted in one reply.
    pub const MAX_LINES: usize = 128;

    /// Longest reply line accepted from a remote server, line ending
    /// included: RFC 5321 says 512, we are lenient.
    pub const MAX_LINE: usize = 2048;

    /// A new parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses from the front of `buf`. On `Complete((reply, consumed))` the
    /// caller drops `consumed` bytes; on `Partial` it reads more and calls
    /// again with the same (grown) buffer. Enhanced codes are recognised
    /// when every line carries one.
    pub fn parse(
        &mut self,
        buf: &[u8],
    ) -> Result<crate::Status<(Reply, usize)>, ReplyError> {
        let r = self.parse_inner(buf);
        if r.is_err() {
            *self = Self::default();
        }
        r
    }

    fn parse_inner(
        &mut self,
        buf: &[u8],
    ) -> Result<crate::Status<(Reply, usize)>, ReplyError> {
        loop {
            let start = self.line_start.min(buf.len());
            let window = buf.len().min(start + Self::MAX_LINE);
            let from = self.searched.clamp(start, window);
            let Some(i) = memchr::memchr(b'\n', &buf[from..window]) else {
                if buf.len() - start >= Self::MAX_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                self.searched = buf.len();
                return Ok(crate::Status::Partial);
            };
            let lf = from + i;
            let mut line = &buf[start..lf];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            self.line_start = lf + 1;
            self.searched = lf + 1;
            if self.take_line(line)? {
                let reply = self.finish();
                return Ok(crate::Status::Complete((reply, lf + 1)));
            }
        }
    }

    /// Takes one line (without its ending); true when it was the last.
    fn take_line(&mut self, line: &[u8]) -> Result<bool, ReplyError> {
        // Reply-code = %x32-35 %x30-35 %x30-39
        let code = match line {
            [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9', ..] => {
                u16::from(a - b'0') * 100
                    + u16::from(b - b'0') * 10
                    + u16::from(c - b'0')
            }
            _ => return Err(ReplyError::Malformed),
        };
        let (last, text) = match line.get(3) {
            None => (true, &line[3..]),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(ReplyError::Malformed),
        };
        match self.code {
            None => {
                self.code = Some(code);
                self.all_enhanced = true;
            }
            Some(c) if c != code => return Err(ReplyError::InconsistentCode),
            Some(_) => {}
        }
        if self.lines.len() >= Self::MAX_LINES {
            return Err(ReplyError::TooManyLines);
        }
        let mut t = String::from_utf8_lossy(text).into_owned();
        if t.contains('\r') {
            t = t.replace('\r', " ");
        }
        if self.all_enhanced {
            match enhanced_prefix(code, t.as_bytes()) {
                Some((e, _)) => {
                    if self.enhanced.is_none() {
                        self.enhanced = Some(e);
                    }
                }
                None => self.all_enhanced = false,
            }
        }
        self.lines.push(Cow::Owned(t));
        Ok(last)
    }

    /// Builds the reply and resets the parser for the next one.
    fn finish(&mut self) -> Reply {
        let code = self.code.unwrap_or_default();
        let mut lines = std::mem::take(&mut self.lines);
        let enhanced = if self.all_enhanced { self.enhanced } else { None };
        if enhanced.is_some() {
            for line in &mut lines {
                let n = enhanced_prefix(code, line.as_bytes())
                    .map_or(0, |(_, n)| n);
                line.to_mut().drain(..n);
            }
        }
        *self = Self::default();
        Reply { code, enhanced, lines }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    fn enc(r: &Reply) -> String {
        let mut v = Vec::new();
        r.encode(&mut v);
        String::from_utf8(v).unwrap()
    }

    fn parse_all(s: &[u8]) -> Result<Vec<(Reply, usize)>, ReplyError> {
        let mut p = ReplyParser::new();
        let mut out = Vec::new();
        let mut at = 0;
        while let Status::Complete((r, n)) = p.parse(&s[at..])? {
            at += n;
            out.push((r, n));
        }
        Ok(out)
    }

    #[test]
    fn enhanced_code_parse() {
        assert_eq!(
            EnhancedCode::parse(b"5.1.1 No"),
            Some((EnhancedCode::new(5, 1, 1), 5))
        );
        assert_eq!(
            EnhancedCode::parse(b"4.123.999"),
            Some((EnhancedCode::new(4, 123, 999), 9))
        );
        for bad in [
            &b"3.1.1"[..],
            b"5.1",
            b"5..1",
            b"5.1234.1",
            b"5.1.1000",
            b"x",
            b"",
        ] {
            assert_eq!(
                EnhancedCode::parse(bad),
                None,
                "{}",
                bad.escape_ascii()
            );
        }
        assert_eq!(EnhancedCode::new(2, 1, 5).to_string(), "2.1.5");
    }

    #[test]
    fn encode_single_and_multi() {
        let r = Reply::new(250, Some(EnhancedCode::new(2, 1, 0)), "Ok");
        assert_eq!(enc(&r), "250 2.1.0 Ok\r\n");
        assert_eq!(
            enc(&Reply::new(354, None, "Go ahead")),
            "354 Go ahead\r\n"
        );
        assert_eq!(enc(&Reply::new(250, None, "")), "250\r\n");
        let m = Reply {
            code: 250,
            enhanced: None,
            lines: vec![
                "Jon Postel".into(),
                "Fred Fonebone".into(),
                "".into(),
            ],
        };
        assert_eq!(enc(&m), "250-Jon Postel\r\n250-Fred Fonebone\r\n250\r\n");
        let e = Reply {
            code: 550,
            enhanced: Some(EnhancedCode::new(5, 7, 1)),
            lines: vec!["a".into(), "".into(), "b".into()],
        };
        assert_eq!(enc(&e), "550-5.7.1 a\r\n550-5.7.1\r\n550 5.7.1 b\r\n");
        let inject = Reply::new(250, None, "a\r\nRCPT TO:<x@y>");
        assert_eq!(enc(&inject), "250 a  RCPT TO:<x@y>\r\n");
        let empty = Reply { code: 221, enhanced: None, lines: vec![] };
        assert_eq!(enc(&empty), "221\r\n");
    }

    #[test]
    fn single_line_and_classes() {
        let r =
            Reply::new(550, Some(EnhancedCode::new(5, 1, 1)), "No such user");
        assert_eq!(r.to_single_line(), "550 5.1.1 No such user");
        assert_eq!(r.to_string(), "550 5.1.1 No such user");
        assert!(r.is_permanent() && !r.is_transient() && !r.is_positive());
        let m = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["mx.example".into(), "".into(), "SIZE 10".into()],
        };
        assert_eq!(m.to_single_line(), "250 mx.example SIZE 10");
        assert!(m.is_positive());
        assert!(Reply::new(451, None, "later").is_transient());
    }

    #[test]
    fn parse_rfc821_replies() {
        let input =
            b"250-Jon Postel\r\n250-Fred Fonebone\r\n250-Sam Q. Smith\r\n\
250-Quincy Smith <@USC-ISIF.ARPA:Q-Smith@ISI-VAXA.ARPA>\r\n250-\r\n250\r\n\
550 No such user here\r\n\
251 User not local; will forward to <Brown@USC-ISIQ.ARPA>\r\n\
553 User ambiguous\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n";
        let all = parse_all(input).unwrap();
        assert_eq!(all.len(), 5);
        let expn = &all[0].0;
        assert_eq!(expn.code, 250);
        assert_eq!(expn.enhanced, None);
        assert_eq!(expn.lines.len(), 6);
        assert_eq!(
            expn.lines[3],
            "Quincy Smith <@USC-ISIF.ARPA:Q-Smith@ISI-VAXA.ARPA>"
        );
        assert_eq!(expn.lines[4], "");
        assert_eq!(expn.lines[5], "");
        assert_eq!(all[1].0, Reply::new(550, None, "No such user here"));
        assert_eq!(all[2].0.code, 251);
        assert_eq!(all[3].0.to_single_line(), "553 User ambiguous");
        assert_eq!(all[4].0.code, 354);
        let total: usize = all.iter().map(|(_, n)| n).sum();
        assert_eq!(total, input.len());
    }

    #[test]
    fn parse_enhanced_only_when_on_every_line() {
        let all = parse_all(b"250-2.0.0 a\r\n250 2.0.0 b\r\n").unwrap();
        let r = &all[0].0;
        assert_eq!(r.enhanced, Some(EnhancedCode::new(2, 0, 0)));
        assert_eq!(r.lines, ["a", "b"]);
        let all = parse_all(b"250-2.0.0 a\r\n250 b\r\n").unwrap();
        assert_eq!(all[0].0.enhanced, None);
        assert_eq!(all[0].0.lines, ["2.0.0 a", "b"]);
        // Class mismatch: not an enhanced code.
        let all = parse_all(b"550 2.0.0 odd\r\n").unwrap();
        assert_eq!(all[0].0.enhanced, None);
        // Bare code and bare LF endings are accepted.
        let all = parse_all(b"421 4.4.2\n").unwrap();
        assert_eq!(all[0].0.enhanced, Some(EnhancedCode::new(4, 4, 2)));
        assert_eq!(all[0].0.lines, [""]);
    }

    #[test]
    fn parse_errors() {
        use ReplyError::*;
        for (s, e) in [
            (&b"hello\r\n"[..], Malformed),
            (b"25\r\n", Malformed),
            (b"250x\r\n", Malformed),
            (b"150 ok\r\n", Malformed),
            (b"650 ok\r\n", Malformed),
            (b"\r\n", Malformed),
            (b"250-a\r\n251 b\r\n", InconsistentCode),
        ] {
            assert_eq!(parse_all(s), Err(e), "{}", s.escape_ascii());
        }
        let long = vec![b'5'; ReplyParser::MAX_LINE];
        assert_eq!(parse_all(&long), Err(LineTooLong));
        let mut ok = b"250 ".to_vec();
        ok.resize(ReplyParser::MAX_LINE - 2, b'x');
        ok.extend_from_slice(b"\r\n");
        assert_eq!(parse_all(&ok).unwrap().len(), 1);
        let many = b"250-x\r\n".repeat(ReplyParser::MAX_LINES + 1);
        assert_eq!(parse_all(&many), Err(TooManyLines));
        let mut max = b"250-x\r\n".repeat(ReplyParser::MAX_LINES - 1);
        max.extend_from_slice(b"250 x\r\n");
        assert_eq!(
            parse_all(&max).unwrap()[0].0.lines.len(),
            ReplyParser::MAX_LINES
        );
    }

    #[test]
    fn incremental_never_rescans_and_resets_after_error() {
        let mut p = ReplyParser::new();
        let input = b"220-mx.example ESMTP\r\n220 ready\r\n";
        for end in 0..input.len() {
            assert_eq!(p.parse(&input[..end]), Ok(Status::Partial), "{end}");
            assert_eq!(p.searched, end);
        }
        let Status::Complete((r, n)) = p.parse(input).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(n, input.len());
        assert_eq!(r.lines, ["mx.example ESMTP", "ready"]);
        assert_eq!(p.parse(b"bogus\r\n"), Err(ReplyError::Malformed));
        assert!(matches!(p.parse(b"250 ok\r\n"), Ok(Status::Complete(_))));
    }

    #[test]
    fn remote_text_is_made_safe() {
        let all = parse_all(b"250 a\rb \xff\r\n").unwrap();
        assert_eq!(all[0].0.lines, ["a b \u{fffd}"]);
    }
}
