//! Fuzz target: see `millrace_proto::fuzzing::reply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| millrace_proto::fuzzing::reply(data));
