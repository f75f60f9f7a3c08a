//! Real Incus for tests, through the `incus` CLI: a host readiness check, throwaway
//! containers and profiles marked with their owning test process, and a sweep that
//! removes only marked leftovers whose owner is dead.
//!
//! Every container and profile created here carries `user.veza-test.owner=<pid>` and
//! `user.veza-test.created=<unix seconds>` from the moment it exists, and is deleted
//! on drop. Nothing is ever selected by name pattern for deletion.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use veza_host::process::{Cmd, Output};

use crate::ports::rand_u64;

mod monitor;
mod sweep;
mod trust;

pub use monitor::LifecycleWatch;
pub use sweep::sweep_stale;
pub(crate) use trust::self_signed;
pub use trust::{TrustedClient, https_endpoint, self_signed_certificate};

/// Busybox rootfs plus the host's glibc runtime; loopback is up after boot.
pub const BUSYBOX_IMAGE: &str = "veza-test-busybox";
/// Debian 12 minbase with systemd, dbus, haproxy and curl: a system container.
pub const DEBIAN_IMAGE: &str = "veza-test-debian12";
/// Config key holding the pid of the test process that owns a container or profile.
pub const OWNER_KEY: &str = "user.veza-test.owner";
/// Config key holding the creation time (unix seconds) of a container or profile.
pub const CREATED_KEY: &str = "user.veza-test.created";

const SETUP_HINT: &str = "run tests/host/setup (as root) to prepare this machine";
const INCUS_TIMEOUT: Duration = Duration::from_secs(180);

fn incus<I, S>(args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString>,
{
    Cmd::new("incus").args(args).timeout(INCUS_TIMEOUT)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `vt-` plus 10 random hex digits: a valid instance and profile name.
fn unique_name() -> String {
    format!("vt-{:010x}", rand_u64() & 0xff_ffff_ffff)
}

/// `incus query PATH` as JSON.
fn query(path: &str) -> Result<Value> {
    let out = incus(["query", path]).run_stdout()?;
    serde_json::from_str(&out).with_context(|| format!("`incus query {path}` returned non-JSON"))
}

/// Fails unless incusd answers, and the storage pool, profile and both images exist.
pub fn require_incus() -> Result<()> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = CHECK.get_or_init(|| {
        check_incus().map_err(|e| format!("real test host: {e:#}; {SETUP_HINT}"))?;
        // Leftovers of killed test runs; best effort, they do not make the host unusable.
        if let Err(e) = sweep_stale() {
            eprintln!("veza-testkit: sweeping stale test containers failed: {e:#}");
        }
        Ok(())
    });
    outcome.clone().map_err(|e| anyhow!(e))
}

fn check_incus() -> Result<()> {
    incus(["--version"]).run().context("the `incus` client is not installed")?;
    query("/1.0").context("incusd is not answering on /var/lib/incus/unix.socket")?;
    let profile = query("/1.0/profiles/default").context("incus profile `default` is missing")?;
    if profile.pointer("/devices/root/type").and_then(Value::as_str) != Some("disk") {
        bail!("incus profile `default` has no `root` disk device");
    }
    for alias in [BUSYBOX_IMAGE, DEBIAN_IMAGE] {
        query(&format!("/1.0/images/aliases/{alias}"))
            .with_context(|| format!("incus image `{alias}` is missing"))?;
    }
    Ok(())
}

/// Fails unless a `haproxy` 2.x binary runs.
pub fn require_haproxy() -> Result<()> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = CHECK.get_or_init(|| {
        let version =
            Cmd::new("haproxy").arg("-v").timeout(Duration::from_secs(10)).run_stdout().map_err(
                |e| format!("real test host: haproxy is not installed ({e}); {SETUP_HINT}"),
            )?;
        if !version.contains("HAProxy version 2.") {
            return Err(format!(
                "real test host: haproxy is not version 2.x ({}); {SETUP_HINT}",
                version.lines().next().unwrap_or_default()
            ));
        }
        Ok(())
    });
    outcome.clone().map_err(|e| anyhow!(e))
}

/// Fails with a message naming the missing component (incusd, its pool or profile, an
/// image, haproxy) and pointing at `tests/host/setup`. Checked once per process; the
/// first call also sweeps containers left by killed test runs.
pub fn require_host() -> Result<()> {
    require_incus()?;
    require_haproxy()
}

/// What to create: image, extra config, devices, profiles, started or not.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    image: String,
    config: Vec<(String, String)>,
    devices: Vec<(String, Vec<(String, String)>)>,
    profiles: Vec<String>,
    start: bool,
    owner: u32,
}

impl ContainerSpec {
    /// A container from image alias `image`, owned by this process, started on create.
    pub fn new(image: &str) -> ContainerSpec {
        ContainerSpec {
            image: image.to_string(),
            config: Vec::new(),
            devices: Vec::new(),
            profiles: Vec::new(),
            start: true,
            owner: std::process::id(),
        }
    }

    /// Sets a config key at creation.
    pub fn config(mut self, key: &str, value: &str) -> ContainerSpec {
        self.config.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds a device before the first start, e.g. `("http", [("type","proxy"),...])`.
    pub fn device(mut self, name: &str, options: &[(&str, &str)]) -> ContainerSpec {
        let opts = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.devices.push((name.to_string(), opts));
        self
    }

    /// Forwards host `127.0.0.1:host_port` to the container's `127.0.0.1:container_port`.
    pub fn proxy(self, name: &str, host_port: u16, container_port: u16) -> ContainerSpec {
        let listen = format!("tcp:127.0.0.1:{host_port}");
        let connect = format!("tcp:127.0.0.1:{container_port}");
        self.device(name, &[("type", "proxy"), ("listen", &listen), ("connect", &connect)])
    }

    /// Applies `profile` (after `default`, which is always applied).
    pub fn profile(mut self, profile: &str) -> ContainerSpec {
        self.profiles.push(profile.to_string());
        self
    }

    /// Leaves the container stopped after creation.
    pub fn stopped(mut self) -> ContainerSpec {
        self.start = false;
        self
    }

    /// Records `pid` as the owner instead of this process (for sweep tests).
    pub fn owner_pid(mut self, pid: u32) -> ContainerSpec {
        self.owner = pid;
        self
    }

    /// Creates (and unless `stopped`, starts) the container.
    pub fn create(self) -> Result<TestContainer> {
        let name = unique_name();
        let mut init = incus(["init", self.image.as_str(), name.as_str()])
            .args(["-c".to_string(), format!("{OWNER_KEY}={}", self.owner)])
            .args(["-c".to_string(), format!("{CREATED_KEY}={}", unix_now())])
            .args(["-p", "default"]);
        for (k, v) in &self.config {
            init = init.args(["-c".to_string(), format!("{k}={v}")]);
        }
        for p in &self.profiles {
            init = init.args(["-p", p.as_str()]);
        }
        init.run().with_context(|| format!("creating container from image `{}`", self.image))?;
        // From here on, drop deletes it.
        let container = TestContainer { name };
        for (dev, opts) in &self.devices {
            let kv: Vec<(&str, &str)> =
                opts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            container.add_device(dev, &kv)?;
        }
        if self.start {
            container.start()?;
        }
        Ok(container)
    }
}

/// A throwaway container, force-deleted on drop.
#[derive(Debug)]
pub struct TestContainer {
    name: String,
}

impl TestContainer {
    /// Creates and starts a container from image alias `image`.
    pub fn launch(image: &str) -> Result<TestContainer> {
        ContainerSpec::new(image).create()
    }

    /// A busybox container whose loopback is up.
    pub fn busybox() -> Result<TestContainer> {
        let c = TestContainer::launch(BUSYBOX_IMAGE)?;
        c.wait_for_loopback(Duration::from_secs(10))?;
        Ok(c)
    }

    /// A Debian 12 system container whose systemd has reached `running`.
    pub fn debian() -> Result<TestContainer> {
        let c = TestContainer::launch(DEBIAN_IMAGE)?;
        c.wait_for_systemd(Duration::from_secs(60))?;
        Ok(c)
    }

    /// Starts building a container with devices, profiles or config.
    pub fn spec(image: &str) -> ContainerSpec {
        ContainerSpec::new(image)
    }

    /// The instance name (`vt-…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the container. A start that fails in LXC's start hook (incusd busy on a
    /// loaded 2-core machine: `forkstart … exit status 1`) is retried twice.
    pub fn start(&self) -> Result<()> {
        let mut attempt = 0;
        loop {
            match incus(["start", self.name.as_str()]).run() {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 2 && e.to_string().contains("forkstart") => {
                    attempt += 1;
                    let _ = incus(["stop", "--force", self.name.as_str()]).run();
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stops the container without waiting for a clean shutdown.
    pub fn stop_force(&self) -> Result<()> {
        incus(["stop", "--force", self.name.as_str()]).run()?;
        Ok(())
    }

    /// Runs `argv` inside; returns its output whatever the exit status.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        Ok(incus(["exec", self.name.as_str(), "--"]).args(argv).output()?)
    }

    /// Runs `argv` inside, fails unless it exits 0, returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        Ok(incus(["exec", self.name.as_str(), "--"]).args(argv).run_stdout()?)
    }

    /// Runs a `sh -c` script inside, fails unless it exits 0, returns stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.exec_ok(&["sh", "-c", script])
    }

    /// Copies the host file `local` to `remote` inside (parents created) with `mode`.
    pub fn push_file(&self, local: &Path, remote: &str, mode: u32) -> Result<()> {
        let target = format!("{}/{}", self.name, remote.trim_start_matches('/'));
        incus(["file", "push", "-p", "--mode", &format!("{mode:04o}")])
            .arg(local)
            .arg(target)
            .run()?;
        Ok(())
    }

    /// Writes `bytes` to `remote` inside (parents created) with `mode`.
    pub fn push_bytes(&self, bytes: &[u8], remote: &str, mode: u32) -> Result<()> {
        let tmp = tempfile::NamedTempFile::new()?;
        std::fs::write(tmp.path(), bytes)?;
        self.push_file(tmp.path(), remote, mode)
    }

    /// Adds a device with `options` (which include `type`).
    pub fn add_device(&self, device: &str, options: &[(&str, &str)]) -> Result<()> {
        let mut cmd = incus(["config", "device", "add", self.name.as_str(), device]);
        let dtype = options.iter().find(|(k, _)| *k == "type").map(|(_, v)| *v);
        let Some(dtype) = dtype else { bail!("device `{device}` needs a `type` option") };
        cmd = cmd.arg(dtype);
        for (k, v) in options.iter().filter(|(k, _)| *k != "type") {
            cmd = cmd.arg(format!("{k}={v}"));
        }
        cmd.run().with_context(|| format!("adding device `{device}` to {}", self.name))?;
        Ok(())
    }

    /// Adds a proxy device forwarding `listen` to `connect` (Incus syntax, e.g.
    /// `tcp:127.0.0.1:18001`) and returns the device name.
    pub fn add_proxy(&self, listen: &str, connect: &str) -> Result<String> {
        let device = format!("proxy-{:06x}", rand_u64() & 0xff_ffff);
        self.add_device(&device, &[("type", "proxy"), ("listen", listen), ("connect", connect)])?;
        Ok(device)
    }

    /// Forwards host `127.0.0.1:host_port` to the container's `127.0.0.1:container_port`.
    pub fn expose(&self, host_port: u16, container_port: u16) -> Result<String> {
        self.add_proxy(
            &format!("tcp:127.0.0.1:{host_port}"),
            &format!("tcp:127.0.0.1:{container_port}"),
        )
    }

    /// Sets one config key.
    pub fn set_config(&self, key: &str, value: &str) -> Result<()> {
        incus(["config", "set", self.name.as_str(), &format!("{key}={value}")]).run()?;
        Ok(())
    }

    /// Removes one config key.
    pub fn unset_config(&self, key: &str) -> Result<()> {
        incus(["config", "unset", self.name.as_str(), key]).run()?;
        Ok(())
    }

    /// The instance as Incus reports it (`GET /1.0/instances/NAME`).
    pub fn info(&self) -> Result<Value> {
        query(&format!("/1.0/instances/{}", self.name))
    }

    /// Polls `argv` until it exits 0, at most `timeout`; returns its stdout.
    pub fn wait_until(&self, argv: &[&str], timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let out = self.exec(argv)?;
            if out.status.success() {
                return Ok(out.stdout_str());
            }
            if start.elapsed() >= timeout {
                bail!(
                    "{}: `{}` still fails after {timeout:?}: {}",
                    self.name,
                    argv.join(" "),
                    out.stderr_str().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `lo` is up (busybox init brings it up at boot).
    pub fn wait_for_loopback(&self, timeout: Duration) -> Result<()> {
        self.wait_until(&["sh", "-c", "ip -o link show lo | grep -q '[<,]UP[,>]'"], timeout)
            .map(drop)
            .context("loopback never came up in the container")
    }

    /// Waits until something listens on TCP `port` inside (reads `/proc/net/tcp*`).
    pub fn wait_listening(&self, port: u16, timeout: Duration) -> Result<()> {
        let script = format!(
            "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$4 == \"0A\" {{print $2}}' | grep -qi ':{port:04X}$'"
        );
        self.wait_until(&["sh", "-c", &script], timeout)
            .map(drop)
            .with_context(|| format!("nothing listens on port {port} in {}", self.name))
    }

    /// Waits until `systemctl is-system-running` says `running` (bounded by `timeout`).
    pub fn wait_for_systemd(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            // Right after start the bus is not there yet and systemctl fails: retry.
            let out = self.exec(&["systemctl", "is-system-running"])?;
            last = out.stdout_str().trim().to_string();
            match last.as_str() {
                "running" => return Ok(()),
                "degraded" => {
                    let failed = self
                        .exec(&["systemctl", "--failed", "--no-pager", "--plain"])
                        .map(|o| o.stdout_str())
                        .unwrap_or_default();
                    bail!("{}: systemd is degraded:\n{failed}", self.name);
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        bail!("{}: systemd did not reach `running` within {timeout:?} (last: {last:?})", self.name)
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        delete_instance(&self.name);
    }
}

/// Deletes these instances, then these profiles, when dropped (names a test made a
/// manifest create; a name that does not exist is fine).
#[derive(Debug, Default)]
pub struct DeleteOnDrop {
    /// Instances, deleted first.
    pub instances: Vec<String>,
    /// Profiles, deleted once the instances are gone.
    pub profiles: Vec<String>,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        for name in &self.instances {
            delete_instance(name);
        }
        for name in &self.profiles {
            delete_profile(name);
        }
    }
}

fn delete_instance(name: &str) {
    delete_quietly("container", name, ["delete", "--force", name]);
}

fn delete_profile(name: &str) {
    delete_quietly("profile", name, ["profile", "delete", name]);
}

/// Runs `incus ARGS` deleting `what` `name`: one already gone is fine, any other failure
/// is printed (cleanup never panics).
fn delete_quietly(what: &str, name: &str, args: [&str; 3]) {
    if let Err(e) = incus(args).run() {
        let msg = e.to_string();
        if !msg.contains("not found") {
            eprintln!("veza-testkit: could not delete {what} {name}: {msg}");
        }
    }
}

/// A throwaway profile, marked like containers, deleted on drop.
#[derive(Debug)]
pub struct TestProfile {
    name: String,
}

impl TestProfile {
    /// Creates a profile with `config` and `devices` (JSON objects as in the Incus API).
    pub fn create(config: &[(&str, &str)], devices: Value) -> Result<TestProfile> {
        let name = unique_name();
        let mut cfg = serde_json::Map::new();
        cfg.insert(OWNER_KEY.into(), std::process::id().to_string().into());
        cfg.insert(CREATED_KEY.into(), unix_now().to_string().into());
        for (k, v) in config {
            cfg.insert((*k).into(), (*v).into());
        }
        let body = serde_json::json!({"name": name, "config": cfg, "devices": devices});
        incus(["query", "-X", "POST", "/1.0/profiles", "-d", &body.to_string()])
            .run()
            .with_context(|| format!("creating profile {name}"))?;
        Ok(TestProfile { name })
    }

    /// The profile name (`vt-…`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestProfile {
    fn drop(&mut self) {
        delete_profile(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_distinct() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a, b);
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("vt-"));
        assert!(a[3..].bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
