//! ESMTP parameters of MAIL and RCPT.
//!
//! MAIL: SIZE (RFC 1870), BODY (RFC 6152 / RFC 3030), SMTPUTF8 (RFC 6531),
//! RET and ENVID (RFC 3461), AUTH (RFC 4954).
//! RCPT: NOTIFY and ORCPT (RFC 3461).
//!
//! ```text
//! esmtp-param    = esmtp-keyword ["=" esmtp-value]
//! esmtp-keyword  = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
//! esmtp-value    = 1*(%d33-60 / %d62-126 / UTF8-non-ascii)
//! xtext          = *( xchar / hexchar )   ; "+" HEX HEX encodes one octet
//! ```

/// Why a parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A parameter we do not implement (the server answers 555 5.5.4).
    #[error("unknown parameter {0}")]
    Unknown(String),
    /// A known parameter with a bad value (501 5.5.4).
    #[error("bad value for {0}")]
    BadValue(&'static str),
    /// The same parameter given twice (501 5.5.4).
    #[error("duplicate parameter {0}")]
    Duplicate(&'static str),
    /// Malformed `keyword=value` syntax (501 5.5.4).
    #[error("malformed parameter")]
    Syntax,
}

/// The BODY parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    /// `BODY=7BIT` (or absent).
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
    /// `BODY=BINARYMIME` (requires BDAT).
    BinaryMime,
}

/// The RET parameter of RFC 3461.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// Return the full message in a DSN.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// The NOTIFY parameter of RFC 3461 as a set of flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    /// `NOTIFY=NEVER`.
    pub never: bool,
    /// SUCCESS requested.
    pub success: bool,
    /// FAILURE requested.
    pub failure: bool,
    /// DELAY requested.
    pub delay: bool,
}

impl Notify {
    /// True when NOTIFY was absent (default: failure and maybe delay).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a failure DSN should be sent for this recipient.
    pub fn wants_failure(&self) -> bool {
        !self.never && (self.failure || self.is_default())
    }

    /// Whether a delay DSN may be sent for this recipient.
    pub fn wants_delay(&self) -> bool {
        !self.never && (self.delay || self.is_default())
    }

    /// Whether a success DSN should be sent for this recipient.
    pub fn wants_success(&self) -> bool {
        !self.never && self.success
    }

    /// Writes the value (`NEVER` or e.g. `SUCCESS,FAILURE`), or nothing
    /// when default.
    pub fn encode(&self, out: &mut Vec<u8>) {
        todo!("{out:?}")
    }
}

/// Parameters of MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// SIZE=n declared message size.
    pub size: Option<u64>,
    /// BODY=...
    pub body: BodyType,
    /// SMTPUTF8 present.
    pub smtputf8: bool,
    /// RET=FULL|HDRS.
    pub ret: Option<Ret>,
    /// ENVID, xtext-decoded.
    pub envid: Option<String>,
    /// AUTH=<mailbox> (xtext-decoded), `<>` kept as "<>".
    pub auth: Option<String>,
}

impl MailParams {
    /// Parses the parameters after the reverse-path (space separated).
    pub fn parse(s: &[u8]) -> Result<Self, ParamError> {
        todo!("{s:?}")
    }

    /// Writes the parameters (each preceded by a space) for an outbound
    /// MAIL command; `dsn` says whether RET/ENVID may be sent.
    pub fn encode(&self, dsn: bool, out: &mut Vec<u8>) {
        todo!("{dsn} {out:?}")
    }
}

/// Parameters of RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {
    /// NOTIFY flags.
    pub notify: Notify,
    /// ORCPT as (address type, xtext-decoded address), e.g. ("rfc822", "a@b").
    pub orcpt: Option<(String, String)>,
}

impl RcptParams {
    /// Parses the parameters after the forward-path.
    pub fn parse(s: &[u8]) -> Result<Self, ParamError> {
        todo!("{s:?}")
    }

    /// Writes the parameters (each preceded by a space) for an outbound
    /// RCPT command; only when the next hop advertises DSN.
    pub fn encode(&self, out: &mut Vec<u8>) {
        todo!("{out:?}")
    }
}

/// Decodes RFC 3461 xtext (`+XX` hex escapes).
pub fn xtext_decode(s: &[u8]) -> Result<String, ParamError> {
    todo!("{s:?}")
}

/// Encodes RFC 3461 xtext.
pub fn xtext_encode(s: &str, out: &mut Vec<u8>) {
    todo!("{s:?} {out:?}")
}
