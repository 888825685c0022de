//! Routing by DNS against a loopback DNS server: MX order with fallback to
//! the next exchanger, implicit MX, null MX, NXDOMAIN.

use std::net::Ipv4Addr;

use crate::util::Relay;
use crate::util::dns::{DnsServer, Rr};
use crate::util::sink::Sink;

/// A free port on 127.0.0.1 (exchangers are reached on it via the
/// MILLRACE_MX_PORT test hook).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn relay(dns: &DnsServer, port: u16) -> Relay {
    Relay::start_env(
        &format!("[dns]\nresolvers = [\"{}\"]", dns.addr),
        &[("MILLRACE_MX_PORT", port.to_string())],
    )
}

/// Sends from `<>` (no bounce comes back to muddle the events).
fn send(relay: &Relay, rcpt: &str) {
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    s.send_mail("", &[rcpt], "Subject: dns\r\n\r\nhi\r\n");
}

#[test]
fn mx_order_and_fallback_implicit_mx() {
    let port = free_port();
    // The preferred exchanger is 127.0.0.2, the backup 127.0.0.1.
    let best = Sink::start_on(format!("127.0.0.2:{port}").parse().unwrap());
    let backup = Sink::start_on(format!("127.0.0.1:{port}").parse().unwrap());
    let dns = DnsServer::start();
    dns.add("order.test", Rr::Mx(20, "mx-b.order.test".into()));
    dns.add("order.test", Rr::Mx(10, "mx-a.order.test".into()));
    dns.add("mx-a.order.test", Rr::A(Ipv4Addr::new(127, 0, 0, 2)));
    dns.add("mx-b.order.test", Rr::A(Ipv4Addr::new(127, 0, 0, 1)));
    // Preferred exchanger unreachable (nothing on 127.0.0.3): the next.
    dns.add("fallback.test", Rr::Mx(10, "dead.fallback.test".into()));
    dns.add("fallback.test", Rr::Mx(20, "live.fallback.test".into()));
    dns.add("dead.fallback.test", Rr::A(Ipv4Addr::new(127, 0, 0, 3)));
    dns.add("live.fallback.test", Rr::A(Ipv4Addr::new(127, 0, 0, 1)));
    // No MX: the domain's own address.
    dns.add("implicit.test", Rr::A(Ipv4Addr::new(127, 0, 0, 2)));
    let relay = relay(&dns, port);
    send(&relay, "u@order.test");
    send(&relay, "v@fallback.test");
    send(&relay, "w@implicit.test");
    relay.wait_events("Delivery", 3);
    assert_eq!(best.count_for("u@order.test"), 1);
    assert_eq!(backup.count_for("u@order.test"), 0);
    assert_eq!(backup.count_for("v@fallback.test"), 1);
    assert_eq!(best.count_for("w@implicit.test"), 1);
    let ev = relay.events("Delivery");
    let order = ev.iter().find(|e| e["recipient"] == "u@order.test").unwrap();
    assert_eq!(order["remote"], "mx-a.order.test");
}

#[test]
fn null_mx_and_nxdomain_bounce_without_connecting() {
    let port = free_port();
    let sink = Sink::start_on(format!("127.0.0.1:{port}").parse().unwrap());
    let dns = DnsServer::start();
    dns.add("nomail.test", Rr::Mx(0, ".".into()));
    dns.nxdomain("nowhere.test");
    let relay = relay(&dns, port);
    send(&relay, "x@nomail.test");
    send(&relay, "y@nowhere.test");
    let b = relay.wait_events("Bounce", 2);
    let reply = |r: &str| {
        b.iter()
            .find(|e| e["recipient"] == r)
            .map(|e| e["reply"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert!(reply("x@nomail.test").starts_with("556 5.1.10"), "{b:?}");
    assert!(reply("y@nowhere.test").starts_with("550 5.1.2"), "{b:?}");
    assert_eq!(sink.connections(), 0, "no connection attempt");
    assert!(dns.queries.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[test]
fn null_mx_produces_a_dsn_without_any_connection_attempt() {
    let port = free_port();
    // The sender's domain is routed to this sink, so the DSN lands here.
    let sink = Sink::start();
    // A trap: were the null MX ignored, implicit MX would find this
    // address and connect to it.
    let trap = Sink::start_on(format!("127.0.0.1:{port}").parse().unwrap());
    let dns = DnsServer::start();
    dns.add("nomail.test", Rr::Mx(0, ".".into()));
    dns.add("nomail.test", Rr::A(Ipv4Addr::new(127, 0, 0, 1)));
    let relay = Relay::start_env(
        &format!(
            "[dns]\nresolvers = [\"{}\"]\n[routes]\n\"example.org\" = \"{}\"",
            dns.addr, sink.addr
        ),
        &[("MILLRACE_MX_PORT", port.to_string())],
    );
    let mut s = relay.connect();
    s.expect("EHLO client.example", "250");
    s.send_mail(
        "sender@example.org",
        &["x@nomail.test"],
        "Subject: n\r\n\r\nx\r\n",
    );
    relay.wait_events("DsnSent", 1);
    crate::util::wait_for(
        "the DSN at the sink",
        crate::util::DEADLINE,
        || (!sink.received().is_empty()).then_some(()),
    );
    let got = sink.received();
    assert_eq!(got.len(), 1, "only the DSN");
    assert_eq!(got[0].from, "");
    assert_eq!(got[0].rcpts, vec!["sender@example.org".to_string()]);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("Status: 5.1.10"), "{text}");
    assert!(text.contains("does not accept mail at all"), "{text}");
    assert_eq!(trap.connections(), 0, "no connection attempt");
    assert_eq!(sink.connections(), 1, "only the DSN's");
}
