//! Python `def`s: their signatures (so calls with keyword and default
//! arguments become positional calls) and whether each can be a Rhai `fn`.
//!
//! A Rhai `fn` sees only its parameters (and the node constants), so a
//! `def` that reads or writes a script variable becomes a closure
//! (`let f = |…| { … };`), which shares the variables it captures — as a
//! Python function shares the module's globals.

use std::collections::BTreeSet;

use rustpython_parser::ast;

use super::{FnSig, Translator};

impl Translator<'_> {
    /// Records every `def` (anywhere) and decides `fn` or closure.
    pub(super) fn collect_functions(&mut self, body: &[ast::Stmt]) {
        let mut defs = Vec::new();
        collect_defs(body, true, &mut defs);
        let mut module_vars = BTreeSet::new();
        assigned_names(body, &mut module_vars);
        for (def, top_level) in &defs {
            let a = &def.args;
            let mut params = Vec::new();
            let mut defaults = Vec::new();
            for p in a.posonlyargs.iter().chain(&a.args).chain(&a.kwonlyargs) {
                params.push(p.def.arg.to_string());
                defaults.push(p.default.as_deref().cloned());
            }
            self.functions.insert(
                def.name.to_string(),
                FnSig {
                    params,
                    defaults,
                    vararg: a.vararg.is_some(),
                    closure: !top_level,
                },
            );
        }
        // A function is a closure when it touches a script variable or a
        // closure; repeat until nothing changes.
        loop {
            let mut changed = false;
            for (def, _) in &defs {
                let name = def.name.to_string();
                if self.functions[&name].closure {
                    continue;
                }
                let free = self.free_names(def);
                let needs_closure = has_global(&def.body)
                    || free.iter().any(|n| {
                        self.functions.get(n).map(|f| f.closure).unwrap_or(false)
                            || (module_vars.contains(n)
                                && !self.functions.contains_key(n)
                                && !self.modules.contains_key(n)
                                && !super::KNOWN_MODULES.contains(&n.as_str()))
                    });
                if needs_closure {
                    if let Some(f) = self.functions.get_mut(&name) {
                        f.closure = true;
                    }
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Names a function body reads that are not its own.
    fn free_names(&self, def: &ast::StmtFunctionDef) -> BTreeSet<String> {
        let mut own = BTreeSet::new();
        for p in def
            .args
            .posonlyargs
            .iter()
            .chain(&def.args.args)
            .chain(&def.args.kwonlyargs)
        {
            own.insert(p.def.arg.to_string());
        }
        for p in def.args.vararg.iter().chain(&def.args.kwarg) {
            own.insert(p.arg.to_string());
        }
        assigned_names(&def.body, &mut own);
        let mut read = BTreeSet::new();
        stmts_names(&def.body, &mut read);
        read.retain(|n| !own.contains(n) && n != def.name.as_str());
        read
    }
}

/// Every name read in `body`, nested functions and lambdas included.
fn stmts_names(body: &[ast::Stmt], out: &mut BTreeSet<String>) {
    for s in body {
        match s {
            ast::Stmt::Expr(e) => expr_names(&e.value, out),
            ast::Stmt::Assign(a) => {
                expr_names(&a.value, out);
                a.targets.iter().for_each(|t| expr_names(t, out));
            }
            ast::Stmt::AugAssign(a) => {
                expr_names(&a.target, out);
                expr_names(&a.value, out);
            }
            ast::Stmt::AnnAssign(a) => a.value.iter().for_each(|v| expr_names(v, out)),
            ast::Stmt::Return(r) => r.value.iter().for_each(|v| expr_names(v, out)),
            ast::Stmt::If(i) => expr_names(&i.test, out),
            ast::Stmt::While(w) => expr_names(&w.test, out),
            ast::Stmt::For(f) => expr_names(&f.iter, out),
            ast::Stmt::With(w) => w
                .items
                .iter()
                .for_each(|i| expr_names(&i.context_expr, out)),
            ast::Stmt::Raise(r) => r.exc.iter().for_each(|v| expr_names(v, out)),
            ast::Stmt::Assert(a) => {
                expr_names(&a.test, out);
                a.msg.iter().for_each(|v| expr_names(v, out));
            }
            ast::Stmt::FunctionDef(d) => {
                stmts_names(&d.body, out);
                for p in d.args.args.iter().chain(&d.args.kwonlyargs) {
                    p.default.iter().for_each(|v| expr_names(v, out));
                }
            }
            _ => {}
        }
        for b in sub_blocks(s) {
            stmts_names(b, out);
        }
    }
}

fn expr_names(e: &ast::Expr, out: &mut BTreeSet<String>) {
    let all =
        |es: &[ast::Expr], out: &mut BTreeSet<String>| es.iter().for_each(|e| expr_names(e, out));
    match e {
        ast::Expr::Name(n) => {
            out.insert(n.id.to_string());
        }
        ast::Expr::BoolOp(b) => all(&b.values, out),
        ast::Expr::NamedExpr(n) => expr_names(&n.value, out),
        ast::Expr::BinOp(b) => {
            expr_names(&b.left, out);
            expr_names(&b.right, out);
        }
        ast::Expr::UnaryOp(u) => expr_names(&u.operand, out),
        ast::Expr::Lambda(l) => expr_names(&l.body, out),
        ast::Expr::IfExp(i) => {
            expr_names(&i.test, out);
            expr_names(&i.body, out);
            expr_names(&i.orelse, out);
        }
        ast::Expr::Dict(d) => {
            d.keys.iter().flatten().for_each(|k| expr_names(k, out));
            all(&d.values, out);
        }
        ast::Expr::Set(s) => all(&s.elts, out),
        ast::Expr::ListComp(c) => comp_names(&c.elt, &c.generators, out),
        ast::Expr::SetComp(c) => comp_names(&c.elt, &c.generators, out),
        ast::Expr::GeneratorExp(c) => comp_names(&c.elt, &c.generators, out),
        ast::Expr::DictComp(c) => {
            comp_names(&c.key, &c.generators, out);
            expr_names(&c.value, out);
        }
        ast::Expr::Await(a) => expr_names(&a.value, out),
        ast::Expr::Yield(y) => y.value.iter().for_each(|v| expr_names(v, out)),
        ast::Expr::YieldFrom(y) => expr_names(&y.value, out),
        ast::Expr::Compare(c) => {
            expr_names(&c.left, out);
            all(&c.comparators, out);
        }
        ast::Expr::Call(c) => {
            expr_names(&c.func, out);
            all(&c.args, out);
            c.keywords.iter().for_each(|k| expr_names(&k.value, out));
        }
        ast::Expr::FormattedValue(f) => {
            expr_names(&f.value, out);
            f.format_spec.iter().for_each(|v| expr_names(v, out));
        }
        ast::Expr::JoinedStr(j) => all(&j.values, out),
        ast::Expr::Constant(_) => {}
        ast::Expr::Attribute(a) => expr_names(&a.value, out),
        ast::Expr::Subscript(s) => {
            expr_names(&s.value, out);
            expr_names(&s.slice, out);
        }
        ast::Expr::Starred(s) => expr_names(&s.value, out),
        ast::Expr::List(l) => all(&l.elts, out),
        ast::Expr::Tuple(t) => all(&t.elts, out),
        ast::Expr::Slice(s) => {
            for v in [&s.lower, &s.upper, &s.step].into_iter().flatten() {
                expr_names(v, out);
            }
        }
    }
}

fn comp_names(elt: &ast::Expr, gens: &[ast::Comprehension], out: &mut BTreeSet<String>) {
    expr_names(elt, out);
    for g in gens {
        expr_names(&g.iter, out);
        g.ifs.iter().for_each(|i| expr_names(i, out));
    }
}

fn collect_defs<'a>(
    body: &'a [ast::Stmt],
    top_level: bool,
    out: &mut Vec<(&'a ast::StmtFunctionDef, bool)>,
) {
    for s in body {
        match s {
            ast::Stmt::FunctionDef(d) => {
                out.push((d, top_level));
                collect_defs(&d.body, false, out);
            }
            _ => {
                for b in sub_blocks(s) {
                    collect_defs(b, false, out);
                }
            }
        }
    }
}

/// The statement blocks directly inside a compound statement.
pub(super) fn sub_blocks(s: &ast::Stmt) -> Vec<&[ast::Stmt]> {
    match s {
        ast::Stmt::For(f) => vec![&f.body, &f.orelse],
        ast::Stmt::While(w) => vec![&w.body, &w.orelse],
        ast::Stmt::If(i) => vec![&i.body, &i.orelse],
        ast::Stmt::With(w) => vec![&w.body],
        ast::Stmt::Try(t) => {
            let mut v: Vec<&[ast::Stmt]> = vec![&t.body, &t.orelse, &t.finalbody];
            for h in &t.handlers {
                let ast::ExceptHandler::ExceptHandler(h) = h;
                v.push(&h.body);
            }
            v
        }
        _ => vec![],
    }
}

fn has_global(body: &[ast::Stmt]) -> bool {
    body.iter().any(|s| {
        matches!(s, ast::Stmt::Global(_) | ast::Stmt::Nonlocal(_))
            || sub_blocks(s).into_iter().any(has_global)
    })
}

/// Names bound by assignments, loops, `with … as`, `except … as`, imports
/// and defs in `body` (not inside nested defs).
pub(super) fn assigned_names(body: &[ast::Stmt], out: &mut BTreeSet<String>) {
    for s in body {
        match s {
            ast::Stmt::Assign(a) => a.targets.iter().for_each(|t| target_names(t, out)),
            ast::Stmt::AugAssign(a) => target_names(&a.target, out),
            ast::Stmt::AnnAssign(a) => target_names(&a.target, out),
            ast::Stmt::For(f) => target_names(&f.target, out),
            ast::Stmt::FunctionDef(d) => {
                out.insert(d.name.to_string());
            }
            ast::Stmt::With(w) => {
                for i in &w.items {
                    if let Some(v) = &i.optional_vars {
                        target_names(v, out);
                    }
                }
            }
            ast::Stmt::Import(i) => {
                for a in &i.names {
                    let n = a.asname.as_ref().unwrap_or(&a.name).to_string();
                    out.insert(n.split('.').next().unwrap_or(&n).to_owned());
                }
            }
            ast::Stmt::ImportFrom(i) => {
                for a in &i.names {
                    out.insert(a.asname.as_ref().unwrap_or(&a.name).to_string());
                }
            }
            _ => {}
        }
        if let ast::Stmt::Try(t) = s {
            for h in &t.handlers {
                let ast::ExceptHandler::ExceptHandler(h) = h;
                if let Some(n) = &h.name {
                    out.insert(n.to_string());
                }
            }
        }
        for b in sub_blocks(s) {
            assigned_names(b, out);
        }
    }
}

/// Like [`assigned_names`], inside function bodies too.
pub(super) fn all_assigned_names(body: &[ast::Stmt], out: &mut BTreeSet<String>) {
    assigned_names(body, out);
    for s in body {
        if let ast::Stmt::FunctionDef(d) = s {
            all_assigned_names(&d.body, out);
            for p in d.args.args.iter().chain(&d.args.kwonlyargs) {
                out.insert(p.def.arg.to_string());
            }
        }
        for b in sub_blocks(s) {
            all_assigned_names(b, out);
        }
    }
}

pub(super) fn target_names(t: &ast::Expr, out: &mut BTreeSet<String>) {
    match t {
        ast::Expr::Name(n) => {
            out.insert(n.id.to_string());
        }
        ast::Expr::Tuple(t) => t.elts.iter().for_each(|e| target_names(e, out)),
        ast::Expr::List(t) => t.elts.iter().for_each(|e| target_names(e, out)),
        ast::Expr::Starred(s) => target_names(&s.value, out),
        _ => {}
    }
}
