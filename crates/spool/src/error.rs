//! The spool's error type.

use std::io;
use std::path::PathBuf;

use crate::MessageId;

/// Everything that can go wrong in the spool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// An operating system call failed.
    #[error("spool: {op} {}: {source}", path.display())]
    Io {
        /// What we were doing (e.g. "fdatasync").
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another process (or another `Spool` in this one) holds the lock.
    #[error("spool directory is locked by another millrace process")]
    Locked,
    /// The body would grow past `max_message_size` plus the slack.
    #[error("message too large for the spool")]
    TooLarge,
    /// The envelope names more recipients than `create` reserved.
    #[error(
        "envelope has {got} recipients, the spool file has room for {reserved}"
    )]
    TooManyRecipients {
        /// Recipient slots reserved by `create`.
        reserved: usize,
        /// Recipients in the envelope (or the index asked for).
        got: usize,
    },
    /// A recipient index passed to `mark_done` is out of range.
    #[error("recipient index {index} out of range ({count} recipients)")]
    BadRecipient {
        /// The index asked for.
        index: u32,
        /// Recipient slots in the file.
        count: u32,
    },
    /// A spool file exists but does not validate.
    #[error("corrupt spool file: {0}")]
    Corrupt(String),
    /// No committed message with this id.
    #[error("message {0} not found in the spool")]
    NotFound(MessageId),
    /// The committer thread is gone (the process is shutting down).
    #[error("spool committer thread has stopped")]
    Closed,
}

/// Builds a closure mapping an `io::Error` to [`SpoolError::Io`].
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.into();
    move |source| SpoolError::Io { op, path, source }
}
