//! Integration tests for `millrace-load`: `send` against the in-process
//! `sink` on loopback, the command line, and Postfix interop when its
//! smtp-source and smtp-sink are installed.

mod cli;
mod inprocess;
mod interop;
mod util;
