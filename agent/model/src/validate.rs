//! Semantic validation: rules that relate several values, within one manifest and
//! across all the manifests one host applies.
//!
//! Every rule reports a key path; [`crate::parse::Positions`] turns it into a
//! `line:col`. All problems are collected, none stops the others.

use std::collections::{BTreeMap, BTreeSet};

use crate::parse::{Diagnostic, FileDiagnostic, Parsed, Seg};

mod host_set;
mod maintenance;
mod manifest;
mod values;

use host_set::check_host_set;
use maintenance::check_maintenance;
use manifest::check_manifest;
pub use values::is_incus_name;

/// One problem found by a rule, before it is located.
#[derive(Debug, Clone)]
struct Issue {
    file: usize,
    path: Vec<Seg>,
    at_value: bool,
    message: String,
}

/// Collects issues for one manifest.
struct Rules<'a> {
    file: usize,
    issues: &'a mut Vec<Issue>,
}

impl Rules<'_> {
    fn key(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        self.issues.push(Issue { file: self.file, path, at_value: false, message: message.into() });
    }
    fn value(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        self.issues.push(Issue { file: self.file, path, at_value: true, message: message.into() });
    }
}

/// Names declared anywhere in the set of manifests of one host.
#[derive(Default)]
struct Declared {
    profiles: BTreeSet<String>,
    networks: BTreeSet<String>,
    instances: BTreeSet<String>,
}

/// Validates a set of parsed manifests together (the manifests one host applies,
/// or all manifests of a repository). Returns every problem, sorted by file and position.
pub fn validate_set(files: &[(String, Parsed)]) -> Vec<FileDiagnostic> {
    let mut issues = Vec::new();
    let mut by_host: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (_, parsed)) in files.iter().enumerate() {
        by_host.entry(parsed.manifest.metadata.host.as_str()).or_default().push(i);
    }
    for members in by_host.values() {
        let mut declared = Declared::default();
        for &i in members {
            let m = &files[i].1.manifest;
            declared.profiles.extend(m.incus.profiles.keys().cloned());
            declared.networks.extend(m.incus.networks.keys().cloned());
            declared.instances.extend(m.incus.instances.keys().cloned());
        }
        for &i in members {
            let mut rules = Rules { file: i, issues: &mut issues };
            check_manifest(&files[i].1.manifest, &declared, &mut rules);
            check_maintenance(&files[i].1.manifest, &mut rules);
        }
        check_host_set(files, members, &mut issues);
    }
    let mut out: Vec<FileDiagnostic> = issues
        .into_iter()
        .map(|issue| {
            let (name, parsed) = &files[issue.file];
            let pos = if issue.at_value {
                parsed.positions.value(&issue.path)
            } else {
                parsed.positions.key(&issue.path)
            };
            (
                issue.file,
                FileDiagnostic {
                    file: name.clone(),
                    diagnostic: Diagnostic { pos, message: issue.message },
                },
            )
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    out.sort_by(|a, b| {
        (a.file.as_str(), a.diagnostic.pos, a.diagnostic.message.as_str()).cmp(&(
            b.file.as_str(),
            b.diagnostic.pos,
            b.diagnostic.message.as_str(),
        ))
    });
    out.dedup();
    out
}

#[cfg(test)]
mod tests;
