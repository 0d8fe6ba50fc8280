//! The modules of `src/` form no import cycle: each `crate::x` a top-level
//! module names must not lead back to it (README, "How it works", lists the
//! layers), and no two modules inside one import each other, even through
//! others (`super::x`, `crate::a::x`). Read from the source text,
//! `#[cfg(test)] mod tests` left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's code: its test module and comments left out.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    code.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level module → the top-level modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let word = regex::Regex::new(r"crate::(\w+)").unwrap();
    let group = regex::Regex::new(r"crate::\{([^}]*)\}").unwrap();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .iter()
            .next()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let code = code_of(&f);
        let deps = g.entry(top.clone()).or_default();
        deps.extend(word.captures_iter(&code).map(|c| c[1].to_owned()));
        for c in group.captures_iter(&code) {
            deps.extend(
                c[1].split(',')
                    .filter_map(|w| w.split("::").next())
                    .map(|w| w.trim().to_owned()),
            );
        }
        deps.remove(&top);
    }
    let known: BTreeSet<String> = g.keys().cloned().collect();
    for deps in g.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    g
}

/// Fails on a path from one of a module's dependencies back to it.
fn assert_acyclic(g: &BTreeMap<String, BTreeSet<String>>) {
    for (module, deps) in g {
        for start in deps {
            let mut seen = BTreeSet::new();
            let mut stack = vec![(start.clone(), vec![module.clone(), start.clone()])];
            while let Some((m, path)) = stack.pop() {
                assert!(&m != module, "import cycle: {}", path.join(" -> "));
                if seen.insert(m.clone()) {
                    for d in g.get(&m).into_iter().flatten() {
                        let mut p = path.clone();
                        p.push(d.clone());
                        stack.push((d.clone(), p));
                    }
                }
            }
        }
    }
}

#[test]
fn top_level_modules_form_no_import_cycle() {
    let g = graph();
    assert!(
        g.contains_key("backend") && g["machine"].contains("backend"),
        "{g:?}"
    );
    assert_acyclic(&g);
}

/// Every module of `src/` by path (`["script", "bindings"]`) → its file.
fn modules() -> BTreeMap<Vec<String>, std::path::PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().with_extension("");
            let mut path: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into()).collect();
            if path.last().is_some_and(|l| l == "mod") || path == ["lib"] || path == ["main"] {
                path.pop();
            }
            (path, f)
        })
        .collect()
}

/// The edges between sibling modules: a use of `b` in `a` counts as one
/// between the children of their common parent that hold them (a parent
/// and its own submodules may use each other).
fn sibling_graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let path = regex::Regex::new(r"\b(?:crate|super|self)(?:::\w+)*(?:::\{[^{}]*\})?").unwrap();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        for m in path.find_iter(&code_of(file)) {
            let (head, group) = match m.as_str().split_once("::{") {
                Some((h, g)) => (h, g.trim_end_matches('}')),
                None => (m.as_str(), ""),
            };
            let mut base = module.clone();
            let mut names = Vec::new();
            for seg in head.split("::") {
                match seg {
                    "crate" => base.clear(),
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    s => names.push(s.to_owned()),
                }
            }
            let mut targets = vec![names.clone()];
            if !group.is_empty() {
                targets = group
                    .split(',')
                    .filter(|p| !p.trim().is_empty())
                    .map(|p| {
                        let mut t = names.clone();
                        t.extend(p.trim().split("::").map(str::to_owned));
                        t
                    })
                    .collect();
            }
            for t in targets {
                let full: Vec<String> = base.iter().cloned().chain(t).collect();
                // The longest module the path names.
                let Some(target) = (0..=full.len())
                    .rev()
                    .map(|n| &full[..n])
                    .find(|p| modules.contains_key(*p))
                else {
                    continue;
                };
                let common = module
                    .iter()
                    .zip(target)
                    .take_while(|(a, b)| a == b)
                    .count();
                if common == module.len() || common == target.len() {
                    continue;
                }
                g.entry(module[..=common].join("::"))
                    .or_default()
                    .insert(target[..=common].join("::"));
            }
        }
    }
    g
}

#[test]
fn sibling_modules_form_no_import_cycle() {
    let g = sibling_graph();
    assert!(
        g.get("script::nixos")
            .is_some_and(|d| d.contains("script::bindings")),
        "{g:?}"
    );
    assert_acyclic(&g);
}
