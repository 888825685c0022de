//! Millrace queue: the in-memory index of pending recipients, grouped
//! by destination, with the scheduler that dispatches delivery
//! connections, retries deferred recipients and expires old ones.
//!
//! The spool holds the messages; the queue holds only what scheduling
//! needs (id, arrival, attempt count, next attempt and per recipient
//! its index, destination and state), so a million queued messages
//! fit in a few hundred MB. Ready recipients sit in lock-free
//! per-destination queues (crossbeam `SegQueue`) that delivery
//! connections pull from ([`Queue::take_more`]) for connection reuse.
//! One scheduler thread owns a [`QueueCore`] with a single ordered
//! timer set (retry, expiry and delay-warning deadlines) and sleeps
//! until the next deadline or the next command. [`QueueCore`] takes
//! `now` as a parameter, so its logic is tested without a clock.
//!
//! Outcomes: delivered and permanent failures are final (recorded with
//! [`Store::mark_done`], or the message is deleted when every recipient
//! is final); transient failures retry on `retry_intervals` until
//! `max_queue_lifetime`, counted from the message's arrival.
//!
//! ```
//! use std::sync::Arc;
//! use millrace_queue::*;
//!
//! struct ToOne;
//! impl Router for ToOne {
//!     fn destination(&self, _: &str) -> Destination {
//!         Destination::new("route:127.0.0.1:2626")
//!     }
//! }
//! struct Print;
//! impl Dispatcher for Print {
//!     fn dispatch(&self, job: Job) {
//!         println!("connect to {} for {:?}", job.dest, job.items);
//!     }
//! }
//! impl Events for Print {
//!     fn event(&self, e: QueueEvent) {
//!         println!("{e:?}");
//!     }
//! }
//! let dir = tempfile::tempdir().unwrap();
//! let spool = millrace_spool::Spool::open(
//!     dir.path(),
//!     millrace_spool::SpoolOptions::default(),
//! )
//! .unwrap();
//! let committed = spool.recover().unwrap().committed;
//! let queue = Queue::start(
//!     QueueConfig::default(),
//!     Arc::new(spool),
//!     Arc::new(ToOne),
//!     Arc::new(Print),
//!     Arc::new(Print),
//! )
//! .unwrap();
//! queue.load(committed);
//! queue.shutdown();
//! ```
//!
//! # Non goals
//!
//! - Sockets, DNS or SMTP: the delivery driver does those and reports
//!   outcomes back.
//! - Keeping envelopes or addresses in memory: the driver reopens the
//!   spool file; events name recipients from the driver's report or,
//!   for expiry, from the store.
//! - Composing bounces (the DSN crate turns events into messages).
//! - Exactly-once delivery: a crash between delivery and the durable
//!   record causes a duplicate (at-least-once is the rule).
#![forbid(unsafe_code)]

mod core;
mod queue;
mod types;

pub use crate::core::QueueCore;
pub use crate::queue::Queue;
pub use crate::types::{
    Destination, Dispatcher, Events, Failure, Job, JobItem, LoadedMessage,
    Outcome, QueueConfig, QueueError, QueueEvent, QueueStats, RcptOutcome,
    Router, Store,
};

#[cfg(test)]
mod tests;
