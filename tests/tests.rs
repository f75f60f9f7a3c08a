//! Integration tests: one binary for the whole suite (one link step on 2 cores).
//! Real-host tests run against real incusd, haproxy, systemd and git set up by
//! `tests/host/setup`; they fail, never skip, when a component is missing.

mod adopt;
mod cluster;
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
mod secrets;
mod signed_source;
mod support;
mod tidy;
mod windows;
