//! Throwaway probe (not committed).
use std::path::PathBuf;
use std::time::{Duration, Instant};
use veza_host::process::Cmd;
use veza_testkit::demo::DemoHost;
fn main() -> anyhow::Result<()> {
    let agent = PathBuf::from(std::env::args().nth(1).unwrap_or_default());
    let n: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let host = DemoHost::new(&agent, None)?;
    host.commit(&host.manifest("blue", Some(0), Some(1)), "probe")?;
    let out = host.agent(&["apply"])?;
    println!("{}", out.stdout_str());
    let log = host.dir.join("daemon.log");
    let pid = Cmd::new(&agent)
        .args(["run", "--max-syncs", "500", "--config"])
        .arg(&host.config_path)
        .spawn_daemon(Some(&log))?;
    let sock = host.dir.join("state").join("control.sock");
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..n {
        let out = host.agent(&["sync", "--json"])?;
        println!("{}", out.stdout_str().trim());
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for l in status
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM") || l.starts_with("Threads"))
    {
        println!("{l}");
    }
    veza_testkit::app::kill_pid(pid, "TERM", Duration::from_secs(10));
    Ok(())
}
