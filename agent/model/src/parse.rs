//! Strict parsing of manifest bytes into [`Manifest`], with every error located.
//!
//! Two passes over the same bytes:
//! 1. a guard pass over the events (yaml-rust2, which never expands aliases) rejects what
//!    the typed pass should never see (several documents, oversized input, too many
//!    aliases, too deep, keys that are not plain strings);
//! 2. the typed pass (serde_yaml_ng) deserializes with `deny_unknown_fields`.
//!
//! The guard runs before the typed pass when the text could hold an alias (it has a
//! `&`, so an anchor) or is blank, and otherwise only after the typed pass failed, so
//! that a rejected input gets the guard's diagnostic when it has one. A valid manifest
//! without anchors is read once (the guard was a third of the time of loading a large
//! manifest).
//!
//! Both event walks are loops over yaml-rust2's event stream, never its recursive
//! `Parser::load`: a hostile `- - - - …` of 1 MiB nests 500 000 levels deep.
//!
//! Semantic checks (`validate`) report a key path; [`Positions`] turns it into
//! `line:col`. Its index (key path → line and column) is built only when a problem is
//! located, by the same event walk as the guard pass: a manifest that is valid costs no
//! index (it was most of the parse time of a large manifest).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::manifest::Manifest;

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Most alias references (`*name`) accepted in one manifest.
pub const MAX_ALIASES: usize = 64;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One located problem in one manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the problem is.
    pub pos: Pos,
    /// What is wrong, for a human.
    pub message: String,
}

/// A located diagnostic tied to its file, printed as `PATH:LINE:COL: error: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiagnostic {
    /// The file as the user named it.
    pub file: String,
    /// The problem.
    pub diagnostic: Diagnostic,
}

impl fmt::Display for FileDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: error: {}", self.file, self.diagnostic.pos, self.diagnostic.message)
    }
}

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Seg {
        Seg::Key(s.to_string())
    }
}
impl From<String> for Seg {
    fn from(s: String) -> Seg {
        Seg::Key(s)
    }
}
impl From<usize> for Seg {
    fn from(i: usize) -> Seg {
        Seg::Index(i)
    }
}

/// Builds a key path: `path!["apps", name, "active"]`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => { vec![$($crate::parse::Seg::from($seg)),*] };
}

/// Positions of every node of a document, by key path, built on the first lookup.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    /// The document the positions are read from.
    text: Arc<str>,
    index: Arc<OnceLock<Index>>,
}

/// Where each node's key (or sequence item) and its value start: one map, so that a
/// node costs one path clone and one hash; and every scalar value, for
/// [`Positions::find_scalar`].
#[derive(Debug, Default)]
struct Index {
    nodes: HashMap<Vec<Seg>, Node>,
    scalars: HashMap<Vec<Seg>, String>,
}

impl Positions {
    /// The positions of `text`, a document the guard pass of [`parse_yaml`] accepted.
    fn of(text: &str) -> Positions {
        Positions { text: Arc::from(text), index: Arc::default() }
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let mut indexer = Indexer { record: true, ..Indexer::default() };
            // A text the typed pass or the guard accepted, so the walk succeeds; were it
            // to fail, the index holds what was read before the failure.
            let _ = walk(&self.text, &mut indexer);
            indexer.positions
        })
    }

    /// Where the key of `path` starts (for a sequence item: where the item starts).
    /// Falls back to the nearest ancestor that is known.
    pub fn key(&self, path: &[Seg]) -> Pos {
        self.lookup(path, true)
    }

    /// Where the value of `path` starts. Falls back like [`Positions::key`].
    pub fn value(&self, path: &[Seg]) -> Pos {
        self.lookup(path, false)
    }

    /// The first scalar value equal to `text` at or below `under`, by position.
    pub fn find_scalar(&self, under: &[Seg], text: &str) -> Option<Pos> {
        let index = self.index();
        index
            .scalars
            .iter()
            .filter(|(path, value)| path.starts_with(under) && value.as_str() == text)
            .filter_map(|(path, _)| index.nodes.get(path).map(|n| n.value))
            .min()
    }

    fn lookup(&self, path: &[Seg], key: bool) -> Pos {
        let index = self.index();
        let mut p = path;
        loop {
            if let Some(n) = index.nodes.get(p) {
                return if key { n.key } else { n.value };
            }
            match p.split_last() {
                Some((_, rest)) => p = rest,
                None => return Pos { line: 1, col: 1 },
            }
        }
    }
}

/// The positions of one node.
#[derive(Debug, Clone, Copy)]
struct Node {
    key: Pos,
    value: Pos,
}

fn pos_of(m: Marker) -> Pos {
    Pos { line: m.line(), col: m.col() + 1 }
}

enum Frame {
    Map { path: Vec<Seg>, pending_key: Option<(String, Pos)>, expecting_key: bool },
    Seq { path: Vec<Seg>, next: usize },
}

/// The event walk of both passes: the guard pass (`record: false`: the checks only, no
/// paths built) and the index of [`Positions`] (`record: true`).
#[derive(Default)]
struct Indexer {
    record: bool,
    positions: Index,
    stack: Vec<Frame>,
    documents: usize,
    aliases: usize,
    /// Collections opened beyond [`MAX_DEPTH`]: counted, not stacked (the walk goes on
    /// to the end of a hostile text, whose first problem is already recorded).
    overflow: usize,
    problem: Option<Diagnostic>,
}

/// Feeds every event of `text` to `indexer`, in order, in a loop: yaml-rust2's own
/// `Parser::load` recurses once per nesting level.
fn walk(text: &str, indexer: &mut Indexer) -> Result<(), yaml_rust2::ScanError> {
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token()?;
        let end = event == Event::StreamEnd;
        indexer.on_event(event, mark);
        if end {
            return Ok(());
        }
    }
}

/// The path of the child of `parent` at `seg`, its position recorded; an empty path
/// when positions are not recorded (the guard pass).
fn child(record: bool, positions: &mut Index, parent: &[Seg], seg: Seg, node: Node) -> Vec<Seg> {
    if !record {
        return Vec::new();
    }
    let mut path = parent.to_vec();
    path.push(seg);
    positions.nodes.insert(path.clone(), node);
    path
}

impl Indexer {
    fn fail(&mut self, pos: Pos, message: String) {
        if self.problem.is_none() {
            self.problem = Some(Diagnostic { pos, message });
        }
    }

    /// Where the node that starts now lives, and records its position.
    fn node_path(&mut self, pos: Pos) -> Option<Vec<Seg>> {
        match self.stack.last_mut() {
            None => Some(Vec::new()),
            Some(Frame::Seq { path, next }) => {
                let index = *next;
                *next += 1;
                let node = Node { key: pos, value: pos };
                Some(child(self.record, &mut self.positions, path, Seg::Index(index), node))
            }
            Some(Frame::Map { path, pending_key, expecting_key }) => {
                if *expecting_key {
                    return None; // a key that is itself a collection
                }
                *expecting_key = true;
                let (k, kpos) = pending_key.take()?;
                let node = Node { key: kpos, value: pos };
                Some(child(self.record, &mut self.positions, path, Seg::Key(k), node))
            }
        }
    }

    fn scalar(&mut self, value: String, pos: Pos) {
        if let Some(Frame::Map { pending_key, expecting_key, .. }) = self.stack.last_mut()
            && *expecting_key
        {
            *expecting_key = false;
            *pending_key = Some((value, pos));
            return;
        }
        if let Some(path) = self.node_path(pos)
            && self.record
        {
            self.positions.scalars.insert(path, value);
        }
    }

    fn open(&mut self, pos: Pos, map: bool) {
        if self.overflow > 0 || self.stack.len() >= MAX_DEPTH {
            self.fail(pos, format!("nesting deeper than {MAX_DEPTH} levels"));
            self.overflow += 1;
            return;
        }
        match self.node_path(pos) {
            Some(path) => self.stack.push(if map {
                Frame::Map { path, pending_key: None, expecting_key: true }
            } else {
                Frame::Seq { path, next: 0 }
            }),
            None => {
                self.fail(pos, "mapping keys must be plain strings".to_string());
                self.stack.push(Frame::Seq { path: vec![Seg::Key("?".into())], next: 0 });
            }
        }
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = pos_of(mark);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(pos, "the file must hold exactly one YAML document".to_string());
                }
            }
            Event::Alias(_) => {
                self.aliases += 1;
                if self.aliases > MAX_ALIASES {
                    self.fail(
                        pos,
                        format!("more than {MAX_ALIASES} YAML aliases; refusing to expand them"),
                    );
                }
                let _ = self.node_path(pos);
            }
            Event::Scalar(value, ..) => self.scalar(value, pos),
            Event::MappingStart(..) => self.open(pos, true),
            Event::SequenceStart(..) => self.open(pos, false),
            Event::MappingEnd | Event::SequenceEnd => {
                if self.overflow > 0 {
                    self.overflow -= 1;
                } else {
                    self.stack.pop();
                }
            }
            _ => {}
        }
    }
}

/// The result of a successful parse: the typed manifest and the position index.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The typed manifest.
    pub manifest: Manifest,
    /// Where each key sits in the source.
    pub positions: Positions,
}

/// Parses one manifest. Errors are located; no semantic validation happens here.
pub fn parse(bytes: &[u8]) -> Result<Parsed, Diagnostic> {
    let (manifest, positions) = parse_yaml::<Manifest>(bytes, "manifest")?;
    Ok(Parsed { manifest, positions })
}

/// Parses any strict YAML document (a manifest, the host configuration) with the same
/// bounds and located errors. `what` names the document in messages.
///
/// `T` must be a typed document as the manifest and the configuration are: structs with
/// `deny_unknown_fields` and required fields, maps with string-like keys, no free-form
/// value (`serde_yaml_ng::Value`, `IgnoredAny`, `flatten`). The typed pass is what bounds
/// depth, documents and keys for a text without anchors (see the module comment).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<(T, Positions), Diagnostic> {
    let start = Pos { line: 1, col: 1 };
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(Diagnostic {
            pos: start,
            message: format!(
                "{what} is {} bytes, more than the limit of {MAX_MANIFEST_BYTES} bytes",
                bytes.len()
            ),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let before = &bytes[..e.valid_up_to()];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        Diagnostic { pos: Pos { line, col }, message: format!("{what} is not valid UTF-8") }
    })?;
    // An alias needs an anchor (`&name`) before it. Without a `&` anywhere the text holds
    // no alias, and the typed pass alone bounds the rest: it rejects a second document,
    // its targets are typed structs and maps of bounded depth, and a key that is a
    // collection is no string. So the guard pass runs first only when an alias is
    // possible (or the text is blank), and otherwise only when the typed pass fails, to
    // report what it finds first: every input the guard rejects is still rejected with
    // its diagnostic.
    let guarded = text.contains('&') || text.trim().is_empty();
    if guarded {
        guard(text, what)?;
    }
    let positions = Positions::of(text);
    match serde_yaml_ng::from_str(text) {
        Ok(value) => Ok((value, positions)),
        Err(e) => {
            if !guarded {
                guard(text, what)?;
            }
            Err(serde_diagnostic(&e, &positions))
        }
    }
}

/// The guard pass: what the typed pass must never be handed (see the module comment),
/// and an empty document.
fn guard(text: &str, what: &str) -> Result<(), Diagnostic> {
    let mut indexer = Indexer::default();
    if let Err(e) = walk(text, &mut indexer) {
        return Err(Diagnostic {
            pos: pos_of(*e.marker()),
            message: format!("invalid YAML: {}", e.info()),
        });
    }
    if let Some(problem) = indexer.problem {
        return Err(problem);
    }
    if indexer.documents == 0 || text.trim().is_empty() {
        return Err(Diagnostic {
            pos: Pos { line: 1, col: 1 },
            message: format!("{what} is empty"),
        });
    }
    Ok(())
}

fn serde_diagnostic(e: &serde_yaml_ng::Error, positions: &Positions) -> Diagnostic {
    let mut pos =
        e.location().map_or(Pos { line: 1, col: 1 }, |l| Pos { line: l.line(), col: l.column() });
    let raw = e.to_string();
    // serde_yaml_ng appends " at line L column C"; the position is printed separately.
    let message = match raw.find(" at line ") {
        Some(i) => raw[..i].to_string(),
        None => raw,
    };
    // A value rejected by a newtype (`invalid release `x`: ...`) is reported by serde at
    // its parent mapping; point at the offending value itself.
    if let Some(bad) = message.split("invalid ").nth(1).and_then(|rest| rest.split('`').nth(1)) {
        let under = message.split_once(": ").map_or_else(Vec::new, |(p, _)| serde_path(p));
        if let Some(found) = positions.find_scalar(&under, bad) {
            pos = found;
        }
    }
    Diagnostic { pos, message: with_hint(message) }
}

/// `apps.hello.slots[0].blue` as path segments.
fn serde_path(text: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in text.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            out.push(Seg::Key(rest[..i].to_string()));
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                if let Ok(n) = rest[1..end].parse() {
                    out.push(Seg::Index(n));
                }
                rest = &rest[end + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Seg::Key(rest.to_string()));
        }
    }
    out
}

/// Adds a did-you-mean hint to serde's `unknown field`/`unknown variant` messages.
fn with_hint(message: String) -> String {
    let Some((head, expected)) = message.split_once(", expected ") else {
        return message;
    };
    let Some(unknown) = head.split('`').nth(1) else {
        return message;
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match crate::hint::closest(unknown, candidates.iter().copied()) {
        Some(best) => format!("{message}; did you mean `{best}`?"),
        None => message,
    }
}

#[cfg(test)]
#[allow(clippy::useless_vec)] // reason: `path!` builds owned paths, as production code needs
mod tests {
    use super::*;
    use crate::config::HostConfig;

    /// The order before the guard was skipped: guard (with its empty check), then the
    /// typed pass. [`parse_yaml`] must give the same result for every input.
    fn guard_first<T: serde::de::DeserializeOwned>(
        text: &str,
        what: &str,
    ) -> Result<T, Diagnostic> {
        guard(text, what)?;
        serde_yaml_ng::from_str(text).map_err(|e| serde_diagnostic(&e, &Positions::of(text)))
    }

    const MANIFEST: &str =
        "apiVersion: veza-agent/v1\nkind: Environment\nmetadata: {name: prod, host: r720}\n";

    /// Each rule of the guard: a manifest valid but for it, and what `parse` says. The
    /// anchored cases run the guard first; the others run it after the typed pass failed.
    fn guard_cases() -> Vec<(&'static str, String, &'static str)> {
        let nested = |depth: usize| format!("{}x{}", "[".repeat(depth), "]".repeat(depth));
        let config = |value: &str| {
            format!(
                "{MANIFEST}incus:\n  instances:\n    web:\n      image: i\n      config:\n        k: {value}\n"
            )
        };
        let aliases = vec!["*a"; MAX_ALIASES + 1].join(", ");
        vec![
            ("empty", String::new(), "1:1: manifest is empty"),
            ("blank", " \n\t\n".into(), "manifest is empty"),
            ("only a comment", "# nothing\n".into(), "1:1: manifest is empty"),
            (
                "a trailing document",
                format!("{MANIFEST}---\n"),
                "4:1: the file must hold exactly one YAML document",
            ),
            (
                "two documents",
                format!("{MANIFEST}---\n{MANIFEST}"),
                "4:1: the file must hold exactly one YAML document",
            ),
            ("too deep", config(&nested(70)), "9:71: nesting deeper than 64 levels"),
            (
                "too deep, anchored",
                format!("x: &a 1\n{}", config(&nested(70))),
                "10:71: nesting deeper than 64 levels",
            ),
            // 300 000 block levels in 600 kB: no recursion may follow them.
            (
                "too deep, hostile",
                format!("{}x\n", "- ".repeat(300_000)),
                "1:129: nesting deeper than 64 levels",
            ),
            (
                "collection key",
                format!("{MANIFEST}apps:\n  web:\n    slots:\n      ? [blue]\n      : {{}}\n"),
                "7:9: mapping keys must be plain strings",
            ),
            (
                "too many aliases",
                config(&format!("&a 1\n        j: [{aliases}]")),
                "more than 64 YAML aliases; refusing to expand them",
            ),
            ("broken YAML", format!("{MANIFEST}x: [a, b\n"), "invalid YAML: "),
            ("unknown field", format!("{MANIFEST}apss: {{}}\n"), "4:1: unknown field `apss`"),
        ]
    }

    #[test]
    fn guard_rules_hold_whichever_pass_runs_first() {
        for (name, text, want) in guard_cases() {
            let got = match parse(text.as_bytes()) {
                Ok(_) => panic!("{name}: accepted"),
                Err(d) => format!("{}: {}", d.pos, d.message),
            };
            assert!(got.contains(want), "{name}: got `{got}`, want `{want}`");
        }
    }

    /// Skipping the guard changes no outcome: the same accepted value or the same
    /// diagnostic as guard-then-typed, for the guard's cases, every shipped and invalid
    /// example, and each of the examples' prefixes (cut mid-line, mid-flow, mid-key).
    #[test]
    fn parse_agrees_with_the_guard_first_order() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut examples = vec![MANIFEST.to_string(), "a: &x [1]\nb: *x\n".into()];
        for dir in ["manifests", "manifests/examples", "manifests/examples/invalid"] {
            for entry in std::fs::read_dir(root.join(dir)).into_iter().flatten().flatten() {
                if entry.path().extension().is_some_and(|e| e == "yaml") {
                    examples.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        assert!(examples.len() > 25, "the corpus was not found: {}", examples.len());
        let mut inputs: Vec<String> = guard_cases().into_iter().map(|(_, text, _)| text).collect();
        for t in &examples {
            let cuts: Vec<usize> =
                (0..t.len()).step_by(37).filter(|i| t.is_char_boundary(*i)).collect();
            inputs.extend(cuts.into_iter().map(|i| t[..i].to_string()));
            inputs.push(t.clone());
        }
        for text in &inputs {
            let short = &text[..text.len().min(300)];
            // `Manifest` has no `PartialEq`; its debug form holds every field.
            let new =
                parse_yaml::<Manifest>(text.as_bytes(), "manifest").map(|(m, _)| format!("{m:?}"));
            let old = guard_first::<Manifest>(text, "manifest").map(|m| format!("{m:?}"));
            assert_eq!(new, old, "manifest:\n{short}");
            let new = parse_yaml::<HostConfig>(text.as_bytes(), "configuration").map(|(c, _)| c);
            assert_eq!(new, guard_first::<HostConfig>(text, "configuration"), "config:\n{short}");
        }
    }

    #[test]
    fn index_records_keys_values_and_sequence_items() {
        let text = "a:\n  b: 1\n  list:\n    - x\n    - {c: 2}\n";
        let p = Positions::of(text);
        assert_eq!(p.key(&path!["a"]), Pos { line: 1, col: 1 });
        assert_eq!(p.key(&path!["a", "b"]), Pos { line: 2, col: 3 });
        assert_eq!(p.value(&path!["a", "b"]), Pos { line: 2, col: 6 });
        assert_eq!(p.key(&path!["a", "list", 1usize]), Pos { line: 5, col: 7 });
        assert_eq!(p.key(&path!["a", "list", 1usize, "c"]), Pos { line: 5, col: 8 });
        // Unknown paths fall back to the nearest known ancestor.
        assert_eq!(p.key(&path!["a", "b", "zzz"]), Pos { line: 2, col: 3 });
    }

    #[test]
    fn hint_suggests_the_closest_field() {
        let m =
            with_hint("unknown field `actve`, expected one of `image`, `active`, `port`".into());
        assert!(m.ends_with("did you mean `active`?"), "{m}");
        let m = with_hint("unknown field `zzzzzz`, expected one of `image`, `active`".into());
        assert!(!m.contains("did you mean"), "{m}");
    }
}
