//! The EHLO capability set: building the server's 250 reply and reading a
//! remote server's.

use crate::reply::Reply;

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
    pub fn encode_ehlo_reply(&self, hostname: &str, greeting: &str, out: &mut Vec<u8>) {
        todo!("{hostname} {greeting} {out:?}")
    }

    /// Reads the capabilities from a remote server's EHLO reply (the first
    /// line is the greeting; keywords are case-insensitive; unknown ones are
    /// ignored).
    pub fn from_ehlo_reply(reply: &Reply) -> Self {
        todo!("{reply:?}")
    }
}
