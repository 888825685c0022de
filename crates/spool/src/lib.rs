//! Millrace spool: durable, mmap'd message files with group-commit
//! fsync, a lock file and a startup recovery scan.
//!
//! Each message is one file, `<dir>/q/<XX>/<ID>`; `XX` comes from the
//! arrival time and changes about once a second, so one group commit
//! usually fsyncs one directory. The receiver writes the body straight
//! into a mapping of the file ([`Incoming::spare`] /
//! [`Incoming::advance`]); [`Spool::commit`] writes the envelope and a
//! checksummed trailer through the same mapping and hands the file to a
//! committer thread, which makes every file finished in the same window
//! durable with one sync step and only then reports success. A file is
//! committed if and only if its record validates; [`Spool::recover`]
//! deletes the rest at startup. The on-disk layout is described in the
//! `format` module source.
//!
//! Files are reused: a deleted message's file is renamed into
//! `<dir>/free/` (still open and mapped) and the next message is
//! renamed out of it, and a recently committed message stays mapped so
//! delivery reads it without a system call (see the `reuse` module
//! source for why: on ext4 this is most of the cost of a message).
//!
//! ```
//! use millrace_spool::{Envelope, Recipient, Spool, SpoolOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let spool = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
//! let mut msg = spool.create(1).unwrap();
//! msg.write_all(b"Subject: hi\r\n\r\nhello\r\n").unwrap();
//! let env = Envelope {
//!     sender: "a@example.org".into(),
//!     recipients: vec![Recipient {
//!         address: "b@example.net".into(),
//!         ..Default::default()
//!     }],
//!     ..Default::default()
//! };
//! let id = spool.commit_sync(msg, &env).unwrap();
//! let stored = spool.open_message(id).unwrap();
//! assert_eq!(stored.body(), b"Subject: hi\r\n\r\nhello\r\n");
//! assert_eq!(stored.envelope(), &env);
//! ```
//!
//! # Non goals
//!
//! - Scheduling, retries and per-recipient outcomes beyond "final":
//!   that is the queue's job.
//! - Sharing a spool directory between processes (the lock forbids it).
//! - Portability beyond Unix; the fast paths (`fallocate`,
//!   `sync_file_range`) are Linux only.
//! - Protection against other programs writing into spool files.
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod envelope;
mod error;
mod format;
mod id;
mod incoming;
mod reuse;
mod spool;
mod stored;
mod sys;

pub use envelope::{Envelope, Recipient};
pub use error::SpoolError;
pub use id::{ID_TEXT_LEN, MessageId, ParseIdError};
pub use incoming::Incoming;
pub use spool::{GROWTH_SLACK, Recovery, Spool, SpoolOptions, SyncMethod};
pub use stored::StoredMessage;
