//! Plain data types and the traits the queue talks through.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use millrace_spool::MessageId;

/// Scheduling limits and timings (the `[delivery]` config keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Waits between attempts; the last one repeats. Must not be empty.
    pub retry_intervals: Vec<Duration>,
    /// After arrival + this, undelivered recipients expire.
    pub max_queue_lifetime: Duration,
    /// One delay warning per message once it is deferred this long.
    pub delay_warning: Option<Duration>,
    /// Concurrent connections per destination (at least 1).
    pub max_connections_per_destination: usize,
    /// Messages one connection carries before it quits (the driver
    /// counts; the queue hands work out through `take_more`).
    pub max_messages_per_connection: usize,
    /// Recipients per transaction (per [`JobItem`]; at least 1).
    pub max_recipients_per_transaction: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        Self {
            retry_intervals: vec![
                m(1),
                m(5),
                m(15),
                m(30),
                m(60),
                m(120),
                m(240),
            ],
            max_queue_lifetime: Duration::from_secs(5 * 24 * 3600),
            delay_warning: Some(m(240)),
            max_connections_per_destination: 32,
            max_messages_per_connection: 100,
            max_recipients_per_transaction: 100,
        }
    }
}

/// The next hop recipients are grouped by, chosen by the [`Router`]
/// from the recipient domain (e.g. `route:127.0.0.1:2626`,
/// `smarthost:host:port`, `mx:example.net`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination(Arc<str>);

impl Destination {
    /// A destination with this key.
    pub fn new(key: &str) -> Self {
        Self(Arc::from(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Maps a recipient domain to its next hop key.
pub trait Router: Send + Sync + 'static {
    /// The destination for recipients at `domain` (may be empty when
    /// the address has no `@`).
    fn destination(&self, domain: &str) -> Destination;
}

/// Starts delivery connections.
pub trait Dispatcher: Send + Sync + 'static {
    /// Open a connection for `job.dest` and deliver `job.items`; the
    /// queue counts it against `max_connections_per_destination` until
    /// [`crate::Queue::connection_done`]. Called on the scheduler
    /// thread: must not block.
    fn dispatch(&self, job: Job);

    /// Work is ready for `dest` but its connection limit is reached: an
    /// idle connection to it may take the work ([`crate::Queue::take_more`]).
    fn nudge(&self, dest: &Destination) {
        let _ = dest;
    }
}

/// Work for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Where to connect.
    pub dest: Destination,
    /// One transaction per item, in order.
    pub items: Vec<JobItem>,
}

/// One transaction: a message and some of its recipients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobItem {
    /// The spooled message (the driver reopens it to send the body).
    pub id: MessageId,
    /// Indices into the envelope's recipients, all for this
    /// destination, at most `max_recipients_per_transaction`.
    pub rcpts: Vec<u32>,
}

/// What happened to one recipient in a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: done.
    Delivered {
        /// The remote host.
        remote: String,
        /// The remote reply.
        reply: String,
    },
    /// 4xx or a connection failure: retry later.
    Transient {
        /// The remote host, if one was reached.
        remote: Option<String>,
        /// The reply, or a description of the failure.
        reply: String,
    },
    /// 5xx (or an unroutable address): final failure.
    Permanent {
        /// The remote host, if one was reached.
        remote: Option<String>,
        /// The reply, or a description of the failure.
        reply: String,
    },
}

/// An outcome for one recipient of a reported transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptOutcome {
    /// Index into the envelope's recipients.
    pub rcpt: u32,
    /// The recipient address (for the events; the queue keeps none).
    pub address: String,
    /// What happened.
    pub outcome: Outcome,
}

/// Something the queue decided, for the log and the DSN composer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueEvent {
    /// A recipient was delivered.
    Delivery {
        /// The message.
        id: MessageId,
        /// The recipient address.
        rcpt: String,
        /// The remote host.
        remote: String,
        /// The remote reply.
        reply: String,
    },
    /// A recipient was deferred and will be retried.
    TransientFailure {
        /// The message.
        id: MessageId,
        /// The recipient address.
        rcpt: String,
        /// The remote host, if reached.
        remote: Option<String>,
        /// The reply or failure.
        reply: String,
        /// When the next attempt is due.
        next_attempt: SystemTime,
    },
    /// A recipient failed permanently.
    Bounce {
        /// The message.
        id: MessageId,
        /// The recipient address.
        rcpt: String,
        /// The remote host, if reached.
        remote: Option<String>,
        /// The reply or failure.
        reply: String,
    },
    /// A recipient was still undelivered at `max_queue_lifetime`.
    Expiration {
        /// The message.
        id: MessageId,
        /// The recipient address.
        rcpt: String,
        /// The last reply seen, or a note that none was.
        reply: String,
    },
    /// A message has been deferred for `delay_warning` (once per
    /// message).
    DelayWarning {
        /// The message.
        id: MessageId,
        /// The recipients still pending.
        rcpts: Vec<String>,
        /// The last reply seen.
        reply: String,
    },
    /// The store failed (the queue carries on; at worst a restart
    /// delivers a duplicate or drops a message it could not read).
    StoreFailure {
        /// The message.
        id: MessageId,
        /// What was tried: "load", "mark_done" or "delete".
        op: &'static str,
        /// The error text.
        error: String,
    },
}

/// One recipient that failed for good (for the bounce composer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Index into the envelope's recipients.
    pub rcpt: u32,
    /// The recipient address.
    pub address: String,
    /// The host that gave the reply, if one was reached.
    pub remote: Option<String>,
    /// The last reply (remote or synthetic).
    pub reply: String,
    /// True when it expired (still deferred at `max_queue_lifetime`),
    /// false when it was refused permanently.
    pub expired: bool,
}

/// Receives queue events.
pub trait Events: Send + Sync + 'static {
    /// One event; called on the scheduler thread, must not block long.
    fn event(&self, e: QueueEvent);

    /// Every recipient of message `id` that became a final failure in one
    /// step (a transaction's outcomes, or an expiry), after their
    /// `Bounce` / `Expiration` events and before the message may be
    /// deleted from the store: one bounce per message per event.
    fn failed(&self, id: MessageId, failures: &[Failure]) {
        let _ = (id, failures);
    }
}

/// A snapshot of the queue's size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages with at least one pending recipient.
    pub messages: usize,
    /// Recipients not yet final.
    pub recipients_pending: usize,
    /// Recipients in ready queues, not yet taken by a connection.
    pub ready: usize,
    /// Recipients waiting for a retry.
    pub deferred: usize,
    /// Recipients taken by a connection, outcome not yet reported.
    pub in_flight: usize,
    /// Open delivery connections (dispatched, not yet done).
    pub active_connections: usize,
}

/// A stored message as the queue needs it on load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadedMessage {
    /// Arrival time, seconds since the Unix epoch.
    pub arrival_unix: i64,
    /// Every recipient address with its "already final" flag.
    pub recipients: Vec<(String, bool)>,
}

/// Durable message storage the queue records outcomes in.
pub trait Store: Send + Sync + 'static {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Reads a committed message's envelope.
    fn load(&self, id: MessageId) -> Result<LoadedMessage, Self::Error>;
    /// Durably records these recipients as final.
    fn mark_done(
        &self,
        id: MessageId,
        rcpts: &[u32],
    ) -> Result<(), Self::Error>;
    /// Removes a message whose recipients are all final.
    fn delete(&self, id: MessageId) -> Result<(), Self::Error>;
}

impl Store for millrace_spool::Spool {
    type Error = millrace_spool::SpoolError;

    fn load(&self, id: MessageId) -> Result<LoadedMessage, Self::Error> {
        let m = self.open_message(id)?;
        let env = m.envelope();
        let recipients = env
            .recipients
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                (r.address.clone(), m.is_done(i))
            })
            .collect();
        Ok(LoadedMessage { arrival_unix: env.arrival_unix, recipients })
    }

    fn mark_done(
        &self,
        id: MessageId,
        rcpts: &[u32],
    ) -> Result<(), Self::Error> {
        millrace_spool::Spool::mark_done(self, id, rcpts)
    }

    fn delete(&self, id: MessageId) -> Result<(), Self::Error> {
        millrace_spool::Spool::delete(self, id)
    }
}

/// Errors starting the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A config value is unusable.
    #[error("invalid queue config: {0}")]
    Config(&'static str),
    /// The scheduler thread could not be started.
    #[error("cannot start the queue scheduler thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl QueueConfig {
    /// Checks the limits the scheduler relies on.
    pub fn validate(&self) -> Result<(), QueueError> {
        if self.retry_intervals.is_empty() {
            return Err(QueueError::Config("retry_intervals is empty"));
        }
        if self.max_connections_per_destination == 0 {
            return Err(QueueError::Config(
                "max_connections_per_destination is 0",
            ));
        }
        if self.max_recipients_per_transaction == 0 {
            return Err(QueueError::Config(
                "max_recipients_per_transaction is 0",
            ));
        }
        if self.max_messages_per_connection == 0 {
            return Err(QueueError::Config(
                "max_messages_per_connection is 0",
            ));
        }
        Ok(())
    }
}
