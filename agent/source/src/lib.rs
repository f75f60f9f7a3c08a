//! Signed source: fetch the manifests repository and verify SSH commit signatures
//! against the host trust root before anything is read as desired state.
