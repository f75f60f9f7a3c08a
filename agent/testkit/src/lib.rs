//! Test-only kit for real-host tests: Incus containers, HAProxy, signed repositories.

pub mod app;
pub mod cli;
pub mod demo;
pub mod forge;
pub mod haproxy;
pub mod http;
pub mod incus;
pub mod ports;
pub mod proc;
pub mod repo;
pub mod report;
pub mod sockproxy;
pub mod tmpfs;
pub mod traffic;

pub use app::{
    HostApp, HttpReply, broken_release_artifact, http_get, http_get_as, release_artifact,
    release_artifact_with, testapp_binary,
};
pub use haproxy::Haproxy;
pub use incus::{TestContainer, TestProfile, require_host, sweep_stale};
pub use ports::free_port;
