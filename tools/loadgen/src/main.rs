//! millrace-load (work in progress).
fn main() {}
