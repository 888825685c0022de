//! Millrace's event loop: N threads, each with its own `mio::Poll`, its own
//! SO_REUSEPORT listener per address (so the kernel spreads connections),
//! a timer queue, and a waker plus channel for work sent from other threads.
//!
//! This crate knows nothing of SMTP. A [`Handler`] (one per thread, made on
//! that thread, never moved) gets the connections accepted on that thread,
//! readiness events for the tokens it registered itself, fired timers,
//! messages sent through a [`Remote`], and the stop request. The inbound
//! server accepts through it; outbound delivery registers the `TcpStream`s
//! it connects itself. There is no thread per connection and no async
//! runtime.
//!
//! # Contracts (the same as mio's)
//!
//! - **Edge-triggered readiness.** mio registrations are edge-triggered: an
//!   event says "became ready", once. On an event, read (or write) until
//!   the call returns [`std::io::ErrorKind::WouldBlock`], or remember that
//!   more is pending and come back to it (for example with a timer at
//!   `cx.now()`); otherwise no further event will arrive for that socket.
//!   The reactor does this itself for its listeners: it accepts until
//!   `WouldBlock` (in batches, so one busy listener cannot starve the
//!   other sockets).
//! - **Spurious events.** An event may arrive with nothing to read or no
//!   room to write, or for a token the handler already dropped. Handlers
//!   must tolerate both (treat `WouldBlock` as "wait", ignore unknown
//!   tokens).
//! - **Interrupted calls.** `poll` returning `Interrupted` (EINTR) is
//!   retried by the reactor; handlers should retry `Interrupted` from
//!   their own reads and writes.
//! - **Tokens.** Tokens below [`MAX_HANDLER_TOKEN`] are the handler's (use
//!   slab keys); the reactor reserves the ones above for its listeners
//!   and its waker, and never passes them to [`Handler::event`].
//! - **Messages.** Messages sent through a [`Remote`] are delivered in the
//!   order each sender sent them, and none is lost while the thread runs,
//!   including messages sent before the thread started or while it was
//!   busy.
//! - **Timers.** A timer fires once, at or after its deadline, on the
//!   thread that set it; one set for a time already past fires on the next
//!   loop iteration; a cancelled timer never fires.
//! - **Accept errors.** An accept error such as EMFILE or ENFILE never
//!   stops the loop: that listener is paused for 100 ms and then resumes.
//!
//! ```
//! use std::time::Duration;
//! use millrace_reactor::*;
//!
//! /// Counts nothing, closes nothing, stops at once.
//! #[derive(Debug)]
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
//! assert_ne!(handle.local_addrs()[0].port(), 0);
//! handle.remote(1).send(()).unwrap();
//! handle.shutdown(Duration::from_secs(1));
//! handle.join();
//! ```
//!
//! # Non goals
//!
//! - Protocols, read/write buffers, TLS: the handler owns them.
//! - Moving connections between threads (work stealing): a connection
//!   stays on the thread that accepted or registered it.
//! - Back-pressure on [`Remote::send`]: the channel is unbounded; callers
//!   bound their own work (the queue keeps a bounded active set).
//! - Platforms without SO_REUSEPORT.
#![forbid(unsafe_code)]

pub mod timer;
mod worker;

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::net::TcpStream;
use mio::{Registry, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

pub use timer::TimerId;
use timer::TimerQueue;

/// Tokens below this are the handler's; the reactor reserves the rest.
pub const MAX_HANDLER_TOKEN: usize = usize::MAX / 2;

/// The waker's token.
const WAKER: Token = Token(usize::MAX);
/// Listener `j` of a thread uses `Token(LISTENER_BASE + j)`.
const LISTENER_BASE: usize = MAX_HANDLER_TOKEN + 1;

/// Settings of a reactor.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// Threads; 0 = one per core (`std::thread::available_parallelism`).
    pub threads: usize,
    /// Addresses to listen on; may be empty (outbound-only reactor). Port
    /// 0 picks a free port once, and every thread binds that same port.
    pub listen: Vec<SocketAddr>,
    /// Listen backlog, e.g. 1024.
    pub backlog: i32,
    /// Thread name prefix; threads are named `{name}-{index}`.
    pub name: String,
}

/// Why the reactor could not start or a message could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReactorError {
    /// Creating, configuring or binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// Creating a poll, a waker or a thread failed.
    #[error("reactor set-up failed: {0}")]
    Setup(#[source] io::Error),
    /// Waking the target thread failed (the message was queued).
    #[error("cannot wake reactor thread: {0}")]
    Wake(#[source] io::Error),
    /// The target thread has exited; the message was not delivered.
    #[error("reactor thread has stopped")]
    Stopped,
}

/// The code run on each reactor thread: one instance per thread, made by
/// the factory on that thread (so it need not be `Send`).
///
/// Every callback gets a [`Context`] for registering sockets, setting
/// timers and reading the cached clock. Callbacks must not block: the
/// whole thread waits for them. See the crate docs for the readiness
/// contracts (edge-triggered, spurious events, drain until `WouldBlock`).
/// A panic in a callback is not caught: it ends the thread and is
/// re-raised by [`ReactorHandle::join`].
pub trait Handler: 'static {
    /// Work sent to this thread through a [`Remote`].
    type Msg: Send + 'static;

    /// A new inbound connection, accepted on one of this thread's
    /// listeners: already non-blocking, TCP_NODELAY set, not registered.
    /// `local` is the connection's own address (for a wildcard listener,
    /// the address the client reached).
    fn accept(
        &mut self,
        cx: &mut Context<'_>,
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
    );

    /// Readiness for a token the handler registered itself (through
    /// [`Context::registry`]). May be spurious; drain until `WouldBlock`.
    fn event(&mut self, cx: &mut Context<'_>, event: &mio::event::Event);

    /// A timer set with [`Context::set_timer`] fired.
    fn timer(&mut self, cx: &mut Context<'_>, token: Token, data: u64);

    /// A message sent to this thread through a [`Remote`].
    fn message(&mut self, cx: &mut Context<'_>, msg: Self::Msg);

    /// A graceful stop was requested; this thread's listeners are already
    /// deregistered and closed. Called once, then again after every
    /// event, timer and message while stopping; return true when this
    /// thread's work is finished and the thread may exit. The thread
    /// exits at the grace deadline whatever this returns (the handler is
    /// then dropped, closing whatever it still holds).
    fn shutdown(&mut self, cx: &mut Context<'_>) -> bool;
}

/// What a handler can use during a callback.
#[derive(Debug)]
pub struct Context<'a> {
    registry: &'a Registry,
    timers: &'a mut TimerQueue<TimerKind>,
    now: Instant,
    thread: usize,
    stopping: bool,
}

/// What a timer in a thread's queue is for.
#[derive(Debug, Clone, Copy)]
enum TimerKind {
    /// Set by the handler.
    User(Token, u64),
    /// The reactor's own: resume accepting on listener `j` (after an
    /// accept error, or after a full batch of accepts).
    Accept(usize),
}

impl Context<'_> {
    /// The thread's mio registry: register your own sockets here, with
    /// tokens below [`MAX_HANDLER_TOKEN`].
    pub fn registry(&self) -> &Registry {
        self.registry
    }

    /// The time, read once per loop iteration (after waiting for events).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// This thread's index, `0..threads`.
    pub fn thread_index(&self) -> usize {
        self.thread
    }

    /// Arms a timer: [`Handler::timer`] gets `token` and `data` at or after
    /// `at`; a time already past fires on the next loop iteration. O(log n).
    pub fn set_timer(
        &mut self,
        at: Instant,
        token: Token,
        data: u64,
    ) -> TimerId {
        self.timers.insert(at, TimerKind::User(token, data))
    }

    /// Cancels a timer; a no-op when it fired or was cancelled already.
    /// O(log n), and the memory is released at once.
    pub fn cancel_timer(&mut self, id: TimerId) {
        if let Some(TimerKind::User(..)) = self.timers.get(id) {
            self.timers.cancel(id);
        }
    }

    /// Timers pending on this thread (the handler's and the reactor's).
    pub fn timers_pending(&self) -> usize {
        self.timers.len()
    }

    /// True once a graceful stop was requested.
    pub fn stopping(&self) -> bool {
        self.stopping
    }
}

/// A cloneable, `Send + Sync` handle that sends work to one reactor
/// thread: a channel plus the thread's `mio::Waker`.
#[derive(Debug)]
pub struct Remote<M> {
    tx: Sender<M>,
    bell: Arc<Bell>,
}

impl<M> Clone for Remote<M> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), bell: Arc::clone(&self.bell) }
    }
}

impl<M: Send> Remote<M> {
    /// Queues `msg` for the thread and wakes it (unless a wake is
    /// already on its way). Never blocks. Fails with
    /// [`ReactorError::Stopped`] once the thread has exited.
    pub fn send(&self, msg: M) -> Result<(), ReactorError> {
        self.tx.send(msg).map_err(|_| ReactorError::Stopped)?;
        self.bell.ring().map_err(ReactorError::Wake)
    }
}

/// A thread's waker, rung only when no wake is pending: under load many
/// messages share one `eventfd` write.
#[derive(Debug)]
pub(crate) struct Bell {
    waker: Waker,
    /// A wake was sent and the thread has not looked at its channel
    /// since.
    rung: AtomicBool,
}

impl Bell {
    pub(crate) fn new(waker: Waker) -> Self {
        Self { waker, rung: AtomicBool::new(false) }
    }

    /// Called after queueing a message.
    fn ring(&self) -> io::Result<()> {
        if self.rung.swap(true, Ordering::AcqRel) {
            // The thread will look at its channel after this message
            // was queued (it clears the flag first, see `answer`).
            return Ok(());
        }
        self.waker.wake()
    }

    /// Called by the thread just before it drains its channel: any
    /// message queued after this rings again. The swap reads the flag
    /// a sender set after queueing, so that message is visible to the
    /// drain that follows.
    pub(crate) fn answer(&self) {
        self.rung.swap(false, Ordering::AcqRel);
    }

    /// Wakes the thread whatever the flag says (stop requests).
    fn force(&self) {
        let _ = self.waker.wake();
    }
}

/// Stop signal shared with the threads.
#[derive(Debug, Default)]
struct Stop {
    requested: AtomicBool,
    deadline: Mutex<Option<Instant>>,
}

impl Stop {
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running reactor. Dropping it without [`join`](Self::join) stops the
/// threads at once (zero grace) and waits for them.
#[derive(Debug)]
pub struct ReactorHandle<M> {
    addrs: Vec<SocketAddr>,
    remotes: Vec<Remote<M>>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<Stop>,
}

impl<M> ReactorHandle<M> {
    fn request_stop(&self, grace: Duration) {
        let at = Instant::now() + grace;
        {
            let mut d = self
                .stop
                .deadline
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // A second request may shorten the grace, never extend it.
            *d = Some(d.map_or(at, |old| old.min(at)));
        }
        self.stop.requested.store(true, Ordering::SeqCst);
        for r in &self.remotes {
            r.bell.force();
        }
    }
}

impl<M: Send + 'static> ReactorHandle<M> {
    /// The bound addresses, in `listen` order, with port 0 resolved.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.remotes.len()
    }

    /// A sender to thread `thread` (panics if `thread >= threads()`).
    pub fn remote(&self, thread: usize) -> Remote<M> {
        self.remotes[thread].clone()
    }

    /// Senders to every thread, by index.
    pub fn remotes(&self) -> Vec<Remote<M>> {
        self.remotes.clone()
    }

    /// Begins a graceful stop: every thread closes its listeners and calls
    /// [`Handler::shutdown`]; a thread exits when that returns true, or
    /// at `grace` from now. Calling it again can only shorten the grace.
    pub fn shutdown(&self, grace: Duration) {
        self.request_stop(grace);
    }

    /// Waits for every thread to exit. If a handler panicked, the first
    /// panic is re-raised here, after all threads have been joined.
    pub fn join(mut self) {
        let mut panic = None;
        for t in self.threads.drain(..) {
            if let Err(p) = t.join() {
                panic.get_or_insert(p);
            }
        }
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
    }
}

impl<M> Drop for ReactorHandle<M> {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.request_stop(Duration::ZERO);
        for t in self.threads.drain(..) {
            // A panic is not re-raised from drop (it may be unwinding).
            let _ = t.join();
        }
    }
}

/// The entry point.
#[derive(Debug)]
pub struct Reactor;

impl Reactor {
    /// Binds the listeners (port 0 is resolved once, then every thread
    /// binds the same port with SO_REUSEPORT), spawns the threads, and
    /// makes one handler per thread with `factory(thread_index)` on that
    /// thread. Binding happens here, so a busy port is reported now and
    /// connections made after this returns are queued, not refused.
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
        let mut first = Vec::with_capacity(cfg.listen.len());
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
        let mut handle = ReactorHandle {
            addrs,
            remotes: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
            stop: Arc::new(Stop::default()),
        };
        let factory = Arc::new(factory);
        // On error, dropping `handle` stops the threads already started.
        for (i, listeners) in per_thread.into_iter().enumerate() {
            let (worker, remote) = worker::Worker::<H>::new(
                i,
                listeners,
                Arc::clone(&handle.stop),
            )?;
            handle.remotes.push(remote);
            let factory = Arc::clone(&factory);
            let t = std::thread::Builder::new()
                .name(format!("{}-{i}", cfg.name))
                .spawn(move || worker.run(factory(i)))
                .map_err(ReactorError::Setup)?;
            handle.threads.push(t);
        }
        Ok(handle)
    }
}

/// A non-blocking SO_REUSEADDR + SO_REUSEPORT listener (IPV6_V6ONLY on
/// IPv6).
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

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    fn wakes(poll: &mut Poll) -> usize {
        let mut events = Events::with_capacity(8);
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        events.iter().count()
    }

    #[test]
    fn bell_rings_once_until_answered() {
        let mut poll = Poll::new().unwrap();
        let bell = Bell::new(Waker::new(poll.registry(), WAKER).unwrap());
        assert_eq!(wakes(&mut poll), 0);
        bell.ring().unwrap();
        bell.ring().unwrap();
        assert!(bell.rung.load(Ordering::SeqCst));
        assert_eq!(wakes(&mut poll), 1);
        // Not answered: further rings write nothing, so nothing new.
        bell.ring().unwrap();
        assert_eq!(wakes(&mut poll), 0);
        bell.answer();
        assert!(!bell.rung.load(Ordering::SeqCst));
        bell.ring().unwrap();
        assert_eq!(wakes(&mut poll), 1);
        bell.force();
        assert_eq!(wakes(&mut poll), 1, "forced whatever the flag");
    }
}
