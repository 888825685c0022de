//! Sans-IO SMTP for Millrace: commands, paths, ESMTP parameters, replies
//! (with enhanced status codes), the EHLO capability set and the DATA body
//! scanner.
//!
//! This crate opens no sockets, touches no files, starts no threads and
//! reads no clock. It consumes bytes and returns typed values; the server
//! and the outbound client drive it.
//!
//! ```
//! use millrace_proto::{parse_command, Command};
//! let cmd = parse_command(b"MAIL FROM:<a@b.example> SIZE=1000").unwrap();
//! assert!(matches!(cmd, Command::Mail { .. }));
//! ```
//!
//! # Non goals
//! - MIME parsing: the body is opaque octets (in wire, dot-stuffed form).
//! - I/O of any kind, timeouts, TLS.
// No `unsafe` but in one module: the SIMD kernels of the DATA scanner's
// fast path (`data/kernel.rs`, `#[allow(unsafe_code)]`).
#![deny(unsafe_code)]

pub mod command;
pub mod data;
pub mod date;
pub mod ehlo;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod line;
pub mod params;
pub mod path;
pub mod reply;

pub use command::{Command, CommandError, parse_command, parse_command_with};
pub use data::{
    BodyScanner, DotStuffer, Scan, header_section, stuff, unstuff,
};
pub use ehlo::Capabilities;
pub use line::{LineReader, LineStatus};
pub use params::{
    BodyType, MailParams, Notify, ParamError, RcptParams, Ret, xtext_decode,
    xtext_encode,
};
pub use path::{ForwardPath, Mailbox, Path, PathError, ReversePath};
pub use reply::{EnhancedCode, Reply, ReplyError, ReplyParser};

/// The SMTP command line limit of RFC 5321 section 4.5.3.1.4, CRLF included.
pub const MAX_COMMAND_LINE: usize = 512;

/// The reply line limit of RFC 5321 section 4.5.3.1.5, CRLF included.
pub const MAX_REPLY_LINE: usize = 512;

/// Result of incremental parsing: "need more bytes" is not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// A complete item was parsed.
    Complete(T),
    /// More input is needed.
    Partial,
}
