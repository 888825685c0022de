//! Every reply the session sends, and the one mapping from
//! [`SessionError`] to a reply.
//!
//! Texts are Postfix-like and bland: they never echo internals. Only the
//! hostname, the queue id, an option keyword and (for relay denial) the
//! client's own recipient address are interpolated.

use std::borrow::Cow;

use millrace_proto::{
    CommandError, EnhancedCode, ParamError, PathError, Reply,
};

/// Why the session refused something. Peer errors get a 4xx/5xx reply and
/// the session continues; session-fatal ones get 421/554 and close; local
/// faults get 451.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The command line could not be parsed.
    #[error("bad command: {0}")]
    Command(#[from] CommandError),
    /// MAIL before HELO/EHLO.
    #[error("MAIL before HELO/EHLO")]
    NeedHelo,
    /// MAIL inside a transaction.
    #[error("nested MAIL")]
    NestedMail,
    /// RCPT or BDAT without MAIL.
    #[error("no MAIL given")]
    NeedMail,
    /// DATA without MAIL, or DATA / BDAT after MAIL with no RCPT given.
    #[error("no RCPT given")]
    NeedRcpt,
    /// DATA or BDAT after MAIL when every RCPT was refused.
    #[error("no valid recipients")]
    NoValidRecipients,
    /// A command out of order in some other way (DATA after BDAT, RCPT
    /// after BDAT).
    #[error("bad sequence: {0}")]
    BadSequence(&'static str),
    /// A command that takes no arguments got some.
    #[error("no arguments allowed")]
    NoArguments,
    /// An option we understand but do not offer (BODY=BINARYMIME, AUTH=).
    #[error("unsupported option {0}")]
    Unsupported(&'static str),
    /// MAIL declared a SIZE over the limit.
    #[error("declared size over the limit")]
    SizeExceedsLimit,
    /// The body grew over the limit.
    #[error("message too big")]
    MessageTooBig,
    /// The recipient may not be relayed to from this client.
    #[error("relay denied for {0}")]
    RelayDenied(String),
    /// More than `max_recipients`.
    #[error("too many recipients")]
    TooManyRecipients,
    /// A bare CR or LF in the body (smuggling defence).
    #[error("bare CR or LF in body")]
    BareLineEnding,
    /// EXPN, STARTTLS, AUTH, or BDAT when CHUNKING is off.
    #[error("command not implemented")]
    NotImplemented,
    /// SEND, SOML, SAML, TURN.
    #[error("obsolete command")]
    Obsolete,
    /// The client did not wait for a reply where it must (fatal).
    #[error("pipelining violation")]
    Synchronization,
    /// Too many errors in this session (fatal).
    #[error("too many errors")]
    TooManyErrors,
    /// The command or data timeout fired (fatal).
    #[error("timeout")]
    Timeout,
    /// The server is stopping (fatal).
    #[error("shutting down")]
    ShuttingDown,
    /// Over the connection limit (fatal, sent before any greeting).
    #[error("too many connections")]
    TooManyConnections,
    /// The durable commit failed (local fault).
    #[error("queue file write error")]
    QueueWrite,
}

impl SessionError {
    /// Ends the session after its reply.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Synchronization
                | Self::TooManyErrors
                | Self::Timeout
                | Self::ShuttingDown
                | Self::TooManyConnections
        )
    }

    /// Counts towards `max_errors` (the client's fault, not fatal anyway).
    /// Our faults do not, nor does the 452 for recipients over
    /// `max_recipients`: the client is to send those again later (RFC 5321
    /// section 4.5.3.1.10), and counting them would drop the transaction
    /// of a client with many recipients at the 10th.
    pub fn counts(&self) -> bool {
        !self.is_fatal()
            && !matches!(self, Self::QueueWrite | Self::TooManyRecipients)
    }
}

/// Shorthand for an enhanced code.
const fn e(class: u8, subject: u16, detail: u16) -> Option<EnhancedCode> {
    Some(EnhancedCode::new(class, subject, detail))
}

/// A reply with static text.
fn st(code: u16, enh: Option<EnhancedCode>, text: &'static str) -> Reply {
    Reply::new(code, enh, text)
}

/// A reply with built text.
fn dy(code: u16, enh: Option<EnhancedCode>, text: String) -> Reply {
    Reply::new(code, enh, Cow::Owned(text))
}

/// THE mapping from error to reply.
pub fn error_reply(err: &SessionError, hostname: &str) -> Reply {
    use SessionError as E;
    match err {
        E::Command(c) => match c {
            CommandError::Unrecognized | CommandError::InvalidCharacters => {
                st(500, e(5, 5, 2), "Error: command not recognized")
            }
            CommandError::LineTooLong => {
                st(500, e(5, 5, 6), "Error: line too long")
            }
            CommandError::Syntax(_) => {
                st(501, e(5, 5, 4), "Syntax error in parameters or arguments")
            }
            CommandError::BadSender(PathError::NonAscii)
            | CommandError::BadRecipient(PathError::NonAscii) => st(
                553,
                e(5, 6, 7),
                "Must declare SMTPUTF8 to send Unicode address",
            ),
            CommandError::BadSender(_) => {
                st(501, e(5, 1, 7), "Bad sender address syntax")
            }
            CommandError::BadRecipient(_) => {
                st(501, e(5, 1, 3), "Bad recipient address syntax")
            }
            CommandError::Param(ParamError::Unknown(_)) => {
                st(555, e(5, 5, 4), "Unsupported option")
            }
            CommandError::Param(_) => {
                st(501, e(5, 5, 4), "Bad parameter syntax")
            }
        },
        E::NeedHelo => st(503, e(5, 5, 1), "Error: send HELO/EHLO first"),
        E::NestedMail => st(503, e(5, 5, 1), "Error: nested MAIL command"),
        E::NeedMail => st(503, e(5, 5, 1), "Error: need MAIL command"),
        E::NeedRcpt => st(503, e(5, 5, 1), "Error: need RCPT command"),
        E::NoValidRecipients => {
            st(554, e(5, 5, 1), "Error: no valid recipients")
        }
        E::BadSequence(what) => dy(503, e(5, 5, 1), format!("Error: {what}")),
        E::NoArguments => st(501, e(5, 5, 4), "Syntax error: no arguments"),
        E::Unsupported(what) => {
            dy(555, e(5, 5, 4), format!("Unsupported option: {what}"))
        }
        E::SizeExceedsLimit => {
            st(552, e(5, 3, 4), "Message size exceeds fixed limit")
        }
        E::MessageTooBig => st(552, e(5, 3, 4), "Error: message file too big"),
        E::RelayDenied(addr) => {
            dy(554, e(5, 7, 1), format!("<{addr}>: Relay access denied"))
        }
        E::TooManyRecipients => {
            st(452, e(4, 5, 3), "Error: too many recipients")
        }
        E::BareLineEnding => {
            st(550, e(5, 6, 0), "Error: bare <CR> or <LF> received")
        }
        E::NotImplemented => {
            st(502, e(5, 5, 1), "Error: command not implemented")
        }
        E::Obsolete => st(502, e(5, 5, 1), "Error: command not implemented"),
        E::Synchronization => {
            st(554, e(5, 5, 0), "Error: SMTP protocol synchronization")
        }
        E::TooManyErrors => {
            dy(421, e(4, 7, 0), format!("{hostname} Error: too many errors"))
        }
        E::Timeout => {
            dy(421, e(4, 4, 2), format!("{hostname} Error: timeout exceeded"))
        }
        E::ShuttingDown => {
            dy(421, e(4, 3, 2), format!("{hostname} Service shutting down"))
        }
        E::TooManyConnections => dy(
            421,
            e(4, 7, 0),
            format!("{hostname} Too many connections, try again later"),
        ),
        E::QueueWrite => st(451, e(4, 3, 0), "Error: queue file write error"),
    }
}

/// `220 <hostname> ESMTP Millrace`.
pub(crate) fn greeting(hostname: &str) -> Reply {
    dy(220, None, format!("{hostname} ESMTP Millrace"))
}

/// The text after the hostname on the first EHLO line (none).
pub(crate) const EHLO_GREETING: &str = "";

/// `250 <hostname>` (HELO).
pub(crate) fn helo(hostname: &str) -> Reply {
    dy(250, None, hostname.to_owned())
}

/// `250 2.1.0 Ok` (MAIL).
pub(crate) fn mail_ok() -> Reply {
    st(250, e(2, 1, 0), "Ok")
}

/// `250 2.1.5 Ok` (RCPT).
pub(crate) fn rcpt_ok() -> Reply {
    st(250, e(2, 1, 5), "Ok")
}

/// `250 2.0.0 Ok` (RSET, NOOP).
pub(crate) fn ok() -> Reply {
    st(250, e(2, 0, 0), "Ok")
}

/// `354 End data with <CR><LF>.<CR><LF>`.
pub(crate) fn start_data() -> Reply {
    st(354, None, "End data with <CR><LF>.<CR><LF>")
}

/// `250 2.0.0 Ok: queued as <ID>`.
pub(crate) fn queued(id: &str) -> Reply {
    dy(250, e(2, 0, 0), format!("Ok: queued as {id}"))
}

/// `250 2.0.0 Ok: <n> octets received` (a non-LAST BDAT chunk).
pub(crate) fn bdat_ok(n: u64) -> Reply {
    dy(250, e(2, 0, 0), format!("Ok: {n} octets received"))
}

/// `221 2.0.0 Bye`.
pub(crate) fn bye() -> Reply {
    st(221, e(2, 0, 0), "Bye")
}

/// `252 2.5.2 ...` (VRFY: a relay cannot verify).
pub(crate) fn vrfy() -> Reply {
    st(
        252,
        e(2, 5, 2),
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}

/// `214 2.0.0 ...` (HELP).
pub(crate) fn help() -> Reply {
    st(
        214,
        e(2, 0, 0),
        "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        let mut out = Vec::new();
        r.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fatal_errors_name_the_host() {
        for (err, want) in [
            (SessionError::TooManyErrors, "421 4.7.0 mx.test Error: too"),
            (SessionError::Timeout, "421 4.4.2 mx.test Error: timeout"),
            (SessionError::ShuttingDown, "421 4.3.2 mx.test Service"),
            (SessionError::TooManyConnections, "421 4.7.0 mx.test Too"),
        ] {
            assert!(err.is_fatal() && !err.counts());
            let got = wire(&error_reply(&err, "mx.test"));
            assert!(got.starts_with(want), "{got}");
            assert!(got.ends_with("\r\n"));
        }
    }

    #[test]
    fn command_errors_map_to_their_codes() {
        let cases = [
            (CommandError::Unrecognized, "500 5.5.2"),
            (CommandError::LineTooLong, "500 5.5.6"),
            (CommandError::Syntax("x"), "501 5.5.4"),
            (CommandError::BadSender(PathError::BadDomain), "501 5.1.7"),
            (CommandError::BadRecipient(PathError::BadDomain), "501 5.1.3"),
            (CommandError::BadSender(PathError::NonAscii), "553 5.6.7"),
            (
                CommandError::Param(ParamError::Unknown("X".into())),
                "555 5.5.4",
            ),
            (CommandError::Param(ParamError::Syntax), "501 5.5.4"),
        ];
        for (c, want) in cases {
            let err = SessionError::Command(c);
            assert!(err.counts());
            assert!(wire(&error_reply(&err, "h")).starts_with(want));
        }
        assert!(!SessionError::QueueWrite.counts());
    }
}
