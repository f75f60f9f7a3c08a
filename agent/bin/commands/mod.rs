//! One module per subcommand.

pub mod adopt;
pub mod apply;
pub mod common;
pub mod completions;
pub mod history;
pub mod man;
pub mod plan;
pub mod run;
pub mod schedule;
pub mod secret;
pub mod status;
pub mod suspend;
pub mod sync;
pub mod validate;
pub mod verify;
