//! Keeps the controller's module layout (issue 8) from sliding back: it reads the sources
//! under `controller/src`, draws which file refers to which module (`crate::...` and
//! `super::...` paths, in `use` lines, code and `#[serde(with = "...")]` strings alike;
//! test modules left out) and checks the rules below. A text check, not a compiler: it
//! reads paths, not macros or re-exports, and that is enough to keep the cycles out.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module, as its path below the crate root (`["runbooks", "config"]`).
type Module = Vec<String>;

struct Source {
    /// Path below `controller/src`, e.g. `runbooks/config.rs`.
    file: String,
    /// The file without its test module.
    code: String,
}

fn sources() -> BTreeMap<Module, Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut modules = BTreeMap::new();
    for path in files {
        let file = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        if file == "main.rs" {
            continue; // the binary: it reaches the library as `controller::`, never `crate::`
        }
        let mut module: Module = file.trim_end_matches(".rs").split('/').map(str::to_string).collect();
        if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
            module.pop();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        modules.insert(module, Source { file, code: without_tests_and_comments(&text) });
    }
    modules
}

/// The text before `#[cfg(test)] mod tests`, without whole-line comments (doc comments
/// name modules they do not use).
fn without_tests_and_comments(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t == "#[cfg(test)]" {
            let mut rest = lines.clone();
            let next = rest.find(|l| !l.trim().starts_with("#[")).unwrap_or("");
            if next.trim_start().starts_with("mod ") {
                break;
            }
        }
        if !t.starts_with("//") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Every path that `code`, the text of `me`, names through `crate::` or `super::`.
fn named_paths(code: &str, me: &Module) -> Vec<Module> {
    let bytes = code.as_bytes();
    let ident_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let preceded = i > 0 && (ident_char(bytes[i - 1]) || bytes[i - 1] == b':');
        // Paths are ASCII: a byte inside a multi-byte character (a sparkline's bars) is skipped.
        let base = if preceded || !code.is_char_boundary(i) {
            None
        } else if code[i..].starts_with("crate::") {
            i += "crate::".len();
            Some(Vec::new())
        } else if code[i..].starts_with("super::") {
            let mut base = me.clone();
            while code[i..].starts_with("super::") {
                base.pop();
                i += "super::".len();
            }
            Some(base)
        } else {
            None
        };
        match base {
            Some(base) => {
                let mut cursor = Cursor { s: code, i };
                tree(&mut cursor, base, &mut out);
                i = cursor.i.max(i + 1);
            }
            None => i += 1,
        }
    }
    out
}

struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        &self.s[self.i..]
    }
    fn skip_ws(&mut self) {
        let n = self.rest().len() - self.rest().trim_start().len();
        self.i += n;
    }
    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.i += token.len();
            true
        } else {
            false
        }
    }
    fn ident(&mut self) -> Option<String> {
        let n = self.rest().bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
        (n > 0 && !self.rest().as_bytes()[0].is_ascii_digit()).then(|| {
            let id = self.rest()[..n].to_string();
            self.i += n;
            id
        })
    }
}

/// Reads one path or `{...}` group of paths after `prefix::`.
fn tree(c: &mut Cursor<'_>, prefix: Module, out: &mut Vec<Module>) {
    let mut path = prefix;
    loop {
        if c.eat("{") {
            loop {
                c.skip_ws();
                if c.eat("}") || c.rest().is_empty() {
                    return;
                }
                let before = c.i;
                tree(c, path.clone(), out);
                c.skip_ws();
                if c.rest().starts_with("as ") {
                    c.i += 3;
                    c.skip_ws();
                    c.ident();
                    c.skip_ws();
                }
                if !c.eat(",") && c.i == before {
                    c.i += c.rest().chars().next().map_or(0, char::len_utf8);
                }
            }
        }
        if c.eat("*") {
            out.push(path);
            return;
        }
        match c.ident() {
            Some(id) if id == "self" => {}
            Some(id) => path.push(id),
            None => {
                out.push(path);
                return;
            }
        }
        if !c.eat("::") {
            out.push(path);
            return;
        }
    }
}

/// Which module files each module refers to. A module and its own ancestors or
/// descendants are not counted: a parent declares its children and they use it.
fn graph(sources: &BTreeMap<Module, Source>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut edges = BTreeMap::new();
    for (me, src) in sources {
        let mut targets = BTreeSet::new();
        for path in named_paths(&src.code, me) {
            let Some(target) = (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| sources.contains_key(p)) else {
                continue;
            };
            if !target.starts_with(me) && !me.starts_with(&target) {
                targets.insert(target);
            }
        }
        edges.insert(me.clone(), targets);
    }
    edges
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// The groups of modules that reach each other (strongly connected, more than one).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    let reach = |from: &Module| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(m) = todo.pop() {
            for n in edges.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&Module, BTreeSet<Module>> = edges.keys().map(|m| (m, reach(m))).collect();
    let mut placed = BTreeSet::new();
    let mut groups = Vec::new();
    for m in edges.keys() {
        if placed.contains(m) || !reached[m].contains(m) {
            continue;
        }
        let group: Vec<Module> = reached[m].iter().filter(|n| reached[*n].contains(m)).cloned().collect();
        placed.extend(group.iter().cloned());
        groups.push(group);
    }
    groups
}

fn refers(edges: &BTreeMap<Module, BTreeSet<Module>>, from: &Module, to_prefix: &[&str]) -> Vec<String> {
    edges[from].iter().filter(|t| t.starts_with(&to_prefix.iter().map(|s| s.to_string()).collect::<Vec<_>>())).map(name).collect()
}

fn module(path: &str) -> Module {
    path.split("::").map(str::to_string).collect()
}

#[test]
fn no_module_of_the_controller_reaches_itself_through_others() {
    let edges = graph(&sources());
    let found: Vec<String> = cycles(&edges)
        .iter()
        .map(|group| {
            let links: Vec<String> = group
                .iter()
                .flat_map(|a| edges[a].iter().filter(|b| group.contains(b)).map(move |b| format!("{} -> {}", name(a), name(b))))
                .collect();
            links.join(", ")
        })
        .collect();
    assert!(found.is_empty(), "import cycles between controller modules (move what both need to a leaf module):\n{}", found.join("\n"));
}

#[test]
fn fleet_discovery_knows_nothing_of_the_runbooks() {
    let edges = graph(&sources());
    for m in edges.keys().filter(|m| m.first().is_some_and(|f| f == "fleet")) {
        let bad = refers(&edges, m, &["runbooks"]);
        assert!(bad.is_empty(), "{} refers to {bad:?}: the runbooks' targets belong in runbooks::targets", name(m));
    }
}

#[test]
fn the_config_sections_do_not_import_the_controller_config() {
    let edges = graph(&sources());
    for section in ["runbooks::config", "maintenance::config"] {
        let bad = refers(&edges, &module(section), &["config"]);
        assert!(bad.is_empty(), "{section} refers to {bad:?}: ControllerConfig holds the sections, not the other way round (durations: crate::duration_text)");
    }
    assert!(refers(&edges, &module("duration_text"), &[]).is_empty(), "duration_text is a leaf");
}

#[test]
fn only_the_fleet_and_the_runbook_targets_apply_the_emulator_guard() {
    let sources = sources();
    let using = |needle: &str| -> Vec<String> {
        sources.values().filter(|s| s.code.contains(needle)).map(|s| s.file.clone()).collect()
    };
    assert_eq!(using("may_dial("), ["fleet/ec2.rs", "runbooks/targets.rs"], "the dial guard is fleet::ec2::may_dial, applied where targets are chosen");
    assert_eq!(using("is_loopback_host("), ["aws/mod.rs", "fleet/ec2.rs"], "loopback decisions about AWS addresses go through fleet::ec2::may_dial");
}

#[test]
fn the_reader_sees_paths_in_groups_strings_and_supers() {
    let code = "use crate::{a::b::{C, d}, e as f};\n#[serde(with = \"crate::g\")]\nuse super::super::h::I;\nfn x() { super::j(); }\n";
    let me = module("k::l::m");
    let paths: BTreeSet<String> = named_paths(code, &me).iter().map(name).collect();
    let want: BTreeSet<String> = ["a::b::C", "a::b::d", "e", "g", "k::h::I", "k::l::j"].iter().map(|s| s.to_string()).collect();
    assert_eq!(paths, want);
    let paths: Vec<String> = named_paths("use super::n;", &module("k::l")).iter().map(name).collect();
    assert_eq!(paths, ["k::n"], "super of k::l (k/l.rs or k/l/mod.rs) is k");
    let t = "x\n#[cfg(test)]\n#[allow(clippy::unwrap_used)]\nmod tests {\n use crate::z;\n}\n";
    assert_eq!(without_tests_and_comments(t), "x\n");
}
