//! The files a conversion writes: `test.rhai`, `test.json` and, when the
//! script has Nix interpolations, `test-script.nix`.
//!
//! Nix `${…}` interpolations stand in the Python as placeholders (see
//! [`super::nix::placeholder`]). In `test.rhai` they come back verbatim inside
//! ordinary `"…"` Rhai strings (which never interpolate), escaped as Rhai
//! requires, so `attest check` reads the script. `test-script.nix` is the
//! same script as a Nix indented string with Rhai's own `${` and `''`
//! escaped and the interpolations verbatim, to paste as `testScript = …;`
//! where the original's `let` bindings are in scope: Nix then fills them in.

use std::path::{Component, Path, PathBuf};

use super::nix::placeholder;

/// Puts the interpolations back for `test.rhai`.
pub fn rhai_script(rhai: &str, interpolations: &[String]) -> String {
    if interpolations.is_empty() {
        return rhai.to_owned();
    }
    let mut out = String::with_capacity(rhai.len());
    for line in rhai.split_inclusive('\n') {
        let comment = line.trim_start().starts_with("//");
        let mut l = line.to_owned();
        // Highest index first: `__nix_interp_1__` is not a prefix of
        // `__nix_interp_10__`, but replace in a fixed order all the same.
        for (i, text) in interpolations.iter().enumerate().rev() {
            let p = placeholder(i);
            if l.contains(&p) {
                let shown = if comment {
                    text.clone()
                } else {
                    text.replace('\\', "\\\\").replace('"', "\\\"")
                };
                l = l.replace(&p, &shown);
            }
        }
        out.push_str(&l);
    }
    out
}

/// The script as a Nix indented string, interpolations live.
pub fn nix_script(rhai: &str, interpolations: &[String]) -> String {
    let escape = |s: &str| s.replace("''", "'''").replace("${", "''${");
    let mut escaped = String::new();
    for line in rhai.split_inclusive('\n') {
        let mut l = escape(line);
        // In comments (TODO lines) an interpolation stays text: a rendered
        // value with a line break would turn the rest of the line into code.
        let comment = line.trim_start().starts_with("//");
        for (i, text) in interpolations.iter().enumerate().rev() {
            let shown = if comment { escape(text) } else { text.clone() };
            l = l.replace(&placeholder(i), &shown);
        }
        escaped.push_str(&l);
    }
    let body: String = escaped
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_owned()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    format!(
        "# The converted testScript for Nix: paste it as `testScript = <this>;` in the\n\
         # original file, where the names its interpolations use are in scope.\n''\n{body}''\n"
    )
}

/// Which backend the generated config uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// systemd-nspawn with the Debian test image.
    Nspawn,
    /// QEMU with the Debian test image.
    Qemu,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nspawn" => Ok(Backend::Nspawn),
            "qemu" => Ok(Backend::Qemu),
            other => Err(format!(
                "`{other}`: convert writes configs for nspawn or qemu (the Debian test image); \
                 write other backends' settings by hand (README, \"The test config\")"
            )),
        }
    }
}

/// What a node's calls in the script need of its backend: QEMU (a display,
/// a keyboard, the monitor, virtual terminals: what nspawn refuses, by the
/// capability table `attest check` reads) and OCR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeNeeds {
    /// A capability nspawn does not have.
    pub qemu: bool,
    /// `get_screen_text`, `get_screen_text_variants` or `wait_for_text`.
    pub ocr: bool,
}

/// [`NodeNeeds`] of `node` from the calls `<node>.method(` in `rhai` (and
/// `machine.method(` when it is the only node).
pub fn node_needs(rhai: &str, node: &str, single: bool) -> NodeNeeds {
    use crate::backend::capability::{support, Capability};
    let nspawn = crate::config::BackendConfig::Nspawn(Default::default());
    let mut receivers = vec![crate::config::script_name(node)];
    if single {
        receivers.push("machine".into());
    }
    let mut needs = NodeNeeds::default();
    for r in receivers {
        let calls = regex::Regex::new(&format!(r"\b{}\.(\w+)\(", regex::escape(&r)))
            .expect("a valid regex");
        for m in calls.captures_iter(rhai) {
            let Some(cap) = Capability::of_method(&m[1]) else {
                continue;
            };
            needs.qemu |= support(&nspawn, cap).is_err();
            needs.ocr |= cap == Capability::ScreenText;
        }
    }
    needs
}

/// `test.json`: every node on the chosen backend with the Debian image — a
/// placeholder for the NixOS configuration the original builds. A node whose
/// calls nspawn cannot do (a screen, keys) goes on QEMU, with OCR when it
/// reads the screen, so the result passes `attest check`. `global_timeout`
/// is the NixOS test's `globalTimeout`.
pub fn config(
    name: &str,
    nodes: &[String],
    backend: Backend,
    image: &str,
    rhai: &str,
    global_timeout: u64,
) -> String {
    let mut node_map = serde_json::Map::new();
    for n in nodes {
        let needs = node_needs(rhai, n, nodes.len() == 1);
        let key = match backend {
            Backend::Nspawn if !needs.qemu => "nspawn",
            _ => "qemu",
        };
        let mut settings = serde_json::json!({ "image": image });
        if key == "qemu" && needs.ocr {
            settings["enable_ocr"] = true.into();
        }
        node_map.insert(
            n.clone(),
            serde_json::json!({ "backend": { key: settings } }),
        );
    }
    let config = serde_json::json!({
        "version": 1,
        "name": name,
        "script": "test.rhai",
        "global_timeout": global_timeout,
        "nodes": node_map,
    });
    let mut s = serde_json::to_string_pretty(&config).unwrap_or_default();
    s.push('\n');
    s
}

/// `path` relative to directory `from` (both made absolute against the
/// current directory; symlinks are not resolved).
pub fn relative(path: &Path, from: &Path) -> PathBuf {
    let abs = |p: &Path| -> Vec<String> {
        let p = if p.is_absolute() {
            p.to_owned()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        let mut parts: Vec<String> = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
                Component::ParentDir => {
                    parts.pop();
                }
                _ => {}
            }
        }
        parts
    };
    let (p, f) = (abs(path), abs(from));
    let common = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for part in &p[common..] {
        out.push(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolations_survive_both_forms() {
        let interp = vec![r#"${pkgs.writeText "a" x}"#.to_owned()];
        let rhai = "// TODO(convert): m.succeed(\"cat __nix_interp_0__\")\nm.succeed(\"cat __nix_interp_0__ ''\");\nlet x = `${y}`;\n";
        let r = rhai_script(rhai, &interp);
        assert!(r.contains(r#"// TODO(convert): m.succeed("cat ${pkgs.writeText "a" x}")"#));
        assert!(r.contains(r#"m.succeed("cat ${pkgs.writeText \"a\" x} ''");"#));
        let n = nix_script(rhai, &interp);
        assert!(n.contains(r#"m.succeed("cat ${pkgs.writeText "a" x} '''");"#));
        assert!(n.contains("let x = `''${y}`;"));
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative(Path::new("/a/images/m.json"), Path::new("/a/out/t")),
            PathBuf::from("../../images/m.json")
        );
    }
}
