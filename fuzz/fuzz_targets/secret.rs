//! Secrets: an age file's armor and header as the agent reads them from a commit
//! (`veza_secrets::Ciphertext::parse`, then decryption attempted with a fixed key), and the
//! `{secret:NAME}` references and environment-file rendering of manifest values
//! (`veza_model::template`).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

const HOST_KEY: &str = include_str!("../../agent/secrets/testdata/host_ed25519");

fuzz_target!(|data: &[u8]| {
    if let Ok(ct) = veza_secrets::Ciphertext::parse(data) {
        let _ = ct.recipients();
        let mut ids = veza_secrets::Identities::none();
        if ids.add("host", HOST_KEY.as_bytes()).is_ok() {
            let _ = veza_secrets::decrypt(&ct, &ids);
        }
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(names) = veza_model::template::secret_refs(text) {
        let vars = BTreeMap::from([("V".to_string(), text.to_string())]);
        let rendered = veza_model::template::render_env_file(&vars, |n| {
            names.contains(&n).then_some("v$a\"l`u\\e")
        });
        if let Ok(file) = rendered {
            // One variable, one line, whatever the value held.
            assert_eq!(file.lines().count(), 2, "{file:?}");
        }
    }
});
