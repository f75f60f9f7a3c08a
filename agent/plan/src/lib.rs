//! Planning and rendering: desired state (validated manifests) × observed live state →
//! an ordered, typed plan; and the files the plan installs (HAProxy config, systemd
//! units), rendered before anything is written. Pure: no IO, no clock, no tokio.

pub mod adopt;
pub mod desired;
pub mod edge;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod plan;
pub mod simulate;
pub mod slot;
#[cfg(test)]
mod testing;

/// The live state the planner reads: one model, defined in `veza-model` and filled by the
/// observers of `veza-host`.
pub use veza_model::live;

pub use plan::{Action, Plan, PlanError, PlanOptions, Step, maintenance, plan};
