//! The inbound side of Millrace: the SMTP session state machine that
//! accepts mail from clients, and (in [`conn`]) the glue that binds it
//! to the reactor and the spool ([`conn`]).
//!
//! [`Session`] is sans-IO: it takes bytes, events (timeout, shutdown,
//! commit finished) and produces reply bytes plus [`Action`]s. It never
//! touches a socket, a file or a clock, so every row of the behaviour
//! table in DESIGN.md is tested as an in-memory dialogue.
//!
//! ```
//! use std::sync::Arc;
//! use millrace_server::{Action, Session, SessionConfig};
//!
//! let cfg = Arc::new(SessionConfig::new("mx.example"));
//! let peer = "127.0.0.1:40000".parse().unwrap();
//! let local = "127.0.0.1:25".parse().unwrap();
//! let mut s = Session::new(cfg, peer, local);
//! s.greet(false);
//! assert!(s.output().starts_with(b"220 mx.example ESMTP Millrace\r\n"));
//! s.output().clear();
//! let (used, action) = s.receive(b"EHLO client.example\r\n");
//! assert_eq!((used, action), (21, Action::Continue));
//! assert!(s.output().starts_with(b"250-mx.example\r\n"));
//! ```
//!
//! # Non goals
//! - Sockets, timers, files: the glue owns them.
//! - STARTTLS and AUTH (not offered yet: 502 5.5.1), BINARYMIME.
//! - Local delivery, address verification (a relay answers VRFY with 252).
#![forbid(unsafe_code)]

mod config;
pub mod conn;
#[doc(hidden)]
pub mod fuzzing;
mod replies;
mod session;

pub use config::SessionConfig;
pub use conn::{Hooks, Inbound, InboundConfig, InboundMsg, InboundShared};
pub use ipnet::IpNet;
pub use replies::{SessionError, error_reply};
pub use session::{
    Action, BdatStatus, BodyStatus, Phase, Session, TimeoutKind, Transaction,
};

#[doc(hidden)]
pub use fuzzing::fuzz_session;
