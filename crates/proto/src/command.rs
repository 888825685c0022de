//! SMTP commands (RFC 5321 section 4.1.1, plus RFC 3030 BDAT, RFC 3207
//! STARTTLS, RFC 4954 AUTH, and the obsolete RFC 821 SEND/SOML/SAML/TURN).

use crate::MAX_COMMAND_LINE;
use crate::params::{MailParams, ParamError, RcptParams, parse_u64, push_u64};
use crate::path::{ForwardPath, PathError, ReversePath, is_address_literal};

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
///
/// UTF-8 addresses are accepted in MAIL when it carries the SMTPUTF8
/// parameter, never in RCPT; see [`parse_command_with`].
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    parse_command_with(line, false)
}

/// Like [`parse_command`], with `smtputf8` telling whether the current
/// transaction's MAIL carried SMTPUTF8, which lets RCPT take UTF-8
/// addresses. (MAIL looks for SMTPUTF8 among its own parameters.)
pub fn parse_command_with(
    line: &[u8],
    smtputf8: bool,
) -> Result<Command, CommandError> {
    let full_len = line.len();
    let line = match line {
        [rest @ .., b'\r', b'\n'] => rest,
        [rest @ .., b'\n'] => rest,
        _ => line,
    };
    // The limit counts the CRLF, whether or not the caller passed it.
    if full_len.max(line.len() + 2) > MAX_COMMAND_LINE {
        return Err(CommandError::LineTooLong);
    }
    // NUL, CR, LF and other C0 controls (HTAB aside) never belong in a
    // command line.
    // (A branch-free fold, so that it vectorises.)
    let bad = line
        .iter()
        .fold(false, |acc, &b| acc | (b < 0x20 && b != b'\t') | (b == 0x7f));
    if bad {
        return Err(CommandError::InvalidCharacters);
    }
    let line = trim_end(line);
    let (verb, args) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], trim_start(&line[i + 1..])),
        None => (line, &line[line.len()..]),
    };
    let Some(verb) = Verb::recognise(verb) else {
        return Err(CommandError::Unrecognized);
    };
    match verb {
        Verb::Ehlo => Ok(Command::Ehlo(helo_arg(args)?)),
        Verb::Helo => Ok(Command::Helo(helo_arg(args)?)),
        Verb::Mail => parse_mail(args),
        Verb::Rcpt => parse_rcpt(args, smtputf8),
        Verb::Data => no_args(args, Command::Data),
        Verb::Bdat => parse_bdat(args),
        Verb::Rset => no_args(args, Command::Rset),
        Verb::Noop => Ok(Command::Noop),
        Verb::Quit => no_args(args, Command::Quit),
        Verb::Vrfy => Ok(Command::Vrfy(required_text(args)?)),
        Verb::Expn => Ok(Command::Expn(required_text(args)?)),
        Verb::Help => Ok(Command::Help(if args.is_empty() {
            None
        } else {
            Some(text(args)?)
        })),
        Verb::StartTls => no_args(args, Command::StartTls),
        Verb::Auth => parse_auth(args),
        Verb::Send => Ok(Command::Send),
        Verb::Soml => Ok(Command::Soml),
        Verb::Saml => Ok(Command::Saml),
        Verb::Turn => Ok(Command::Turn),
    }
}

/// The verbs we recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth,
    Send,
    Soml,
    Saml,
    Turn,
}

impl Verb {
    /// Case-insensitive lookup; four-letter verbs are matched as one
    /// upper-cased u32.
    fn recognise(verb: &[u8]) -> Option<Self> {
        if verb.len() == 8 {
            return verb
                .eq_ignore_ascii_case(b"STARTTLS")
                .then_some(Self::StartTls);
        }
        let &[a, b, c, d] = verb else {
            return None;
        };
        if ![a, b, c, d].iter().all(u8::is_ascii_alphabetic) {
            return None;
        }
        let key = u32::from_be_bytes([a, b, c, d]) & 0xDFDF_DFDF;
        let word = |w: &[u8; 4]| u32::from_be_bytes(*w);
        Some(match key {
            k if k == word(b"EHLO") => Self::Ehlo,
            k if k == word(b"HELO") => Self::Helo,
            k if k == word(b"MAIL") => Self::Mail,
            k if k == word(b"RCPT") => Self::Rcpt,
            k if k == word(b"DATA") => Self::Data,
            k if k == word(b"BDAT") => Self::Bdat,
            k if k == word(b"RSET") => Self::Rset,
            k if k == word(b"NOOP") => Self::Noop,
            k if k == word(b"QUIT") => Self::Quit,
            k if k == word(b"VRFY") => Self::Vrfy,
            k if k == word(b"EXPN") => Self::Expn,
            k if k == word(b"HELP") => Self::Help,
            k if k == word(b"AUTH") => Self::Auth,
            k if k == word(b"SEND") => Self::Send,
            k if k == word(b"SOML") => Self::Soml,
            k if k == word(b"SAML") => Self::Saml,
            k if k == word(b"TURN") => Self::Turn,
            _ => return None,
        })
    }
}

/// Strips trailing spaces and tabs.
fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Strips leading spaces.
fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = s {
        s = rest;
    }
    s
}

/// `Command` if there are no arguments, else a syntax error.
fn no_args(args: &[u8], cmd: Command) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax("no arguments allowed"))
    }
}

/// Free text as a String; invalid UTF-8 is refused.
fn text(args: &[u8]) -> Result<String, CommandError> {
    std::str::from_utf8(args)
        .map(str::to_owned)
        .map_err(|_| CommandError::InvalidCharacters)
}

/// Non-empty free text (VRFY, EXPN).
fn required_text(args: &[u8]) -> Result<String, CommandError> {
    if args.is_empty() {
        return Err(CommandError::Syntax("argument required"));
    }
    text(args)
}

/// The EHLO / HELO argument: one domain, or an address literal.
///
/// ```text
/// ehlo = "EHLO" SP ( Domain / address-literal ) CRLF
/// helo = "HELO" SP Domain CRLF
/// ```
///
/// HELO takes an address literal too: Python's smtplib sends `HELO
/// [a.b.c.d]` when the host name has no dot, and Postfix accepts it.
/// Underscores are tolerated in names, as many real clients send them.
fn helo_arg(args: &[u8]) -> Result<String, CommandError> {
    let ok = if args.first() == Some(&b'[') {
        is_address_literal(args)
    } else {
        !args.is_empty()
            && args.iter().all(|&b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
            })
    };
    if !ok {
        return Err(CommandError::Syntax("domain required"));
    }
    text(args)
}

/// Strips a case-insensitive `prefix` (`FROM:` / `TO:`) and the spaces
/// after it (Postfix tolerates `MAIL FROM: <a@b>`).
fn strip_keyword<'a>(args: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = args.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| trim_start(&args[prefix.len()..]))
}

/// The parameter part after a path: empty or starting with a space.
fn after_path(rest: &[u8]) -> Result<&[u8], CommandError> {
    match rest.first() {
        None | Some(b' ') => Ok(rest),
        Some(_) => Err(CommandError::Syntax("garbage after path")),
    }
}

/// `MAIL FROM:<reverse-path> [SP Mail-parameters]`.
fn parse_mail(args: &[u8]) -> Result<Command, CommandError> {
    let rest = strip_keyword(args, b"FROM:")
        .ok_or(CommandError::Syntax("expected FROM:<address>"))?;
    // Parse permissively, then refuse UTF-8 unless SMTPUTF8 was given:
    // the parameter follows the path it governs.
    let (from, n) =
        ReversePath::parse(rest, true).map_err(CommandError::BadSender)?;
    let params = MailParams::parse(after_path(&rest[n..])?)
        .map_err(CommandError::Param)?;
    if !params.smtputf8 && !rest[..n].is_ascii() {
        return Err(CommandError::BadSender(PathError::NonAscii));
    }
    Ok(Command::Mail { from, params })
}

/// `RCPT TO:<forward-path> [SP Rcpt-parameters]`.
fn parse_rcpt(args: &[u8], smtputf8: bool) -> Result<Command, CommandError> {
    let rest = strip_keyword(args, b"TO:")
        .ok_or(CommandError::Syntax("expected TO:<address>"))?;
    let (to, n) = ForwardPath::parse(rest, smtputf8)
        .map_err(CommandError::BadRecipient)?;
    let params = RcptParams::parse(after_path(&rest[n..])?)
        .map_err(CommandError::Param)?;
    Ok(Command::Rcpt { to, params })
}

/// `BDAT chunk-size [SP "LAST"]`.
fn parse_bdat(args: &[u8]) -> Result<Command, CommandError> {
    let bad = CommandError::Syntax("expected BDAT size [LAST]");
    let (size, last) = match memchr::memchr(b' ', args) {
        Some(i) => (&args[..i], Some(trim_start(&args[i + 1..]))),
        None => (args, None),
    };
    let size = parse_u64(size).ok_or(bad.clone())?;
    let last = match last {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(bad),
    };
    Ok(Command::Bdat { size, last })
}

/// `AUTH mechanism [SP initial-response]`.
fn parse_auth(args: &[u8]) -> Result<Command, CommandError> {
    let bad = CommandError::Syntax("expected AUTH mechanism [response]");
    let (mech, initial) = match memchr::memchr(b' ', args) {
        Some(i) => (&args[..i], Some(trim_start(&args[i + 1..]))),
        None => (args, None),
    };
    // sasl-mech = 1*20mech-char; mech-char = UPPER-ALPHA / DIGIT / "-" / "_"
    let mech_ok = matches!(mech.len(), 1..=20)
        && mech
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !mech_ok {
        return Err(bad);
    }
    let initial = match initial {
        None => None,
        Some(r) if !r.contains(&b' ') && r.is_ascii() => Some(text(r)?),
        Some(_) => return Err(bad),
    };
    let mechanism = text(mech)?.to_ascii_uppercase();
    Ok(Command::Auth { mechanism, initial })
}

impl Command {
    /// Writes the command line, CRLF included (for the outbound client and
    /// round-trip tests). MAIL parameters are written in full (RET and
    /// ENVID included); a client that must not send them clears them or
    /// uses [`MailParams::encode`] itself.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let word_arg = |out: &mut Vec<u8>, verb: &[u8], arg: &str| {
            out.extend_from_slice(verb);
            out.push(b' ');
            out.extend_from_slice(arg.as_bytes());
        };
        match self {
            Self::Ehlo(d) => word_arg(out, b"EHLO", d),
            Self::Helo(d) => word_arg(out, b"HELO", d),
            Self::Mail { from, params } => {
                out.extend_from_slice(b"MAIL FROM:");
                from.encode(out);
                params.encode(true, out);
            }
            Self::Rcpt { to, params } => {
                out.extend_from_slice(b"RCPT TO:");
                to.encode(out);
                params.encode(out);
            }
            Self::Data => out.extend_from_slice(b"DATA"),
            Self::Bdat { size, last } => {
                out.extend_from_slice(b"BDAT ");
                push_u64(out, *size);
                if *last {
                    out.extend_from_slice(b" LAST");
                }
            }
            Self::Rset => out.extend_from_slice(b"RSET"),
            Self::Noop => out.extend_from_slice(b"NOOP"),
            Self::Quit => out.extend_from_slice(b"QUIT"),
            Self::Vrfy(s) => word_arg(out, b"VRFY", s),
            Self::Expn(s) => word_arg(out, b"EXPN", s),
            Self::Help(None) => out.extend_from_slice(b"HELP"),
            Self::Help(Some(s)) => word_arg(out, b"HELP", s),
            Self::StartTls => out.extend_from_slice(b"STARTTLS"),
            Self::Auth { mechanism, initial } => {
                word_arg(out, b"AUTH", mechanism);
                if let Some(i) = initial {
                    out.push(b' ');
                    out.extend_from_slice(i.as_bytes());
                }
            }
            Self::Send => out.extend_from_slice(b"SEND"),
            Self::Soml => out.extend_from_slice(b"SOML"),
            Self::Saml => out.extend_from_slice(b"SAML"),
            Self::Turn => out.extend_from_slice(b"TURN"),
        }
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{BodyType, Notify};
    use crate::path::Mailbox;

    fn p(s: &str) -> Result<Command, CommandError> {
        parse_command(s.as_bytes())
    }

    fn mail_addr(c: &Command) -> String {
        match c {
            Command::Mail { from, .. } => {
                from.mailbox().map_or(String::new(), |m| m.to_string())
            }
            other => panic!("not MAIL: {other:?}"),
        }
    }

    fn rcpt_addr(c: &Command) -> String {
        match c {
            Command::Rcpt { to, .. } => to.mailbox().to_string(),
            other => panic!("not RCPT: {other:?}"),
        }
    }

    #[test]
    fn simple_verbs_any_case() {
        for (s, c) in [
            ("DATA", Command::Data),
            ("data", Command::Data),
            ("RSET", Command::Rset),
            ("rSeT\r\n", Command::Rset),
            ("NOOP", Command::Noop),
            ("NOOP anything at all", Command::Noop),
            ("QUIT\n", Command::Quit),
            ("STARTTLS", Command::StartTls),
            ("starttls", Command::StartTls),
            ("HELP", Command::Help(None)),
            ("HELP MAIL", Command::Help(Some("MAIL".into()))),
            ("TURN", Command::Turn),
            ("QUIT  ", Command::Quit),
        ] {
            assert_eq!(p(s), Ok(c), "{s:?}");
        }
    }

    #[test]
    fn no_argument_verbs_refuse_arguments() {
        for s in ["DATA x", "RSET now", "QUIT please", "STARTTLS 1"] {
            assert!(matches!(p(s), Err(CommandError::Syntax(_))), "{s}");
        }
    }

    #[test]
    fn unrecognized() {
        for s in
            ["", "FOO", "MAILX FROM:<>", "M@IL", "EHL", "STARTTLSX", "DATA\tx"]
        {
            assert_eq!(p(s), Err(CommandError::Unrecognized), "{s:?}");
        }
    }

    #[test]
    fn ehlo_helo() {
        assert_eq!(
            p("EHLO mx.Example.com"),
            Ok(Command::Ehlo("mx.Example.com".into()))
        );
        assert_eq!(
            p("ehlo [127.0.0.1]"),
            Ok(Command::Ehlo("[127.0.0.1]".into()))
        );
        assert_eq!(
            p("EHLO [IPv6:::1]"),
            Ok(Command::Ehlo("[IPv6:::1]".into()))
        );
        assert_eq!(p("EHLO my_host"), Ok(Command::Ehlo("my_host".into())));
        assert_eq!(
            p("HELO relay.example.org"),
            Ok(Command::Helo("relay.example.org".into()))
        );
        // RFC 5321's HELO grammar names only a Domain, but Python's smtplib
        // sends `HELO [a.b.c.d]` on hosts whose name has no dot, and Postfix
        // accepts it.
        assert_eq!(
            p("HELO [127.0.0.1]"),
            Ok(Command::Helo("[127.0.0.1]".into()))
        );
        for s in [
            "EHLO",
            "HELO",
            "EHLO a b",
            "HELO [127.0.0.1",
            "EHLO [1.2.3]",
            "EHLO é.com",
        ] {
            assert!(matches!(p(s), Err(CommandError::Syntax(_))), "{s}");
        }
    }

    #[test]
    fn mail_forms() {
        let c = p("MAIL FROM:<Smith@bar.com>").unwrap();
        assert_eq!(mail_addr(&c), "Smith@bar.com");
        let c = p("mail from: <a@b.c>").unwrap();
        assert_eq!(mail_addr(&c), "a@b.c");
        let c = p("MAIL FROM:<>").unwrap();
        assert_eq!(
            c,
            Command::Mail {
                from: ReversePath::Null,
                params: MailParams::default()
            }
        );
        let c = p("MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME").unwrap();
        let Command::Mail { params, .. } = &c else { unreachable!() };
        assert_eq!(params.size, Some(1000));
        assert_eq!(params.body, BodyType::EightBitMime);
        let c = p("MAIL FROM:<@a.example:u@d.example>").unwrap();
        assert_eq!(mail_addr(&c), "u@d.example");
    }

    #[test]
    fn mail_errors() {
        use CommandError::*;
        assert!(matches!(p("MAIL"), Err(Syntax(_))));
        assert!(matches!(p("MAIL TO:<a@b.c>"), Err(Syntax(_))));
        assert!(matches!(p("MAIL FROM:<a@b.c>SIZE=1"), Err(Syntax(_))));
        assert_eq!(
            p("MAIL FROM:a@b.c"),
            Err(BadSender(PathError::MissingBrackets))
        );
        assert_eq!(p("MAIL FROM:<a@>"), Err(BadSender(PathError::BadDomain)));
        assert_eq!(
            p("MAIL FROM:<postmaster>"),
            Err(BadSender(PathError::MissingDomain))
        );
        assert_eq!(
            p("MAIL FROM:<a@b.c> FOO=bar"),
            Err(Param(ParamError::Unknown("FOO".into())))
        );
        assert_eq!(
            p("MAIL FROM:<a@b.c> SIZE=x"),
            Err(Param(ParamError::BadValue("SIZE")))
        );
    }

    #[test]
    fn mail_utf8_needs_its_smtputf8_param() {
        let line = "MAIL FROM:<jösé@bücher.example>";
        assert_eq!(p(line), Err(CommandError::BadSender(PathError::NonAscii)));
        let c = p(&format!("{line} SMTPUTF8")).unwrap();
        assert_eq!(mail_addr(&c), "jösé@bücher.example");
        let bad = b"MAIL FROM:<j\xc3@b.example> SMTPUTF8";
        assert_eq!(
            parse_command(bad),
            Err(CommandError::BadSender(PathError::BadUtf8))
        );
    }

    #[test]
    fn rcpt_forms() {
        let c = p("RCPT TO:<Jones@foo.com>").unwrap();
        assert_eq!(rcpt_addr(&c), "Jones@foo.com");
        let c = p("rcpt to: <postmaster>").unwrap();
        assert_eq!(rcpt_addr(&c), "postmaster");
        let c = p("RCPT TO:<@HOSTX.ARPA:JOE@HOSTW.ARPA>").unwrap();
        let Command::Rcpt { to, .. } = &c else { unreachable!() };
        assert_eq!(to.0.route.as_deref(), Some("@HOSTX.ARPA"));
        assert_eq!(to.mailbox(), &Mailbox::new("JOE", "hostw.arpa"));
        let c = p("RCPT TO:<a@b.c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b.c")
            .unwrap();
        let Command::Rcpt { params, .. } = &c else { unreachable!() };
        assert_eq!(
            params.notify,
            Notify { success: true, failure: true, ..Notify::default() }
        );
        let utf8 = "RCPT TO:<ü@ö.example>";
        assert_eq!(
            p(utf8),
            Err(CommandError::BadRecipient(PathError::NonAscii))
        );
        assert!(parse_command_with(utf8.as_bytes(), true).is_ok());
        assert!(matches!(
            p("RCPT FROM:<a@b.c>"),
            Err(CommandError::Syntax(_))
        ));
        assert_eq!(
            p("RCPT TO:<a@b.c> SIZE=1"),
            Err(CommandError::Param(ParamError::Unknown("SIZE".into())))
        );
        assert_eq!(
            p("RCPT TO:<>"),
            Err(CommandError::BadRecipient(PathError::BadLocalPart))
        );
    }

    #[test]
    fn bdat_auth_vrfy_expn() {
        assert_eq!(
            p("BDAT 1000"),
            Ok(Command::Bdat { size: 1000, last: false })
        );
        assert_eq!(
            p("bdat 0 last"),
            Ok(Command::Bdat { size: 0, last: true })
        );
        for s in ["BDAT", "BDAT x", "BDAT 1 FIRST", "BDAT -1", "BDAT 1 LAST x"]
        {
            assert!(matches!(p(s), Err(CommandError::Syntax(_))), "{s}");
        }
        assert_eq!(
            p("AUTH plain dGVzdAB0ZXN0AHRlc3Q="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("dGVzdAB0ZXN0AHRlc3Q=".into())
            })
        );
        assert_eq!(
            p("AUTH LOGIN"),
            Ok(Command::Auth { mechanism: "LOGIN".into(), initial: None })
        );
        for s in
            ["AUTH", "AUTH a b c", "AUTH ABCDEFGHIJKLMNOPQRSTU", "AUTH P!"]
        {
            assert!(matches!(p(s), Err(CommandError::Syntax(_))), "{s}");
        }
        assert_eq!(p("VRFY Crispin"), Ok(Command::Vrfy("Crispin".into())));
        assert_eq!(
            p("VRFY John Smith"),
            Ok(Command::Vrfy("John Smith".into()))
        );
        assert_eq!(
            p("EXPN Example-People"),
            Ok(Command::Expn("Example-People".into()))
        );
        assert!(matches!(p("VRFY"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("EXPN"), Err(CommandError::Syntax(_))));
        assert_eq!(
            parse_command(b"VRFY \xff"),
            Err(CommandError::InvalidCharacters)
        );
    }

    #[test]
    fn obsolete_rfc821_commands() {
        assert_eq!(p("SEND FROM:<Smith@alpha.arpa>"), Ok(Command::Send));
        assert_eq!(p("SOML FROM:<Smith@alpha.arpa>"), Ok(Command::Soml));
        assert_eq!(p("SAML FROM:<Smith@alpha.arpa>"), Ok(Command::Saml));
        assert_eq!(p("TURN"), Ok(Command::Turn));
    }

    #[test]
    fn invalid_characters_and_length() {
        use CommandError::*;
        assert_eq!(parse_command(b"NOOP\0"), Err(InvalidCharacters));
        assert_eq!(
            parse_command(b"MAIL FROM:<a\0@b.c>"),
            Err(InvalidCharacters)
        );
        assert_eq!(parse_command(b"NOOP a\rb"), Err(InvalidCharacters));
        assert_eq!(parse_command(b"NOOP\r\n\r\n"), Err(InvalidCharacters));
        // 510 octets + CRLF = 512: fine; one more is too long.
        let ok = format!("NOOP {}", "x".repeat(505));
        assert_eq!(ok.len(), 510);
        assert_eq!(p(&ok), Ok(Command::Noop));
        assert_eq!(p(&format!("{ok}\r\n")), Ok(Command::Noop));
        assert_eq!(p(&format!("{ok}x")), Err(LineTooLong));
        assert_eq!(p(&format!("{ok}x\r\n")), Err(LineTooLong));
        assert_eq!(p(&"A".repeat(10_000)), Err(LineTooLong));
    }

    /// RFC 5321 appendix D, client side of D.1 to D.4, and the RFC 821
    /// procedures from the seed text.
    #[test]
    fn rfc5321_appendix_d_and_rfc821_dialogues() {
        let lines = [
            "EHLO bar.com",
            "MAIL FROM:<Smith@bar.com>",
            "RCPT TO:<Jones@foo.com>",
            "RCPT TO:<Green@foo.com>",
            "RCPT TO:<Brown@foo.com>",
            "DATA",
            "QUIT",
            "EHLO foo.com",
            "MAIL FROM:<JQP@bar.com>",
            "RCPT TO:<Jones@XYZ.COM>",
            "RCPT TO:<Green@XYZ.COM>",
            "VRFY Crispin",
            "EXPN",
            "HELO Alpha.ARPA",
            "MAIL FROM:<>",
            "RCPT TO:<@HOSTX.ARPA:JOE@HOSTW.ARPA>",
            "VRFY Smith",
            "VRFY Gourzenkyinplatz",
            "EXPN Example-People",
            "EXPN Executive-Washroom-List",
        ];
        let parsed: Vec<_> = lines.iter().map(|l| p(l)).collect();
        assert_eq!(mail_addr(parsed[1].as_ref().unwrap()), "Smith@bar.com");
        assert_eq!(rcpt_addr(parsed[9].as_ref().unwrap()), "Jones@xyz.com");
        assert_eq!(parsed[11], Ok(Command::Vrfy("Crispin".into())));
        // D.4's bare EXPN (no list named) is a syntax error.
        assert!(matches!(parsed[12], Err(CommandError::Syntax(_))));
        assert_eq!(parsed[14], p("mail from:<>"));
        assert_eq!(rcpt_addr(parsed[15].as_ref().unwrap()), "JOE@hostw.arpa");
        for (i, r) in parsed.iter().enumerate() {
            assert!(i == 12 || r.is_ok(), "{}: {r:?}", lines[i]);
        }
    }

    #[test]
    fn encode_examples() {
        let enc = |c: &Command| {
            let mut v = Vec::new();
            c.encode(&mut v);
            String::from_utf8(v).unwrap()
        };
        let mail = p("MAIL FROM:<a@B.c> SIZE=10 BODY=8BITMIME").unwrap();
        assert_eq!(enc(&mail), "MAIL FROM:<a@b.c> SIZE=10 BODY=8BITMIME\r\n");
        let rcpt = p("RCPT TO:<@r.example:x@y.z> NOTIFY=NEVER").unwrap();
        assert_eq!(enc(&rcpt), "RCPT TO:<x@y.z> NOTIFY=NEVER\r\n");
        assert_eq!(
            enc(&Command::Bdat { size: 7, last: true }),
            "BDAT 7 LAST\r\n"
        );
        assert_eq!(enc(&Command::Help(None)), "HELP\r\n");
        for line in [
            "EHLO a.example\r\n",
            "HELO a.example\r\n",
            "MAIL FROM:<> SMTPUTF8 RET=HDRS ENVID=x+2B AUTH=<>\r\n",
            "RCPT TO:<postmaster> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;a@b\r\n",
            "DATA\r\n",
            "BDAT 0\r\n",
            "RSET\r\n",
            "NOOP\r\n",
            "QUIT\r\n",
            "VRFY x y\r\n",
            "EXPN list\r\n",
            "HELP DATA\r\n",
            "STARTTLS\r\n",
            "AUTH PLAIN =\r\n",
            "SEND\r\n",
            "SOML\r\n",
            "SAML\r\n",
            "TURN\r\n",
        ] {
            assert_eq!(enc(&p(line).unwrap()), line);
        }
    }
}
