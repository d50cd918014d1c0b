//! The source keeps the shape the README describes: modules import only
//! from their own layer or the layers below, no two modules import each
//! other (directly or around a loop), and one module declares every foreign
//! function. Read from the source text, as `grep` would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers, lowest first; a module belongs to the first entry that is its
/// path or a folder above it.
const LAYERS: &[&[&str]] = &[
    &["ffi", "logging", "signals", "mail", "pki", "metrics"],
    &["config"],
    &["stores"],
    &["smime"],
    &[
        "runtime",
        "policy",
        "outcome",
        "privileges",
        "auth_results",
        "visible",
    ],
    &["inbound", "outbound"],
    &["session"],
    &["live", "reload", "testmode", "admin", "exporter"],
    &["milter"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|names| {
            names
                .iter()
                .any(|n| module == *n || module.starts_with(&format!("{n}/")))
        })
        .unwrap_or_else(|| panic!("module {module} is in no layer of tests/layout.rs"))
}

/// Every module under src/ by path ("smime/verify/cms"), with its text up
/// to its unit tests.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, base, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(base).unwrap().with_extension("");
                let mut name = rel.to_string_lossy().into_owned();
                if let Some(parent) = name.strip_suffix("/mod") {
                    name = parent.to_string();
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(i) => &text[..i],
                    None => &text,
                };
                let code: String = code
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                out.insert(name, code);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&src, &src, &mut out);
    out
}

/// `lib.rs` names modules by their own names too (`pub use mail::{mime}`).
fn aliases(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("pub use ") else {
            continue;
        };
        let Some((folder, names)) = rest.split_once("::{") else {
            continue;
        };
        for n in names.trim_end_matches("};").split(',') {
            out.insert(n.trim().to_string(), format!("{folder}/{}", n.trim()));
        }
    }
    out
}

/// The identifier paths that follow each `prefix` in `text`; a `{a, b::c}`
/// group gives one path per member.
fn paths_after(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for (i, _) in text.match_indices(prefix) {
        if text[..i].ends_with(|c: char| ident(c) || c == ':') {
            continue;
        }
        let rest = &text[i + prefix.len()..];
        let heads: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => group[..group.find('}').unwrap_or(0)].split(',').collect(),
            None => vec![rest],
        };
        for head in heads {
            let head = head.trim_start();
            let end = head
                .find(|c: char| !(ident(c) || c == ':'))
                .unwrap_or(head.len());
            let path: Vec<String> = head[..end]
                .split("::")
                .take_while(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if !path.is_empty() {
                out.push(path);
            }
        }
    }
    out
}

/// The module a path names: the longest module prefix of it.
fn resolve(
    mods: &BTreeMap<String, String>,
    aliases: &BTreeMap<String, String>,
    mut base: String,
    rest: &[String],
) -> String {
    for seg in rest {
        let candidate = if base.is_empty() {
            aliases.get(seg).cloned().unwrap_or_else(|| seg.clone())
        } else {
            format!("{base}/{seg}")
        };
        if mods.contains_key(&candidate) {
            base = candidate;
        } else {
            break;
        }
    }
    base
}

/// Module -> the modules it uses.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let aliases = aliases(&mods["lib"]);
    let mut graph = BTreeMap::new();
    for (name, code) in &mods {
        if name == "lib" || name == "main" {
            continue;
        }
        let parent = name.rsplit_once('/').map_or("", |(p, _)| p).to_string();
        let mut deps = BTreeSet::new();
        for p in paths_after(code, "crate::") {
            deps.insert(resolve(&mods, &aliases, String::new(), &p));
        }
        for p in paths_after(code, "super::") {
            deps.insert(resolve(&mods, &aliases, parent.clone(), &p));
        }
        // A parent that names its child's items (`child::item`).
        for child in mods.keys() {
            if let Some(leaf) = child
                .strip_prefix(&format!("{name}/"))
                .filter(|l| !l.contains('/'))
            {
                if !paths_after(code, &format!("{leaf}::")).is_empty() {
                    deps.insert(child.clone());
                }
            }
        }
        deps.remove(name);
        deps.retain(|d| mods.contains_key(d) && d != "lib");
        graph.insert(name.clone(), deps);
    }
    graph
}

#[test]
fn the_import_graph_has_no_cycle() {
    let graph = imports();
    assert!(graph["inbound"].contains("smime/verify"), "{graph:?}");
    assert!(graph["stores/keystore"].contains("config"), "{graph:?}");
    // Depth-first search; a back edge is a cycle.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| s == m) {
            panic!("import cycle: {} -> {m}", stack[i..].join(" -> "));
        }
        stack.push(m.to_string());
        for d in &graph[m] {
            visit(d, graph, stack, done);
        }
        stack.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn modules_import_only_their_layer_and_those_below() {
    let mut wrong = Vec::new();
    for (m, deps) in imports() {
        for d in deps {
            if layer_of(&d) > layer_of(&m) {
                wrong.push(format!("{m} -> {d}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports upwards: {wrong:#?}");
}

#[test]
fn one_module_declares_the_foreign_functions() {
    let with_ffi: Vec<String> = modules()
        .into_iter()
        .filter(|(_, code)| code.contains("extern \"C\""))
        .map(|(m, _)| m)
        .collect();
    assert_eq!(with_ffi, ["ffi"]);
}

#[test]
fn every_unsafe_block_says_why_it_is_sound() {
    let mut unexplained = Vec::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for m in modules().keys() {
        let file = ["", "/mod"]
            .iter()
            .map(|s| src.join(format!("{m}{s}.rs")))
            .find(|p| p.exists())
            .unwrap();
        let lines: Vec<String> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        for (i, line) in lines.iter().enumerate() {
            // An unsafe block, not the word in a string or a comment.
            let code_block = line.match_indices("unsafe {").any(|(at, _)| {
                line[..at].matches('"').count() % 2 == 0 && !line[..at].contains("//")
            });
            if !code_block {
                continue;
            }
            // The SAFETY comment stands in the lines just above (a long
            // statement may open a few lines before its unsafe block).
            let above = &lines[i.saturating_sub(8)..i];
            if !above.iter().any(|l| l.contains("SAFETY:")) && !line.contains("SAFETY:") {
                unexplained.push(format!("{}:{}", file.display(), i + 1));
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "unsafe without SAFETY: {unexplained:#?}"
    );
}
