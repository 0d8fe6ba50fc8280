//! The static check: everything that can be known about a script before a
//! machine boots. Rhai's parser with strict variables finds syntax errors and
//! undefined variables (node names are the scope's constants); a walk over the
//! AST finds calls of unknown functions and methods and wrong arities, checked
//! against the signatures the engine really has.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rhai::{ASTNode, Engine, Expr, Position, Scope, Stmt, AST};

/// One problem in a script, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

/// A script that did not pass the check: every problem, rendered with the
/// source line underlined.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{rendered}")]
pub struct ScriptCheckError {
    /// The problems.
    pub diagnostics: Vec<Diagnostic>,
    /// The human rendering (`file:line:col: error: …` + source + caret).
    pub rendered: String,
}

/// Names the parser handles itself, not registered functions.
const KEYWORD_FNS: &[&str] = &[
    "Fn",
    "call",
    "curry",
    "is_def_fn",
    "is_def_var",
    "is_shared",
    "type_of",
    "print",
    "debug",
    "eval",
    "this",
    "global",
    "exit",
];

/// Checks `source`; `scope` holds the node constants. Returns the AST.
pub fn check(
    engine: &Engine,
    scope: &Scope,
    path: &Path,
    source: &str,
) -> Result<AST, ScriptCheckError> {
    let ast = match engine.compile_with_scope(scope, source) {
        Ok(ast) => ast,
        Err(e) => {
            let pos = e.position();
            let d = Diagnostic {
                line: pos.line().unwrap_or(0),
                column: pos.position().unwrap_or(0),
                message: e.err_type().to_string(),
            };
            return Err(render(path, source, vec![d]));
        }
    };
    let diagnostics = check_calls(engine, &ast, scope);
    if diagnostics.is_empty() {
        Ok(ast)
    } else {
        Err(render(path, source, diagnostics))
    }
}

/// name → the arities it is callable with (method arities count the object).
fn known_functions(engine: &Engine, ast: &AST) -> BTreeMap<String, BTreeSet<usize>> {
    let mut known: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for sig in engine.gen_fn_signatures(true) {
        let Some((name, rest)) = sig.split_once('(') else {
            continue;
        };
        let params = rest.split(')').next().unwrap_or("");
        let arity = if params.trim().is_empty() {
            0
        } else {
            params.split(',').count()
        };
        let name = name
            .trim()
            .trim_start_matches("get$")
            .trim_start_matches("set$");
        known.entry(name.to_owned()).or_default().insert(arity);
    }
    for f in ast.iter_functions() {
        known
            .entry(f.name.to_owned())
            .or_default()
            .insert(f.params.len());
    }
    known
}

fn check_calls(engine: &Engine, ast: &AST, scope: &Scope) -> Vec<Diagnostic> {
    let known = known_functions(engine, ast);
    // Variables may hold closures that are called like functions.
    let mut variables: BTreeSet<String> = scope.iter().map(|(n, ..)| n.to_owned()).collect();
    for f in ast.iter_functions() {
        variables.extend(f.params.iter().map(|p| p.to_string()));
    }
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Stmt(Stmt::Var(x, ..))) = path.last() {
            variables.insert(x.0.name.to_string());
        }
        true
    });
    let mut out = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let (call, pos, is_method) = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, pos))) => (call, *pos, false),
            Some(ASTNode::Expr(Expr::MethodCall(call, pos))) => (call, *pos, true),
            Some(ASTNode::Stmt(Stmt::FnCall(call, pos))) => (call, *pos, false),
            _ => return true,
        };
        if call.op_token.is_some() || !call.namespace.is_empty() {
            return true;
        }
        let name = call.name.as_str();
        if KEYWORD_FNS.contains(&name) || name.starts_with("anon$") {
            return true;
        }
        if !is_method && variables.contains(name) {
            return true;
        }
        let arity = call.args.len() + usize::from(is_method);
        match known.get(name) {
            Some(arities) if arities.contains(&arity) => {}
            Some(arities) => {
                let shown = |n: usize| n - usize::from(is_method);
                let expected: Vec<String> = arities
                    .iter()
                    .filter(|&&a| a >= usize::from(is_method))
                    .map(|&a| shown(a).to_string())
                    .collect();
                out.push(diag(
                    pos,
                    format!(
                        "`{name}` takes {} argument(s), not {}",
                        expected.join(" or "),
                        call.args.len()
                    ),
                ));
            }
            None => {
                let kind = if is_method { "method" } else { "function" };
                let hint = closest(name, known.keys())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                out.push(diag(pos, format!("unknown {kind} `{name}`{hint}")));
            }
        }
        true
    });
    out.sort_by_key(|d| (d.line, d.column));
    out.dedup();
    out
}

fn diag(pos: Position, message: String) -> Diagnostic {
    Diagnostic {
        line: pos.line().unwrap_or(0),
        column: pos.position().unwrap_or(0),
        message,
    }
}

/// The known name closest to `name`, if it is close enough to be a typo.
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    known
        .filter(|k| !k.contains('$'))
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance; a dozen lines are not worth a dependency.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Renders diagnostics as `file:line:col: error: msg`, the source line and a
/// caret under the offending token.
pub fn render(path: &Path, source: &str, diagnostics: Vec<Diagnostic>) -> ScriptCheckError {
    let lines: Vec<&str> = source.lines().collect();
    let mut out = String::new();
    for d in &diagnostics {
        out.push_str(&format!(
            "{}:{}:{}: error: {}\n",
            path.display(),
            d.line,
            d.column,
            d.message
        ));
        if let Some(text) = d.line.checked_sub(1).and_then(|i| lines.get(i)) {
            let col = d.column.max(1);
            let token_len = text
                .chars()
                .skip(col - 1)
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .count()
                .max(1);
            let gutter = d.line.to_string().len();
            out.push_str(&format!("{:gutter$} |\n", ""));
            out.push_str(&format!("{} | {text}\n", d.line));
            out.push_str(&format!(
                "{:gutter$} | {}{}\n",
                "",
                " ".repeat(col - 1),
                "^".repeat(token_len)
            ));
        }
    }
    ScriptCheckError {
        diagnostics,
        rendered: out.trim_end().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{engine, scope_for, ScriptContext};
    use std::sync::Arc;

    fn check_src(src: &str) -> Result<(), String> {
        let reporter = crate::report::Reporter::new("t", &Default::default()).unwrap();
        let ctx = Arc::new(ScriptContext {
            machines: vec![],
            reporter,
            cancel: Default::default(),
            ast: Default::default(),
            base_dir: ".".into(),
        });
        let e = engine(ctx);
        let scope = scope_for(&[
            ("server".into(), rhai::Dynamic::UNIT),
            ("client-1".into(), rhai::Dynamic::UNIT),
        ]);
        check(&e, &scope, Path::new("test.rhai"), src)
            .map(drop)
            .map_err(|e| e.rendered)
    }

    #[test]
    fn a_valid_script_passes() {
        check_src(
            r#"
            start_all();
            server.wait_for_unit("nginx.service");
            let out = succeed(server, "curl -s localhost", #{ timeout: 30 });
            assert_contains(out, "nginx");
            let r = execute(client_1, "true");
            assert_eq(r.status, 0);
            subtest("x", || { client_1.wait_until_succeeds("curl -sf http://server"); });
            retry(#{ attempts: 3, delay: 0.5 }, || server.succeed("true"));
            wait_all([server, client_1], |m| m.wait_for_unit("multi-user.target"));
            fn helper(m) { m.succeed("true") }
            helper(server);
            let f = |x| x + 1;
            f(1);
            "#,
        )
        .unwrap();
    }

    #[test]
    fn diagnostics_are_snapshotted() {
        let cases = [
            "start_all();\nclinet.succeed(\"true\");\n",
            "start_all();\nserver.succed(\"true\");\n",
            "server.wait_for_unit();\n",
            "strat_all();\n",
            "server.succeed(\"true\"\n",
        ];
        let rendered: Vec<String> = cases.iter().map(|c| check_src(c).expect_err(c)).collect();
        insta::assert_snapshot!(rendered.join("\n\n"));
    }
}
