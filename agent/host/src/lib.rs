//! Effects on the host. The only crate that spawns processes (`process`); files are
//! written through the leaf crate `veza-fs`, re-exported here as `fs`.

/// Atomic file writes: the leaf crate `veza-fs`, re-exported so `veza_host::fs::…` keeps
/// working.
pub use veza_fs as fs;

pub mod adopt;
pub mod apply;
pub mod artifact;
pub mod clock;
mod fake_state;
pub mod forge;
pub mod haproxy;
pub mod http;
pub mod incus;
pub mod lease;
pub mod process;
pub mod systemd;
mod tls;
