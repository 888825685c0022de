//! Criterion benches of the protocol hot paths.
fn main() {}
