//! The command line: its arguments and the number of runs per figure.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

pub(crate) struct Args {
    pub(crate) agent: PathBuf,
    pub(crate) out: PathBuf,
    pub(crate) ansible: Option<PathBuf>,
    pub(crate) playbooks: Option<PathBuf>,
    pub(crate) plan_scale: Option<PathBuf>,
    pub(crate) quick: bool,
}

pub(crate) fn parse_args() -> Result<Args> {
    let usage = "usage: bench --agent PATH [--out DIR] [--ansible PATH --playbooks DIR] [--plan-scale JSON] [--quick]";
    let mut a = Args {
        agent: PathBuf::new(),
        out: PathBuf::from("target/bench"),
        ansible: None,
        playbooks: None,
        plan_scale: None,
        quick: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().map(PathBuf::from).context(usage);
        match arg.as_str() {
            "--agent" => a.agent = value()?,
            "--out" => a.out = value()?,
            "--ansible" => a.ansible = Some(value()?),
            "--playbooks" => a.playbooks = Some(value()?),
            "--plan-scale" => a.plan_scale = Some(value()?),
            "--quick" => a.quick = true,
            other => bail!("unknown argument `{other}`\n{usage}"),
        }
    }
    if a.agent.as_os_str().is_empty() {
        bail!("{usage}");
    }
    if a.ansible.is_some() != a.playbooks.is_some() {
        bail!("--ansible and --playbooks go together\n{usage}");
    }
    Ok(a)
}

/// Runs per figure.
pub(crate) struct Sizes {
    pub(crate) no_change: usize,
    pub(crate) config: usize,
    pub(crate) promotion: usize,
    pub(crate) deploy: usize,
    pub(crate) fetch: usize,
    /// No-change polls whose forge-side cost is measured (a multiple of 10).
    pub(crate) forge_polls: usize,
    pub(crate) ansible: usize,
    pub(crate) ansible_promotion: usize,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                no_change: 5,
                config: 3,
                promotion: 2,
                deploy: 2,
                fetch: 5,
                forge_polls: 20,
                ansible: 2,
                ansible_promotion: 2,
            }
        } else {
            Sizes {
                no_change: 20,
                config: 10,
                promotion: 8,
                deploy: 6,
                fetch: 20,
                forge_polls: 100,
                ansible: 8,
                ansible_promotion: 8,
            }
        }
    }
}
