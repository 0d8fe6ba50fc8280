//! Calls: driver methods (keyword arguments → a trailing options map),
//! Python builtins, `json`/`re`/`shlex`/`time`, string and list methods,
//! and the script's own functions (keyword and default arguments resolved
//! at the call site).

use rustpython_parser::ast;

use super::expr::{const_int, const_str};
use super::rhai::{self, Kind, RExpr};
use super::{unsupported, Res, Translator};

/// A NixOS driver `Machine` method attest has under the same name: its
/// positional parameters, the keyword arguments that become options, and
/// what it returns.
struct Method {
    name: &'static str,
    params: &'static [&'static str],
    options: &'static [&'static str],
    returns: Kind,
    /// Takes any number of commands (`succeed`, `fail`).
    variadic: bool,
}

const fn m(
    name: &'static str,
    params: &'static [&'static str],
    options: &'static [&'static str],
    returns: Kind,
) -> Method {
    Method {
        name,
        params,
        options,
        returns,
        variadic: false,
    }
}

const METHODS: &[Method] = &[
    m("start", &[], &["allow_reboot"], Kind::Unit),
    m("shutdown", &[], &[], Kind::Unit),
    m("crash", &[], &[], Kind::Unit),
    m("reboot", &[], &[], Kind::Unit),
    m("wait_for_shutdown", &[], &[], Kind::Unit),
    m("is_up", &[], &[], Kind::Bool),
    m(
        "execute",
        &["command"],
        &["check_return", "check_output", "timeout"],
        Kind::Exec,
    ),
    Method {
        name: "succeed",
        params: &[],
        options: &["timeout"],
        returns: Kind::Str,
        variadic: true,
    },
    Method {
        name: "fail",
        params: &[],
        options: &["timeout"],
        returns: Kind::Str,
        variadic: true,
    },
    m("wait_until_succeeds", &["command"], &["timeout"], Kind::Str),
    m("wait_until_fails", &["command"], &["timeout"], Kind::Str),
    m("wait_for_unit", &["unit"], &["user", "timeout"], Kind::Unit),
    m(
        "wait_for_open_port",
        &["port", "addr"],
        &["timeout"],
        Kind::Unit,
    ),
    m(
        "wait_for_closed_port",
        &["port", "addr"],
        &["timeout"],
        Kind::Unit,
    ),
    m(
        "wait_for_open_unix_socket",
        &["addr"],
        &["is_datagram", "timeout"],
        Kind::Unit,
    ),
    m("wait_for_file", &["filename"], &["timeout"], Kind::Unit),
    m(
        "wait_for_console_text",
        &["regex"],
        &["timeout"],
        Kind::Unit,
    ),
    m("systemctl", &["q", "user"], &[], Kind::Exec),
    m("start_job", &["jobname", "user"], &[], Kind::Exec),
    m("stop_job", &["jobname", "user"], &[], Kind::Exec),
    m("get_unit_info", &["unit", "user"], &[], Kind::Map),
    m(
        "get_unit_property",
        &["unit", "property", "user"],
        &[],
        Kind::Str,
    ),
    m(
        "require_unit_state",
        &["unit", "require_state"],
        &[],
        Kind::Unit,
    ),
    m("copy_from_host", &["source", "target"], &[], Kind::Unit),
    m(
        "copy_from_host_via_shell",
        &["source", "target"],
        &[],
        Kind::Unit,
    ),
    m("copy_from_vm", &["source", "target_dir"], &[], Kind::Unit),
    m(
        "copy_from_machine",
        &["source", "target_dir"],
        &[],
        Kind::Unit,
    ),
    m("get_console_log", &[], &[], Kind::Str),
    m("send_monitor_command", &["command"], &[], Kind::Str),
    m(
        "wait_for_qmp_event",
        &["event_filter", "timeout"],
        &[],
        Kind::Map,
    ),
    m("get_screen_text_variants", &[], &[], Kind::List),
    m("switch_root", &[], &[], Kind::Unit),
    m("dump_tty_contents", &["tty"], &[], Kind::Unit),
    m("get_window_names", &[], &[], Kind::List),
    m("screenshot", &["filename"], &[], Kind::Unit),
    m("send_key", &["key", "delay", "log"], &[], Kind::Unit),
    m("send_chars", &["chars", "delay"], &[], Kind::Unit),
    m("send_console", &["chars"], &[], Kind::Unit),
    m("get_screen_text", &[], &[], Kind::Str),
    m("wait_for_text", &["regex"], &["timeout"], Kind::Unit),
    m("block", &[], &[], Kind::Unit),
    m("unblock", &[], &[], Kind::Unit),
    m(
        "forward_port",
        &["host_port", "guest_port"],
        &[],
        Kind::Unit,
    ),
    m("get_tty_text", &["tty"], &[], Kind::Str),
    m(
        "wait_until_tty_matches",
        &["tty", "regexp"],
        &["timeout"],
        Kind::Unit,
    ),
    m("wait_for_x", &[], &["timeout"], Kind::Unit),
    m("wait_for_window", &["regexp"], &["timeout"], Kind::Unit),
    m("sleep", &["secs"], &[], Kind::Unit),
    m("log", &["msg"], &[], Kind::Unit),
];

/// NixOS's default of a positional parameter, where a keyword argument
/// after it leaves it out.
fn param_default(param: &str) -> Option<&'static str> {
    match param {
        "addr" => Some("\"localhost\""),
        "delay" => Some("0.01"),
        "target_dir" => Some("\"\""),
        "require_state" => Some("\"active\""),
        _ => None,
    }
}

/// `re.M | re.IGNORECASE` as inline flag letters (`mi`).
fn re_flags(e: &ast::Expr) -> Option<String> {
    match e {
        ast::Expr::Attribute(a) if matches!(&*a.value, ast::Expr::Name(n) if n.id.as_str() == "re") => {
            Some(
                match a.attr.as_str() {
                    "M" | "MULTILINE" => "m",
                    "I" | "IGNORECASE" => "i",
                    "S" | "DOTALL" => "s",
                    "X" | "VERBOSE" => "x",
                    _ => return None,
                }
                .to_owned(),
            )
        }
        ast::Expr::BinOp(b) if b.op == ast::Operator::BitOr => {
            Some(re_flags(&b.left)? + re_flags(&b.right)?.as_str())
        }
        _ => None,
    }
}

fn is_none(e: &ast::Expr) -> bool {
    matches!(
        e,
        ast::Expr::Constant(ast::ExprConstant {
            value: ast::Constant::None,
            ..
        })
    )
}

/// Driver methods that exist only for QEMU internals or interactive use.
const UNSUPPORTED_METHODS: &[&str] = &[
    "shell_interact",
    "console_interact",
    "wait_for_console_text_or_timeout",
];

/// Python functions that become attest globals with the same arguments.
const SAME_GLOBALS: &[(&str, &str, Kind)] = &[
    ("start_all", "start_all", Kind::Unit),
    ("join_all", "join_all", Kind::Unit),
];

impl Translator<'_> {
    pub(super) fn call(&mut self, c: &ast::ExprCall) -> Res<RExpr> {
        match &*c.func {
            ast::Expr::Attribute(a) => self.method_call(c, &a.value, a.attr.as_str()),
            ast::Expr::Name(n) => self.function_call(c, n.id.as_str()),
            _ => unsupported("a call of a computed function"),
        }
    }

    fn args(&mut self, args: &[ast::Expr]) -> Res<Vec<RExpr>> {
        args.iter().map(|a| self.expr(a)).collect()
    }

    fn no_keywords(c: &ast::ExprCall, what: &str) -> Res<()> {
        if c.keywords.is_empty() {
            Ok(())
        } else {
            unsupported(format!("keyword arguments to {what}"))
        }
    }

    fn method_call(&mut self, c: &ast::ExprCall, recv: &ast::Expr, attr: &str) -> Res<RExpr> {
        if let ast::Expr::Name(n) = recv {
            let module = self.modules.get(n.id.as_str()).cloned().or_else(|| {
                (self.declared(n.id.as_str()).is_none()
                    && super::KNOWN_MODULES.contains(&n.id.as_str()))
                .then(|| n.id.to_string())
            });
            if let Some(module) = module {
                return self.module_call(c, &module, attr);
            }
            // The NixOS driver's logger, `log.info(…)`.
            if n.id.as_str() == "log"
                && self.declared("log").is_none()
                && matches!(attr, "info" | "warning" | "error" | "debug")
            {
                Self::no_keywords(c, "`log`")?;
                let [msg] = &c.args[..] else {
                    return unsupported(format!("`log.{attr}` with other than one argument"));
                };
                let msg = self.expr(msg)?;
                let msg = if msg.kind == Kind::Str {
                    msg.code
                } else {
                    format!("`${{{}}}`", msg.code)
                };
                return Ok(RExpr::atom(format!("log({msg})"), Kind::Unit));
            }
            // A module the script never imports is a node of that name
            // (`socket`, `http`): only `os` is among the driver's globals.
            let id = n.id.as_str();
            let node = self.is_node(id)
                || (id != "os"
                    && METHODS.iter().any(|m| m.name == attr)
                    && self.maybe_guess_node(id));
            if !node && super::HOST_MODULES.contains(&id) && self.declared(id).is_none() {
                self.host_modules.insert(id.to_owned());
                return unsupported(format!("host-side Python (`{id}.{attr}`)"));
            }
        }
        // NixOS's own `crash()` is `send_monitor_command("quit")` and a wait
        // for the shutdown.
        if attr == "send_monitor_command"
            && matches!(&c.args[..], [a] if const_str(a).is_some_and(|s| s.trim() == "quit"))
        {
            let r = self.expr(recv)?;
            if matches!(r.kind, Kind::Machine | Kind::Any) {
                return Ok(RExpr::atom(format!("{}.crash()", r.operand()), Kind::Unit));
            }
        }
        if UNSUPPORTED_METHODS.contains(&attr) {
            return unsupported(format!(
                "`{attr}` (interactive or QEMU-internal; no attest equivalent)"
            ));
        }
        // `"…".format(…)` on a literal.
        if attr == "format" {
            if let Some(fmt) = const_str(recv) {
                return self.format_call(fmt, &c.args, &c.keywords);
            }
        }
        if attr == "join" {
            if let Some(sep) = const_str(recv) {
                Self::no_keywords(c, "join")?;
                let [arr] = &c.args[..] else {
                    return unsupported("`join` with other than one argument");
                };
                let arr = self.expr(arr)?;
                if !matches!(arr.kind, Kind::List | Kind::Any) {
                    return unsupported("`join` over something other than a list");
                }
                return Ok(RExpr::atom(
                    format!("join({}, {})", arr.code, rhai::string(sep)),
                    Kind::Str,
                ));
            }
        }
        let r = self.expr(recv)?;
        if let Some(method) = METHODS.iter().find(|m| m.name == attr) {
            if matches!(r.kind, Kind::Machine | Kind::Any) {
                return self.machine_call(c, &r, method);
            }
        }
        self.value_method(c, r, attr)
    }

    fn machine_call(&mut self, c: &ast::ExprCall, recv: &RExpr, m: &Method) -> Res<RExpr> {
        let mut args = Vec::new();
        let mut options = Vec::new();
        // NixOS takes every parameter positionally (`wait_for_unit(u, None,
        // 30)`): those past attest's positional ones are its options, in the
        // same order; `None` is the default, so it is left out.
        for (i, a) in c.args.iter().enumerate() {
            if let ast::Expr::Starred(st) = a {
                // `m.succeed(*cmds)`: attest takes the list itself.
                let list = self.expr(&st.value)?;
                if !(m.variadic && c.args.len() == 1 && matches!(list.kind, Kind::List | Kind::Any))
                {
                    return unsupported("`*` arguments");
                }
                args.push((list, false));
                continue;
            }
            if m.variadic || i < m.params.len() {
                args.push((self.expr(a)?, is_none(a)));
                continue;
            }
            let Some(name) = m.options.get(i - m.params.len()) else {
                return unsupported(format!("too many arguments to `{}`", m.name));
            };
            if !is_none(a) {
                options.push(format!("{name}: {}", self.expr(a)?.code));
            }
        }
        while args.last().is_some_and(|(_, none)| *none) {
            args.pop();
        }
        if args.iter().any(|(_, none)| *none) {
            return unsupported(format!("`None` for a parameter of `{}`", m.name));
        }
        let mut args: Vec<RExpr> = args.into_iter().map(|(a, _)| a).collect();
        for k in &c.keywords {
            let Some(name) = &k.arg else {
                return unsupported("`**` arguments");
            };
            let name = name.as_str();
            if is_none(&k.value) {
                continue;
            }
            let v = self.expr(&k.value)?;
            if let Some(i) = m.params.iter().position(|p| *p == name) {
                // Parameters skipped before it take NixOS's defaults.
                while args.len() < i {
                    let Some(d) = param_default(m.params[args.len()]) else {
                        return unsupported(format!(
                            "keyword argument `{name}` to `{}` out of order",
                            m.name
                        ));
                    };
                    args.push(RExpr::atom(d, Kind::Any));
                }
                if i != args.len() {
                    return unsupported(format!(
                        "keyword argument `{name}` to `{}` out of order",
                        m.name
                    ));
                }
                args.push(v);
            } else if m.options.contains(&name) {
                options.push(format!("{name}: {}", v.code));
            } else {
                return unsupported(format!(
                    "keyword argument `{name}` to `{}` (attest has no such option)",
                    m.name
                ));
            }
        }
        if !m.variadic && args.len() > m.params.len() {
            return unsupported(format!("too many arguments to `{}`", m.name));
        }
        // With an options map, attest takes `addr` and `user` there too.
        if !options.is_empty() && !m.variadic {
            while args.len() > 1 {
                let p = m.params[args.len() - 1];
                if !matches!(p, "addr" | "user") {
                    break;
                }
                let v = args.pop().map(|a| a.code).unwrap_or_default();
                options.insert(0, format!("{p}: {v}"));
            }
        }
        // Ports and ttys written as strings (`wait_for_open_port("80")`) are
        // ints in attest.
        if matches!(m.params.first(), Some(&"port" | &"tty")) {
            if let Some(first) = args.first_mut() {
                if first.kind == Kind::Str {
                    if let Some(n) = c
                        .args
                        .first()
                        .and_then(const_str)
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        *first = RExpr::atom(n.to_string(), Kind::Int);
                    } else {
                        *first = RExpr::atom(format!("parse_int({})", first.code), Kind::Int);
                    }
                }
            }
        }
        let mut parts: Vec<String> =
            if m.variadic && (args.len() > 3 || (args.len() > 1 && !options.is_empty())) {
                vec![format!(
                    "[{}]",
                    args.iter()
                        .map(|a| a.code.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )]
            } else {
                args.iter().map(|a| a.code.clone()).collect()
            };
        if m.variadic && args.is_empty() {
            return unsupported(format!("`{}` without a command", m.name));
        }
        if !options.is_empty() {
            parts.push(format!("#{{ {} }}", options.join(", ")));
        }
        Ok(RExpr::atom(
            format!("{}.{}({})", recv.operand(), m.name, parts.join(", ")),
            m.returns,
        ))
    }

    fn module_call(&mut self, c: &ast::ExprCall, module: &str, f: &str) -> Res<RExpr> {
        if module == "re" {
            return self.re_call(c, f);
        }
        if (module, f) == ("textwrap", "dedent") {
            let [text] = &c.args[..] else {
                return unsupported("`textwrap.dedent` with other than one argument");
            };
            let text = self.expr(text)?;
            return Ok(RExpr::atom(format!("dedent({})", text.code), Kind::Str));
        }
        // `json.dumps(x, indent=2, sort_keys=True)`: the same JSON value (Rhai
        // maps keep their keys sorted; the layout differs).
        let layout_only = (module, f) == ("json", "dumps")
            && c.keywords.iter().all(|k| {
                matches!(
                    k.arg.as_ref().map(|a| a.as_str()),
                    Some("indent" | "sort_keys")
                )
            });
        if !layout_only {
            Self::no_keywords(c, &format!("`{module}.{f}`"))?;
        }
        let args = self.args(&c.args)?;
        let one = |what: &str| -> Res<&RExpr> {
            match &args[..] {
                [a] => Ok(a),
                _ => unsupported(format!("`{what}` with other than one argument")),
            }
        };
        Ok(match (module, f) {
            ("time", "sleep") => {
                RExpr::atom(format!("sleep({})", one("time.sleep")?.code), Kind::Unit)
            }
            // Seconds since the epoch, for durations.
            ("time", "time" | "monotonic") if args.is_empty() => {
                RExpr::atom("unix_time()", Kind::Float)
            }
            ("json", "loads") => RExpr::atom(
                format!("json_parse({})", one("json.loads")?.code),
                Kind::Any,
            ),
            ("json", "dumps") => RExpr::atom(
                format!("json_string({})", one("json.dumps")?.code),
                Kind::Str,
            ),
            ("shlex", "quote") => RExpr::atom(
                format!("shell_quote({})", one("shlex.quote")?.code),
                Kind::Str,
            ),
            _ => return unsupported(format!("`{module}.{f}`")),
        })
    }

    /// `re.search`/`match`/`fullmatch`/`findall`/`sub`, flags (`re.M | re.I`,
    /// positional or `flags=`) written into the pattern as `(?mi)`.
    fn re_call(&mut self, c: &ast::ExprCall, f: &str) -> Res<RExpr> {
        // Positional parameters after the pattern, as Python orders them.
        let params: &[&str] = match f {
            "search" | "match" | "fullmatch" | "findall" => &["string", "flags"],
            "sub" => &["repl", "string", "count", "flags"],
            _ => return unsupported(format!("`re.{f}`")),
        };
        let Some((pattern, rest)) = c.args.split_first() else {
            return unsupported(format!("`re.{f}` without a pattern"));
        };
        let mut named: Vec<(&str, &ast::Expr)> = params.iter().copied().zip(rest).collect();
        if rest.len() > params.len() {
            return unsupported(format!("too many arguments to `re.{f}`"));
        }
        for k in &c.keywords {
            match k
                .arg
                .as_ref()
                .map(|a| a.as_str())
                .and_then(|a| params.iter().find(|p| **p == a))
            {
                Some(p) => named.push((p, &k.value)),
                None => return unsupported(format!("a keyword argument to `re.{f}`")),
            }
        }
        let arg = |name: &str| named.iter().find(|(p, _)| *p == name).map(|(_, e)| *e);
        let flags = match arg("flags") {
            None => String::new(),
            Some(e) => {
                re_flags(e).ok_or(super::Unsupported(format!("`re.{f}` with computed flags")))?
            }
        };
        if arg("count").is_some_and(|n| const_int(n) != Some(0)) {
            return unsupported("`re.sub` with a count");
        }
        let Some(text) = arg("string") else {
            return unsupported(format!("`re.{f}` without a string"));
        };
        let text = self.expr(text)?;
        let prefix = if flags.is_empty() {
            String::new()
        } else {
            format!("(?{flags})")
        };
        let pattern = match (f, const_str(pattern)) {
            ("match", Some(p)) => rhai::string(&format!("{prefix}\\A(?:{p})")),
            ("fullmatch", Some(p)) => rhai::string(&format!("{prefix}\\A(?:{p})\\z")),
            ("match" | "fullmatch", None) => {
                return unsupported(format!("`re.{f}` with a computed pattern"))
            }
            (_, Some(p)) => rhai::string(&format!("{prefix}{p}")),
            (_, None) if prefix.is_empty() => self.expr(pattern)?.code,
            (_, None) => format!(
                "{} + {}",
                rhai::string(&prefix),
                self.expr(pattern)?.operand()
            ),
        };
        Ok(match f {
            "findall" => RExpr::atom(
                format!("regex_findall({pattern}, {})", text.code),
                Kind::List,
            ),
            "sub" => {
                let repl = arg("repl")
                    .ok_or(super::Unsupported("`re.sub` without a replacement".into()))?;
                if !matches!(
                    repl,
                    ast::Expr::Constant(_) | ast::Expr::Name(_) | ast::Expr::JoinedStr(_)
                ) {
                    return unsupported("`re.sub` with a function as replacement");
                }
                let repl = self.expr(repl)?;
                RExpr::atom(
                    format!("regex_sub({pattern}, {}, {})", repl.code, text.code),
                    Kind::Str,
                )
            }
            _ => RExpr::atom(
                format!("regex_search({pattern}, {})", text.code),
                Kind::Match,
            ),
        })
    }

    /// Methods of strings, lists, maps and regex matches.
    fn value_method(&mut self, c: &ast::ExprCall, r: RExpr, attr: &str) -> Res<RExpr> {
        Self::no_keywords(c, &format!("`.{attr}()`"))?;
        let args = self.args(&c.args)?;
        let recv = r.operand();
        let code = |s: String, k: Kind| Ok(RExpr::atom(s, k));
        match (attr, &args[..]) {
            ("strip" | "lstrip" | "rstrip", []) => code(format!("{attr}({})", r.code), Kind::Str),
            ("strip" | "lstrip" | "rstrip" | "removeprefix" | "removesuffix", [x])
                if matches!(r.kind, Kind::Str | Kind::Any) =>
            {
                code(format!("{attr}({}, {})", r.code, x.code), Kind::Str)
            }
            ("count", [x]) => code(format!("count({}, {})", r.code, x.code), Kind::Int),
            // Both give -1 when absent.
            ("find", [x]) if matches!(r.kind, Kind::Str | Kind::Any) => {
                code(format!("{recv}.index_of({})", x.code), Kind::Int)
            }
            ("isdigit" | "isnumeric" | "isdecimal", []) => {
                code(format!("isdigit({})", r.code), Kind::Bool)
            }
            ("sort" | "reverse" | "clear", []) if matches!(r.kind, Kind::List | Kind::Any) => {
                code(format!("{recv}.{attr}()"), Kind::Unit)
            }
            ("pop", []) if matches!(r.kind, Kind::List | Kind::Any) => {
                code(format!("{recv}.pop()"), Kind::Any)
            }
            ("insert", [i, x]) if matches!(r.kind, Kind::List | Kind::Any) => {
                code(format!("{recv}.insert({}, {})", i.code, x.code), Kind::Unit)
            }
            ("splitlines", []) => code(format!("splitlines({})", r.code), Kind::List),
            ("split", []) => code(format!("{recv}.split()"), Kind::List),
            ("split", [sep]) => code(format!("{recv}.split({})", sep.code), Kind::List),
            ("split", [sep, n]) => match c.args.get(1).and_then(const_int) {
                Some(n) if n >= 0 => {
                    code(format!("{recv}.split({}, {})", sep.code, n + 1), Kind::List)
                }
                _ => {
                    let _ = n;
                    unsupported("`split` with a computed maxsplit")
                }
            },
            // A tuple of prefixes: any of them.
            ("startswith" | "endswith", [p]) if matches!(c.args[0], ast::Expr::Tuple(_)) => {
                let m = if attr == "startswith" {
                    "starts_with"
                } else {
                    "ends_with"
                };
                let tmp = self.fresh("text");
                code(
                    format!(
                        "{{ let {tmp} = {}; {}.some(|p| {tmp}.{m}(p)) }}",
                        r.code, p.code
                    ),
                    Kind::Bool,
                )
            }
            ("startswith", [p]) => code(format!("{recv}.starts_with({})", p.code), Kind::Bool),
            ("endswith", [p]) => code(format!("{recv}.ends_with({})", p.code), Kind::Bool),
            // Rhai's `replace` changes the string in place (all occurrences,
            // as Python's); a block gives the new value.
            ("replace", [a, b]) if matches!(r.kind, Kind::Str | Kind::Any) => {
                let tmp = self.fresh("replaced");
                code(
                    format!(
                        "{{ let {tmp} = {}; {tmp}.replace({}, {}); {tmp} }}",
                        r.code, a.code, b.code
                    ),
                    Kind::Str,
                )
            }
            ("lower", []) => code(format!("{recv}.to_lower()"), Kind::Str),
            ("upper", []) => code(format!("{recv}.to_upper()"), Kind::Str),
            ("append", [x]) if matches!(r.kind, Kind::List | Kind::Any) => {
                code(format!("{recv}.push({})", x.code), Kind::Unit)
            }
            ("extend", [x]) if matches!(r.kind, Kind::List | Kind::Any) => {
                code(format!("{recv}.append({})", x.code), Kind::Unit)
            }
            ("items", []) if matches!(r.kind, Kind::Map | Kind::Any) => {
                code(format!("items({})", r.code), Kind::List)
            }
            ("keys", []) if matches!(r.kind, Kind::Map | Kind::Any) => {
                code(format!("{recv}.keys()"), Kind::List)
            }
            ("values", []) if matches!(r.kind, Kind::Map | Kind::Any) => {
                code(format!("{recv}.values()"), Kind::List)
            }
            ("get", [k]) if matches!(r.kind, Kind::Map | Kind::Any) => {
                code(format!("{recv}[{}]", k.code), Kind::Any)
            }
            ("get", [k, d]) if matches!(r.kind, Kind::Map | Kind::Any) => Ok(RExpr::op(
                format!("{recv}[{}] ?? {}", k.code, d.operand()),
                Kind::Any,
            )),
            ("group", []) if matches!(r.kind, Kind::Match | Kind::Any) => {
                code(format!("{recv}[0]"), Kind::Str)
            }
            ("group", [n]) if matches!(r.kind, Kind::Match | Kind::Any) => {
                code(format!("{recv}[{}]", n.code), Kind::Str)
            }
            _ => unsupported(format!(
                "the method `.{attr}()` with {} argument(s)",
                args.len()
            )),
        }
    }

    fn function_call(&mut self, c: &ast::ExprCall, name: &str) -> Res<RExpr> {
        if self.functions.contains_key(name) && self.declared(name) != Some(Kind::Todo) {
            return self.user_call(c, name);
        }
        if let Some(k) = self.declared(name) {
            if k == Kind::Todo {
                return unsupported(format!(
                    "calls `{name}`, which a statement left as TODO binds"
                ));
            }
            // A variable holding a lambda.
            Self::no_keywords(c, &format!("`{name}`"))?;
            let args = self.args(&c.args)?;
            let _ = k;
            let codes: Vec<String> = args.into_iter().map(|a| a.code).collect();
            return Ok(RExpr::atom(
                format!("{}.call({})", rhai::ident(name), codes.join(", ")),
                Kind::Any,
            ));
        }
        if let Some((module, f)) = self.imported_fns.get(name).cloned() {
            return self.module_call(c, &module, &f);
        }
        if let Some((_, g, k)) = SAME_GLOBALS.iter().find(|(p, ..)| *p == name) {
            Self::no_keywords(c, name)?;
            if !c.args.is_empty() {
                return unsupported(format!("arguments to `{name}`"));
            }
            return Ok(RExpr::atom(format!("{g}()"), *k));
        }
        match name {
            "print" => {
                // `end`, `flush` and `file` shape a terminal's output, not
                // the log line.
                let mut sep = " ".to_owned();
                for k in &c.keywords {
                    match (k.arg.as_ref().map(|a| a.as_str()), const_str(&k.value)) {
                        (Some("sep"), Some(s)) => sep = s.to_owned(),
                        (Some("end" | "flush" | "file"), _) => {}
                        _ => {
                            return unsupported(
                                "keyword arguments to print other than end, sep, flush, file",
                            )
                        }
                    }
                }
                let args = self.args(&c.args)?;
                let msg = match &args[..] {
                    [a] if a.kind == Kind::Str => a.code.clone(),
                    _ => {
                        let mut pieces = Vec::new();
                        for (i, (a, src)) in args.into_iter().zip(&c.args).enumerate() {
                            if i > 0 {
                                pieces.push(super::expr::Piece::Lit(sep.clone()));
                            }
                            pieces.push(match const_str(src) {
                                Some(s) => super::expr::Piece::Lit(s.to_owned()),
                                None => super::expr::Piece::Val(a),
                            });
                        }
                        super::expr::build_string(pieces).code
                    }
                };
                Ok(RExpr::atom(format!("log({msg})"), Kind::Unit))
            }
            "len" => {
                let [a] = &self.args(&c.args)?[..] else {
                    return unsupported("`len` with other than one argument");
                };
                Ok(RExpr::atom(format!("{}.len()", a.operand()), Kind::Int))
            }
            "int" | "float" => {
                let args = self.args(&c.args)?;
                if let (true, [a, base]) = (name == "int", &args[..]) {
                    return Ok(RExpr::atom(
                        format!("parse_int(strip({}), {})", a.code, base.code),
                        Kind::Int,
                    ));
                }
                let [a] = &args[..] else {
                    return unsupported(format!("`{name}` with other than one argument"));
                };
                let parse = if name == "int" {
                    "parse_int"
                } else {
                    "parse_float"
                };
                let k = if name == "int" {
                    Kind::Int
                } else {
                    Kind::Float
                };
                match a.kind {
                    Kind::Int | Kind::Float if name == "int" => {
                        Ok(RExpr::atom(format!("{}.to_int()", a.operand()), k))
                    }
                    Kind::Int | Kind::Float => Ok(RExpr::atom(format!("to_float({})", a.code), k)),
                    // Python's int()/float() ignore surrounding whitespace.
                    _ => Ok(RExpr::atom(format!("{parse}(strip({}))", a.code), k)),
                }
            }
            "str" => {
                let [a] = &self.args(&c.args)?[..] else {
                    return unsupported("`str` with other than one argument");
                };
                if a.kind == Kind::Bool {
                    return Ok(RExpr::op(
                        format!("if {} {{ \"True\" }} else {{ \"False\" }}", a.code),
                        Kind::Str,
                    ));
                }
                Ok(RExpr::atom(
                    format!("{}.to_string()", a.operand()),
                    Kind::Str,
                ))
            }
            "any" | "all" => {
                let [arg] = &c.args[..] else {
                    return unsupported(format!("`{name}` with other than one argument"));
                };
                self.any_all(name == "all", arg)
            }
            "list" | "tuple" => {
                let [a] = &self.args(&c.args)?[..] else {
                    return unsupported(format!("`{name}` with other than one argument"));
                };
                if a.kind != Kind::List {
                    return unsupported(format!("`{name}` of something other than a list"));
                }
                Ok(a.clone())
            }
            "zip" | "enumerate" | "range" | "sum" => {
                Self::no_keywords(c, name)?;
                let args = self.args(&c.args)?;
                let codes: Vec<String> = args.iter().map(|a| a.code.clone()).collect();
                let (code, kind) = match (name, &codes[..]) {
                    ("zip", [a, b]) => (format!("zip({a}, {b})"), Kind::List),
                    ("enumerate", [a]) => (format!("enumerate({a})"), Kind::List),
                    ("enumerate", [a, s]) => (format!("enumerate({a}, {s})"), Kind::List),
                    ("range", [n]) => (format!("range_list(0, {n}, 1)"), Kind::List),
                    ("range", [a, b]) => (format!("range_list({a}, {b}, 1)"), Kind::List),
                    ("range", [a, b, s]) => (format!("range_list({a}, {b}, {s})"), Kind::List),
                    ("sum", [a]) => (format!("sum({a})"), Kind::Any),
                    _ => return unsupported(format!("`{name}` with {} argument(s)", codes.len())),
                };
                Ok(RExpr::atom(code, kind))
            }
            "max" | "min" if c.args.len() == 1 && c.keywords.is_empty() => {
                let [a] = &self.args(&c.args)?[..] else {
                    return unsupported(format!("`{name}` with other than one argument"));
                };
                Ok(RExpr::atom(format!("{name}({})", a.code), Kind::Any))
            }
            "abs" | "max" | "min" => {
                let args = self.args(&c.args)?;
                if args.is_empty() || args.len() > 2 || (args.len() == 1 && name != "abs") {
                    return unsupported(format!("`{name}` over a collection"));
                }
                let kind = args[0].kind;
                let codes: Vec<String> = args.into_iter().map(|a| a.code).collect();
                Ok(RExpr::atom(format!("{name}({})", codes.join(", ")), kind))
            }
            "sorted" => {
                let [a] = &self.args(&c.args)?[..] else {
                    return unsupported("`sorted` with other than one argument");
                };
                let mut reverse = false;
                for k in &c.keywords {
                    match (k.arg.as_ref().map(|a| a.as_str()), &k.value) {
                        (
                            Some("reverse"),
                            ast::Expr::Constant(ast::ExprConstant {
                                value: ast::Constant::Bool(b),
                                ..
                            }),
                        ) => reverse = *b,
                        _ => return unsupported("`sorted` with a key or a computed reverse"),
                    }
                }
                let sorted = format!("sorted({})", a.code);
                Ok(RExpr::atom(
                    if reverse {
                        let tmp = self.fresh("sorted");
                        format!("{{ let {tmp} = {sorted}; {tmp}.reverse(); {tmp} }}")
                    } else {
                        sorted
                    },
                    Kind::List,
                ))
            }
            "repr" => {
                let [a] = &self.args(&c.args)?[..] else {
                    return unsupported("`repr` with other than one argument");
                };
                Ok(RExpr::atom(format!("repr({})", a.code), Kind::Str))
            }
            "retry" => self.retry_call(c),
            "serial_stdout_on" | "serial_stdout_off" if c.args.is_empty() => {
                // Only what the log shows; attest's is `run --quiet-console`.
                Ok(RExpr::atom(
                    format!("// {name}(): console output is `attest run --quiet-console`"),
                    Kind::Unit,
                ))
            }
            "subtest" => unsupported("`subtest` outside `with`"),
            "open" | "exec" | "eval" | "__import__" | "input" => {
                self.host_modules.insert(format!("{name}()"));
                unsupported(format!("host-side Python (`{name}`)"))
            }
            _ => {
                if name.starts_with("__nix_interp_") {
                    return unsupported("a call of a Nix interpolation");
                }
                unsupported(format!("the function `{name}`"))
            }
        }
    }

    /// A call of the script's own function: keyword and default arguments
    /// become positional, `*args` an array.
    fn user_call(&mut self, c: &ast::ExprCall, name: &str) -> Res<RExpr> {
        let sig = self.functions[name].clone();
        let mut slots: Vec<Option<RExpr>> = vec![None; sig.params.len()];
        let mut rest = Vec::new();
        for (i, a) in c.args.iter().enumerate() {
            if matches!(a, ast::Expr::Starred(_)) {
                return unsupported("`*` arguments");
            }
            let v = self.expr(a)?;
            if i < slots.len() {
                slots[i] = Some(v);
            } else if sig.vararg {
                rest.push(v.code);
            } else {
                return unsupported(format!("too many arguments to `{name}`"));
            }
        }
        for k in &c.keywords {
            let Some(arg) = &k.arg else {
                return unsupported("`**` arguments");
            };
            let Some(i) = sig.params.iter().position(|p| p == arg.as_str()) else {
                return unsupported(format!("unknown keyword argument `{arg}` to `{name}`"));
            };
            slots[i] = Some(self.expr(&k.value)?);
        }
        let mut codes = Vec::new();
        for (i, s) in slots.into_iter().enumerate() {
            match s {
                Some(v) => codes.push(v.code),
                None => match &sig.defaults[i] {
                    Some(d) => codes.push(self.expr(d)?.code),
                    None => return unsupported(format!("a missing argument to `{name}`")),
                },
            }
        }
        if sig.vararg {
            codes.push(format!("[{}]", rest.join(", ")));
        }
        Ok(RExpr::atom(
            self.call_code(name, &codes.join(", ")),
            Kind::Any,
        ))
    }

    /// NixOS `retry(fn, timeout=900)`: calls `fn(False)` once a second until
    /// it returns True, then `fn(True)` a last time.
    fn retry_call(&mut self, c: &ast::ExprCall) -> Res<RExpr> {
        let [f] = &c.args[..] else {
            return unsupported("`retry` with other than one function");
        };
        let mut timeout = "900".to_owned();
        for k in &c.keywords {
            match k.arg.as_ref().map(|a| a.as_str()) {
                Some("timeout") => timeout = self.expr(&k.value)?.code,
                _ => return unsupported("a keyword argument to `retry` other than timeout"),
            }
        }
        let (first, last) = match f {
            ast::Expr::Name(n) if self.functions.contains_key(n.id.as_str()) => (
                self.call_code(n.id.as_str(), "false"),
                self.call_code(n.id.as_str(), "true"),
            ),
            _ => {
                let f = self.expr(f)?.operand();
                (format!("{f}.call(false)"), format!("{f}.call(true)"))
            }
        };
        Ok(RExpr::op(
            format!(
                "{{\n    let done = false;\n    for attempt in 0..{timeout} {{\n        if {first} {{ done = true; break; }}\n        sleep(1);\n    }}\n    if !done && !{last} {{ throw \"action timed out\"; }}\n}}"
            ),
            Kind::Unit,
        ))
    }

    /// A call of the script's function `name`: `f(…)` for a `fn`,
    /// `f.call(…)` for a closure.
    fn call_code(&self, name: &str, args: &str) -> String {
        let closure =
            self.functions.get(name).is_some_and(|f| f.closure) || self.declared(name).is_some();
        if closure {
            format!("{}.call({args})", rhai::ident(name))
        } else {
            format!("{}({args})", rhai::ident(name))
        }
    }
}
