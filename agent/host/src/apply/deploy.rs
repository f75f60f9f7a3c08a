//! Deploying a release into a slot: the artifact pushed and unpacked, the app's run
//! script and unit, the swap and restart under the slot's supervisor, the release mark.

use std::collections::BTreeMap;
use std::time::Duration;

use veza_plan::desired::SlotSpec;
use veza_plan::live::{MARK_DEPLOYED, MARK_RELEASE};
use veza_plan::slot::{
    APP_ENV_FILE, APP_RUN_SCRIPT, MIGRATE_NO_DIR, MIGRATE_NO_ENV, MIGRATE_NOT_STARTED,
    MigrationFiles, SlotFiles,
};

use veza_model::template;
use veza_secrets::SecretValues;

use super::Drivers;
use crate::incus::{ExecRequest, FilePush, Incus, IncusError, InstanceUpdate};

pub(super) use veza_plan::slot::shell_quote;

pub(super) async fn exec_ok<I: Incus + Sync>(
    incus: &I,
    instance: &str,
    script: &str,
    env: BTreeMap<String, String>,
) -> Result<String, String> {
    exec_within(incus, instance, script, env, Duration::from_secs(300)).await
}

/// [`exec_ok`] that Incus gives up on after `limit`.
pub(super) async fn exec_within<I: Incus + Sync>(
    incus: &I,
    instance: &str,
    script: &str,
    env: BTreeMap<String, String>,
    limit: Duration,
) -> Result<String, String> {
    let mut req = ExecRequest::sh(script);
    req.env = env;
    req.timeout = limit;
    let out = incus.exec(instance, &req).await.map_err(|e| e.to_string())?;
    if out.exit_code != 0 {
        return Err(format!(
            "in `{instance}`: `sh -c {script}` exited {}: {}",
            out.exit_code,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Renders the slot's environment file, secrets decrypted in memory.
fn env_file(d_secrets: &SecretValues, slot: &SlotSpec) -> Result<String, String> {
    template::render_env_file(&slot.environment, |name| d_secrets.get(&slot.env, name))
        .map_err(|e| format!("{}/{}: {e}", slot.env, slot.app))
}

/// Pushes `content` as a root-only (0600) file.
async fn push_private<I: Incus + Sync>(
    incus: &I,
    instance: &str,
    path: &str,
    content: String,
) -> Result<(), String> {
    let mut push = FilePush::new(path, content);
    push.mode = 0o600;
    push.create_parents = true;
    crate::incus::push_file_verified(incus, instance, &push).await.map_err(|e| e.to_string())
}

/// Puts the unpacked release (`DIR.new`) in place and (re)starts the app under the
/// slot's supervisor: systemd when it is PID 1 (`unit` written to
/// `/etc/systemd/system/veza-app.service`), busybox init's `respawn` when that is, else
/// a detached process (which does not survive a restart of the slot). Prints
/// `supervisor=systemd|init|none`.
fn swap_and_restart_script(dir: &str, unit: &str) -> String {
    format!(
        r#"set -e
# The app's pid (its run script's, a process group leader) when it is still our app: the
# pid file holds the pid and its start time, and a pid file left by a dead app may name
# an unrelated process by now.
app_pid() {{
    read -r pid started 2>/dev/null < /run/veza-app.pid || return 0
    [ -n "$pid" ] && [ -n "$started" ] || return 0
    now=$(sed 's/.*) //' /proc/"$pid"/stat 2>/dev/null | cut -d' ' -f20)
    [ "$now" = "$started" ] && echo "$pid"
    return 0
}}
# Stops the app and everything it started (its process group): TERM, up to 10 s for the
# whole group to exit, then KILL.
stop_old() {{
    pid=$(app_pid)
    [ -n "$pid" ] || return 0
    kill -TERM -"$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
    i=0
    while {{ kill -0 -"$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; }} && [ $i -lt 100 ]; do
        sleep 0.1
        i=$((i+1))
    done
    kill -KILL -"$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}}
# The new release in place, with its environment and run script (pushed beside theirs:
# a deploy that fails before this point leaves the old release with its own); the old
# release is removed only after the app stopped.
swap() {{
    rm -rf {dir}.old; if [ -e {dir} ]; then mv {dir} {dir}.old; fi; mv {dir}.new {dir}
    mv -f {env}.new {env}; mv -f {run}.new {run}
}}
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    # A slot created a moment ago may still be booting: systemctl needs the manager's
    # socket (up to 30 s).
    i=0
    while [ ! -S /run/systemd/private ] && [ "$i" -lt 300 ]; do
        sleep 0.1
        i=$((i+1))
    done
    if systemctl is-active --quiet veza-app.service; then
        systemctl stop veza-app.service
    else
        stop_old
    fi
    rm -f /run/veza-app.pid
    swap
    cat > /etc/systemd/system/veza-app.service.tmp <<'VEZA_UNIT_END'
{unit}VEZA_UNIT_END
    mv /etc/systemd/system/veza-app.service.tmp /etc/systemd/system/veza-app.service
    systemctl daemon-reload
    systemctl enable --quiet veza-app.service
    systemctl restart veza-app.service
    rm -rf {dir}.old
    echo supervisor=systemd
elif [ -f /etc/inittab ] && [ "$(readlink /proc/1/exe 2>/dev/null)" = /bin/busybox ]; then
    swap
    stop_old
    rm -rf {dir}.old
    if ! grep -q '^::respawn:{run}$' /etc/inittab; then
        echo '::respawn:{run}' >> /etc/inittab
        kill -HUP 1
    fi
    echo supervisor=init
else
    stop_old
    swap
    rm -rf {dir}.old
    ( setsid {run} </dev/null >/dev/null 2>&1 & )
    echo supervisor=none
fi
"#,
        run = APP_RUN_SCRIPT,
        env = APP_ENV_FILE,
    )
}

/// Downloads (or takes from the cache) the artifact, checks its digest, and unpacks it
/// into `target` (a shell-quoted directory, emptied first) in `instance`.
async fn unpack_release<I, E, U, P, C>(
    d: &Drivers<'_, I, E, U, P, C>,
    instance: &str,
    slot: &SlotSpec,
    target: &str,
) -> Result<(), String>
where
    I: Incus + Sync,
{
    let (push, unpack) = release_upload(d, slot, target)?;
    crate::incus::push_file_verified(d.incus, instance, &push).await.map_err(|e| e.to_string())?;
    exec_ok(d.incus, instance, &unpack, BTreeMap::new()).await.map(|_| ())
}

/// The artifact (downloaded, or taken from the cache, its digest checked) as a file to
/// push into a slot, and the script that unpacks it into `target` (a shell-quoted
/// directory, emptied first) and removes it.
fn release_upload<I, E, U, P, C>(
    d: &Drivers<'_, I, E, U, P, C>,
    slot: &SlotSpec,
    target: &str,
) -> Result<(FilePush, String), String> {
    let bytes = d.artifacts.fetch(&slot.artifact_url, &slot.sha256).map_err(|e| e.to_string())?;
    let archive = d.artifacts.for_slot(&slot.artifact_url, bytes).map_err(|e| e.to_string())?;
    // Not in /tmp: a slot just created may still be booting, and systemd empties /tmp at
    // boot (tmpfiles `D /tmp`), which would remove the file between push and unpack.
    let tarball = "/var/lib/veza-agent/release.tar";
    let mut push = FilePush::new(tarball, archive.bytes);
    push.mode = 0o600;
    push.create_parents = true;
    let unpack = format!(
        "set -e; rm -rf {target}; mkdir -p {target}; tar {opt} -xf {tarball} -C {target}; rm -f {tarball}",
        opt = archive.tar_option,
    );
    Ok((push, unpack))
}

/// How a migration did not succeed.
pub(super) enum MigrationError {
    /// It could not be run (download, push, Incus, the scratch directory): an ordinary
    /// failed step, retried by the next sync.
    NotRun(String),
    /// The command ran and failed (or hit its time limit): the release is not deployed.
    Failed(String),
}

/// Runs the app's migration for `slot`'s release in `instance` (the slot itself or the
/// declared tools instance) with the wrapper the planner rendered: the release unpacked
/// in its scratch directory, the app's environment in a root-only file the wrapper
/// removes as soon as it read it, the command run with its time limit.
pub(super) async fn run_migration<I, E, U, P, C>(
    d: &Drivers<'_, I, E, U, P, C>,
    instance: &str,
    slot: &SlotSpec,
    files: &MigrationFiles,
) -> Result<(), MigrationError>
where
    I: Incus + Sync,
{
    let Some(m) = &slot.migrate else { return Ok(()) };
    let not_run = MigrationError::NotRun;
    unpack_release(d, instance, slot, &shell_quote(&files.release_dir)).await.map_err(not_run)?;
    let env = env_file(d.secrets, slot).map_err(not_run)?;
    // The wrapper removes the scratch directory (the environment file with the secrets
    // in it) on every exit; when it never ran, it is removed here (best effort).
    let remove_scratch = || async {
        let rm = ExecRequest::sh(format!("rm -rf {}", shell_quote(&files.scratch)));
        if let Err(e) = d.incus.exec(instance, &rm).await {
            tracing::warn!("removing {} in `{instance}` failed: {e}", files.scratch);
        }
    };
    if let Err(e) = push_private(d.incus, instance, &files.env_file, env).await {
        remove_scratch().await;
        return Err(not_run(e));
    }
    let mut req = ExecRequest::sh(&files.script);
    req.timeout = Duration::from_millis(m.timeout_ms) + Duration::from_secs(30);
    let out = match d.incus.exec(instance, &req).await {
        Ok(out) => out,
        // The wrapper did not return (no `timeout` in the instance, or it hung): the
        // command may still be running, so a retry could run it twice at once.
        Err(e @ IncusError::Timeout { .. }) => {
            return Err(MigrationError::Failed(format!(
                "`{}` did not finish in `{instance}` within its limit and may still be running \
                 there ({e}); it is not started again for this commit (hint: `incus exec \
                 {instance} -- ps`, then a new commit)",
                m.command
            )));
        }
        // Never sent, refused by Incus, or Incus could not be reached: nothing started.
        Err(e) if !exec_may_have_started(&e) => {
            remove_scratch().await;
            return Err(not_run(e.to_string()));
        }
        // Anything after the exec operation exists (its wait, its output): the command may
        // have run, or still run (incusd restarted under it), from the scratch directory.
        Err(e) => {
            return Err(MigrationError::Failed(format!(
                "`{}` was started in `{instance}` and its end was not seen ({e}): it may have run, \
                 or still run; it is not started again for this commit (hint: `incus exec \
                 {instance} -- ps`, then a new commit)",
                m.command
            )));
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.trim().lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    match out.exit_code {
        0 => Ok(()),
        MIGRATE_NO_DIR | MIGRATE_NO_ENV if tail.last() == Some(&MIGRATE_NOT_STARTED) => Err(
            not_run(format!("the migration could not start in `{instance}`: {}", tail.join(" | "))),
        ),
        code => Err(MigrationError::Failed(format!(
            "`{}` exited {code} in `{instance}`: {}",
            m.command,
            tail.join(" | ")
        ))),
    }
}

/// Whether an exec that failed may have started its command: the operation existed (its
/// wait, its result or its output failed: incusd restarted under it, the limit passed),
/// or the exec `POST` itself went out and its answer was lost or unreadable. Not when the
/// exec was never sent (the cluster fence, the ownership check before it) or Incus
/// refused it or could not be reached.
fn exec_may_have_started(e: &IncusError) -> bool {
    match e {
        IncusError::Operation { .. } | IncusError::OperationLost { .. } => true,
        // The exec `POST` went out (its answer lost or unreadable), or what follows it.
        IncusError::Timeout { path, .. }
        | IncusError::Decode { path, .. }
        | IncusError::Transport { path, .. } => path.ends_with("/exec") || after_exec(path),
        // Refused or unreachable: only what follows the exec counts.
        IncusError::Connect { path, .. } | IncusError::Api { path, .. } => after_exec(path),
        _ => false,
    }
}

/// A request made once an exec's operation existed: its wait, or its output logs.
fn after_exec(path: &str) -> bool {
    path.starts_with("/1.0/operations/") || path.contains("/logs/")
}

/// `text` with every secret value of `slot` (as is, and percent-encoded as it would be in
/// a URL) replaced by `{secret:NAME}`: what a failing command printed may quote its
/// environment (`could not connect to postgres://veza:PW@…`), and errors are recorded.
pub(super) fn redact(text: &str, secrets: &SecretValues, slot: &SlotSpec) -> String {
    // Every form of every secret, longest first across all of them: a secret that holds
    // another (`veza` in `veza-Zq9!x`) is replaced whole before the shorter one is.
    let mut forms: Vec<(String, String)> = Vec::new();
    for name in slot.secrets.keys() {
        let Some(value) = secrets.get(&slot.env, name) else { continue };
        let value = value.strip_suffix('\n').unwrap_or(value);
        if value.is_empty() {
            continue;
        }
        let mark = format!("{{secret:{name}}}");
        forms.extend(secret_forms(value).into_iter().map(|f| (f, mark.clone())));
    }
    forms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    let mut out = text.to_string();
    for (form, mark) in forms {
        out = out.replace(&form, &mark);
    }
    out
}

/// The ways a secret `value` may be quoted by what a command prints: as is, percent-
/// encoded in a URL (upper- or lower-case hex; only the characters URLs must encode, or
/// every non-alphanumeric one), and escaped as the environment file writes it (`\"`,
/// `\$`, `\\`, `` \` ``). Longest first, so a longer form is replaced whole.
fn secret_forms(value: &str) -> Vec<String> {
    let encode = |strict: bool, upper: bool| -> String {
        value
            .bytes()
            .map(|b| {
                let keep = b.is_ascii_alphanumeric()
                    || b"-._~".contains(&b)
                    || (!strict
                        && b.is_ascii_graphic()
                        && !b"%/?#[]@:&=+$,;\"<>\\^`{|} '".contains(&b));
                match (keep, upper) {
                    (true, _) => (b as char).to_string(),
                    (false, true) => format!("%{b:02X}"),
                    (false, false) => format!("%{b:02x}"),
                }
            })
            .collect()
    };
    let escaped: String = value
        .chars()
        .flat_map(|c| {
            let esc = matches!(c, '\\' | '"' | '$' | '`').then_some('\\');
            esc.into_iter().chain(std::iter::once(c))
        })
        .collect();
    let mut forms = vec![
        value.to_string(),
        encode(true, true),
        encode(true, false),
        encode(false, true),
        encode(false, false),
        escaped,
    ];
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

/// Downloads (or takes from the cache) the artifact, checks its digest, pushes it with
/// the app's environment file and run script, unpacks it and (re)starts the app under the
/// slot's supervisor in one exec, and marks the slot with the release.
pub(super) async fn deploy_release<I, E, U, P, C>(
    d: &Drivers<'_, I, E, U, P, C>,
    instance: &str,
    slot: &SlotSpec,
    files: &SlotFiles,
) -> Result<(), String>
where
    I: Incus + Sync,
{
    let dir = shell_quote(&slot.install_dir);
    let (tarball, unpack) = release_upload(d, slot, &format!("{dir}.new"))?;
    let env = env_file(d.secrets, slot)?;
    let mut run = FilePush::new(format!("{APP_RUN_SCRIPT}.new"), files.run_script.clone());
    run.mode = 0o755;
    run.create_parents = true;
    // The release goes up beside the app's two files (each pulled back and compared),
    // then one exec unpacks the release and swaps it in: each round trip to incusd is on
    // the path of every deploy. The two files share a directory its pushes create, so
    // they go one after the other (two concurrent creations of it fail).
    let incus = d.incus;
    // A slot that runs another release is redeployed in place: its mark goes before its
    // files change, so that a deploy that stops half-way leaves a slot that claims no
    // release (and is deployed again by the next sync), never one that claims the old one.
    let new_release = slot.release.as_str();
    edit_marks(incus, instance, |config| {
        if config.get(MARK_RELEASE).is_some_and(|r| r != new_release) {
            config.remove(MARK_RELEASE);
        }
    })
    .await?;
    let app_files = async move {
        push_private(incus, instance, &format!("{APP_ENV_FILE}.new"), env).await?;
        crate::incus::push_file_verified(incus, instance, &run).await.map_err(|e| e.to_string())
    };
    let release = async move {
        crate::incus::push_file_verified(incus, instance, &tarball).await.map_err(|e| e.to_string())
    };
    let script = format!("{unpack}\n{}", swap_and_restart_script(&dir, &files.unit));
    let swapped = match tokio::try_join!(release, app_files) {
        Ok(_) => exec_ok(d.incus, instance, &script, BTreeMap::new()).await.map(drop),
        Err(e) => Err(e),
    };
    if let Err(e) = swapped {
        // What was pushed for a swap that did not happen goes (the environment holds
        // secrets); after the swap there is nothing left to remove.
        let rm = ExecRequest::sh(format!("rm -f {APP_ENV_FILE}.new {APP_RUN_SCRIPT}.new"));
        if let Err(rm_err) = d.incus.exec(instance, &rm).await {
            tracing::warn!("removing the pushed environment in `{instance}` failed: {rm_err}");
        }
        return Err(e);
    }
    edit_marks(d.incus, instance, |config| {
        config.insert(MARK_RELEASE.to_string(), new_release.to_string());
        config.insert(MARK_DEPLOYED.to_string(), "agent".to_string());
    })
    .await
}

/// Edits the agent's marks on the instance as it is now (read at the call: a deploy can
/// take minutes, and a change made meanwhile by hand is kept); written only when `edit`
/// changed something.
async fn edit_marks<I: Incus + Sync>(
    incus: &I,
    instance: &str,
    edit: impl FnOnce(&mut BTreeMap<String, String>),
) -> Result<(), String> {
    let live = incus
        .instance(instance)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("instance `{instance}` disappeared"))?;
    let before = live.settable_config();
    let mut config = before.clone();
    edit(&mut config);
    if config == before {
        return Ok(());
    }
    let update = InstanceUpdate { config, devices: live.devices, profiles: live.profiles };
    incus.update_instance(instance, &update).await.map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> SlotSpec {
        veza_plan::fixtures::slot("prod", "backend", veza_model::manifest::Color::Green, '2')
    }

    #[test]
    fn the_unit_goes_into_the_restart_script_through_a_quoted_here_document() {
        let unit = veza_plan::slot::slot_files(&slot()).unit;
        // Its end marker must not occur in it.
        let restart = swap_and_restart_script("'/srv/app'", &unit);
        assert_eq!(restart.matches("VEZA_UNIT_END").count(), 2, "{restart}");
        assert!(
            restart.contains(&format!("<<'VEZA_UNIT_END'\n{unit}VEZA_UNIT_END\n")),
            "{restart}"
        );
    }

    /// Every way a failing command may quote a secret is replaced by its name.
    #[test]
    fn a_secret_is_redacted_in_every_form_a_command_may_print_it() {
        let value = "p@ss/w0rd!$x\"";
        let mut s = slot();
        s.secrets.insert("pw".into(), "ab12".into());
        let mut values = SecretValues::default();
        values.insert("prod", "pw", veza_secrets::SecretValue::new(value));
        // (what a command printed, what is recorded)
        let table = [
            (format!("raw {value} end"), "raw {secret:pw} end"),
            ("url p%40ss%2Fw0rd%21%24x%22 end".to_string(), "url {secret:pw} end"),
            ("lower p%40ss%2fw0rd%21%24x%22 end".to_string(), "lower {secret:pw} end"),
            // Only what URLs must encode (`!` left as is).
            ("loose p%40ss%2Fw0rd!%24x%22 end".to_string(), "loose {secret:pw} end"),
            ("env PW=\"p@ss/w0rd!\\$x\\\"\"".to_string(), "env PW=\"{secret:pw}\""),
        ];
        for (printed, want) in table {
            assert_eq!(redact(&printed, &values, &s), want, "{printed}");
        }
        // A secret that holds another is replaced whole, whichever name sorts first.
        s.secrets.insert("a_user".into(), "cd34".into());
        values.insert("prod", "a_user", veza_secrets::SecretValue::new("p@ss"));
        let printed = format!("postgres://p@ss:{value}@db");
        assert_eq!(redact(&printed, &values, &s), "postgres://{secret:a_user}:{secret:pw}@db");
    }

    #[test]
    fn the_environment_file_holds_the_values_and_names_a_missing_secret() {
        let mut s = slot();
        s.environment.insert("DATABASE_URL".into(), "postgres://u:{secret:pw}@db/x".into());
        let mut values = SecretValues::default();
        values.insert("prod", "pw", veza_secrets::SecretValue::new("hunter2"));
        let file = env_file(&values, &s).expect("rendered");
        assert!(file.contains("DATABASE_URL=\"postgres://u:hunter2@db/x\"\n"), "{file}");
        let missing = env_file(&SecretValues::default(), &s).expect_err("no value");
        assert_eq!(missing, "prod/backend: variable DATABASE_URL: secret `pw` is not available");
    }
}
