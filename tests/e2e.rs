//! End-to-end tests: start the real `millrace` binary on an ephemeral
//! loopback port and talk SMTP to it over TCP.

mod inbound;
mod recovery;
mod util;
