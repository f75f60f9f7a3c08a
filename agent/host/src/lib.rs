//! Effects on the host. The only crate that spawns processes (`process`) or writes
//! host files (`fs`).

pub mod fs;
pub mod incus;
pub mod process;
