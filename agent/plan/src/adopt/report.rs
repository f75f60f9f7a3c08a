//! The adoption report as `veza-agent adopt` prints it: one line per resource and state,
//! its differences and notes indented below, then the active colors, the duplicate timers,
//! the refusals and a summary line.

use std::fmt;

use super::{AdoptState, Adoption};

impl fmt::Display for Adoption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.profiles {
            writeln!(f, "profile {}: {}", p.name, p.state.as_str())?;
            for d in &p.differences {
                writeln!(f, "    difference: {d}")?;
            }
            for n in &p.notes {
                writeln!(f, "    note: {n}")?;
            }
        }
        for i in &self.instances {
            writeln!(f, "instance {} ({}): {}", i.name, i.env, i.state.as_str())?;
            for d in &i.differences {
                writeln!(f, "    difference: {d}")?;
            }
            for n in &i.notes {
                writeln!(f, "    note: {n}")?;
            }
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
