//! What the end-to-end modules share: a simulated host, and the command line run against
//! it.

use veza_testkit::demo::DemoHost;
use veza_testkit::forge::StatusServer;

/// A simulated host on the real test host (panics when the host is not usable).
pub fn host() -> DemoHost {
    DemoHost::new(std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent")), None)
        .unwrap_or_else(|e| panic!("the real test host is not usable: {e:#}"))
}

/// Runs `veza-agent ARGS`, returns (exit code, stdout, stderr).
pub fn agent(h: &DemoHost, args: &[&str]) -> (i32, String, String) {
    let out = h.agent(args).expect("veza-agent runs");
    (out.status.code().unwrap_or(-1), out.stdout_str(), out.stderr_str())
}

/// `veza-agent apply`, which must exit 0; its output.
pub fn apply_ok(h: &DemoHost) -> String {
    let (code, out, err) = agent(h, &["apply"]);
    assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
    out
}

/// A stand-in Forgejo for commit statuses, the agent of `h` configured to post to it
/// (`feedback.forgejo`, the token in a file) with `more` appended to its configuration
/// (indented: more of `feedback`). Returns the forge and its token, `<tag><pid>Token`.
pub fn status_forge(h: &DemoHost, tag: &str, more: &str) -> (StatusServer, String) {
    let token = format!("{tag}{}Token", std::process::id());
    let forge = StatusServer::start("talas/manifests", &token).expect("the stand-in forge");
    let token_file = h.dir.join("status-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write the token file");
    let config = std::fs::read_to_string(&h.config_path).expect("read the config");
    std::fs::write(
        &h.config_path,
        format!(
            "{config}feedback:\n  forgejo: {{api_url: \"{}\", repo: talas/manifests, token_file: {}}}\n{more}",
            forge.api_url(),
            token_file.display(),
        ),
    )
    .expect("write the config");
    (forge, token)
}
