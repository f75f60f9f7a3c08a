//! Hostile input, signed or not: a manifest over the size cap, a YAML alias bomb, a
//! nesting bomb, huge or malformed signatures. Each is refused and nothing changes.

use std::time::{Duration, Instant};

use super::*;

/// Commits `manifest(h)` signed on top of the baseline and checks that it is rejected
/// with `needle` and nothing changes; returns how long the commit and sync took.
fn signed_manifest_is_rejected(
    name: &str,
    fault: &str,
    needle: &str,
    manifest: impl Fn(&DemoHost) -> String,
) -> Duration {
    let (mut case, h, a) = case_at_baseline(name, fault);
    let text = manifest(&h);
    let started = Instant::now();
    let c = h.commit(&text, name).expect("commit");
    assert_rejected(&h, &mut case, &c, needle, &a);
    started.elapsed()
}

/// The manifest's three required keys, the start of each crafted manifest.
fn head(h: &DemoHost) -> String {
    format!(
        "apiVersion: veza-agent/v1\nkind: Environment\nmetadata: {{name: {e}, host: {e}}}\n",
        e = h.env
    )
}

#[test]
fn manifest_over_the_size_cap() {
    signed_manifest_is_rejected(
        "manifest over the size cap",
        "signed manifest of 1.1 MiB (limit 1 MiB)",
        "above the limit of 1048576 bytes",
        |h| {
            let mut big = h.manifest("blue", Some(0), Some(1));
            while big.len() <= 1024 * 1024 + 100 * 1024 {
                big.push_str("# padding padding padding padding padding padding padding padding\n");
            }
            big
        },
    );
}

#[test]
fn yaml_alias_bomb() {
    let took = signed_manifest_is_rejected(
        "YAML alias bomb",
        "signed billion-laughs manifest (9 levels × 9 aliases)",
        "YAML aliases; refusing to expand them",
        |h| {
            let mut bomb = head(h);
            bomb.push_str(
                "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
            );
            let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
            for w in names.windows(2) {
                let refs = vec![format!("*{}", w[0]); 9].join(",");
                bomb.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
            }
            bomb
        },
    );
    assert!(took < Duration::from_secs(60), "rejected without expanding");
}

/// yaml-rust2's recursive loader overflowed the stack on this (the agent aborted); the
/// walk over its events is a loop, and the guard stops counting at 64 levels.
#[test]
fn yaml_nesting_bomb() {
    signed_manifest_is_rejected(
        "YAML nesting bomb",
        "signed manifest nesting 300 000 block sequences (600 kB, under the size cap)",
        "nesting deeper than 64 levels",
        |h| format!("{}bomb:\n{}x\n", head(h), "- ".repeat(300_000)),
    );
}

#[test]
fn huge_or_malformed_signature() {
    let (mut case, h, a) = case_at_baseline(
        "huge or malformed signature",
        "commits whose gpgsig is garbage text, a 1 MB armor, and a valid armor with a truncated SSHSIG blob",
    );
    // The crafted commits reuse A's tree: it is in the served repository, and the
    // signature is refused before any manifest is read.
    let tree =
        h.repo.git_bare(&["rev-parse", &format!("{a}^{{tree}}")]).expect("tree").trim().to_string();
    let head = h.repo.git_bare(&["rev-parse", "refs/heads/main"]).expect("head").trim().to_string();
    assert_eq!(head, a);
    let replace_sig = |raw: Vec<u8>, sig: &str| -> Vec<u8> {
        let text = String::from_utf8(raw).expect("commit is text");
        let start = text.find("gpgsig ").expect("gpgsig header");
        let end = text.find(" -----END SSH SIGNATURE-----\n").expect("armor end")
            + " -----END SSH SIGNATURE-----\n".len();
        let continued: String = sig.lines().collect::<Vec<_>>().join("\n ");
        format!("{}gpgsig {continued}\n{}", &text[..start], &text[end..]).into_bytes()
    };
    let garbage =
        "-----BEGIN SSH SIGNATURE-----\nthis is not base64 !!!\n-----END SSH SIGNATURE-----";
    let huge = format!(
        "-----BEGIN SSH SIGNATURE-----\n{}-----END SSH SIGNATURE-----",
        "U1NIU0lHAAAAAQAAADMAAAALc3NoLWVkMjU1MTkAAAAg\n".repeat(1024 * 1024 / 45)
    );
    let truncated = "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQAAADMAAAALc3NoLWVkMjU1MTkAAAAg\n-----END SSH SIGNATURE-----";
    let cases: [(&str, &str, &str); 3] = [
        ("garbage armor", garbage, "non-base64"),
        ("1 MB armor", &huge, "larger than"),
        ("truncated SSHSIG", truncated, "signature"),
    ];
    for (what, sig, needle) in cases {
        let id = h
            .repo
            .craft_signed_commit(&h.forgejo, "git", &tree, &[&a], what, |raw| replace_sig(raw, sig))
            .expect("craft commit");
        h.repo.set_ref("refs/heads/main", &id).expect("point main at it");
        case.saw(format!("{what} ({} bytes of signature)", sig.len()));
        assert_rejected(&h, &mut case, &id, needle, &a);
        assert!(agent(&h.config_path, &["apply"]).out.contains("signature"));
    }
    // The branch back on the applied commit: in sync, nothing to do.
    h.repo.set_ref("refs/heads/main", &a).expect("reset main");
    let r = apply_ok(&h);
    assert!(r.out.starts_with("no-change"), "{r}");
    case.saw("branch back on the applied commit: no-change");
}
