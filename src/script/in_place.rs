//! Rhai's string and array methods that change their object in place and
//! return `()` (`trim`, `replace`, …): a script that uses their value
//! (`let h = m.succeed("hostname").trim();`, as in Python) gets `()` and
//! fails later, far from the cause. The static check names the call.

use rhai::{ASTNode, Expr, Position, Stmt, AST};

/// The in-place methods, with what to use for a value instead.
const IN_PLACE: &[(&str, &str)] = &[
    ("trim", "strip(s)"),
    ("replace", "a copy: `let t = s; t.replace(a, b); t`"),
    ("make_upper", "s.to_upper()"),
    ("make_lower", "s.to_lower()"),
    ("pad", "a copy"),
    ("truncate", "a copy"),
    ("crop", "s.sub_string(start, len)"),
    ("clear", "\"\""),
    ("sort", "sorted(a)"),
    ("reverse", "a copy"),
];

/// Calls of an in-place method whose value the script uses: where, and
/// what to say.
pub(super) fn check(ast: &AST) -> Vec<(Position, String)> {
    let mut out = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let Some(ASTNode::Expr(call @ Expr::MethodCall(c, pos))) = path.last() else {
            return true;
        };
        let Some((name, instead)) = IN_PLACE.iter().find(|(n, _)| *n == c.name.as_str()) else {
            return true;
        };
        if value_used(path, call) {
            out.push((
                *pos,
                format!(
                    "`{name}` changes its object in place and returns (): its value here is (); use {instead}"
                ),
            ));
        }
        true
    });
    out
}

/// Whether the value of `call` (the last of `path`) is used: it is chained
/// on (`s.trim().len()`), or its chain is not a statement of its own.
fn value_used(path: &[ASTNode], call: &Expr) -> bool {
    let mut node = call;
    for parent in path.iter().rev().skip(1) {
        match parent {
            ASTNode::Expr(dot @ Expr::Dot(x, ..)) => {
                if std::ptr::eq(&x.lhs, node) {
                    return true;
                }
                node = dot;
            }
            ASTNode::Stmt(Stmt::Expr(..)) => return false,
            _ => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    fn messages(src: &str) -> Vec<String> {
        let engine = crate::script::test_engine();
        let scope = rhai::Scope::new();
        match super::super::check::check(&engine, &scope, std::path::Path::new("t.rhai"), src) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .diagnostics
                .into_iter()
                .map(|d| format!("{}: {}", d.line, d.message))
                .collect(),
        }
    }

    #[test]
    fn the_value_of_an_in_place_method_is_refused_its_statement_is_not() {
        let found = messages(
            "let s = \" a \";\nlet t = s.trim();\ns.trim();\nlet n = s.trim().len();\n\
             let u = { let v = s; v.replace(\"a\", \"b\"); v };\nlet l = s.to_upper();\n\
             let a = [2, 1];\na.sort();\nprint(a.sort());\n",
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("2: `trim` changes its object in place and returns (): its value here is (); use strip(s)"));
        assert!(found[1].starts_with("4: `trim`"), "{found:?}");
        assert!(found[2].starts_with("9: `sort`"), "{found:?}");
    }
}
