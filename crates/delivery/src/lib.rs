//! Millrace delivery: the outbound side of the relay.
//!
//! - [`client`]: the outbound SMTP client as a sans-IO state machine
//!   (greeting, EHLO/HELO, pipelined MAIL/RCPT/DATA, per-recipient results,
//!   connection reuse, QUIT). It does no I/O: a driver feeds it bytes and
//!   writes what it produces, streaming the body straight from the spool.
//! - [`route`]: the routing decision (`[routes]`, smarthost, MX).
//! - [`driver`]: runs client machines on reactor threads for the queue:
//!   resolve, connect, stream bodies from the spool, report outcomes.
//! - [`dns`]: MX and address resolution on a dedicated thread (hickory,
//!   cached), with null MX, implicit MX and bounded timeouts.
//!
//! ```
//! use millrace_delivery::client::{Client, ClientEvent};
//! let mut c = Client::new("relay.example");
//! assert_eq!(c.receive(b"220 mx.example ESMTP\r\n").unwrap(), 22);
//! assert_eq!(c.output().as_slice(), b"EHLO relay.example\r\n");
//! ```
//!
//! # Non goals
//! - TLS (STARTTLS) and AUTH: later issues.
//! - CHUNKING/BDAT and BINARYMIME: bodies are sent with DATA only.
//! - Recursive DNS resolution: a configured resolver does that.
#![forbid(unsafe_code)]

pub mod client;
pub mod dns;
pub mod driver;
pub mod route;

pub use client::{
    Client, ClientError, ClientEvent, RcptKind, RcptResult, Transaction,
};
pub use dns::{Dns, DnsError, Exchanger, RouteError};
pub use route::{NextHop, Router};
