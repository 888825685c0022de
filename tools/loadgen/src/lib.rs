//! `millrace-load`: the bundled SMTP load generator (`send`, like Postfix's
//! smtp-source) and mail sink (`sink`, like smtp-sink), usable in-process
//! through [`run_send`] and [`run_sink`].
//!
//! Both run on their own single-threaded `mio` event loop: one thread holds
//! any number of sessions (10,000 and more), never a thread per session.
//! `send` is open-loop when given a rate: messages are scheduled at fixed
//! intervals and latency is measured from the scheduled time, so a slow
//! server cannot hide its queueing (no coordinated omission).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::sync::atomic::AtomicBool;
//! use millrace_load::{run_send, run_sink, SendOptions, SinkOptions};
//!
//! let (tx, rx) = std::sync::mpsc::channel();
//! let sink = std::thread::spawn(move || {
//!     let opts = SinkOptions { expect: Some(100), ..SinkOptions::default() };
//!     run_sink(opts, move |addr| tx.send(addr).unwrap())
//! });
//! let addr = rx.recv().unwrap();
//! let opts = SendOptions { server: addr, messages: Some(100),
//!     ..SendOptions::default() };
//! let report = run_send(opts, Arc::new(AtomicBool::new(false))).unwrap();
//! assert_eq!(report.messages_accepted, 100);
//! sink.join().unwrap().unwrap();
//! ```
//!
//! # Non goals
//! - TLS, AUTH, BDAT/CHUNKING and LMTP: plain SMTP/ESMTP with PIPELINING.
//! - Being a mail server: the sink stores nothing unless `--dump` is given.
//! - Traffic to other machines in tests: everything here uses loopback.
#![deny(unsafe_code)]

pub mod bench;
mod error;
pub mod glob;
pub mod message;
pub mod report;
pub mod send;
pub mod sink;
pub mod sys;

pub use error::LoadError;
pub use report::{Latency, SendErrors, SendReport, SinkErrors, SinkReport};
pub use send::{SendOptions, SendProgress, run_send};
pub use sink::{Script, SinkOptions, SinkProgress, run_sink};
