//! Outbound delivery: the real binary relays to scripted sinks on
//! loopback, through `[routes]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::util::sink::Sink;
use crate::util::{DEADLINE, Relay, Smtp, queue_id, wait_for};

fn routes(pairs: &[(&str, &Sink)]) -> String {
    let mut s = String::from("[routes]\n");
    for (d, sink) in pairs {
        s.push_str(&format!("{d:?} = \"{}\"\n", sink.addr));
    }
    s
}

#[test]
fn two_domains_each_get_their_copy_once() {
    let a = Sink::start();
    let b = Sink::start();
    let relay = Relay::start(&routes(&[("a.example", &a), ("b.example", &b)]));
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    s.send_mail(
        "sender@example.org",
        &["x@a.example", "y@b.example", "z@b.example"],
        "Subject: two domains\r\n\r\nhello\r\n",
    );
    relay.wait_events("Delivery", 3);
    assert_eq!(a.count_for("x@a.example"), 1);
    assert_eq!(b.count_for("y@b.example"), 1);
    assert_eq!(b.count_for("z@b.example"), 1);
    let got = &a.received()[0];
    assert_eq!(got.from, "sender@example.org");
    let text = String::from_utf8_lossy(&got.data);
    assert!(text.starts_with("Received: from client.example"), "{text}");
    assert!(text.ends_with("Subject: two domains\r\n\r\nhello\r\n"), "{text}");
    // Delivered everywhere: the spool file is gone.
    wait_for("the spool to empty", DEADLINE, || {
        relay.spool_files().is_empty().then_some(())
    });
}

#[test]
fn a_thousand_messages_over_twenty_sessions_arrive_exactly_once() {
    let sink = Sink::start();
    let relay = Relay::start(&format!(
        "[delivery]\nmax_messages_per_connection = 100\n\
         max_connections_per_destination = 32\n{}",
        routes(&[("example.net", &sink)])
    ));
    let mut threads = Vec::new();
    for t in 0..20 {
        let addr = relay.addr;
        threads.push(std::thread::spawn(move || {
            let mut s = Smtp::connect(addr);
            assert_eq!(s.reply().0, 220);
            s.expect("EHLO client.example", "250");
            for n in 0..50 {
                s.send_mail(
                    "a@example.org",
                    &[&format!("u{t}-{n}@example.net")],
                    &format!("Subject: {t}/{n}\r\n\r\n..leading dot\r\n"),
                );
            }
            s.expect("QUIT", "221");
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    relay.wait_events("Delivery", 1000);
    let got = sink.received();
    assert_eq!(got.len(), 1000);
    let mut rcpts: Vec<String> =
        got.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    rcpts.dedup();
    assert_eq!(rcpts.len(), 1000, "duplicates or losses");
    // The dot-stuffed line arrives stuffed (the sink sees wire form).
    assert!(got.iter().all(|m| m.data.ends_with(b"\r\n..leading dot\r\n")));
    // Connection reuse: at most ceil(1000/100) + 32 connections.
    assert!(
        sink.connections() <= 42,
        "{} connections, {} transient failures: {:?}",
        sink.connections(),
        relay.events("TransientFailure").len(),
        relay.events("TransientFailure").first()
    );
}

#[test]
fn deferred_twice_then_accepted_arrives_once() {
    let sink = Sink::start();
    sink.script("slow@example.net", "451 4.3.0 try again later", Some(2));
    let relay = Relay::start(&format!(
        "[delivery]\nretry_intervals = [\"1s\"]\n{}",
        routes(&[("example.net", &sink)])
    ));
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    s.send_mail(
        "a@example.org",
        &["slow@example.net", "fast@example.net"],
        "hi\r\n",
    );
    relay.wait_events("Delivery", 2);
    assert_eq!(relay.events("TransientFailure").len(), 2);
    assert_eq!(sink.count_for("slow@example.net"), 1);
    assert_eq!(sink.count_for("fast@example.net"), 1);
    assert_eq!(sink.rcpt_attempts("slow@example.net"), 3);
    // Only the deferred recipient was retried.
    assert_eq!(sink.rcpt_attempts("fast@example.net"), 1);
}

#[test]
fn always_deferred_expires_at_max_queue_lifetime() {
    let sink = Sink::start();
    sink.script("never@example.net", "451 4.3.0 not today", None);
    let relay = Relay::start(&format!(
        "[delivery]\nretry_intervals = [\"1s\"]\nmax_queue_lifetime = \"4s\"\n\
         delay_warning = \"0s\"\n{}",
        routes(&[("example.net", &sink)])
    ));
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    s.send_mail("a@example.org", &["never@example.net"], "hi\r\n");
    let ev = relay.wait_events("Expiration", 1);
    assert_eq!(ev[0]["recipient"], "never@example.net");
    assert!(ev[0]["reply"].as_str().unwrap().contains("451"), "{ev:?}");
    assert_eq!(sink.count_for("never@example.net"), 0);
    assert!(sink.rcpt_attempts("never@example.net") >= 2);
}

#[test]
fn permanent_failure_is_final() {
    let sink = Sink::start();
    sink.script("nobody@example.net", "550 5.1.1 no such user", None);
    let relay = Relay::start(&routes(&[("example.net", &sink)]));
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    s.send_mail(
        "a@example.org",
        &["nobody@example.net", "ok@example.net"],
        "hi\r\n",
    );
    let b = relay.wait_events("Bounce", 1);
    assert_eq!(b[0]["recipient"], "nobody@example.net");
    assert!(b[0]["reply"].as_str().unwrap().starts_with("550 5.1.1"), "{b:?}");
    relay.wait_events("Delivery", 1);
    assert_eq!(sink.rcpt_attempts("nobody@example.net"), 1);
}

#[test]
fn crash_with_the_sink_down_then_everything_is_delivered() {
    // Reserve a port for the sink, then free it: the relay finds nobody.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = format!(
        "[delivery]\nretry_intervals = [\"1s\"]\n[routes]\n\"example.net\" = \"{port}\"\n"
    );
    let mut relay = Relay::start(&cfg);
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for t in 0..4 {
        let (acked, stop, addr) = (acked.clone(), stop.clone(), relay.addr);
        senders.push(std::thread::spawn(move || {
            let Ok(stream) = std::net::TcpStream::connect(addr) else {
                return;
            };
            let mut s = Smtp { r: std::io::BufReader::new(stream) };
            let _ =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    assert_eq!(s.reply().0, 220);
                    s.expect("EHLO c.example", "250");
                    for n in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let rcpt = format!("r{t}-{n}@example.net");
                        let id =
                            s.send_mail("a@example.org", &[&rcpt], "x\r\n");
                        acked.lock().unwrap().push((id, rcpt));
                    }
                }));
        }));
    }
    wait_for("100 acknowledged", DEADLINE, || {
        (acked.lock().unwrap().len() >= 100).then_some(())
    });
    relay.kill();
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let sink = Sink::start_on(port);
    let dir = relay.into_dir();
    let relay = Relay::start_in(dir, &cfg);
    wait_for("every acknowledged message at the sink", DEADLINE, || {
        acked.iter().all(|(_, r)| sink.count_for(r) >= 1).then_some(())
    });
    // Each acknowledged id was delivered (the Delivery events name it).
    // The sink has a message before the relay hears its 250 and logs the
    // Delivery, so wait for the log too.
    let want: Vec<String> =
        acked.iter().map(|(id, _)| queue_id(&format!("x {id}"))).collect();
    let missing = || -> Vec<String> {
        let delivered: std::collections::HashSet<String> = relay
            .events("Delivery")
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect();
        want.iter().filter(|id| !delivered.contains(*id)).cloned().collect()
    };
    wait_for("a Delivery event for every acknowledged id", DEADLINE, || {
        missing().is_empty().then_some(())
    });
    assert!(missing().is_empty());
}

#[test]
fn utf8_headers_go_only_to_a_next_hop_with_smtputf8() {
    // RFC 6531 3.4: a message with internationalised headers must not be
    // sent to a server without SMTPUTF8; it bounces with 5.6.7 instead.
    let plain = Sink::start();
    let intl = Sink::start();
    intl.set_ehlo_extra(&["DSN", "SMTPUTF8"]);
    let relay = Relay::start(&routes(&[
        ("plain.example", &plain),
        ("intl.example", &intl),
    ]));
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    for rcpt in ["u@plain.example", "u@intl.example"] {
        s.expect("MAIL FROM:<a@example.org> SMTPUTF8", "250");
        s.expect(&format!("RCPT TO:<{rcpt}>"), "250");
        s.expect("DATA", "354");
        s.send("Subject: Grüße\r\n\r\nhallo\r\n.\r\n".as_bytes());
        assert_eq!(s.reply().0, 250);
    }
    let bounce = relay.wait_events("Bounce", 1);
    assert_eq!(bounce[0]["recipient"], "u@plain.example");
    let reply = bounce[0]["reply"].as_str().unwrap();
    assert!(reply.starts_with("554 5.6.7"), "{reply}");
    relay.wait_events("Delivery", 1);
    assert_eq!(intl.count_for("u@intl.example"), 1);
    assert_eq!(plain.received().len(), 0, "nothing sent without SMTPUTF8");
    assert_eq!(plain.rcpt_attempts("u@plain.example"), 0);
}
