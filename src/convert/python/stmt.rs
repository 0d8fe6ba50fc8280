//! Statements: assignments (with `let` where Python first binds a name),
//! `if`/`for`/`while`, `with subtest`, `def`, `try`, `raise`, `assert`,
//! imports.

use std::collections::BTreeSet;

use rustpython_parser::ast::{self, Ranged};

use super::expr::{const_str, string_literal};
use super::functions::{assigned_names, sub_blocks};
use super::rhai::{self, Kind, RExpr};
use super::{unsupported, Block, Res, Translator};

/// The parameter a `@contextmanager` function takes the `with` body in.
const WITH_BODY: &str = "with_body";

/// Whether `body` has a `return` of its own (not one of a nested `def`).
fn has_return(body: &[ast::Stmt]) -> bool {
    body.iter()
        .any(|s| matches!(s, ast::Stmt::Return(_)) || sub_blocks(s).into_iter().any(has_return))
}

/// `@contextmanager` or `@contextlib.contextmanager`.
fn is_context_manager(deco: &ast::Expr) -> bool {
    match deco {
        ast::Expr::Name(n) => n.id.as_str() == "contextmanager",
        ast::Expr::Attribute(a) => {
            a.attr.as_str() == "contextmanager"
                && matches!(&*a.value, ast::Expr::Name(m) if m.id.as_str() == "contextlib")
        }
        _ => false,
    }
}

impl Translator<'_> {
    /// Translates a block; every statement either translates or becomes a
    /// TODO in place.
    pub(super) fn block(&mut self, body: &[ast::Stmt]) {
        for s in body {
            let (first, _) = self.source_lines(s);
            self.flush_comments(first);
            self.blank_before(first);
            self.cur_line = first;
            let saved = (
                self.out.len(),
                self.todos.len(),
                self.next_comment,
                self.blocks
                    .iter()
                    .map(|b| (b.vars.clone(), b.barrier))
                    .collect::<Vec<_>>(),
            );
            if let Err(e) = self.stmt(s) {
                self.next_break_flag = None;
                self.out.truncate(saved.0);
                self.todos.truncate(saved.1);
                self.next_comment = saved.2;
                self.blocks = saved
                    .3
                    .into_iter()
                    .map(|(vars, barrier)| Block { vars, barrier })
                    .collect();
                self.todo(s, &e.0);
                // Later uses of what it binds are not TODOs of their own.
                let mut bound = BTreeSet::new();
                assigned_names(std::slice::from_ref(s), &mut bound);
                for n in bound {
                    if self.declared(&n).is_none() {
                        self.declare(&n, Kind::Todo);
                    }
                }
            }
        }
    }

    /// A nested block in its own scope, one level deeper.
    fn nested(&mut self, body: &[ast::Stmt], barrier: bool, params: &[(String, Kind)]) {
        self.blocks.push(Block {
            barrier,
            ..Default::default()
        });
        for (p, k) in params {
            self.declare(p, *k);
        }
        self.indent += 1;
        self.block(body);
        if let Some(last) = body.last() {
            let (_, end) = self.source_lines(last);
            self.flush_comments(end + 1);
        }
        self.indent -= 1;
        self.blocks.pop();
    }

    /// Declares, before a compound statement, the names its blocks bind and
    /// later code reads (Rhai's `let` is block-scoped, Python's is not).
    fn hoist(&mut self, s: &ast::Stmt) {
        let mut names = BTreeSet::new();
        for b in sub_blocks(s) {
            assigned_names(b, &mut names);
        }
        let end = s.range().end().to_usize();
        for n in names {
            if n != "_"
                && self.declared(&n).is_none()
                && !self.functions.contains_key(&n)
                && !self.nodes.contains(&n)
                && self.used_after(&n, end)
            {
                self.emit(format!("let {};", rhai::ident(&n)));
                self.declare(&n, Kind::Any);
            }
        }
    }

    fn stmt(&mut self, s: &ast::Stmt) -> Res<()> {
        match s {
            ast::Stmt::Expr(e) => self.expr_stmt(&e.value),
            ast::Stmt::Assign(a) => {
                // `a = b = v`: `a` gets `v`, the others `a`'s value.
                let Some((first, rest)) = a.targets.split_first() else {
                    return unsupported("an assignment without a target");
                };
                self.assign(first, &a.value)?;
                let ast::Expr::Name(source) = first else {
                    if rest.is_empty() {
                        return Ok(());
                    }
                    return unsupported("chained assignment `a[…] = b = …`");
                };
                for t in rest {
                    self.assign(t, &ast::Expr::Name(source.clone()))?;
                }
                Ok(())
            }
            ast::Stmt::AnnAssign(a) => match &a.value {
                Some(v) => self.assign(&a.target, v),
                None => Ok(()),
            },
            ast::Stmt::AugAssign(a) => self.aug_assign(a),
            ast::Stmt::If(i) => {
                self.hoist(s);
                self.if_chain(i, false)
            }
            ast::Stmt::While(w) => {
                self.hoist(s);
                let c = self.condition(&w.test)?;
                let flag = self.loop_else_flag(&w.orelse);
                self.emit(format!("while {} {{", c.code));
                self.loop_body(&w.body, &[]);
                self.emit("}");
                self.loop_else(flag, &w.orelse);
                Ok(())
            }
            ast::Stmt::For(f) => {
                self.hoist(s);
                let flag = self.loop_else_flag(&f.orelse);
                self.for_loop(f)?;
                self.loop_else(flag, &f.orelse);
                Ok(())
            }
            ast::Stmt::With(w) => {
                self.hoist(s);
                self.with(w)
            }
            ast::Stmt::FunctionDef(d) => self.def(d),
            ast::Stmt::Return(r) => {
                // In a subtest's closure inside a function: the value in a
                // one-element array, which the code after the subtest
                // returns (see `closure_block`).
                let wrapped = self.in_subtest > 0;
                if wrapped && self.closure_returns.last() != Some(&true) {
                    return unsupported(
                        "`return` inside a `with` block outside a function (it would leave only the block)",
                    );
                }
                let v = match &r.value {
                    Some(v) => Some(self.expr(v)?.code),
                    None => None,
                };
                self.emit(match (wrapped, v) {
                    (true, v) => format!("return [{}];", v.unwrap_or_else(|| "()".into())),
                    (false, Some(v)) => format!("return {v};"),
                    (false, None) => "return;".into(),
                });
                Ok(())
            }
            ast::Stmt::Break(_) | ast::Stmt::Continue(_) => {
                if self.in_subtest > 0 && self.loops_in_subtest == 0 {
                    return unsupported(
                        "`break`/`continue` inside `with subtest` across the subtest",
                    );
                }
                if matches!(s, ast::Stmt::Break(_)) {
                    if let Some(Some(flag)) = self.break_flags.last() {
                        self.emit(format!("{flag} = true;"));
                    }
                    self.emit("break;");
                } else {
                    self.emit("continue;");
                }
                Ok(())
            }
            ast::Stmt::Pass(_) | ast::Stmt::Global(_) | ast::Stmt::Nonlocal(_) => Ok(()),
            ast::Stmt::Raise(r) => self.raise(r),
            ast::Stmt::Try(t) => {
                self.hoist(s);
                self.try_stmt(t)
            }
            ast::Stmt::Assert(a) => self.assert(a),
            ast::Stmt::Import(i) => {
                for a in &i.names {
                    let module = a.name.as_str();
                    let root = module.split('.').next().unwrap_or(module);
                    let bound = a
                        .asname
                        .as_ref()
                        .map(|n| n.to_string())
                        .unwrap_or(root.to_owned());
                    if super::KNOWN_MODULES.contains(&module) {
                        self.modules.insert(bound, module.to_owned());
                    } else if module == "contextlib" {
                        // Only `@contextlib.contextmanager` is understood.
                    } else {
                        return self.foreign_import(root);
                    }
                }
                Ok(())
            }
            ast::Stmt::ImportFrom(i) => {
                let module = i.module.as_ref().map(|m| m.to_string()).unwrap_or_default();
                if module == "contextlib"
                    && i.names
                        .iter()
                        .all(|a| a.name.as_str() == "contextmanager" && a.asname.is_none())
                {
                    return Ok(());
                }
                if !super::KNOWN_MODULES.contains(&module.as_str()) {
                    let root = module.split('.').next().unwrap_or("").to_owned();
                    return self.foreign_import(&root);
                }
                for a in &i.names {
                    let bound = a.asname.as_ref().unwrap_or(&a.name).to_string();
                    self.imported_fns
                        .insert(bound, (module.clone(), a.name.to_string()));
                }
                Ok(())
            }
            ast::Stmt::ClassDef(_) => unsupported("classes"),
            // `del d["k"]` / `del xs[i]`.
            ast::Stmt::Delete(d) => {
                for t in &d.targets {
                    let ast::Expr::Subscript(sub) = t else {
                        return unsupported("`del` of something other than an item");
                    };
                    if matches!(&*sub.slice, ast::Expr::Slice(_)) {
                        return unsupported("`del` of a slice");
                    }
                    let target = self.expr(&sub.value)?;
                    if !matches!(target.kind, Kind::Map | Kind::List | Kind::Any) {
                        return unsupported(
                            "`del` of an item of something other than a dict or list",
                        );
                    }
                    let key = self.expr(&sub.slice)?;
                    self.emit(format!("{}.remove({});", target.operand(), key.code));
                }
                Ok(())
            }
            ast::Stmt::Match(_) => unsupported("`match`"),
            _ => unsupported("async code and other rare statements"),
        }
    }

    fn foreign_import(&mut self, root: &str) -> Res<()> {
        if super::HOST_MODULES.contains(&root) {
            self.host_modules.insert(root.to_owned());
            unsupported(format!("host-side Python (module `{root}`)"))
        } else {
            unsupported(format!("the Python module `{root}`"))
        }
    }

    fn expr_stmt(&mut self, e: &ast::Expr) -> Res<()> {
        if let ast::Expr::Yield(y) = e {
            if self.in_context_manager == 0 || y.value.is_some() {
                return unsupported("`yield` outside a `@contextmanager` or with a value");
            }
            self.emit(format!("{WITH_BODY}.call();"));
            return Ok(());
        }
        if let Some(doc) = const_str(e) {
            for l in doc.trim().lines() {
                let l = l.trim();
                self.emit(if l.is_empty() {
                    "//".to_owned()
                } else {
                    format!("// {l}")
                });
            }
            return Ok(());
        }
        if let ast::Expr::Attribute(a) = e {
            // `machine.start` without `()` reads an attribute and does nothing.
            if matches!(&*a.value, ast::Expr::Name(_)) {
                let r = e.range();
                let text = &self.src[r.start().to_usize()..r.end().to_usize()];
                self.emit(format!("// (did nothing in Python, not called) {text}"));
                return Ok(());
            }
        }
        if let ast::Expr::Name(n) = e {
            let nix =
                n.id.strip_prefix("__nix_interp_")
                    .and_then(|r| r.strip_suffix("__"))
                    .and_then(|i| i.parse::<usize>().ok())
                    .and_then(|i| self.interpolations.get(i));
            if let Some(cond) = nix.and_then(|t| {
                t.strip_prefix("${lib.optionalString (")?
                    .strip_suffix(") ''…''}")
            }) {
                return unsupported(format!(
                    "Nix includes the lines below only when `{cond}` (lib.optionalString): keep, guard or drop them by hand"
                ));
            }
            if nix.is_some() {
                return unsupported(
                    "Python code Nix splices in here (its value is known only to Nix): convert it by hand",
                );
            }
        }
        // `exit(1)` / `sys.exit(1)` end the NixOS test as failed.
        if let ast::Expr::Call(c) = e {
            let exit = match &*c.func {
                ast::Expr::Name(n) => matches!(n.id.as_str(), "exit" | "quit"),
                ast::Expr::Attribute(a) => {
                    a.attr.as_str() == "exit"
                        && matches!(&*a.value, ast::Expr::Name(m) if m.id.as_str() == "sys")
                }
                _ => false,
            };
            if exit && c.keywords.is_empty() {
                if let [code] = &c.args[..] {
                    if super::expr::const_int(code).is_some_and(|n| n != 0)
                        || const_str(code).is_some()
                    {
                        let r = e.range();
                        let text = &self.src[r.start().to_usize()..r.end().to_usize()];
                        self.emit(format!(
                            "throw {};",
                            rhai::string(&format!("the script called {text}"))
                        ));
                        return Ok(());
                    }
                }
            }
        }
        if !matches!(e, ast::Expr::Call(_)) {
            return unsupported("an expression statement without a call");
        }
        let v = self.expr(e)?;
        if v.code.starts_with('{') || v.code.starts_with("//") {
            self.emit(v.code);
        } else {
            self.emit(format!("{};", v.code));
        }
        Ok(())
    }

    /// `let x = v;` the first time a scope binds `x`, `x = v;` afterwards.
    fn bind(&mut self, name: &str, value: RExpr) -> Res<()> {
        if self.nodes.contains(name) && self.declared(name).is_none() {
            return unsupported(format!("assigning to the node name `{name}`"));
        }
        if self.functions.get(name).is_some_and(|f| !f.closure) {
            return unsupported(format!("assigning to the function name `{name}`"));
        }
        if self.declared(name).is_some() {
            self.set_kind(name, value.kind);
            self.emit(format!("{} = {};", rhai::ident(name), value.code));
        } else {
            self.emit(format!("let {} = {};", rhai::ident(name), value.code));
            self.declare(name, value.kind);
        }
        Ok(())
    }

    fn assign(&mut self, target: &ast::Expr, value: &ast::Expr) -> Res<()> {
        match target {
            ast::Expr::Name(n) => {
                let v = self.expr(value)?;
                self.bind(n.id.as_str(), v)
            }
            ast::Expr::Subscript(s) => {
                if matches!(&*s.slice, ast::Expr::Slice(_)) {
                    return unsupported("assigning to a slice");
                }
                let c = self.expr(&s.value)?;
                let i = self.expr(&s.slice)?;
                let v = self.expr(value)?;
                self.emit(format!("{}[{}] = {};", c.operand(), i.code, v.code));
                Ok(())
            }
            ast::Expr::Tuple(ast::ExprTuple { elts, .. })
            | ast::Expr::List(ast::ExprList { elts, .. }) => self.unpack(elts, value),
            _ => unsupported("assigning to an attribute"),
        }
    }

    /// `a, b = …`.
    fn unpack(&mut self, targets: &[ast::Expr], value: &ast::Expr) -> Res<()> {
        let mut names = Vec::new();
        for t in targets {
            let ast::Expr::Name(n) = t else {
                return unsupported("nested or starred unpacking");
            };
            names.push(n.id.to_string());
        }
        // `a, b = x, y` with no target read on the right: one by one.
        if let ast::Expr::Tuple(ast::ExprTuple { elts, .. }) = value {
            if elts.len() != names.len() {
                return unsupported("unpacking of a different length");
            }
            let mut read = BTreeSet::new();
            for e in elts {
                let r = e.range();
                let text = &self.src[r.start().to_usize()..r.end().to_usize()];
                for (tok, _) in
                    rustpython_parser::lexer::lex(text, rustpython_parser::Mode::Module).flatten()
                {
                    if let rustpython_parser::Tok::Name { name } = tok {
                        read.insert(name);
                    }
                }
            }
            if names.iter().any(|n| read.contains(n)) {
                return unsupported("a swap-like unpacking");
            }
            for (n, e) in names.iter().zip(elts) {
                let v = self.expr(e)?;
                if n != "_" {
                    self.bind(n, v)?;
                }
            }
            return Ok(());
        }
        let v = self.expr(value)?;
        let base = if v.kind == Kind::Exec {
            "result"
        } else {
            "parts"
        };
        let tmp = self.fresh(base);
        self.emit(format!("let {tmp} = {};", v.code));
        self.declare(&tmp, v.kind);
        for (i, n) in names.iter().enumerate() {
            if n == "_" {
                continue;
            }
            let item = if v.kind == Kind::Exec {
                match i {
                    0 => RExpr::atom(format!("{tmp}.status"), Kind::Int),
                    1 => RExpr::atom(format!("{tmp}.stdout"), Kind::Str),
                    _ => return unsupported("unpacking execute() into more than two names"),
                }
            } else {
                RExpr::atom(format!("{tmp}[{i}]"), Kind::Any)
            };
            self.bind(n, item)?;
        }
        Ok(())
    }

    fn aug_assign(&mut self, a: &ast::StmtAugAssign) -> Res<()> {
        let op = match a.op {
            ast::Operator::Add => "+=",
            ast::Operator::Sub => "-=",
            ast::Operator::Mult => "*=",
            ast::Operator::FloorDiv => "//=",
            _ => return unsupported("an augmented assignment other than +=, -=, *=, //="),
        };
        let t = self.expr(&a.target)?;
        let v = self.expr(&a.value)?;
        // Repetition and Python's floor division, as in expressions.
        let helper = match (op, t.kind) {
            ("*=", Kind::Str | Kind::List) => Some("repeat"),
            ("//=", _) => Some("floor_div"),
            _ => None,
        };
        if let Some(f) = helper {
            self.emit(format!("{} = {f}({}, {});", t.code, t.code, v.code));
            return Ok(());
        }
        if op == "*=" && !matches!(t.kind, Kind::Int | Kind::Float) {
            return unsupported("`*=` on a value that may be a string or list");
        }
        self.emit(format!("{} {op} {};", t.code, v.code));
        Ok(())
    }

    fn if_chain(&mut self, i: &ast::StmtIf, is_elif: bool) -> Res<()> {
        let c = self.condition(&i.test)?;
        if is_elif {
            let last = self.out.pop().unwrap_or_default();
            self.out.push(format!("{last} else if {} {{", c.code));
        } else {
            self.emit(format!("if {} {{", c.code));
        }
        self.nested(&i.body, false, &[]);
        self.emit("}");
        match &i.orelse[..] {
            [] => {}
            [ast::Stmt::If(elif)] if self.is_elif(elif) => self.if_chain(elif, true)?,
            other => {
                let last = self.out.pop().unwrap_or_default();
                self.out.push(format!("{last} else {{"));
                self.nested(other, false, &[]);
                self.emit("}");
            }
        }
        Ok(())
    }

    /// `elif` (rather than `else:` + a nested `if`): the `if` is not on a
    /// line of its own after `else:`.
    fn is_elif(&self, i: &ast::StmtIf) -> bool {
        let (line, _) = self.source_lines(i);
        self.line_text(line).trim_start().starts_with("elif")
    }

    fn loop_body(&mut self, body: &[ast::Stmt], params: &[(String, Kind)]) {
        self.loops_in_subtest += 1;
        let flag = self.next_break_flag.take();
        self.break_flags.push(flag);
        self.nested(body, false, params);
        self.break_flags.pop();
        self.loops_in_subtest -= 1;
    }

    /// A loop's `else` (run when no `break` left it): a flag its `break`s
    /// set, declared before the loop.
    fn loop_else_flag(&mut self, orelse: &[ast::Stmt]) -> Option<String> {
        if orelse.is_empty() {
            return None;
        }
        let flag = self.fresh("broke");
        self.emit(format!("let {flag} = false;"));
        self.declare(&flag, Kind::Bool);
        self.next_break_flag = Some(flag.clone());
        Some(flag)
    }

    fn loop_else(&mut self, flag: Option<String>, orelse: &[ast::Stmt]) {
        if let Some(flag) = flag {
            self.emit(format!("if !{flag} {{"));
            self.nested(orelse, false, &[]);
            self.emit("}");
        }
    }

    fn for_loop(&mut self, f: &ast::StmtFor) -> Res<()> {
        let targets: Vec<String> = match &*f.target {
            ast::Expr::Name(n) => vec![n.id.to_string()],
            ast::Expr::Tuple(t) => {
                let mut v = Vec::new();
                for e in &t.elts {
                    let ast::Expr::Name(n) = e else {
                        return unsupported("a nested loop target");
                    };
                    v.push(n.id.to_string());
                }
                v
            }
            _ => return unsupported("a loop target that is not a name"),
        };
        if let ast::Expr::Call(c) = &*f.iter {
            if let ast::Expr::Name(func) = &*c.func {
                if func.id.as_str() == "range" && c.keywords.is_empty() && targets.len() == 1 {
                    let a: Vec<RExpr> = c.args.iter().map(|a| self.expr(a)).collect::<Res<_>>()?;
                    let range = match &a[..] {
                        [n] => format!("0..{}", n.operand()),
                        [x, y] => format!("{}..{}", x.operand(), y.operand()),
                        [x, y, s] => format!("range({}, {}, {})", x.code, y.code, s.code),
                        _ => return unsupported("`range` with no arguments"),
                    };
                    let v = rhai::ident(&targets[0]);
                    self.emit(format!("for {v} in {range} {{"));
                    self.loop_body(&f.body, &[(targets[0].clone(), Kind::Int)]);
                    self.emit("}");
                    return Ok(());
                }
                // With a start, `enumerate(xs, 1)` is the helper's list.
                if func.id.as_str() == "enumerate" && targets.len() == 2 && c.args.len() == 1 {
                    let [xs] = &c.args[..] else {
                        return unsupported("`enumerate` with a start");
                    };
                    let xs = self.expr(xs)?;
                    if !matches!(xs.kind, Kind::List | Kind::Any) {
                        return unsupported("`enumerate` over something other than a list");
                    }
                    let (i, x) = (rhai::ident(&targets[0]), rhai::ident(&targets[1]));
                    self.emit(format!("for ({x}, {i}) in {} {{", xs.operand()));
                    self.loop_body(
                        &f.body,
                        &[
                            (targets[0].clone(), Kind::Int),
                            (targets[1].clone(), Kind::Any),
                        ],
                    );
                    self.emit("}");
                    return Ok(());
                }
            }
            if let ast::Expr::Attribute(a) = &*c.func {
                if a.attr.as_str() == "items" && c.args.is_empty() && targets.len() == 2 {
                    let d = self.expr(&a.value)?;
                    let (k, v) = (rhai::ident(&targets[0]), rhai::ident(&targets[1]));
                    // Evaluated once, as Python does.
                    let d_code = if matches!(&*a.value, ast::Expr::Name(_)) {
                        d.operand()
                    } else {
                        let tmp = self.fresh("map");
                        self.emit(format!("let {tmp} = {};", d.code));
                        self.declare(&tmp, Kind::Map);
                        tmp
                    };
                    self.emit(format!("for {k} in {d_code}.keys() {{"));
                    self.indent += 1;
                    self.emit(format!("let {v} = {d_code}[{k}];"));
                    self.indent -= 1;
                    self.loop_body(
                        &f.body,
                        &[
                            (targets[0].clone(), Kind::Str),
                            (targets[1].clone(), Kind::Any),
                        ],
                    );
                    self.emit("}");
                    return Ok(());
                }
            }
        }
        let xs = self.expr(&f.iter)?;
        let xs_code = match xs.kind {
            Kind::Str => return unsupported("a loop over a string (Rhai yields characters)"),
            Kind::Map => format!("{}.keys()", xs.operand()),
            Kind::List | Kind::Any => xs.operand(),
            _ => return unsupported("a loop over something other than a list"),
        };
        if targets.len() == 1 {
            let v = rhai::ident(&targets[0]);
            self.emit(format!("for {v} in {xs_code} {{"));
            self.loop_body(
                &f.body,
                &[(targets[0].clone(), super::expr::element_kind(&xs))],
            );
        } else {
            let tmp = self.fresh("item");
            self.emit(format!("for {tmp} in {xs_code} {{"));
            self.indent += 1;
            for (i, t) in targets.iter().enumerate() {
                self.emit(format!("let {} = {tmp}[{i}];", rhai::ident(t)));
            }
            self.indent -= 1;
            let params: Vec<(String, Kind)> = targets
                .iter()
                .map(|t| (t.clone(), Kind::Any))
                .chain([(tmp.clone(), Kind::List)])
                .collect();
            self.loop_body(&f.body, &params);
        }
        self.emit("}");
        Ok(())
    }

    fn with(&mut self, w: &ast::StmtWith) -> Res<()> {
        // `with a, b:` is `with a:` around `with b:`.
        if w.items.len() > 1 {
            let mut outer = w.clone();
            let mut inner = w.clone();
            outer.items.truncate(1);
            inner.items.remove(0);
            outer.body = vec![ast::Stmt::With(inner)];
            return self.with(&outer);
        }
        let [item] = &w.items[..] else {
            return unsupported("`with` without a context manager");
        };
        if item.optional_vars.is_some() {
            // `with open(p) as f:` reads or writes a file on the driver's host.
            if let ast::Expr::Call(c) = &item.context_expr {
                if matches!(&*c.func, ast::Expr::Name(n) if n.id.as_str() == "open") {
                    self.host_modules.insert("open()".into());
                    return unsupported(
                        "host-side Python (`with open(…)`: a file on the driver's host)",
                    );
                }
            }
            return unsupported("`with … as`");
        }
        // `with foo_running:` over a `@polling_condition`.
        if let ast::Expr::Name(n) = &item.context_expr {
            if self.polling.contains(n.id.as_str()) {
                let head = format!("{}.during(|| {{", rhai::ident(&n.id));
                self.closure_block(head, &w.body);
                return Ok(());
            }
        }
        let ast::Expr::Call(c) = &item.context_expr else {
            return unsupported("a `with` other than `with subtest(…)`");
        };
        // `with record_audio(machine):` over a `@contextmanager` function:
        // the body becomes its last argument.
        if let ast::Expr::Name(n) = &*c.func {
            if self.context_managers.contains(n.id.as_str()) {
                let call = self.call(c)?.code;
                let Some(head) = call.strip_suffix(')') else {
                    return unsupported("an unusual call of a `@contextmanager`");
                };
                let sep = if head.ends_with('(') { "" } else { ", " };
                self.closure_block(format!("{head}{sep}|| {{"), &w.body);
                return Ok(());
            }
        }
        let is_subtest = matches!(&*c.func, ast::Expr::Name(n) if n.id.as_str() == "subtest");
        let is_nested = matches!(&*c.func, ast::Expr::Attribute(a) if a.attr.as_str() == "nested");
        if !is_subtest && !is_nested {
            return unsupported(
                "a `with` other than `with subtest(…)` or `with machine.nested(…)`",
            );
        }
        let [name] = &c.args[..] else {
            return unsupported("`subtest` with other than one argument");
        };
        let name = self.expr(name)?;
        if is_nested {
            self.emit("// a `nested(…)` log section in Python; here a subtest");
        }
        self.closure_block(format!("subtest({}, || {{", name.code), &w.body);
        Ok(())
    }

    /// `head` (ending in `|| {`), `body` as the closure's statements, `});`:
    /// a `return`, `break` or `continue` there would leave only the closure.
    fn closure_block(&mut self, head: String, body: &[ast::Stmt]) {
        // A subtest returns its closure's value: a `return` inside one in a
        // function comes back as a one-element array and is returned here
        // (or passed on to an enclosing subtest's closure).
        let is_subtest = head.starts_with("subtest(");
        let returns = self.in_function > 0
            && (self.in_subtest == 0 || self.closure_returns.last() == Some(&true))
            && is_subtest
            && has_return(body);
        let result = returns.then(|| self.fresh("returned"));
        match &result {
            Some(r) => self.emit(format!("let {r} = {head}")),
            None => self.emit(head),
        }
        self.closure_returns.push(returns);
        self.in_subtest += 1;
        let saved_loops = std::mem::replace(&mut self.loops_in_subtest, 0);
        self.nested(body, false, &[]);
        if returns {
            // Rhai's closure gives its last statement's value: only a
            // `return [v]` may give an array.
            self.indent += 1;
            self.emit("()");
            self.indent -= 1;
        }
        self.loops_in_subtest = saved_loops;
        self.in_subtest -= 1;
        self.closure_returns.pop();
        self.emit("});");
        if let Some(r) = result {
            let value = if self.in_subtest > 0 {
                r.clone()
            } else {
                format!("{r}[0]")
            };
            self.emit(format!(
                "if type_of({r}) == \"array\" {{ return {value}; }}"
            ));
        }
    }

    /// `@polling_condition` / `@polling_condition(seconds_interval=…,
    /// description=…)` over a `def` without parameters: attest's
    /// `let f = polling_condition(|| { … }, #{ … });`.
    fn polling_condition(&mut self, d: &ast::StmtFunctionDef) -> Res<()> {
        let [deco] = &d.decorator_list[..] else {
            return unsupported("several decorators");
        };
        let is_pc =
            |e: &ast::Expr| matches!(e, ast::Expr::Name(n) if n.id.as_str() == "polling_condition");
        let mut options = Vec::new();
        match deco {
            e if is_pc(e) => {}
            ast::Expr::Call(c) if is_pc(&c.func) && c.args.is_empty() => {
                for k in &c.keywords {
                    match k.arg.as_ref().map(|a| a.as_str()) {
                        Some(a @ ("seconds_interval" | "description")) => {
                            options.push(format!("{a}: {}", self.expr(&k.value)?.code));
                        }
                        _ => return unsupported("a `polling_condition` argument other than seconds_interval or description"),
                    }
                }
            }
            _ => return unsupported("decorators other than `@polling_condition`"),
        }
        let a = &d.args;
        if !a.args.is_empty()
            || !a.posonlyargs.is_empty()
            || a.vararg.is_some()
            || a.kwarg.is_some()
            || !a.kwonlyargs.is_empty()
        {
            return unsupported("a `@polling_condition` function with parameters");
        }
        let name = d.name.to_string();
        let opts = if options.is_empty() {
            String::new()
        } else {
            format!(", #{{ {} }}", options.join(", "))
        };
        let saved = (
            std::mem::replace(&mut self.in_subtest, 0),
            std::mem::replace(&mut self.loops_in_subtest, 0),
        );
        self.in_function += 1;
        let head = if self.declared(&name).is_some() {
            format!("{} = polling_condition(|| {{", rhai::ident(&name))
        } else {
            self.declare(&name, Kind::Any);
            format!("let {} = polling_condition(|| {{", rhai::ident(&name))
        };
        self.emit(head);
        self.nested(&d.body, false, &[]);
        self.emit(format!("}}{opts});"));
        self.in_function -= 1;
        (self.in_subtest, self.loops_in_subtest) = saved;
        self.polling.insert(name);
        Ok(())
    }

    fn def(&mut self, d: &ast::StmtFunctionDef) -> Res<()> {
        let context_manager = matches!(&d.decorator_list[..], [deco] if is_context_manager(deco));
        if !d.decorator_list.is_empty() && !context_manager {
            return self.polling_condition(d);
        }
        if context_manager {
            self.context_managers.insert(d.name.to_string());
        }
        if d.args.kwarg.is_some() {
            return unsupported("`**kwargs`");
        }
        let name = d.name.to_string();
        let sig = self.functions[&name].clone();
        let mut params: Vec<(String, Kind)> =
            sig.params.iter().map(|p| (p.clone(), Kind::Any)).collect();
        if let Some(v) = &d.args.vararg {
            params.push((v.arg.to_string(), Kind::List));
        }
        // A `@contextmanager` takes the `with` body; its `yield` calls it.
        if context_manager {
            params.push((WITH_BODY.to_owned(), Kind::Any));
            self.in_context_manager += 1;
        }
        let list: Vec<String> = params.iter().map(|(p, _)| rhai::ident(p)).collect();
        let saved = (
            std::mem::replace(&mut self.in_subtest, 0),
            std::mem::replace(&mut self.loops_in_subtest, 0),
        );
        self.in_function += 1;
        if sig.closure {
            // Closures it calls that are defined later: declared now, so the
            // capture sees them once assigned.
            let later: Vec<String> = self
                .functions
                .iter()
                .filter(|(n, f)| f.closure && **n != name && self.declared(n).is_none())
                .map(|(n, _)| n.clone())
                .filter(|n| {
                    let r = d.range();
                    let body = &self.src[r.start().to_usize()..r.end().to_usize()];
                    body.contains(n.as_str())
                })
                .collect();
            for n in later {
                self.emit(format!("let {};", rhai::ident(&n)));
                self.declare(&n, Kind::Any);
            }
            let head = if self.declared(&name).is_some() {
                format!("{} = |{}| {{", rhai::ident(&name), list.join(", "))
            } else {
                self.declare(&name, Kind::Any);
                format!("let {} = |{}| {{", rhai::ident(&name), list.join(", "))
            };
            self.emit(head);
            self.nested(&d.body, false, &params);
            if !context_manager {
                self.returns_none_at_end(d);
            }
            self.emit("};");
        } else {
            self.emit(format!("fn {}({}) {{", rhai::ident(&name), list.join(", ")));
            self.nested(&d.body, true, &params);
            if !context_manager {
                self.returns_none_at_end(d);
            }
            self.emit("}");
        }
        self.in_function -= 1;
        if context_manager {
            self.in_context_manager -= 1;
        }
        (self.in_subtest, self.loops_in_subtest) = saved;
        Ok(())
    }

    /// A Python function that ends without `return` returns None; a Rhai
    /// function returns its last statement's value (`m.succeed(…);` its
    /// output), which `retry` or a condition would read as true.
    fn returns_none_at_end(&mut self, d: &ast::StmtFunctionDef) {
        if matches!(
            d.body.last(),
            Some(ast::Stmt::Return(_) | ast::Stmt::Raise(_))
        ) {
            return;
        }
        self.indent += 1;
        self.emit("() // Python's None: the function ends without `return`");
        self.indent -= 1;
    }

    fn raise(&mut self, r: &ast::StmtRaise) -> Res<()> {
        if r.cause.is_some() {
            return unsupported("`raise … from …`");
        }
        let Some(exc) = &r.exc else {
            return unsupported("a bare `raise`");
        };
        let msg = match &**exc {
            ast::Expr::Call(c) => {
                let ast::Expr::Name(n) = &*c.func else {
                    return unsupported("raising a computed exception");
                };
                match &c.args[..] {
                    [] => RExpr::atom(rhai::string(n.id.as_str()), Kind::Str),
                    [m] => self.expr(m)?,
                    _ => return unsupported("an exception with several arguments"),
                }
            }
            ast::Expr::Name(n) if self.declared(n.id.as_str()).is_some() => self.expr(exc)?,
            _ => return unsupported("raising something other than `SomeError(message)`"),
        };
        self.emit(format!("throw {};", msg.code));
        Ok(())
    }

    /// `try`/`except`/`else`/`finally`. Rhai has `try`/`catch` only: `else`
    /// runs after the body behind a flag (outside the `catch`), `finally`
    /// after an outer `try` that keeps the error to throw again.
    fn try_stmt(&mut self, t: &ast::StmtTry) -> Res<()> {
        let handler = match &t.handlers[..] {
            [] => None,
            [ast::ExceptHandler::ExceptHandler(h)] => Some(h),
            _ => return unsupported("`try` with several `except` clauses"),
        };
        if let Some(h) = handler {
            let catch_all = match h.type_.as_deref() {
                None => true,
                Some(ast::Expr::Name(n)) => {
                    matches!(n.id.as_str(), "Exception" | "BaseException")
                }
                _ => false,
            };
            if !catch_all {
                return unsupported(
                    "`except` of a specific exception type (attest errors have no types)",
                );
            }
        }
        let failure = (!t.finalbody.is_empty()).then(|| {
            let v = self.fresh("failure");
            self.emit(format!("let {v} = ();"));
            self.declare(&v, Kind::Any);
            self.emit("try {");
            v
        });
        if let Some(h) = handler {
            if failure.is_some() {
                self.indent += 1;
            }
            if !t.orelse.is_empty() {
                // The `else` reads what the body bound.
                let mut bound = BTreeSet::new();
                assigned_names(&t.body, &mut bound);
                for n in bound {
                    if self.declared(&n).is_none() {
                        self.emit(format!("let {};", rhai::ident(&n)));
                        self.declare(&n, Kind::Any);
                    }
                }
            }
            let ok = (!t.orelse.is_empty()).then(|| {
                let v = self.fresh("succeeded");
                self.emit(format!("let {v} = false;"));
                self.declare(&v, Kind::Bool);
                v
            });
            self.emit("try {");
            self.nested(&t.body, false, &[]);
            if let Some(ok) = &ok {
                self.indent += 1;
                self.emit(format!("{ok} = true;"));
                self.indent -= 1;
            }
            match &h.name {
                Some(n) => {
                    self.emit(format!("}} catch ({}) {{", rhai::ident(n.as_str())));
                    self.nested(&h.body, false, &[(n.to_string(), Kind::Any)]);
                }
                None => {
                    self.emit("} catch {");
                    self.nested(&h.body, false, &[]);
                }
            }
            self.emit("}");
            if let Some(ok) = ok {
                self.emit(format!("if {ok} {{"));
                self.nested(&t.orelse, false, &[]);
                self.emit("}");
            }
            if failure.is_some() {
                self.indent -= 1;
            }
        } else {
            if !t.orelse.is_empty() {
                return unsupported("`try … else` without `except`");
            }
            self.nested(&t.body, false, &[]);
        }
        if let Some(v) = failure {
            self.emit(format!("}} catch (e) {{ {v} = e; }}"));
            self.block(&t.finalbody);
            self.emit(format!("if type_of({v}) != \"()\" {{ throw {v}; }}"));
        }
        Ok(())
    }

    fn assert(&mut self, a: &ast::StmtAssert) -> Res<()> {
        let msg = match &a.msg {
            Some(m) => Some(self.expr(m)?),
            None => None,
        };
        // The dedicated asserts say more on failure; with a message of its
        // own, Python's message wins.
        if msg.is_none() {
            if let ast::Expr::Compare(c) = &*a.test {
                if let ([op], [right]) = (&c.ops[..], &c.comparators[..]) {
                    let l = self.expr(&c.left)?;
                    let r = self.expr(right)?;
                    let string_ops = l.kind == Kind::Str && matches!(r.kind, Kind::Str | Kind::Any);
                    match op {
                        ast::CmpOp::In if string_ops => {
                            self.emit(format!("assert_contains({}, {});", r.code, l.code));
                            return Ok(());
                        }
                        ast::CmpOp::NotIn if string_ops => {
                            self.emit(format!("assert_not_contains({}, {});", r.code, l.code));
                            return Ok(());
                        }
                        ast::CmpOp::Eq => {
                            self.emit(format!("assert_eq({}, {});", l.code, r.code));
                            return Ok(());
                        }
                        _ => {}
                    }
                }
            }
            if let ast::Expr::Call(c) = &*a.test {
                if let ast::Expr::Attribute(at) = &*c.func {
                    let is_re = matches!(&*at.value, ast::Expr::Name(n) if n.id.as_str() == "re" && self.declared("re").is_none());
                    if is_re && at.attr.as_str() == "search" && c.keywords.is_empty() {
                        if let [p, t] = &c.args[..] {
                            let p = self.expr(p)?;
                            let t = self.expr(t)?;
                            self.emit(format!("assert_matches({}, {});", t.code, p.code));
                            return Ok(());
                        }
                    }
                }
            }
        }
        let test = self.condition(&a.test)?;
        let msg = match msg {
            Some(m) => m.code,
            None => {
                let r = a.test.range();
                let text = &self.src[r.start().to_usize()..r.end().to_usize()];
                let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                string_literal(&format!("assertion failed: {one_line}"))
            }
        };
        self.emit(format!("if !{} {{", test.operand()));
        self.indent += 1;
        self.emit(format!("throw {msg};"));
        self.indent -= 1;
        self.emit("}");
        Ok(())
    }
}
