//! Entry point for the cargo-fuzz target `session` (not a public API).

use std::sync::Arc;

use millrace_proto::MAX_COMMAND_LINE;

use crate::{Action, BdatStatus, BodyStatus, Phase, Session, SessionConfig};

/// Counters the harness keeps while acting like the glue.
#[derive(Debug, Default)]
struct Glue {
    /// Unconsumed input.
    buf: Vec<u8>,
    /// DATA accepted (354) plus BDAT LAST commands started.
    ends: usize,
    /// Commit actions seen.
    commits: usize,
}

/// Drives a session with `data`: the first byte picks the configuration
/// and how the rest is split into reads; the harness acts like the glue
/// on every [`Action`] (a commit always succeeds with id `X`) and asserts
/// the invariants: consumed <= len; every reply line starts with three
/// digits; output ends with CRLF; never more commits than DATA / BDAT LAST
/// commands; the command buffer stays under 512 bytes.
#[doc(hidden)]
pub fn fuzz_session(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let mut cfg = SessionConfig::new("fuzz.test");
    cfg.max_message_size = 2048;
    cfg.max_recipients = 4;
    cfg.chunking = seed & 1 == 0;
    cfg.max_pending_output = 1024;
    // Every other seed comes from outside mynetworks.
    let peer = if seed & 2 == 0 { "127.0.0.1:4000" } else { "[::2]:4000" };
    let mut s = Session::new(
        Arc::new(cfg),
        peer.parse().expect("literal"),
        "127.0.0.1:25".parse().expect("literal"),
    );
    s.greet(false);
    check_output(&mut s);
    let step = usize::from(seed >> 2) + 1;
    let mut glue = Glue::default();
    for piece in input.chunks(step) {
        glue.buf.extend_from_slice(piece);
        let open = drive(&mut s, &mut glue);
        check_output(&mut s);
        if !open {
            return;
        }
        if s.phase() == Phase::Command {
            assert!(glue.buf.len() < MAX_COMMAND_LINE, "buffered a long line");
        }
    }
    s.timeout();
    check_output(&mut s);
    assert!(s.wants_close());
}

/// Feeds the buffered input until the session needs more; false once it
/// closed.
fn drive(s: &mut Session, g: &mut Glue) -> bool {
    loop {
        let action = match s.phase() {
            Phase::Closed => return false,
            Phase::AwaitCommit => unreachable!("commits are answered at once"),
            Phase::Command => {
                let (n, action) = s.receive(&g.buf);
                assert!(n <= g.buf.len());
                g.buf.drain(..n);
                match action {
                    Action::Continue => return true,
                    Action::Flush => {
                        check_output(s);
                        continue;
                    }
                    Action::StartBody | Action::Bdat { last: true, .. } => {
                        g.ends += 1;
                        continue;
                    }
                    other => other,
                }
            }
            Phase::Body { .. } => {
                if g.buf.is_empty() {
                    return true;
                }
                match s.body(&g.buf) {
                    BodyStatus::More { .. } => {
                        g.buf.clear();
                        return true;
                    }
                    BodyStatus::End { consumed, action } => {
                        assert!(consumed <= g.buf.len());
                        g.buf.drain(..consumed);
                        action
                    }
                }
            }
            Phase::Bdat { .. } => match s.bdat_chunk(&g.buf) {
                BdatStatus::More { consumed, .. } => {
                    assert_eq!(consumed, g.buf.len());
                    g.buf.clear();
                    return true;
                }
                BdatStatus::Done { consumed, action, .. } => {
                    assert!(consumed <= g.buf.len());
                    g.buf.drain(..consumed);
                    action
                }
            },
        };
        match action {
            Action::Commit(tx) => {
                g.commits += 1;
                assert!(g.commits <= g.ends, "more commits than messages");
                assert!(!tx.recipients.is_empty());
                s.committed(Ok("X"));
            }
            Action::Close => return false,
            _ => {}
        }
    }
}

/// Checks and drains the output.
fn check_output(s: &mut Session) {
    let out = s.output();
    if !out.is_empty() {
        assert!(out.ends_with(b"\r\n"), "output must end with CRLF");
        for line in out[..out.len() - 2].split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(
                line.len() >= 3 && line[..3].iter().all(u8::is_ascii_digit),
                "bad reply line {line:?}"
            );
            assert!(matches!(line.get(3), None | Some(b' ' | b'-')));
        }
    }
    out.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_runs_dialogues_in_every_split() {
        let dialogue: &[u8] =
            b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n\
            DATA\r\nhi\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<e@f>\r\n\
            BDAT 4 LAST\r\nab\r\nNOOP\r\nQUIT\r\n";
        for seed in 0..=255u8 {
            let mut data = vec![seed];
            data.extend_from_slice(dialogue);
            fuzz_session(&data);
        }
        fuzz_session(b"");
        fuzz_session(&[0; 3000]);
        fuzz_session(&[b'\n'; 40]);
    }
}
