//! End-to-end tests: start the real `millrace` binary on an ephemeral
//! loopback port and talk SMTP to it over TCP.

// Helpers are `pub` for use across the test modules of this one binary.
#![allow(unreachable_pub)]

mod bounce;
mod delivery;
mod dns;
mod inbound;
mod recovery;
mod util;
