//! Property tests: encode∘parse round trips for commands and replies,
//! chunked parsing equal to whole-buffer parsing, and no panics on
//! arbitrary bytes.

use std::borrow::Cow;

use millrace_proto::{
    BodyType, Command, EnhancedCode, ForwardPath, LineReader, LineStatus,
    MailParams, Mailbox, Notify, Path, RcptParams, Reply, ReplyParser, Ret,
    ReversePath, Status, parse_command, parse_command_with,
};
use proptest::prelude::*;

fn domain() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,8}){0,3}",
        1 => Just("[127.0.0.1]".to_owned()),
        1 => Just("[ipv6:2001:db8::1]".to_owned()),
        1 => Just("[x-tag:abc]".to_owned()),
    ]
}

fn local_part() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,16}(\\.[A-Za-z0-9_-]{1,8}){0,2}",
        1 => "\"([ !#-\\[\\]-~]|\\\\[ -~]){0,12}\"",
    ]
}

fn mailbox() -> impl Strategy<Value = Mailbox> {
    (local_part(), domain()).prop_map(|(l, d)| Mailbox::new(&l, &d))
}

fn path() -> impl Strategy<Value = Path> {
    mailbox().prop_map(|mailbox| Path { route: None, mailbox })
}

fn xtext_value() -> impl Strategy<Value = String> {
    "[ -~é]{1,20}"
}

fn mail_params() -> impl Strategy<Value = MailParams> {
    (
        proptest::option::of(any::<u64>()),
        prop_oneof![
            Just(BodyType::SevenBit),
            Just(BodyType::EightBitMime),
            Just(BodyType::BinaryMime)
        ],
        any::<bool>(),
        proptest::option::of(prop_oneof![Just(Ret::Full), Just(Ret::Hdrs)]),
        proptest::option::of("[!-*,-<>-~]{1,20}"),
        proptest::option::of(xtext_value()),
    )
        .prop_map(|(size, body, smtputf8, ret, envid, auth)| MailParams {
            size,
            body,
            smtputf8,
            ret,
            envid,
            auth,
        })
}

fn notify() -> impl Strategy<Value = Notify> {
    prop_oneof![
        Just(Notify { never: true, ..Notify::default() }),
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(success, failure, delay)| Notify {
                never: false,
                success,
                failure,
                delay
            }
        ),
    ]
}

fn rcpt_params() -> impl Strategy<Value = RcptParams> {
    (notify(), proptest::option::of(("[a-z0-9][a-z0-9-]{0,7}", xtext_value())))
        .prop_map(|(notify, orcpt)| RcptParams { notify, orcpt })
}

fn text() -> impl Strategy<Value = String> {
    "[!-~]([ -~]{0,30}[!-~])?"
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        domain().prop_map(Command::Ehlo),
        "[a-z0-9]{1,10}(\\.[a-z0-9]{1,8}){0,2}".prop_map(Command::Helo),
        (proptest::option::of(path()), mail_params()).prop_map(
            |(p, params)| Command::Mail {
                from: p.map_or(ReversePath::Null, ReversePath::Path),
                params
            }
        ),
        (path(), rcpt_params()).prop_map(|(p, params)| Command::Rcpt {
            to: ForwardPath(p),
            params
        }),
        Just(Command::Rcpt {
            to: ForwardPath(Path {
                route: None,
                mailbox: Mailbox::new("PostMaster", "")
            }),
            params: RcptParams::default()
        }),
        Just(Command::Data),
        (any::<u64>(), any::<bool>())
            .prop_map(|(size, last)| Command::Bdat { size, last }),
        Just(Command::Rset),
        Just(Command::Noop),
        Just(Command::Quit),
        text().prop_map(Command::Vrfy),
        text().prop_map(Command::Expn),
        proptest::option::of(text()).prop_map(Command::Help),
        Just(Command::StartTls),
        ("[A-Z0-9_-]{1,20}", proptest::option::of("[A-Za-z0-9+/=]{1,40}"))
            .prop_map(|(mechanism, initial)| Command::Auth {
                mechanism,
                initial
            }),
        Just(Command::Send),
        Just(Command::Soml),
        Just(Command::Saml),
        Just(Command::Turn),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    (2u16..=5, 0u16..=5, 0u16..=9, any::<bool>(), 0u16..1000, 0u16..1000)
        .prop_flat_map(|(a, b, c, enh, subject, detail)| {
            let code = a * 100 + b * 10 + c;
            let enhanced = (enh && a != 3)
                .then(|| EnhancedCode::new(a as u8, subject, detail));
            // Text starting with a letter can never look like an enhanced
            // code; empty text is fine too.
            let line = prop_oneof![Just(String::new()), "[A-Za-z][ -~]{0,40}"];
            proptest::collection::vec(line, 1..5).prop_map(move |lines| {
                Reply {
                    code,
                    enhanced,
                    lines: lines.into_iter().map(Cow::Owned).collect(),
                }
            })
        })
}

fn encode_command(c: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    c.encode(&mut out);
    out
}

/// Replies from `data`, fed in chunks of the given sizes.
fn replies_chunked(
    data: &[u8],
    sizes: &[usize],
) -> Result<Vec<Reply>, millrace_proto::ReplyError> {
    let mut p = ReplyParser::new();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < data.len() {
        let n = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(1).max(1);
        i += 1;
        let end = data.len().min(pos + n);
        buf.extend_from_slice(&data[pos..end]);
        pos = end;
        while let Status::Complete((r, used)) = p.parse(&buf)? {
            assert!(used <= buf.len());
            buf.drain(..used);
            out.push(r);
        }
    }
    Ok(out)
}

/// (line, bare_lf) or None for "too long", fed in chunks.
fn lines_chunked(
    data: &[u8],
    limit: usize,
    sizes: &[usize],
) -> Vec<Option<(Vec<u8>, bool)>> {
    let mut r = LineReader::new();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < data.len() {
        let n = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(1).max(1);
        i += 1;
        let end = data.len().min(pos + n);
        buf.extend_from_slice(&data[pos..end]);
        pos = end;
        loop {
            match r.next_line(&buf, limit) {
                LineStatus::Line { len, consumed, bare_lf } => {
                    assert!(consumed <= buf.len());
                    out.push(Some((buf[..len].to_vec(), bare_lf)));
                    buf.drain(..consumed);
                }
                LineStatus::TooLong { consumed } => {
                    assert!(consumed <= buf.len());
                    out.push(None);
                    buf.drain(..consumed);
                }
                LineStatus::Partial { discard } => {
                    buf.drain(..discard);
                    assert!(buf.len() < limit || buf.is_empty());
                    break;
                }
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn command_encode_parse_round_trip(cmd in command()) {
        let line = encode_command(&cmd);
        prop_assume!(line.len() <= millrace_proto::MAX_COMMAND_LINE);
        prop_assert_eq!(parse_command(&line), Ok(cmd.clone()));
        // Without the CRLF too.
        prop_assert_eq!(parse_command(&line[..line.len() - 2]), Ok(cmd));
    }

    #[test]
    fn utf8_rcpt_round_trip(
        local in "é[a-zé-ü]{0,9}",
        dom in "[a-zà-ö]{1,10}\\.[a-z]{2,5}",
    ) {
        let cmd = Command::Rcpt {
            to: ForwardPath(Path {
                route: None,
                mailbox: Mailbox::new(&local, &dom),
            }),
            params: RcptParams::default(),
        };
        let line = encode_command(&cmd);
        prop_assert_eq!(parse_command_with(&line, true), Ok(cmd));
        prop_assert!(parse_command_with(&line, false).is_err());
    }

    #[test]
    fn reply_encode_parse_round_trip(r in reply()) {
        let mut bytes = Vec::new();
        r.encode(&mut bytes);
        let mut p = ReplyParser::new();
        prop_assert_eq!(
            p.parse(&bytes),
            Ok(Status::Complete((r, bytes.len())))
        );
    }

    #[test]
    fn reply_parser_chunked_equals_whole(
        rs in proptest::collection::vec(reply(), 1..6),
        sizes in proptest::collection::vec(1usize..40, 1..10),
    ) {
        let mut bytes = Vec::new();
        for r in &rs {
            r.encode(&mut bytes);
        }
        let whole = replies_chunked(&bytes, &[bytes.len()]);
        prop_assert_eq!(&whole, &Ok(rs));
        prop_assert_eq!(replies_chunked(&bytes, &sizes), whole);
    }

    #[test]
    fn reply_parser_chunked_equals_whole_on_noise(
        data in proptest::collection::vec(
            prop_oneof![
                Just(b'2'), Just(b'5'), Just(b'0'), Just(b' '), Just(b'-'),
                Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()
            ],
            0..300,
        ),
        sizes in proptest::collection::vec(1usize..40, 1..10),
    ) {
        let whole = replies_chunked(&data, &[data.len()]);
        prop_assert_eq!(replies_chunked(&data, &sizes), whole);
    }

    #[test]
    fn line_reader_chunked_equals_whole(
        data in proptest::collection::vec(
            prop_oneof![
                4 => Just(b'x'), 1 => Just(b'\r'), 1 => Just(b'\n'),
                1 => any::<u8>()
            ],
            0..2000,
        ),
        sizes in proptest::collection::vec(1usize..700, 1..10),
        limit in prop_oneof![Just(512usize), 1usize..40],
    ) {
        let whole = lines_chunked(&data, limit, &[data.len()]);
        prop_assert_eq!(lines_chunked(&data, limit, &sizes), whole);
    }

    #[test]
    fn no_panic_on_arbitrary_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let _ = parse_command(&data);
        let _ = parse_command_with(&data, true);
        let _ = ReversePath::parse(&data, true);
        let _ = ForwardPath::parse(&data, false);
        let _ = MailParams::parse(&data);
        let _ = RcptParams::parse(&data);
        let _ = millrace_proto::xtext_decode(&data);
        let _ = EnhancedCode::parse(&data);
        let _ = ReplyParser::new().parse(&data);
        let _ = LineReader::new().next_line(&data, 512);
    }

    #[test]
    fn no_panic_on_smtpish_command_lines(
        verb in prop_oneof![
            Just("MAIL FROM:"), Just("RCPT TO:"), Just("EHLO "), Just("BDAT "),
            Just("AUTH "), Just("VRFY ")
        ],
        rest in "[<>@.:,\"\\\\ a-zA-Z0-9=+\\[\\];é-]{0,80}",
    ) {
        let line = format!("{verb}{rest}");
        for utf8 in [false, true] {
            if let Ok(cmd) = parse_command_with(line.as_bytes(), utf8) {
                let enc = encode_command(&cmd);
                if enc.len() <= millrace_proto::MAX_COMMAND_LINE {
                    prop_assert!(parse_command_with(&enc, utf8).is_ok());
                }
            }
        }
    }
}
