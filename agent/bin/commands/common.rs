//! Pieces shared by the subcommands that talk to the host: the `--config` option and
//! the async runtime.

use std::path::PathBuf;

/// `--config`, shared by every subcommand that needs the host configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Host configuration file (YAML). The packaged default documents every key.
    #[arg(long, value_name = "PATH", env = "VEZA_AGENT_CONFIG", default_value = veza_model::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// The runtime every async subcommand runs on: one worker (one sync at a time; what the
/// agent waits on is IO). Syncs run in `block_on` on the main thread, so the edge
/// installer's `block_in_place` blocks only that thread while the worker keeps driving
/// the Incus connections and the daemon's tasks (a multi-thread runtime is what allows
/// `block_in_place` at all). A second worker cost the idle daemon ~0.3 MiB of RSS and
/// gained nothing.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?)
}

/// Loads the agent from `--config` and runs `body` with it on the runtime; a runtime or
/// configuration error exits 1 with the message.
pub fn with_agent<F, Fut>(config: &ConfigArg, body: F) -> std::process::ExitCode
where
    F: FnOnce(crate::reconcile::Agent) -> Fut,
    Fut: std::future::Future<Output = std::process::ExitCode>,
{
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 1),
    };
    rt.block_on(async {
        match crate::reconcile::Agent::load(&config.config) {
            Ok(agent) => body(agent).await,
            Err(e) => fail(&e, 1),
        }
    })
}

/// The person behind a command: the login `sudo` ran for, else the user.
pub fn who() -> String {
    ["SUDO_USER", "LOGNAME", "USER"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| format!("uid {}", veza_fs::effective_uid().unwrap_or(u32::MAX)))
}

/// Unix time now, in seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Prints an error with its causes and exits with `code`.
pub fn fail(e: &anyhow::Error, code: u8) -> std::process::ExitCode {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    std::process::ExitCode::from(code)
}
