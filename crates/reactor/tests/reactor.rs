//! The reactor over real loopback sockets: an echo handler on two threads,
//! cross-thread messages, timers, graceful shutdown.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use millrace_reactor::{
    Context, Handler, MAX_HANDLER_TOKEN, Reactor, ReactorConfig,
};
use mio::net::TcpStream;
use mio::{Interest, Token};

/// What the echo handler reports to the test.
#[derive(Debug, PartialEq)]
enum Note {
    Accepted(usize),
    Message(usize, u64),
    Timer(u64),
    Stopping(usize),
}

struct Echo {
    conns: HashMap<usize, TcpStream>,
    next: usize,
    notes: mpsc::Sender<Note>,
}

enum Msg {
    Num(u64),
    SetTimers(Vec<(u64, u64)>, Vec<u64>),
}

impl Handler for Echo {
    type Msg = Msg;

    fn accept(
        &mut self,
        cx: &mut Context<'_>,
        mut s: TcpStream,
        _: SocketAddr,
        _: SocketAddr,
    ) {
        let key = self.next;
        self.next += 1;
        assert!(key < MAX_HANDLER_TOKEN);
        cx.registry()
            .register(&mut s, Token(key), Interest::READABLE)
            .unwrap();
        self.conns.insert(key, s);
        let _ = self.notes.send(Note::Accepted(cx.thread_index()));
    }

    fn event(&mut self, _: &mut Context<'_>, ev: &mio::event::Event) {
        let key = ev.token().0;
        let Some(s) = self.conns.get_mut(&key) else { return };
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    self.conns.remove(&key);
                    return;
                }
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.conns.remove(&key);
                    return;
                }
            }
        }
    }

    fn timer(&mut self, _: &mut Context<'_>, _: Token, data: u64) {
        let _ = self.notes.send(Note::Timer(data));
    }

    fn message(&mut self, cx: &mut Context<'_>, msg: Msg) {
        match msg {
            Msg::Num(n) => {
                let _ = self.notes.send(Note::Message(cx.thread_index(), n));
            }
            Msg::SetTimers(arm, cancel) => {
                let mut ids = HashMap::new();
                for (ms, data) in arm {
                    let at = cx.now() + Duration::from_millis(ms);
                    ids.insert(data, cx.set_timer(at, Token(0), data));
                }
                for data in cancel {
                    cx.cancel_timer(ids[&data]);
                }
            }
        }
    }

    fn shutdown(&mut self, cx: &mut Context<'_>) -> bool {
        let _ = self.notes.send(Note::Stopping(cx.thread_index()));
        self.conns.is_empty()
    }
}

fn start(
    threads: usize,
    addr: &str,
) -> (millrace_reactor::ReactorHandle<Msg>, mpsc::Receiver<Note>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let cfg = ReactorConfig {
        threads,
        listen: vec![addr.parse().unwrap()],
        backlog: 1024,
        name: "test".into(),
    };
    let h = Reactor::start(cfg, move |_| Echo {
        conns: HashMap::new(),
        next: 0,
        notes: tx.lock().unwrap().clone(),
    })
    .unwrap();
    (h, rx)
}

fn echo_once(addr: SocketAddr, payload: &[u8]) {
    let mut c = StdStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(payload).unwrap();
    let mut got = vec![0u8; payload.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, payload);
}

#[test]
fn echo_on_two_threads_same_port() {
    let (h, rx) = start(2, "127.0.0.1:0");
    let addr = h.local_addrs()[0];
    assert_ne!(addr.port(), 0);
    for i in 0..64u32 {
        echo_once(addr, format!("hello {i}\n").as_bytes());
    }
    let mut per_thread = [0usize; 2];
    for n in rx.try_iter() {
        if let Note::Accepted(t) = n {
            per_thread[t] += 1;
        }
    }
    assert_eq!(per_thread[0] + per_thread[1], 64, "{per_thread:?}");
    h.shutdown(Duration::from_secs(5));
    h.join();
}

#[test]
fn ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("note: ::1 cannot be bound on this machine; skipping");
        return;
    }
    let (h, _rx) = start(1, "[::1]:0");
    echo_once(h.local_addrs()[0], b"six\n");
    h.shutdown(Duration::from_secs(5));
    h.join();
}

#[test]
fn remote_messages_arrive_in_order() {
    let (h, rx) = start(2, "127.0.0.1:0");
    let r = h.remote(1);
    let sender = std::thread::spawn(move || {
        for i in 0..10_000u64 {
            r.send(Msg::Num(i)).unwrap();
        }
    });
    sender.join().unwrap();
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while got.len() < 10_000 && Instant::now() < end {
        if let Ok(Note::Message(t, n)) =
            rx.recv_timeout(Duration::from_secs(30))
        {
            assert_eq!(t, 1);
            got.push(n);
        }
    }
    assert_eq!(got, (0..10_000).collect::<Vec<_>>());
    h.shutdown(Duration::from_secs(5));
    h.join();
}

#[test]
fn timers_fire_in_order_and_cancelled_ones_never() {
    let (h, rx) = start(1, "127.0.0.1:0");
    h.remote(0)
        .send(Msg::SetTimers(
            vec![(60, 3), (20, 1), (40, 2), (30, 9)],
            vec![9],
        ))
        .unwrap();
    let mut fired = Vec::new();
    while fired.len() < 3 {
        if let Note::Timer(d) =
            rx.recv_timeout(Duration::from_secs(30)).unwrap()
        {
            fired.push(d);
        }
    }
    assert_eq!(fired, vec![1, 2, 3]);
    // The cancelled one (9) would have fired before 3.
    assert!(rx.try_iter().all(|n| n != Note::Timer(9)));
    h.shutdown(Duration::from_secs(5));
    h.join();
}

#[test]
fn shutdown_waits_for_open_connections() {
    let (h, rx) = start(1, "127.0.0.1:0");
    let addr = h.local_addrs()[0];
    let mut c = StdStream::connect(addr).unwrap();
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    h.shutdown(Duration::from_secs(30));
    // The handler reports it is stopping, but keeps running while the
    // connection is open.
    loop {
        if let Note::Stopping(_) =
            rx.recv_timeout(Duration::from_secs(30)).unwrap()
        {
            break;
        }
    }
    // New connections are refused (listener closed).
    assert!(
        StdStream::connect(addr)
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"y")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)
            })
            .is_err()
    );
    c.write_all(b"z").unwrap();
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"z");
    drop(c);
    h.join();
}
