//! Finding the tests in a nixpkgs test file, read as syntax with `rnix`
//! (never evaluated: the files import helpers from all over nixpkgs).
//!
//! Every attribute set with a `testScript` attribute is one test, whatever
//! wraps it: `import ./make-test-python.nix ({ pkgs, ... }: { … })`, the bare
//! attrsets of `runTest`, `makeTest { … }` inside `mapAttrs` or `let`.

use rnix::ast::{self, HasEntry, InterpolPart};
use rowan::ast::AstNode;

/// One test found in a `.nix` file.
#[derive(Debug, Clone)]
pub struct NixTest {
    /// `name = "…"`, else the attribute the test is bound to, else the file stem.
    pub name: String,
    /// Node names from `nodes.X`, `nodes = { X = …; }` or `machine = …`;
    /// `None` when `nodes` is not a literal attrset (then they are guessed
    /// from the script).
    pub nodes: Option<Vec<String>>,
    /// The testScript, or why it could not be read as one string.
    pub script: Result<PythonSource, String>,
    /// Line of the `testScript` attribute in the file (1-based).
    pub line: usize,
    /// `globalTimeout` in seconds, when it is a literal (or a product of
    /// literals, `60 * 60`).
    pub global_timeout: Option<u64>,
}

/// A Python testScript with every Nix `${…}` replaced by a placeholder
/// (see [`placeholder`]) so that a Python parser can read it.
#[derive(Debug, Clone, Default)]
pub struct PythonSource {
    /// The Python text.
    pub text: String,
    /// The interpolations' Nix source, `${…}` included, by placeholder index.
    pub interpolations: Vec<String>,
    /// File line of the Python text's first line, minus one.
    pub line_offset: usize,
    /// What the reader should know about where the text came from (the one
    /// string branch of a Nix `if`).
    pub note: Option<String>,
}

/// The stand-in for Nix interpolation `i` in the Python text: an identifier
/// that also survives inside string literals and f-strings unchanged.
pub fn placeholder(i: usize) -> String {
    format!("__nix_interp_{i}__")
}

/// Reads every test in a Nix file. `stem` names a test that has no name.
pub fn extract(source: &str, stem: &str) -> Result<Vec<NixTest>, String> {
    let parse = rnix::Root::parse(source);
    if let Some(e) = parse.errors().first() {
        return Err(format!("not valid Nix: {e}"));
    }
    let root = parse.tree();
    let mut tests = Vec::new();
    for node in root.syntax().descendants() {
        let Some(set) = ast::AttrSet::cast(node) else {
            continue;
        };
        let Some(script) = attr(&set, &["testScript"]) else {
            continue;
        };
        let line = line_of(source, script.syntax().text_range().start().into());
        tests.push(NixTest {
            name: test_name(&set).unwrap_or_else(|| stem.to_owned()),
            nodes: node_names(&set),
            script: script_source(source, script),
            line,
            global_timeout: attr(&set, &["globalTimeout"]).and_then(int_product),
        });
    }
    // Two tests of one file must not share an output directory.
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for t in &mut tests {
        let n = seen.entry(t.name.clone()).or_default();
        *n += 1;
        if *n > 1 {
            t.name = format!("{}-{}", t.name, n);
        }
    }
    Ok(tests)
}

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

/// The attribute names of an attrpath, when every part is static.
fn path_names(path: &ast::Attrpath) -> Option<Vec<String>> {
    path.attrs().map(|a| static_attr(&a)).collect()
}

fn static_attr(a: &ast::Attr) -> Option<String> {
    match a {
        ast::Attr::Ident(i) => Some(i.ident_token()?.text().to_owned()),
        ast::Attr::Str(s) => static_string(s),
        ast::Attr::Dynamic(_) => None,
    }
}

fn static_string(s: &ast::Str) -> Option<String> {
    let mut out = String::new();
    for part in s.normalized_parts() {
        match part {
            InterpolPart::Literal(l) => out.push_str(&l),
            InterpolPart::Interpolation(_) => return None,
        }
    }
    Some(out)
}

/// The value of `path` in `set` (`a.b = v;` or `a = { b = v; };`).
fn attr(set: &impl HasEntry, path: &[&str]) -> Option<ast::Expr> {
    for entry in set.attrpath_values() {
        let Some(names) = entry.attrpath().as_ref().and_then(path_names) else {
            continue;
        };
        if names.len() <= path.len() && names.iter().zip(path).all(|(a, b)| a == b) {
            let value = entry.value()?;
            if names.len() == path.len() {
                return Some(value);
            }
            if let ast::Expr::AttrSet(inner) = unwrap(value) {
                if let Some(v) = attr(&inner, &path[names.len()..]) {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// An integer literal or a product of them.
fn int_product(e: ast::Expr) -> Option<u64> {
    match unwrap(e) {
        ast::Expr::Literal(l) => match l.kind() {
            ast::LiteralKind::Integer(i) => u64::try_from(i.value().ok()?).ok(),
            _ => None,
        },
        ast::Expr::BinOp(b) if b.operator() == Some(ast::BinOpKind::Mul) => {
            int_product(b.lhs()?)?.checked_mul(int_product(b.rhs()?)?)
        }
        _ => None,
    }
}

/// Looks through parentheses.
fn unwrap(mut e: ast::Expr) -> ast::Expr {
    while let ast::Expr::Paren(p) = &e {
        match p.expr() {
            Some(inner) => e = inner,
            None => break,
        }
    }
    e
}

fn test_name(set: &ast::AttrSet) -> Option<String> {
    if let Some(ast::Expr::Str(s)) = attr(set, &["name"]).map(unwrap) {
        let parts = s.normalized_parts();
        let name: String = parts
            .iter()
            .map(|p| match p {
                InterpolPart::Literal(l) => l.clone(),
                InterpolPart::Interpolation(i) => i.syntax().text().to_string(),
            })
            .collect();
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        // `gitea-${type}` → `gitea-type`, not `gitea---type`.
        let clean = clean
            .split('-')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        if !clean.is_empty() {
            return Some(clean);
        }
    }
    // `foo = makeTest { … };`: the attribute the test is bound to.
    set.syntax()
        .ancestors()
        .filter_map(ast::AttrpathValue::cast)
        .find_map(|av| path_names(&av.attrpath()?)?.last().cloned())
}

fn node_names(set: &ast::AttrSet) -> Option<Vec<String>> {
    // `inherit nodes;`: computed elsewhere.
    let inherited = set.inherits().flat_map(|i| i.attrs().collect::<Vec<_>>());
    for a in inherited {
        if static_attr(&a).is_some_and(|n| n == "nodes" || n == "containers") {
            return None;
        }
    }
    let mut names = Vec::new();
    for entry in set.attrpath_values() {
        let Some(path) = entry.attrpath().as_ref().and_then(path_names) else {
            continue;
        };
        match path.as_slice() {
            // `containers` are the NixOS driver's systemd-nspawn nodes.
            [n, name, ..] if n == "nodes" || n == "containers" => names.push(name.clone()),
            [n] if n == "nodes" || n == "containers" => match entry.value().map(unwrap) {
                Some(ast::Expr::AttrSet(nodes)) => {
                    // `nodes = { inherit server; inherit (common) client; }`.
                    for i in nodes.inherits() {
                        for a in i.attrs() {
                            names.push(static_attr(&a)?);
                        }
                    }
                    for e in nodes.attrpath_values() {
                        let first = e
                            .attrpath()
                            .and_then(|p| p.attrs().next())
                            .and_then(|a| static_attr(&a));
                        names.push(first?);
                    }
                }
                _ => return None,
            },
            [n] if n == "machine" => names.push("machine".into()),
            _ => {}
        }
    }
    names.sort();
    names.dedup();
    (!names.is_empty()).then_some(names)
}

/// The testScript as Python text: a string, or a function of `{ nodes, ... }`
/// or a `let … in` whose body is one.
fn script_source(source: &str, value: ast::Expr) -> Result<PythonSource, String> {
    let mut e = unwrap(value);
    let mut note = None;
    loop {
        e = match e {
            ast::Expr::Lambda(l) => l.body().ok_or("testScript: a function without a body")?,
            ast::Expr::LetIn(l) => l.body().ok_or("testScript: `let … in` without a body")?,
            ast::Expr::Paren(_) => unwrap(e),
            ast::Expr::Str(s) => {
                let mut py = string_source(source, &s);
                py.note = note;
                return Ok(py);
            }
            ast::Expr::BinOp(b) if b.operator() == Some(ast::BinOpKind::Add) => {
                let mut py = concat_source(source, b)?;
                py.note = note;
                return Ok(py);
            }
            // `if testScript != null then testScript else ''…''`: a test
            // factory's default script, the one branch written out.
            ast::Expr::IfElse(i) if note.is_none() => {
                let cond = i.condition().map(|c| c.syntax().text().to_string());
                let cond = cond
                    .as_deref()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                let (then, other) = (i.body(), i.else_body());
                match (then.clone().and_then(string_in), other.clone().and_then(string_in)) {
                    (Some(_), None) => {
                        note = Some(format!("the testScript is chosen by Nix (`if {cond} then … else …`): this is its `then` branch, the other one is not a string"));
                        then.ok_or("testScript: `if` without `then`")?
                    }
                    (None, Some(_)) => {
                        note = Some(format!("the testScript is chosen by Nix (`if {cond} then … else …`): this is its `else` branch, the other one is not a string"));
                        other.ok_or("testScript: `if` without `else`")?
                    }
                    _ => {
                        return Err(format!(
                            "the testScript is chosen by Nix (`if {cond} then … else …`) between two strings or none: convert it by hand"
                        ))
                    }
                }
            }
            other => {
                let text = other.syntax().text().to_string();
                let first = text.lines().next().unwrap_or("").trim();
                return Err(format!(
                    "the testScript is computed by Nix (`{first}`), not a string: convert it by hand"
                ));
            }
        }
    }
}

/// The string a testScript value comes down to through functions, `let`
/// and parentheses.
fn string_in(e: ast::Expr) -> Option<ast::Str> {
    match unwrap(e) {
        ast::Expr::Lambda(l) => string_in(l.body()?),
        ast::Expr::LetIn(l) => string_in(l.body()?),
        ast::Expr::Str(s) => Some(s),
        _ => None,
    }
}

fn string_source(source: &str, s: &ast::Str) -> PythonSource {
    let mut out = PythonSource::default();
    append_string(&mut out, source, s);
    out
}

/// `''…'' + extraTest + lib.optionalString c ''…''`: the strings' Python
/// in order, each other operand a Nix interpolation on a line of its own,
/// which Nix splices in as code (a TODO where it stands).
fn concat_source(source: &str, sum: ast::BinOp) -> Result<PythonSource, String> {
    fn operands(e: ast::Expr, out: &mut Vec<ast::Expr>) {
        match unwrap(e) {
            ast::Expr::BinOp(b) if b.operator() == Some(ast::BinOpKind::Add) => {
                if let Some(l) = b.lhs() {
                    operands(l, out);
                }
                if let Some(r) = b.rhs() {
                    operands(r, out);
                }
            }
            other => out.push(other),
        }
    }
    let mut parts = Vec::new();
    operands(ast::Expr::BinOp(sum), &mut parts);
    if !parts.iter().any(|p| matches!(p, ast::Expr::Str(_))) {
        let text = parts
            .first()
            .map(|p| p.syntax().text().to_string())
            .unwrap_or_default();
        return Err(format!(
            "the testScript is computed by Nix (`{} + …`), not a string: convert it by hand",
            text.lines().next().unwrap_or("").trim()
        ));
    }
    let mut out = PythonSource::default();
    let mut first_string = true;
    for p in parts {
        if !out.text.is_empty() && !out.text.ends_with('\n') {
            out.text.push('\n');
        }
        match p {
            ast::Expr::Str(s) => {
                let before = out.text.matches('\n').count();
                let mut piece = PythonSource::default();
                append_string(&mut piece, source, &s);
                if first_string {
                    out.line_offset = piece.line_offset.saturating_sub(before);
                    first_string = false;
                }
                let base = out.interpolations.len();
                append_renumbered(&mut out.text, &piece.text, base);
                out.interpolations.extend(piece.interpolations);
            }
            // `lib.optionalString cond ''…''`: the code, converted, after a
            // marker (a TODO) naming the condition Nix includes it under.
            ast::Expr::Apply(a) if optional_string(&a).is_some() => {
                let (cond, s) = optional_string(&a).unwrap_or_else(|| unreachable!());
                out.text.push_str(&placeholder(out.interpolations.len()));
                out.text.push('\n');
                let cond = cond.split_whitespace().collect::<Vec<_>>().join(" ");
                out.interpolations
                    .push(format!("${{lib.optionalString ({cond}) ''…''}}"));
                let mut piece = PythonSource::default();
                append_string(&mut piece, source, &s);
                if first_string {
                    out.line_offset = piece
                        .line_offset
                        .saturating_sub(out.text.matches('\n').count());
                    first_string = false;
                }
                let base = out.interpolations.len();
                append_renumbered(&mut out.text, &piece.text, base);
                out.interpolations.extend(piece.interpolations);
            }
            other => {
                out.text.push_str(&placeholder(out.interpolations.len()));
                out.text.push('\n');
                // Shown only in a TODO comment: one line.
                let text = other.syntax().text().to_string();
                let mut shown = text.split_whitespace().collect::<Vec<_>>().join(" ");
                if shown.chars().count() > 100 {
                    shown = shown.chars().take(100).collect::<String>() + " …";
                }
                out.interpolations.push(format!("${{{shown}}}"));
            }
        }
    }
    Ok(out)
}

/// `optionalString cond ''…''` (any `….optionalString`): the condition's
/// Nix text and the string.
fn optional_string(a: &ast::Apply) -> Option<(String, ast::Str)> {
    let ast::Expr::Str(s) = unwrap(a.argument()?) else {
        return None;
    };
    let ast::Expr::Apply(inner) = a.lambda()? else {
        return None;
    };
    let f = inner.lambda()?.syntax().text().to_string();
    if f == "optionalString" || f.ends_with(".optionalString") {
        Some((inner.argument()?.syntax().text().to_string(), s))
    } else {
        None
    }
}

/// Appends `text`, its placeholders `i` renumbered `base + i`.
fn append_renumbered(out: &mut String, text: &str, base: usize) {
    let mut rest = text;
    while let Some(at) = rest.find("__nix_interp_") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "__nix_interp_".len()..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(i) if after[digits..].starts_with("__") => {
                out.push_str(&placeholder(base + i));
                rest = &after[digits + 2..];
            }
            _ => {
                out.push_str("__nix_interp_");
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

fn append_string(out: &mut PythonSource, source: &str, s: &ast::Str) {
    let start: usize = s.syntax().text_range().start().into();
    let mut first_line = line_of(source, start);
    let parts = s.normalized_parts();
    // `normalized_parts` drops the line break right after an opening `''`.
    if let Some(InterpolPart::Literal(_)) = parts.first() {
        let raw: String = s.syntax().text().to_string();
        if let Some(rest) = raw.strip_prefix("''") {
            if rest.split('\n').next().is_some_and(|l| l.trim().is_empty()) && rest.contains('\n') {
                first_line += 1;
            }
        }
    }
    out.line_offset = first_line - 1;
    for part in parts {
        match part {
            InterpolPart::Literal(l) => out.text.push_str(&l),
            InterpolPart::Interpolation(i) => {
                out.text.push_str(&placeholder(out.interpolations.len()));
                out.interpolations.push(i.syntax().text().to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_era() {
        let wrapped = r#"import ./make-test-python.nix ({ pkgs, ... }: {
  name = "nginx";
  nodes.server = { ... }: { };
  nodes.client = { ... }: { };
  testScript = ''
    start_all()
    server.succeed("${pkgs.curl}/bin/curl -s localhost")
  '';
})"#;
        let t = &extract(wrapped, "f").unwrap()[0];
        assert_eq!(t.name, "nginx");
        assert_eq!(t.nodes.as_deref().unwrap(), ["client", "server"]);
        let s = t.script.as_ref().unwrap();
        assert_eq!(
            s.text,
            "start_all()\nserver.succeed(\"__nix_interp_0__/bin/curl -s localhost\")\n"
        );
        assert_eq!(s.interpolations, ["${pkgs.curl}"]);
        assert_eq!(s.line_offset, 5);

        let single = "{ machine = { }; testScript = { nodes, ... }: let x = 1; in \"machine.succeed('true')\"; }";
        let t = &extract(single, "stem").unwrap()[0];
        assert_eq!(t.name, "stem");
        assert_eq!(t.nodes.as_deref().unwrap(), ["machine"]);
        assert_eq!(t.script.as_ref().unwrap().text, "machine.succeed('true')");

        let multi = r#"{ lib, ... }: lib.mapAttrs (n: v: v) {
  first = makeTest { nodes = { a = { }; "b" = { }; }; testScript = "a.succeed('x')"; };
  second = makeTest { nodes = lib.genAttrs [ "a" ] (_: { }); testScript = lib.concatStrings [ ]; };
}"#;
        let ts = extract(multi, "f").unwrap();
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[0].name, "first");
        assert_eq!(ts[0].nodes.as_deref().unwrap(), ["a", "b"]);
        assert_eq!(ts[1].name, "second");
        assert!(ts[1].nodes.is_none());
        assert!(ts[1]
            .script
            .as_ref()
            .unwrap_err()
            .contains("computed by Nix"));
    }
}
