//! The inbound SMTP session: a sans-IO state machine.
//!
//! It reads no socket, no file and no clock. The glue (`conn.rs`) feeds it
//! bytes and events and acts on what it returns:
//!
//! ```text
//!  connect ──greet()──▶ Command ◀─────────────────────────────────┐
//!                         │  receive(): EHLO/HELO, MAIL, RCPT, ... │
//!            DATA ────────┤──────── BDAT n [LAST] ──────┐          │
//!                         ▼                             ▼          │
//!            Body (body() until CRLF.CRLF)    Bdat (bdat_chunk())  │
//!              │ 552 / 550: reply, ─────────────────────┤──────────┤
//!              │ nothing stored                 non-LAST: 250 ─────┤
//!              ▼ Commit                                 │ LAST     │
//!          AwaitCommit ◀────────────────────────────────┘          │
//!              │ committed(Ok(id)): 250 queued as ID, Err: 451 ────┘
//!  QUIT / 421 / 554 sync ──▶ Closed
//! ```
//!
//! Output accumulates in [`Session::output`]; the glue writes it out when
//! the input is drained (PIPELINING, RFC 2920) or when asked to
//! ([`Action::Flush`], [`Action::Close`]).
//!
//! # Driving a session (the glue's contract)
//! 1. Over `max_connections`: [`Session::too_many_connections`], write,
//!    close. Else [`Session::new`], then [`Session::greet`] (`true` when
//!    client bytes were already waiting), write the output.
//! 2. By [`Session::phase`]:
//!    - `Command`: [`Session::receive`] on the buffered input; drop the
//!      consumed bytes; act on the [`Action`].
//!    - `Body`: write new bytes to the spool file (unless told to discard),
//!      pass them to [`Session::body`]; at `End`, the bytes after
//!      `consumed` go back to the command buffer and the spool file is cut
//!      to [`Transaction::body_len`].
//!    - `Bdat`: pass buffered bytes (even none) to [`Session::bdat_chunk`];
//!      dot-stuff the consumed bytes into the spool when `store`.
//!    - `AwaitCommit`: read nothing; call [`Session::committed`] when the
//!      group commit is done, then continue with the buffered input.
//!    - `Closed`: write the output, close.
//! 3. Write [`Session::output`] when the input is drained and on `Flush`,
//!    `StartBody`, `Commit` and `Close`.
//! 4. Arm the timer from [`Session::timeout_kind`]; on expiry call
//!    [`Session::timeout`]. On server stop call [`Session::shutdown`].
//!
//! # Pipelining enforcement
//! Like Postfix's `smtpd_forbid_unauth_pipelining`: if the input given to
//! one [`Session::receive`] call holds more bytes after a command that must
//! end a pipelining group (EHLO, HELO, DATA, VRFY, EXPN, TURN, QUIT, NOOP,
//! HELP, STARTTLS, AUTH), or after *any* command when PIPELINING was not
//! negotiated (no EHLO), the command is not executed: the reply is `554
//! 5.5.0 Error: SMTP protocol synchronization` and the session closes.
//! This covers DATA: a client must wait for the 354 before sending the
//! body. BDAT is exempt (its chunk follows it), and so are bytes after the
//! final dot of a body, which the glue hands back after
//! [`Session::committed`]. QUIT followed by more input is answered `221`
//! as usual and the rest dropped: the session ends either way.

mod bdat;
mod transaction;

use std::net::SocketAddr;
use std::sync::Arc;

use millrace_proto::{
    BodyScanner, BodyType, Command, ForwardPath, LineReader, LineStatus,
    MAX_COMMAND_LINE, MailParams, Mailbox, RcptParams, Reply, ReversePath,
    Scan, parse_command_with,
};

pub use transaction::Transaction;

use crate::config::SessionConfig;
use crate::replies::{self, SessionError, error_reply};
use bdat::BareScan;

/// What the glue must do after [`Session::receive`] (and at the end of a
/// body or chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// All complete lines were handled; read more input.
    Continue,
    /// Replies pending exceed `max_pending_output`: write the output, then
    /// call [`Session::receive`] again with the unconsumed input.
    Flush,
    /// The 354 is queued: create the spool file for
    /// [`Session::recipients`], flush, and feed body bytes to
    /// [`Session::body`].
    StartBody,
    /// `BDAT size [LAST]` was read: the next `size` octets are chunk data;
    /// hand them (as they arrive, starting with any already buffered) to
    /// [`Session::bdat_chunk`]. `start`: the first chunk of an accepted
    /// transaction, create the spool file for [`Session::recipients`].
    Bdat {
        /// Octets in the chunk.
        size: u64,
        /// `LAST` was given.
        last: bool,
        /// Create the spool file now.
        start: bool,
    },
    /// The message is complete and acceptable: commit it durably, then call
    /// [`Session::committed`]. Until then the session takes no input.
    Commit(Box<Transaction>),
    /// Write the output, then close the connection.
    Close,
}

/// What [`Session::body`] found in a DATA chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyStatus {
    /// Keep reading. `store == false` once the message is over
    /// `max_message_size`: stop writing to the spool (drop the file) and
    /// just feed the bytes to [`Session::body`].
    More {
        /// Keep the body in the spool.
        store: bool,
    },
    /// The body ended in this chunk: its first `consumed` bytes were body
    /// and terminator; the rest is command input for
    /// [`Session::receive`] (after [`Session::committed`] when the action
    /// is `Commit`). `action` is `Commit`, or `Continue` when a 552 / 550
    /// was queued and nothing is to be stored, or `Close`.
    End {
        /// Bytes of the chunk that belonged to the body.
        consumed: usize,
        /// What to do next.
        action: Action,
    },
}

/// What [`Session::bdat_chunk`] did with the bytes given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BdatStatus {
    /// The first `consumed` bytes were chunk data (store them, dot-stuffed,
    /// when `store`; otherwise drop the spool file); more are expected.
    More {
        /// Bytes of the input that were chunk data.
        consumed: usize,
        /// Keep the data in the spool.
        store: bool,
    },
    /// The chunk is complete: `consumed` bytes were its data (store them
    /// when `store`); the rest of the input is command input. `action` is
    /// `Continue` (250 or an error queued), `Commit` after an acceptable
    /// `LAST` chunk, or `Close`.
    Done {
        /// Bytes of the input that were chunk data.
        consumed: usize,
        /// Keep the data in the spool.
        store: bool,
        /// What to do next.
        action: Action,
    },
}

/// The session's phase, as the glue sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading command lines ([`Session::receive`]).
    Command,
    /// Reading a DATA body ([`Session::body`]).
    Body {
        /// Over the size limit: bytes are only scanned, not stored.
        discarding: bool,
    },
    /// Reading a BDAT chunk ([`Session::bdat_chunk`]).
    Bdat {
        /// Octets of the chunk still to come.
        remaining: u64,
        /// Bytes are not to be stored.
        discarding: bool,
    },
    /// Waiting for [`Session::committed`].
    AwaitCommit,
    /// Finished: write the output, then close.
    Closed,
}

/// Which configured timeout applies now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Waiting for a command (`timeouts.command`).
    Command,
    /// Waiting for body or chunk bytes (`timeouts.data`).
    Data,
}

/// The client's HELO/EHLO.
#[derive(Debug, Clone)]
struct Helo {
    /// The argument.
    name: String,
    /// EHLO was used (PIPELINING and the extensions are negotiated).
    esmtp: bool,
}

/// Progress of a BDAT transaction.
#[derive(Debug, Clone, Default)]
struct BdatProgress {
    /// Chunk octets so far.
    octets: u64,
    /// Over the size limit.
    discarding: bool,
    /// The 552 was counted as an error already.
    size_error_counted: bool,
    /// Bare CR / LF detection across chunks.
    bare: BareScan,
}

/// A transaction in progress: MAIL accepted.
#[derive(Debug, Clone)]
struct Envelope {
    /// MAIL FROM.
    sender: ReversePath,
    /// Its parameters.
    params: MailParams,
    /// Accepted recipients.
    rcpts: Vec<(ForwardPath, RcptParams)>,
    /// An RCPT was given (accepted or not): DATA / BDAT without any
    /// recipient is then 554 "no valid recipients", not 503.
    rcpt_given: bool,
    /// Set once BDAT started (DATA and RCPT are then out of order).
    bdat: Option<BdatProgress>,
}

/// One BDAT chunk being read.
#[derive(Debug)]
struct Chunk {
    /// The transaction (None when there was no MAIL).
    env: Option<Envelope>,
    /// Why the chunk is refused (read and discarded), if it is.
    refused: Option<SessionError>,
    /// Declared size.
    size: u64,
    /// Octets still to come.
    remaining: u64,
    /// `LAST` given.
    last: bool,
}

/// The states of RFC 5321 section 3.3, each with only its own data.
#[derive(Debug)]
enum State {
    /// Between transactions (before or after HELO/EHLO).
    Idle,
    /// MAIL accepted (`InMail`), collecting RCPTs.
    InMail(Envelope),
    /// After 354, scanning the body.
    InData {
        /// The transaction.
        env: Envelope,
        /// The body scanner.
        scanner: BodyScanner,
        /// Over the size limit.
        discarding: bool,
    },
    /// Reading a BDAT chunk.
    InBdat(Box<Chunk>),
    /// Body accepted; the glue is committing.
    AwaitCommit,
    /// Done.
    Closed,
}

/// The inbound SMTP session state machine. See the module docs.
#[derive(Debug)]
pub struct Session {
    /// Shared settings.
    cfg: Arc<SessionConfig>,
    /// The client's address.
    peer: SocketAddr,
    /// Our address.
    local: SocketAddr,
    /// HELO/EHLO, once given.
    helo: Option<Helo>,
    /// The current state.
    state: State,
    /// Command line splitter (remembers its search position).
    lines: LineReader,
    /// Replies not yet written.
    out: Vec<u8>,
    /// Error replies so far.
    errors: u32,
    /// Shutdown was requested during a body: close after the final reply.
    shutdown_pending: bool,
}

/// DATA or BDAT in a transaction without recipients: out of sequence
/// (503 5.5.1, DESIGN.md) when no RCPT was given at all; "no valid
/// recipients" (554 5.5.1) when every RCPT was refused, since a pipelining
/// client sends DATA before it sees those replies (RFC 5321 section 3.3
/// allows either code).
fn no_rcpt(env: &Envelope) -> SessionError {
    if env.rcpt_given {
        SessionError::NoValidRecipients
    } else {
        SessionError::NeedRcpt
    }
}

/// Commands after which the client must wait for our reply (RFC 2920
/// section 3.1).
fn ends_group(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Ehlo(_)
            | Command::Helo(_)
            | Command::Data
            | Command::Vrfy(_)
            | Command::Expn(_)
            | Command::Turn
            | Command::Quit
            | Command::Noop
            | Command::Help(_)
            | Command::StartTls
            | Command::Auth { .. }
    )
}

impl Session {
    /// A new session for a connection from `peer` to `local`. Call
    /// [`Session::greet`] next.
    pub fn new(
        cfg: Arc<SessionConfig>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Self {
        Self {
            cfg,
            peer,
            local,
            helo: None,
            state: State::Idle,
            lines: LineReader::new(),
            out: Vec::with_capacity(512),
            errors: 0,
            shutdown_pending: false,
        }
    }

    /// Queues the greeting. `early_input`: the client sent bytes before
    /// the greeting was written (it talks before the 220): `554 5.5.0`
    /// and close (Postfix-style pregreet rejection).
    pub fn greet(&mut self, early_input: bool) {
        if early_input {
            self.fatal(SessionError::Synchronization);
        } else {
            self.push(&replies::greeting(&self.cfg.hostname));
        }
    }

    /// The refusal when over `max_connections`, written to `out`:
    /// `421 4.7.0 <hostname> Too many connections, try again later`.
    pub fn too_many_connections(hostname: &str, out: &mut Vec<u8>) {
        error_reply(&SessionError::TooManyConnections, hostname).encode(out);
    }

    /// Command phase: handles the complete lines at the front of `input`;
    /// returns how many bytes were consumed (the glue drops them) and what
    /// to do. Stops early for `StartBody`, `Bdat`, `Commit`-free `Close`
    /// and `Flush`. Partial lines stay unconsumed, except the start of an
    /// over-long line, which is consumed and discarded (the 500 5.5.6
    /// comes at its LF), so the glue never buffers more than 512 bytes of
    /// one line. Bare LF line endings are accepted.
    ///
    /// Outside the command phase it consumes nothing and returns
    /// `Continue` (or `Close` when closed).
    pub fn receive(&mut self, input: &[u8]) -> (usize, Action) {
        let mut pos = 0;
        loop {
            match self.state {
                State::Closed => return (pos, Action::Close),
                State::Idle | State::InMail(_) => {}
                _ => return (pos, Action::Continue),
            }
            if self.out.len() >= self.cfg.max_pending_output {
                return (pos, Action::Flush);
            }
            let rest = &input[pos..];
            match self.lines.next_line(rest, MAX_COMMAND_LINE) {
                LineStatus::Partial { discard } => {
                    return (pos + discard, Action::Continue);
                }
                LineStatus::TooLong { consumed } => {
                    pos += consumed;
                    let err = millrace_proto::CommandError::LineTooLong;
                    if let Some(a) = self.fail(err.into()) {
                        return (pos, a);
                    }
                }
                LineStatus::Line { len, consumed, .. } => {
                    let line = &rest[..len];
                    pos += consumed;
                    let more = pos < input.len();
                    if let Some(a) = self.command(line, more) {
                        return (pos, a);
                    }
                }
            }
        }
    }

    /// DATA phase: `chunk` is the bytes that newly arrived (already stored
    /// by the glue unless it was told to discard). Runs the body scanner.
    pub fn body(&mut self, chunk: &[u8]) -> BodyStatus {
        let max = self.cfg.max_message_size;
        let State::InData { scanner, discarding, .. } = &mut self.state else {
            let action = self.idle_action();
            return BodyStatus::End { consumed: 0, action };
        };
        let consumed = match scanner.scan(chunk) {
            Scan::Partial => {
                if scanner.body_len() > max {
                    *discarding = true;
                }
                return BodyStatus::More { store: !*discarding };
            }
            Scan::Complete { consumed } => consumed,
        };
        let State::InData { env, scanner, discarding } =
            std::mem::replace(&mut self.state, State::Idle)
        else {
            unreachable!("checked above")
        };
        let len = scanner.body_len();
        let action = if discarding || len > max {
            self.fail(SessionError::MessageTooBig)
        } else if scanner.saw_bare_line_ending() {
            self.fail(SessionError::BareLineEnding)
        } else {
            self.state = State::AwaitCommit;
            return BodyStatus::End {
                consumed,
                action: Action::Commit(Box::new(self.transaction(env, len))),
            };
        };
        let action = self.after_final_reply(action);
        BodyStatus::End { consumed, action }
    }

    /// BDAT phase: `data` is buffered input (possibly empty, possibly more
    /// than the chunk). Call right after [`Action::Bdat`] and again as bytes
    /// arrive, until `Done`.
    pub fn bdat_chunk(&mut self, data: &[u8]) -> BdatStatus {
        let max = self.cfg.max_message_size;
        let State::InBdat(chunk) = &mut self.state else {
            let action = self.idle_action();
            return BdatStatus::Done { consumed: 0, store: false, action };
        };
        let n = chunk.remaining.min(data.len() as u64);
        chunk.remaining -= n;
        // n <= data.len(), so it fits in usize.
        let consumed = n as usize;
        let mut store = false;
        if let (None, Some(env)) = (&chunk.refused, &mut chunk.env) {
            let progress = env.bdat.get_or_insert_with(BdatProgress::default);
            progress.octets = progress.octets.saturating_add(n);
            progress.discarding |= progress.octets > max;
            progress.bare.scan(&data[..consumed]);
            store = !progress.discarding;
        }
        if chunk.remaining > 0 {
            return BdatStatus::More { consumed, store };
        }
        let State::InBdat(chunk) =
            std::mem::replace(&mut self.state, State::Idle)
        else {
            unreachable!("checked above")
        };
        let action = self.end_chunk(*chunk);
        BdatStatus::Done { consumed, store, action }
    }

    /// The durable commit finished: `Ok(queue id)` queues `250 2.0.0 Ok:
    /// queued as <ID>`, `Err(())` queues `451 4.3.0`. Back to the command
    /// phase with the transaction cleared (HELO kept). Ignored in other
    /// phases.
    pub fn committed(&mut self, result: Result<&str, ()>) {
        if !matches!(self.state, State::AwaitCommit) {
            return;
        }
        self.state = State::Idle;
        let action = match result {
            Ok(id) => {
                self.push(&replies::queued(id));
                None
            }
            Err(()) => self.fail(SessionError::QueueWrite),
        };
        self.after_final_reply(action);
    }

    /// The command or data timeout fired: `421 4.4.2`, then close.
    pub fn timeout(&mut self) {
        if !matches!(self.state, State::Closed) {
            self.fatal(SessionError::Timeout);
        }
    }

    /// The server is stopping. In the command phase: `421 4.3.2`, close,
    /// returns true. During a body, chunk or commit: returns false; the
    /// session finishes the message and closes after its final reply
    /// (with the 421 4.3.2). Closed already: true.
    pub fn shutdown(&mut self) -> bool {
        match self.state {
            State::Idle | State::InMail(_) => {
                self.fatal(SessionError::ShuttingDown);
                true
            }
            State::Closed => true,
            _ => {
                self.shutdown_pending = true;
                false
            }
        }
    }

    /// Bytes to write; the glue drains it (`output().clear()` after a full
    /// write, or `drain(..n)`).
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match &self.state {
            State::Idle | State::InMail(_) => Phase::Command,
            State::InData { discarding, .. } => {
                Phase::Body { discarding: *discarding }
            }
            State::InBdat(c) => Phase::Bdat {
                remaining: c.remaining,
                discarding: c.refused.is_some()
                    || c.env
                        .as_ref()
                        .and_then(|e| e.bdat.as_ref())
                        .is_none_or(|p| p.discarding),
            },
            State::AwaitCommit => Phase::AwaitCommit,
            State::Closed => Phase::Closed,
        }
    }

    /// True once the session is over: write the output, then close.
    pub fn wants_close(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Which configured timeout applies now.
    pub fn timeout_kind(&self) -> TimeoutKind {
        match self.state {
            State::InData { .. } | State::InBdat(_) => TimeoutKind::Data,
            _ => TimeoutKind::Command,
        }
    }

    /// The sender of the transaction in progress.
    pub fn sender(&self) -> Option<&ReversePath> {
        self.envelope().map(|e| &e.sender)
    }

    /// The MAIL parameters of the transaction in progress.
    pub fn mail_params(&self) -> Option<&MailParams> {
        self.envelope().map(|e| &e.params)
    }

    /// The accepted recipients of the transaction in progress (for
    /// creating the spool file at `StartBody` / `Bdat { start }`).
    pub fn recipients(&self) -> &[(ForwardPath, RcptParams)] {
        self.envelope().map_or(&[], |e| &e.rcpts)
    }

    /// The HELO/EHLO argument, once given.
    pub fn helo_name(&self) -> Option<&str> {
        self.helo.as_ref().map(|h| h.name.as_str())
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Our address.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The transaction in progress, if any.
    fn envelope(&self) -> Option<&Envelope> {
        match &self.state {
            State::InMail(env) | State::InData { env, .. } => Some(env),
            State::InBdat(c) => c.env.as_ref(),
            _ => None,
        }
    }

    /// `Close` when closed, else `Continue`.
    fn idle_action(&self) -> Action {
        if self.wants_close() { Action::Close } else { Action::Continue }
    }

    /// Appends a reply.
    fn push(&mut self, reply: &Reply) {
        reply.encode(&mut self.out);
    }

    /// A session-fatal error: its reply, then closed.
    fn fatal(&mut self, err: SessionError) {
        self.push(&error_reply(&err, &self.cfg.hostname));
        self.state = State::Closed;
    }

    /// Queues the error reply and counts it; the error that reaches
    /// `max_errors` is answered `421 4.7.0` instead, and the session
    /// closes. Returns `Some(Close)` when the session closed.
    fn fail(&mut self, err: SessionError) -> Option<Action> {
        if err.is_fatal() {
            self.fatal(err);
            return Some(Action::Close);
        }
        if err.counts() && self.errors + 1 >= self.cfg.max_errors {
            self.errors += 1;
            self.fatal(SessionError::TooManyErrors);
            return Some(Action::Close);
        }
        self.push(&error_reply(&err, &self.cfg.hostname));
        if err.counts() { self.count_error() } else { None }
    }

    /// Counts one error; closes at the limit.
    fn count_error(&mut self) -> Option<Action> {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.fatal(SessionError::TooManyErrors);
            return Some(Action::Close);
        }
        None
    }

    /// After the final reply of a message: a pending shutdown closes now.
    fn after_final_reply(&mut self, action: Option<Action>) -> Action {
        if let Some(a) = action {
            return a;
        }
        if self.shutdown_pending && !self.wants_close() {
            self.fatal(SessionError::ShuttingDown);
            return Action::Close;
        }
        Action::Continue
    }

    /// PIPELINING was negotiated (EHLO).
    fn pipelining(&self) -> bool {
        self.helo.as_ref().is_some_and(|h| h.esmtp)
    }

    /// One command line; `more`: bytes follow it in this input.
    fn command(&mut self, line: &[u8], more: bool) -> Option<Action> {
        let utf8 =
            matches!(&self.state, State::InMail(e) if e.params.smtputf8);
        let parsed = parse_command_with(line, utf8);
        let violation = more
            && match &parsed {
                Ok(Command::Bdat { .. }) if self.cfg.chunking => false,
                // The session ends anyway: 221, and what follows is
                // dropped (as Postfix does).
                Ok(Command::Quit) => false,
                Ok(cmd) => ends_group(cmd) || !self.pipelining(),
                Err(_) => !self.pipelining(),
            };
        if violation {
            return self.fail(SessionError::Synchronization);
        }
        match parsed {
            Ok(cmd) => self.execute(cmd),
            Err(e) => self.fail(e.into()),
        }
    }

    /// Runs a parsed command.
    fn execute(&mut self, cmd: Command) -> Option<Action> {
        match cmd {
            Command::Ehlo(name) => {
                self.helo = Some(Helo { name, esmtp: true });
                self.state = State::Idle;
                self.cfg.capabilities().encode_ehlo_reply(
                    &self.cfg.hostname,
                    replies::EHLO_GREETING,
                    &mut self.out,
                );
                None
            }
            Command::Helo(name) => {
                self.helo = Some(Helo { name, esmtp: false });
                self.state = State::Idle;
                self.push(&replies::helo(&self.cfg.hostname));
                None
            }
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.state = State::Idle;
                self.push(&replies::ok());
                None
            }
            Command::Noop => {
                self.push(&replies::ok());
                None
            }
            Command::Quit => {
                self.push(&replies::bye());
                self.state = State::Closed;
                Some(Action::Close)
            }
            Command::Vrfy(_) => {
                self.push(&replies::vrfy());
                None
            }
            Command::Help(_) => {
                self.push(&replies::help());
                None
            }
            Command::Expn(_) | Command::StartTls | Command::Auth { .. } => {
                self.fail(SessionError::NotImplemented)
            }
            Command::Send | Command::Soml | Command::Saml | Command::Turn => {
                self.fail(SessionError::Obsolete)
            }
        }
    }

    /// MAIL FROM.
    fn mail(
        &mut self,
        sender: ReversePath,
        params: MailParams,
    ) -> Option<Action> {
        let err = if self.helo.is_none() {
            SessionError::NeedHelo
        } else if !matches!(self.state, State::Idle) {
            SessionError::NestedMail
        } else if params.body == BodyType::BinaryMime {
            SessionError::Unsupported("BODY=BINARYMIME")
        } else if params.auth.is_some() {
            SessionError::Unsupported("AUTH")
        } else if params.size.is_some_and(|s| s > self.cfg.max_message_size) {
            SessionError::SizeExceedsLimit
        } else {
            let env = Envelope {
                sender,
                params,
                rcpts: Vec::new(),
                rcpt_given: false,
                bdat: None,
            };
            self.state = State::InMail(env);
            self.push(&replies::mail_ok());
            return None;
        };
        self.fail(err)
    }

    /// RCPT TO.
    fn rcpt(
        &mut self,
        mut to: ForwardPath,
        params: RcptParams,
    ) -> Option<Action> {
        let State::InMail(env) = &mut self.state else {
            return self.fail(SessionError::NeedMail);
        };
        if env.bdat.is_some() {
            return self.fail(SessionError::BadSequence("RCPT after BDAT"));
        }
        env.rcpt_given = true;
        if env.rcpts.len() >= self.cfg.max_recipients {
            return self.fail(SessionError::TooManyRecipients);
        }
        // Source routes are accepted and ignored (RFC 5321 appendix C).
        to.0.route = None;
        if to.mailbox().is_bare_postmaster() {
            // RFC 5321 section 4.5.1: always accepted.
            let local = to.mailbox().local().to_owned();
            to.0.mailbox = Mailbox::new(&local, &self.cfg.hostname);
        } else if !self.cfg.in_mynetworks(self.peer.ip())
            && !self.cfg.is_relay_domain(to.mailbox().domain())
        {
            let addr = to.mailbox().as_str().to_owned();
            return self.fail(SessionError::RelayDenied(addr));
        }
        env.rcpts.push((to, params));
        self.push(&replies::rcpt_ok());
        None
    }

    /// DATA.
    fn data(&mut self) -> Option<Action> {
        let err = match &self.state {
            State::InMail(env) if env.bdat.is_some() => {
                SessionError::BadSequence("DATA after BDAT")
            }
            State::InMail(env) if env.rcpts.is_empty() => no_rcpt(env),
            State::InMail(_) => {
                let State::InMail(env) =
                    std::mem::replace(&mut self.state, State::Idle)
                else {
                    unreachable!("matched above")
                };
                self.state = State::InData {
                    env,
                    scanner: BodyScanner::new(),
                    discarding: false,
                };
                self.push(&replies::start_data());
                return Some(Action::StartBody);
            }
            _ => SessionError::NeedRcpt,
        };
        self.fail(err)
    }

    /// BDAT size [LAST]: the chunk is read (and maybe discarded) before the
    /// reply, as RFC 3030 requires.
    fn bdat(&mut self, size: u64, last: bool) -> Option<Action> {
        if !self.cfg.chunking {
            return self.fail(SessionError::NotImplemented);
        }
        let prev = std::mem::replace(&mut self.state, State::Idle);
        let (mut env, refused) = match prev {
            State::InMail(env) if env.rcpts.is_empty() => {
                let err = no_rcpt(&env);
                (Some(env), Some(err))
            }
            State::InMail(env) => (Some(env), None),
            _ => (None, Some(SessionError::NeedMail)),
        };

        let mut start = false;
        if let (None, Some(e)) = (&refused, &mut env) {
            start = e.bdat.is_none();
            e.bdat.get_or_insert_with(BdatProgress::default);
        }
        self.state = State::InBdat(Box::new(Chunk {
            env,
            refused,
            size,
            remaining: size,
            last,
        }));
        Some(Action::Bdat { size, last, start })
    }

    /// The end of a BDAT chunk: its reply, and the next state.
    fn end_chunk(&mut self, chunk: Chunk) -> Action {
        let Chunk { env, refused, size, last, .. } = chunk;
        let Some(mut env) = env else {
            let err = refused.unwrap_or(SessionError::NeedMail);
            return self.fail(err).unwrap_or(Action::Continue);
        };
        if let Some(err) = refused {
            self.state = State::InMail(env);
            return self.fail(err).unwrap_or(Action::Continue);
        }
        let progress = env.bdat.get_or_insert_with(BdatProgress::default);
        if progress.discarding {
            // 552 for every chunk of the transaction, counted once.
            let first = !progress.size_error_counted;
            progress.size_error_counted = true;
            if !last {
                self.state = State::InMail(env);
            }
            let err = SessionError::MessageTooBig;
            self.push(&error_reply(&err, &self.cfg.hostname));
            let closed = if first { self.count_error() } else { None };
            return if last {
                self.after_final_reply(closed)
            } else {
                closed.unwrap_or(Action::Continue)
            };
        }
        if !last {
            self.state = State::InMail(env);
            self.push(&replies::bdat_ok(size));
            return Action::Continue;
        }
        if progress.bare.finish() {
            let closed = self.fail(SessionError::BareLineEnding);
            return self.after_final_reply(closed);
        }
        let len = progress.octets;
        self.state = State::AwaitCommit;
        Action::Commit(Box::new(self.transaction(env, len)))
    }

    /// The transaction record for the glue.
    fn transaction(&self, env: Envelope, body_len: u64) -> Transaction {
        let (helo, esmtp) = self
            .helo
            .as_ref()
            .map_or((String::new(), false), |h| (h.name.clone(), h.esmtp));
        Transaction {
            sender: env.sender,
            mail_params: env.params,
            recipients: env.rcpts,
            helo,
            esmtp,
            peer: self.peer,
            body_len,
        }
    }
}

#[cfg(test)]
mod tests;
