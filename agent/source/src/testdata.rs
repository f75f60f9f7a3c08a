//! Test helper: the shipped signing vectors under `signing/vectors/`.

use std::path::PathBuf;

/// Directory of the shipped vectors.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../signing/vectors")
}

/// Bytes of one vector file.
pub fn vector(name: &str) -> Vec<u8> {
    let path = dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Text of one vector file.
pub fn vector_str(name: &str) -> String {
    String::from_utf8(vector(name)).expect("vector is UTF-8")
}
