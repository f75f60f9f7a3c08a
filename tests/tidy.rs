//! Tidy: the architecture rules of ARCHITECTURE.md ("Invariants"), checked over the
//! source tree, as rust-analyzer's `xtask/src/tidy.rs` does. Each finding names
//! `file:line`, the rule and the offending line. Code is read with comments and the
//! contents of string and char literals removed; "test code" is a `#[cfg(test)]` item, a
//! module file declared under one, `tests/`, `examples/`, `fuzz/`, and the dev-only crates
//! `veza-testkit` and `veza-testapp`.
//!
//! The rules:
//! - pure: `veza-model` and `veza-plan` product code uses no file system, environment,
//!   process, thread, clock (`SystemTime`, `Instant`, `Utc::now`), socket or DNS
//!   (`TcpStream`, `ToSocketAddrs`…), `tokio`, nor prints. Address types (`IpAddr`) are
//!   plain values and allowed.
//! - spawn: `Command::new`, `std::process::Command` and `tokio::process` appear only in
//!   `agent/host/src/process.rs`, test code included: tests and the kit spawn through
//!   `veza_host::process::Cmd` like the product.
//! - anyhow: no library crate (`veza-fs`, `-model`, `-source`, `-plan`, `-state`, `-host`)
//!   depends on `anyhow` or names it outside test code; the binary, the kit and tests may.
//! - write: product code writes files only through `veza-fs` (`std::fs::write`,
//!   `File::create`, `OpenOptions` and `std::fs::rename` appear in `agent/fs` only), with
//!   the exceptions in [`WRITE_ALLOWED`], each with its reason.
//! - doc: every Rust file starts with a `//!` comment saying what it is for.
//! - modules: within a crate, top-level modules do not import each other (through
//!   `crate::`, outside test code) in a circle.
//! - crates: each crate depends only on the `veza-*` crates [`CRATE_DEPS`] allows (the
//!   pipeline order; `veza-state` not on `veza-host`; `veza-testkit` only as a
//!   dev-dependency).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Library crates (`agent/<dir>`): no `anyhow`.
const LIBRARIES: &[&str] = &["fs", "model", "secrets", "source", "plan", "state", "host"];
/// Pure crates: no effects.
const PURE: &[&str] = &["model", "secrets", "plan"];
/// Dev-only crates: test code as a whole.
const DEV_CRATES: &[&str] = &["testkit", "testapp"];

/// Tokens that make pure code impure, with what they reach.
const IMPURE: &[(&str, &str)] = &[
    ("std::fs", "the file system"),
    ("std::env", "the environment"),
    ("std::process", "processes"),
    ("std::thread", "threads"),
    ("std::io::stdin", "the terminal"),
    ("std::io::stdout", "the terminal"),
    ("std::io::stderr", "the terminal"),
    ("SystemTime", "the clock"),
    ("Instant", "the clock"),
    ("Utc::now", "the clock"),
    ("Local::now", "the clock"),
    ("tokio", "the async runtime"),
    ("TcpStream", "the network"),
    ("TcpListener", "the network"),
    ("UdpSocket", "the network"),
    ("UnixStream", "the network"),
    ("UnixListener", "the network"),
    ("ToSocketAddrs", "DNS"),
    ("to_socket_addrs", "DNS"),
    ("println!", "the terminal"),
    ("eprintln!", "the terminal"),
    ("print!", "the terminal"),
    ("eprint!", "the terminal"),
];
/// Names that must not appear in a `use std::{…}` group in pure code.
const IMPURE_STD_MODULES: &[&str] = &["fs", "env", "process", "thread"];

/// Tokens that spawn a process.
const SPAWN: &[&str] = &["Command::new", "process::Command", "tokio::process"];
/// The one module allowed to spawn.
const SPAWN_MODULE: &str = "agent/host/src/process.rs";

/// Tokens that write a file other than through `veza-fs`.
const WRITE: &[&str] = &["fs::write", "File::create", "OpenOptions", "fs::rename"];
/// Product files allowed a direct write: (file, token, reason).
const WRITE_ALLOWED: &[(&str, &str, &str)] = &[(
    "agent/host/src/process.rs",
    "OpenOptions",
    "the log of a daemon it starts is opened for the child to append to: not a file the \
     agent writes, so not an atomic write",
)];

/// The `veza-*` crates each crate may depend on (normal dependencies).
const CRATE_DEPS: &[(&str, &[&str])] = &[
    ("veza-fs", &[]),
    ("veza-model", &[]),
    ("veza-secrets", &[]),
    ("veza-source", &["veza-model", "veza-secrets"]),
    ("veza-plan", &["veza-model"]),
    ("veza-state", &["veza-fs", "veza-model"]),
    ("veza-host", &["veza-fs", "veza-model", "veza-secrets", "veza-plan"]),
    (
        "veza-agent",
        &[
            "veza-fs",
            "veza-model",
            "veza-secrets",
            "veza-source",
            "veza-plan",
            "veza-state",
            "veza-host",
        ],
    ),
    (
        "veza-testkit",
        &["veza-fs", "veza-model", "veza-source", "veza-plan", "veza-state", "veza-host"],
    ),
    ("veza-testapp", &[]),
];
/// Dependencies that would give a pure crate effects.
const EFFECT_CRATES: &[&str] =
    &["tokio", "hyper", "hyper-util", "hyperlocal", "rustix", "gix", "notify", "veza-fs"];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    file: String,
    line: usize,
    rule: &'static str,
    text: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: [{}] {}", self.file, self.line, self.rule, self.text)
    }
}

/// One line of code: its number, its text without comments or literal contents, and
/// whether it belongs to test code.
struct Line {
    no: usize,
    code: String,
    test: bool,
}

/// What is known of a file before reading it.
struct FileKind<'a> {
    /// Path relative to the workspace root, with `/`.
    path: &'a str,
    /// Test code as a whole (see the module docs).
    test_file: bool,
}

impl FileKind<'_> {
    /// `agent/<crate>/…` → `<crate>`; `None` for `tests/`, `fuzz/`.
    fn krate(&self) -> Option<&str> {
        self.path.strip_prefix("agent/").and_then(|r| r.split('/').next())
    }

    fn is_test_file(&self) -> bool {
        self.test_file
            || self.path.starts_with("tests/")
            || self.path.starts_with("fuzz/")
            || self.path.contains("/examples/")
            || self.krate().is_some_and(|k| DEV_CRATES.contains(&k))
    }
}

/// All findings of the source rules in one file.
fn check_source(kind: &FileKind, text: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let path = kind.path;
    let finding = |no, rule, text: String| Finding { file: path.to_string(), line: no, rule, text };
    let first = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with("#!"));
    if !first.is_some_and(|l| l.starts_with("//!")) {
        out.push(finding(1, "doc", "the file does not start with a `//!` comment".into()));
    }
    let krate = kind.krate();
    let test_file = kind.is_test_file();
    let raw: Vec<&str> = text.lines().collect();
    for Line { no, code: stripped, test } in lines(text) {
        let product = !test && !test_file;
        // Matched without comments or literals; shown as written.
        let (code, stripped) = (raw.get(no - 1).map_or("", |l| l.trim()), stripped.as_str());
        if product && krate.is_some_and(|k| PURE.contains(&k)) {
            for (token, what) in IMPURE {
                if mentions(stripped, token) {
                    out.push(finding(no, "pure", format!("`{token}` reaches {what}: {code}")));
                }
            }
            if let Some(group) = stripped.split("std::{").nth(1) {
                for m in IMPURE_STD_MODULES.iter().filter(|m| mentions(group, m)) {
                    out.push(finding(no, "pure", format!("`std::{m}` in a use group: {code}")));
                }
            }
        }
        if path != SPAWN_MODULE {
            for token in SPAWN.iter().filter(|t| mentions(stripped, t)) {
                out.push(finding(
                    no,
                    "spawn",
                    format!(
                        "`{token}` outside {SPAWN_MODULE} (use veza_host::process::Cmd): {code}"
                    ),
                ));
            }
        }
        if product && krate.is_some_and(|k| LIBRARIES.contains(&k)) && mentions(stripped, "anyhow")
        {
            out.push(finding(no, "anyhow", format!("`anyhow` in a library crate: {code}")));
        }
        if product && krate.is_some_and(|k| k != "fs") {
            for token in WRITE.iter().filter(|t| mentions(stripped, t)) {
                if !WRITE_ALLOWED.iter().any(|(f, t, _)| *f == path && t == token) {
                    out.push(finding(
                        no,
                        "write",
                        format!("`{token}`: write files through veza_fs: {code}"),
                    ));
                }
            }
        }
    }
    out
}

/// Whether `code` names `token` as a whole path or word (`std::fs` is not `std::fsx`).
fn mentions(code: &str, token: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(token).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + token.len()..].chars().next();
        !before.is_some_and(ident) && (token.ends_with('!') || !after.is_some_and(ident))
    })
}

/// The lines of `text` with comments and literal contents removed, and which belong to a
/// `#[cfg(test)]` item.
fn lines(text: &str) -> Vec<Line> {
    let code = strip(text);
    let mut out = Vec::new();
    // Depth of the test item being skipped; `None` outside one.
    let mut skip: Option<(i64, bool)> = None;
    for (i, code) in code.lines().enumerate() {
        let t = code.trim();
        if skip.is_none() && (t.starts_with("#[cfg(test)]") || t.starts_with("#[cfg(all(test")) {
            skip = Some((0, false));
        }
        let test = skip.is_some();
        if let Some((depth, opened)) = &mut skip {
            for c in code.chars() {
                match c {
                    '{' => {
                        *depth += 1;
                        *opened = true;
                    }
                    '}' => *depth -= 1,
                    _ => {}
                }
            }
            let item_ended = if *opened { *depth <= 0 } else { t.ends_with(';') };
            if item_ended {
                skip = None;
            }
        }
        out.push(Line { no: i + 1, code: code.to_string(), test });
    }
    out
}

/// `text` with comments removed and string and char literals emptied (`""`, `' '`),
/// line breaks kept.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_ident(&chars, i) {
            let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            i += 2 + hashes;
            let closes = |at: usize| {
                chars.get(at) == Some(&'"') && (1..=hashes).all(|k| chars.get(at + k) == Some(&'#'))
            };
            while i < chars.len() && !closes(i) {
                if chars[i] == '\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if chars.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Where a module first names another: (file, line).
type Edges = BTreeMap<String, BTreeMap<String, (String, usize)>>;

/// Findings of the module rule over `sources` (path, text): per crate, each circle of
/// top-level modules naming each other through `crate::` in code other than tests.
fn check_modules(sources: &[(&str, &str)]) -> Vec<Finding> {
    let mut crates: BTreeMap<&str, Edges> = BTreeMap::new();
    for (path, text) in sources {
        let Some((krate, in_src)) = path.strip_prefix("agent/").and_then(|r| r.split_once("/src/"))
        else {
            continue;
        };
        let module = in_src.split('/').next().unwrap_or("").trim_end_matches(".rs");
        if matches!(module, "lib" | "main") {
            continue;
        }
        let edges = crates.entry(krate).or_default().entry(module.to_string()).or_default();
        let code: String = lines(text)
            .iter()
            .map(|l| if l.test { "\n".to_string() } else { format!("{}\n", l.code) })
            .collect();
        for (at, target) in crate_refs(&code) {
            let line = code[..at].matches('\n').count() + 1;
            if target != module {
                edges.entry(target).or_insert_with(|| (path.to_string(), line));
            }
        }
    }
    let mut out = Vec::new();
    for (krate, edges) in &crates {
        for start in edges.keys() {
            let Some(circle) = circle_from(edges, start) else { continue };
            let (file, line) = edges[start][&circle[1]].clone();
            out.push(Finding {
                file,
                line,
                rule: "modules",
                text: format!(
                    "modules of agent/{krate} import each other in a circle: {} (hint: move \
                     what they share into a module of its own)",
                    circle.join(" → ")
                ),
            });
        }
    }
    out
}

/// The shortest circle from `start` back to it through modules named after `start` (so
/// each circle is reported once, from its first module), if any.
fn circle_from(edges: &Edges, start: &str) -> Option<Vec<String>> {
    let mut from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(m) = queue.pop_front() {
        for next in edges.get(m).into_iter().flat_map(|e| e.keys()) {
            if next == start {
                let mut back = Vec::new();
                let mut at = m;
                while at != start {
                    back.push(at.to_string());
                    at = from[at];
                }
                let mut path = vec![start.to_string()];
                path.extend(back.into_iter().rev());
                path.push(start.to_string());
                return Some(path);
            }
            let next = next.as_str();
            if next > start && edges.contains_key(next) && !from.contains_key(next) {
                from.insert(next, m);
                queue.push_back(next);
            }
        }
    }
    None
}

/// The modules `code` names through `crate::` (`crate::a::b`, `crate::{a, b::c}`), with
/// the offset of each mention.
fn crate_refs(code: &str) -> Vec<(usize, String)> {
    let ident = |s: &str| -> String {
        s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
    };
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.push((at, ident(&group[item_start..i])));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push((at, ident(&group[item_start..i])));
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.push((at, ident(rest)));
        }
    }
    out.retain(|(_, m)| !m.is_empty() && m != "self");
    out
}

/// Module files declared under `#[cfg(test)]` (`mod tests;`, with or without `#[path]`).
fn test_modules(path: &Path, text: &str) -> Vec<PathBuf> {
    let raw: Vec<&str> = text.lines().collect();
    let dir = path.parent().unwrap_or(Path::new(""));
    let own_dir = match path.file_name().and_then(|n| n.to_str()) {
        Some("lib.rs" | "main.rs" | "mod.rs") => dir.to_path_buf(),
        _ => dir.join(path.file_stem().unwrap_or_default()),
    };
    let mut out = Vec::new();
    let mut pending_path = None;
    for l in lines(text) {
        let t = l.code.trim();
        if !l.test {
            pending_path = None;
            continue;
        }
        if t.starts_with("#[path") {
            pending_path = raw[l.no - 1].split('"').nth(1).map(|p| dir.join(p));
        } else if let Some(name) = t.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            out.push(pending_path.take().unwrap_or_else(|| own_dir.join(format!("{name}.rs"))));
            out.push(own_dir.join(name).join("mod.rs"));
        }
    }
    out
}

/// Findings of the crate graph rule in one `Cargo.toml`.
fn check_manifest(path: &str, text: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut name = None;
    let mut section = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_string();
            continue;
        }
        let key = t.split(['=', '.', ' ']).next().unwrap_or("").trim_matches('"');
        if section == "[package]" && key == "name" {
            name = t.split('"').nth(1).map(str::to_string);
        }
        let normal = section.ends_with("dependencies]")
            && !section.contains("dev-dependencies")
            && !section.contains("build-dependencies")
            && !section.contains("workspace");
        if !normal || key.is_empty() {
            continue;
        }
        let Some(name) = name.as_deref() else { continue };
        let finding = |text| Finding { file: path.to_string(), line: i + 1, rule: "crates", text };
        if key.starts_with("veza-") {
            let allowed = CRATE_DEPS.iter().find(|(c, _)| *c == name).map_or(&[][..], |(_, d)| *d);
            if !allowed.contains(&key) {
                out.push(finding(format!(
                    "{name} must not depend on {key} (allowed: {allowed:?}; see CRATE_DEPS)"
                )));
            }
        }
        if key == "anyhow" && LIBRARIES.iter().any(|l| name == format!("veza-{l}")) {
            out.push(finding(format!("library crate {name} depends on anyhow")));
        }
        if EFFECT_CRATES.contains(&key) && PURE.iter().any(|p| name == format!("veza-{p}")) {
            out.push(finding(format!("pure crate {name} depends on {key}")));
        }
    }
    out
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` (recursively) whose name ends with `suffix`, `target/` skipped.
fn files(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target" && n != "snapshots") {
                files(&p, suffix, out);
            }
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
}

fn relative(p: &Path) -> String {
    p.strip_prefix(workspace()).unwrap_or(p).to_string_lossy().replace('\\', "/")
}

/// Every finding over the tree (`tests/tidy.rs` itself names the tokens, so it is skipped).
fn check_tree() -> Vec<Finding> {
    let root = workspace();
    let mut rs = Vec::new();
    for dir in ["agent", "tests", "fuzz"] {
        files(&root.join(dir), ".rs", &mut rs);
    }
    rs.sort();
    assert!(rs.len() > 50, "tidy found only {} Rust files under {}", rs.len(), root.display());
    let texts: Vec<(PathBuf, String)> = rs
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read a source file");
            (p, text)
        })
        .collect();
    let test_files: BTreeSet<PathBuf> =
        texts.iter().flat_map(|(p, t)| test_modules(p, t)).collect();
    let mut out = Vec::new();
    for (p, text) in &texts {
        let path = relative(p);
        if path == "tests/tidy.rs" {
            continue;
        }
        out.extend(check_source(
            &FileKind { path: &path, test_file: test_files.contains(p) },
            text,
        ));
    }
    let sources: Vec<(String, &str)> = texts
        .iter()
        .filter(|(p, _)| !test_files.contains(p))
        .map(|(p, t)| (relative(p), t.as_str()))
        .collect();
    let sources: Vec<(&str, &str)> = sources.iter().map(|(p, t)| (p.as_str(), *t)).collect();
    out.extend(check_modules(&sources));
    let mut manifests = vec![root.join("Cargo.toml")];
    files(&root.join("agent"), "Cargo.toml", &mut manifests);
    for p in manifests {
        let text = std::fs::read_to_string(&p).expect("read a Cargo.toml");
        out.extend(check_manifest(&relative(&p), &text));
    }
    out
}

#[test]
fn the_source_tree_keeps_the_architecture_rules() {
    let findings = check_tree();
    assert!(
        findings.is_empty(),
        "{} architecture rule(s) broken (rules: tests/tidy.rs, ARCHITECTURE.md \"Invariants\"):\n{}\n\
         hint: the rules are listed at the top of tests/tidy.rs; fix the code (an effect goes \
         behind veza-host, a file write through veza-fs), or narrow the rule there with a reason",
        findings.len(),
        findings.iter().map(|f| format!("  {f}\n")).collect::<String>()
    );
}

/// Findings expected of a case, as (line, rule).
type Expected = &'static [(usize, &'static str)];

#[test]
fn each_rule_catches_what_it_names_and_only_that() {
    // (file, source, findings as (line, rule); empty when the source is allowed)
    let cases: &[(&str, &str, Expected)] = &[
        (
            "agent/model/src/a.rs",
            "//! a\nfn f() { let _ = std::time::SystemTime::now(); }\n",
            &[(2, "pure")],
        ),
        ("agent/plan/src/a.rs", "//! a\nuse std::{collections::BTreeMap, fs};\n", &[(2, "pure")]),
        (
            "agent/plan/src/a.rs",
            "//! a\nasync fn f() { tokio::time::sleep(d).await }\n",
            &[(2, "pure")],
        ),
        ("agent/plan/src/a.rs", "//! a\nfn f() { let t = Instant::now(); }\n", &[(2, "pure")]),
        (
            "agent/model/src/a.rs",
            "//! a\nfn f() { let _ = a.to_socket_addrs(); }\n",
            &[(2, "pure")],
        ),
        (
            "agent/model/src/a.rs",
            "//! a\nfn f(ip: std::net::IpAddr) -> bool { ip.is_loopback() }\n",
            &[],
        ),
        (
            "agent/model/src/a.rs",
            "//! a\n// std::fs in a comment\nconst S: &str = \"std::fs\";\n",
            &[],
        ),
        (
            "agent/model/src/a.rs",
            "//! a\nfn f() {}\n#[cfg(test)]\nmod tests {\n    fn g() { std::fs::read(\"{\").unwrap(); }\n}\n",
            &[],
        ),
        (
            "agent/model/src/a.rs",
            "//! a\n#[cfg(test)]\nmod tests;\nfn f() { std::env::var(\"X\"); }\n",
            &[(4, "pure")],
        ),
        ("agent/model/src/a.rs", "//! a\nfn f() -> Instants { Instants }\n", &[]),
        (
            "agent/host/src/a.rs",
            "//! a\nfn f() { std::process::Command::new(\"ls\"); }\n",
            &[(2, "spawn"), (2, "spawn")],
        ),
        ("tests/a.rs", "//! a\n#[test]\nfn t() { Command::new(\"ls\"); }\n", &[(3, "spawn")]),
        ("agent/host/src/process.rs", "//! a\nfn f() { Command::new(p); }\n", &[]),
        (
            "agent/state/src/a.rs",
            "//! a\nfn f() -> anyhow::Result<()> { Ok(()) }\n",
            &[(2, "anyhow")],
        ),
        ("agent/bin/a.rs", "//! a\nfn f() -> anyhow::Result<()> { Ok(()) }\n", &[]),
        ("agent/testkit/src/a.rs", "//! a\nfn f() -> anyhow::Result<()> { Ok(()) }\n", &[]),
        ("agent/state/src/a.rs", "//! a\nfn f() { std::fs::write(p, b).ok(); }\n", &[(2, "write")]),
        (
            "agent/bin/commands/a.rs",
            "//! a\nfn f() { std::fs::OpenOptions::new(); }\n",
            &[(2, "write")],
        ),
        ("agent/fs/src/lib.rs", "//! a\nfn f() { std::fs::rename(a, b).ok(); }\n", &[]),
        ("agent/host/src/process.rs", "//! a\nfn f() { std::fs::OpenOptions::new(); }\n", &[]),
        (
            "agent/host/src/a.rs",
            "#![allow(x)]\n/// item docs are not module docs\nfn f() {}\n",
            &[(1, "doc")],
        ),
        ("agent/host/src/a.rs", "fn f() { let s = r#\"std::fs \" {\"#; }\n", &[(1, "doc")]),
    ];
    for (path, source, expected) in cases {
        let found: Vec<(usize, &str)> = check_source(&FileKind { path, test_file: false }, source)
            .iter()
            .map(|f| (f.line, f.rule))
            .collect();
        assert_eq!(&found, expected, "{path}:\n{source}");
    }
}

#[test]
fn the_crate_graph_rule_reads_normal_dependencies_only() {
    // (manifest, findings as (line, rule))
    let cases: &[(&str, Expected)] = &[
        (
            "[package]\nname = \"veza-state\"\n[dependencies]\nveza-host.workspace = true\n",
            &[(4, "crates")],
        ),
        ("[package]\nname = \"veza-state\"\n[dependencies]\nveza-fs.workspace = true\n", &[]),
        ("[package]\nname = \"veza-plan\"\n[dependencies]\ntokio = \"1\"\n", &[(4, "crates")]),
        ("[package]\nname = \"veza-host\"\n[dependencies]\nanyhow = \"1\"\n", &[(4, "crates")]),
        (
            "[package]\nname = \"veza-source\"\n[dev-dependencies]\nanyhow = \"1\"\nveza-testkit.workspace = true\n",
            &[],
        ),
        (
            "[package]\nname = \"veza-agent\"\n[dependencies]\nveza-testkit.workspace = true\n",
            &[(4, "crates")],
        ),
    ];
    for (manifest, expected) in cases {
        let found: Vec<(usize, &str)> =
            check_manifest("Cargo.toml", manifest).iter().map(|f| (f.line, f.rule)).collect();
        assert_eq!(&found, expected, "{manifest}");
    }
}

#[test]
fn the_module_rule_finds_circles_of_imports_outside_tests() {
    // (files of one crate, circles found as (file, line, text ending))
    type Circles = &'static [(&'static str, usize, &'static str)];
    let cases: &[(&[(&str, &str)], Circles)] = &[
        (
            &[
                ("agent/model/src/parse.rs", "//! p\nfn f() { crate::validate::closest(); }\n"),
                (
                    "agent/model/src/validate.rs",
                    "//! v\nuse crate::{lexical, parse::{Seg, Pos}};\n",
                ),
                ("agent/model/src/lexical.rs", "//! l\n"),
            ],
            &[("agent/model/src/parse.rs", 2, "parse → validate → parse")],
        ),
        (
            &[
                (
                    "agent/testkit/src/app.rs",
                    "//! a\nuse crate::{\n    ports::x,\n    incus::TestContainer,\n};\n",
                ),
                ("agent/testkit/src/incus.rs", "//! i\nuse crate::proc::alive;\n"),
                ("agent/testkit/src/proc.rs", "//! p\nuse crate::app::x;\n"),
            ],
            &[("agent/testkit/src/app.rs", 2, "app → incus → proc → app")],
        ),
        (
            &[
                ("agent/model/src/parse.rs", "//! p\nuse crate::hint::closest;\n"),
                ("agent/model/src/validate.rs", "//! v\nuse crate::{hint::closest, parse::Seg};\n"),
                (
                    "agent/model/src/hint.rs",
                    "//! h\n#[cfg(test)]\nmod tests {\n    use crate::validate::x;\n}\n",
                ),
            ],
            &[],
        ),
    ];
    for (files, expected) in cases {
        let found = check_modules(files);
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for (f, (file, line, circle)) in found.iter().zip(expected.iter()) {
            assert_eq!((f.file.as_str(), f.line, f.rule), (*file, *line, "modules"), "{f}");
            assert!(f.text.contains(&format!(": {circle} (hint:")), "{f}");
        }
    }
}
