//! Foreign timers that duplicate a manifest job: a timer unit without the agent's marker
//! whose service runs the same command as the job.
//!
//! The rule for "the same command" (documented in the runbook): each `ExecStart=` of the
//! service and the job's `command` are normalised — the `ExecStart=` prefixes `-@:+!`
//! dropped, one `sh -c '…'` / `bash -c "…"` wrapper unwrapped (as the agent's own units
//! run commands), whitespace collapsed — and then compared word by word, the first word
//! by its base name (`/usr/bin/pgbackrest` runs `pgbackrest`). The user a unit runs as is
//! not compared.

use std::collections::BTreeMap;

use veza_model::units::{exec_starts, timer_unit};

/// `command` as compared: see the module documentation.
pub fn normalise_command(command: &str) -> Vec<String> {
    let command = command.trim().trim_start_matches(['-', '@', ':', '+', '!']).trim();
    let words: Vec<&str> = command.split_whitespace().collect();
    if let [shell, "-c", rest @ ..] = words.as_slice()
        && matches!(base_name(shell), "sh" | "bash" | "dash")
        && !rest.is_empty()
    {
        let inner = rest.join(" ");
        let unquoted = ['\'', '"'].iter().find_map(|q| {
            inner.strip_prefix(*q).and_then(|s| s.strip_suffix(*q)).filter(|s| !s.contains(*q))
        });
        if let Some(inner) = unquoted {
            return normalise_command(inner);
        }
    }
    words
        .iter()
        .enumerate()
        .map(|(i, w)| if i == 0 { base_name(w).to_string() } else { (*w).to_string() })
        .collect()
}

fn base_name(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// Whether an `ExecStart=` command runs the job's `command`.
pub fn same_command(exec_start: &str, command: &str) -> bool {
    let a = normalise_command(exec_start);
    !a.is_empty() && a == normalise_command(command)
}

/// The foreign timers at one target whose service runs `command`: `(timer, service)`
/// pairs, from the target's unit files without the agent's marker (`foreign`: name →
/// contents; a timer whose service file is not among them is not judged).
pub fn duplicates(foreign: &BTreeMap<String, String>, command: &str) -> Vec<(String, String)> {
    foreign
        .iter()
        .filter(|(name, _)| name.ends_with(".timer"))
        .filter_map(|(name, text)| {
            let service = timer_unit(name, text);
            let runs = foreign.get(&service)?;
            exec_starts(runs)
                .iter()
                .any(|e| same_command(e, command))
                .then(|| (name.clone(), service))
        })
        .collect()
}
