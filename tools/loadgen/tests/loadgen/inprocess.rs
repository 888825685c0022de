//! `send` against the in-process `sink` on 127.0.0.1:0.

use std::net::SocketAddr;
use std::time::Duration;

use millrace_load::{SendOptions, SendReport, SinkOptions, SinkReport};

use crate::util::{Sink, send};

/// Counts seen by both sides agree exactly.
fn assert_counts_match(s: &SendReport, k: &SinkReport) {
    assert_eq!(s.messages_accepted, k.messages, "{s}\n{k}");
    assert_eq!(s.recipients_accepted, k.recipients, "{s}\n{k}");
    assert_eq!(s.bytes, k.bytes, "{s}\n{k}");
    assert_eq!(s.connections, k.connections, "{s}\n{k}");
    assert_eq!(s.errors.total(), 0, "{s}");
    assert_eq!(k.errors.bare_line_ending, 0, "{k}");
    assert_eq!(k.errors.bad_command, 0, "{k}");
}

fn counts_match(pipelining: bool) {
    let sink = Sink::start(SinkOptions {
        expect: Some(200),
        ..SinkOptions::default()
    });
    let s = send(
        sink.addr,
        SendOptions {
            sessions: 20,
            messages: Some(200),
            recipients: 3,
            size: 3000,
            pipelining,
            ..SendOptions::default()
        },
    );
    let k = sink.wait();
    assert_eq!(s.messages_attempted, 200);
    assert_eq!(s.messages_accepted, 200);
    assert_eq!(s.recipients_accepted, 600);
    assert_eq!(s.code_count("dot", 250), 200);
    assert_eq!(s.code_count("rcpt", 250), 600);
    assert_eq!(s.code_count("greeting", 220), 20);
    assert_eq!(s.connect_to_220.count, 20);
    assert_eq!(s.dot_to_250.count, 200);
    assert_eq!(s.scheduled_to_250.count, 200);
    // 3000 body bytes + headers + the stuffing dots, per message.
    assert!(s.bytes > 200 * 3000, "{s}");
    let pipelined = if pipelining { 200 } else { 0 };
    assert_eq!(s.transactions_pipelined, pipelined);
    assert_counts_match(&s, &k);
}

#[test]
fn counts_match_pipelined() {
    counts_match(true);
}

#[test]
fn counts_match_without_pipelining() {
    counts_match(false);
}

fn scripted(pipelining: bool) {
    let sink = Sink::start(SinkOptions {
        scripts: vec![
            "u1?@=550 5.1.1 No such user".parse().unwrap(),
            "u2?@=451 4.3.0 Try later".parse().unwrap(),
            "u3@example.net=250 2.1.5 Ok;delay=50ms".parse().unwrap(),
        ],
        ..SinkOptions::default()
    });
    let s = send(
        sink.addr,
        SendOptions {
            sessions: 4,
            messages: Some(50),
            to: "u{n}@example.net".into(),
            pipelining,
            ..SendOptions::default()
        },
    );
    let k = sink.stop();
    // u10..u19 are refused for good, u20..u29 for now; the rest pass.
    assert_eq!(s.code_count("rcpt", 550), 10, "{s}");
    assert_eq!(s.code_count("rcpt", 451), 10, "{s}");
    assert_eq!(s.code_count("rcpt", 250), 30, "{s}");
    assert_eq!(s.messages_attempted, 50);
    assert_eq!(s.messages_accepted, 30);
    assert_eq!(s.messages_rejected, 10);
    assert_eq!(s.messages_deferred, 10);
    assert_eq!(s.recipients_refused, 20);
    assert_eq!(k.code_count("rcpt", 550), 10, "{k}");
    assert_eq!(k.code_count("rcpt", 451), 10, "{k}");
    assert_counts_match(&s, &k);
}

#[test]
fn scripted_replies_are_counted_by_code_pipelined() {
    scripted(true);
}

#[test]
fn scripted_replies_are_counted_by_code_without_pipelining() {
    scripted(false);
}

#[test]
fn random_refusal_mix_is_counted_on_both_sides() {
    let sink = Sink::start(SinkOptions {
        tempfail_percent: 20.0,
        permfail_percent: 10.0,
        seed: Some(7),
        ..SinkOptions::default()
    });
    let s = send(
        sink.addr,
        SendOptions {
            sessions: 8,
            messages: Some(300),
            recipients: 2,
            ..SendOptions::default()
        },
    );
    let k = sink.stop();
    let refused_451 = s.code_count("rcpt", 451);
    let refused_550 = s.code_count("rcpt", 550);
    assert_eq!(refused_451, k.code_count("rcpt", 451));
    assert_eq!(refused_550, k.code_count("rcpt", 550));
    assert_eq!(refused_451 + refused_550 + s.code_count("rcpt", 250), 600);
    // 600 draws at 20 % and 10 %: far outside these bounds is a bug.
    assert!((60..=180).contains(&refused_451), "{s}");
    assert!((20..=110).contains(&refused_550), "{s}");
    assert_counts_match(&s, &k);
}

#[test]
fn a_thousand_concurrent_sessions_complete() {
    millrace_load::sys::raise_nofile_limit().unwrap();
    let sink = Sink::start(SinkOptions {
        expect: Some(2000),
        ..SinkOptions::default()
    });
    let s = send(
        sink.addr,
        SendOptions {
            sessions: 1000,
            messages: Some(2000),
            size: 512,
            ..SendOptions::default()
        },
    );
    let k = sink.wait();
    assert_eq!(s.connections, 1000);
    assert_eq!(s.messages_accepted, 2000);
    assert_counts_match(&s, &k);
}

#[test]
fn messages_per_session_reconnects() {
    let sink = Sink::start(SinkOptions::default());
    let s = send(
        sink.addr,
        SendOptions {
            sessions: 5,
            messages: Some(100),
            messages_per_session: Some(3),
            ..SendOptions::default()
        },
    );
    let k = sink.stop();
    assert_eq!(s.messages_accepted, 100);
    // At most 3 messages per connection.
    assert!(s.connections >= 34, "{s}");
    assert_eq!(s.code_count("quit", 221), s.connections);
    assert_counts_match(&s, &k);
}

#[test]
fn open_loop_rate_sends_everything() {
    let sink = Sink::start(SinkOptions {
        expect: Some(100),
        ..SinkOptions::default()
    });
    let s = send(
        sink.addr,
        SendOptions {
            sessions: 4,
            messages: Some(100),
            rate: Some(5000.0),
            ..SendOptions::default()
        },
    );
    let k = sink.wait();
    assert_eq!(s.messages_accepted, 100);
    assert_eq!(s.scheduled_to_250.count, 100);
    assert_counts_match(&s, &k);
}

#[test]
fn duration_ends_the_run() {
    let sink = Sink::start(SinkOptions::default());
    let s = send(
        sink.addr,
        SendOptions {
            sessions: 2,
            messages: None,
            duration: Some(Duration::from_millis(300)),
            rate: Some(100.0),
            ..SendOptions::default()
        },
    );
    let k = sink.stop();
    assert!(s.messages_accepted > 0, "{s}");
    // At most one message per 10 ms of the 300 ms, plus the first.
    assert!(s.messages_accepted <= 31, "{s}");
    assert_counts_match(&s, &k);
}

#[test]
fn domains_spread_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions {
        expect: Some(4),
        dump: Some(dir.path().to_owned()),
        ..SinkOptions::default()
    });
    let s = send(
        sink.addr,
        SendOptions {
            sessions: 1,
            messages: Some(4),
            recipients: 2,
            domains: 3,
            ..SendOptions::default()
        },
    );
    let k = sink.wait();
    assert_counts_match(&s, &k);
    let mut rcpts = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            if let Some(r) = line.strip_prefix("X-Millrace-Envelope-To: ") {
                rcpts.push(r.to_owned());
            }
        }
    }
    rcpts.sort();
    let mut want: Vec<String> =
        (0..8).map(|n| format!("<user{n}@d{}.example.net>", n % 3)).collect();
    want.sort();
    assert_eq!(rcpts, want);
}

#[test]
fn generated_messages_are_stuffed_and_unique() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions {
        expect: Some(5),
        dump: Some(dir.path().to_owned()),
        ..SinkOptions::default()
    });
    let s = send(
        sink.addr,
        SendOptions {
            sessions: 2,
            messages: Some(5),
            size: 2000,
            ..SendOptions::default()
        },
    );
    let k = sink.wait();
    assert_counts_match(&s, &k);
    let mut ids = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        files += 1;
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        for h in ["From: ", "To: ", "Subject: ", "Date: ", "Message-ID: "] {
            assert!(head.contains(&format!("\r\n{h}")), "{h} in {head}");
        }
        let id = head.lines().find(|l| l.starts_with("Message-ID: "));
        ids.push(id.unwrap().to_owned());
        // The body as written: exactly --size bytes, with lines that
        // start with one dot and with two (unstuffed again by the sink).
        assert_eq!(body.len(), 2000);
        assert!(body.contains("\r\n.."));
        assert!(
            body.lines().any(|l| l.starts_with('.') && !l.starts_with(".."))
        );
        assert!(body.ends_with("\r\n"));
    }
    assert_eq!(files, 5);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "Message-IDs must be unique");
}

#[test]
fn body_file_is_sent_dot_stuffed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("message.eml");
    // Bare LF line endings and dot lines: sent as CRLF, stuffed.
    let original = "Subject: dots\n\n.\n..two\n.three\nend\n";
    std::fs::write(&file, original).unwrap();
    let dump = dir.path().join("dump");
    let sink = Sink::start(SinkOptions {
        expect: Some(3),
        dump: Some(dump.clone()),
        ..SinkOptions::default()
    });
    let s = send(
        sink.addr,
        SendOptions {
            sessions: 1,
            messages: Some(3),
            body_file: Some(file),
            ..SendOptions::default()
        },
    );
    let k = sink.wait();
    assert_counts_match(&s, &k);
    let want = original.replace('\n', "\r\n");
    // Wire form: every line starting with a dot gets one more.
    let wire_len = want.len() + 3;
    assert_eq!(s.bytes, 3 * wire_len as u64);
    for entry in std::fs::read_dir(&dump).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let (_, message) = text.split_once(">\r\nSubject").unwrap();
        assert_eq!(format!("Subject{message}"), want);
    }
}

#[test]
fn unreachable_server_times_out_and_is_counted() {
    // A listener that never accepts: the kernel completes the handshake,
    // but no greeting ever comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let s = send(
        addr,
        SendOptions {
            sessions: 2,
            messages: Some(2),
            timeout: Duration::from_millis(200),
            ..SendOptions::default()
        },
    );
    // Each session slot tries three connections, then gives up.
    assert_eq!(s.errors.reply_timeout, 6, "{s}");
    assert_eq!(s.connections, 6);
    assert_eq!(s.messages_accepted, 0);
    assert!(!s.all_connects_failed());
    drop(silent);
}

#[test]
fn server_closing_early_is_counted() {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..3 {
            let (mut c, _) = listener.accept().unwrap();
            c.write_all(b"220 closing soon\r\n").unwrap();
        }
    });
    let s = send(
        addr,
        SendOptions {
            sessions: 1,
            messages: Some(1),
            timeout: Duration::from_secs(10),
            ..SendOptions::default()
        },
    );
    server.join().unwrap();
    assert_eq!(s.errors.closed, 3, "{s}");
    assert_eq!(s.code_count("greeting", 220), 3);
    assert_eq!(s.messages_accepted, 0);
}

#[test]
fn refused_recipients_reset_the_transaction() {
    let sink = Sink::start(SinkOptions {
        scripts: vec!["*=550 5.7.1 Nobody here".parse().unwrap()],
        ..SinkOptions::default()
    });
    for pipelining in [true, false] {
        let s = send(
            sink.addr,
            SendOptions {
                sessions: 1,
                messages: Some(3),
                recipients: 2,
                pipelining,
                ..SendOptions::default()
            },
        );
        assert_eq!(s.messages_rejected, 3, "{s}");
        assert_eq!(s.code_count("rcpt", 550), 6, "{s}");
        if pipelining {
            // DATA went out in the same write and was refused.
            assert_eq!(s.code_count("data", 554), 3, "{s}");
        } else {
            assert_eq!(s.code_count("data", 554), 0, "{s}");
        }
        assert_eq!(s.code_count("rset", 250), 3, "{s}");
        assert_eq!(s.errors.total(), 0, "{s}");
    }
    let k = sink.stop();
    assert_eq!(k.messages, 0);
}
