//! The reactor over real loopback sockets: an echo handler on two threads,
//! IPv6, cross-thread messages, timers, graceful and forced shutdown,
//! panics, and accept errors (EMFILE) that must not stop the loop.
//!
//! Nothing here sleeps to wait: every wait is a blocking receive or a poll
//! with a deadline, and a timeout is a failure.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use millrace_reactor::{
    Context, Handler, MAX_HANDLER_TOKEN, Reactor, ReactorConfig, ReactorError,
    ReactorHandle, TimerId,
};
use mio::net::TcpStream;
use mio::{Interest, Token};
use slab::Slab;
use socket2::{Domain, Socket, Type};

/// Generous bound on any single wait; hitting it fails the test.
const WAIT: Duration = Duration::from_secs(30);

/// Most echoed bytes buffered per connection before reading pauses.
const OUT_LIMIT: usize = 64 * 1024;

/// What the probe handler reports to the test.
#[derive(Debug, PartialEq)]
enum Note {
    Accepted { thread: usize, peer: SocketAddr, local: SocketAddr },
    Message { thread: usize, sender: u64, seq: u64 },
    Timer { data: u64, late: bool },
    Stopping { thread: usize, open: usize },
    Pending(usize),
}

/// Work the test sends to a reactor thread.
#[derive(Debug)]
enum Msg {
    Num {
        sender: u64,
        seq: u64,
    },
    /// Arm `(offset from now in ms, data)` timers, then cancel by data.
    Arm {
        arm: Vec<(u64, u64)>,
        cancel: Vec<u64>,
    },
    /// Arm two timers due now; whichever fires first cancels the other.
    RaceCancel,
    /// 100k set/cancel cycles, then report the pending timer count.
    Churn,
    /// Drop every connection.
    Release,
    Panic,
}

struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
}

/// Echoes, reports, arms timers on request.
struct Probe {
    conns: Slab<Conn>,
    notes: mpsc::Sender<Note>,
    timers: HashMap<u64, TimerId>,
    /// What `shutdown` returns: true when no connection is open, or never.
    finish_when_idle: bool,
    drops: Arc<AtomicUsize>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// Echoes what is readable, buffering at most [`OUT_LIMIT`]; false when
/// the connection is finished.
fn drive(c: &mut Conn) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => return false,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if c.out.len() >= OUT_LIMIT {
            return true; // The last write blocked: WRITABLE will follow.
        }
        match c.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => c.out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

impl Handler for Probe {
    type Msg = Msg;

    fn accept(
        &mut self,
        cx: &mut Context<'_>,
        mut stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
    ) {
        assert!(stream.nodelay().unwrap(), "TCP_NODELAY set");
        let entry = self.conns.vacant_entry();
        assert!(entry.key() < MAX_HANDLER_TOKEN);
        cx.registry()
            .register(
                &mut stream,
                Token(entry.key()),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        entry.insert(Conn { stream, out: Vec::new() });
        let thread = cx.thread_index();
        let _ = self.notes.send(Note::Accepted { thread, peer, local });
    }

    fn event(&mut self, cx: &mut Context<'_>, ev: &mio::event::Event) {
        let key = ev.token().0;
        // Spurious events for closed connections are ignored.
        let Some(c) = self.conns.get_mut(key) else { return };
        if !drive(c) {
            let mut c = self.conns.remove(key);
            let _ = cx.registry().deregister(&mut c.stream);
        }
    }

    fn timer(&mut self, cx: &mut Context<'_>, token: Token, data: u64) {
        // Not armed by us (or cancelled): must never happen.
        let late = self.timers.remove(&data).is_none();
        if token == Token(7) {
            // RaceCancel: cancel the other one of the pair.
            let other = if data == 100 { 101 } else { 100 };
            if let Some(id) = self.timers.remove(&other) {
                cx.cancel_timer(id);
            }
        }
        let _ = self.notes.send(Note::Timer { data, late });
    }

    fn message(&mut self, cx: &mut Context<'_>, msg: Msg) {
        match msg {
            Msg::Num { sender, seq } => {
                let thread = cx.thread_index();
                let _ = self.notes.send(Note::Message { thread, sender, seq });
            }
            Msg::Arm { arm, cancel } => {
                for (ms, data) in arm {
                    let at = cx.now() + Duration::from_millis(ms);
                    let id = cx.set_timer(at, Token(1), data);
                    self.timers.insert(data, id);
                }
                for data in cancel {
                    let id = self.timers.remove(&data).unwrap();
                    cx.cancel_timer(id);
                    // Cancelling twice is a no-op.
                    cx.cancel_timer(id);
                }
            }
            Msg::RaceCancel => {
                for data in [100, 101] {
                    let id = cx.set_timer(cx.now(), Token(7), data);
                    self.timers.insert(data, id);
                }
            }
            Msg::Churn => {
                let before = cx.timers_pending();
                let far = cx.now() + Duration::from_secs(3600);
                let mut id = cx.set_timer(far, Token(2), 0);
                for i in 0..100_000 {
                    cx.cancel_timer(id);
                    id = cx.set_timer(far, Token(2), i);
                }
                cx.cancel_timer(id);
                let after = cx.timers_pending() - before;
                let _ = self.notes.send(Note::Pending(after));
            }
            Msg::Release => {
                for mut c in self.conns.drain() {
                    let _ = cx.registry().deregister(&mut c.stream);
                }
                let _ = self.notes.send(Note::Pending(self.conns.len()));
            }
            Msg::Panic => panic!("probe asked to panic"),
        }
    }

    fn shutdown(&mut self, cx: &mut Context<'_>) -> bool {
        assert!(cx.stopping());
        let open = self.conns.len();
        let thread = cx.thread_index();
        let _ = self.notes.send(Note::Stopping { thread, open });
        self.finish_when_idle && open == 0
    }
}

struct Rig {
    handle: ReactorHandle<Msg>,
    notes: mpsc::Receiver<Note>,
    drops: Arc<AtomicUsize>,
}

fn cfg(threads: usize, listen: &[&str]) -> ReactorConfig {
    ReactorConfig {
        threads,
        listen: listen.iter().map(|a| a.parse().unwrap()).collect(),
        backlog: 1024,
        name: "probe".into(),
    }
}

fn start_with(cfg: ReactorConfig, finish_when_idle: bool) -> Rig {
    let (tx, notes) = mpsc::channel();
    let drops = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&drops);
    let handle = Reactor::start(cfg, move |_| Probe {
        conns: Slab::new(),
        notes: tx.clone(),
        timers: HashMap::new(),
        finish_when_idle,
        drops: Arc::clone(&d),
    })
    .unwrap();
    Rig { handle, notes, drops }
}

fn start(threads: usize, addr: &str) -> Rig {
    start_with(cfg(threads, &[addr]), true)
}

impl Rig {
    /// The next note that `pick` accepts, skipping others.
    fn wait_for<T>(&self, mut pick: impl FnMut(Note) -> Option<T>) -> T {
        let end = Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let note = self.notes.recv_timeout(left).expect("note in time");
            if let Some(t) = pick(note) {
                return t;
            }
        }
    }

    fn stop(self) {
        self.handle.shutdown(Duration::from_secs(5));
        self.handle.join();
    }
}

/// Sends `payload` and reads it back, writing from a second thread so a
/// large payload cannot deadlock against the echo.
fn echo(addr: SocketAddr, payload: Vec<u8>) {
    let mut c = StdStream::connect(addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut w = c.try_clone().unwrap();
    let len = payload.len();
    let expect = payload.clone();
    let writer = std::thread::spawn(move || w.write_all(&payload).unwrap());
    let mut got = vec![0u8; len];
    c.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == expect, "echo of {len} bytes differs");
}

fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + seed * 7) as u8).collect()
}

#[test]
fn echo_on_two_threads_same_port() {
    let rig = start(2, "127.0.0.1:0");
    assert_eq!(rig.handle.threads(), 2);
    let addrs = rig.handle.local_addrs().to_vec();
    assert_eq!(addrs.len(), 1, "one address, one port for both threads");
    assert_ne!(addrs[0].port(), 0);
    // 8 concurrent clients x 8 connections, some large enough to fill the
    // socket buffers and exercise partial writes.
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let addr = addrs[0];
            std::thread::spawn(move || {
                for i in 0..8 {
                    let len = if i == 0 { 512 * 1024 } else { 100 + i * c };
                    echo(addr, payload(c * 8 + i, len));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let mut per_thread = [0usize; 2];
    for _ in 0..64 {
        let (t, local) = rig.wait_for(|n| match n {
            Note::Accepted { thread, local, .. } => Some((thread, local)),
            _ => None,
        });
        assert_eq!(local, addrs[0]);
        per_thread[t] += 1;
    }
    assert_eq!(per_thread[0] + per_thread[1], 64);
    // The kernel hashes each connection to one of the two listeners; all
    // 64 landing on one has odds of 2^-63.
    assert!(per_thread.iter().all(|&n| n > 0), "{per_thread:?}");
    rig.stop();
}

#[test]
fn ipv4_and_ipv6_listeners_in_config_order() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("note: ::1 cannot be bound on this machine; skipping");
        return;
    }
    let rig = start_with(cfg(2, &["127.0.0.1:0", "[::1]:0"]), true);
    let addrs = rig.handle.local_addrs().to_vec();
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6(), "{addrs:?}");
    echo(addrs[1], b"over six\n".to_vec());
    let (peer, local) = rig.wait_for(|n| match n {
        Note::Accepted { peer, local, .. } => Some((peer, local)),
        _ => None,
    });
    assert!(peer.is_ipv6());
    assert_eq!(local, addrs[1]);
    echo(addrs[0], b"over four\n".to_vec());
    rig.stop();
}

#[test]
fn busy_port_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    // `taken` has no SO_REUSEPORT, so the reactor cannot share its port.
    let err = Reactor::start(cfg(1, &[&addr.to_string()]), |_| Probe {
        conns: Slab::new(),
        notes: mpsc::channel().0,
        timers: HashMap::new(),
        finish_when_idle: true,
        drops: Arc::default(),
    })
    .unwrap_err();
    match err {
        ReactorError::Bind { addr: a, .. } => assert_eq!(a, addr),
        e => panic!("unexpected error {e}"),
    }
}

#[test]
fn remote_messages_all_arrive_in_order_per_sender() {
    // The factory waits at a gate, so the first messages are sent before
    // the handler exists; none may be lost.
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let gate = Mutex::new(gate_rx);
    let (tx, notes) = mpsc::channel();
    let handle = Reactor::start(cfg(2, &[]), move |_| {
        gate.lock().unwrap().recv().unwrap();
        Probe {
            conns: Slab::new(),
            notes: tx.clone(),
            timers: HashMap::new(),
            finish_when_idle: true,
            drops: Arc::default(),
        }
    })
    .unwrap();
    assert!(handle.local_addrs().is_empty());
    let remote = handle.remote(1);
    remote.send(Msg::Num { sender: 9, seq: 0 }).unwrap();
    gate_tx.send(()).unwrap();
    gate_tx.send(()).unwrap();
    let senders: Vec<_> = (0..4u64)
        .map(|s| {
            let r = remote.clone();
            std::thread::spawn(move || {
                for seq in 0..2_500 {
                    r.send(Msg::Num { sender: s, seq }).unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let mut next = HashMap::new();
    let rig = Rig { handle, notes, drops: Arc::default() };
    for _ in 0..10_001 {
        let (thread, sender, seq) = rig.wait_for(|n| match n {
            Note::Message { thread, sender, seq } => {
                Some((thread, sender, seq))
            }
            _ => None,
        });
        assert_eq!(thread, 1);
        let want = next.entry(sender).or_insert(0u64);
        assert_eq!(seq, *want, "sender {sender} out of order");
        *want += 1;
    }
    assert_eq!(next[&9], 1);
    assert!((0..4).all(|s| next[&s] == 2_500), "{next:?}");
    rig.stop();
}

#[test]
fn timers_fire_in_order_and_cancelled_ones_never() {
    let rig = start(1, "127.0.0.1:0");
    rig.handle
        .remote(0)
        .send(Msg::Arm {
            // 0 is due at once; 9 and 8 are cancelled; 4 is the sentinel,
            // later than both cancelled ones.
            arm: vec![(60, 3), (20, 1), (40, 2), (30, 9), (0, 0), (10, 8)],
            cancel: vec![9, 8],
        })
        .unwrap();
    rig.handle
        .remote(0)
        .send(Msg::Arm { arm: vec![(80, 4)], cancel: vec![] })
        .unwrap();
    let mut fired = Vec::new();
    while fired.last() != Some(&4) {
        let (data, late) = rig.wait_for(|n| match n {
            Note::Timer { data, late } => Some((data, late)),
            _ => None,
        });
        assert!(!late, "timer {data} fired but was not armed");
        fired.push(data);
    }
    assert_eq!(fired, vec![0, 1, 2, 3, 4]);
    rig.stop();
}

#[test]
fn timer_cancelled_by_an_earlier_timer_in_the_same_batch_never_fires() {
    let rig = start(1, "127.0.0.1:0");
    let r = rig.handle.remote(0);
    r.send(Msg::RaceCancel).unwrap();
    r.send(Msg::Arm { arm: vec![(30, 5)], cancel: vec![] }).unwrap();
    let mut fired = Vec::new();
    while fired.last() != Some(&5) {
        fired.push(rig.wait_for(|n| match n {
            Note::Timer { data, late } => {
                assert!(!late);
                Some(data)
            }
            _ => None,
        }));
    }
    assert_eq!(fired.len(), 2, "exactly one of the pair fired: {fired:?}");
    assert!(fired[0] == 100 || fired[0] == 101);
    rig.stop();
}

#[test]
fn timer_churn_leaves_nothing_behind() {
    let rig = start(1, "127.0.0.1:0");
    rig.handle.remote(0).send(Msg::Churn).unwrap();
    let left = rig.wait_for(|n| match n {
        Note::Pending(n) => Some(n),
        _ => None,
    });
    assert_eq!(left, 0);
    rig.stop();
}

#[test]
fn shutdown_waits_for_open_connections_then_exits() {
    let rig = start(1, "127.0.0.1:0");
    let addr = rig.handle.local_addrs()[0];
    let mut c1 = StdStream::connect(addr).unwrap();
    let mut c2 = StdStream::connect(addr).unwrap();
    for c in [&mut c1, &mut c2] {
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
    }
    let started = Instant::now();
    let grace = Duration::from_secs(60);
    rig.handle.shutdown(grace);
    let open = rig.wait_for(|n| match n {
        Note::Stopping { open, .. } => Some(open),
        _ => None,
    });
    assert_eq!(open, 2);
    // The listener is closed: a new connection is refused.
    let end = Instant::now() + WAIT;
    while StdStream::connect(addr).is_ok() {
        assert!(Instant::now() < end, "listener still open");
    }
    // Open connections are still served while stopping.
    c1.write_all(b"z").unwrap();
    let mut b = [0u8; 1];
    c1.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"z");
    drop(c1);
    rig.wait_for(|n| match n {
        Note::Stopping { open: 1, .. } => Some(()),
        _ => None,
    });
    drop(c2);
    let Rig { handle, drops, .. } = rig;
    handle.join();
    assert_eq!(drops.load(Ordering::SeqCst), 1, "handler dropped on exit");
    // The thread left because the handler was done, not at the deadline.
    assert!(started.elapsed() < grace / 2, "{:?}", started.elapsed());
}

#[test]
fn grace_deadline_forces_exit() {
    let rig = start_with(cfg(2, &["127.0.0.1:0"]), false);
    let grace = Duration::from_millis(200);
    let started = Instant::now();
    rig.handle.shutdown(grace);
    let remote = rig.handle.remote(0);
    let Rig { handle, drops, .. } = rig;
    handle.join();
    assert!(started.elapsed() >= grace, "{:?}", started.elapsed());
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    assert!(matches!(
        remote.send(Msg::Num { sender: 0, seq: 0 }),
        Err(ReactorError::Stopped)
    ));
}

#[test]
fn dropping_the_handle_stops_the_threads() {
    let rig = start(2, "127.0.0.1:0");
    let drops = Arc::clone(&rig.drops);
    drop(rig);
    assert_eq!(drops.load(Ordering::SeqCst), 2);
}

#[test]
fn handler_panic_reaches_join() {
    let rig = start(2, "127.0.0.1:0");
    rig.handle.remote(1).send(Msg::Panic).unwrap();
    let remote = rig.handle.remote(1);
    let end = Instant::now() + WAIT;
    while remote.send(Msg::Num { sender: 0, seq: 0 }).is_ok() {
        assert!(Instant::now() < end, "panicked thread still receiving");
    }
    // Its listener closed as it unwound; the other thread keeps serving.
    for i in 0..8 {
        echo(rig.handle.local_addrs()[0], payload(i, 10));
    }
    rig.handle.shutdown(Duration::from_secs(5));
    let handle = rig.handle;
    let joined =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handle.join()
        }));
    let payload = joined.expect_err("join re-raises the panic");
    let text = payload.downcast_ref::<&str>().copied().unwrap_or_default();
    assert_eq!(text, "probe asked to panic");
}

/// Env var that turns [`emfile_child`] on, in a child process whose file
/// descriptor limit is low.
const EMFILE_CHILD: &str = "MILLRACE_REACTOR_EMFILE_CHILD";

#[test]
fn accept_emfile_pauses_the_listener_and_resumes() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" "$@""#)
        .arg(exe)
        .args(["emfile_child", "--exact", "--test-threads=1", "--nocapture"])
        .env(EMFILE_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("emfile child: ok"),
        "child failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}

/// Runs only in the child: fill the descriptor table so that accept fails
/// with EMFILE, check the loop still runs, then free descriptors and check
/// every pending connection is accepted after the pause.
#[test]
fn emfile_child() {
    if std::env::var_os(EMFILE_CHILD).is_none() {
        return;
    }
    let rig = start(1, "127.0.0.1:0");
    let addr = rig.handle.local_addrs()[0];
    // Client sockets first, so connecting needs no new descriptor.
    const CLIENTS: usize = 4;
    let socks: Vec<Socket> = (0..CLIENTS)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).unwrap())
        .collect();
    let mut hogs = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hogs.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(24), "EMFILE: {e}");
                break;
            }
        }
        assert!(hogs.len() < 1_000, "the fd limit was not lowered");
    }
    // No descriptor is left for accept.
    let clients: Vec<StdStream> = socks
        .into_iter()
        .map(|s| {
            s.connect(&addr.into()).unwrap();
            s.into()
        })
        .collect();
    // The loop survives the accept errors: it still answers messages.
    rig.handle.remote(0).send(Msg::Release).unwrap();
    rig.wait_for(|n| match n {
        Note::Pending(_) => Some(()),
        Note::Accepted { .. } => panic!("accepted with no fd free"),
        _ => None,
    });
    drop(hogs);
    for _ in 0..CLIENTS {
        rig.wait_for(|n| match n {
            Note::Accepted { .. } => Some(()),
            _ => None,
        });
    }
    for mut c in clients {
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(b"ok").unwrap();
        let mut b = [0u8; 2];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ok");
    }
    rig.stop();
    println!("emfile child: ok");
}
