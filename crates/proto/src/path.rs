//! Reverse-path and forward-path (RFC 5321 section 4.1.2).
//!
//! ```text
//! Reverse-path   = Path / "<>"
//! Forward-path   = Path
//! Path           = "<" [ A-d-l ":" ] Mailbox ">"
//! A-d-l          = At-domain *( "," At-domain )   ; source route, obsolete
//! Mailbox        = Local-part "@" ( Domain / address-literal )
//! ```
//!
//! Plus `<postmaster>` (no domain) in RCPT, and SMTPUTF8 (RFC 6531) UTF-8
//! local parts and domains.

use std::fmt;

/// Why a path could not be parsed (the server answers 501 / 553).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is not enclosed in angle brackets.
    #[error("path must be enclosed in <>")]
    MissingBrackets,
    /// The local part is empty or malformed.
    #[error("bad local part")]
    BadLocalPart,
    /// The domain or address literal is malformed.
    #[error("bad domain")]
    BadDomain,
    /// The mailbox has no `@domain` (only `postmaster` may omit it).
    #[error("mailbox has no domain")]
    MissingDomain,
    /// The source route is malformed.
    #[error("bad source route")]
    BadRoute,
    /// Non-ASCII octets or invalid UTF-8 where not allowed.
    #[error("non-ASCII address without SMTPUTF8")]
    NonAscii,
    /// The path is longer than RFC 5321 allows (256 octets).
    #[error("path too long")]
    TooLong,
}

/// A mailbox `local@domain`, stored as one string with the split point.
///
/// The local part is kept exactly as sent (quotes included); the domain is
/// lower-cased for routing. `postmaster` without a domain has an empty
/// domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// `local@domain` (or just `local` for a bare postmaster).
    addr: String,
    /// Byte index of the `@` (== addr.len() when there is no domain).
    at: usize,
}

impl Mailbox {
    /// Builds a mailbox from parts (the domain is lower-cased).
    pub fn new(local: &str, domain: &str) -> Self {
        let mut addr = String::with_capacity(local.len() + 1 + domain.len());
        addr.push_str(local);
        let at = addr.len();
        if !domain.is_empty() {
            addr.push('@');
            addr.push_str(domain);
            addr[at + 1..].make_ascii_lowercase();
        }
        Self { addr, at }
    }

    /// Parses `local@domain` (no angle brackets).
    pub fn parse(s: &[u8], smtputf8: bool) -> Result<Self, PathError> {
        todo!("{s:?} {smtputf8}")
    }

    /// The local part, as sent.
    pub fn local(&self) -> &str {
        &self.addr[..self.at]
    }

    /// The domain, lower-cased (empty for a bare `postmaster`). May be an
    /// address literal such as `[127.0.0.1]`.
    pub fn domain(&self) -> &str {
        self.addr.get(self.at + 1..).unwrap_or("")
    }

    /// The whole address `local@domain`.
    pub fn as_str(&self) -> &str {
        &self.addr
    }

    /// True for `postmaster` (any case) with no domain.
    pub fn is_bare_postmaster(&self) -> bool {
        self.at == self.addr.len() && self.addr.eq_ignore_ascii_case("postmaster")
    }

    /// True when the address contains non-ASCII (needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        !self.addr.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// A path: an optional (obsolete) source route and the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// The source route `@a,@b` as sent (without the trailing `:`), kept
    /// aside; delivery uses only the mailbox (RFC 5321 appendix C).
    pub route: Option<String>,
    /// The mailbox.
    pub mailbox: Mailbox,
}

/// The argument of `MAIL FROM:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// The null reverse-path `<>` (bounces and other notifications).
    Null,
    /// A real sender.
    Path(Path),
}

impl ReversePath {
    /// Parses `<...>` (or `<>`) from the start of `s`; returns the path and
    /// the number of bytes consumed.
    pub fn parse(s: &[u8], smtputf8: bool) -> Result<(Self, usize), PathError> {
        todo!("{s:?} {smtputf8}")
    }

    /// The mailbox, if not null.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            Self::Null => None,
            Self::Path(p) => Some(&p.mailbox),
        }
    }

    /// Writes `<addr>` or `<>`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(b'<');
        if let Self::Path(p) = self {
            out.extend_from_slice(p.mailbox.as_str().as_bytes());
        }
        out.push(b'>');
    }
}

/// The argument of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPath(pub Path);

impl ForwardPath {
    /// Parses `<...>` (including `<postmaster>`) from the start of `s`;
    /// returns the path and the number of bytes consumed.
    pub fn parse(s: &[u8], smtputf8: bool) -> Result<(Self, usize), PathError> {
        todo!("{s:?} {smtputf8}")
    }

    /// The mailbox.
    pub fn mailbox(&self) -> &Mailbox {
        &self.0.mailbox
    }

    /// Writes `<addr>` (the source route is not forwarded).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(b'<');
        out.extend_from_slice(self.0.mailbox.as_str().as_bytes());
        out.push(b'>');
    }
}
