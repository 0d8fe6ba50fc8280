//! The static check: everything that can be known about a script before a
//! machine boots. Rhai's parser with strict variables finds syntax errors and
//! undefined variables (node names are the scope's constants); a walk over the
//! AST finds calls of unknown functions and methods and wrong arities, checked
//! against the signatures the engine really has.

use std::any::TypeId;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rhai::{ASTNode, Engine, Expr, ImmutableString, ParseErrorType, Position, Scope, Stmt, AST};

use crate::backend::capability::{self, Capability};
use crate::config::BackendConfig;
use crate::report::failure::underline;

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

/// NixOS driver methods a script cannot call here, and what to do instead.
const NOT_IN_SCRIPTS: &[(&str, &str)] = &[
    (
        "shell_interact",
        "NixOS's interactive shell; run `attest repl CONFIG` (or `attest run --interactive`) and call the machines' methods there",
    ),
    (
        "console_interact",
        "NixOS's interactive console; run `attest repl CONFIG` (or `attest run --interactive`), and send_console(chars) on QEMU",
    ),
];

/// Each node's backend settings, by the names the script knows it by
/// (script name, and `machine` for a single node): (node name, settings).
pub type NodeBackends = BTreeMap<String, (String, BackendConfig)>;

/// Checks `source`; `scope` holds the node constants. Returns the AST, or
/// every problem found (not only the first).
pub fn check(
    engine: &Engine,
    scope: &Scope,
    path: &Path,
    source: &str,
) -> Result<AST, ScriptCheckError> {
    check_with_backends(engine, scope, path, source, &NodeBackends::new())
}

/// [`check`], and calls on a node that its backend will refuse (from the
/// capability table the machines use at run time).
pub fn check_with_backends(
    engine: &Engine,
    scope: &Scope,
    path: &Path,
    source: &str,
    backends: &NodeBackends,
) -> Result<AST, ScriptCheckError> {
    let (ast, mut diagnostics) = compile(engine, scope, source);
    if let Some(ast) = &ast {
        diagnostics.extend(check_calls(engine, ast, scope));
        diagnostics.extend(check_capabilities(ast, backends));
        diagnostics.extend(
            super::in_place::check(ast)
                .into_iter()
                .map(|(pos, message)| diag(pos, message)),
        );
    }
    diagnostics.sort_by_key(|d| (d.line, d.column));
    diagnostics.dedup();
    match ast {
        Some(ast) if diagnostics.is_empty() => Ok(ast),
        _ => Err(render(path, source, diagnostics)),
    }
}

/// Stand-ins bound per compile at most: one per distinct undefined variable.
const MAX_UNDEFINED: usize = 100;

/// Compiles with strict variables. Rhai stops at the first error; an
/// undefined variable is bound as a stand-in constant and the script compiled
/// again, so every undefined variable is found. A syntax error ends the search
/// (what follows it cannot be parsed reliably).
fn compile(engine: &Engine, scope: &Scope, source: &str) -> (Option<AST>, Vec<Diagnostic>) {
    // The scope's arrays are `machines` and `vlans`, not nodes.
    let mut nodes: Vec<String> = scope
        .iter()
        .filter(|(.., v)| !v.is_array())
        .map(|(n, ..)| n.to_owned())
        .collect();
    nodes.sort();
    let mut scope = scope.clone();
    let mut out = Vec::new();
    for _ in 0..=MAX_UNDEFINED {
        let e = match engine.compile_with_scope(&scope, source) {
            Ok(ast) => return (Some(ast), out),
            Err(e) => e,
        };
        let pos = e.position();
        if let ParseErrorType::VariableUndefined(name) = e.err_type() {
            out.push(diag(pos, undefined_variable(name, &nodes)));
            scope.push_constant(name.as_str(), ());
        } else {
            out.push(syntax_error(source, pos, e.err_type()));
            return (None, out);
        }
    }
    (None, out)
}

/// A syntax error. A missing `;` is reported where the statement ends (the
/// end of the line before), not at the start of the next one, where Rhai
/// notices it.
fn syntax_error(source: &str, pos: Position, e: &ParseErrorType) -> Diagnostic {
    let (line, column) = (pos.line().unwrap_or(0), pos.position().unwrap_or(0));
    let lines: Vec<&str> = source.lines().collect();
    let starts_line = line >= 2
        && lines.get(line - 1).is_some_and(|l| {
            l.chars()
                .take(column.saturating_sub(1))
                .all(char::is_whitespace)
        });
    if let (ParseErrorType::MissingToken(token, _), true) = (e, starts_line) {
        if token == ";" {
            if let Some((i, prev)) = lines[..line - 1]
                .iter()
                .enumerate()
                .rev()
                .find(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with("//"))
            {
                return Diagnostic {
                    line: i + 1,
                    column: prev.trim_end().chars().count() + 1,
                    message: "expected `;` at the end of this statement".into(),
                };
            }
        }
    }
    diag(pos, e.to_string())
}

fn undefined_variable(name: &str, nodes: &[String]) -> String {
    // Python's constants, as a NixOS script has them.
    let rhai = match name {
        "True" => Some("true"),
        "False" => Some("false"),
        "None" => Some("()"),
        _ => None,
    };
    let hint = rhai
        .map(|r| format!("; Rhai writes it `{r}`"))
        .or_else(|| {
            suggest(name, nodes.iter().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
        })
        .unwrap_or_default();
    let defined = if nodes.is_empty() {
        "the test has no nodes".to_owned()
    } else {
        let names: Vec<String> = nodes.iter().map(|n| format!("`{n}`")).collect();
        format!("the nodes are {}", names.join(", "))
    };
    format!("undefined variable `{name}`{hint} ({defined})")
}

/// name → the arities it is callable with (method arities count the object).
/// Each callable name: its arities, and the parameter types of each
/// registered form (a script's own `fn` takes any value: no types).
struct Known {
    arities: BTreeMap<String, BTreeSet<usize>>,
    /// The names callable on a machine (`server.succeed(…)`).
    machine_methods: BTreeSet<String>,
    forms: BTreeMap<(String, usize), Vec<Vec<TypeId>>>,
}

fn known_functions(engine: &Engine, ast: &AST) -> Known {
    let mut known = Known {
        arities: BTreeMap::new(),
        machine_methods: BTreeSet::new(),
        forms: BTreeMap::new(),
    };
    for r in super::registry::registered(engine, true) {
        if r.on_machine && !r.property {
            known.machine_methods.insert(r.name.clone());
        }
        known
            .arities
            .entry(r.name.clone())
            .or_default()
            .insert(r.arity);
        known
            .forms
            .entry((r.name, r.arity))
            .or_default()
            .push(r.param_types);
    }
    for f in ast.iter_functions() {
        let (name, arity) = (f.name.to_owned(), f.params.len());
        known.arities.entry(name.clone()).or_default().insert(arity);
        // Any value: no type to check.
        known.forms.insert((name, arity), Vec::new());
    }
    known
}

/// The type of a literal argument; `None` (any) for what only the run knows.
fn literal_type(e: &Expr) -> Option<TypeId> {
    Some(match e {
        Expr::StringConstant(..) | Expr::InterpolatedString(..) => TypeId::of::<ImmutableString>(),
        Expr::IntegerConstant(..) => TypeId::of::<rhai::INT>(),
        Expr::FloatConstant(..) => TypeId::of::<rhai::FLOAT>(),
        Expr::BoolConstant(..) => TypeId::of::<bool>(),
        Expr::CharConstant(..) => TypeId::of::<char>(),
        Expr::Unit(..) => TypeId::of::<()>(),
        Expr::Array(..) => TypeId::of::<rhai::Array>(),
        Expr::Map(..) => TypeId::of::<rhai::Map>(),
        Expr::DynamicConstant(v, _) if !v.is_shared() => v.type_id(),
        _ => return None,
    })
}

/// A type as scripts name it.
fn type_label(t: TypeId) -> &'static str {
    let names: [(TypeId, &str); 11] = [
        (TypeId::of::<ImmutableString>(), "string"),
        (TypeId::of::<rhai::INT>(), "int"),
        (TypeId::of::<rhai::FLOAT>(), "float"),
        (TypeId::of::<bool>(), "bool"),
        (TypeId::of::<char>(), "char"),
        (TypeId::of::<()>(), "()"),
        (TypeId::of::<rhai::Array>(), "array"),
        (TypeId::of::<rhai::Map>(), "map"),
        (TypeId::of::<rhai::Dynamic>(), "any"),
        (TypeId::of::<rhai::FnPtr>(), "function"),
        (TypeId::of::<crate::machine::Machine>(), "Machine"),
    ];
    names
        .iter()
        .find(|(id, _)| *id == t)
        .map_or("value", |(_, n)| n)
}

/// A call whose literal arguments no registered form of its name and
/// arity takes (`m.succeed(42)`): the forms there are. Arguments only the
/// run knows match any type.
fn wrong_types(known: &Known, name: &str, args: &[Option<TypeId>], skip: usize) -> Option<String> {
    let forms = known.forms.get(&(name.to_owned(), args.len()))?;
    let dynamic = TypeId::of::<rhai::Dynamic>();
    let takes = |form: &Vec<TypeId>| {
        form.iter()
            .zip(args)
            .all(|(p, a)| *p == dynamic || a.is_none_or(|a| a == *p))
    };
    if forms.is_empty() || forms.iter().any(takes) {
        return None;
    }
    let show = |types: &mut dyn Iterator<Item = &'static str>| types.collect::<Vec<_>>().join(", ");
    let given = show(&mut args[skip..].iter().map(|a| a.map_or("…", type_label)));
    let mut expected: Vec<String> = forms
        .iter()
        .map(|f| format!("({})", show(&mut f[skip..].iter().map(|t| type_label(*t)))))
        .collect();
    expected.sort();
    expected.dedup();
    Some(format!(
        "wrong argument type: `{name}` takes {}, not ({given})",
        expected.join(" or ")
    ))
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
    let nodes: BTreeSet<&str> = scope
        .iter()
        .filter(|(.., v)| !v.is_array())
        .map(|(n, ..)| n)
        .collect();
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
        match known.arities.get(name) {
            Some(arities) if arities.contains(&arity) => {
                let skip = usize::from(is_method);
                let args: Vec<Option<TypeId>> = std::iter::repeat_n(None, skip)
                    .chain(call.args.iter().map(literal_type))
                    .collect();
                if let Some(message) = wrong_types(&known, name, &args, skip) {
                    out.push(diag(pos, message));
                }
            }
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
                let on_node = is_method && receiver_is_node(path, &nodes);
                let hint = NOT_IN_SCRIPTS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, why)| format!(": {why}"))
                    .or_else(|| {
                        // On a node, only a machine method is a likely fix.
                        let candidates: Box<dyn Iterator<Item = &String>> = match on_node {
                            true => Box::new(known.machine_methods.iter()),
                            false => Box::new(known.arities.keys()),
                        };
                        suggest(name, candidates.map(String::as_str))
                            .map(|s| format!("; did you mean `{s}`?"))
                    })
                    .or_else(|| {
                        on_node.then(|| {
                            "; a machine's methods are in docs/parity.md (and help() in `attest repl`)"
                                .to_owned()
                        })
                    })
                    .unwrap_or_default();
                out.push(diag(pos, format!("unknown {kind} `{name}`{hint}")));
            }
        }
        true
    });
    out
}

/// Whether the method call ending `path` is made on a node by its name
/// (`server.frobnicate()`, also first in a chain).
fn receiver_is_node(path: &[ASTNode], nodes: &BTreeSet<&str>) -> bool {
    let n = path.len();
    let (Some(ASTNode::Expr(call)), Some(ASTNode::Expr(Expr::Dot(dot, ..)))) =
        (path.last(), n.checked_sub(2).map(|i| &path[i]))
    else {
        return false;
    };
    let receiver = if std::ptr::eq(&dot.lhs, *call) {
        match n.checked_sub(3).map(|i| &path[i]) {
            Some(ASTNode::Expr(Expr::Dot(outer, ..))) => &outer.lhs,
            _ => return false,
        }
    } else {
        &dot.lhs
    };
    matches!(receiver, Expr::Variable(v, None, _) if nodes.contains(v.1.as_str()))
}

/// Calls of a method the node's backend cannot do, on a node named directly
/// (`server.screenshot(…)`, `screenshot(server, …)`), outside a `try`. A receiver known only
/// at run time (`machines[0]`, a closure's parameter) is refused at run time,
/// from the same table, in the same words.
fn check_capabilities(ast: &AST, backends: &NodeBackends) -> Vec<Diagnostic> {
    if backends.is_empty() {
        return Vec::new();
    }
    // A parameter named like a node is a local (the parser gives it an
    // index; nodes have none). A node name declared again with `let` may be
    // captured by a closure, where it has no index either: not refused.
    let mut declared: BTreeSet<String> = BTreeSet::new();
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Stmt(Stmt::Var(x, ..))) = path.last() {
            declared.insert(x.0.name.to_string());
        }
        true
    });
    let node_of = |e: &Expr| {
        let Expr::Variable(v, None, _) = e else {
            return None;
        };
        let name = v.1.as_str();
        (!declared.contains(name))
            .then(|| backends.get(name))
            .flatten()
    };
    let mut out = Vec::new();
    let mut refuse = |method: &str, node: Option<&(String, BackendConfig)>, pos: Position| {
        let (Some((node, backend)), Some(cap)) = (node, Capability::of_method(method)) else {
            return;
        };
        if let Err(r) = capability::support(backend, cap) {
            out.push(diag(pos, r.message(method, node)));
        }
    };
    ast.walk(&mut |path: &[ASTNode]| {
        // Inside a `try`, the script expects the refusal (it catches it to
        // show or test it): the run refuses in the same words.
        if path
            .iter()
            .any(|n| matches!(n, ASTNode::Stmt(Stmt::TryCatch(..))))
        {
            return true;
        }
        match path.last() {
            Some(ASTNode::Expr(Expr::Dot(x, ..))) => {
                let first = match &x.rhs {
                    Expr::Dot(y, ..) => &y.lhs,
                    other => other,
                };
                if let Expr::MethodCall(call, pos) = first {
                    refuse(call.name.as_str(), node_of(&x.lhs), *pos);
                }
            }
            Some(ASTNode::Expr(Expr::FnCall(call, pos)))
            | Some(ASTNode::Stmt(Stmt::FnCall(call, pos))) => {
                if let Some(first) = call.args.first() {
                    refuse(call.name.as_str(), node_of(first), *pos);
                }
            }
            _ => {}
        }
        true
    });
    out
}

fn diag(pos: Position, message: String) -> Diagnostic {
    Diagnostic {
        line: pos.line().unwrap_or(0),
        column: pos.position().unwrap_or(0),
        message,
    }
}

/// Similarity (0..1) from which a known name counts as related to a typo.
const RELATED: f64 = 0.8;

/// The known name most like `name`, if any is related enough to be what was
/// meant. Jaro-Winkler favours a shared prefix (`copy` → `copy_from_host`,
/// `wait_for_port` → `wait_for_open_port`) and Damerau-Levenshtein catches
/// swapped letters (`strat_all`); short unrelated names (`cp` → `cos`) score low
/// on both.
pub fn suggest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .filter(|k| k.starts_with(|c: char| c.is_alphabetic() || c == '_') && !k.contains('$'))
        .map(|k| {
            let score =
                strsim::jaro_winkler(name, k).max(strsim::normalized_damerau_levenshtein(name, k));
            (score, k)
        })
        .filter(|(score, _)| *score >= RELATED)
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, k)| k)
}

/// Renders diagnostics as `file:line:col: error: msg`, the source line and a
/// caret under the offending token.
pub fn render(path: &Path, source: &str, diagnostics: Vec<Diagnostic>) -> ScriptCheckError {
    let mut out = String::new();
    for d in &diagnostics {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "{}:{}:{}: error: {}\n",
            path.display(),
            d.line,
            d.column,
            d.message
        ));
        out.push_str(&underline(source, d.line, d.column));
    }
    if diagnostics.len() > 1 {
        out.push_str(&format!(
            "\n{}: {} errors\n",
            path.display(),
            diagnostics.len()
        ));
    }
    ScriptCheckError {
        diagnostics,
        rendered: out.trim_end().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{scope_for, test_engine};

    fn check_src(src: &str) -> Result<(), String> {
        let e = test_engine();
        let scope = scope_for(
            &[
                ("server".into(), rhai::Dynamic::UNIT),
                ("client-1".into(), rhai::Dynamic::UNIT),
            ],
            &[1],
        );
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
    fn every_error_is_reported_not_only_the_first() {
        let e = check_src(
            "start_all();\nserver.succeed(\"true\");\nlet x = 1;\nserver.wait_for_unitt(\"a\");\nclinet.succeed(\"b\");\nfoo.bar();\nclinet.succeed(\"c\");\n",
        )
        .unwrap_err();
        insta::assert_snapshot!(e, @r#"
        test.rhai:4:8: error: unknown method `wait_for_unitt`; did you mean `wait_for_unit`?
          |
        4 | server.wait_for_unitt("a");
          |        ^^^^^^^^^^^^^^

        test.rhai:5:1: error: undefined variable `clinet`; did you mean `client_1`? (the nodes are `client_1`, `server`)
          |
        5 | clinet.succeed("b");
          | ^^^^^^

        test.rhai:6:1: error: undefined variable `foo` (the nodes are `client_1`, `server`)
          |
        6 | foo.bar();
          | ^^^

        test.rhai:6:5: error: unknown method `bar`
          |
        6 | foo.bar();
          |     ^^^

        test.rhai: 4 errors
        "#);
    }

    #[test]
    fn undefined_variables_before_a_syntax_error_are_reported_with_it() {
        let e = check_src("sever.start();\nserver.succeed(\"true\"\n").unwrap_err();
        assert!(
            e.contains("test.rhai:1:1: error: undefined variable `sever`; did you mean `server`?"),
            "{e}"
        );
        assert!(e.contains("test.rhai:3:1: error: Expecting ')'"), "{e}");
    }

    #[test]
    fn a_missing_semicolon_is_shown_where_the_statement_ends() {
        let e = check_src("let x = 1\n// a comment\n\n    let y = 2;\n").unwrap_err();
        assert!(
            e.contains("test.rhai:1:10: error: expected `;` at the end of this statement"),
            "{e}"
        );
        let e = check_src("server.frobnicate();\nserver.wait_for_unti(\"x\");\n").unwrap_err();
        assert!(
            e.contains("unknown method `frobnicate`; a machine's methods are in docs/parity.md"),
            "{e}"
        );
        assert!(
            e.contains("unknown method `wait_for_unti`; did you mean `wait_for_unit`?"),
            "{e}"
        );
        // NixOS's optional arguments that may be None take `()`.
        check_src("send_key(server, \"a\", (), ());\nserver.send_key(\"a\", 0.01, false);\n")
            .unwrap();
        let e = check_src("server.shell_interact();\n").unwrap_err();
        assert!(e.contains("unknown method `shell_interact`: NixOS's interactive shell; run `attest repl CONFIG`"), "{e}");
        let e = check_src("let x = True;\n").unwrap_err();
        assert!(
            e.contains("undefined variable `True`; Rhai writes it `true`"),
            "{e}"
        );
    }

    #[test]
    fn suggestions_are_related_names_not_any_short_one() {
        let known = [
            "cos",
            "copy_from_host",
            "start_all",
            "wait_for_open_port",
            "wait_for_unit",
            "succeed",
            "sin",
            "log",
        ];
        let s = |n: &str| suggest(n, known.iter().copied());
        assert_eq!(s("cp"), None);
        assert_eq!(s("foo"), None);
        assert_eq!(s("os"), None);
        assert_eq!(s("strat_all"), Some("start_all"));
        assert_eq!(s("succed"), Some("succeed"));
        assert_eq!(s("wait_for_port"), Some("wait_for_open_port"));
        assert_eq!(s("copy"), Some("copy_from_host"));
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
