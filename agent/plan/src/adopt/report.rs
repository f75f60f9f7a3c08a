//! The adoption report as `veza-agent adopt` prints it: one line per resource and state,
//! its differences and notes indented below, then the active colors, the duplicate timers,
//! the refusals and a summary line.

use std::fmt;

use super::{AdoptState, Adoption, ResourceAdoption};

impl fmt::Display for Adoption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.profiles {
            p.write_line("profile", f)?;
        }
        for i in &self.instances {
            i.write_line("instance", f)?;
        }
        for a in &self.active {
            let verdict = if a.agrees { "agrees" } else { "DISAGREES" };
            write!(
                f,
                "active {}/{}: live {}, manifest {}: {verdict}",
                a.env, a.app, a.live, a.manifest
            )?;
            match &a.record {
                Some(r) => writeln!(f, " (Ansible's record: {r})")?,
                None => writeln!(f)?,
            }
        }
        for t in &self.timers {
            writeln!(
                f,
                "duplicate timer {} of job {} (on {}, starts {}): replaced by the job's units",
                t.unit, t.job, t.target, t.service
            )?;
        }
        for r in &self.refusals {
            writeln!(f, "refused: {r}")?;
        }
        writeln!(
            f,
            "{} to adopt, {} owned, {} missing, {} in conflict; {} duplicate timer(s); {} refusal(s)",
            self.count(AdoptState::Adopt),
            self.count(AdoptState::Owned),
            self.count(AdoptState::Missing),
            self.count(AdoptState::Conflict),
            self.timers.len(),
            self.refusals.len()
        )
    }
}

impl ResourceAdoption {
    /// `KIND NAME (ENV): STATE`, then its differences and notes indented.
    fn write_line(&self, kind: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{kind} {}", self.name)?;
        if let Some(env) = &self.env {
            write!(f, " ({env})")?;
        }
        writeln!(f, ": {}", self.state.as_str())?;
        for d in &self.differences {
            writeln!(f, "    difference: {d}")?;
        }
        for n in &self.notes {
            writeln!(f, "    note: {n}")?;
        }
        Ok(())
    }
}
