//! Helpers the planner's tests share: manifests from YAML texts, and the snapshot check
//! (`agent/plan/snapshots/<name>.txt`; `UPDATE_SNAPSHOTS=1` rewrites them, then review
//! the diff: the snapshot is the contract).

use veza_model::Manifest;

use crate::Plan;

/// The manifests of `texts`, as the agent loads them (each as `m<i>.yaml`).
pub(crate) fn manifests(texts: &[impl AsRef<str>]) -> Vec<Manifest> {
    let files: Vec<(String, Vec<u8>)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("m{i}.yaml"), t.as_ref().as_bytes().to_vec()))
        .collect();
    match veza_model::load(&files) {
        Ok(parsed) => parsed.into_iter().map(|(_, p)| p.manifest).collect(),
        Err(e) => panic!("test manifests are invalid: {e:#?}"),
    }
}

/// Compares `plan`, as printed, with the snapshot `name`.
pub(crate) fn check_snapshot(name: &str, plan: &Plan) {
    check_text(name, &plan.to_string());
}

/// Compares `text` with the snapshot `name`, or rewrites it under `UPDATE_SNAPSHOTS`.
pub(crate) fn check_text(name: &str, text: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, text).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != text {
        panic!(
            "plan `{name}` differs from {}:\n--- expected\n{expected}\n--- actual\n{text}\n(rerun with UPDATE_SNAPSHOTS=1 and review the diff)",
            path.display()
        );
    }
}
