//! Fuzz target: see `millrace_server::fuzz_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| millrace_server::fuzz_session(data));
