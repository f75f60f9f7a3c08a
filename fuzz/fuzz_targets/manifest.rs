//! The manifest parser and validator (`veza_model::load`) over arbitrary bytes: one
//! file, then the same bytes as two files of one host (cross-file rules). Must never
//! panic, hang or blow up memory (1 MiB, 64 aliases, 64 levels are the bounds).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let one = [("fuzz.yaml".to_string(), data.to_vec())];
    let _ = veza_model::load(&one);
    if data.len() < 64 * 1024 {
        let two = [("a.yaml".to_string(), data.to_vec()), ("b.yaml".to_string(), data.to_vec())];
        let _ = veza_model::load(&two);
    }
});
