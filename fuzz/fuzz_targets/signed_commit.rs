//! A raw commit object through the whole verification path (`verify_object`: header
//! split, `gpgsig` extraction, SSHSIG parse, trust lookup), with a fixed trust root.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veza_source::{AllowedSigners, ObjectKind, verify_object};

/// The trust root of the shipped signing vectors (their commits are the seeds).
const TRUST: &str = include_str!("../../signing/vectors/allowed_signers");

fuzz_target!(|data: &[u8]| {
    static SIGNERS: OnceLock<AllowedSigners> = OnceLock::new();
    let signers =
        SIGNERS.get_or_init(|| AllowedSigners::parse(TRUST).unwrap_or_else(|e| panic!("{e}")));
    let _ = verify_object(ObjectKind::Commit, data, signers, 1_800_000_000);
    let _ = verify_object(ObjectKind::Tag, data, signers, 1_800_000_000);
});
