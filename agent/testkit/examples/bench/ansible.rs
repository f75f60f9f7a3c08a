//! The seed's way, side by side: `ansible-playbook` on `packaging/bench-ansible/edge.yml`
//! against the same Incus and HAProxy, and its phase of the bench.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use veza_host::process::{Cmd, Output};
use veza_testkit::demo::DemoHost;
use veza_testkit::traffic::Traffic;

use crate::Bench;
use crate::agent::{Desired, apply, expect_served};
use crate::args::Sizes;
use crate::stats::{Figure, ms, progress};

/// `ansible-playbook` on the seed-style playbook.
pub(crate) struct Ansible {
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) vars: PathBuf,
    pub(crate) python: PathBuf,
    /// `ANSIBLE_LOCAL_TEMP`, outside the source tree.
    pub(crate) tmp: PathBuf,
}

/// The recap counters of one play run.
#[derive(Debug, Default)]
pub(crate) struct Recap {
    pub(crate) changed: u64,
    pub(crate) failed: u64,
}

pub(crate) fn parse_recap(stdout: &str) -> Option<Recap> {
    let line = stdout.lines().rev().find(|l| l.contains(" changed=") && l.contains(" failed="))?;
    let get = |k: &str| -> Option<u64> {
        line.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse().ok())
    };
    Some(Recap { changed: get("changed=")?, failed: get("failed=")? })
}

impl Ansible {
    /// `runs` timed runs of `edge.yml` with the extra variables `vars(i)`: each must change
    /// something when `changes`, else nothing. Returns the times (ms).
    pub(crate) fn timed_edge_runs(
        &self,
        runs: usize,
        changes: bool,
        mut vars: impl FnMut(usize) -> Vec<String>,
    ) -> Result<Vec<f64>> {
        let mut samples = Vec::new();
        for i in 0..runs {
            let (ms, recap, _) = self.run("edge.yml", &vars(i), false)?;
            match (changes, recap.changed) {
                (false, n) if n != 0 => bail!("a no-change ansible run changed {n} things"),
                (true, 0) => bail!("the ansible config change changed nothing"),
                _ => samples.push(ms),
            }
        }
        Ok(samples)
    }

    pub(crate) fn run(
        &self,
        playbook: &str,
        extra: &[String],
        check: bool,
    ) -> Result<(f64, Recap, Output)> {
        let mut cmd = Cmd::new(&self.bin)
            .args(["-c", "local", "-i", "localhost,", playbook])
            .arg("-e")
            .arg(format!("@{}", self.vars.display()))
            .arg("-e")
            .arg(format!("ansible_python_interpreter={}", self.python.display()))
            .env("ANSIBLE_CONFIG", self.dir.join("ansible.cfg"))
            .env("ANSIBLE_LOCAL_TEMP", &self.tmp)
            .current_dir(&self.dir)
            .timeout(Duration::from_secs(300));
        for e in extra {
            cmd = cmd.arg("-e").arg(e);
        }
        if check {
            cmd = cmd.args(["--check", "--diff"]);
        }
        let t = Instant::now();
        let out = cmd.output()?;
        let wall = ms(t.elapsed());
        let stdout = out.stdout_str();
        // A play without tasks has no host line in its recap.
        let recap = parse_recap(&stdout).unwrap_or_default();
        if !out.status.success() || recap.failed > 0 {
            bail!("ansible-playbook {playbook} failed:\n{stdout}\n{}", out.stderr_str());
        }
        Ok((wall, recap, out))
    }
}

/// First line of `ansible-playbook --version`.
pub(crate) fn ansible_version(bin: &Path, dir: &Path) -> String {
    Cmd::new(bin)
        .arg("--version")
        .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
        .timeout(Duration::from_secs(60))
        .run_stdout()
        .map(|s| s.lines().next().unwrap_or_default().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

pub(crate) fn write_ansible_vars(
    host: &DemoHost,
    d: &Desired,
    path: &Path,
    state: &Path,
) -> Result<()> {
    let [blue, green] = host.slots();
    let hd = host.haproxy.dir();
    let vars = json!({
        "bench_env": host.env,
        "bench_host_name": host.host_name,
        "bench_edge_port": host.edge_port,
        "bench_cookie": format!("VEZA_{}", host.env),
        "bench_haproxy_cfg": host.haproxy.config_path(),
        "bench_master_socket": host.haproxy.master_socket(),
        "bench_stats_socket": hd.join("admin.sock"),
        "bench_server_state_file": hd.join("server-state"),
        "bench_state_dir": state,
        "bench_config_key": "user.bench.rev",
        "bench_slots": {
            "blue": {"name": blue, "port": host.slot_ports.0, "release": host.releases[d.blue].id},
            "green": {"name": green, "port": host.slot_ports.1, "release": host.releases[d.green].id},
        },
    });
    std::fs::write(path, serde_json::to_string_pretty(&vars)?)
        .with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn ansible_phase(
    host: &DemoHost,
    d: &Desired,
    bin: &Path,
    dir: &Path,
    sizes: &Sizes,
    b: &mut Bench,
) -> Result<()> {
    progress("ansible: the seed's way");
    let state = host.dir.join("ansible-state");
    std::fs::create_dir_all(&state)?;
    std::fs::write(state.join(format!("active-color-{}", host.env)), format!("{}\n", d.active))?;
    let vars = host.dir.join("ansible-vars.json");
    write_ansible_vars(host, d, &vars, &state)?;
    let python =
        bin.parent().map(|p| p.join("python")).context("ansible-playbook has no directory")?;
    let tmp = host.dir.join("ansible-tmp");
    let a = Ansible { bin: bin.to_path_buf(), dir: dir.to_path_buf(), vars, python, tmp };
    let color = |c: &str| format!("active={c}");
    let cfgv = |v: &str| format!("bench_config_value={v}");

    // The template must reproduce the agent's config byte for byte, else "no change"
    // would not mean the same thing to both tools.
    let (_, recap, out) = a.run("edge.yml", &[color(d.active), cfgv(&d.rev)], true)?;
    b.check(
        "ansible template renders the agent's live config byte for byte",
        recap.changed == 0,
        format!("--check --diff reported changed={}", recap.changed),
    );
    if recap.changed != 0 {
        bail!("the ansible template differs from the agent's config:\n{}", out.stdout_str());
    }

    let mut floor = Figure::new("ansible_floor", "ansible-playbook floor: empty play", "ms");
    for _ in 0..sizes.ansible.min(5) {
        floor.samples.push(a.run("empty.yml", &[], false)?.0);
    }
    floor.notes.push(
        "interpreter start + inventory + one play with no tasks: the fixed cost of every run"
            .into(),
    );
    b.figures.push(floor);

    progress("ansible: no-change");
    let mut nc = Figure::new("ansible_no_change", "ansible: no-change run of edge.yml", "ms");
    nc.samples =
        a.timed_edge_runs(sizes.ansible, false, |_| vec![color(d.active), cfgv(&d.rev)])?;
    nc.notes.push("incus info ×2, incus config get ×2, haproxy -c, active-color file, template compare: nothing changes, no reload".into());
    b.figures.push(nc);

    progress("ansible: config-only change");
    let mut cc = Figure::new(
        "ansible_config_change",
        "ansible: config-only change (incus config set on both slots)",
        "ms",
    );
    cc.samples = a.timed_edge_runs(sizes.ansible.min(5), true, |i| {
        vec![color(d.active), cfgv(&format!("ansible-{i}"))]
    })?;
    a.run("edge.yml", &[color(d.active), cfgv(&d.rev)], false)?; // back to the agent's value
    cc.notes.push("the no-change checks plus `incus config set` on both slots; no new commit to fetch or verify".into());
    b.figures.push(cc);

    progress("ansible: promotion");
    let mut pr = Figure::new(
        "ansible_promotion",
        "ansible: promotion blue <-> green (template, haproxy -c, reload, verify)",
        "ms",
    );
    let mut failed = Vec::new();
    let mut failed_total = 0;
    let mut active = d.active;
    for i in 0..sizes.ansible_promotion {
        active = if i % 2 == 0 { "green" } else { "blue" };
        let load = Traffic::start(host, 1, Duration::from_millis(5));
        let (ms, recap, _) = a.run("edge.yml", &[color(active), cfgv(&d.rev)], false)?;
        let (_, bad) = load.stop();
        if recap.changed == 0 {
            bail!("the ansible promotion changed nothing");
        }
        pr.samples.push(ms);
        failed.push(bad as f64);
        failed_total += bad;
        let want = if active == "blue" { d.blue } else { d.green };
        expect_served(host, &host.releases[want].id)?;
    }
    if active != d.active {
        a.run("edge.yml", &[color(d.active), cfgv(&d.rev)], false)?;
    }
    pr.notes.push("no health gate on the new color (the seed probed it in phase C, at deploy time), no server-state dump; verification: 5 requests in a row through the edge".into());
    let mut pf = Figure::new(
        "ansible_promotion_failed_requests",
        "failed requests during an ansible promotion",
        "requests",
    );
    pf.samples = failed;
    pf.extra.insert("total".into(), json!(failed_total));
    b.figures.push(pr);
    b.figures.push(pf);

    // The agent must find the host as it left it.
    let r = apply(host, &["no-change", "applied"])?;
    b.check(
        "after the ansible runs the agent finds nothing to change",
        r.steps == 0,
        format!("agent: {} ({} steps)", r.outcome, r.steps),
    );

    for (title, agent, ansible, comment) in [
        (
            "no-change sync",
            "no_change_sync",
            "ansible_no_change",
            "agent: also fetches and verifies the signed commit; ansible: given the desired state on its command line",
        ),
        (
            "config-only change",
            "config_change_sync",
            "ansible_config_change",
            "agent: includes fetch + verify of the new commit",
        ),
        (
            "promotion",
            "promotion",
            "ansible_promotion",
            "agent: includes the health gate of the new color and the fetch + verify of the commit",
        ),
    ] {
        b.comparisons.push((title.into(), agent.into(), ansible.into(), comment.into()));
    }
    Ok(())
}
