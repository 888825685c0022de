#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| millrace_proto::data::fuzz_scanner(data));
