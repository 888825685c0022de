//! Entry points for the cargo-fuzz targets; each checks invariants, not only
//! "no panic".
//!
//! Every entry point runs the input twice: raw, and mapped onto an SMTP
//! alphabet (each byte picks a token such as `MAIL FROM:`, `<`, `@`, CRLF),
//! so that the fuzzer reaches deep into the grammar quickly.

use crate::command::{Command, parse_command_with};
use crate::line::{LineReader, LineStatus};
use crate::reply::{Reply, ReplyError, ReplyParser};
use crate::{MAX_COMMAND_LINE, Status};

/// Tokens of the SMTP alphabet; input byte `b` maps to
/// `TOKENS[b % TOKENS.len()]`.
const TOKENS: &[&[u8]] = &[
    b"MAIL FROM:",
    b"RCPT TO:",
    b"EHLO ",
    b"HELO ",
    b"DATA",
    b"BDAT ",
    b" LAST",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"VRFY ",
    b"EXPN ",
    b"HELP",
    b"STARTTLS",
    b"AUTH ",
    b"SEND FROM:",
    b"TURN",
    b"<",
    b">",
    b"<>",
    b"@",
    b".",
    b":",
    b",",
    b";",
    b"\"",
    b"\\",
    b" ",
    b"  ",
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b"\t",
    b"a",
    b"Z",
    b"0",
    b"9",
    b"-",
    b"_",
    b"+",
    b"=",
    b"+2B",
    b"[",
    b"]",
    b"127.0.0.1",
    b"IPv6:",
    b"::1",
    b"x-tag:",
    b"example.com",
    b"postmaster",
    b"\xc3\xa9",
    b"\xff",
    b" SIZE=",
    b" BODY=",
    b"8BITMIME",
    b"BINARYMIME",
    b" SMTPUTF8",
    b" RET=",
    b"HDRS",
    b" ENVID=",
    b" AUTH=",
    b" NOTIFY=",
    b"NEVER",
    b"SUCCESS,FAILURE",
    b"DELAY",
    b" ORCPT=",
    b"rfc822;",
    b"250",
    b"250-",
    b"250 ",
    b"550 ",
    b"421-",
    b"2.0.0 ",
    b"5.1.1",
    b"4.7.0 ",
    b"123456789012",
];

/// Maps `data` onto the SMTP alphabet.
pub fn to_smtp_alphabet(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4);
    for &b in data {
        out.extend_from_slice(TOKENS[usize::from(b) % TOKENS.len()]);
    }
    out
}

/// Chunk sizes (1 to 17) derived from the input itself.
fn chunk_sizes(data: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let n = data.len().max(1);
    (0..).map(move |i| {
        usize::from(data.get(i % n).copied().unwrap_or(0)) % 17 + 1
    })
}

/// Command parser: never panics; whatever parses encodes to a line that
/// parses again to the same encoding (and the same command, source routes
/// aside).
pub fn command(data: &[u8]) {
    command_input(data);
    command_input(&to_smtp_alphabet(data));
}

fn command_input(data: &[u8]) {
    check_command(data);
    for line in data.split(|&b| b == b'\n') {
        check_command(line);
    }
}

fn check_command(line: &[u8]) {
    for smtputf8 in [false, true] {
        let Ok(cmd) = parse_command_with(line, smtputf8) else {
            continue;
        };
        let mut enc = Vec::new();
        cmd.encode(&mut enc);
        assert!(enc.ends_with(b"\r\n"), "{cmd:?}");
        if enc.len() > MAX_COMMAND_LINE {
            // Re-encoding can grow (xtext escapes of decoded values).
            continue;
        }
        let again = parse_command_with(&enc, smtputf8).unwrap_or_else(|e| {
            panic!("{cmd:?} encoded as {:?}: {e}", enc.escape_ascii())
        });
        let mut enc2 = Vec::new();
        again.encode(&mut enc2);
        assert_eq!(enc, enc2, "unstable encoding");
        assert_eq!(without_route(cmd), again);
    }
}

/// The command as its encoding carries it (source routes are dropped).
fn without_route(cmd: Command) -> Command {
    match cmd {
        Command::Mail { from: crate::ReversePath::Path(mut p), params } => {
            p.route = None;
            Command::Mail { from: crate::ReversePath::Path(p), params }
        }
        Command::Rcpt { mut to, params } => {
            to.0.route = None;
            Command::Rcpt { to, params }
        }
        other => other,
    }
}

/// What feeding a byte stream to [`ReplyParser`] produced.
type ReplyRun = (Vec<(Reply, usize)>, Option<ReplyError>);

/// Feeds `data` to a reply parser in chunks of the given sizes, dropping
/// consumed bytes as a client would.
fn run_replies(data: &[u8], sizes: impl Iterator<Item = usize>) -> ReplyRun {
    let mut parser = ReplyParser::new();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut pos = 0;
    for size in sizes {
        if pos >= data.len() {
            break;
        }
        let end = data.len().min(pos + size.max(1));
        buf.extend_from_slice(&data[pos..end]);
        pos = end;
        loop {
            match parser.parse(&buf) {
                Ok(Status::Complete((reply, used))) => {
                    assert!(used > 0 && used <= buf.len());
                    assert!((200..600).contains(&reply.code));
                    assert!(!reply.lines.is_empty());
                    assert!(reply.lines.len() <= ReplyParser::MAX_LINES);
                    buf.drain(..used);
                    replies.push((reply, used));
                }
                Ok(Status::Partial) => {
                    // Buffering is bounded by the reply limits.
                    assert!(
                        buf.len()
                            < ReplyParser::MAX_LINE
                                * (ReplyParser::MAX_LINES + 1)
                    );
                    break;
                }
                Err(e) => return (replies, Some(e)),
            }
        }
    }
    (replies, None)
}

/// Reply parser: chunked equals whole, consumed <= len, and every reply
/// parsed encodes to bytes that parse back to the same reply.
pub fn reply(data: &[u8]) {
    reply_input(data);
    reply_input(&to_smtp_alphabet(data));
}

fn reply_input(data: &[u8]) {
    let whole = run_replies(data, std::iter::once(data.len()));
    assert_eq!(whole, run_replies(data, chunk_sizes(data)));
    assert_eq!(whole, run_replies(data, std::iter::repeat(1)));
    for (reply, _) in &whole.0 {
        let mut enc = Vec::new();
        reply.encode(&mut enc);
        let longest = enc.split(|&b| b == b'\n').map(|l| l.len() + 1).max();
        if longest.unwrap_or(0) > ReplyParser::MAX_LINE {
            // Lossy decoding can lengthen a line; nothing to compare.
            continue;
        }
        match ReplyParser::new().parse(&enc) {
            Ok(Status::Complete((again, used))) => {
                assert_eq!(used, enc.len());
                assert_eq!(&again, reply);
            }
            other => panic!("{reply:?} reparsed as {other:?}"),
        }
    }
}

/// One event from a line splitter.
#[derive(Debug, PartialEq, Eq)]
enum LineEvent {
    Line(Vec<u8>, bool),
    TooLong,
}

/// Runs a [`LineReader`] over `data` in chunks, as a session would.
fn run_lines(
    data: &[u8],
    limit: usize,
    sizes: impl Iterator<Item = usize>,
) -> Vec<LineEvent> {
    let mut reader = LineReader::new();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let mut pos = 0;
    for size in sizes {
        if pos >= data.len() {
            break;
        }
        let end = data.len().min(pos + size.max(1));
        buf.extend_from_slice(&data[pos..end]);
        pos = end;
        loop {
            match reader.next_line(&buf, limit) {
                LineStatus::Line { len, consumed, bare_lf } => {
                    assert!(consumed <= buf.len() && consumed <= limit);
                    assert_eq!(buf[consumed - 1], b'\n');
                    assert_eq!(consumed - len, if bare_lf { 1 } else { 2 });
                    events.push(LineEvent::Line(buf[..len].to_vec(), bare_lf));
                    buf.drain(..consumed);
                }
                LineStatus::TooLong { consumed } => {
                    assert!(consumed <= buf.len());
                    assert_eq!(buf[consumed - 1], b'\n');
                    events.push(LineEvent::TooLong);
                    buf.drain(..consumed);
                }
                LineStatus::Partial { discard } => {
                    assert!(discard <= buf.len());
                    buf.drain(..discard);
                    assert!(buf.len() < limit || buf.is_empty(), "unbounded");
                    break;
                }
            }
        }
    }
    events
}

/// The obvious splitter, for comparison.
fn naive_lines(data: &[u8], limit: usize) -> Vec<LineEvent> {
    let mut events = Vec::new();
    let mut rest = data;
    while let Some(lf) = rest.iter().position(|&b| b == b'\n') {
        let content = &rest[..lf];
        if lf + 1 > limit {
            events.push(LineEvent::TooLong);
        } else if let [line @ .., b'\r'] = content {
            events.push(LineEvent::Line(line.to_vec(), false));
        } else {
            events.push(LineEvent::Line(content.to_vec(), true));
        }
        rest = &rest[lf + 1..];
    }
    events
}

/// Line splitter: chunked equals whole equals the naive splitter, consumed
/// <= len, and buffering stays under the limit.
pub fn line(data: &[u8]) {
    line_input(data);
    line_input(&to_smtp_alphabet(data));
}

fn line_input(data: &[u8]) {
    for limit in [MAX_COMMAND_LINE, 8] {
        let whole = run_lines(data, limit, std::iter::once(data.len()));
        assert_eq!(whole, naive_lines(data, limit));
        assert_eq!(whole, run_lines(data, limit, chunk_sizes(data)));
        assert_eq!(whole, run_lines(data, limit, std::iter::repeat(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEDS: &[&[u8]] = &[
        b"",
        b"MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME\r\n",
        b"RCPT TO:<@HOSTX.ARPA:JOE@HOSTW.ARPA> NOTIFY=NEVER\r\nDATA\r\n",
        b"MAIL FROM:<\"j d\"@[IPv6:::1]> ENVID=+2B AUTH=<> SMTPUTF8\r\n",
        b"250-mx\r\n250-2.0.0 x\r\n250 SIZE\r\n550 5.1.1 no\r\n",
        b"250-2.0.0 a\r\n250 2.0.0\r\n421 4.7.0\n",
        b"\x00\xff\r\r\n\n\n",
    ];

    #[test]
    fn seeds_hold_the_invariants() {
        for seed in SEEDS {
            command(seed);
            reply(seed);
            line(seed);
        }
        let long = [b'x'; 3000];
        command(&long);
        reply(&long);
        line(&long);
    }

    #[test]
    fn pseudo_random_inputs_hold_the_invariants() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            command(&data);
            reply(&data);
            line(&data);
        }
    }

    #[test]
    fn alphabet_maps_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let mapped = to_smtp_alphabet(&all);
        assert!(mapped.len() > all.len());
        assert!(memchr::memmem::find(&mapped, b"MAIL FROM:").is_some());
    }
}
