//! Manifest model v1 (`apiVersion: veza-agent/v1`): serde types, strict parsing with
//! `file:line:col` errors, semantic validation and cron schedules. No IO, no clock, no tokio.

pub mod schedule;
