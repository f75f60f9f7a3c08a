//! Effects on the host. The only crate that spawns processes (`process`) or writes
//! host files (`fs`).

pub mod apply;
pub mod artifact;
pub mod clock;
pub mod fs;
pub mod haproxy;
pub mod http;
pub mod incus;
pub mod process;
pub mod systemd;
