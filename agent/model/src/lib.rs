//! Manifest model v1 (`apiVersion: veza-agent/v1`): serde types, strict parsing with
//! `file:line:col` errors, semantic validation and cron schedules; and the live model
//! (`live`): what the observers saw, as the planner reads it. No IO, no clock, no tokio.
//!
//! Entry point: [`load`] turns the bytes of every manifest a host applies into
//! validated [`Manifest`]s, or into every located problem at once.

pub mod capabilities;
pub mod config;
pub mod error;
mod hint;
pub mod image;
pub mod lease;
pub mod lexical;
pub mod live;
pub mod manifest;
pub mod naming;
pub mod parse;
pub mod schedule;
pub mod template;
pub mod units;
pub mod validate;
pub mod window;

pub use manifest::Manifest;
pub use parse::{Diagnostic, FileDiagnostic, Parsed, Pos};

/// Parses and validates a set of manifests together (all manifests one host applies).
///
/// `files` pairs a display name (usually the path) with the file's bytes. On success the
/// parsed manifests come back in the same order; otherwise every problem found, sorted.
pub fn load(files: &[(String, Vec<u8>)]) -> Result<Vec<(String, Parsed)>, Vec<FileDiagnostic>> {
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for (name, bytes) in files {
        match parse::parse(bytes) {
            Ok(p) => parsed.push((name.clone(), p)),
            Err(diagnostic) => problems.push(FileDiagnostic { file: name.clone(), diagnostic }),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let semantic = validate::validate_set(&parsed);
    if semantic.is_empty() { Ok(parsed) } else { Err(semantic) }
}

/// The JSON Schema of the manifest format, as committed in `schemas/manifest.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Manifest);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
