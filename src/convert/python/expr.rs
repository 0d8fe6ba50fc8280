//! Expressions: literals, f-strings and `str.format`, operators,
//! comparisons, subscripts, comprehensions, lambdas.

use rustpython_parser::ast::{self, CmpOp, Constant, Operator, UnaryOp};

use super::rhai::{self, Kind, RExpr};
use super::{unsupported, Res, Translator};

/// A piece of a string being built from literal text and values.
pub(super) enum Piece {
    Lit(String),
    Val(RExpr),
}

impl Translator<'_> {
    pub(super) fn expr(&mut self, e: &ast::Expr) -> Res<RExpr> {
        match e {
            ast::Expr::Constant(c) => constant(&c.value),
            ast::Expr::Name(n) => self.name(n.id.as_str()),
            ast::Expr::JoinedStr(j) => {
                let pieces = self.fstring_pieces(j)?;
                Ok(build_string(pieces))
            }
            ast::Expr::BinOp(b) => self.binop(b),
            ast::Expr::UnaryOp(u) => {
                let v = self.expr(&u.operand)?;
                match u.op {
                    UnaryOp::Not => {
                        let c = self.truthy(v);
                        Ok(RExpr::op(format!("!{}", c.operand()), Kind::Bool))
                    }
                    UnaryOp::USub => Ok(RExpr::op(format!("-{}", v.operand()), v.kind)),
                    UnaryOp::UAdd => Ok(v),
                    UnaryOp::Invert => unsupported("`~` (bitwise not)"),
                }
            }
            ast::Expr::BoolOp(b) => {
                let values = b
                    .values
                    .iter()
                    .map(|v| self.expr(v))
                    .collect::<Res<Vec<_>>>()?;
                if values.iter().all(|v| v.kind == Kind::Bool) {
                    return Ok(bool_op(b.op, values.iter().map(RExpr::operand)));
                }
                // Python returns an operand: the first false one (`and`) or
                // true one (`or`), else the last; each evaluated once, the
                // rest only when needed.
                let kind = if values.windows(2).all(|w| w[0].kind == w[1].kind) {
                    values[0].kind
                } else {
                    Kind::Any
                };
                let mut rest = values.into_iter().rev();
                let mut code = rest.next().map(|v| v.code).unwrap_or_default();
                for v in rest {
                    let t = self.fresh("operand");
                    let test = self.truthy(RExpr::atom(t.clone(), v.kind)).code;
                    code = match b.op {
                        ast::BoolOp::And => format!(
                            "{{ let {t} = {}; if {test} {{ {code} }} else {{ {t} }} }}",
                            v.code
                        ),
                        ast::BoolOp::Or => format!(
                            "{{ let {t} = {}; if {test} {{ {t} }} else {{ {code} }} }}",
                            v.code
                        ),
                    };
                }
                Ok(RExpr::atom(code, kind))
            }
            ast::Expr::Compare(c) => self.compare(c),
            ast::Expr::Call(c) => self.call(c),
            ast::Expr::Attribute(a) => {
                if a.attr.as_str() == "name" {
                    let v = self.expr(&a.value)?;
                    if matches!(v.kind, Kind::Machine | Kind::Any) {
                        return Ok(RExpr::atom(format!("{}.name", v.operand()), Kind::Str));
                    }
                }
                unsupported(format!("attribute `.{}`", a.attr))
            }
            ast::Expr::Subscript(s) => self.subscript(s),
            ast::Expr::List(l) => self.array(&l.elts),
            ast::Expr::Tuple(t) => self.array(&t.elts),
            ast::Expr::Dict(d) => {
                let mut entries = Vec::new();
                for (k, v) in d.keys.iter().zip(&d.values) {
                    let Some(ast::Expr::Constant(ast::ExprConstant {
                        value: Constant::Str(k),
                        ..
                    })) = k
                    else {
                        return unsupported("a dict with non-string keys");
                    };
                    let v = self.expr(v)?;
                    entries.push(format!("{}: {}", map_key(k), v.code));
                }
                Ok(RExpr::atom(
                    format!("#{{ {} }}", entries.join(", ")),
                    Kind::Map,
                ))
            }
            ast::Expr::IfExp(i) => {
                let test = self.condition(&i.test)?;
                let a = self.expr(&i.body)?;
                let b = self.expr(&i.orelse)?;
                let kind = if a.kind == b.kind { a.kind } else { Kind::Any };
                Ok(RExpr::op(
                    format!("if {} {{ {} }} else {{ {} }}", test.code, a.code, b.code),
                    kind,
                ))
            }
            ast::Expr::Lambda(l) => {
                let a = &l.args;
                if a.vararg.is_some()
                    || a.kwarg.is_some()
                    || !a.kwonlyargs.is_empty()
                    || a.args.iter().any(|p| p.default.is_some())
                {
                    return unsupported("a lambda with default, keyword or * arguments");
                }
                let params: Vec<String> = a.args.iter().map(|p| rhai::ident(&p.def.arg)).collect();
                self.blocks.push(Default::default());
                for p in &a.args {
                    self.declare(p.def.arg.as_str(), Kind::Any);
                }
                let body = self.expr(&l.body);
                self.blocks.pop();
                Ok(RExpr::op(
                    format!("|{}| {}", params.join(", "), body?.code),
                    Kind::Any,
                ))
            }
            ast::Expr::ListComp(c) => self.comprehension(&c.elt, &c.generators),
            ast::Expr::GeneratorExp(c) => self.comprehension(&c.elt, &c.generators),
            ast::Expr::Slice(_) => unsupported("slices"),
            ast::Expr::Set(_) | ast::Expr::SetComp(_) => unsupported("sets"),
            ast::Expr::DictComp(d) => self.dict_comprehension(d),
            ast::Expr::Starred(_) => unsupported("`*` unpacking"),
            ast::Expr::NamedExpr(_) => unsupported("`:=`"),
            ast::Expr::Await(_) | ast::Expr::Yield(_) | ast::Expr::YieldFrom(_) => {
                unsupported("generators and async code")
            }
            ast::Expr::FormattedValue(_) => unsupported("a bare formatted value"),
        }
    }

    fn name(&mut self, id: &str) -> Res<RExpr> {
        if let Some(i) = id
            .strip_prefix("__nix_interp_")
            .and_then(|r| r.strip_suffix("__"))
            .and_then(|n| n.parse::<usize>().ok())
        {
            // `${toString port}` in code is a number once Nix renders it.
            if self.interpolations.get(i).is_some_and(|t| {
                [
                    "${toString ",
                    "${toString(",
                    "${builtins.toString ",
                    "${builtins.toString(",
                ]
                .iter()
                .any(|p| t.starts_with(p))
            }) {
                return Ok(RExpr::atom(
                    format!("parse_int(\"{}\")", super::super::nix::placeholder(i)),
                    Kind::Int,
                ));
            }
            return unsupported(
                "a Nix interpolation in code position (its value is known only to Nix; write it as a literal)",
            );
        }
        if let Some(kind) = self.declared(id) {
            if kind == Kind::Todo {
                return unsupported(format!("uses `{id}`, which a statement left as TODO binds"));
            }
            return Ok(RExpr::atom(rhai::ident(id), kind));
        }
        if self.is_node(id) {
            return node_expr(id);
        }
        // The NixOS driver's list of every machine; attest's scope has it too.
        if id == "machines" {
            return Ok(RExpr::atom("machines", Kind::List));
        }
        if self.functions.contains_key(id) {
            return Ok(RExpr::atom(
                format!("Fn(\"{}\")", rhai::ident(id)),
                Kind::Any,
            ));
        }
        if self.modules.contains_key(id) || super::KNOWN_MODULES.contains(&id) {
            return unsupported(format!("the module `{id}` as a value"));
        }
        if self.guess_nodes && !self.used_as_variable(id) {
            self.guessed.insert(id.to_owned());
            self.nodes.insert(id.to_owned());
            return node_expr(id);
        }
        unsupported(format!(
            "`{id}` is not defined in the script (a Python builtin or a name from elsewhere)"
        ))
    }

    /// Whether the script ever assigns `id` (then it is no node).
    fn used_as_variable(&self, id: &str) -> bool {
        self.all_assigned.contains(id)
    }

    fn array(&mut self, elts: &[ast::Expr]) -> Res<RExpr> {
        let mut items = Vec::new();
        let mut kinds = Vec::new();
        for e in elts {
            let v = self.expr(e)?;
            kinds.push(v.kind);
            items.push(v.code);
        }
        Ok(RExpr::atom(format!("[{}]", items.join(", ")), Kind::List))
    }

    /// A Python test as a Rhai boolean: `and`/`or`/`not` over the operands'
    /// truth (the operand Python's `and`/`or` return has the same truth).
    pub(super) fn condition(&mut self, e: &ast::Expr) -> Res<RExpr> {
        match e {
            ast::Expr::BoolOp(b) => {
                let parts = b
                    .values
                    .iter()
                    .map(|v| Ok(self.condition(v)?.operand()))
                    .collect::<Res<Vec<_>>>()?;
                Ok(bool_op(b.op, parts.into_iter()))
            }
            ast::Expr::UnaryOp(u) if u.op == ast::UnaryOp::Not => {
                let c = self.condition(&u.operand)?;
                Ok(RExpr::op(format!("!{}", c.operand()), Kind::Bool))
            }
            _ => {
                let v = self.expr(e)?;
                Ok(self.truthy(v))
            }
        }
    }

    /// A condition: Python truthiness made explicit where the type is known.
    pub(super) fn truthy(&self, v: RExpr) -> RExpr {
        match v.kind {
            Kind::Str => RExpr::op(format!("{} != \"\"", v.operand()), Kind::Bool),
            Kind::List => RExpr::op(format!("{}.len() > 0", v.operand()), Kind::Bool),
            Kind::Map => RExpr::op(format!("{}.len() > 0", v.operand()), Kind::Bool),
            Kind::Int => RExpr::op(format!("{} != 0", v.operand()), Kind::Bool),
            Kind::Float => RExpr::op(format!("{} != 0.0", v.operand()), Kind::Bool),
            Kind::Unit => RExpr::atom("false", Kind::Bool),
            Kind::Match => RExpr::op(format!("{} != ()", v.operand()), Kind::Bool),
            // Unknown type: Python's truth at run time (a Rhai condition
            // stops on anything but a boolean).
            Kind::Any => RExpr::atom(format!("truthy({})", v.code), Kind::Bool),
            Kind::Bool | Kind::Machine | Kind::Exec | Kind::Todo => v,
        }
    }

    pub(super) fn fstring_pieces(&mut self, j: &ast::ExprJoinedStr) -> Res<Vec<Piece>> {
        let mut pieces = Vec::new();
        for v in &j.values {
            match v {
                ast::Expr::Constant(ast::ExprConstant {
                    value: Constant::Str(s),
                    ..
                }) => pieces.push(Piece::Lit(s.clone())),
                ast::Expr::FormattedValue(f) => {
                    let v = self.expr(&f.value)?;
                    let v = match f.conversion {
                        ast::ConversionFlag::None | ast::ConversionFlag::Str => v,
                        ast::ConversionFlag::Repr => {
                            RExpr::atom(format!("repr({})", v.code), Kind::Str)
                        }
                        _ => return unsupported("an f-string conversion `!a`"),
                    };
                    let v = match &f.format_spec {
                        None => v,
                        Some(spec) => {
                            let Some(spec) = literal_spec(spec) else {
                                return unsupported(
                                    "an f-string format spec with a computed part (`{x:{w}}`)",
                                );
                            };
                            with_spec(v, &spec)
                        }
                    };
                    pieces.push(Piece::Val(v));
                }
                _ => return unsupported("an unusual f-string part"),
            }
        }
        Ok(pieces)
    }

    /// `"…{}…".format(…)`.
    pub(super) fn format_call(
        &mut self,
        fmt: &str,
        args: &[ast::Expr],
        keywords: &[ast::Keyword],
    ) -> Res<RExpr> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut auto = 0;
        let mut chars = fmt.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut field = String::new();
                    for c in chars.by_ref() {
                        if c == '}' {
                            break;
                        }
                        field.push(c);
                    }
                    let (field, spec) = match field.split_once(':') {
                        Some((f, spec)) => (f.to_owned(), Some(spec.to_owned())),
                        None => (field, None),
                    };
                    let (field, repr) = match field.strip_suffix("!r") {
                        Some(f) => (f.to_owned(), true),
                        None => (field, false),
                    };
                    if field.contains(['!', '.', '[', '{'])
                        || spec.as_ref().is_some_and(|s| s.contains('{'))
                    {
                        return unsupported(
                            "a `str.format` field with a conversion other than !r, an access or a nested field",
                        );
                    }
                    let value = if field.is_empty() {
                        auto += 1;
                        args.get(auto - 1)
                    } else if let Ok(i) = field.parse::<usize>() {
                        args.get(i)
                    } else {
                        keywords
                            .iter()
                            .find(|k| k.arg.as_ref().is_some_and(|a| a.as_str() == field))
                            .map(|k| &k.value)
                    };
                    let Some(value) = value else {
                        return unsupported("a `str.format` field without an argument");
                    };
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    let mut v = self.expr(value)?;
                    if repr {
                        v = RExpr::atom(format!("repr({})", v.code), Kind::Str);
                    }
                    if let Some(spec) = spec {
                        v = with_spec(v, &spec);
                    }
                    pieces.push(Piece::Val(v));
                }
                '}' => return unsupported("a single `}` in a format string"),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(build_string(pieces))
    }

    /// `"…%s…" % x`.
    fn percent_format(&mut self, fmt: &str, rhs: &ast::Expr) -> Res<RExpr> {
        let values: Vec<&ast::Expr> = match rhs {
            ast::Expr::Tuple(t) => t.elts.iter().collect(),
            other => vec![other],
        };
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut next = values.into_iter();
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            // `%[flags][width][.precision]type`, as a format spec.
            let mut conv = String::new();
            let ty = loop {
                match chars.next() {
                    Some(c @ ('-' | '+' | ' ' | '0'..='9' | '.')) => conv.push(c),
                    other => break other,
                }
            };
            match ty {
                Some('%') if conv.is_empty() => lit.push('%'),
                Some(t @ ('s' | 'd' | 'i' | 'f' | 'x' | 'X' | 'o' | 'e')) => {
                    let Some(v) = next.next() else {
                        return unsupported("`%` formatting with too few values");
                    };
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    let v = self.expr(v)?;
                    let plain = conv.is_empty() && matches!(t, 's' | 'd' | 'i');
                    pieces.push(Piece::Val(if plain {
                        v
                    } else {
                        let (left, conv) = match conv.strip_prefix('-') {
                            Some(c) => ("<", c),
                            None => ("", conv.as_str()),
                        };
                        let t = match t {
                            's' => String::new(),
                            'i' => "d".to_owned(),
                            t => t.to_string(),
                        };
                        with_spec(v, &format!("{left}{conv}{t}"))
                    }));
                }
                _ => return unsupported("a `%` format other than s, d, i, f, x, X, o, e"),
            }
        }
        if next.next().is_some() {
            return unsupported("`%` formatting with too many values");
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(build_string(pieces))
    }

    fn binop(&mut self, b: &ast::ExprBinOp) -> Res<RExpr> {
        if b.op == Operator::Mod {
            if let ast::Expr::Constant(ast::ExprConstant {
                value: Constant::Str(fmt),
                ..
            }) = &*b.left
            {
                return self.percent_format(fmt, &b.right);
            }
        }
        let l = self.expr(&b.left)?;
        let r = self.expr(&b.right)?;
        let numeric = |k: Kind| matches!(k, Kind::Int | Kind::Float | Kind::Any);
        let (op, kind) = match b.op {
            Operator::Add => {
                let kind = match (l.kind, r.kind) {
                    (Kind::Str, _) | (_, Kind::Str) => Kind::Str,
                    (Kind::List, _) => Kind::List,
                    (Kind::Int, Kind::Int) => Kind::Int,
                    (Kind::Float, _) | (_, Kind::Float) => Kind::Float,
                    _ => Kind::Any,
                };
                ("+", kind)
            }
            Operator::Sub => ("-", num_kind(l.kind, r.kind)),
            Operator::Mult => {
                // `"-" * 40`, `[0] * n`: repetition.
                let seq = |k: Kind| matches!(k, Kind::Str | Kind::List);
                if seq(l.kind) && matches!(r.kind, Kind::Int | Kind::Any) {
                    return Ok(RExpr::atom(
                        format!("repeat({}, {})", l.code, r.code),
                        l.kind,
                    ));
                }
                if seq(r.kind) && matches!(l.kind, Kind::Int | Kind::Any) {
                    return Ok(RExpr::atom(
                        format!("repeat({}, {})", r.code, l.code),
                        r.kind,
                    ));
                }
                if !numeric(l.kind) || !numeric(r.kind) {
                    return unsupported("`*` on strings or lists (repetition)");
                }
                ("*", num_kind(l.kind, r.kind))
            }
            Operator::Div => {
                // Python's `/` is always float division; Rhai's divides ints.
                if l.kind == Kind::Float || r.kind == Kind::Float {
                    ("/", Kind::Float)
                } else {
                    return Ok(RExpr::op(
                        format!("to_float({}) / {}", l.code, r.operand()),
                        Kind::Float,
                    ));
                }
            }
            Operator::Mod if numeric(l.kind) => ("%", num_kind(l.kind, r.kind)),
            Operator::Pow => ("**", num_kind(l.kind, r.kind)),
            Operator::BitAnd => ("&", Kind::Int),
            Operator::BitOr => ("|", Kind::Int),
            Operator::BitXor => ("^", Kind::Int),
            Operator::LShift => ("<<", Kind::Int),
            Operator::RShift => (">>", Kind::Int),
            // Python floors where Rhai truncates.
            Operator::FloorDiv => {
                return Ok(RExpr::atom(
                    format!("floor_div({}, {})", l.code, r.code),
                    num_kind(l.kind, r.kind),
                ));
            }
            _ => return unsupported(format!("the operator {:?}", b.op)),
        };
        // Rhai's `+`, `-` and `*` are left-associative like Python's: a
        // chain `a + b + c` needs no parentheses on its left.
        let same_op_on_left = matches!(&*b.left, ast::Expr::BinOp(inner) if inner.op == b.op)
            && matches!(b.op, Operator::Add | Operator::Sub | Operator::Mult);
        let left = if same_op_on_left { l.code } else { l.operand() };
        Ok(RExpr::op(format!("{left} {op} {}", r.operand()), kind))
    }

    fn compare(&mut self, c: &ast::ExprCompare) -> Res<RExpr> {
        let mut left_src = &*c.left;
        let mut parts = Vec::new();
        for (i, (op, right)) in c.ops.iter().zip(&c.comparators).enumerate() {
            if i > 0 && !matches!(left_src, ast::Expr::Name(_) | ast::Expr::Constant(_)) {
                return unsupported("a chained comparison over a computed value");
            }
            let l = self.expr(left_src)?;
            let r = self.expr(right)?;
            parts.push(self.compare_one(op, l, r, right)?);
            left_src = right;
        }
        if parts.len() == 1 {
            return Ok(parts
                .pop()
                .unwrap_or_else(|| RExpr::atom("true", Kind::Bool)));
        }
        let joined: Vec<String> = parts.iter().map(|p| p.operand()).collect();
        Ok(RExpr::op(joined.join(" && "), Kind::Bool))
    }

    fn compare_one(&mut self, op: &CmpOp, l: RExpr, r: RExpr, right: &ast::Expr) -> Res<RExpr> {
        let s = match op {
            CmpOp::Eq => format!("{} == {}", l.operand(), r.operand()),
            CmpOp::NotEq => format!("{} != {}", l.operand(), r.operand()),
            CmpOp::Lt => format!("{} < {}", l.operand(), r.operand()),
            CmpOp::LtE => format!("{} <= {}", l.operand(), r.operand()),
            CmpOp::Gt => format!("{} > {}", l.operand(), r.operand()),
            CmpOp::GtE => format!("{} >= {}", l.operand(), r.operand()),
            CmpOp::Is | CmpOp::IsNot => {
                let singleton = matches!(
                    right,
                    ast::Expr::Constant(ast::ExprConstant {
                        value: Constant::None | Constant::Bool(_),
                        ..
                    })
                );
                if !singleton {
                    return unsupported("`is` with something other than None, True or False");
                }
                let eq = if *op == CmpOp::Is { "==" } else { "!=" };
                format!("{} {eq} {}", l.operand(), r.operand())
            }
            CmpOp::In => format!("{} in {}", l.operand(), r.operand()),
            CmpOp::NotIn => format!("!({} in {})", l.operand(), r.operand()),
        };
        Ok(RExpr::op(s, Kind::Bool))
    }

    fn subscript(&mut self, s: &ast::ExprSubscript) -> Res<RExpr> {
        let v = self.expr(&s.value)?;
        if let ast::Expr::Slice(sl) = &*s.slice {
            if sl.step.is_some() {
                return unsupported("a slice with a step");
            }
            let mut bound = |b: &Option<Box<ast::Expr>>| -> Res<String> {
                match b {
                    Some(b) => Ok(self.expr(b)?.code),
                    None => Ok("()".to_owned()),
                }
            };
            let (lower, upper) = (bound(&sl.lower)?, bound(&sl.upper)?);
            let kind = match v.kind {
                Kind::Str | Kind::List => v.kind,
                _ => Kind::Any,
            };
            return Ok(RExpr::atom(
                format!("slice({}, {lower}, {upper})", v.code),
                kind,
            ));
        }
        let index = const_int(&s.slice);
        match v.kind {
            Kind::Exec => match index {
                Some(0) => Ok(RExpr::atom(format!("{}.status", v.operand()), Kind::Int)),
                Some(1) => Ok(RExpr::atom(format!("{}.stdout", v.operand()), Kind::Str)),
                _ => unsupported("an index into execute()'s result other than [0] or [1]"),
            },
            // Rhai gives a character; Python a string of one.
            Kind::Str => match index {
                Some(-1) => Ok(RExpr::atom(format!("slice({}, -1, ())", v.code), Kind::Str)),
                Some(i) => Ok(RExpr::atom(
                    format!("slice({}, {i}, {})", v.code, i + 1),
                    Kind::Str,
                )),
                None => unsupported("indexing a string with a computed index"),
            },
            _ => {
                let i = self.expr(&s.slice)?;
                let kind = if v.kind == Kind::Match {
                    Kind::Str
                } else {
                    Kind::Any
                };
                Ok(RExpr::atom(format!("{}[{}]", v.operand(), i.code), kind))
            }
        }
    }

    /// `[elt for x in xs if c]` → `xs.filter(|x| c)` + what `end` makes of
    /// the element (`.map(…)`, `.some(…)`, `.all(…)`). A tuple target
    /// (`for (k, v) in …`) unpacks the element at the start of each closure.
    fn generator(
        &mut self,
        elt: &ast::Expr,
        gens: &[ast::Comprehension],
        end: impl FnOnce(&mut Self, String, &str, RExpr) -> RExpr,
    ) -> Res<RExpr> {
        let [g] = gens else {
            return unsupported("a comprehension with several `for`s");
        };
        let (iter, var, lets) = self.enter_comprehension(g)?;
        let unpack = |code: String| -> String {
            if lets.is_empty() {
                code
            } else {
                format!("{{ {lets}{code} }}")
            }
        };
        let result = (|| {
            let mut code = iter.operand();
            for cond in &g.ifs {
                let c = self.condition(cond)?;
                code = format!("{code}.filter(|{var}| {})", unpack(c.code));
            }
            let e = self.expr(elt)?;
            let e = RExpr {
                code: unpack(e.code.clone()),
                ..e
            };
            Ok(end(self, code, &var, e))
        })();
        self.blocks.pop();
        result
    }

    /// Translates a comprehension's iterable and opens the block of its loop
    /// variable: a name, or a fresh one holding the element with `lets` to
    /// unpack a tuple target from it. The caller pops the block.
    fn enter_comprehension(&mut self, g: &ast::Comprehension) -> Res<(RExpr, String, String)> {
        let iter = self.expr(&g.iter)?;
        if !matches!(iter.kind, Kind::List | Kind::Any) {
            return unsupported("a comprehension over something other than a list");
        }
        let (var, names) = match &g.target {
            ast::Expr::Name(t) => (rhai::ident(&t.id), Vec::new()),
            ast::Expr::Tuple(t) => {
                let names = t
                    .elts
                    .iter()
                    .map(|e| match e {
                        ast::Expr::Name(n) => Ok(n.id.to_string()),
                        _ => unsupported("a comprehension over nested tuples"),
                    })
                    .collect::<Res<Vec<_>>>()?;
                (self.fresh("item"), names)
            }
            _ => return unsupported("a comprehension with an unusual target"),
        };
        self.blocks.push(Default::default());
        if let ast::Expr::Name(t) = &g.target {
            self.declare(t.id.as_str(), element_kind(&iter));
        }
        for n in &names {
            self.declare(n, Kind::Any);
        }
        let lets = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("let {} = {var}[{i}]; ", rhai::ident(n)))
            .collect();
        Ok((iter, var, lets))
    }

    /// `{k: v for x in xs if c}` → a block that fills a map.
    fn dict_comprehension(&mut self, d: &ast::ExprDictComp) -> Res<RExpr> {
        let [g] = &d.generators[..] else {
            return unsupported("a dict comprehension with several `for`s");
        };
        let map = self.fresh("map");
        let (iter, var, lets) = self.enter_comprehension(g)?;
        let result = (|| {
            let mut conds = Vec::new();
            for cond in &g.ifs {
                conds.push(self.condition(cond)?.code);
            }
            let k = self.expr(&d.key)?;
            let v = self.expr(&d.value)?;
            let set = format!("{map}[{}] = {};", k.code, v.code);
            let body = if conds.is_empty() {
                set
            } else {
                format!("if {} {{ {set} }}", conds.join(" && "))
            };
            Ok(RExpr::atom(
                format!(
                    "{{ let {map} = #{{}}; for {var} in {} {{ {lets}{body} }} {map} }}",
                    iter.operand()
                ),
                Kind::Map,
            ))
        })();
        self.blocks.pop();
        result
    }

    fn comprehension(&mut self, elt: &ast::Expr, gens: &[ast::Comprehension]) -> Res<RExpr> {
        let identity = matches!(
            (elt, gens.first().map(|g| &g.target)),
            (ast::Expr::Name(a), Some(ast::Expr::Name(b))) if a.id == b.id
        );
        self.generator(elt, gens, |_, code, var, e| {
            if identity {
                RExpr::atom(code, Kind::List)
            } else {
                RExpr::atom(format!("{code}.map(|{var}| {})", e.code), Kind::List)
            }
        })
    }

    /// `any(…)` / `all(…)` over a generator.
    pub(super) fn any_all(&mut self, all: bool, arg: &ast::Expr) -> Res<RExpr> {
        let (elt, gens) = match arg {
            ast::Expr::GeneratorExp(g) => (&*g.elt, &g.generators),
            ast::Expr::ListComp(g) => (&*g.elt, &g.generators),
            // Over a list: each element by Python's truth.
            _ => {
                let xs = self.expr(arg)?;
                if !matches!(xs.kind, Kind::List | Kind::Any) {
                    return unsupported("`any`/`all` over something other than a list");
                }
                let f = if all { "all" } else { "any" };
                return Ok(RExpr::atom(format!("{f}({})", xs.code), Kind::Bool));
            }
        };
        let m = if all { "all" } else { "some" };
        self.generator(elt, gens, |this, code, var, e| {
            let e = this.truthy(e);
            RExpr::atom(format!("{code}.{m}(|{var}| {})", e.code), Kind::Bool)
        })
    }
}

/// Booleans joined by Rhai's `&&` / `||`.
fn bool_op(op: ast::BoolOp, parts: impl Iterator<Item = String>) -> RExpr {
    let op = match op {
        ast::BoolOp::And => " && ",
        ast::BoolOp::Or => " || ",
    };
    RExpr::op(parts.collect::<Vec<_>>().join(op), Kind::Bool)
}

/// An f-string's format spec when it is all literal text.
fn literal_spec(spec: &ast::Expr) -> Option<String> {
    match spec {
        ast::Expr::JoinedStr(j) => j
            .values
            .iter()
            .map(|v| const_str(v).map(str::to_owned))
            .collect(),
        other => const_str(other).map(str::to_owned),
    }
}

/// A value formatted by Python's format mini-language.
fn with_spec(v: RExpr, spec: &str) -> RExpr {
    if spec.is_empty() {
        return v;
    }
    RExpr::atom(
        format!("format_spec({}, {})", v.code, rhai::string(spec)),
        Kind::Str,
    )
}

/// What the elements of a list are, where its expression says: the lines
/// and fields of `splitlines`/`split` are strings (so `if line` reads as
/// Python's truthiness), anything else unknown.
pub(super) fn element_kind(list: &RExpr) -> Kind {
    let code = list.code.as_str();
    let code = code
        .strip_prefix("sorted(")
        .and_then(|c| c.strip_suffix(')'))
        .unwrap_or(code);
    let whole_call = |start: usize| -> bool {
        let mut depth = 0;
        for (i, ch) in code[start..].char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return start + i + 1 == code.len();
                    }
                }
                _ => {}
            }
        }
        false
    };
    let strings = (code.starts_with("splitlines(") && whole_call("splitlines".len()))
        || code
            .rfind(".split(")
            .is_some_and(|i| whole_call(i + ".split".len()));
    if strings {
        Kind::Str
    } else {
        Kind::Any
    }
}

/// A node as the script names it. attest names a node whose name is a Rhai
/// keyword `name_`, as `rhai::ident` does; where it does not, such a node
/// cannot be reached from a script.
fn node_expr(id: &str) -> Res<RExpr> {
    let name = crate::config::script_name(id);
    if rhai::ident(&name) != name {
        return unsupported(format!("the node name `{id}` is a Rhai keyword"));
    }
    Ok(RExpr::atom(name, Kind::Machine))
}

fn num_kind(a: Kind, b: Kind) -> Kind {
    match (a, b) {
        (Kind::Int, Kind::Int) => Kind::Int,
        (Kind::Float, _) | (_, Kind::Float) => Kind::Float,
        _ => Kind::Any,
    }
}

pub(super) fn const_int(e: &ast::Expr) -> Option<i64> {
    match e {
        ast::Expr::Constant(ast::ExprConstant {
            value: Constant::Int(i),
            ..
        }) => i.to_string().parse().ok(),
        ast::Expr::UnaryOp(u) if u.op == UnaryOp::USub => const_int(&u.operand).map(|i| -i),
        _ => None,
    }
}

pub(super) fn const_str(e: &ast::Expr) -> Option<&str> {
    match e {
        ast::Expr::Constant(ast::ExprConstant {
            value: Constant::Str(s),
            ..
        }) => Some(s),
        _ => None,
    }
}

fn constant(c: &Constant) -> Res<RExpr> {
    Ok(match c {
        Constant::None => RExpr::atom("()", Kind::Unit),
        Constant::Bool(b) => RExpr::atom(b.to_string(), Kind::Bool),
        Constant::Str(s) => RExpr::atom(string_literal(s), Kind::Str),
        Constant::Int(i) => {
            let s = i.to_string();
            if s.parse::<i64>().is_err() {
                return unsupported("an integer beyond 64 bits");
            }
            if s.starts_with('-') {
                RExpr::op(s, Kind::Int)
            } else {
                RExpr::atom(s, Kind::Int)
            }
        }
        Constant::Float(f) => RExpr::atom(rhai::float(*f), Kind::Float),
        Constant::Tuple(_) => return unsupported("a constant tuple"),
        Constant::Bytes(_) => return unsupported("bytes literals"),
        Constant::Complex { .. } => return unsupported("complex numbers"),
        Constant::Ellipsis => return unsupported("`...`"),
    })
}

/// A string literal; multi-line text without backticks reads best as a
/// backtick string, kept verbatim.
pub(super) fn string_literal(s: &str) -> String {
    if s.contains('\n') && s.trim_end().contains('\n') {
        if let Some(text) = rhai::backtick_piece(s) {
            if !text.contains('`') && !s.contains('\\') {
                return format!("`{text}`");
            }
        }
    }
    rhai::string(s)
}

fn map_key(k: &str) -> String {
    let is_ident = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && rhai::ident(k) == k;
    if is_ident {
        k.to_owned()
    } else {
        rhai::string(k)
    }
}

/// A string from literal pieces and values: a backtick string with `${…}`,
/// or a concatenation where the text cannot be written in one.
pub(super) fn build_string(pieces: Vec<Piece>) -> RExpr {
    // Python writes booleans as True/False (and None as None).
    let pieces: Vec<Piece> = pieces
        .into_iter()
        .map(|p| match p {
            Piece::Val(v) if v.kind == Kind::Bool => Piece::Val(RExpr::op(
                format!("if {} {{ \"True\" }} else {{ \"False\" }}", v.code),
                Kind::Str,
            )),
            Piece::Val(v) if v.kind == Kind::Unit => Piece::Lit("None".into()),
            p => p,
        })
        .collect();
    let values = pieces.iter().filter(|p| matches!(p, Piece::Val(_))).count();
    if values == 0 {
        let text: String = pieces
            .iter()
            .map(|p| match p {
                Piece::Lit(s) => s.as_str(),
                Piece::Val(_) => "",
            })
            .collect();
        return RExpr::atom(string_literal(&text), Kind::Str);
    }
    if values == 1 && pieces.len() == 1 {
        if let Some(Piece::Val(v)) = pieces.first() {
            if v.kind == Kind::Str {
                return v.clone();
            }
        }
    }
    let all_fit = pieces.iter().all(|p| match p {
        Piece::Lit(s) => rhai::backtick_piece(s).is_some() && !s.contains('\n'),
        Piece::Val(_) => true,
    });
    if all_fit {
        let mut out = String::from("`");
        for p in &pieces {
            match p {
                Piece::Lit(s) => out.push_str(&rhai::backtick_piece(s).unwrap_or_default()),
                Piece::Val(v) => out.push_str(&format!("${{{}}}", v.code)),
            }
        }
        out.push('`');
        return RExpr::atom(out, Kind::Str);
    }
    // `"" + x` makes Rhai build a string from any value.
    let mut parts = Vec::new();
    if !matches!(pieces.first(), Some(Piece::Lit(_))) {
        parts.push("\"\"".to_owned());
    }
    for p in pieces {
        match p {
            Piece::Lit(s) => parts.push(rhai::string(&s)),
            Piece::Val(v) => parts.push(v.operand()),
        }
    }
    RExpr::op(parts.join(" + "), Kind::Str)
}
