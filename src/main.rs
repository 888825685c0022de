//! The `millrace` binary: command line, configuration, start-up.

fn main() {
    println!("millrace: not yet");
}
