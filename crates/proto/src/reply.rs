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
    pub fn parse(s: &[u8]) -> Option<(Self, usize)> {
        todo!("{s:?}")
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
        todo!("{out:?}")
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
        todo!()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_single_line())
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
#[derive(Debug, Clone, Default)]
pub struct ReplyParser {
    lines: Vec<Cow<'static, str>>,
    code: Option<u16>,
    enhanced: Option<EnhancedCode>,
    searched: usize,
}

impl ReplyParser {
    /// Maximum lines accepted in one reply.
    pub const MAX_LINES: usize = 128;

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
        todo!("{buf:?} {:?} {:?} {:?} {:?}", self.lines, self.code, self.enhanced, self.searched)
    }
}
