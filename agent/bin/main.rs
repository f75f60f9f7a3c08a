//! `veza-agent`: the command-line entry point.
fn main() {}
