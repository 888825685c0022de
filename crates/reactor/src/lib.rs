//! Millrace's event loop: N threads, each with its own `mio::Poll`, its own
//! SO_REUSEPORT listener per address (so the kernel spreads connections),
//! a timer set, and a waker plus channel for work sent from other threads.
//!
//! This crate knows nothing of SMTP. A [`Handler`] (one per thread, made on
//! that thread) gets accepted connections, readiness events for the tokens
//! it registered itself, fired timers and cross-thread messages.
//!
//! # Contracts (as mio's)
//! - Registrations are edge-triggered: on an event, read or write until
//!   `WouldBlock`, or remember that more is pending.
//! - Events may be spurious: a handler must tolerate readiness with nothing
//!   to read.
//! - Tokens below [`MAX_HANDLER_TOKEN`] are the handler's; the reactor uses
//!   the ones above for listeners and the waker.
//! - Messages sent through a [`Remote`] are delivered in order per sender,
//!   and never lost while the thread runs.
//!
//! ```no_run
//! use millrace_reactor::*;
//! struct Quiet;
//! impl Handler for Quiet {
//!     type Msg = ();
//!     fn accept(&mut self, _: &mut Context<'_>, _: mio::net::TcpStream,
//!               _: std::net::SocketAddr, _: std::net::SocketAddr) {}
//!     fn event(&mut self, _: &mut Context<'_>, _: &mio::event::Event) {}
//!     fn timer(&mut self, _: &mut Context<'_>, _: mio::Token, _: u64) {}
//!     fn message(&mut self, _: &mut Context<'_>, _: ()) {}
//!     fn shutdown(&mut self, _: &mut Context<'_>) -> bool { true }
//! }
//! let cfg = ReactorConfig {
//!     threads: 2,
//!     listen: vec!["127.0.0.1:0".parse().unwrap()],
//!     backlog: 1024,
//!     name: "demo".into(),
//! };
//! let handle = Reactor::start(cfg, |_| Quiet).unwrap();
//! handle.shutdown(std::time::Duration::from_secs(1));
//! handle.join();
//! ```
//!
//! # Non goals
//! - Protocols, buffers, TLS: the handler owns them.
//! - Work stealing between threads: connections stay where accepted.
#![forbid(unsafe_code)]

mod timer;

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};

pub use timer::{TimerId, Timers};

/// Tokens below this are the handler's; the reactor reserves the rest.
pub const MAX_HANDLER_TOKEN: usize = usize::MAX / 2;

const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = MAX_HANDLER_TOKEN + 1;

/// How long an accept error such as EMFILE pauses a listener.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Settings of a reactor.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// Threads; 0 = one per core.
    pub threads: usize,
    /// Addresses to listen on (port 0 = any free port, the same for every
    /// thread).
    pub listen: Vec<SocketAddr>,
    /// Listen backlog.
    pub backlog: i32,
    /// Thread name prefix.
    pub name: String,
}

/// Why the reactor could not start or a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// Creating a poll, waker or thread failed.
    #[error("reactor set-up failed: {0}")]
    Setup(#[source] io::Error),
    /// The target thread has stopped.
    #[error("reactor thread has stopped")]
    Stopped,
}

/// One instance per reactor thread, made by the factory on that thread.
pub trait Handler: 'static {
    /// Work sent to this thread through a [`Remote`].
    type Msg: Send + 'static;

    /// A new inbound connection (non-blocking, TCP_NODELAY set).
    fn accept(
        &mut self,
        cx: &mut Context<'_>,
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
    );

    /// Readiness for a token the handler registered itself.
    fn event(&mut self, cx: &mut Context<'_>, event: &mio::event::Event);

    /// A timer set with [`Context::set_timer`] fired.
    fn timer(&mut self, cx: &mut Context<'_>, token: Token, data: u64);

    /// A message sent to this thread through a [`Remote`].
    fn message(&mut self, cx: &mut Context<'_>, msg: Self::Msg);

    /// A graceful stop was requested (listeners are already closed).
    /// Called once, then again after every event, timer and message while
    /// stopping; return true when this thread's work is finished. The
    /// thread also exits at the grace deadline.
    fn shutdown(&mut self, cx: &mut Context<'_>) -> bool;
}

/// What a handler can use during a callback.
#[derive(Debug)]
pub struct Context<'a> {
    registry: &'a Registry,
    timers: &'a mut Timers,
    now: Instant,
    thread: usize,
    stopping: bool,
}

impl Context<'_> {
    /// The thread's mio registry (register your own sockets here).
    pub fn registry(&self) -> &Registry {
        self.registry
    }

    /// The time at the start of this loop iteration.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// This thread's index (0..threads).
    pub fn thread_index(&self) -> usize {
        self.thread
    }

    /// Arms a timer: [`Handler::timer`] gets `token` and `data` at `at`.
    pub fn set_timer(
        &mut self,
        at: Instant,
        token: Token,
        data: u64,
    ) -> TimerId {
        self.timers.insert(at, token, data)
    }

    /// Cancels a timer; a no-op when it fired or was cancelled already.
    pub fn cancel_timer(&mut self, id: TimerId) {
        self.timers.cancel(id);
    }

    /// True once a graceful stop was requested.
    pub fn stopping(&self) -> bool {
        self.stopping
    }
}

/// A cloneable handle that sends work to one reactor thread.
#[derive(Debug)]
pub struct Remote<M> {
    tx: Sender<M>,
    waker: Arc<Waker>,
}

impl<M> Clone for Remote<M> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), waker: Arc::clone(&self.waker) }
    }
}

impl<M: Send> Remote<M> {
    /// Queues `msg` for the thread and wakes it.
    pub fn send(&self, msg: M) -> Result<(), ReactorError> {
        self.tx.send(msg).map_err(|_| ReactorError::Stopped)?;
        self.waker.wake().map_err(ReactorError::Setup)
    }
}

/// Stop signal shared with the threads.
#[derive(Debug, Default)]
struct Stop {
    requested: AtomicBool,
    deadline: Mutex<Option<Instant>>,
}

/// A running reactor.
#[derive(Debug)]
pub struct ReactorHandle<M> {
    addrs: Vec<SocketAddr>,
    remotes: Vec<Remote<M>>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<Stop>,
}

impl<M: Send + 'static> ReactorHandle<M> {
    /// The bound addresses, in `listen` order (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.remotes.len()
    }

    /// A sender to thread `thread`.
    pub fn remote(&self, thread: usize) -> Remote<M> {
        self.remotes[thread].clone()
    }

    /// Senders to every thread, by index.
    pub fn remotes(&self) -> Vec<Remote<M>> {
        self.remotes.clone()
    }

    /// Begins a graceful stop; threads exit when their handler is done or
    /// after `grace`.
    pub fn shutdown(&self, grace: Duration) {
        *self.stop.deadline.lock() = Some(Instant::now() + grace);
        self.stop.requested.store(true, Ordering::SeqCst);
        for r in &self.remotes {
            let _ = r.waker.wake();
        }
    }

    /// Waits for every thread to exit (a handler panic is re-raised).
    pub fn join(self) {
        for t in self.threads {
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        }
    }
}

/// The entry point.
#[derive(Debug)]
pub struct Reactor;

impl Reactor {
    /// Binds the listeners, spawns the threads, and makes one handler per
    /// thread with `factory(thread_index)` on that thread.
    pub fn start<H, F>(
        cfg: ReactorConfig,
        factory: F,
    ) -> Result<ReactorHandle<H::Msg>, ReactorError>
    where
        H: Handler,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        let n = if cfg.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.threads
        };
        // Resolve port 0 once, so every thread binds the same port.
        let mut addrs = Vec::with_capacity(cfg.listen.len());
        let mut first: Vec<StdListener> = Vec::new();
        for &addr in &cfg.listen {
            let l = bind(addr, cfg.backlog)?;
            let bound = l
                .local_addr()
                .map_err(|source| ReactorError::Bind { addr, source })?;
            addrs.push(bound);
            first.push(l);
        }
        let mut per_thread: Vec<Vec<StdListener>> = vec![first];
        for _ in 1..n {
            let ls = addrs
                .iter()
                .map(|&a| bind(a, cfg.backlog))
                .collect::<Result<Vec<_>, _>>()?;
            per_thread.push(ls);
        }
        let stop = Arc::new(Stop::default());
        let factory = Arc::new(factory);
        let mut remotes = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for (i, listeners) in per_thread.into_iter().enumerate() {
            let poll = Poll::new().map_err(ReactorError::Setup)?;
            let waker = Arc::new(
                Waker::new(poll.registry(), WAKER)
                    .map_err(ReactorError::Setup)?,
            );
            let (tx, rx) = crossbeam_channel::unbounded();
            remotes.push(Remote { tx, waker });
            let mut mio_listeners = Vec::with_capacity(listeners.len());
            for (j, l) in listeners.into_iter().enumerate() {
                l.set_nonblocking(true).map_err(ReactorError::Setup)?;
                let mut ml = TcpListener::from_std(l);
                poll.registry()
                    .register(
                        &mut ml,
                        Token(LISTENER_BASE + j),
                        Interest::READABLE,
                    )
                    .map_err(ReactorError::Setup)?;
                mio_listeners.push(Some(ml));
            }
            let stop = Arc::clone(&stop);
            let factory = Arc::clone(&factory);
            let t = std::thread::Builder::new()
                .name(format!("{}-{i}", cfg.name))
                .spawn(move || {
                    let handler = factory(i);
                    run(i, poll, mio_listeners, rx, stop, handler);
                })
                .map_err(ReactorError::Setup)?;
            threads.push(t);
        }
        Ok(ReactorHandle { addrs, remotes, threads, stop })
    }
}

/// A non-blocking SO_REUSEPORT listener.
fn bind(addr: SocketAddr, backlog: i32) -> Result<StdListener, ReactorError> {
    let err = |source| ReactorError::Bind { addr, source };
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(err)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(err)?;
    }
    sock.set_reuse_address(true).map_err(err)?;
    sock.set_reuse_port(true).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(backlog).map_err(err)?;
    Ok(sock.into())
}

/// Marker data for the reactor's own listener-backoff timers.
const BACKOFF_TOKEN_BASE: usize = LISTENER_BASE + (1 << 20);

/// One thread's loop.
fn run<H: Handler>(
    index: usize,
    mut poll: Poll,
    mut listeners: Vec<Option<TcpListener>>,
    rx: Receiver<H::Msg>,
    stop: Arc<Stop>,
    mut handler: H,
) {
    let mut events = Events::with_capacity(1024);
    let mut timers = Timers::new();
    let mut stopping = false;
    let mut fired = Vec::new();
    loop {
        let now = Instant::now();
        let mut timeout =
            timers.next_deadline().map(|d| d.saturating_duration_since(now));
        if stopping {
            let deadline = stop.deadline.lock().unwrap_or(now);
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return;
            }
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                panic!("poll failed: {e}");
            }
        }
        let now = Instant::now();
        let mut cx = Context {
            registry: poll.registry(),
            timers: &mut timers,
            now,
            thread: index,
            stopping,
        };
        if !stopping && stop.requested.load(Ordering::SeqCst) {
            stopping = true;
            cx.stopping = true;
            for l in listeners.iter_mut() {
                if let Some(mut l) = l.take() {
                    let _ = cx.registry.deregister(&mut l);
                }
            }
            if handler.shutdown(&mut cx) {
                return;
            }
        }
        for event in events.iter() {
            let token = event.token();
            if token == WAKER {
                continue;
            }
            if token.0 >= LISTENER_BASE {
                let j = token.0 - LISTENER_BASE;
                accept_all(&mut handler, &mut cx, &mut listeners, j);
                continue;
            }
            handler.event(&mut cx, event);
        }
        // Messages: drained on every iteration (a wake may be coalesced).
        while let Ok(msg) = rx.try_recv() {
            handler.message(&mut cx, msg);
        }
        fired.clear();
        cx.timers.expire(now, &mut fired);
        for &(token, data) in &fired {
            if token.0 >= BACKOFF_TOKEN_BASE {
                let j = token.0 - BACKOFF_TOKEN_BASE;
                if let Some(Some(l)) = listeners.get_mut(j) {
                    let _ = cx.registry.register(
                        l,
                        Token(LISTENER_BASE + j),
                        Interest::READABLE,
                    );
                    accept_all(&mut handler, &mut cx, &mut listeners, j);
                }
                continue;
            }
            handler.timer(&mut cx, token, data);
        }
        if stopping && handler.shutdown(&mut cx) {
            return;
        }
    }
}

/// Accepts until WouldBlock; on errors such as EMFILE, pauses the
/// listener for [`ACCEPT_BACKOFF`] instead of spinning or dying.
fn accept_all<H: Handler>(
    handler: &mut H,
    cx: &mut Context<'_>,
    listeners: &mut [Option<TcpListener>],
    j: usize,
) {
    loop {
        let Some(Some(l)) = listeners.get_mut(j) else { return };
        match l.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(peer);
                handler.accept(cx, stream, peer, local);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                ) => {}
            Err(_) => {
                let _ = cx.registry.deregister(l);
                let at = cx.now + ACCEPT_BACKOFF;
                cx.timers.insert(at, Token(BACKOFF_TOKEN_BASE + j), 0);
                return;
            }
        }
    }
}
