//! Placeholders of `start`, `migrate.command` and environment values, and the secret
//! references of environment values.
//!
//! - Plain placeholders (`{release}`, `{port}`, `{dir}`, `{env}`, `{app}`, `{color}`) are
//!   substituted by [`substitute`] while planning; other braces are left as written.
//! - `{secret:NAME}` names the age file `secrets/<env>/NAME.age` beside the manifest, in
//!   the same commit ([`secret_path`]). The planner leaves it in place (a plan never holds a value); only
//!   [`render_env_file`], at apply time, puts the decrypted value in.
//! - [`render_env_file`] writes `KEY="value"` lines that both `sh` (`set -a; . FILE`) and
//!   systemd's `EnvironmentFile=` read the same way.

use std::collections::BTreeMap;

/// The plain placeholders' values.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    /// `{release}`.
    pub release: &'a str,
    /// `{port}`.
    pub port: u16,
    /// `{dir}`.
    pub dir: &'a str,
    /// `{env}`.
    pub env: &'a str,
    /// `{app}`.
    pub app: &'a str,
    /// `{color}`.
    pub color: &'a str,
}

/// The placeholders [`substitute`] knows, for messages.
pub const PLACEHOLDERS: &str = "{release}, {port}, {dir}, {env}, {app}, {color}";

/// Replaces the plain placeholders; `{secret:…}` and unknown braces stay as written.
pub fn substitute(template: &str, v: &Vars<'_>) -> String {
    template
        .replace("{release}", v.release)
        .replace("{port}", &v.port.to_string())
        .replace("{dir}", v.dir)
        .replace("{env}", v.env)
        .replace("{app}", v.app)
        .replace("{color}", v.color)
}

const SECRET_OPEN: &str = "{secret:";

/// The secret names a value references, in order (`{secret:NAME}`); an unterminated
/// reference is returned as an error with what follows it.
pub fn secret_refs(value: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find(SECRET_OPEN) {
        let after = &rest[at + SECRET_OPEN.len()..];
        let end = after.find('}').ok_or_else(|| {
            format!("`{SECRET_OPEN}` without its closing `}}` (write `{{secret:NAME}}`)")
        })?;
        out.push(&after[..end]);
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// Whether `s` is a secret name: 1-64 lowercase letters, digits, `_` and `-`, starting
/// with a letter or digit (it becomes a file name).
pub fn is_secret_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// Whether `s` is a portable environment variable name (`[A-Za-z_][A-Za-z0-9_]*`, at most
/// 128 bytes).
pub fn is_env_var_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Where secret `name` of environment `env` lives: `secrets/<env>/<name>.age` in the
/// directory of the manifest that references it (`manifests/prod.yaml` →
/// `manifests/secrets/prod/<name>.age`).
pub fn secret_path(manifest_path: &str, env: &str, name: &str) -> String {
    match manifest_path.rsplit_once('/') {
        Some((dir, _)) if !dir.is_empty() => format!("{dir}/secrets/{env}/{name}.age"),
        _ => format!("secrets/{env}/{name}.age"),
    }
}

/// Every secret a manifest references (apps' and jobs' `env`), with the first variable
/// that uses it (`apps.backend.env.DATABASE_URL`), for messages.
pub fn manifest_secrets(m: &crate::Manifest) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let envs = m
        .apps
        .iter()
        .map(|(n, a)| (format!("apps.{n}.env"), &a.env))
        .chain(m.jobs.iter().map(|(n, j)| (format!("jobs.{n}.env"), &j.env)));
    for (at, env) in envs {
        for (var, value) in env {
            for name in secret_refs(value).unwrap_or_default() {
                out.entry(name.to_string()).or_insert_with(|| format!("{at}.{var}"));
            }
        }
    }
    out
}

/// Why an environment file cannot be rendered. Never carries a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvFileError {
    /// A referenced secret is not among the decrypted ones.
    #[error("variable {var}: secret `{name}` is not available")]
    MissingSecret {
        /// The variable.
        var: String,
        /// The secret.
        name: String,
    },
    /// A value (after substitution) holds a line break or NUL, which an environment file
    /// cannot carry.
    #[error(
        "variable {var}: its value contains a line break or NUL byte, which an environment file cannot hold"
    )]
    Unrepresentable {
        /// The variable.
        var: String,
    },
}

/// Renders `KEY="value"` lines, `{secret:NAME}` replaced through `secret` (which returns
/// the decrypted value). Inside double quotes, `\`, `"`, `$` and `` ` `` are escaped with
/// a backslash: `sh` and systemd's `EnvironmentFile=` both read them back literally.
pub fn render_env_file<'s>(
    vars: &BTreeMap<String, String>,
    secret: impl Fn(&str) -> Option<&'s str>,
) -> Result<String, EnvFileError> {
    let mut out = String::from("# Written by veza-agent. Root only: it may hold secrets.\n");
    for (var, template) in vars {
        let mut value = String::new();
        let mut rest = template.as_str();
        while let Some(at) = rest.find(SECRET_OPEN) {
            value.push_str(&rest[..at]);
            let after = &rest[at + SECRET_OPEN.len()..];
            let Some(end) = after.find('}') else { break };
            let name = &after[..end];
            let v = secret(name).ok_or_else(|| EnvFileError::MissingSecret {
                var: var.clone(),
                name: name.to_string(),
            })?;
            // One trailing line break (from `echo … | secret encrypt`) is not part of it.
            value.push_str(v.strip_suffix('\n').unwrap_or(v));
            rest = &after[end + 1..];
        }
        value.push_str(rest);
        if value.contains(['\n', '\r', '\0']) {
            return Err(EnvFileError::Unrepresentable { var: var.clone() });
        }
        out.push_str(var);
        out.push_str("=\"");
        for c in value.chars() {
            if matches!(c, '\\' | '"' | '$' | '`') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("\"\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_references_are_found_in_order() {
        let cases: &[(&str, Result<Vec<&str>, ()>)] = &[
            ("plain", Ok(vec![])),
            ("{secret:a}", Ok(vec!["a"])),
            ("postgres://u:{secret:pw}@db:{port}/{secret:db}", Ok(vec!["pw", "db"])),
            ("{secret:}", Ok(vec![""])),
            ("{secret:open", Err(())),
            ("{release} {json}", Ok(vec![])),
        ];
        for (value, want) in cases {
            assert_eq!(&secret_refs(value).map_err(|_| ()), want, "{value}");
        }
    }

    #[test]
    fn names_are_checked() {
        for (name, ok) in [
            ("db_password", true),
            ("1key", true),
            ("", false),
            ("Up", false),
            ("a/b", false),
            ("../x", false),
            ("-x", false),
        ] {
            assert_eq!(is_secret_name(name), ok, "{name}");
        }
        for (name, ok) in
            [("DATABASE_URL", true), ("_x1", true), ("1X", false), ("A-B", false), ("", false)]
        {
            assert_eq!(is_env_var_name(name), ok, "{name}");
        }
    }

    #[test]
    fn secrets_live_beside_their_manifest() {
        for (manifest, want) in [
            ("manifests/prod.yaml", "manifests/secrets/prod/pw.age"),
            ("prod.yaml", "secrets/prod/pw.age"),
            ("/repo/m/prod.yaml", "/repo/m/secrets/prod/pw.age"),
        ] {
            assert_eq!(secret_path(manifest, "prod", "pw"), want);
        }
    }

    #[test]
    fn plain_placeholders_are_substituted_and_secrets_left_for_apply() {
        let v = Vars {
            release: "r1",
            port: 8080,
            dir: "/opt/b",
            env: "prod",
            app: "backend",
            color: "blue",
        };
        assert_eq!(
            substitute(
                "{dir}/bin --port {port} {env}-{app}-{color} {release} {secret:pw} {other}",
                &v
            ),
            "/opt/b/bin --port 8080 prod-backend-blue r1 {secret:pw} {other}"
        );
    }

    #[test]
    fn env_files_quote_what_sh_and_systemd_would_expand() {
        let vars = BTreeMap::from([
            ("DATABASE_URL".to_string(), "postgres://veza:{secret:pw}@db/veza".to_string()),
            ("PLAIN".to_string(), "a \"b\" $HOME `x` \\".to_string()),
        ]);
        let file = render_env_file(&vars, |n| (n == "pw").then_some("p$w\"d\n")).expect("render");
        assert_eq!(
            file.lines().skip(1).collect::<Vec<_>>(),
            [
                r#"DATABASE_URL="postgres://veza:p\$w\"d@db/veza""#,
                r#"PLAIN="a \"b\" \$HOME \`x\` \\""#
            ]
        );
        let missing = render_env_file(&vars, |_| None).expect_err("missing");
        assert_eq!(missing.to_string(), "variable DATABASE_URL: secret `pw` is not available");
        let multi = render_env_file(&vars, |_| Some("a\nb")).expect_err("line break");
        assert!(!multi.to_string().contains("a\nb"), "{multi}");
    }
}
