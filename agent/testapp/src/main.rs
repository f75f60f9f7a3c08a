//! Tiny HTTP test app (placeholder until the test-host kit lands).
fn main() {}
