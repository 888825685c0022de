//! One reactor thread's loop: wait, dispatch events, drain the channel,
//! fire due timers, and follow the stop protocol.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::timer::TimerQueue;
use crate::{
    Bell, Context, Handler, LISTENER_BASE, ReactorError, Remote, Stop,
    TimerKind, WAKER,
};

/// How long an accept error such as EMFILE pauses a listener.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts per listener per loop iteration; the rest wait one iteration,
/// so a flood of connections cannot starve established ones.
const ACCEPT_BATCH: usize = 256;

/// Events fetched per `poll` call.
const EVENTS: usize = 1024;

/// One listener of one thread.
#[derive(Debug)]
struct Listener {
    sock: TcpListener,
    /// The bound address (fallback for an accepted socket's own address).
    addr: SocketAddr,
    /// Deregistered after an accept error, until the backoff timer fires.
    paused: bool,
}

/// Everything one thread owns, made on the starting thread so that
/// messages sent before the thread runs are queued and its wake pending.
pub(crate) struct Worker<H: Handler> {
    poll: Poll,
    state: State<H>,
}

/// The parts of a [`Worker`] the dispatch code borrows mutably while the
/// poll's registry is lent to the handler.
struct State<H: Handler> {
    index: usize,
    /// `None` once closed for the stop.
    listeners: Vec<Option<Listener>>,
    rx: Receiver<H::Msg>,
    stop: Arc<Stop>,
    bell: Arc<Bell>,
}

/// How a dispatch loop ends.
enum Flow {
    Continue,
    Exit,
}

impl<H: Handler> Worker<H> {
    pub(crate) fn new(
        index: usize,
        listeners: Vec<StdListener>,
        stop: Arc<Stop>,
    ) -> Result<(Self, Remote<H::Msg>), ReactorError> {
        let poll = Poll::new().map_err(ReactorError::Setup)?;
        let bell = Arc::new(Bell::new(
            Waker::new(poll.registry(), WAKER).map_err(ReactorError::Setup)?,
        ));
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut ls = Vec::with_capacity(listeners.len());
        for (j, l) in listeners.into_iter().enumerate() {
            let addr = l.local_addr().map_err(ReactorError::Setup)?;
            let mut sock = TcpListener::from_std(l);
            poll.registry()
                .register(
                    &mut sock,
                    Token(LISTENER_BASE + j),
                    Interest::READABLE,
                )
                .map_err(ReactorError::Setup)?;
            ls.push(Some(Listener { sock, addr, paused: false }));
        }
        let state =
            State { index, listeners: ls, rx, stop, bell: Arc::clone(&bell) };
        let worker = Self { poll, state };
        Ok((worker, Remote { tx, bell }))
    }

    /// The loop; returns when the handler is done stopping or the grace
    /// deadline passes.
    pub(crate) fn run(self, mut handler: H) {
        let Self { mut poll, state: mut this } = self;
        let mut events = Events::with_capacity(EVENTS);
        let mut timers = TimerQueue::new();
        let mut stopping = false;
        let mut deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if let Some(d) = deadline
                && now >= d
            {
                return;
            }
            let mut timeout = timers.timeout(now);
            if !this.rx.is_empty()
                || (!stopping && this.stop.requested.load(Ordering::SeqCst))
            {
                // Work is already waiting: look for events, don't sleep.
                timeout = Some(Duration::ZERO);
            }
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // epoll_wait fails otherwise only on a bug (EBADF, EFAULT,
                // EINVAL); there is no way to go on serving.
                panic!("reactor thread {}: poll failed: {e}", this.index);
            }
            let now = Instant::now();
            let mut cx = Context {
                registry: poll.registry(),
                timers: &mut timers,
                now,
                thread: this.index,
                stopping,
            };
            if !stopping && this.stop.requested.load(Ordering::SeqCst) {
                stopping = true;
                cx.stopping = true;
                deadline = Some(this.stop.deadline().unwrap_or(now));
                for l in &mut this.listeners {
                    if let Some(mut l) = l.take()
                        && !l.paused
                    {
                        let _ = cx.registry.deregister(&mut l.sock);
                    }
                }
                if handler.shutdown(&mut cx) {
                    return;
                }
            }
            if let Flow::Exit = this.dispatch(&mut handler, &mut cx, &events) {
                return;
            }
        }
    }
}

impl<H: Handler> State<H> {
    /// Dispatches one iteration's events, messages and due timers.
    fn dispatch(
        &mut self,
        handler: &mut H,
        cx: &mut Context<'_>,
        events: &Events,
    ) -> Flow {
        // After every callback while stopping, ask whether we are done.
        let done = |h: &mut H, cx: &mut Context<'_>| {
            if cx.stopping && h.shutdown(cx) {
                Flow::Exit
            } else {
                Flow::Continue
            }
        };
        for event in events {
            let token = event.token();
            if token == WAKER {
                // The channel is drained below on every iteration.
                continue;
            }
            if token.0 >= LISTENER_BASE {
                self.accept(handler, cx, token.0 - LISTENER_BASE);
            } else {
                handler.event(cx, event);
            }
            if let Flow::Exit = done(handler, cx) {
                return Flow::Exit;
            }
        }
        // Messages: everything queued now. Messages that arrive meanwhile
        // wait one iteration (the poll timeout is then zero), so a handler
        // sending to its own thread cannot spin here forever.
        self.bell.answer();
        for _ in 0..self.rx.len() {
            let Ok(msg) = self.rx.try_recv() else { break };
            handler.message(cx, msg);
            if let Flow::Exit = done(handler, cx) {
                return Flow::Exit;
            }
        }
        // Timers due now and set before this point; timers set by these
        // callbacks fire on the next iteration at the earliest.
        let epoch = cx.timers.epoch();
        while let Some((_, kind)) = cx.timers.pop_expired(cx.now, epoch) {
            match kind {
                TimerKind::User(token, data) => handler.timer(cx, token, data),
                TimerKind::Accept(j) => self.resume(handler, cx, j),
            }
            if let Flow::Exit = done(handler, cx) {
                return Flow::Exit;
            }
        }
        Flow::Continue
    }

    /// Resumes listener `j` after a backoff or a full batch.
    fn resume(&mut self, handler: &mut H, cx: &mut Context<'_>, j: usize) {
        let Some(Some(l)) = self.listeners.get_mut(j) else { return };
        if l.paused {
            let token = Token(LISTENER_BASE + j);
            if cx
                .registry
                .register(&mut l.sock, token, Interest::READABLE)
                .is_err()
            {
                // Try again later rather than lose the listener.
                let at = cx.now + ACCEPT_BACKOFF;
                cx.timers.insert(at, TimerKind::Accept(j));
                return;
            }
            l.paused = false;
        }
        self.accept(handler, cx, j);
    }

    /// Accepts on listener `j` until `WouldBlock` (or a full batch, then
    /// continues next iteration). On errors such as EMFILE, pauses the
    /// listener for [`ACCEPT_BACKOFF`] instead of spinning or dying.
    fn accept(&mut self, handler: &mut H, cx: &mut Context<'_>, j: usize) {
        let Some(Some(l)) = self.listeners.get_mut(j) else { return };
        if l.paused {
            return; // A stale event from before the pause.
        }
        let mut accepted = 0;
        loop {
            if accepted == ACCEPT_BATCH {
                cx.timers.insert(cx.now, TimerKind::Accept(j));
                return;
            }
            match l.sock.accept() {
                Ok((stream, peer)) => {
                    accepted += 1;
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or(l.addr);
                    handler.accept(cx, stream, peer, local);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if transient(&e) => {}
                Err(_) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything unknown:
                    // the pending connections stay in the backlog.
                    let _ = cx.registry.deregister(&mut l.sock);
                    l.paused = true;
                    let at = cx.now + ACCEPT_BACKOFF;
                    cx.timers.insert(at, TimerKind::Accept(j));
                    return;
                }
            }
        }
    }
}

/// Accept errors about one connection only: skip it and accept the next.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::TimedOut
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown
    ) || matches!(e.raw_os_error(), Some(71 /* EPROTO on Linux */))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_sorted() {
        let kind = |k| io::Error::from(k);
        assert!(transient(&kind(io::ErrorKind::ConnectionAborted)));
        assert!(transient(&kind(io::ErrorKind::Interrupted)));
        assert!(transient(&io::Error::from_raw_os_error(71)));
        // EMFILE (24) and ENFILE (23) pause the listener instead.
        assert!(!transient(&io::Error::from_raw_os_error(24)));
        assert!(!transient(&io::Error::from_raw_os_error(23)));
    }
}
