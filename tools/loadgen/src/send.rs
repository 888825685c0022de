//! `send`: many concurrent SMTP client sessions on one `mio` event loop
//! (like Postfix's smtp-source, with latency percentiles and an open-loop
//! rate).
//!
//! Each session is a small state machine driven by the replies it
//! expects, in order (a queue of `Expect`s), so the pipelined path
//! (MAIL, every RCPT and DATA in one write) and the lock-step path share
//! the reply handling. Messages come from a `Schedule`: with a rate,
//! message `i` is due at `start + i / rate` and its latency is measured
//! from then, whether or not a session was free.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use millrace_proto::{Capabilities, Reply, ReplyParser, Status};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::LoadError;
use crate::message::{AddressPattern, Envelope, MessageFactory};
use crate::report::{LatencyHist, SendErrors, SendReport, per_sec};

/// Most reply bytes buffered per session before the reply is complete.
const MAX_READ_BUFFER: usize = 64 * 1024;
/// How often deadlines are checked.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Failed connections in a row after which a session slot gives up.
const MAX_SLOT_FAILURES: u32 = 3;

/// Progress of a running `send`, given to [`SendOptions::progress`] about
/// once a second.
#[derive(Debug, Clone, Default)]
pub struct SendProgress {
    /// Time since the start.
    pub elapsed: Duration,
    /// Messages accepted so far.
    pub accepted: u64,
    /// Messages started so far.
    pub attempted: u64,
    /// Messages refused or failed so far.
    pub failed: u64,
    /// The `--messages` target, if any.
    pub target: Option<u64>,
    /// Session errors so far.
    pub errors: u64,
    /// Open connections.
    pub open: usize,
}

/// A progress callback.
pub type SendProgressFn = Box<dyn FnMut(&SendProgress) + Send>;

/// What `send` should do. `Default` gives 10 sessions sending 1,000
/// messages of 1 KiB to 127.0.0.1:2525.
pub struct SendOptions {
    /// The server.
    pub server: SocketAddr,
    /// Concurrent sessions.
    pub sessions: usize,
    /// Total messages; with `duration` the run stops at whichever comes
    /// first, with neither it runs until stopped.
    pub messages: Option<u64>,
    /// Run time; no new message starts after it.
    pub duration: Option<Duration>,
    /// Messages per second, open-loop; `None` sends as fast as possible.
    pub rate: Option<f64>,
    /// Body size in bytes (before dot-stuffing, after the headers).
    pub size: usize,
    /// Recipients per message.
    pub recipients: u32,
    /// Sender pattern (`{n}` = message counter).
    pub from: String,
    /// Recipient pattern (`{n}` = recipient counter, `{d}` = domain).
    pub to: String,
    /// Spread recipients over this many domains.
    pub domains: u32,
    /// QUIT and reconnect after this many messages on a connection.
    pub messages_per_session: Option<u64>,
    /// Use PIPELINING when the server offers it.
    pub pipelining: bool,
    /// EHLO/HELO name.
    pub helo: String,
    /// Send this file (a whole message) instead of generated text.
    pub body_file: Option<PathBuf>,
    /// Per reply (and per connect) timeout.
    pub timeout: Duration,
    /// Called about once a second.
    pub progress: Option<SendProgressFn>,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            server: SocketAddr::from(([127, 0, 0, 1], 2525)),
            sessions: 10,
            messages: Some(1000),
            duration: None,
            rate: None,
            size: 1024,
            recipients: 1,
            from: "sender{n}@example.com".into(),
            to: "user{n}@example.net".into(),
            domains: 1,
            messages_per_session: None,
            pipelining: true,
            helo: "localhost".into(),
            body_file: None,
            timeout: Duration::from_secs(30),
            progress: None,
        }
    }
}

impl fmt::Debug for SendOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendOptions")
            .field("server", &self.server)
            .field("sessions", &self.sessions)
            .field("messages", &self.messages)
            .field("duration", &self.duration)
            .field("rate", &self.rate)
            .field("size", &self.size)
            .field("recipients", &self.recipients)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("domains", &self.domains)
            .field("messages_per_session", &self.messages_per_session)
            .field("pipelining", &self.pipelining)
            .field("helo", &self.helo)
            .field("body_file", &self.body_file)
            .field("timeout", &self.timeout)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Runs `send` until the messages are sent, the duration is over, or
/// `stop` is set (then the report says `interrupted`). Connection and
/// protocol problems are counted in the report, not returned.
pub fn run_send(
    mut opts: SendOptions,
    stop: Arc<AtomicBool>,
) -> Result<SendReport, LoadError> {
    let factory = build_factory(&opts)?;
    let progress = opts.progress.take();
    let mut engine = Engine::new(opts, factory)?;
    engine.run(&stop, progress)
}

fn invalid(option: &'static str, reason: &str) -> LoadError {
    LoadError::InvalidOption { option, reason: reason.into() }
}

fn build_factory(opts: &SendOptions) -> Result<MessageFactory, LoadError> {
    if opts.sessions == 0 {
        return Err(invalid("sessions", "must be at least 1"));
    }
    if opts.recipients == 0 {
        return Err(invalid("recipients", "must be at least 1"));
    }
    if let Some(r) = opts.rate
        && !(r.is_finite() && r > 0.0)
    {
        return Err(invalid("rate", "must be a positive number"));
    }
    if opts.messages_per_session == Some(0) {
        return Err(invalid("messages-per-session", "must be at least 1"));
    }
    if opts.timeout.is_zero() {
        return Err(invalid("timeout", "must be more than zero"));
    }
    if opts.helo.is_empty() || !opts.helo.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid("helo", "must be a domain or address literal"));
    }
    let from = AddressPattern::new("from", &opts.from, opts.domains)?;
    let to = AddressPattern::new("to", &opts.to, opts.domains)?;
    Ok(match &opts.body_file {
        Some(path) => {
            let text = std::fs::read(path).map_err(|source| {
                LoadError::BodyFile { path: path.clone(), source }
            })?;
            MessageFactory::from_message(from, to, opts.recipients, &text)
        }
        None => MessageFactory::generated(
            from,
            to,
            opts.recipients,
            opts.size,
            format!("{:016x}", rand::random::<u64>()),
        ),
    })
}

/// The reply a session waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Dot,
    Rset,
    Quit,
}

/// Stage names in the reply table; the index is `Expect as usize`, the
/// last one is for replies nobody asked for.
const STAGES: [&str; 10] = [
    "greeting",
    "ehlo",
    "helo",
    "mail",
    "rcpt",
    "data",
    "dot",
    "rset",
    "quit",
    "unsolicited",
];
const UNSOLICITED: usize = 9;

/// A part of the output queue.
#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
    Static(&'static [u8]),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Owned(v) => v,
            Self::Shared(a) => a,
            Self::Static(s) => s,
        }
    }
}

/// One message in flight on a connection.
#[derive(Debug)]
struct Txn {
    index: u64,
    scheduled: Instant,
    env: Envelope,
    rcpts_sent: usize,
    accepted: u32,
    mail_ok: bool,
    /// The reply that refused MAIL or DATA.
    fail_code: Option<u16>,
    /// The lowest code among refused RCPTs (a 4xx wins over a 5xx).
    rcpt_fail: Option<u16>,
    /// 354 came although nothing can be delivered: only a dot was sent.
    empty: bool,
    dot_at: Option<Instant>,
    wire_len: u64,
}

/// How a session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    ConnectRefused,
    ConnectTimeout,
    ConnectFailed,
    ReplyTimeout,
    UnexpectedReply,
    Closed,
    Protocol,
    /// The server said 421: counted in the reply table only.
    ServerClosing,
}

#[derive(Debug)]
struct Conn {
    serial: u64,
    stream: TcpStream,
    started: Instant,
    connected: bool,
    rbuf: Vec<u8>,
    parser: ReplyParser,
    out: VecDeque<Chunk>,
    out_off: usize,
    expect: VecDeque<Expect>,
    pipelining: bool,
    deadline: Option<Instant>,
    txn: Option<Txn>,
    started_on_conn: u64,
    quitting: bool,
    idle: bool,
}

impl Conn {
    fn push(&mut self, expect: Expect, now: Instant, timeout: Duration) {
        if self.expect.is_empty() {
            self.deadline = Some(now + timeout);
        }
        self.expect.push_back(expect);
    }

    fn queue(&mut self, bytes: Vec<u8>) {
        self.out.push_back(Chunk::Owned(bytes));
    }
}

#[derive(Debug, Default)]
struct Slot {
    conn: Option<Conn>,
    failures: u32,
}

/// Which message is next, and when it is due.
#[derive(Debug)]
struct Schedule {
    start: Instant,
    next: u64,
    limit: Option<u64>,
    end: Option<Instant>,
    rate: Option<f64>,
}

impl Schedule {
    fn has_more(&self, now: Instant) -> bool {
        self.limit.is_none_or(|l| self.next < l)
            && self.end.is_none_or(|e| now < e)
    }

    fn due_at(&self) -> Instant {
        match self.rate {
            Some(r) => {
                self.start + Duration::from_secs_f64(self.next as f64 / r)
            }
            None => self.start,
        }
    }

    /// The next message and its scheduled time, if one is due.
    fn take(&mut self, now: Instant) -> Option<(u64, Instant)> {
        if !self.has_more(now) {
            return None;
        }
        let due = self.due_at();
        if due > now {
            return None;
        }
        let index = self.next;
        self.next += 1;
        Some((index, if self.rate.is_some() { due } else { now }))
    }
}

#[derive(Debug)]
struct Stats {
    connect_to_220: LatencyHist,
    dot_to_250: LatencyHist,
    scheduled_to_250: LatencyHist,
    codes: [BTreeMap<u16, u64>; STAGES.len()],
    errors: SendErrors,
    connect_attempts: u64,
    connections: u64,
    attempted: u64,
    pipelined: u64,
    accepted: u64,
    rejected: u64,
    deferred: u64,
    failed: u64,
    recipients_accepted: u64,
    recipients_refused: u64,
    bytes: u64,
}

impl Stats {
    fn new() -> Self {
        Self {
            connect_to_220: LatencyHist::new(),
            dot_to_250: LatencyHist::new(),
            scheduled_to_250: LatencyHist::new(),
            codes: Default::default(),
            errors: SendErrors::default(),
            connect_attempts: 0,
            connections: 0,
            attempted: 0,
            pipelined: 0,
            accepted: 0,
            rejected: 0,
            deferred: 0,
            failed: 0,
            recipients_accepted: 0,
            recipients_refused: 0,
            bytes: 0,
        }
    }

    fn count_failure(&mut self, f: Failure) {
        let e = &mut self.errors;
        match f {
            Failure::ConnectRefused => e.connect_refused += 1,
            Failure::ConnectTimeout => e.connect_timeout += 1,
            Failure::ConnectFailed => e.connect_failed += 1,
            Failure::ReplyTimeout => e.reply_timeout += 1,
            Failure::UnexpectedReply => e.unexpected_reply += 1,
            Failure::Closed => e.closed += 1,
            Failure::Protocol => e.protocol += 1,
            Failure::ServerClosing => {}
        }
    }

    /// Counts the end of a transaction that did not get its 250.
    fn txn_refused(&mut self, txn: &Txn) {
        // The first refusal decides: MAIL's, else (when every recipient
        // was refused) the recipients', else DATA's or the dot's.
        let code = if !txn.mail_ok {
            txn.fail_code
        } else if txn.accepted == 0 {
            txn.rcpt_fail.or(txn.fail_code)
        } else {
            txn.fail_code.or(txn.rcpt_fail)
        };
        let code = code.unwrap_or(554);
        if (400..500).contains(&code) {
            self.deferred += 1;
        } else {
            self.rejected += 1;
        }
    }
}

/// The RFC 5322 date of the current second, recomputed once a second.
#[derive(Debug, Default)]
struct DateCache {
    secs: i64,
    text: String,
}

impl DateCache {
    fn get(&mut self) -> &str {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        if self.text.is_empty() || secs != self.secs {
            self.secs = secs;
            self.text = millrace_proto::date::rfc5322(secs);
        }
        &self.text
    }
}

struct Engine {
    poll: Poll,
    server: SocketAddr,
    timeout: Duration,
    pipelining: bool,
    helo: String,
    per_session: Option<u64>,
    sessions: usize,
    factory: MessageFactory,
    slots: Vec<Slot>,
    idle: Vec<usize>,
    sched: Schedule,
    stats: Stats,
    scratch: Vec<u8>,
    open: usize,
    serial: u64,
    date: DateCache,
}

impl Engine {
    fn new(
        opts: SendOptions,
        factory: MessageFactory,
    ) -> Result<Self, LoadError> {
        let poll = Poll::new().map_err(LoadError::Poll)?;
        let start = Instant::now();
        Ok(Self {
            poll,
            server: opts.server,
            timeout: opts.timeout,
            pipelining: opts.pipelining,
            helo: opts.helo,
            per_session: opts.messages_per_session,
            sessions: opts.sessions,
            factory,
            slots: (0..opts.sessions).map(|_| Slot::default()).collect(),
            idle: Vec::new(),
            sched: Schedule {
                start,
                next: 0,
                limit: opts.messages,
                end: opts.duration.map(|d| start + d),
                rate: opts.rate,
            },
            stats: Stats::new(),
            scratch: vec![0; 64 * 1024],
            open: 0,
            serial: 0,
            date: DateCache::default(),
        })
    }

    fn run(
        &mut self,
        stop: &AtomicBool,
        mut progress: Option<SendProgressFn>,
    ) -> Result<SendReport, LoadError> {
        let start = self.sched.start;
        let initial = match self.sched.limit {
            Some(l) => self.sessions.min(usize::try_from(l).unwrap_or(0)),
            None => self.sessions,
        };
        for idx in 0..initial {
            self.connect(idx, start);
        }
        let mut events = Events::with_capacity(1024);
        let mut next_check = start + CHECK_INTERVAL;
        let mut next_tick = start + Duration::from_secs(1);
        let mut interrupted = false;
        while self.open > 0 {
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            let now = Instant::now();
            let mut wake = next_check.min(next_tick);
            if !self.idle.is_empty() && self.sched.has_more(now) {
                wake = wake.min(self.sched.due_at());
            }
            let timeout = wake.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(LoadError::Poll(e));
            }
            let now = Instant::now();
            for ev in &events {
                let idx = ev.token().0;
                let serial = match self.conn(idx) {
                    Some(c) => c.serial,
                    None => continue,
                };
                self.on_event(idx, serial, ev, now);
            }
            self.dispatch(now);
            if now >= next_check {
                self.check_deadlines(now);
                next_check = now + CHECK_INTERVAL;
            }
            if now >= next_tick {
                if let Some(p) = progress.as_mut() {
                    p(&self.progress(now));
                }
                next_tick += Duration::from_secs(1);
            }
        }
        if let Some(p) = progress.as_mut() {
            p(&self.progress(Instant::now()));
        }
        Ok(self.report(interrupted))
    }

    fn progress(&self, now: Instant) -> SendProgress {
        let s = &self.stats;
        SendProgress {
            elapsed: now - self.sched.start,
            accepted: s.accepted,
            attempted: s.attempted,
            failed: s.rejected + s.deferred + s.failed,
            target: self.sched.limit,
            errors: s.errors.total(),
            open: self.open,
        }
    }

    fn report(&self, interrupted: bool) -> SendReport {
        let s = &self.stats;
        let secs = self.sched.start.elapsed().as_secs_f64();
        let replies = STAGES
            .iter()
            .zip(&s.codes)
            .filter(|(_, m)| !m.is_empty())
            .map(|(name, m)| ((*name).to_owned(), m.clone()))
            .collect();
        SendReport {
            elapsed_secs: secs,
            sessions: self.sessions,
            connect_attempts: s.connect_attempts,
            connections: s.connections,
            messages_attempted: s.attempted,
            transactions_pipelined: s.pipelined,
            messages_accepted: s.accepted,
            messages_rejected: s.rejected,
            messages_deferred: s.deferred,
            messages_failed: s.failed,
            recipients_accepted: s.recipients_accepted,
            recipients_refused: s.recipients_refused,
            bytes: s.bytes,
            messages_per_sec: per_sec(s.accepted, secs),
            mb_per_sec: per_sec(s.bytes, secs) / 1e6,
            connect_to_220: s.connect_to_220.summary(),
            dot_to_250: s.dot_to_250.summary(),
            scheduled_to_250: s.scheduled_to_250.summary(),
            replies,
            errors: s.errors.clone(),
            interrupted,
        }
    }

    fn conn(&mut self, idx: usize) -> Option<&mut Conn> {
        self.slots.get_mut(idx)?.conn.as_mut()
    }

    /// The connection in `idx` if it is still the one numbered `serial`.
    fn live(&mut self, idx: usize, serial: u64) -> Option<&mut Conn> {
        self.conn(idx).filter(|c| c.serial == serial)
    }

    fn connect(&mut self, idx: usize, now: Instant) {
        self.stats.connect_attempts += 1;
        let mut stream = match TcpStream::connect(self.server) {
            Ok(s) => s,
            Err(e) => {
                self.stats.count_failure(connect_failure(&e));
                return;
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.stats.count_failure(connect_failure(&e));
            return;
        }
        self.serial += 1;
        self.open += 1;
        self.slots[idx].conn = Some(Conn {
            serial: self.serial,
            stream,
            started: now,
            connected: false,
            rbuf: Vec::new(),
            parser: ReplyParser::new(),
            out: VecDeque::new(),
            out_off: 0,
            expect: VecDeque::new(),
            pipelining: false,
            deadline: Some(now + self.timeout),
            txn: None,
            started_on_conn: 0,
            quitting: false,
            idle: false,
        });
    }

    fn on_event(
        &mut self,
        idx: usize,
        serial: u64,
        ev: &mio::event::Event,
        now: Instant,
    ) {
        let timeout = self.timeout;
        let Some(conn) = self.live(idx, serial) else { return };
        if !conn.connected {
            let err = match conn.stream.take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => None,
            };
            if let Some(e) = err {
                return self.fail(idx, connect_failure(&e), now);
            }
            match conn.stream.peer_addr() {
                Ok(_) => {
                    conn.connected = true;
                    let _ = conn.stream.set_nodelay(true);
                    conn.deadline = None;
                    conn.push(Expect::Greeting, now, timeout);
                    self.stats.connections += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    if ev.is_error() || ev.is_write_closed() {
                        return self.fail(idx, Failure::ConnectFailed, now);
                    }
                    return;
                }
                Err(e) => return self.fail(idx, connect_failure(&e), now),
            }
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.read(idx, serial, now);
        }
        if ev.is_writable() && self.live(idx, serial).is_some() {
            self.flush(idx, serial, now);
        }
    }

    fn read(&mut self, idx: usize, serial: u64, now: Instant) {
        loop {
            let Some(conn) = self.slots[idx].conn.as_mut() else { return };
            if conn.serial != serial {
                return;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => return self.on_eof(idx, now),
                Ok(n) => {
                    if conn.rbuf.len() + n > MAX_READ_BUFFER {
                        return self.fail(idx, Failure::Protocol, now);
                    }
                    conn.rbuf.extend_from_slice(&self.scratch[..n]);
                    if !self.process_replies(idx, serial, now) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(idx, io_failure(&e), now),
            }
        }
        self.flush(idx, serial, now);
    }

    /// Handles every complete reply in the buffer; false when the
    /// connection is gone.
    fn process_replies(
        &mut self,
        idx: usize,
        serial: u64,
        now: Instant,
    ) -> bool {
        let mut pos = 0;
        loop {
            let Some(conn) = self.live(idx, serial) else { return false };
            match conn.parser.parse(&conn.rbuf[pos..]) {
                Ok(Status::Complete((reply, used))) => {
                    pos += used;
                    conn.parser = ReplyParser::new();
                    self.on_reply(idx, &reply, now);
                }
                Ok(Status::Partial) => {
                    conn.rbuf.drain(..pos);
                    return true;
                }
                Err(_) => {
                    self.fail(idx, Failure::Protocol, now);
                    return false;
                }
            }
        }
    }

    fn on_reply(&mut self, idx: usize, reply: &Reply, now: Instant) {
        let timeout = self.timeout;
        let code = reply.code;
        let positive = reply.is_positive();
        let Some(conn) = self.slots[idx].conn.as_mut() else { return };
        let Some(exp) = conn.expect.pop_front() else {
            *self.stats.codes[UNSOLICITED].entry(code).or_default() += 1;
            let f = if code == 421 {
                Failure::ServerClosing
            } else {
                Failure::UnexpectedReply
            };
            return self.fail(idx, f, now);
        };
        *self.stats.codes[exp as usize].entry(code).or_default() += 1;
        conn.deadline =
            if conn.expect.is_empty() { None } else { Some(now + timeout) };
        if code == 421 && exp != Expect::Quit {
            return self.fail(idx, Failure::ServerClosing, now);
        }
        match exp {
            Expect::Greeting if positive => {
                self.stats.connect_to_220.record(now - conn.started);
                conn.queue(format!("EHLO {}\r\n", self.helo).into_bytes());
                conn.push(Expect::Ehlo, now, timeout);
            }
            Expect::Ehlo if positive => {
                let caps = Capabilities::from_ehlo_reply(reply);
                conn.pipelining = self.pipelining && caps.pipelining;
                self.ready(idx, now);
            }
            Expect::Ehlo => {
                conn.queue(format!("HELO {}\r\n", self.helo).into_bytes());
                conn.push(Expect::Helo, now, timeout);
            }
            Expect::Greeting | Expect::Helo if !positive => {
                self.fail(idx, Failure::UnexpectedReply, now);
            }
            Expect::Helo => {
                conn.pipelining = false;
                self.ready(idx, now);
            }
            Expect::Mail => {
                let Some(txn) = conn.txn.as_mut() else {
                    return self.fail(idx, Failure::UnexpectedReply, now);
                };
                txn.mail_ok = positive;
                if !positive {
                    txn.fail_code.get_or_insert(code);
                }
                if !conn.pipelining {
                    if positive {
                        self.send_rcpt(idx, now);
                    } else {
                        self.end_refused(idx, now);
                    }
                }
            }
            Expect::Rcpt => {
                let Some(txn) = conn.txn.as_mut() else {
                    return self.fail(idx, Failure::UnexpectedReply, now);
                };
                if positive {
                    txn.accepted += 1;
                } else {
                    self.stats.recipients_refused += 1;
                    txn.rcpt_fail =
                        Some(txn.rcpt_fail.map_or(code, |c| c.min(code)));
                }
                if !conn.pipelining {
                    if txn.rcpts_sent < txn.env.to.len() {
                        self.send_rcpt(idx, now);
                    } else if txn.accepted > 0 {
                        conn.queue(b"DATA\r\n".to_vec());
                        conn.push(Expect::Data, now, timeout);
                    } else {
                        self.end_refused(idx, now);
                    }
                }
            }
            Expect::Data => {
                let Some(txn) = conn.txn.as_mut() else {
                    return self.fail(idx, Failure::UnexpectedReply, now);
                };
                if code == 354 {
                    if txn.mail_ok && txn.accepted > 0 {
                        let mut head = Vec::with_capacity(320);
                        self.factory.write_headers(
                            txn.index,
                            &txn.env,
                            self.date.get(),
                            &mut head,
                        );
                        let body = self.factory.body();
                        txn.wire_len = (head.len() + body.len()) as u64;
                        txn.dot_at = Some(now);
                        if !head.is_empty() {
                            conn.queue(head);
                        }
                        conn.out.push_back(Chunk::Shared(body.clone()));
                    } else {
                        txn.empty = true;
                    }
                    conn.out.push_back(Chunk::Static(b".\r\n"));
                    conn.push(Expect::Dot, now, timeout);
                } else {
                    txn.fail_code.get_or_insert(code);
                    self.end_refused(idx, now);
                }
            }
            Expect::Dot => {
                let Some(txn) = conn.txn.take() else {
                    return self.fail(idx, Failure::UnexpectedReply, now);
                };
                if positive && !txn.empty {
                    let s = &mut self.stats;
                    s.accepted += 1;
                    s.recipients_accepted += u64::from(txn.accepted);
                    s.bytes += txn.wire_len;
                    if let Some(at) = txn.dot_at {
                        s.dot_to_250.record(now - at);
                    }
                    s.scheduled_to_250.record(now - txn.scheduled);
                } else {
                    let mut txn = txn;
                    if !positive {
                        txn.fail_code.get_or_insert(code);
                    }
                    self.stats.txn_refused(&txn);
                }
                self.ready(idx, now);
            }
            Expect::Rset => self.ready(idx, now),
            Expect::Quit => self.close(idx),
            Expect::Greeting => unreachable!("positive greeting handled"),
        }
    }

    fn send_rcpt(&mut self, idx: usize, now: Instant) {
        let timeout = self.timeout;
        let Some(conn) = self.conn(idx) else { return };
        let Some(txn) = conn.txn.as_mut() else { return };
        let cmd = format!("RCPT TO:<{}>\r\n", txn.env.to[txn.rcpts_sent]);
        txn.rcpts_sent += 1;
        conn.queue(cmd.into_bytes());
        conn.push(Expect::Rcpt, now, timeout);
    }

    /// Ends a refused transaction and resets the session.
    fn end_refused(&mut self, idx: usize, now: Instant) {
        let timeout = self.timeout;
        let Some(conn) = self.slots[idx].conn.as_mut() else { return };
        if let Some(txn) = conn.txn.take() {
            self.stats.txn_refused(&txn);
        }
        conn.queue(b"RSET\r\n".to_vec());
        conn.push(Expect::Rset, now, timeout);
    }

    /// The session can take a message: start one, wait for one, or quit.
    fn ready(&mut self, idx: usize, now: Instant) {
        let per_session = self.per_session;
        let Some(conn) = self.slots[idx].conn.as_mut() else { return };
        let done = per_session.is_some_and(|m| conn.started_on_conn >= m);
        if done || !self.sched.has_more(now) {
            return self.quit(idx, now);
        }
        match self.sched.take(now) {
            Some((index, scheduled)) => {
                self.start_txn(idx, index, scheduled, now);
            }
            None => {
                conn.idle = true;
                self.idle.push(idx);
            }
        }
    }

    fn quit(&mut self, idx: usize, now: Instant) {
        let timeout = self.timeout;
        let Some(conn) = self.conn(idx) else { return };
        conn.quitting = true;
        conn.queue(b"QUIT\r\n".to_vec());
        conn.push(Expect::Quit, now, timeout);
    }

    fn start_txn(
        &mut self,
        idx: usize,
        index: u64,
        scheduled: Instant,
        now: Instant,
    ) {
        let timeout = self.timeout;
        let env = self.factory.envelope(index);
        let Some(conn) = self.slots[idx].conn.as_mut() else { return };
        self.stats.attempted += 1;
        conn.started_on_conn += 1;
        let mut cmds = Vec::with_capacity(64 + 48 * env.to.len());
        cmds.extend_from_slice(b"MAIL FROM:<");
        cmds.extend_from_slice(env.from.as_bytes());
        cmds.extend_from_slice(b">\r\n");
        conn.push(Expect::Mail, now, timeout);
        let mut rcpts_sent = 0;
        if conn.pipelining {
            self.stats.pipelined += 1;
            for rcpt in &env.to {
                cmds.extend_from_slice(b"RCPT TO:<");
                cmds.extend_from_slice(rcpt.as_bytes());
                cmds.extend_from_slice(b">\r\n");
                conn.push(Expect::Rcpt, now, timeout);
            }
            rcpts_sent = env.to.len();
            cmds.extend_from_slice(b"DATA\r\n");
            conn.push(Expect::Data, now, timeout);
        }
        conn.queue(cmds);
        conn.txn = Some(Txn {
            index,
            scheduled,
            env,
            rcpts_sent,
            accepted: 0,
            mail_ok: false,
            fail_code: None,
            rcpt_fail: None,
            empty: false,
            dot_at: None,
            wire_len: 0,
        });
    }

    /// Hands due messages to idle sessions; quits them when no more work
    /// is coming.
    fn dispatch(&mut self, now: Instant) {
        while let Some(&idx) = self.idle.last() {
            let serial = match self.conn(idx) {
                Some(c) if c.idle => c.serial,
                _ => {
                    self.idle.pop();
                    continue;
                }
            };
            if !self.sched.has_more(now) {
                self.idle.pop();
                if let Some(c) = self.conn(idx) {
                    c.idle = false;
                }
                self.quit(idx, now);
            } else if let Some((index, scheduled)) = self.sched.take(now) {
                self.idle.pop();
                if let Some(c) = self.conn(idx) {
                    c.idle = false;
                }
                self.start_txn(idx, index, scheduled, now);
            } else {
                break;
            }
            self.flush(idx, serial, now);
        }
    }

    fn check_deadlines(&mut self, now: Instant) {
        for idx in 0..self.slots.len() {
            let Some(conn) = self.slots[idx].conn.as_ref() else {
                continue;
            };
            if conn.deadline.is_none_or(|d| d > now) {
                continue;
            }
            if !conn.connected {
                self.fail(idx, Failure::ConnectTimeout, now);
            } else if conn.quitting {
                self.close(idx);
            } else {
                self.fail(idx, Failure::ReplyTimeout, now);
            }
        }
    }

    /// Writes as much queued output as the socket takes.
    fn flush(&mut self, idx: usize, serial: u64, now: Instant) {
        let Some(conn) = self.live(idx, serial) else { return };
        if !conn.connected {
            return;
        }
        while !conn.out.is_empty() {
            let mut bufs = [IoSlice::new(&[]); 4];
            let mut k = 0;
            for (i, chunk) in conn.out.iter().take(4).enumerate() {
                let b = chunk.bytes();
                bufs[i] =
                    IoSlice::new(if i == 0 { &b[conn.out_off..] } else { b });
                k = i + 1;
            }
            match conn.stream.write_vectored(&bufs[..k]) {
                Ok(0) => return self.fail(idx, Failure::Closed, now),
                Ok(mut n) => {
                    while n > 0 {
                        let Some(front) = conn.out.front() else { break };
                        let left = front.bytes().len() - conn.out_off;
                        if n >= left {
                            n -= left;
                            conn.out.pop_front();
                            conn.out_off = 0;
                        } else {
                            conn.out_off += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(idx, io_failure(&e), now),
            }
        }
    }

    fn on_eof(&mut self, idx: usize, now: Instant) {
        self.fail(idx, Failure::Closed, now);
    }

    /// True when losing the connection in `idx` loses nothing: it was
    /// saying QUIT, or has no message and none will come.
    fn nothing_to_lose(&self, idx: usize, now: Instant) -> bool {
        self.slots[idx].conn.as_ref().is_some_and(|c| {
            c.quitting || (c.txn.is_none() && !self.sched.has_more(now))
        })
    }

    /// Drops the connection in `idx`.
    fn drop_conn(&mut self, idx: usize) -> Option<Conn> {
        let mut conn = self.slots[idx].conn.take()?;
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.open -= 1;
        Some(conn)
    }

    /// A normal end (QUIT answered); reconnects when work remains.
    fn close(&mut self, idx: usize) {
        let Some(conn) = self.drop_conn(idx) else { return };
        if let Some(txn) = conn.txn {
            // A transaction never runs into QUIT; count it if it did.
            self.stats.txn_refused(&txn);
        }
        self.slots[idx].failures = 0;
        let now = Instant::now();
        if self.sched.has_more(now) {
            self.connect(idx, now);
        }
    }

    /// An abnormal end; the message in flight is lost (or deferred on a
    /// 421). Reconnects when work remains, unless this slot keeps failing
    /// or never connected.
    fn fail(&mut self, idx: usize, f: Failure, now: Instant) {
        if matches!(f, Failure::Closed | Failure::ReplyTimeout)
            && self.nothing_to_lose(idx, now)
        {
            return self.close(idx);
        }
        let Some(conn) = self.drop_conn(idx) else { return };
        self.stats.count_failure(f);
        if let Some(txn) = conn.txn {
            if f == Failure::ServerClosing {
                self.stats.deferred += 1;
            } else {
                self.stats.failed += 1;
            }
            drop(txn);
        }
        let slot = &mut self.slots[idx];
        slot.failures += 1;
        if conn.connected
            && slot.failures < MAX_SLOT_FAILURES
            && self.sched.has_more(now)
        {
            self.connect(idx, now);
        }
    }
}

fn connect_failure(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Failure::ConnectRefused,
        io::ErrorKind::TimedOut => Failure::ConnectTimeout,
        _ => Failure::ConnectFailed,
    }
}

fn io_failure(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => Failure::Closed,
        _ => Failure::Protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedule_is_fixed_interval() {
        let start = Instant::now();
        let mut s = Schedule {
            start,
            next: 0,
            limit: Some(3),
            end: None,
            rate: Some(10.0),
        };
        assert_eq!(s.take(start), Some((0, start)));
        // Message 1 is due 100 ms in; not before.
        assert_eq!(s.take(start + Duration::from_millis(99)), None);
        let late = start + Duration::from_millis(250);
        let (i, due) = s.take(late).unwrap();
        assert_eq!(i, 1);
        // Latency is measured from the schedule, not from when a session
        // got to it.
        assert_eq!(due, start + Duration::from_millis(100));
        assert_eq!(s.take(late).unwrap().0, 2);
        assert!(!s.has_more(late));
        assert_eq!(s.take(late), None);
    }

    #[test]
    fn duration_ends_the_schedule() {
        let start = Instant::now();
        let s = Schedule {
            start,
            next: 0,
            limit: None,
            end: Some(start + Duration::from_secs(1)),
            rate: None,
        };
        assert!(s.has_more(start));
        assert!(!s.has_more(start + Duration::from_secs(1)));
    }

    #[test]
    fn bad_options_are_refused() {
        let bad = [
            SendOptions { sessions: 0, ..SendOptions::default() },
            SendOptions { recipients: 0, ..SendOptions::default() },
            SendOptions { rate: Some(0.0), ..SendOptions::default() },
            SendOptions { rate: Some(f64::NAN), ..SendOptions::default() },
            SendOptions {
                messages_per_session: Some(0),
                ..SendOptions::default()
            },
            SendOptions { to: "nodomain".into(), ..SendOptions::default() },
            SendOptions { helo: "a b".into(), ..SendOptions::default() },
            SendOptions { timeout: Duration::ZERO, ..SendOptions::default() },
        ];
        for opts in bad {
            let dbg = format!("{opts:?}");
            assert!(
                matches!(
                    run_send(opts, Arc::default()),
                    Err(LoadError::InvalidOption { .. })
                ),
                "{dbg}"
            );
        }
    }

    #[test]
    fn refused_connections_are_counted_not_fatal() {
        // Bind then drop a listener so the port is (almost surely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = SendOptions {
            server: SocketAddr::from(([127, 0, 0, 1], port)),
            sessions: 3,
            messages: Some(10),
            ..SendOptions::default()
        };
        let r = run_send(opts, Arc::default()).unwrap();
        assert_eq!(r.connect_attempts, 3);
        assert_eq!(r.connections, 0);
        assert_eq!(r.errors.connect_refused, 3);
        assert_eq!(r.messages_accepted, 0);
        assert!(r.all_connects_failed());
    }
}
