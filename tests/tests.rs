//! Integration tests: one binary for the whole suite (one link step on 2 cores).
//! Real-host tests run against real incusd, haproxy, systemd and git set up by
//! `tests/host/setup`; they fail, never skip, when a component is missing.

mod adopt;
mod confinement;
mod cutover;
mod daemon;
mod e2e;
mod edge;
mod faults;
mod host_kit;
mod incus;
mod jobs;
mod jobs_systemd;
mod manifests;
mod packaging;
mod previews;
/// On the 3-member cluster: run by `tests/cluster` (called by `tests/run`), skipped by this
/// name in the suite's own pass.
#[path = "cluster.rs"]
mod real_cluster;
mod secrets;
mod signed_source;
mod support;
mod tidy;
mod windows;
