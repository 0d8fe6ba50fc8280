//! The top-level modules of `src/` form no import cycle: each `crate::x`
//! a module names must not lead back to it (README, "How it works", lists
//! the layers). Read from the source text, `#[cfg(test)] mod tests` left out.

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
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let code: String = code
            .lines()
            .map(|l| l.split("//").next().unwrap())
            .collect::<Vec<_>>()
            .join("\n");
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

#[test]
fn top_level_modules_form_no_import_cycle() {
    let g = graph();
    assert!(
        g.contains_key("backend") && g["machine"].contains("backend"),
        "{g:?}"
    );
    // A path back from each dependency to the module is a cycle.
    for (module, deps) in &g {
        for start in deps {
            let mut seen = BTreeSet::new();
            let mut stack = vec![(start.clone(), vec![module.clone(), start.clone()])];
            while let Some((m, path)) = stack.pop() {
                assert!(&m != module, "import cycle: {}", path.join(" -> "));
                if seen.insert(m.clone()) {
                    for d in &g[&m] {
                        let mut p = path.clone();
                        p.push(d.clone());
                        stack.push((d.clone(), p));
                    }
                }
            }
        }
    }
}
