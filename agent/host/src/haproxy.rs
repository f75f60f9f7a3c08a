//! The HAProxy edge: talking to HAProxy 2.6 in master-worker mode, on this host or
//! inside an Incus instance, and installing a rendered config safely.
//!
//! - [`cli`]: the master CLI client (unix socket, half-close, time limit);
//! - [`runtime`]: the [`EdgeRuntime`] trait and its host and in-instance
//!   implementations ([`HostRuntime`], [`InstanceRuntime`] over [`InstanceExec`]);
//! - [`install`]: validate → dump state → swap → reload → confirm → restore on failure;
//! - [`parse`]: pure parsers of `show proc`, `show stat`, `show servers state`;
//! - [`fake`]: an in-memory runtime with a recording and fault injection, for tests.

pub mod cli;
pub mod fake;
pub mod install;
pub mod parse;
pub mod runtime;

pub use install::{
    EdgePaths, InstallError, InstallOptions, InstallOutcome, InstallReport, ReloadOutcome, Restore,
    install,
};
pub use parse::{BackendHealth, ServerHealth, ServerStatus, edge_health};
pub use runtime::{
    EdgeError, EdgeRuntime, HostRuntime, IncusExec, InstanceExec, InstanceOutput, InstanceRuntime,
};
