//! The library's error type.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a `send` or `sink` run could not start or had to stop. Per-session
/// problems (refused connections, timeouts, unexpected replies) are not
/// errors: they are counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// An option has a value that cannot work.
    #[error("invalid --{option}: {reason}")]
    InvalidOption {
        /// The option's long name.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The `--body-file` could not be read.
    #[error("cannot read body file {}: {source}", path.display())]
    BodyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The sink could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// A file of `--dump` or `--count-file` could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The event loop itself failed (epoll).
    #[error("event loop: {0}")]
    Poll(#[source] io::Error),
}
