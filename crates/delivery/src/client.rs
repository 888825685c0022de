//! The outbound SMTP client as a sans-IO state machine.
//!
//! This module does no I/O: it opens no sockets, reads no clock and starts
//! no threads. The driver feeds it the bytes read from the connection
//! ([`Client::receive`]), writes out what it produces ([`Client::output`])
//! and reacts to its events ([`Client::poll_event`]).
//!
//! ```text
//!  connect
//!     |
//!  ExpectGreeting --220--> ExpectEhloReply --250--> Idle  (event Ready)
//!     | non-2xx               | 5xx                  ^  |
//!     v                       v                      |  | start(tx)
//!  (refused: QUIT)         ExpectHeloReply --250-----+  v
//!                                                    | ExpectMailReply
//!                    (PIPELINING: MAIL, RCPT.., DATA |   |
//!                     in one write, replies in order)|   v
//!                                                    | ExpectRcptReplies
//!                                                    |   |
//!                                                    |   v
//!                                                    | ExpectDataGo --354-->
//!                                                    |   SendBody (driver
//!                                                    |   writes the body,
//!                                                    |   then body_sent())
//!                                                    |   |
//!                                                    |   v
//!                                                    +-- ExpectDataReply
//!                                                    |     (event Done)
//!   transaction failed early: ExpectRsetReply -------+
//!   quit(): ExpectQuitReply --221 or close--> Closed
//!   421 anywhere, malformed reply, closed(): Closed
//! ```

use std::collections::VecDeque;
use std::mem;

use millrace_proto::{
    BodyType, Capabilities, EnhancedCode, MailParams, RcptParams, Reply,
    ReplyError, ReplyParser, Status,
};

/// The end-of-data marker the driver writes after the body.
pub const DATA_END: &[u8] = b".\r\n";

/// The most recipients one transaction may carry.
pub const MAX_RECIPIENTS: usize = 1000;

/// One message to send over an established connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The envelope sender; the empty string stands for `<>`.
    pub sender: String,
    /// ESMTP parameters of MAIL as received (sent only where offered).
    pub mail_params: MailParams,
    /// The recipients with their RCPT parameters.
    pub recipients: Vec<(String, RcptParams)>,
    /// Octets the driver will write after 354: the Received header plus
    /// the wire-form body (used for SIZE).
    pub size: u64,
    /// The message's header section holds UTF-8 (see
    /// [`has_utf8_headers`]): it may only go to a next hop that offers
    /// SMTPUTF8 (RFC 6531 section 3.4).
    pub utf8_headers: bool,
}

/// Whether the header section of `body` (up to the first empty line, or
/// all of it when there is none) holds an octet above 0x7f: a message
/// received with SMTPUTF8 and such headers needs SMTPUTF8 at the next hop
/// too.
pub fn has_utf8_headers(body: &[u8]) -> bool {
    !millrace_proto::header_section(body).is_ascii()
}

/// How one recipient fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptKind {
    /// The next hop accepted the message for this recipient (2xx).
    Delivered,
    /// Try again later (4xx, connection problems).
    Transient,
    /// Final failure (5xx): bounce.
    Permanent,
}

impl RcptKind {
    /// The kind a reply code stands for: 2xx delivered, 5xx permanent,
    /// anything else transient.
    pub fn of(reply: &Reply) -> Self {
        if reply.is_positive() {
            Self::Delivered
        } else if reply.is_permanent() {
            Self::Permanent
        } else {
            Self::Transient
        }
    }
}

/// The outcome for one recipient of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    /// Index into [`Transaction::recipients`].
    pub index: usize,
    /// Delivered, transient or permanent.
    pub kind: RcptKind,
    /// The remote reply (or a synthetic one) that decided it.
    pub reply: Reply,
}

/// What the client tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Idle: `start` the next transaction or `quit`.
    Ready,
    /// 354 received: write the Received header, the wire-form body and
    /// [`DATA_END`] (after everything already in `output`), then call
    /// [`Client::body_sent`].
    SendBody,
    /// The transaction is over: one result per recipient, in index order.
    Done(Vec<RcptResult>),
    /// The connection is finished; the driver closes the socket.
    Closed,
}

/// Errors of the client machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The remote sent a reply we could not parse (connection closed).
    #[error("malformed reply from the remote: {0}")]
    Reply(#[from] ReplyError),
    /// The remote sent a reply when none was expected (connection closed).
    #[error("unexpected reply from the remote: {0}")]
    Unexpected(Reply),
    /// The driver called a method in the wrong state.
    #[error("client misuse: {0}")]
    Misuse(&'static str),
    /// More recipients than [`MAX_RECIPIENTS`].
    #[error("too many recipients in one transaction")]
    TooManyRecipients,
}

/// A reply the client is waiting for inside a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaited {
    Mail,
    Rcpt(usize),
    Data,
    /// The reply to a lone `.` sent after an unwanted 354 (ignored).
    DiscardedData,
}

/// A transaction in flight.
#[derive(Debug)]
struct InFlight {
    /// Per recipient, its result once decided.
    results: Vec<Option<RcptResult>>,
    /// Recipients accepted at RCPT (their fate is the DATA reply).
    accepted: Vec<usize>,
    /// Recipients whose RCPT is still to be written (non-pipelined).
    unsent: VecDeque<usize>,
    /// Encoded RCPT lines, by recipient index (empty if not sent).
    rcpt_lines: Vec<Vec<u8>>,
    /// Replies awaited, in order.
    awaited: VecDeque<Awaited>,
    /// MAIL failed or DATA was refused: RSET before the next transaction.
    needs_rset: bool,
}

impl InFlight {
    fn decide(&mut self, index: usize, reply: &Reply) {
        self.decide_as(index, reply, RcptKind::of(reply));
    }

    /// Decides recipient `index` (once) with `reply`, as `kind`.
    fn decide_as(&mut self, index: usize, reply: &Reply, kind: RcptKind) {
        if let Some(slot) = self.results.get_mut(index)
            && slot.is_none()
        {
            *slot = Some(RcptResult { index, kind, reply: reply.clone() });
        }
    }

    fn decide_all(&mut self, reply: &Reply) {
        for i in 0..self.results.len() {
            self.decide(i, reply);
        }
    }

    fn into_results(self) -> Vec<RcptResult> {
        let lost = connection_lost();
        self.results
            .into_iter()
            .enumerate()
            .map(|(index, r)| {
                r.unwrap_or_else(|| RcptResult {
                    index,
                    kind: RcptKind::Transient,
                    reply: lost.clone(),
                })
            })
            .collect()
    }
}

/// Client states, each named for what it awaits.
#[derive(Debug)]
enum State {
    ExpectGreeting,
    ExpectEhloReply,
    ExpectHeloReply,
    Idle,
    ExpectMailReply(InFlight),
    ExpectRcptReplies(InFlight),
    ExpectDataGo(InFlight),
    /// 354 received; the driver is writing the body.
    SendingBody(InFlight),
    ExpectDataReply(InFlight),
    ExpectRsetReply,
    ExpectQuitReply,
    Closed,
}

/// The synthetic reply for a connection that went away.
pub fn connection_lost() -> Reply {
    Reply::new(451, Some(EnhancedCode::new(4, 4, 2)), "connection lost")
}

/// The synthetic reply for a message larger than the remote's SIZE.
pub fn too_big() -> Reply {
    Reply::new(
        552,
        Some(EnhancedCode::new(5, 3, 4)),
        "message too big for the next hop",
    )
}

fn bad_address(sender: bool) -> Reply {
    let code = if sender {
        EnhancedCode::new(5, 1, 7)
    } else {
        EnhancedCode::new(5, 1, 3)
    };
    Reply::new(553, Some(code), "address contains forbidden characters")
}

/// RFC 6531 section 3.4: no message with internationalized headers to a
/// server without SMTPUTF8.
fn utf8_headers_refused() -> Reply {
    Reply::new(
        554,
        Some(EnhancedCode::new(5, 6, 7)),
        "message has UTF-8 headers and the next hop does not offer SMTPUTF8",
    )
}

fn needs_smtputf8() -> Reply {
    Reply::new(
        553,
        Some(EnhancedCode::new(5, 6, 7)),
        "non-ASCII address and the next hop does not offer SMTPUTF8",
    )
}

/// Octets never sent inside `<...>`: controls (CR and LF above all) and
/// the brackets themselves.
fn address_ok(addr: &str) -> bool {
    !addr.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'<' || b == b'>')
}

/// The outbound SMTP client for one connection.
#[derive(Debug)]
pub struct Client {
    helo_name: String,
    state: State,
    parser: ReplyParser,
    caps: Capabilities,
    out: Vec<u8>,
    events: VecDeque<ClientEvent>,
    /// A greeting/EHLO refusal that decides every later transaction.
    refusal: Option<Reply>,
}

impl Client {
    /// A client for a freshly connected socket; it first awaits the
    /// greeting. `helo_name` is sent in EHLO/HELO (control characters are
    /// removed).
    pub fn new(helo_name: &str) -> Self {
        let helo_name =
            helo_name.chars().filter(|c| !c.is_control()).collect();
        Self {
            helo_name,
            state: State::ExpectGreeting,
            parser: ReplyParser::new(),
            caps: Capabilities::default(),
            out: Vec::new(),
            events: VecDeque::new(),
            refusal: None,
        }
    }

    /// Bytes to write to the connection; the driver drains what it wrote.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The remote's capabilities (empty before EHLO, or after HELO).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether the remote offers DSN (otherwise the driver handles
    /// NOTIFY=SUCCESS itself: "relayed" DSNs).
    pub fn dsn_offered(&self) -> bool {
        self.caps.dsn
    }

    /// The greeting or EHLO/HELO reply that refused this connection.
    pub fn refusal(&self) -> Option<&Reply> {
        self.refusal.as_ref()
    }

    /// True once the connection is finished.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True when a transaction may be started.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Feeds bytes read from the connection. Returns how many were
    /// consumed (whole replies); the driver keeps the rest and calls again
    /// with more appended. On error the connection is finished (undecided
    /// recipients are transient, events `Done` and `Closed` are queued).
    pub fn receive(&mut self, input: &[u8]) -> Result<usize, ClientError> {
        let mut pos = 0;
        while pos < input.len() && !self.is_closed() {
            match self.parser.parse(&input[pos..]) {
                Ok(Status::Complete((reply, n))) => {
                    self.parser = ReplyParser::new();
                    pos += n.max(1).min(input.len() - pos);
                    self.on_reply(reply)?;
                }
                Ok(Status::Partial) => break,
                Err(e) => {
                    self.fail(None);
                    return Err(ClientError::Reply(e));
                }
            }
        }
        if self.is_closed() {
            // Nothing more will be read from this connection.
            return Ok(input.len());
        }
        Ok(pos)
    }

    /// The driver saw the connection close (or fail, or time out): every
    /// undecided recipient is transient (`451 4.4.2 connection lost`).
    pub fn closed(&mut self) {
        self.fail(None);
    }

    /// Starts a transaction (only when idle, or after the connection was
    /// refused or lost: then every recipient is decided at once).
    pub fn start(&mut self, tx: Transaction) -> Result<(), ClientError> {
        if tx.recipients.len() > MAX_RECIPIENTS {
            return Err(ClientError::TooManyRecipients);
        }
        match self.state {
            State::Idle => {}
            State::Closed | State::ExpectQuitReply => {
                let reply =
                    self.refusal.clone().unwrap_or_else(connection_lost);
                let mut f = new_inflight(tx.recipients.len());
                f.decide_all(&reply);
                self.events.push_back(ClientEvent::Done(f.into_results()));
                return Ok(());
            }
            _ => return Err(ClientError::Misuse("start while not idle")),
        }
        let mut f = new_inflight(tx.recipients.len());
        let caps = &self.caps;
        // Refusals of the whole message, decided without sending.
        let refused = if caps.size.is_some_and(|l| l > 0 && tx.size > l) {
            Some(too_big())
        } else if tx.utf8_headers && !caps.smtputf8 {
            Some(utf8_headers_refused())
        } else {
            None
        };
        if let Some(reply) = refused {
            f.decide_all(&reply);
            self.events.push_back(ClientEvent::Done(f.into_results()));
            self.events.push_back(ClientEvent::Ready);
            return Ok(());
        }
        if !address_ok(&tx.sender) {
            f.decide_all(&bad_address(true));
        } else if !tx.sender.is_ascii() && !caps.smtputf8 {
            f.decide_all(&needs_smtputf8());
        }
        for (i, (rcpt, params)) in tx.recipients.iter().enumerate() {
            if !address_ok(rcpt) {
                f.decide(i, &bad_address(false));
            } else if !rcpt.is_ascii() && !caps.smtputf8 {
                f.decide(i, &needs_smtputf8());
            }
            if f.results[i].is_none() {
                let mut line = Vec::with_capacity(rcpt.len() + 32);
                line.extend_from_slice(b"RCPT TO:<");
                line.extend_from_slice(rcpt.as_bytes());
                line.push(b'>');
                if caps.dsn {
                    params.encode(&mut line);
                }
                line.extend_from_slice(b"\r\n");
                f.rcpt_lines[i] = line;
                f.unsent.push_back(i);
            }
        }
        if f.unsent.is_empty() {
            // Nothing to send: every recipient is already decided.
            self.events.push_back(ClientEvent::Done(f.into_results()));
            self.events.push_back(ClientEvent::Ready);
            return Ok(());
        }
        self.write_mail(&tx);
        f.awaited.push_back(Awaited::Mail);
        if self.caps.pipelining {
            while let Some(i) = f.unsent.pop_front() {
                self.out.extend_from_slice(&f.rcpt_lines[i]);
                f.awaited.push_back(Awaited::Rcpt(i));
            }
            self.out.extend_from_slice(b"DATA\r\n");
            f.awaited.push_back(Awaited::Data);
        }
        self.state = State::ExpectMailReply(f);
        Ok(())
    }

    /// The driver has written the body and [`DATA_END`]; the client now
    /// awaits the final reply.
    pub fn body_sent(&mut self) -> Result<(), ClientError> {
        match mem::replace(&mut self.state, State::Closed) {
            State::SendingBody(f) => {
                self.state = State::ExpectDataReply(f);
                Ok(())
            }
            other => {
                self.state = other;
                Err(ClientError::Misuse("body_sent without SendBody"))
            }
        }
    }

    /// Sends QUIT (when idle, or after a refusal). The client then awaits
    /// 221 or the close, and reports `Closed`.
    pub fn quit(&mut self) -> Result<(), ClientError> {
        match self.state {
            State::Idle => {
                self.out.extend_from_slice(b"QUIT\r\n");
                self.state = State::ExpectQuitReply;
                Ok(())
            }
            State::ExpectQuitReply | State::Closed => Ok(()),
            _ => Err(ClientError::Misuse("quit in mid-transaction")),
        }
    }

    fn write_mail(&mut self, tx: &Transaction) {
        let caps = &self.caps;
        let mut params = tx.mail_params.clone();
        params.size = caps.size.map(|_| tx.size);
        params.body = match params.body {
            BodyType::SevenBit => BodyType::SevenBit,
            // Without 8BITMIME we still send: most servers accept 8-bit
            // octets, and our inbound side never offers BINARYMIME.
            BodyType::EightBitMime | BodyType::BinaryMime
                if caps.eightbitmime =>
            {
                BodyType::EightBitMime
            }
            _ => BodyType::SevenBit,
        };
        // RFC 6531 section 3.4: SMTPUTF8 whenever the envelope or the
        // headers need it (not only when it was received so), and only
        // where offered (`start` refused the rest).
        let needs_utf8 = tx.utf8_headers
            || !tx.sender.is_ascii()
            || tx.recipients.iter().any(|(r, _)| !r.is_ascii());
        params.smtputf8 = (params.smtputf8 || needs_utf8) && caps.smtputf8;
        params.auth = None;
        if !caps.dsn {
            params.ret = None;
            params.envid = None;
        }
        self.out.extend_from_slice(b"MAIL FROM:<");
        self.out.extend_from_slice(tx.sender.as_bytes());
        self.out.push(b'>');
        params.encode(caps.dsn, &mut self.out);
        self.out.extend_from_slice(b"\r\n");
    }

    fn write_ehlo(&mut self, verb: &[u8]) {
        self.out.extend_from_slice(verb);
        self.out.push(b' ');
        self.out.extend_from_slice(self.helo_name.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Finishes the connection: undecided recipients take `reply` (or
    /// "connection lost") and the events `Done` (if a transaction was in
    /// flight) and `Closed` are queued.
    fn fail(&mut self, reply: Option<&Reply>) {
        let lost = connection_lost();
        let reply = reply.unwrap_or(&lost);
        match mem::replace(&mut self.state, State::Closed) {
            State::Closed => return,
            State::ExpectMailReply(mut f)
            | State::ExpectRcptReplies(mut f)
            | State::ExpectDataGo(mut f)
            | State::SendingBody(mut f)
            | State::ExpectDataReply(mut f) => {
                f.decide_all(reply);
                self.events.push_back(ClientEvent::Done(f.into_results()));
            }
            _ => {}
        }
        self.events.push_back(ClientEvent::Closed);
    }

    /// Refused at greeting or EHLO/HELO: QUIT, and let later transactions
    /// take this reply.
    fn refuse(&mut self, reply: Reply) {
        self.refusal = Some(reply);
        self.out.extend_from_slice(b"QUIT\r\n");
        self.state = State::ExpectQuitReply;
    }

    fn on_reply(&mut self, reply: Reply) -> Result<(), ClientError> {
        if reply.code == 421 && !matches!(self.state, State::ExpectQuitReply) {
            if matches!(
                self.state,
                State::ExpectGreeting
                    | State::ExpectEhloReply
                    | State::ExpectHeloReply
            ) {
                // Refused before any transaction: later ones take it.
                self.refusal = Some(reply.clone());
            }
            self.fail(Some(&reply));
            return Ok(());
        }
        match mem::replace(&mut self.state, State::Closed) {
            State::ExpectGreeting => {
                if reply.is_positive() {
                    self.write_ehlo(b"EHLO");
                    self.state = State::ExpectEhloReply;
                } else {
                    self.refuse(reply);
                }
            }
            State::ExpectEhloReply => {
                if reply.is_positive() {
                    self.caps = Capabilities::from_ehlo_reply(&reply);
                    self.become_idle();
                } else if reply.is_permanent() {
                    self.write_ehlo(b"HELO");
                    self.state = State::ExpectHeloReply;
                } else {
                    self.refuse(reply);
                }
            }
            State::ExpectHeloReply => {
                if reply.is_positive() {
                    self.caps = Capabilities::default();
                    self.become_idle();
                } else {
                    self.refuse(reply);
                }
            }
            State::ExpectMailReply(f)
            | State::ExpectRcptReplies(f)
            | State::ExpectDataGo(f) => self.on_transaction_reply(f, reply),
            State::ExpectDataReply(mut f) => {
                for i in mem::take(&mut f.accepted) {
                    f.decide(i, &reply);
                }
                self.events.push_back(ClientEvent::Done(f.into_results()));
                self.become_idle();
            }
            State::ExpectRsetReply => {
                if reply.is_positive() {
                    self.become_idle();
                } else {
                    // The remote is confused; do not reuse it.
                    self.out.extend_from_slice(b"QUIT\r\n");
                    self.state = State::ExpectQuitReply;
                }
            }
            State::ExpectQuitReply => {
                self.events.push_back(ClientEvent::Closed);
            }
            State::SendingBody(f) => {
                // A reply while we write the body: the remote gave up.
                self.state = State::SendingBody(f);
                self.fail(Some(&reply));
                return Err(ClientError::Unexpected(reply));
            }
            State::Idle => {
                self.state = State::Idle;
                self.fail(None);
                return Err(ClientError::Unexpected(reply));
            }
            State::Closed => {}
        }
        Ok(())
    }

    fn on_transaction_reply(&mut self, mut f: InFlight, reply: Reply) {
        let Some(awaited) = f.awaited.pop_front() else {
            // Cannot happen: these states always await something.
            self.state = State::Idle;
            self.fail(None);
            return;
        };
        match awaited {
            Awaited::Mail => {
                if !reply.is_positive() {
                    f.decide_all(&reply);
                    f.needs_rset = true;
                    f.unsent.clear();
                }
            }
            Awaited::Rcpt(i) => {
                if reply.is_positive() && !f.needs_rset {
                    f.accepted.push(i);
                } else if reply.code == 552 {
                    // RFC 5321 4.5.3.1.10: a 552 to RCPT means too many
                    // recipients; treat it as 452 (retry later).
                    f.decide_as(i, &reply, RcptKind::Transient);
                } else {
                    f.decide(i, &reply);
                }
            }
            Awaited::Data => {
                if reply.code == 354 {
                    if f.accepted.is_empty() || f.needs_rset {
                        // RFC 2920: nothing to send, end the data at once
                        // and ignore the reply to that.
                        self.out.extend_from_slice(DATA_END);
                        f.awaited.push_back(Awaited::DiscardedData);
                    } else {
                        self.events.push_back(ClientEvent::SendBody);
                        self.state = State::SendingBody(f);
                        return;
                    }
                } else {
                    for i in mem::take(&mut f.accepted) {
                        f.decide(i, &reply);
                    }
                    f.needs_rset = true;
                }
            }
            Awaited::DiscardedData => {}
        }
        let command_reply =
            matches!(awaited, Awaited::Mail | Awaited::Rcpt(_));
        if f.awaited.is_empty() && command_reply && !f.needs_rset {
            // Not pipelined: write the next command, if any.
            if let Some(i) = f.unsent.pop_front() {
                self.out.extend_from_slice(&f.rcpt_lines[i]);
                f.awaited.push_back(Awaited::Rcpt(i));
            } else if !f.accepted.is_empty() {
                self.out.extend_from_slice(b"DATA\r\n");
                f.awaited.push_back(Awaited::Data);
            } else {
                // Every RCPT was refused: no DATA, reset the transaction.
                f.needs_rset = true;
            }
        }
        self.state = match f.awaited.front() {
            None => {
                let rset = f.needs_rset;
                self.events.push_back(ClientEvent::Done(f.into_results()));
                if rset {
                    self.out.extend_from_slice(b"RSET\r\n");
                    State::ExpectRsetReply
                } else {
                    self.events.push_back(ClientEvent::Ready);
                    State::Idle
                }
            }
            Some(Awaited::Mail) => State::ExpectMailReply(f),
            Some(Awaited::Rcpt(_)) => State::ExpectRcptReplies(f),
            Some(Awaited::Data | Awaited::DiscardedData) => {
                State::ExpectDataGo(f)
            }
        };
    }

    fn become_idle(&mut self) {
        self.state = State::Idle;
        self.events.push_back(ClientEvent::Ready);
    }
}

fn new_inflight(n: usize) -> InFlight {
    InFlight {
        results: vec![None; n],
        accepted: Vec::new(),
        unsent: VecDeque::new(),
        rcpt_lines: vec![Vec::new(); n],
        awaited: VecDeque::new(),
        needs_rset: false,
    }
}

#[cfg(test)]
mod tests;
