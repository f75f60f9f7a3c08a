//! The files a slot runs from, rendered by the planner so that plans (and their
//! snapshots) show exactly what a deploy writes: the app's run script, its systemd unit,
//! and the wrapper a migration runs in. Secrets never appear here: the run script and the
//! migration wrapper read the app's environment from a root-only file the apply engine
//! renders at apply time.

use serde::Serialize;

use crate::desired::SlotSpec;

/// Where the slot's app supervision lives inside the slot.
pub const APP_RUN_SCRIPT: &str = "/etc/veza-app/run";

/// The app's environment file inside the slot: root-owned, mode 0600, read by the run
/// script (so by either supervisor), never passed on a command line.
pub const APP_ENV_FILE: &str = "/etc/veza-app/env";
/// Where the app's output goes (root only, as its environment: an app may print it).
pub const APP_LOG: &str = "/var/log/veza-app.log";

/// Where a migration unpacks its release and keeps its environment while it runs.
pub const MIGRATE_DIR: &str = "/var/lib/veza-migrate";

/// Exit code of the migration wrapper when the release directory is missing.
pub const MIGRATE_NO_DIR: i32 = 201;
/// Exit code of the migration wrapper when the environment file cannot be read.
pub const MIGRATE_NO_ENV: i32 = 202;
/// The last line the migration wrapper prints to stderr when it exits [`MIGRATE_NO_DIR`]
/// or [`MIGRATE_NO_ENV`]: a command that itself exits 201 or 202 is still the command's
/// failure.
pub const MIGRATE_NOT_STARTED: &str = "veza-migrate: the command was not started";

/// What a deploy writes into a slot besides the release and its environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotFiles {
    /// [`APP_RUN_SCRIPT`]: runs the app in the foreground with its environment.
    pub run_script: String,
    /// `veza-app.service`, used when the slot's PID 1 is systemd.
    pub unit: String,
}

/// A migration's wrapper and where it keeps its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationFiles {
    /// The scratch directory (removed on every exit of the wrapper).
    pub scratch: String,
    /// The release is unpacked here (`{dir}` of the command).
    pub release_dir: String,
    /// The environment file the wrapper reads and deletes.
    pub env_file: String,
    /// The `sh` script that runs the command.
    pub script: String,
}

/// `s` as one single-quoted `sh` word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The run script and unit of `slot`.
pub fn slot_files(slot: &SlotSpec) -> SlotFiles {
    SlotFiles { run_script: run_script(slot), unit: unit(slot) }
}

/// The script that runs the app in the foreground, with its environment: what init
/// (busybox `respawn`) or systemd (`veza-app.service`, `Restart=always`) supervises, so
/// the app comes back after a crash and after the slot restarts.
///
/// `VEZA_LISTEN` is where the edge can reach the app: `127.0.0.1:<port>` when a proxy
/// device carries it to the host's loopback, every IPv4 address of the slot otherwise
/// (the edge connects over the bridge).
fn run_script(slot: &SlotSpec) -> String {
    let listen = if slot.loopback.is_some() { "127.0.0.1" } else { "0.0.0.0" };
    let env = [
        ("VEZA_RELEASE", slot.release.to_string()),
        ("VEZA_PORT", slot.port.to_string()),
        ("VEZA_LISTEN", format!("{listen}:{}", slot.port)),
        ("VEZA_ENV", slot.env.clone()),
        ("VEZA_APP", slot.app.clone()),
    ];
    let mut out = String::from(
        "#!/bin/sh\n# Written by veza-agent: runs this slot's app in the foreground under a \
         supervisor\n# (init `respawn` or veza-app.service). Changed only by a deploy.\n",
    );
    out.push_str(&format!(
        "# The app's environment (root only; it may hold secrets).\nset -a\n. {APP_ENV_FILE} || exit 1\nset +a\n"
    ));
    for (k, v) in env {
        out.push_str(&format!("export {k}={}\n", shell_quote(&v)));
    }
    out.push_str(&format!(
        "cd {} || exit 1\n\
         echo \"$$ $(sed 's/.*) //' /proc/$$/stat | cut -d' ' -f20)\" > /run/veza-app.pid\n\
         (umask 077; : >>{APP_LOG}) && chmod 0600 {APP_LOG}\n\
         exec >>{APP_LOG} 2>&1 </dev/null\nexec /bin/sh -c {}\n",
        shell_quote(&slot.install_dir),
        shell_quote(&slot.start)
    ));
    out
}

/// The systemd unit for slots whose PID 1 is systemd.
fn unit(slot: &SlotSpec) -> String {
    format!(
        "# Written by veza-agent: the {env}/{app} app ({color} slot).\n[Unit]\n\
         Description=veza-agent app {env}/{app}\nAfter=network.target\n\
         StartLimitIntervalSec=0\n\n[Service]\n\
         ExecStart={APP_RUN_SCRIPT}\nRestart=always\nRestartSec=1\nKillMode=control-group\n\
         TimeoutStopSec=10\n\n[Install]\nWantedBy=multi-user.target\n",
        env = slot.env,
        app = slot.app,
        color = slot.color,
    )
}

/// The wrapper of `slot`'s migration, if the app declares one: the release unpacked in a
/// scratch directory (`{dir}` of the command), the app's environment read from a
/// root-only file and deleted at once, the command run there with its time limit
/// (`timeout` when the instance has it: TERM at the limit, KILL 10 s later for a command
/// that ignores TERM), the scratch directory removed on every exit.
/// Exits [`MIGRATE_NO_DIR`] or [`MIGRATE_NO_ENV`] when it cannot start the command.
pub fn migration_files(slot: &SlotSpec) -> Option<MigrationFiles> {
    let m = slot.migrate.as_ref()?;
    let scratch = format!("{MIGRATE_DIR}/{}-{}", slot.env, slot.app);
    let release_dir = format!("{scratch}/release");
    let env_file = format!("{scratch}/env");
    let command = m.command.replace("{dir}", &release_dir);
    let secs = m.timeout_ms.div_ceil(1000).max(1);
    let script = format!(
        "trap {cleanup} EXIT\ncd {dir} || {{ echo {NOT_STARTED}; exit {MIGRATE_NO_DIR}; }} >&2\n[ -r {env} ] || {{ echo {NOT_STARTED}; exit {MIGRATE_NO_ENV}; }} >&2\nset -a\n. {env}\nset +a\nrm -f {env}\n\
         export VEZA_RELEASE={release} VEZA_RELEASE_DIR={dir} VEZA_ENV={envname} VEZA_APP={app}\n\
         if command -v timeout >/dev/null 2>&1; then timeout -k 10 {secs} /bin/sh -c {cmd}; else /bin/sh -c {cmd}; fi\n\
         rc=$?\ncase $rc in 124|137|143) echo \"stopped at its time limit of {secs}s (exit $rc)\" >&2;; esac\nexit $rc\n",
        dir = shell_quote(&release_dir),
        env = shell_quote(&env_file),
        release = shell_quote(slot.release.as_str()),
        envname = shell_quote(&slot.env),
        app = shell_quote(&slot.app),
        cmd = shell_quote(&command),
        cleanup = shell_quote(&format!("rm -rf {}", shell_quote(&scratch))),
        NOT_STARTED = shell_quote(MIGRATE_NOT_STARTED),
    );
    Some(MigrationFiles { scratch, release_dir, env_file, script })
}

#[cfg(test)]
mod tests {
    use veza_model::manifest::Color;

    use super::*;
    use crate::desired::MigrateSpec;

    /// prod/backend's green slot, with a directory and a command that need quoting.
    fn slot() -> SlotSpec {
        SlotSpec {
            install_dir: "/srv/it's".into(),
            start: "./bin/server --port 8080 && echo done".into(),
            ..crate::fixtures::slot("prod", "backend", Color::Green, '2')
        }
    }

    #[test]
    fn the_app_listens_where_the_edge_reaches_it() {
        // (how the edge reaches the slot, VEZA_LISTEN)
        let table = [
            (None, "0.0.0.0:8080"), // over the bridge, by the slot's DNS name
            (Some("127.0.0.1:18101".to_string()), "127.0.0.1:8080"), // a proxy device
        ];
        for (loopback, listen) in table {
            let files = slot_files(&SlotSpec { loopback: loopback.clone(), ..slot() });
            let line = format!("\nexport VEZA_LISTEN='{listen}'\n");
            assert!(files.run_script.contains(&line), "{loopback:?}: {}", files.run_script);
        }
    }

    #[test]
    fn the_app_runs_in_the_foreground_with_its_environment_quoted() {
        let files = slot_files(&slot());
        let script = &files.run_script;
        let want = format!(
            "export VEZA_RELEASE='{r}'\nexport VEZA_PORT='8080'\nexport VEZA_LISTEN='0.0.0.0:8080'\n\
             export VEZA_ENV='prod'\nexport VEZA_APP='backend'\ncd '/srv/it'\\''s' || exit 1\n\
             echo \"$$ $(sed 's/.*) //' /proc/$$/stat | cut -d' ' -f20)\" > /run/veza-app.pid\n\
             (umask 077; : >>/var/log/veza-app.log) && chmod 0600 /var/log/veza-app.log\n\
             exec >>/var/log/veza-app.log 2>&1 </dev/null\n\
             exec /bin/sh -c './bin/server --port 8080 && echo done'\n",
            r = "2".repeat(40)
        );
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.ends_with(&want), "{script}");
        for line in
            ["ExecStart=/etc/veza-app/run\n", "Restart=always\n", "WantedBy=multi-user.target\n"]
        {
            assert!(files.unit.contains(line), "{line:?} missing in\n{}", files.unit);
        }
    }

    #[test]
    fn the_environment_comes_from_a_root_only_file_never_from_the_script() {
        let mut s = slot();
        s.environment.insert("DATABASE_URL".into(), "postgres://u:{secret:pw}@db/x".into());
        let script = slot_files(&s).run_script;
        assert!(script.contains("set -a\n. /etc/veza-app/env || exit 1\nset +a\n"), "{script}");
        assert!(!script.contains("DATABASE_URL") && !script.contains("{secret:"), "{script}");
    }

    #[test]
    fn a_migration_runs_from_its_scratch_copy_and_deletes_its_environment_first() {
        assert_eq!(migration_files(&slot()), None);
        let s = SlotSpec {
            migrate: Some(MigrateSpec {
                command: "{dir}/bin/migrate up".into(),
                on: None,
                timeout_ms: 90_500,
            }),
            ..slot()
        };
        let m = migration_files(&s).expect("a migration");
        assert_eq!(m.scratch, "/var/lib/veza-migrate/prod-backend");
        assert_eq!(m.release_dir, "/var/lib/veza-migrate/prod-backend/release");
        assert_eq!(m.env_file, "/var/lib/veza-migrate/prod-backend/env");
        // (what must come before what in the wrapper)
        let order = [
            "trap 'rm -rf '\\''/var/lib/veza-migrate/prod-backend'\\''' EXIT\n",
            "cd '/var/lib/veza-migrate/prod-backend/release' || { echo 'veza-migrate: the command was not started'; exit 201; } >&2\n",
            "[ -r '/var/lib/veza-migrate/prod-backend/env' ] || { echo 'veza-migrate: the command was not started'; exit 202; } >&2\n",
            ". '/var/lib/veza-migrate/prod-backend/env'\n",
            "rm -f '/var/lib/veza-migrate/prod-backend/env'\n",
            "timeout -k 10 91 /bin/sh -c '/var/lib/veza-migrate/prod-backend/release/bin/migrate up'",
        ];
        let mut at = 0;
        for piece in order {
            let found = m.script[at..]
                .find(piece)
                .unwrap_or_else(|| panic!("{piece:?} missing after byte {at} of\n{}", m.script));
            at += found + piece.len();
        }
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
