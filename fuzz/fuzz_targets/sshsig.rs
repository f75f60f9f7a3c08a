//! SSHSIG parsing (`veza_source::sshsig`): the armor, the decoded blob, OpenSSH public
//! key lines, and a verification attempt over the input itself when a signature parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veza_source::sshsig::{PublicKey, SshSig, dearmor};

fuzz_target!(|data: &[u8]| {
    let _ = dearmor(data);
    if let Ok(sig) = SshSig::from_armor(data) {
        let _ = sig.namespace_str();
        let _ = sig.verify(data);
    }
    if let Ok(sig) = SshSig::from_blob(data) {
        let _ = sig.public_key.fingerprint();
        let _ = sig.verify(b"message");
    }
    let _ = PublicKey::from_blob(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(k) = PublicKey::from_openssh(text) {
            let _ = k.to_openssh();
        }
        if let Some((t, b)) = text.split_once(' ') {
            let _ = PublicKey::from_type_and_base64(t, b);
        }
    }
});
