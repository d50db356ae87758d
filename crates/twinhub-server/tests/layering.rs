//! The layering rules are executable: every top-level module of the
//! server states in its `//!` doc which modules it "May call:", and this
//! test fails when the code imports one it did not declare, or when the
//! declared graph has a cycle (data flows one way: ingest → validate →
//! twin → store → fan-out → consumers; the API and `server` sit on top).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level modules: `src/x.rs` and `src/x/mod.rs`, with all their files.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(src()).unwrap().flatten() {
        let p = e.path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" {
            continue;
        }
        if p.is_dir() {
            let mut files = Vec::new();
            walk(&p, &mut files);
            out.entry(name).or_default().extend(files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.entry(name).or_default().push(p);
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its unit tests and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or("")
        .to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module's root file (`x.rs` or `x/mod.rs`).
fn root_file(name: &str) -> PathBuf {
    let flat = src().join(format!("{name}.rs"));
    if flat.exists() {
        flat
    } else {
        src().join(name).join("mod.rs")
    }
}

/// What the module's doc declares after "May call:" (to the end of that
/// doc paragraph), as module names; None for "every module".
fn declared(name: &str, all: &BTreeSet<String>) -> Option<BTreeSet<String>> {
    let text = std::fs::read_to_string(root_file(name)).unwrap();
    let doc: Vec<&str> = text
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").trim())
        .collect();
    let joined = doc.join("\n");
    let Some(i) = joined.find("May call:") else {
        return Some(BTreeSet::new());
    };
    let para = joined[i + "May call:".len()..]
        .split("\n\n")
        .next()
        .unwrap_or("");
    if para.contains("every module") {
        return None;
    }
    // Module names are the words in backticks.
    Some(
        para.split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| all.contains(*w))
            .map(str::to_string)
            .collect(),
    )
}

fn imports(files: &[PathBuf], own: &str, all: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in files {
        let c = code(f);
        for (i, _) in c.match_indices("crate::") {
            let rest = &c[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
                .collect();
            if name != own && all.contains(&name) {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_module_imports_only_what_its_doc_declares() {
    let mods = modules();
    let all: BTreeSet<String> = mods.keys().cloned().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, files) in &mods {
        let used = imports(files, name, &all);
        match declared(name, &all) {
            None => {}
            Some(allowed) => {
                for u in used.difference(&allowed) {
                    problems.push(format!(
                        "`{name}` imports `{u}`, which its \"May call:\" line does not declare"
                    ));
                }
                graph.insert(name.clone(), allowed);
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // No cycles in the declared graph.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(n) {
            return;
        }
        assert!(
            !path.iter().any(|p| p == n),
            "a cycle in the declared layering: {} → {n}",
            path.join(" → ")
        );
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            visit(m, g, path, done);
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        visit(n, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn nothing_below_the_api_imports_it() {
    let mods = modules();
    let all: BTreeSet<String> = mods.keys().cloned().collect();
    for (name, files) in &mods {
        if name == "api" || name == "server" {
            continue;
        }
        assert!(
            !imports(files, name, &all).contains("api"),
            "`{name}` imports the API"
        );
    }
}
