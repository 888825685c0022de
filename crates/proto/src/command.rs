//! SMTP commands (RFC 5321 section 4.1.1, plus RFC 3030 BDAT, RFC 3207
//! STARTTLS, RFC 4954 AUTH, and the obsolete RFC 821 SEND/SOML/SAML/TURN).

use crate::params::{MailParams, ParamError, RcptParams};
use crate::path::{ForwardPath, PathError, ReversePath};

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain-or-literal`.
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `MAIL FROM:<reverse-path> [params]`.
    Mail {
        /// The sender.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<forward-path> [params]`.
    Rcpt {
        /// The recipient.
        to: ForwardPath,
        /// ESMTP parameters.
        params: RcptParams,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Chunk size in octets.
        size: u64,
        /// LAST given.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy(String),
    /// `EXPN string`.
    Expn(String),
    /// `HELP [string]`.
    Help(Option<String>),
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]`.
    Auth {
        /// SASL mechanism, upper-cased.
        mechanism: String,
        /// Initial response, if given.
        initial: Option<String>,
    },
    /// Obsolete `SEND FROM:` (RFC 821).
    Send,
    /// Obsolete `SOML FROM:` (RFC 821).
    Soml,
    /// Obsolete `SAML FROM:` (RFC 821).
    Saml,
    /// Obsolete `TURN` (RFC 821).
    Turn,
}

/// Why a command line was refused. The server maps each variant to exactly
/// one reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Unknown verb (500 5.5.2).
    #[error("command unrecognized")]
    Unrecognized,
    /// Line longer than 512 octets (500 5.5.6).
    #[error("line too long")]
    LineTooLong,
    /// Known verb, malformed arguments (501 5.5.4).
    #[error("syntax error in arguments: {0}")]
    Syntax(&'static str),
    /// Malformed reverse-path (501 5.1.7).
    #[error("bad sender address: {0}")]
    BadSender(PathError),
    /// Malformed forward-path (501 5.1.3).
    #[error("bad recipient address: {0}")]
    BadRecipient(PathError),
    /// An ESMTP parameter problem (555 5.5.4 for unknown, else 501 5.5.4).
    #[error("parameter: {0}")]
    Param(ParamError),
    /// NUL or other octets never allowed in a command (500 5.5.2).
    #[error("invalid characters in command")]
    InvalidCharacters,
}

/// Parses one command line: the bytes up to but not including CRLF (a
/// trailing CRLF or LF is tolerated and stripped).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    todo!("{line:?}")
}

impl Command {
    /// Writes the command line, CRLF included (for the outbound client and
    /// round-trip tests).
    pub fn encode(&self, out: &mut Vec<u8>) {
        todo!("{out:?}")
    }
}
