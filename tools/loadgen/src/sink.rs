//! `sink`: an SMTP server that accepts mail and throws it away, counting
//! it (like Postfix's smtp-sink), on one `mio` event loop.
//!
//! It offers PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, DSN and
//! SMTPUTF8, scans each body with [`BodyScanner`] (refusing bare CR or LF),
//! and can answer recipients from a script (`PATTERN=REPLY[;delay=DUR]`)
//! or refuse a random share of them, so a benchmark sees a realistic mix
//! of 2xx, 4xx and 5xx.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use millrace_proto::{
    BodyScanner, Capabilities, Command, CommandError, EnhancedCode,
    LineReader, LineStatus, MAX_COMMAND_LINE, Reply, Scan, parse_command,
};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slab::Slab;

use crate::LoadError;
use crate::glob::glob_match;
use crate::report::{SinkErrors, SinkReport, per_sec};

const LISTENER: Token = Token(usize::MAX);
/// Output bytes queued on a connection before its input is left unread.
const OUT_LIMIT: usize = 256 * 1024;
/// Recipients accepted in one transaction before 452 4.5.3.
const MAX_RECIPIENTS: u32 = 100_000;
/// How long the sink keeps serving open connections (so clients get
/// their last replies and can say QUIT) after `expect` was reached.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A scripted answer: recipients whose address matches `pattern` get
/// `code text`, optionally after `delay`.
///
/// Written `PATTERN=REPLY[;delay=DURATION]`, e.g.
/// `fail*@=550 5.1.1 No such user` or `delay*@=250 Ok;delay=500ms`. The
/// pattern is a glob (`*`, `?`) over the whole address, ASCII
/// case-insensitive; one ending in `@` matches any domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The glob, as matched (a trailing `@` already extended with `*`).
    pub pattern: String,
    /// The reply code (200 to 599).
    pub code: u16,
    /// The reply text after the code (may start with an enhanced code).
    pub text: String,
    /// Wait this long before answering (later commands wait too).
    pub delay: Option<Duration>,
}

impl FromStr for Script {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (pattern, reply) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected PATTERN=REPLY"))?;
        if pattern.is_empty() {
            return Err(format!("{s:?}: empty pattern"));
        }
        let mut parts = reply.split(';');
        let reply = parts.next().unwrap_or("").trim();
        let mut delay = None;
        for opt in parts {
            match opt.trim().split_once('=') {
                Some(("delay", d)) => {
                    delay =
                        Some(humantime::parse_duration(d.trim()).map_err(
                            |e| format!("{s:?}: bad delay {d:?}: {e}"),
                        )?);
                }
                _ => return Err(format!("{s:?}: unknown option {opt:?}")),
            }
        }
        let (code, text) = reply.split_at(reply.len().min(3));
        let code: u16 = code
            .parse()
            .ok()
            .filter(|c| (200..600).contains(c))
            .filter(|_| text.is_empty() || text.starts_with(' '))
            .ok_or_else(|| {
                format!("{s:?}: reply must start with a code 200..599")
            })?;
        let text = text.trim();
        if text.chars().any(|c| c.is_control()) {
            return Err(format!("{s:?}: control characters in the reply"));
        }
        let mut pattern = pattern.to_owned();
        if pattern.ends_with('@') {
            pattern.push('*');
        }
        Ok(Self { pattern, code, text: text.to_owned(), delay })
    }
}

/// Progress of a running sink, given to [`SinkOptions::progress`] about
/// once a second.
#[derive(Debug, Clone, Default)]
pub struct SinkProgress {
    /// Time since the start.
    pub elapsed: Duration,
    /// Messages accepted so far.
    pub messages: u64,
    /// Recipients of accepted messages.
    pub recipients: u64,
    /// Connections accepted so far.
    pub connections: u64,
    /// Body bytes so far.
    pub bytes: u64,
    /// Open connections.
    pub open: usize,
}

/// A progress callback.
pub type SinkProgressFn = Box<dyn FnMut(&SinkProgress) + Send>;

/// What `sink` should do. `Default` listens on 127.0.0.1:2626 and accepts
/// everything until `stop`.
pub struct SinkOptions {
    /// Where to listen (port 0: any free port, see `run_sink`'s `ready`).
    pub listen: SocketAddr,
    /// Name in the greeting and EHLO reply.
    pub hostname: String,
    /// Scripted answers per recipient pattern; the first match wins.
    pub scripts: Vec<Script>,
    /// Share of other recipients refused with 451 4.7.1 (percent).
    pub tempfail_percent: f64,
    /// Share of other recipients refused with 550 5.1.1 (percent).
    pub permfail_percent: f64,
    /// Seed for the random mix (random when `None`).
    pub seed: Option<u64>,
    /// Keep each message (envelope and body) as a file in this directory.
    pub dump: Option<PathBuf>,
    /// Stop once this many messages have been accepted.
    pub expect: Option<u64>,
    /// Rewrite this small JSON file with the counters every second.
    pub count_file: Option<PathBuf>,
    /// Largest body accepted (advertised in SIZE).
    pub max_size: u64,
    /// Stop when set (e.g. by SIGINT); the report says `interrupted`.
    pub stop: Arc<AtomicBool>,
    /// Called about once a second.
    pub progress: Option<SinkProgressFn>,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2626)),
            hostname: "millrace-sink.localhost".into(),
            scripts: Vec::new(),
            tempfail_percent: 0.0,
            permfail_percent: 0.0,
            seed: None,
            dump: None,
            expect: None,
            count_file: None,
            max_size: 100 * 1024 * 1024,
            stop: Arc::default(),
            progress: None,
        }
    }
}

impl fmt::Debug for SinkOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkOptions")
            .field("listen", &self.listen)
            .field("hostname", &self.hostname)
            .field("scripts", &self.scripts)
            .field("tempfail_percent", &self.tempfail_percent)
            .field("permfail_percent", &self.permfail_percent)
            .field("seed", &self.seed)
            .field("dump", &self.dump)
            .field("expect", &self.expect)
            .field("count_file", &self.count_file)
            .field("max_size", &self.max_size)
            .field("stop", &self.stop)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Runs the sink: binds, calls `ready` with the bound address, and serves
/// until `expect` messages have arrived or `stop` is set.
pub fn run_sink(
    mut opts: SinkOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<SinkReport, LoadError> {
    let pct = |option, v: f64| {
        if (0.0..=100.0).contains(&v) {
            Ok(())
        } else {
            Err(LoadError::InvalidOption {
                option,
                reason: format!("{v} is not a percentage"),
            })
        }
    };
    pct("tempfail-percent", opts.tempfail_percent)?;
    pct("permfail-percent", opts.permfail_percent)?;
    pct("permfail-percent", opts.tempfail_percent + opts.permfail_percent)?;
    if opts.hostname.is_empty()
        || !opts.hostname.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(LoadError::InvalidOption {
            option: "hostname",
            reason: "must be a domain name".into(),
        });
    }
    if let Some(dir) = &opts.dump {
        std::fs::create_dir_all(dir).map_err(|source| LoadError::Write {
            path: dir.clone(),
            source,
        })?;
    }
    let progress = opts.progress.take();
    let mut engine = Engine::new(&opts)?;
    if let Some(path) = &opts.count_file {
        engine.write_count_file(path).map_err(|source| LoadError::Write {
            path: path.clone(),
            source,
        })?;
    }
    ready(engine.listener.local_addr().map_err(LoadError::Poll)?);
    engine.run(&opts, progress)
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// A reply encoded once.
#[derive(Debug, Clone)]
struct Canned {
    code: u16,
    bytes: Vec<u8>,
}

impl Canned {
    fn new(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> Self {
        let enhanced = enhanced.map(|(c, s, d)| EnhancedCode::new(c, s, d));
        let mut bytes = Vec::new();
        Reply::new(code, enhanced, text.to_owned()).encode(&mut bytes);
        Self { code, bytes }
    }
}

#[derive(Debug)]
struct Replies {
    greeting: Canned,
    ehlo: Canned,
    helo: Canned,
    ok: Canned,
    mail_ok: Canned,
    rcpt_ok: Canned,
    data_go: Canned,
    quit: Canned,
    nested_mail: Canned,
    need_mail: Canned,
    no_rcpts: Canned,
    too_many_rcpts: Canned,
    tempfail: Canned,
    permfail: Canned,
    bare_line: Canned,
    too_big: Canned,
    cannot_store: Canned,
    unrecognized: Canned,
    too_long: Canned,
    syntax: Canned,
    not_implemented: Canned,
    vrfy: Canned,
    help: Canned,
}

impl Replies {
    fn new(hostname: &str, max_size: u64) -> Self {
        let caps = Capabilities {
            pipelining: true,
            size: Some(max_size),
            eightbitmime: true,
            enhanced_status_codes: true,
            smtputf8: true,
            dsn: true,
            ..Capabilities::default()
        };
        let mut ehlo = Vec::new();
        caps.encode_ehlo_reply(hostname, "Millrace sink", &mut ehlo);
        let c = Canned::new;
        Self {
            greeting: c(220, None, &format!("{hostname} ESMTP Millrace sink")),
            ehlo: Canned { code: 250, bytes: ehlo },
            helo: c(250, None, hostname),
            ok: c(250, Some((2, 0, 0)), "Ok"),
            mail_ok: c(250, Some((2, 1, 0)), "Ok"),
            rcpt_ok: c(250, Some((2, 1, 5)), "Ok"),
            data_go: c(354, None, "End data with <CR><LF>.<CR><LF>"),
            quit: c(221, Some((2, 0, 0)), "Bye"),
            nested_mail: c(503, Some((5, 5, 1)), "Error: nested MAIL command"),
            need_mail: c(503, Some((5, 5, 1)), "Error: need MAIL command"),
            no_rcpts: c(554, Some((5, 5, 1)), "Error: no valid recipients"),
            too_many_rcpts: c(452, Some((4, 5, 3)), "Too many recipients"),
            tempfail: c(451, Some((4, 7, 1)), "Try again later"),
            permfail: c(550, Some((5, 1, 1)), "No such user"),
            bare_line: c(550, Some((5, 6, 0)), "Bare CR or LF in message"),
            too_big: c(552, Some((5, 3, 4)), "Message too big"),
            cannot_store: c(451, Some((4, 3, 0)), "Cannot store message"),
            unrecognized: c(500, Some((5, 5, 2)), "Command unrecognized"),
            too_long: c(500, Some((5, 5, 6)), "Line too long"),
            syntax: c(501, Some((5, 5, 4)), "Syntax error in arguments"),
            not_implemented: c(502, Some((5, 5, 1)), "Not implemented"),
            vrfy: c(252, Some((2, 5, 2)), "Cannot VRFY user"),
            help: c(214, Some((2, 0, 0)), "See RFC 5321"),
        }
    }
}

/// Stage names in the reply table.
const STAGES: [&str; 11] = [
    "greeting", "ehlo", "helo", "mail", "rcpt", "data", "dot", "rset", "noop",
    "quit", "other",
];
#[derive(Debug, Clone, Copy)]
enum Stage {
    Greeting,
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Dot,
    Rset,
    Noop,
    Quit,
    Other,
}

#[derive(Debug)]
struct Rule {
    pattern: Vec<u8>,
    reply: Canned,
    delay: Option<Duration>,
}

#[derive(Debug, Default)]
struct Txn {
    from: String,
    rcpts: Vec<String>,
    accepted: u32,
    total: u32,
}

#[derive(Debug)]
struct Conn {
    serial: u64,
    stream: TcpStream,
    inbuf: Vec<u8>,
    lines: LineReader,
    data: Option<BodyScanner>,
    dump: Option<Vec<u8>>,
    out: Vec<u8>,
    out_off: usize,
    txn: Option<Txn>,
    blocked_until: Option<Instant>,
    pending: Vec<u8>,
    closing: bool,
}

impl Conn {
    fn unsent(&self) -> usize {
        self.out.len() - self.out_off
    }
}

#[derive(Debug, Default)]
struct Counters {
    first_connection: Option<Instant>,
    last_message: Option<Instant>,
    connections: u64,
    messages: u64,
    recipients: u64,
    bytes: u64,
    codes: [BTreeMap<u16, u64>; STAGES.len()],
    errors: SinkErrors,
}

/// Everything the protocol handling needs besides the connection.
#[derive(Debug)]
struct Shared {
    replies: Replies,
    rules: Vec<Rule>,
    rng: StdRng,
    tempfail: f64,
    permfail: f64,
    dump_dir: Option<PathBuf>,
    max_size: u64,
    expect: Option<u64>,
    counters: Counters,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    done: bool,
}

impl Shared {
    fn reply(&mut self, conn: &mut Conn, stage: Stage, r: &Canned) {
        *self.counters.codes[stage as usize].entry(r.code).or_default() += 1;
        conn.out.extend_from_slice(&r.bytes);
    }

    /// Handles the input buffered on `conn` as far as it can.
    fn process(&mut self, conn: &mut Conn, key: usize, now: Instant) {
        let mut inbuf = std::mem::take(&mut conn.inbuf);
        let mut pos = 0;
        while pos < inbuf.len()
            && conn.blocked_until.is_none()
            && !conn.closing
            && conn.unsent() < OUT_LIMIT
        {
            if let Some(scanner) = conn.data.as_mut() {
                let chunk = &inbuf[pos..];
                let (used, complete) = match scanner.scan(chunk) {
                    Scan::Partial => (chunk.len(), false),
                    Scan::Complete { consumed } => (consumed, true),
                };
                if let Some(d) = conn.dump.as_mut()
                    && (d.len() + used) as u64 <= self.max_size + 5
                {
                    d.extend_from_slice(&chunk[..used]);
                }
                pos += used;
                if complete {
                    self.end_data(conn);
                }
                continue;
            }
            match conn.lines.next_line(&inbuf[pos..], MAX_COMMAND_LINE) {
                LineStatus::Line { len, consumed, .. } => {
                    self.command(conn, key, &inbuf[pos..pos + len], now);
                    pos += consumed;
                }
                LineStatus::TooLong { consumed } => {
                    self.counters.errors.bad_command += 1;
                    let r = self.replies.too_long.clone();
                    self.reply(conn, Stage::Other, &r);
                    pos += consumed;
                }
                LineStatus::Partial { discard } => {
                    pos += discard;
                    break;
                }
            }
        }
        inbuf.drain(..pos);
        conn.inbuf = inbuf;
    }

    fn command(
        &mut self,
        conn: &mut Conn,
        key: usize,
        line: &[u8],
        now: Instant,
    ) {
        let cmd = match parse_command(line) {
            Ok(cmd) => cmd,
            Err(e) => {
                self.counters.errors.bad_command += 1;
                let r = match e {
                    CommandError::Unrecognized
                    | CommandError::InvalidCharacters => {
                        &self.replies.unrecognized
                    }
                    CommandError::LineTooLong => &self.replies.too_long,
                    _ => &self.replies.syntax,
                }
                .clone();
                return self.reply(conn, Stage::Other, &r);
            }
        };
        let r = &self.replies;
        let (stage, canned) = match cmd {
            Command::Ehlo(_) => {
                conn.txn = None;
                (Stage::Ehlo, r.ehlo.clone())
            }
            Command::Helo(_) => {
                conn.txn = None;
                (Stage::Helo, r.helo.clone())
            }
            Command::Mail { from, .. } => {
                if conn.txn.is_some() {
                    (Stage::Mail, r.nested_mail.clone())
                } else {
                    let from = from
                        .mailbox()
                        .map(|m| m.as_str().to_owned())
                        .unwrap_or_default();
                    conn.txn = Some(Txn { from, ..Txn::default() });
                    (Stage::Mail, r.mail_ok.clone())
                }
            }
            Command::Rcpt { to, .. } => {
                return self.rcpt(conn, key, to.mailbox().as_str(), now);
            }
            Command::Data => match &conn.txn {
                None => (Stage::Data, r.need_mail.clone()),
                Some(t) if t.accepted == 0 => {
                    (Stage::Data, r.no_rcpts.clone())
                }
                Some(_) => {
                    conn.data = Some(BodyScanner::new());
                    if self.dump_dir.is_some() {
                        conn.dump = Some(Vec::new());
                    }
                    (Stage::Data, r.data_go.clone())
                }
            },
            Command::Rset => {
                conn.txn = None;
                (Stage::Rset, r.ok.clone())
            }
            Command::Noop => (Stage::Noop, r.ok.clone()),
            Command::Quit => {
                conn.closing = true;
                (Stage::Quit, r.quit.clone())
            }
            Command::Vrfy(_) => (Stage::Other, r.vrfy.clone()),
            Command::Help(_) => (Stage::Other, r.help.clone()),
            _ => (Stage::Other, r.not_implemented.clone()),
        };
        self.reply(conn, stage, &canned);
    }

    fn rcpt(&mut self, conn: &mut Conn, key: usize, addr: &str, now: Instant) {
        let Some(txn) = conn.txn.as_mut() else {
            let r = self.replies.need_mail.clone();
            return self.reply(conn, Stage::Rcpt, &r);
        };
        if txn.total >= MAX_RECIPIENTS {
            let r = self.replies.too_many_rcpts.clone();
            return self.reply(conn, Stage::Rcpt, &r);
        }
        txn.total += 1;
        let rule = self
            .rules
            .iter()
            .find(|r| glob_match(&r.pattern, addr.as_bytes()));
        let (reply, delay) = match rule {
            Some(rule) => (rule.reply.clone(), rule.delay),
            None if self.tempfail + self.permfail > 0.0 => {
                let roll: f64 = self.rng.random::<f64>() * 100.0;
                if roll < self.tempfail {
                    (self.replies.tempfail.clone(), None)
                } else if roll < self.tempfail + self.permfail {
                    (self.replies.permfail.clone(), None)
                } else {
                    (self.replies.rcpt_ok.clone(), None)
                }
            }
            None => (self.replies.rcpt_ok.clone(), None),
        };
        if (200..300).contains(&reply.code) {
            txn.accepted += 1;
            if self.dump_dir.is_some() {
                txn.rcpts.push(addr.to_owned());
            }
        }
        match delay {
            Some(d) => {
                *self.counters.codes[Stage::Rcpt as usize]
                    .entry(reply.code)
                    .or_default() += 1;
                let until = now + d;
                conn.blocked_until = Some(until);
                conn.pending = reply.bytes;
                self.timers.push(Reverse((until, key, conn.serial)));
            }
            None => self.reply(conn, Stage::Rcpt, &reply),
        }
    }

    fn end_data(&mut self, conn: &mut Conn) {
        let scanner = conn.data.take().unwrap_or_default();
        let dump = conn.dump.take();
        let txn = conn.txn.take().unwrap_or_default();
        let len = scanner.body_len();
        let r = if scanner.saw_bare_line_ending() {
            self.counters.errors.bare_line_ending += 1;
            self.replies.bare_line.clone()
        } else if len > self.max_size {
            self.counters.errors.too_big += 1;
            self.replies.too_big.clone()
        } else if let Err(e) = self.dump_message(&txn, dump, len) {
            self.counters.errors.io += 1;
            eprintln!("millrace-load sink: cannot dump a message: {e}");
            self.replies.cannot_store.clone()
        } else {
            let c = &mut self.counters;
            c.messages += 1;
            c.recipients += u64::from(txn.accepted);
            c.bytes += len;
            c.last_message = Some(Instant::now());
            if self.expect.is_some_and(|n| c.messages >= n) {
                self.done = true;
            }
            Canned::new(
                250,
                Some((2, 0, 0)),
                &format!("Ok: queued as {:08X}", c.messages),
            )
        };
        self.reply(conn, Stage::Dot, &r);
    }

    fn dump_message(
        &self,
        txn: &Txn,
        wire: Option<Vec<u8>>,
        len: u64,
    ) -> io::Result<()> {
        let (Some(dir), Some(mut wire)) = (&self.dump_dir, wire) else {
            return Ok(());
        };
        wire.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        let mut file = Vec::with_capacity(wire.len() + 256);
        file.extend_from_slice(b"X-Millrace-Envelope-From: <");
        file.extend_from_slice(txn.from.as_bytes());
        file.extend_from_slice(b">\r\n");
        for r in &txn.rcpts {
            file.extend_from_slice(b"X-Millrace-Envelope-To: <");
            file.extend_from_slice(r.as_bytes());
            file.extend_from_slice(b">\r\n");
        }
        millrace_proto::unstuff(&wire, &mut file);
        let n = self.counters.messages + 1;
        std::fs::write(dir.join(format!("msg-{n:08}.eml")), file)
    }
}

struct Engine {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    shared: Shared,
    scratch: Vec<u8>,
    serial: u64,
    start: Instant,
    accept_retry: Option<Instant>,
}

impl Engine {
    fn new(opts: &SinkOptions) -> Result<Self, LoadError> {
        let poll = Poll::new().map_err(LoadError::Poll)?;
        let mut listener = listen(opts.listen).map_err(|source| {
            LoadError::Listen { addr: opts.listen, source }
        })?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(LoadError::Poll)?;
        let rules = opts
            .scripts
            .iter()
            .map(|s| {
                let text =
                    if s.text.is_empty() { "Scripted" } else { &s.text };
                Rule {
                    pattern: s.pattern.as_bytes().to_vec(),
                    reply: Canned::new(s.code, None, text),
                    delay: s.delay,
                }
            })
            .collect();
        let rng = match opts.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Self {
            poll,
            listener,
            conns: Slab::new(),
            shared: Shared {
                replies: Replies::new(&opts.hostname, opts.max_size),
                rules,
                rng,
                tempfail: opts.tempfail_percent,
                permfail: opts.permfail_percent,
                dump_dir: opts.dump.clone(),
                max_size: opts.max_size,
                expect: opts.expect,
                counters: Counters::default(),
                timers: BinaryHeap::new(),
                done: opts.expect == Some(0),
            },
            scratch: vec![0; 64 * 1024],
            serial: 0,
            start: Instant::now(),
            accept_retry: None,
        })
    }

    fn run(
        &mut self,
        opts: &SinkOptions,
        mut progress: Option<SinkProgressFn>,
    ) -> Result<SinkReport, LoadError> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = self.start + Duration::from_secs(1);
        let mut interrupted = false;
        let mut drain_until = None;
        loop {
            if opts.stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            let now = Instant::now();
            if self.shared.done {
                // Accept no more; let open sessions finish, briefly.
                let until = *drain_until.get_or_insert_with(|| {
                    let _ =
                        self.poll.registry().deregister(&mut self.listener);
                    now + DRAIN_TIME
                });
                if self.conns.is_empty() || now >= until {
                    break;
                }
            }
            let mut wake = next_tick.min(now + Duration::from_millis(100));
            if let Some(Reverse((t, _, _))) = self.shared.timers.peek() {
                wake = wake.min(*t);
            }
            if let Some(t) = self.accept_retry {
                wake = wake.min(t);
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
                if ev.token() == LISTENER {
                    self.accept_all(now);
                } else {
                    self.pump(ev.token().0, now);
                }
            }
            if self.accept_retry.is_some_and(|t| t <= now) {
                self.accept_retry = None;
                self.accept_all(now);
            }
            self.fire_timers(now);
            if now >= next_tick {
                next_tick += Duration::from_secs(1);
                self.tick(opts, progress.as_mut());
            }
        }
        self.tick(opts, progress.as_mut());
        Ok(self.report(interrupted))
    }

    fn tick(&self, opts: &SinkOptions, progress: Option<&mut SinkProgressFn>) {
        if let Some(p) = progress {
            let c = &self.shared.counters;
            p(&SinkProgress {
                elapsed: self.start.elapsed(),
                messages: c.messages,
                recipients: c.recipients,
                connections: c.connections,
                bytes: c.bytes,
                open: self.conns.len(),
            });
        }
        if let Some(path) = &opts.count_file
            && let Err(e) = self.write_count_file(path)
        {
            eprintln!(
                "millrace-load sink: cannot write {}: {e}",
                path.display()
            );
        }
    }

    fn write_count_file(&self, path: &Path) -> io::Result<()> {
        let c = &self.shared.counters;
        let json = serde_json::json!({
            "elapsed_secs": self.start.elapsed().as_secs_f64(),
            "connections": c.connections,
            "messages": c.messages,
            "recipients": c.recipients,
            "bytes": c.bytes,
        });
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, format!("{json}\n"))?;
        std::fs::rename(&tmp, path)
    }

    fn report(&self, interrupted: bool) -> SinkReport {
        let c = &self.shared.counters;
        let active = match (c.first_connection, c.last_message) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        SinkReport {
            elapsed_secs: self.start.elapsed().as_secs_f64(),
            active_secs: active,
            connections: c.connections,
            messages: c.messages,
            recipients: c.recipients,
            bytes: c.bytes,
            messages_per_sec: per_sec(c.messages, active),
            mb_per_sec: per_sec(c.bytes, active) / 1e6,
            replies: STAGES
                .iter()
                .zip(&c.codes)
                .filter(|(_, m)| !m.is_empty())
                .map(|(n, m)| ((*n).to_owned(), m.clone()))
                .collect(),
            errors: c.errors.clone(),
            interrupted,
        }
    }

    fn accept_all(&mut self, now: Instant) {
        if self.shared.done {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let c = &mut self.shared.counters;
                    c.connections += 1;
                    c.first_connection.get_or_insert(now);
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(key),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        self.shared.counters.errors.accept_failed += 1;
                        continue;
                    }
                    self.serial += 1;
                    let mut conn = Conn {
                        serial: self.serial,
                        stream,
                        inbuf: Vec::new(),
                        lines: LineReader::new(),
                        data: None,
                        dump: None,
                        out: Vec::new(),
                        out_off: 0,
                        txn: None,
                        blocked_until: None,
                        pending: Vec::new(),
                        closing: false,
                    };
                    let g = self.shared.replies.greeting.clone();
                    self.shared.reply(&mut conn, Stage::Greeting, &g);
                    entry.insert(conn);
                    self.pump(key, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // E.g. EMFILE: the connection stays in the backlog;
                    // try again shortly instead of spinning.
                    self.shared.counters.errors.accept_failed += 1;
                    self.accept_retry = Some(now + Duration::from_millis(100));
                    return;
                }
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((t, key, serial))) = self.shared.timers.peek()
        {
            if t > now {
                return;
            }
            self.shared.timers.pop();
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.serial != serial
                || conn.blocked_until.is_none_or(|u| u > now)
            {
                continue;
            }
            conn.blocked_until = None;
            let pending = std::mem::take(&mut conn.pending);
            conn.out.extend_from_slice(&pending);
            self.pump(key, now);
        }
    }

    /// Writes queued output; false when the connection is gone.
    fn flush(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        while conn.unsent() > 0 {
            match conn.stream.write(&conn.out[conn.out_off..]) {
                Ok(0) => {
                    self.close(key);
                    return false;
                }
                Ok(n) => conn.out_off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.shared.counters.errors.io += 1;
                    self.close(key);
                    return false;
                }
            }
        }
        if conn.unsent() == 0 {
            conn.out.clear();
            conn.out_off = 0;
        }
        true
    }

    /// Processes input, writes replies and reads more, until the socket
    /// would block or the session waits (delay, full output, QUIT).
    fn pump(&mut self, key: usize, now: Instant) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            self.shared.process(conn, key, now);
            if !self.flush(key) {
                return;
            }
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.closing {
                if conn.unsent() == 0 {
                    self.close(key);
                }
                return;
            }
            if conn.blocked_until.is_some() || conn.unsent() >= OUT_LIMIT {
                return;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    if conn.data.is_some() {
                        self.shared.counters.errors.closed_in_data += 1;
                    }
                    self.close(key);
                    return;
                }
                Ok(n) => conn.inbuf.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::ConnectionReset {
                        self.shared.counters.errors.io += 1;
                    }
                    self.close(key);
                    return;
                }
            }
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_parse() {
        let s: Script = "fail*@=550 5.1.1 No such user".parse().unwrap();
        assert_eq!(
            s,
            Script {
                pattern: "fail*@*".into(),
                code: 550,
                text: "5.1.1 No such user".into(),
                delay: None
            }
        );
        let s: Script = "delay*@=250 Ok;delay=500ms".parse().unwrap();
        assert_eq!(s.code, 250);
        assert_eq!(s.text, "Ok");
        assert_eq!(s.delay, Some(Duration::from_millis(500)));
        let s: Script = "x@y.z=451".parse().unwrap();
        assert_eq!(
            (s.pattern.as_str(), s.code, s.text.as_str()),
            ("x@y.z", 451, "")
        );
        for bad in [
            "nopattern",
            "=250 Ok",
            "a@=25",
            "a@=199 too low",
            "a@=600 too high",
            "a@=2500 Ok",
            "a@=250 Ok;delay=soon",
            "a@=250 Ok;colour=blue",
        ] {
            assert!(bad.parse::<Script>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_options_are_refused() {
        let cases = [
            SinkOptions { tempfail_percent: 101.0, ..SinkOptions::default() },
            SinkOptions { permfail_percent: -1.0, ..SinkOptions::default() },
            SinkOptions {
                tempfail_percent: 60.0,
                permfail_percent: 60.0,
                ..SinkOptions::default()
            },
            SinkOptions { hostname: String::new(), ..SinkOptions::default() },
        ];
        for opts in cases {
            assert!(matches!(
                run_sink(opts, |_| panic!("must not start")),
                Err(LoadError::InvalidOption { .. })
            ));
        }
    }
}
