//! The `allowed_signers` parser (`veza_source::AllowedSigners::parse`) and the OpenSSH
//! pattern matcher it uses, over arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veza_source::AllowedSigners;
use veza_source::allowed_signers::{match_pattern, match_pattern_list};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(signers) = AllowedSigners::parse(text) {
        for e in signers.entries() {
            let _ = e.matches_principal("forgejo@forge.example");
            let _ = e.allows_namespace("git");
            let _ = e.validity_at(1_800_000_000);
        }
    }
    // Patterns: split the input into a subject and a pattern (list).
    if let Some((s, p)) = text.split_once('\n') {
        let _ = match_pattern(s, p);
        let _ = match_pattern_list(s, p);
    }
});
