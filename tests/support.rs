//! What the end-to-end modules share: a simulated host, and the command line run against
//! it.

use veza_testkit::demo::DemoHost;

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
