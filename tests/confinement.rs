//! Capabilities, through the `veza-agent` binary: a signed manifest asks for powers over
//! the host (a job on the host, host paths, `security.*`/`raw.*` keys) only where the
//! host's trust policy grants them to its path. Real signed commits served over smart
//! HTTP on 127.0.0.1 (see `veza_testkit::demo`); the refusal comes before Incus is
//! observed, so no container is created.

use veza_testkit::demo::DemoHost;

fn host() -> DemoHost {
    DemoHost::new(std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent")), None)
        .unwrap_or_else(|e| panic!("the real test host is not usable: {e:#}"))
}

/// Runs `veza-agent ARGS`, returns (exit code, stdout + stderr).
fn agent(h: &DemoHost, args: &[&str]) -> (i32, String) {
    let out = h.agent(args).expect("veza-agent runs");
    (out.status.code().unwrap_or(-1), format!("{}{}", out.stdout_str(), out.stderr_str()))
}

/// A policy any Forgejo-signed commit satisfies, granting `staging_grants` to the staging
/// manifest and nothing to the environment's own manifest.
fn policy(prod: &str, staging: &str, staging_grants: &str) -> String {
    format!(
        "publishers: [forgejo@forge.example]\nrules:\n  - name: any\n    paths: [\"**\"]\n    \
         principals: [forgejo@forge.example]\n    threshold: 1\n\
         capabilities:\n  {prod}: []\n  {staging}: [{staging_grants}]\n"
    )
}

/// A staging manifest that adds a job on the host is refused, with a message naming the
/// manifest, the capability, where it is used and the policy key that would grant it; the
/// refused revision changes nothing. Once the policy grants it, the same revision passes.
#[test]
fn a_staging_manifest_adding_a_host_job_is_refused_unless_the_policy_grants_it() {
    let h = host();
    let prod = h.manifest_path();
    let staging = format!("manifests/{}-staging.yaml", h.env);
    let policy_file = h.dir.join("policy.yaml");
    std::fs::write(&policy_file, policy(&prod, &staging, "")).expect("write policy");
    let config = std::fs::read_to_string(&h.config_path).expect("read config");
    let marker = format!("allowed_signers: {}\n", h.dir.join("allowed_signers").display());
    let manifests = format!("manifests: [{prod}]");
    assert!(config.contains(&marker) && config.contains(&manifests), "{config}");
    let config = config
        .replacen(&marker, &format!("{marker}  policy: {}\n", policy_file.display()), 1)
        .replacen(&manifests, &format!("manifests: [{prod}, {staging}]"), 1);
    std::fs::write(&h.config_path, config).expect("write config");

    let ran = h.dir.join("drill-ran");
    h.repo
        .write(
            &staging,
            &format!(
                "apiVersion: veza-agent/v1\nkind: Environment\nmetadata: {{name: {env}-staging, host: {env}}}\n\
                 jobs:\n  dr-drill: {{schedule: '@daily', on: host, command: 'touch {ran}'}}\n",
                env = h.env,
                ran = ran.display()
            ),
        )
        .expect("write staging manifest");
    let commit =
        h.commit(&h.manifest("blue", Some(0), None), "staging drills on the host").unwrap();

    // `validate` reports the capability (not an error: the host decides).
    let work = h.repo.work();
    let out = veza_host::process::Cmd::new(env!("CARGO_BIN_EXE_veza-agent"))
        .arg("validate")
        .arg(work.join(&prod))
        .arg(work.join(&staging))
        .output()
        .expect("validate runs");
    let said = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("uses capabilities: host-jobs (jobs.dr-drill.on)"), "{said}");

    let (code, said) = agent(&h, &["apply"]);
    assert_eq!(code, 1, "an ungranted capability was accepted:\n{said}");
    let expected = format!(
        "trust policy: `{policy}`: manifest `{staging}` uses capability `host-jobs` (jobs.dr-drill.on), which the trust policy does not grant to it (hint: if this manifest may run jobs on the host, add `host-jobs` to `capabilities.\"{staging}\"` in the policy file; otherwise remove the key)",
        policy = policy_file.display()
    );
    assert!(said.contains(&expected), "wanted:\n{expected}\ngot:\n{said}");
    assert!(said.contains(&commit[..12]), "the refusal names the commit: {said}");
    // Nothing changed: nothing applied, no unit written, no slot serving.
    let (_, status) = agent(&h, &["status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&status).expect("status --json");
    assert!(st["state"]["applied"].is_null(), "{st:#}");
    let units = h.dir.join("units");
    let written: Vec<_> =
        std::fs::read_dir(&units).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(written.is_empty(), "units written for a refused revision: {written:?}");
    assert!(h.served_release().is_err(), "the edge serves a refused revision");
    assert!(!ran.exists());

    // The operator grants it on the host: the same revision now gets as far as a plan.
    std::fs::write(&policy_file, policy(&prod, &staging, "host-jobs")).expect("write policy");
    let (code, said) = agent(&h, &["plan"]);
    assert_eq!(code, 2, "a granted capability was refused:\n{said}");
    assert!(said.contains(&format!("veza-job-{}-staging-dr-drill", h.env)), "{said}");
}
