//! One module per subcommand.

pub mod schedule;
pub mod validate;
pub mod verify;
