//! The delivery driver: runs [`Client`] machines on reactor threads.
//!
//! The queue dispatches a [`Job`] (a destination and its first message) to
//! a thread; the driver resolves the destination (route, smarthost or MX,
//! never blocking the thread: lookups answer through the thread's
//! [`Remote`]), connects with a timeout, trying each address in turn, and
//! drives the client. Each message is opened from the spool (mmap) and its
//! Received header and wire-form body are written straight from the
//! mapping. Outcomes go back to the queue per message; when a transaction
//! ends the connection takes more work for the same destination
//! ([`Queue::take_more`]) until `max_messages_per_connection`, then QUITs.
//!
//! Every recipient of every item taken is reported exactly once, and
//! [`Queue::connection_done`] is called once per dispatched job.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use millrace_proto::{
    BodyType, EnhancedCode, MailParams, Notify, RcptParams, Reply, Ret,
};
use millrace_queue::{Destination, Job, JobItem, Outcome, Queue, RcptOutcome};
use millrace_reactor::{Context, Handler, Remote, TimerId};
use millrace_spool::{MessageId, Spool, StoredMessage};
use mio::net::TcpStream;
use mio::{Interest, Token};
use slab::Slab;

use crate::client::{Client, ClientEvent, DATA_END, Transaction};
use crate::dns::{Dns, RouteError};

/// Bytes read from a socket per call.
const READ_CHUNK: usize = 16 * 1024;

/// How long an idle connection waits for more work before QUIT. Postfix
/// caches connections for 2 s, KumoMTA for 60 s; bursty injection (many
/// short gaps) would otherwise close and reopen connections all the time.
pub const IDLE_KEEP: Duration = Duration::from_secs(30);

/// Settings of the driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Our name in EHLO.
    pub helo_name: String,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long we wait for any reply (RFC 5321 section 4.5.3.2 suggests
    /// minutes).
    pub reply_timeout: Duration,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
}

/// Work for a delivery thread.
#[derive(Debug)]
pub enum DeliveryMsg {
    /// A new connection for this destination, with its first work.
    Job(Job),
    /// Ready work waits for this destination: idle connections take it.
    Nudge(Destination),
    /// A lookup for connection `key` finished.
    Resolved {
        /// Slab key.
        key: usize,
        /// Serial of the connection.
        serial: u64,
        /// Addresses with the host name each belongs to, or why none.
        result: Result<Vec<(SocketAddr, String)>, RouteError>,
    },
}

/// A recipient delivered to a next hop that does not offer DSN, whose
/// sender asked for NOTIFY=SUCCESS: we owe the "relayed" notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// Index into the envelope's recipients.
    pub rcpt: u32,
    /// The next hop.
    pub remote: String,
    /// Its reply.
    pub reply: String,
}

/// Called with the relayed recipients of one message, before the outcome
/// is reported (the message is still in the spool).
pub type RelayedHook = Box<dyn Fn(MessageId, &[Relayed]) + Send + Sync>;

/// State shared by the delivery handlers of all threads.
pub struct DriverShared {
    cfg: DriverConfig,
    spool: Spool,
    dns: Dns,
    queue: OnceLock<Queue>,
    remotes: OnceLock<Vec<Remote<DeliveryMsg>>>,
    relayed: OnceLock<RelayedHook>,
}

impl std::fmt::Debug for DriverShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverShared").field("cfg", &self.cfg).finish()
    }
}

impl DriverShared {
    /// Shared state; the queue and the remotes are set once started.
    pub fn new(cfg: DriverConfig, spool: Spool, dns: Dns) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            spool,
            dns,
            queue: OnceLock::new(),
            remotes: OnceLock::new(),
            relayed: OnceLock::new(),
        })
    }

    /// Sets the NOTIFY=SUCCESS hook (see [`Relayed`]).
    pub fn set_relayed_hook(&self, hook: RelayedHook) {
        let _ = self.relayed.set(hook);
    }

    /// Sets the queue outcomes are reported to.
    pub fn set_queue(&self, queue: Queue) {
        let _ = self.queue.set(queue);
    }

    /// Sets the delivery reactor's remotes (lookups answer through them).
    pub fn set_remotes(&self, remotes: Vec<Remote<DeliveryMsg>>) {
        let _ = self.remotes.set(remotes);
    }

    fn queue(&self) -> &Queue {
        // Jobs only come from the queue, so it is set before any job.
        self.queue.get().expect("queue set before the first job")
    }
}

/// What a connection is doing.
#[derive(Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for DNS.
    Resolving,
    /// TCP connect in progress to `addrs[next - 1]`.
    Connecting,
    /// Talking SMTP.
    Open,
}

/// The message of the current transaction.
#[derive(Debug)]
struct Current {
    item: JobItem,
    msg: StoredMessage,
    /// Body write progress: 0 = header, 1 = body, 2 = end marker, 3 done.
    part: u8,
    pos: usize,
    writing: bool,
}

/// One outbound connection.
#[derive(Debug)]
struct OutConn {
    dest: Destination,
    serial: u64,
    stage: Stage,
    addrs: Vec<(SocketAddr, String)>,
    next: usize,
    /// Why the last address failed (for the report when all do).
    last_error: Option<Reply>,
    stream: Option<TcpStream>,
    remote: String,
    client: Client,
    input: Vec<u8>,
    out: Vec<u8>,
    items: VecDeque<JobItem>,
    current: Option<Current>,
    carried: usize,
    timer: Option<TimerId>,
    /// Connected, nothing to do, waiting up to [`IDLE_KEEP`] for work.
    idle: bool,
}

/// The delivery handler of one reactor thread.
#[derive(Debug)]
pub struct Outbound {
    shared: Arc<DriverShared>,
    conns: Slab<OutConn>,
    serial: u64,
    buf: Box<[u8]>,
    /// Idle connections by destination (reused before opening new ones).
    idle: HashMap<Destination, Vec<usize>>,
}

impl Outbound {
    /// A handler for one delivery thread.
    pub fn new(shared: Arc<DriverShared>) -> Self {
        Self {
            shared,
            conns: Slab::new(),
            serial: 0,
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
            idle: HashMap::new(),
        }
    }

    /// Gives a job to an idle connection to its destination, if there is
    /// one; the job's own connection slot is returned to the queue.
    /// Returns the job when it still needs a connection of its own.
    fn reuse_idle(&mut self, cx: &mut Context<'_>, job: Job) -> Option<Job> {
        let Some(keys) = self.idle.get_mut(&job.dest) else {
            return Some(job);
        };
        let Some(key) = keys.pop() else { return Some(job) };
        if keys.is_empty() {
            self.idle.remove(&job.dest);
        }
        let c = &mut self.conns[key];
        c.idle = false;
        c.items.extend(job.items);
        self.shared.queue().connection_done(&job.dest);
        self.next_transaction(key);
        if self.flush_output(cx, key) && self.conns.contains(key) {
            let at = cx.now() + self.shared.cfg.reply_timeout;
            self.arm(cx, key, at);
        }
        None
    }

    /// Gives ready work for `dest` to this thread's idle connections.
    fn nudge(&mut self, cx: &mut Context<'_>, dest: &Destination) {
        let max = self.shared.cfg.max_messages_per_connection;
        while let Some(&key) = self.idle.get(dest).and_then(|k| k.last()) {
            let room = max.saturating_sub(self.conns[key].carried);
            let Some(job) = self.shared.queue().take_more(dest, room) else {
                return;
            };
            self.unidle(key);
            self.conns[key].items.extend(job.items);
            self.next_transaction(key);
            if self.flush_output(cx, key) && self.conns.contains(key) {
                let at = cx.now() + self.shared.cfg.reply_timeout;
                self.arm(cx, key, at);
            }
        }
    }

    /// Forgets `key` as idle.
    fn unidle(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if !std::mem::take(&mut c.idle) {
            return;
        }
        if let Some(keys) = self.idle.get_mut(&c.dest) {
            keys.retain(|&k| k != key);
            if keys.is_empty() {
                self.idle.remove(&c.dest);
            }
        }
    }

    fn start_job(&mut self, cx: &mut Context<'_>, job: Job) {
        let Some(job) = self.reuse_idle(cx, job) else { return };
        self.serial += 1;
        let serial = self.serial;
        let key = self.conns.insert(OutConn {
            dest: job.dest.clone(),
            serial,
            stage: Stage::Resolving,
            addrs: Vec::new(),
            next: 0,
            last_error: None,
            stream: None,
            remote: String::new(),
            client: Client::new(&self.shared.cfg.helo_name),
            input: Vec::new(),
            out: Vec::new(),
            items: job.items.into(),
            current: None,
            carried: 0,
            timer: None,
            idle: false,
        });
        let thread = cx.thread_index();
        let shared = Arc::clone(&self.shared);
        let answer = move |result| {
            if let Some(r) = shared.remotes.get() {
                let _ = r[thread].send(DeliveryMsg::Resolved {
                    key,
                    serial,
                    result,
                });
            }
        };
        let dest = job.dest.as_str();
        if let Some(domain) = dest.strip_prefix("mx:") {
            self.shared.dns.resolve_mx(
                domain,
                Box::new(move |res| {
                    answer(res.map(|exs| {
                        exs.into_iter()
                            .flat_map(|e| {
                                let host = e.host;
                                e.addrs
                                    .into_iter()
                                    .map(move |a| (a, host.clone()))
                            })
                            .collect()
                    }))
                }),
            );
            return;
        }
        let hostport = dest
            .strip_prefix("route:")
            .or_else(|| dest.strip_prefix("smarthost:"))
            .unwrap_or(dest);
        match split_host_port(hostport) {
            Some((host, port)) => {
                if let Ok(ip) = host.parse::<IpAddr>() {
                    let addr = SocketAddr::new(ip, port);
                    answer(Ok(vec![(addr, format!("[{ip}]"))]));
                } else {
                    let h = host.to_owned();
                    self.shared.dns.resolve_host(
                        host,
                        port,
                        Box::new(move |res| {
                            answer(res.map(|v| {
                                v.into_iter().map(|a| (a, h.clone())).collect()
                            }))
                        }),
                    );
                }
            }
            None => answer(Err(RouteError::NoSuchDomain(hostport.into()))),
        }
    }

    fn resolved(
        &mut self,
        cx: &mut Context<'_>,
        key: usize,
        result: Result<Vec<(SocketAddr, String)>, RouteError>,
    ) {
        let c = &mut self.conns[key];
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                c.addrs = addrs;
                self.connect_next(cx, key);
            }
            Ok(_) => {
                let e = RouteError::NoAddress(c.dest.to_string());
                self.fail_all(cx, key, &e.reply(), e.is_permanent());
            }
            Err(e) => self.fail_all(cx, key, &e.reply(), e.is_permanent()),
        }
    }

    /// Connects to the next address, or fails the work when none is left.
    fn connect_next(&mut self, cx: &mut Context<'_>, key: usize) {
        loop {
            let c = &mut self.conns[key];
            if let Some(mut s) = c.stream.take() {
                let _ = cx.registry().deregister(&mut s);
            }
            if c.next >= c.addrs.len() {
                let reply = c.last_error.take().unwrap_or_else(|| {
                    Reply::new(
                        451,
                        Some(EnhancedCode::new(4, 4, 1)),
                        "no answer from the next hop",
                    )
                });
                self.fail_all(cx, key, &reply, false);
                return;
            }
            let (addr, host) = c.addrs[c.next].clone();
            c.next += 1;
            c.remote = host;
            match TcpStream::connect(addr) {
                Ok(mut s) => {
                    // Commands and body parts go out as separate writes:
                    // without this, Nagle and delayed ACKs stall each
                    // message for tens of milliseconds.
                    let _ = s.set_nodelay(true);
                    let reg = cx.registry().register(
                        &mut s,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    if reg.is_err() {
                        continue;
                    }
                    c.stream = Some(s);
                    c.stage = Stage::Connecting;
                    c.client = Client::new(&self.shared.cfg.helo_name);
                    c.input.clear();
                    c.out.clear();
                    let at = cx.now() + self.shared.cfg.connect_timeout;
                    self.arm(cx, key, at);
                    return;
                }
                Err(e) => {
                    c.last_error = Some(connect_failed(&e));
                }
            }
        }
    }

    fn arm(
        &mut self,
        cx: &mut Context<'_>,
        key: usize,
        at: std::time::Instant,
    ) {
        let c = &mut self.conns[key];
        if let Some(t) = c.timer.take() {
            cx.cancel_timer(t);
        }
        c.timer = Some(cx.set_timer(at, Token(key), c.serial));
    }

    /// Reports every recipient of every item held as failed, then ends
    /// the connection.
    fn fail_all(
        &mut self,
        cx: &mut Context<'_>,
        key: usize,
        reply: &Reply,
        permanent: bool,
    ) {
        let c = &mut self.conns[key];
        let mut items: Vec<JobItem> = c.items.drain(..).collect();
        if let Some(cur) = c.current.take() {
            items.push(cur.item);
        }
        let remote = (!c.remote.is_empty()).then(|| c.remote.clone());
        for item in items {
            let outcomes =
                self.outcomes_for(&item, remote.as_deref(), reply, permanent);
            self.shared.queue().report(item.id, outcomes);
        }
        self.finish(cx, key);
    }

    fn outcomes_for(
        &self,
        item: &JobItem,
        remote: Option<&str>,
        reply: &Reply,
        permanent: bool,
    ) -> Vec<RcptOutcome> {
        let addresses = self
            .shared
            .spool
            .open_message(item.id)
            .map(|m| {
                item.rcpts
                    .iter()
                    .map(|&r| {
                        m.envelope()
                            .recipients
                            .get(r as usize)
                            .map(|x| x.address.clone())
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|_| vec![String::new(); item.rcpts.len()]);
        item.rcpts
            .iter()
            .zip(addresses)
            .map(|(&rcpt, address)| RcptOutcome {
                rcpt,
                address,
                outcome: outcome(permanent, false, remote, reply),
            })
            .collect()
    }

    /// Removes the connection and frees the queue's slot.
    fn finish(&mut self, cx: &mut Context<'_>, key: usize) {
        self.unidle(key);
        let mut c = self.conns.remove(key);
        if let Some(t) = c.timer.take() {
            cx.cancel_timer(t);
        }
        if let Some(mut s) = c.stream.take() {
            let _ = cx.registry().deregister(&mut s);
        }
        self.shared.queue().connection_done(&c.dest);
    }

    /// Socket readiness.
    fn ready(&mut self, cx: &mut Context<'_>, key: usize) {
        let c = &mut self.conns[key];
        if c.stage == Stage::Connecting {
            let Some(s) = c.stream.as_ref() else { return };
            match s.take_error() {
                Ok(Some(e)) | Err(e) => {
                    c.last_error = Some(connect_failed(&e));
                    self.connect_next(cx, key);
                    return;
                }
                Ok(None) => {}
            }
            match s.peer_addr() {
                Ok(_) => {
                    c.stage = Stage::Open;
                    let at = cx.now() + self.shared.cfg.reply_timeout;
                    self.arm(cx, key, at);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    c.last_error = Some(connect_failed(&e));
                    self.connect_next(cx, key);
                    return;
                }
            }
        }
        if self.conns[key].stage != Stage::Open {
            return;
        }
        self.pump(cx, key);
    }

    /// Reads replies, runs the client, writes what it produced.
    fn pump(&mut self, cx: &mut Context<'_>, key: usize) {
        let mut progressed = false;
        let mut eof = false;
        {
            let c = &mut self.conns[key];
            let Some(s) = c.stream.as_mut() else { return };
            // Edge-triggered: read until WouldBlock or a short read (the
            // client consumes complete replies as they come, so the
            // buffer stays small).
            loop {
                match s.read(&mut self.buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        c.input.extend_from_slice(&self.buf[..n]);
                        progressed = true;
                        match c.client.receive(&c.input) {
                            Ok(used) => {
                                c.input.drain(..used);
                            }
                            Err(_) => {
                                c.input.clear();
                                eof = true;
                                break;
                            }
                        }
                        if c.input.len() > 64 * 1024 {
                            // A reply line that never ends.
                            eof = true;
                            break;
                        }
                        if n < self.buf.len() {
                            // Short: nothing more queued. A later arrival
                            // raises a new edge, so skip the EAGAIN read.
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            if eof {
                c.client.closed();
            }
        }
        if !self.events(cx, key) {
            return;
        }
        if !self.flush_output(cx, key) {
            return;
        }
        let c = &self.conns[key];
        if c.idle {
            let at = cx.now() + IDLE_KEEP;
            self.arm(cx, key, at);
        } else if progressed {
            let at = cx.now() + self.shared.cfg.reply_timeout;
            self.arm(cx, key, at);
        }
    }

    /// Moves the client's output to the socket; false when the
    /// connection is gone.
    fn flush_output(&mut self, cx: &mut Context<'_>, key: usize) -> bool {
        let c = &mut self.conns[key];
        let produced = std::mem::take(c.client.output());
        c.out.extend_from_slice(&produced);
        if self.write(key).is_err() {
            self.conns[key].client.closed();
            return self.events(cx, key);
        }
        true
    }

    /// Handles client events; false when the connection is gone.
    fn events(&mut self, cx: &mut Context<'_>, key: usize) -> bool {
        loop {
            let Some(ev) = self.conns[key].client.poll_event() else {
                return true;
            };
            match ev {
                ClientEvent::Ready => self.next_transaction(key),
                ClientEvent::SendBody => {
                    let c = &mut self.conns[key];
                    if let Some(cur) = c.current.as_mut() {
                        cur.writing = true;
                        cur.part = 0;
                        cur.pos = 0;
                    }
                    let _ = c.client.body_sent();
                }
                ClientEvent::Done(results) => {
                    self.transaction_done(key, results);
                }
                ClientEvent::Closed => {
                    let c = &self.conns[key];
                    if c.items.is_empty() && c.current.is_none() {
                        self.finish(cx, key);
                    } else {
                        let reply = crate::client::connection_lost();
                        self.fail_all(cx, key, &reply, false);
                    }
                    return false;
                }
            }
        }
    }

    /// Starts the next message, takes more work, waits idle, or quits.
    fn next_transaction(&mut self, key: usize) {
        let max = self.shared.cfg.max_messages_per_connection;
        loop {
            let c = &mut self.conns[key];
            if c.items.is_empty() && c.carried < max {
                let room = max - c.carried;
                if let Some(job) = self.shared.queue().take_more(&c.dest, room)
                {
                    c.items.extend(job.items);
                }
            }
            let c = &mut self.conns[key];
            let Some(item) = c.items.pop_front() else {
                if c.carried < max && !c.idle {
                    // Wait a little for more work (see reuse_idle).
                    c.idle = true;
                    self.idle.entry(c.dest.clone()).or_default().push(key);
                } else if !c.idle {
                    let _ = c.client.quit();
                }
                return;
            };
            let msg = match self.shared.spool.open_message(item.id) {
                Ok(m) => m,
                // Gone (expired or deleted meanwhile): nothing to send.
                Err(_) => continue,
            };
            let tx = transaction(&msg, &item);
            c.carried += 1;
            match c.client.start(tx) {
                Ok(()) => {
                    c.current = Some(Current {
                        item,
                        msg,
                        part: 0,
                        pos: 0,
                        writing: false,
                    });
                    return;
                }
                Err(_) => {
                    // Too many recipients for one transaction cannot
                    // happen (the queue splits); treat as transient.
                    let reply = crate::client::connection_lost();
                    let outcomes =
                        self.outcomes_for(&item, None, &reply, false);
                    self.shared.queue().report(item.id, outcomes);
                }
            }
        }
    }

    fn transaction_done(
        &mut self,
        key: usize,
        results: Vec<crate::client::RcptResult>,
    ) {
        let c = &mut self.conns[key];
        let Some(cur) = c.current.take() else { return };
        let remote = c.remote.clone();
        let dsn_offered = c.client.dsn_offered();
        let env = cur.msg.envelope();
        if !dsn_offered {
            let relayed: Vec<Relayed> = results
                .iter()
                .filter(|r| r.kind == crate::client::RcptKind::Delivered)
                .filter_map(|r| {
                    let rcpt = *cur.item.rcpts.get(r.index)?;
                    let notify = env.recipients.get(rcpt as usize)?.notify;
                    // NOTIFY=SUCCESS (bit 2), not NEVER (bit 1).
                    (notify & 2 != 0 && notify & 1 == 0).then(|| Relayed {
                        rcpt,
                        remote: remote.clone(),
                        reply: r.reply.to_single_line(),
                    })
                })
                .collect();
            if let (false, Some(hook)) =
                (relayed.is_empty(), self.shared.relayed.get())
            {
                hook(cur.item.id, &relayed);
            }
        }
        let outcomes = results
            .into_iter()
            .filter_map(|r| {
                let rcpt = *cur.item.rcpts.get(r.index)?;
                let address =
                    env.recipients.get(rcpt as usize)?.address.clone();
                let permanent = r.kind == crate::client::RcptKind::Permanent;
                let delivered = r.kind == crate::client::RcptKind::Delivered;
                Some(RcptOutcome {
                    rcpt,
                    address,
                    outcome: outcome(
                        permanent,
                        delivered,
                        Some(&remote),
                        &r.reply,
                    ),
                })
            })
            .collect();
        // Let go of the mapping first: a message nobody reads any more
        // can return its file to the spool's pool when it is deleted.
        let id = cur.item.id;
        drop(cur);
        self.shared.queue().report(id, outcomes);
    }

    /// Writes pending commands, then the body parts straight from the
    /// mapping. Err when the socket failed.
    fn write(&mut self, key: usize) -> Result<(), ()> {
        let c = &mut self.conns[key];
        let Some(s) = c.stream.as_mut() else { return Err(()) };
        if !c.out.is_empty() {
            let n = write_some(s, &c.out)?;
            c.out.drain(..n);
            if !c.out.is_empty() {
                return Ok(());
            }
        }
        let Some(cur) = c.current.as_mut() else { return Ok(()) };
        // The Received header, the body from the mapping and the final
        // dot go out in one vectored write (one segment for a small
        // message instead of three).
        while cur.writing && cur.part < 3 {
            let parts: [&[u8]; 3] = [
                cur.msg.envelope().received.as_bytes(),
                cur.msg.body(),
                DATA_END,
            ];
            let at = usize::from(cur.part);
            let mut slices = [IoSlice::new(&[]); 3];
            for (i, part) in parts.iter().enumerate().skip(at) {
                let from = if i == at { cur.pos } else { 0 };
                slices[i] = IoSlice::new(&part[from..]);
            }
            let n = match s.write_vectored(&slices[at..]) {
                Ok(0) => return Err(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(()),
            };
            let (part, pos) = advance_parts(&parts, at, cur.pos, n);
            cur.part = part as u8;
            cur.pos = pos;
        }
        cur.writing = false;
        Ok(())
    }

    fn timeout(&mut self, cx: &mut Context<'_>, key: usize) {
        let c = &mut self.conns[key];
        c.timer = None;
        let serial = c.serial;
        match c.stage {
            Stage::Resolving => {}
            Stage::Connecting => {
                c.last_error = Some(Reply::new(
                    451,
                    Some(EnhancedCode::new(4, 4, 1)),
                    "connection timed out",
                ));
                self.connect_next(cx, key);
            }
            Stage::Open if c.idle => {
                self.unidle(key);
                let c = &mut self.conns[key];
                // Count it as full so Ready does not idle it again.
                c.carried = usize::MAX / 2;
                let _ = c.client.quit();
                self.flush_output(cx, key);
                if let Some(c) = self.conns.get(key)
                    && c.serial == serial
                {
                    let at = cx.now() + self.shared.cfg.reply_timeout;
                    self.arm(cx, key, at);
                }
            }
            Stage::Open => {
                let reply = Reply::new(
                    451,
                    Some(EnhancedCode::new(4, 4, 2)),
                    "timeout waiting for the next hop",
                );
                self.fail_all(cx, key, &reply, false);
            }
        }
    }
}

/// Where writing stands after `n` more bytes of `parts`, starting at
/// byte `pos` of part `part`: the next part and position (`parts.len()`
/// when everything went out). Empty parts are skipped.
fn advance_parts(
    parts: &[&[u8]],
    mut part: usize,
    mut pos: usize,
    mut n: usize,
) -> (usize, usize) {
    while part < parts.len() {
        let left = parts[part].len() - pos;
        if n < left {
            return (part, pos + n);
        }
        n -= left;
        part += 1;
        pos = 0;
    }
    (part, 0)
}

/// Writes what the socket takes; Err on a broken connection.
fn write_some(s: &mut TcpStream, buf: &[u8]) -> Result<usize, ()> {
    let mut done = 0;
    while done < buf.len() {
        match s.write(&buf[done..]) {
            Ok(0) => return Err(()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok(done)
}

fn connect_failed(e: &io::Error) -> Reply {
    let text = match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::TimedOut => "connection timed out",
        _ => "connection failed",
    };
    Reply::new(451, Some(EnhancedCode::new(4, 4, 1)), text)
}

fn outcome(
    permanent: bool,
    delivered: bool,
    remote: Option<&str>,
    reply: &Reply,
) -> Outcome {
    let text = reply.to_single_line();
    if delivered {
        Outcome::Delivered {
            remote: remote.unwrap_or("").to_owned(),
            reply: text,
        }
    } else if permanent {
        Outcome::Permanent { remote: remote.map(str::to_owned), reply: text }
    } else {
        Outcome::Transient { remote: remote.map(str::to_owned), reply: text }
    }
}

/// The outbound transaction for one queued message's recipients.
fn transaction(msg: &StoredMessage, item: &JobItem) -> Transaction {
    let env = msg.envelope();
    let mail_params = MailParams {
        body: if env.body_8bitmime {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        },
        smtputf8: env.smtputf8,
        ret: env.ret_full.map(|f| if f { Ret::Full } else { Ret::Hdrs }),
        envid: env.envid.clone(),
        ..MailParams::default()
    };
    let recipients = item
        .rcpts
        .iter()
        .filter_map(|&r| env.recipients.get(r as usize))
        .map(|r| {
            let notify = Notify {
                never: r.notify & 1 != 0,
                success: r.notify & 2 != 0,
                failure: r.notify & 4 != 0,
                delay: r.notify & 8 != 0,
            };
            let orcpt = r.orcpt.as_ref().and_then(|o| {
                let (t, a) = o.split_once(';')?;
                Some((t.to_owned(), a.to_owned()))
            });
            (r.address.clone(), RcptParams { notify, orcpt })
        })
        .collect();
    Transaction {
        sender: env.sender.clone(),
        mail_params,
        recipients,
        size: (env.received.len() + msg.body().len()) as u64,
        utf8_headers: env.smtputf8
            && crate::client::has_utf8_headers(msg.body()),
    }
}

/// `host:port` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port.parse().ok()?))
}

impl Handler for Outbound {
    type Msg = DeliveryMsg;

    fn accept(
        &mut self,
        _: &mut Context<'_>,
        _: TcpStream,
        _: SocketAddr,
        _: SocketAddr,
    ) {
        // The delivery reactor has no listeners.
    }

    fn event(&mut self, cx: &mut Context<'_>, event: &mio::event::Event) {
        let key = event.token().0;
        if self.conns.contains(key) {
            self.ready(cx, key);
        }
    }

    fn timer(&mut self, cx: &mut Context<'_>, token: Token, data: u64) {
        let key = token.0;
        if self.conns.get(key).is_some_and(|c| c.serial == data) {
            self.timeout(cx, key);
        }
    }

    fn message(&mut self, cx: &mut Context<'_>, msg: DeliveryMsg) {
        match msg {
            DeliveryMsg::Job(job) => self.start_job(cx, job),
            DeliveryMsg::Nudge(dest) => self.nudge(cx, &dest),
            DeliveryMsg::Resolved { key, serial, result } => {
                if self.conns.get(key).is_some_and(|c| c.serial == serial) {
                    self.resolved(cx, key, result);
                }
            }
        }
    }

    fn shutdown(&mut self, _: &mut Context<'_>) -> bool {
        // Messages in flight stay in the spool; they are retried after a
        // restart (at-least-once).
        true
    }
}

#[cfg(test)]
mod tests {
    use super::advance_parts;

    #[test]
    fn advance_parts_walks_across_parts_and_skips_empty_ones() {
        let parts: [&[u8]; 3] = [b"abc", b"", b"de"];
        assert_eq!(advance_parts(&parts, 0, 0, 0), (0, 0));
        assert_eq!(advance_parts(&parts, 0, 0, 2), (0, 2));
        assert_eq!(advance_parts(&parts, 0, 2, 1), (2, 0), "empty skipped");
        assert_eq!(advance_parts(&parts, 0, 1, 3), (2, 1));
        assert_eq!(advance_parts(&parts, 0, 0, 5), (3, 0), "all written");
        assert_eq!(advance_parts(&parts, 2, 1, 1), (3, 0));
        // Every split of every total agrees with a flat cursor.
        let flat: Vec<u8> = parts.concat();
        for first in 0..=flat.len() {
            for second in 0..=flat.len() - first {
                let (p, q) = advance_parts(&parts, 0, 0, first);
                let (p, q) = advance_parts(&parts, p, q, second);
                let offset: usize =
                    parts[..p].iter().map(|x| x.len()).sum::<usize>() + q;
                assert_eq!(offset, first + second);
            }
        }
    }
}
