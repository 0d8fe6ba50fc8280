//! `attest convert`: a nixpkgs NixOS test (a `.nix` file, or a bare Python
//! testScript) becomes an attest test — `test.rhai` + `test.json` — plus a
//! summary of what could not be converted.
//!
//! [`nix`] finds the tests in a Nix file (read as syntax), [`python`]
//! translates each testScript, [`output`] writes the files, [`summary`]
//! reports. A statement that cannot be converted is kept as
//! `// TODO(convert): <original line>` at its place; nothing is guessed.

pub mod nix;
pub mod output;
pub mod python;
pub mod summary;

use std::path::{Path, PathBuf};

pub use output::Backend;
pub use summary::{Summary, Todo};

/// What to convert and where the config points.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Node names for a bare Python script (`--nodes`); guessed when empty.
    pub nodes: Vec<String>,
    /// The backend of the generated config.
    pub backend: Backend,
    /// The Debian test image manifest the config points at.
    pub image: PathBuf,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            nodes: Vec::new(),
            backend: Backend::Nspawn,
            image: PathBuf::from("images/debian/out/manifest.json"),
        }
    }
}

/// One converted test, not yet written.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The test name (also its directory in a multi-test file).
    pub name: String,
    /// Node names as the config has them.
    pub nodes: Vec<String>,
    /// `test.rhai`.
    pub rhai: String,
    /// `test-script.nix`, when the script has Nix interpolations.
    pub nix_script: Option<String>,
    /// What is left to do.
    pub summary: Summary,
    /// The test's `globalTimeout` in seconds.
    pub global_timeout: u64,
}

/// The NixOS driver's `globalTimeout` when a test sets none.
pub const NIXOS_GLOBAL_TIMEOUT: u64 = 60 * 60;

/// Converts a file: `.nix` (every test in it) or anything else as a Python
/// testScript.
pub fn convert_file(path: &Path, opts: &ConvertOptions) -> Result<Vec<Conversion>, String> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "test".into());
    if path.extension().is_some_and(|e| e == "nix") {
        let tests = nix::extract(&source, &stem).map_err(|e| format!("{}: {e}", path.display()))?;
        if tests.is_empty() {
            return Err(format!(
                "{}: no attribute set with a `testScript` found",
                path.display()
            ));
        }
        Ok(tests
            .into_iter()
            .map(|t| {
                let nodes = t.nodes.clone();
                let mut c = match t.script {
                    Ok(py) => convert_python(&t.name, &py, nodes.as_deref()),
                    Err(why) => fatal(&t.name, nodes.unwrap_or_default(), t.line, why),
                };
                c.global_timeout = t.global_timeout.unwrap_or(NIXOS_GLOBAL_TIMEOUT);
                c
            })
            .collect())
    } else {
        let py = nix::PythonSource {
            text: source,
            ..Default::default()
        };
        let nodes = (!opts.nodes.is_empty()).then_some(opts.nodes.as_slice());
        Ok(vec![convert_python(&stem, &py, nodes)])
    }
}

/// Converts one Python testScript.
pub fn convert_python(name: &str, py: &nix::PythonSource, nodes: Option<&[String]>) -> Conversion {
    // The script names the nodes by their NixOS Python identifiers (a node
    // `default` is `default` there; the Rhai side maps it to `default_`).
    let py_nodes: Option<Vec<String>> =
        nodes.map(|ns| ns.iter().map(|n| crate::config::python_name(n)).collect());
    match python::Translator::translate(
        &py.text,
        py_nodes.as_deref(),
        &py.interpolations,
        py.line_offset,
    ) {
        Ok(t) => {
            let mut all_nodes: Vec<String> = nodes.map(<[String]>::to_vec).unwrap_or_default();
            all_nodes.extend(t.guessed_nodes.iter().cloned());
            let restore = |s: &str| output::rhai_script(s, &py.interpolations);
            let summary = Summary {
                name: name.to_owned(),
                todos: t
                    .todos
                    .iter()
                    .map(|todo| Todo {
                        line: todo.line + py.line_offset,
                        reason: restore(&todo.reason),
                        original: output::rhai_script(
                            &format!("// {}", todo.original),
                            &py.interpolations,
                        )
                        .trim_start_matches("// ")
                        .to_owned(),
                    })
                    .collect(),
                host_side: t.host_modules.clone(),
                guessed_nodes: t.guessed_nodes.clone(),
                interpolations: py.interpolations.len(),
                notes: py.note.iter().cloned().collect(),
                ..Default::default()
            };
            let header = header(name, &all_nodes, &summary);
            let body = format!("{header}{}", t.rhai);
            Conversion {
                name: name.to_owned(),
                nodes: all_nodes,
                rhai: restore(&body),
                nix_script: (!py.interpolations.is_empty())
                    .then(|| output::nix_script(&body, &py.interpolations)),
                summary,
                global_timeout: NIXOS_GLOBAL_TIMEOUT,
            }
        }
        Err(why) => fatal(
            name,
            nodes.map(<[String]>::to_vec).unwrap_or_default(),
            1 + py.line_offset,
            why,
        ),
    }
}

fn fatal(name: &str, nodes: Vec<String>, line: usize, why: String) -> Conversion {
    let rhai = format!(
        "// Converted by `attest convert`: NOT converted (line {line}): {why}\n// TODO(convert): write this test's script by hand.\n"
    );
    Conversion {
        name: name.to_owned(),
        nodes,
        rhai,
        nix_script: None,
        summary: Summary {
            name: name.to_owned(),
            fatal: Some(why),
            ..Default::default()
        },
        global_timeout: NIXOS_GLOBAL_TIMEOUT,
    }
}

fn header(name: &str, nodes: &[String], summary: &Summary) -> String {
    let mut h = format!(
        "// Converted by `attest convert` from the NixOS test `{name}`.\n\
         // Nodes: {}. Their settings in test.json are placeholders: adapt them.\n",
        if nodes.is_empty() {
            "none found".to_owned()
        } else {
            nodes.join(", ")
        }
    );
    for n in &summary.notes {
        h.push_str(&format!("// Note: {n}.\n"));
    }
    if !summary.todos.is_empty() {
        h.push_str(&format!(
            "// {} statement(s) are marked TODO(convert): they need a hand.\n",
            summary.todos.len()
        ));
    }
    h.push('\n');
    h
}

/// Writes every conversion: to `out` itself for one test, to `out/<name>/`
/// for several. Returns the summaries with their directories.
pub fn write(
    conversions: &[Conversion],
    out: &Path,
    opts: &ConvertOptions,
) -> Result<Vec<Summary>, String> {
    let mut summaries = Vec::new();
    for c in conversions {
        let dir = if conversions.len() == 1 {
            out.to_owned()
        } else {
            out.join(&c.name)
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
        let image = output::relative(&opts.image, &dir);
        let files = [
            ("test.rhai", Some(c.rhai.clone())),
            (
                "test.json",
                Some(output::config(
                    &c.name,
                    &c.nodes,
                    opts.backend,
                    &image.to_string_lossy(),
                    &c.rhai,
                    c.global_timeout,
                )),
            ),
            ("test-script.nix", c.nix_script.clone()),
        ];
        for (file, text) in files {
            let path = dir.join(file);
            match text {
                Some(text) => std::fs::write(&path, text)
                    .map_err(|e| format!("{}: cannot write: {e}", path.display()))?,
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let mut s = c.summary.clone();
        s.out_dir = dir.display().to_string();
        summaries.push(s);
    }
    Ok(summaries)
}

/// The lines of a Rhai script `attest convert` marked for a hand, numbered
/// from 1: the line naming each statement's source line and reason where
/// there is one (older output has only the marked statement lines).
pub fn marked_todos(rhai: &str) -> Vec<(usize, &str)> {
    let marked: Vec<(usize, &str)> = rhai
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| l.starts_with("//") && l.contains(python::TODO_MARK))
        .filter(|(_, l)| !l.contains("statement(s) are marked"))
        .collect();
    let headed = format!("{},", python::TODO_MARK);
    if marked.iter().any(|(_, l)| l.contains(&headed)) {
        marked
            .into_iter()
            .filter(|(_, l)| l.contains(&headed))
            .collect()
    } else {
        marked
    }
}
