//! The glue between [`Session`], the reactor and the spool: sockets,
//! timers and the durable commit. One [`Inbound`] handler runs on each
//! reactor thread and owns that thread's connections in a slab.
//!
//! Body bytes go from the socket straight into the mmap'd spool file
//! ([`Incoming::spare`]); the session's scanner runs over them in place.
//! Bytes that follow the final dot go back to the command buffer and are
//! handled after the commit, so replies stay in order. The client gets
//! its `250` only after the spool's group commit has made the message
//! durable (the commit callback wakes this thread through its
//! [`Remote`]).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use millrace_proto::{BodyType, DotStuffer, Ret, ReversePath};
use millrace_reactor::{Context, Handler, Remote, TimerId};
use millrace_spool::{Envelope, Incoming, MessageId, Recipient, Spool};
use mio::net::TcpStream;
use mio::{Interest, Token};
use slab::Slab;

use crate::{
    Action, BdatStatus, BodyStatus, Phase, Session, SessionConfig,
    TimeoutKind, Transaction,
};

/// Bytes read from a socket per call, and the most command input
/// buffered per connection (the session consumes whole lines and
/// discards over-long ones, so this is never exceeded in practice).
const READ_CHUNK: usize = 64 * 1024;

/// Pending reply bytes above which a connection stops reading input
/// until the client reads its replies.
const MAX_PENDING_OUTPUT: usize = 256 * 1024;

/// Settings of the inbound side.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// The session settings.
    pub session: Arc<SessionConfig>,
    /// Idle time allowed while waiting for a command.
    pub command_timeout: Duration,
    /// Idle time allowed while waiting for body bytes.
    pub data_timeout: Duration,
    /// Most concurrent connections for the whole server.
    pub max_connections: usize,
}

/// What the server tells the rest of the relay.
pub trait Hooks: Send + Sync + 'static {
    /// A message is durable in the spool (called on the spool's
    /// committer thread, just before the client gets its 250).
    fn committed(&self, id: MessageId, envelope: &Envelope, size: u64);
}

/// Work sent to a reactor thread from elsewhere.
#[derive(Debug)]
pub enum InboundMsg {
    /// A group commit finished for connection `key`.
    Committed {
        /// Slab key of the connection.
        key: usize,
        /// The connection's serial (a reused slot is not confused).
        serial: u64,
        /// The queue id, or why the commit failed.
        result: Result<MessageId, String>,
    },
}

/// State shared by the inbound handlers of all reactor threads.
#[derive(Debug)]
pub struct InboundShared {
    cfg: InboundConfig,
    spool: Spool,
    hooks: Arc<dyn Hooks>,
    active: AtomicUsize,
    remotes: OnceLock<Vec<Remote<InboundMsg>>>,
}

impl std::fmt::Debug for dyn Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks")
    }
}

impl InboundShared {
    /// Shared state for [`Inbound::new`].
    pub fn new(
        cfg: InboundConfig,
        spool: Spool,
        hooks: Arc<dyn Hooks>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            spool,
            hooks,
            active: AtomicUsize::new(0),
            remotes: OnceLock::new(),
        })
    }

    /// Hands over the reactor's remotes once it has started (commit
    /// completions are routed through them).
    pub fn set_remotes(&self, remotes: Vec<Remote<InboundMsg>>) {
        let _ = self.remotes.set(remotes);
    }

    /// Connections open now, over all threads.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    fn remote(&self, thread: usize) -> &Remote<InboundMsg> {
        // Remotes are set right after the reactor starts; a commit can
        // only finish after a connection was accepted, so this waits at
        // most for that instant at start-up.
        loop {
            if let Some(r) = self.remotes.get() {
                return &r[thread];
            }
            std::thread::yield_now();
        }
    }
}

/// One connection.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    session: Session,
    serial: u64,
    /// Command input not yet consumed by the session.
    input: Vec<u8>,
    /// The message being received, and how much of its bytes the session
    /// has seen.
    spool: Option<Incoming>,
    fed: usize,
    /// Dot-stuffing state for BDAT data.
    stuffer: Option<DotStuffer>,
    /// Idle deadline, and the timer that checks it.
    deadline: Instant,
    timer: Option<TimerId>,
    /// The socket reported end of input or an error.
    eof: bool,
    /// The last read came back short: the socket had nothing more, so
    /// the next read would only say EAGAIN. Edge-triggered readiness
    /// reports any later arrival; its event clears this.
    drained: bool,
}

/// The inbound handler of one reactor thread.
#[derive(Debug)]
pub struct Inbound {
    shared: Arc<InboundShared>,
    conns: Slab<Conn>,
    serial: u64,
    buf: Box<[u8]>,
    stuffed: Vec<u8>,
    thread: usize,
    stopping: bool,
}

impl Inbound {
    /// A handler for one reactor thread.
    pub fn new(shared: Arc<InboundShared>) -> Self {
        Self {
            shared,
            conns: Slab::new(),
            serial: 0,
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
            stuffed: Vec::new(),
            thread: 0,
            stopping: false,
        }
    }

    fn timeout_for(&self, kind: TimeoutKind) -> Duration {
        match kind {
            TimeoutKind::Command => self.shared.cfg.command_timeout,
            TimeoutKind::Data => self.shared.cfg.data_timeout,
        }
    }

    /// Moves the idle deadline forward, arming the timer if none is set.
    fn touch(&mut self, cx: &mut Context<'_>, key: usize) {
        let Some(c) = self.conns.get(key) else { return };
        let kind = c.session.timeout_kind();
        let deadline = cx.now() + self.timeout_for(kind);
        let c = &mut self.conns[key];
        c.deadline = deadline;
        if c.timer.is_none() {
            c.timer = Some(cx.set_timer(deadline, Token(key), c.serial));
        }
    }

    /// Runs the session on whatever input is available, then writes.
    fn drive(&mut self, cx: &mut Context<'_>, key: usize) {
        let mut activity = false;
        loop {
            let Some(c) = self.conns.get_mut(key) else { return };
            if c.session.output().len() > MAX_PENDING_OUTPUT {
                if !flush(c) {
                    break;
                }
                continue;
            }
            match c.session.phase() {
                Phase::Closed | Phase::AwaitCommit => break,
                Phase::Command => {
                    if !c.input.is_empty() {
                        let (n, action) = c.session.receive(&c.input);
                        c.input.drain(..n);
                        activity |= n > 0;
                        match action {
                            Action::Continue if n > 0 => continue,
                            Action::Continue => {}
                            Action::Flush => {
                                if !flush(c) {
                                    break;
                                }
                                continue;
                            }
                            other => {
                                if self.act(key, other) {
                                    continue;
                                }
                                break;
                            }
                        }
                    }
                    if c_eof(&self.conns[key]) {
                        break;
                    }
                    match self.read_input(key) {
                        Some(0) | None => break,
                        Some(_) => activity = true,
                    }
                }
                Phase::Body { .. } => match self.read_body(key) {
                    Some(0) | None => break,
                    Some(_) => activity = true,
                },
                Phase::Bdat { .. } => {
                    let c = &mut self.conns[key];
                    let status = c.session.bdat_chunk(&c.input);
                    let (consumed, store, action) = match status {
                        BdatStatus::More { consumed, store } => {
                            (consumed, store, None)
                        }
                        BdatStatus::Done { consumed, store, action } => {
                            (consumed, store, Some(action))
                        }
                    };
                    self.store_bdat(key, consumed, store);
                    let c = &mut self.conns[key];
                    c.input.drain(..consumed);
                    activity |= consumed > 0;
                    if let Some(action) = action {
                        if !self.finish_bdat(key, action) {
                            break;
                        }
                        continue;
                    }
                    if c_eof(&self.conns[key]) {
                        break;
                    }
                    match self.read_input(key) {
                        Some(0) | None => break,
                        Some(_) => activity = true,
                    }
                }
            }
        }
        if activity {
            self.touch(cx, key);
        }
        self.settle(cx, key);
    }

    /// Acts on a session action from the command phase; false when the
    /// loop must stop.
    fn act(&mut self, key: usize, action: Action) -> bool {
        match action {
            Action::Continue | Action::Flush => true,
            Action::StartBody => {
                self.start_message(key);
                // Bytes already buffered are body bytes.
                let c = &mut self.conns[key];
                let pending = std::mem::take(&mut c.input);
                if !pending.is_empty() {
                    self.body_bytes(key, &pending);
                }
                true
            }
            Action::Bdat { start, .. } => {
                if start {
                    self.start_message(key);
                    self.conns[key].stuffer = Some(DotStuffer::new());
                }
                true
            }
            Action::Commit(tx) => {
                // Only BDAT LAST 0 can commit from the command phase.
                self.commit(key, *tx, false);
                false
            }
            Action::Close => false,
        }
    }

    /// Creates the spool file for the transaction's recipients.
    fn start_message(&mut self, key: usize) {
        let c = &mut self.conns[key];
        c.fed = 0;
        c.spool = match self.shared.spool.create(c.session.recipients().len())
        {
            Ok(inc) => Some(inc),
            Err(e) => {
                // The session will still read the body; without a file
                // the commit fails with 451.
                tracing_free_log(&format!("spool create failed: {e}"));
                None
            }
        };
    }

    /// Reads command input; Some(n) bytes read, Some(0) nothing more now,
    /// None at end of input.
    fn read_input(&mut self, key: usize) -> Option<usize> {
        let c = &mut self.conns[key];
        if c.input.len() >= READ_CHUNK {
            // The session consumes whole lines and discards over-long
            // ones; a full buffer here means it needs no more for now.
            return Some(0);
        }
        if c.drained {
            return Some(0);
        }
        let room = READ_CHUNK - c.input.len();
        match read(&mut c.stream, &mut c.drained, &mut self.buf[..room]) {
            Ok(0) => {
                c.eof = true;
                None
            }
            Ok(n) => {
                c.input.extend_from_slice(&self.buf[..n]);
                Some(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(0),
            Err(_) => {
                c.eof = true;
                None
            }
        }
    }

    /// Reads body bytes straight into the spool mapping (or the scratch
    /// buffer when discarding) and scans them.
    fn read_body(&mut self, key: usize) -> Option<usize> {
        let c = &mut self.conns[key];
        if c.eof {
            return None;
        }
        if c.drained {
            return Some(0);
        }
        let res = match c.spool.as_mut() {
            Some(inc) => match inc.spare(READ_CHUNK) {
                Ok(spare) => {
                    match read(&mut c.stream, &mut c.drained, spare) {
                        Ok(n) if n > 0 => {
                            inc.advance(n);
                            Ok(n)
                        }
                        other => other,
                    }
                }
                Err(_) => {
                    // Cannot grow (size limit or disk): drop the file and
                    // let the session scan the rest.
                    c.spool = None;
                    return Some(1);
                }
            },
            None => read(&mut c.stream, &mut c.drained, &mut self.buf),
        };
        match res {
            Ok(0) => {
                c.eof = true;
                None
            }
            Ok(n) => {
                if c.spool.is_some() {
                    self.scan_spooled(key);
                } else {
                    let chunk = self.buf[..n].to_vec();
                    self.scan_chunk(key, &chunk);
                }
                Some(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(0),
            Err(_) => {
                c.eof = true;
                None
            }
        }
    }

    /// Body bytes that arrived in the command buffer (pipelined after
    /// DATA): copied into the spool, then scanned like socket bytes.
    fn body_bytes(&mut self, key: usize, bytes: &[u8]) {
        let c = &mut self.conns[key];
        if let Some(inc) = c.spool.as_mut() {
            if inc.write_all(bytes).is_ok() {
                self.scan_spooled(key);
                return;
            }
            c.spool = None;
        }
        self.scan_chunk(key, bytes);
    }

    /// Scans the spooled bytes the session has not seen yet.
    fn scan_spooled(&mut self, key: usize) {
        let c = &mut self.conns[key];
        let Some(inc) = c.spool.as_ref() else { return };
        let written = inc.written();
        let new = &written[c.fed..];
        let status = c.session.body(new);
        let start = c.fed;
        c.fed = written.len();
        if let BodyStatus::End { consumed, action } = status {
            let end = start + consumed;
            let rest = written[end..].to_vec();
            self.end_body(key, rest, action);
        } else if let BodyStatus::More { store: false } = status {
            c.spool = None;
        }
    }

    /// Scans bytes that are not being stored.
    fn scan_chunk(&mut self, key: usize, chunk: &[u8]) {
        let c = &mut self.conns[key];
        match c.session.body(chunk) {
            BodyStatus::End { consumed, action } => {
                self.end_body(key, chunk[consumed..].to_vec(), action);
            }
            BodyStatus::More { .. } => {}
        }
    }

    /// The body ended: pipelined bytes go back to the command buffer and
    /// the message is committed or dropped.
    fn end_body(&mut self, key: usize, rest: Vec<u8>, action: Action) {
        let c = &mut self.conns[key];
        let mut rest = rest;
        rest.extend_from_slice(&c.input);
        c.input = rest;
        match action {
            Action::Commit(tx) => self.commit(key, *tx, true),
            _ => c.spool = None,
        }
    }

    /// Stores the first `consumed` bytes of the command buffer as BDAT
    /// data (dot-stuffed: the spool keeps wire form).
    fn store_bdat(&mut self, key: usize, consumed: usize, store: bool) {
        let c = &mut self.conns[key];
        if !store {
            c.spool = None;
            return;
        }
        if consumed == 0 {
            return;
        }
        let (Some(inc), Some(st)) = (c.spool.as_mut(), c.stuffer.as_mut())
        else {
            return;
        };
        self.stuffed.clear();
        st.write(&c.input[..consumed], &mut self.stuffed);
        if inc.write_all(&self.stuffed).is_err() {
            c.spool = None;
        }
    }

    /// A BDAT chunk is complete; false when the loop must stop.
    fn finish_bdat(&mut self, key: usize, action: Action) -> bool {
        match action {
            Action::Commit(tx) => {
                let c = &mut self.conns[key];
                c.stuffer = None;
                if let Some(inc) = c.spool.as_mut() {
                    // The stored body always ends in CRLF (or is empty).
                    let w = inc.written();
                    if !w.is_empty() && !w.ends_with(b"\r\n") {
                        let fix: &[u8] =
                            if w.ends_with(b"\r") { b"\n" } else { b"\r\n" };
                        if inc.write_all(fix).is_err() {
                            c.spool = None;
                        }
                    }
                }
                self.commit(key, *tx, false);
                false
            }
            Action::Close => false,
            Action::Continue | Action::Flush => true,
            other => self.act(key, other),
        }
    }

    /// Hands the message to the group commit; the session waits.
    /// `from_data`: the file holds a DATA body followed by the terminator
    /// and maybe pipelined bytes, cut at the body's end. (BDAT data is
    /// stored dot-stuffed, so its `body_len`, counted in raw octets, is
    /// not the stored length.)
    fn commit(&mut self, key: usize, tx: Transaction, from_data: bool) {
        let thread = self.thread;
        let c = &mut self.conns[key];
        let serial = c.serial;
        let Some(mut inc) = c.spool.take() else {
            c.session.committed(Err(()));
            return;
        };
        if from_data
            && let Ok(len) = usize::try_from(tx.body_len)
            && len <= inc.written().len()
        {
            inc.truncate(len);
        }
        let now = unix_now();
        let id = inc.id();
        let env = envelope(&tx, &self.shared.cfg.session.hostname, id, now);
        let size = inc.written().len() as u64;
        let shared = Arc::clone(&self.shared);
        let env = Arc::new(env);
        let env2 = Arc::clone(&env);
        self.shared.spool.commit(
            inc,
            &env,
            Box::new(move |res| {
                let result = match res {
                    Ok(id) => {
                        shared.hooks.committed(id, &env2, size);
                        Ok(id)
                    }
                    Err(e) => Err(e.to_string()),
                };
                let msg = InboundMsg::Committed { key, serial, result };
                let _ = shared.remote(thread).send(msg);
            }),
        );
    }

    /// Writes pending output, closes finished connections, keeps the
    /// timer honest.
    fn settle(&mut self, cx: &mut Context<'_>, key: usize) {
        let Some(c) = self.conns.get_mut(key) else { return };
        let flushed = flush(c);
        let done = c.session.phase() == Phase::Closed
            || c.session.wants_close()
            || c.eof && c.session.phase() != Phase::AwaitCommit;
        if done && (flushed || c.eof) {
            self.close(cx, key);
        }
    }

    fn close(&mut self, cx: &mut Context<'_>, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut c = self.conns.remove(key);
        if let Some(t) = c.timer.take() {
            cx.cancel_timer(t);
        }
        let _ = cx.registry().deregister(&mut c.stream);
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        // The spool file of an unfinished message is removed on drop.
    }

    /// Thread index of this handler (set at the first callback).
    fn set_thread(&mut self, cx: &Context<'_>) {
        self.thread = cx.thread_index();
    }
}

/// A fallback for errors that have no better place (the event log lives
/// in the binary): one line on stderr.
fn tracing_free_log(msg: &str) {
    eprintln!("millrace: {msg}");
}

fn c_eof(c: &Conn) -> bool {
    c.eof
}

/// Reads, retrying on EINTR; sets `drained` when a read comes back
/// short (see `Conn::drained`).
fn read(
    stream: &mut TcpStream,
    drained: &mut bool,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(n) => {
                *drained = n > 0 && n < buf.len();
                return Ok(n);
            }
            other => return other,
        }
    }
}

/// Writes as much pending output as the socket takes; true when all of it
/// went out.
fn flush(c: &mut Conn) -> bool {
    let out = c.session.output();
    let mut written = 0;
    while written < out.len() {
        match c.stream.write(&out[written..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                c.eof = true;
                out.clear();
                return true;
            }
        }
    }
    out.drain(..written);
    out.is_empty()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The spool envelope for a transaction.
fn envelope(
    tx: &Transaction,
    hostname: &str,
    id: MessageId,
    now: i64,
) -> Envelope {
    let recipients = tx
        .recipients
        .iter()
        .map(|(to, p)| Recipient {
            address: to.mailbox().as_str().to_owned(),
            notify: u8::from(p.notify.never)
                | u8::from(p.notify.success) << 1
                | u8::from(p.notify.failure) << 2
                | u8::from(p.notify.delay) << 3,
            orcpt: p.orcpt.as_ref().map(|(t, a)| format!("{t};{a}")),
        })
        .collect();
    Envelope {
        sender: match &tx.sender {
            ReversePath::Null => String::new(),
            ReversePath::Path(p) => p.mailbox.as_str().to_owned(),
        },
        recipients,
        ret_full: tx.mail_params.ret.map(|r| r == Ret::Full),
        envid: tx.mail_params.envid.clone(),
        body_8bitmime: tx.mail_params.body != BodyType::SevenBit,
        smtputf8: tx.mail_params.smtputf8,
        client_ip: tx.peer.ip().to_canonical().to_string(),
        helo: tx.helo.clone(),
        arrival_unix: now,
        received: tx.received_header(hostname, &id.to_string(), now),
        is_dsn: false,
    }
}

impl Handler for Inbound {
    type Msg = InboundMsg;

    fn accept(
        &mut self,
        cx: &mut Context<'_>,
        mut stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
    ) {
        self.set_thread(cx);
        let cfg = &self.shared.cfg;
        let active = self.shared.active.fetch_add(1, Ordering::Relaxed);
        if active >= cfg.max_connections || cx.stopping() {
            self.shared.active.fetch_sub(1, Ordering::Relaxed);
            let mut out = Vec::new();
            Session::too_many_connections(&cfg.session.hostname, &mut out);
            let _ = stream.write(&out);
            return;
        }
        // Bytes already waiting were sent before our greeting.
        let early = matches!(stream.peek(&mut [0u8; 1]), Ok(n) if n > 0);
        let mut session = Session::new(Arc::clone(&cfg.session), peer, local);
        session.greet(early);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= millrace_reactor::MAX_HANDLER_TOKEN
            || cx
                .registry()
                .register(
                    &mut stream,
                    Token(key),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
        {
            self.shared.active.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.serial += 1;
        entry.insert(Conn {
            stream,
            session,
            serial: self.serial,
            input: Vec::new(),
            spool: None,
            fed: 0,
            stuffer: None,
            deadline: cx.now(),
            timer: None,
            eof: false,
            drained: false,
        });
        self.touch(cx, key);
        self.drive(cx, key);
    }

    fn event(&mut self, cx: &mut Context<'_>, event: &mio::event::Event) {
        self.set_thread(cx);
        let key = event.token().0;
        let Some(c) = self.conns.get_mut(key) else { return };
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            c.drained = false;
        }
        self.drive(cx, key);
    }

    fn timer(&mut self, cx: &mut Context<'_>, token: Token, data: u64) {
        let key = token.0;
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.serial != data {
            return;
        }
        c.timer = None;
        if c.session.phase() == Phase::AwaitCommit {
            // Our own commit is not the client's idleness.
            let d = cx.now() + Duration::from_secs(1);
            c.timer = Some(cx.set_timer(d, token, data));
            return;
        }
        if cx.now() >= c.deadline {
            c.session.timeout();
            self.settle(cx, key);
            if let Some(c) = self.conns.get_mut(key) {
                // Could not flush the 421: close anyway.
                c.eof = true;
                self.close(cx, key);
            }
        } else {
            let d = c.deadline;
            c.timer = Some(cx.set_timer(d, token, data));
        }
    }

    fn message(&mut self, cx: &mut Context<'_>, msg: InboundMsg) {
        self.set_thread(cx);
        let InboundMsg::Committed { key, serial, result } = msg;
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.serial != serial {
            return;
        }
        match &result {
            Ok(id) => c.session.committed(Ok(&id.to_string())),
            Err(e) => {
                tracing_free_log(&format!("commit failed: {e}"));
                c.session.committed(Err(()));
            }
        }
        self.touch(cx, key);
        self.drive(cx, key);
    }

    fn shutdown(&mut self, cx: &mut Context<'_>) -> bool {
        if self.stopping {
            return self.conns.is_empty();
        }
        self.stopping = true;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let c = &mut self.conns[key];
            if c.session.shutdown() {
                self.settle(cx, key);
                if let Some(c) = self.conns.get_mut(key) {
                    c.eof = true;
                    self.close(cx, key);
                }
            }
        }
        self.conns.is_empty()
    }
}
