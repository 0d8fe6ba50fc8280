//! Python testScript → Rhai, statement by statement, with `rustpython-parser`.
//!
//! Each statement either translates completely or becomes
//! `// TODO(convert): <original line>` comments at its place plus a summary
//! entry; nothing is guessed. [`Translator`] holds the state (declared
//! variables, functions, comments); [`stmt`], [`expr`] and [`calls`] hold the
//! rules.

mod calls;
mod expr;
mod functions;
mod pep701;
pub mod rhai;
mod stmt;

use std::collections::{BTreeMap, BTreeSet};

use rustpython_parser::ast::{self, Ranged};
use rustpython_parser::{lexer, Mode, Tok};

use super::summary::Todo;
use rhai::Kind;

/// Why an expression or statement was not translated.
#[derive(Debug, Clone)]
pub struct Unsupported(pub String);

/// Shorthand for a refusal.
pub fn unsupported<T>(why: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported(why.into()))
}

type Res<T> = Result<T, Unsupported>;

/// Python modules whose use means Python runs on the host, which has no
/// Rhai equivalent: flagged, never guessed.
const HOST_MODULES: &[&str] = &[
    "subprocess",
    "os",
    "sys",
    "socket",
    "smtplib",
    "imaplib",
    "poplib",
    "ssl",
    "threading",
    "multiprocessing",
    "pathlib",
    "shutil",
    "tempfile",
    "urllib",
    "http",
    "requests",
    "secretstorage",
    "anki",
    "xmlrpc",
    "ftplib",
    "telnetlib",
    "asyncio",
    "ipaddress",
    "base64",
    "hashlib",
    "datetime",
    "csv",
    "pty",
    "select",
    "signal",
    "dbus",
];

/// Modules whose functions map onto attest's script API.
const KNOWN_MODULES: &[&str] = &["json", "re", "shlex", "time", "textwrap"];

/// The result of translating one script.
#[derive(Debug, Default)]
pub struct Translation {
    /// The Rhai script (Nix placeholders still in).
    pub rhai: String,
    /// What was not converted.
    pub todos: Vec<Todo>,
    /// Host-side Python modules the script imports.
    pub host_modules: Vec<String>,
    /// Node names guessed from the script when none were given.
    pub guessed_nodes: Vec<String>,
}

/// A user-defined Python function, for calls with keyword or default
/// arguments.
#[derive(Debug, Clone)]
struct FnSig {
    params: Vec<String>,
    /// Default values (Python source, translated at the call site).
    defaults: Vec<Option<ast::Expr>>,
    vararg: bool,
    /// Emitted as a closure (`let f = |…| …`) rather than a `fn`.
    closure: bool,
}

#[derive(Debug, Default)]
struct Block {
    vars: BTreeMap<String, Kind>,
    /// A `fn` body: names outside are invisible.
    barrier: bool,
}

/// Translation state for one script.
pub struct Translator<'s> {
    src: &'s str,
    line_starts: Vec<usize>,
    /// Python names of the nodes.
    nodes: BTreeSet<String>,
    guess_nodes: bool,
    guessed: BTreeSet<String>,
    /// (line, text) of every comment, in order, and how many are emitted.
    comments: Vec<(usize, String)>,
    next_comment: usize,
    out: Vec<String>,
    indent: usize,
    blocks: Vec<Block>,
    functions: BTreeMap<String, FnSig>,
    todos: Vec<Todo>,
    host_modules: BTreeSet<String>,
    /// Module aliases in scope (`import json as j` → j → json).
    modules: BTreeMap<String, String>,
    /// `from re import search` → search → (re, search).
    imported_fns: BTreeMap<String, (String, String)>,
    /// Depth of closures translated from `with subtest` bodies (a `return`,
    /// `break` or `continue` there would leave the closure, not the loop).
    in_subtest: usize,
    /// Depth of loops inside the innermost subtest.
    loops_in_subtest: usize,
    /// Inside a function body.
    in_function: usize,
    /// Line of the statement being translated, for TODOs inside expressions.
    cur_line: usize,
    /// Every name the script assigns anywhere (such a name is no node).
    all_assigned: BTreeSet<String>,
    /// The Nix source of each interpolation placeholder.
    interpolations: Vec<String>,
    /// Lines of the source file before the script's first line.
    line_offset: usize,
    /// Names bound by `@polling_condition` (a `with` over one is `during`).
    polling: BTreeSet<String>,
    /// `@contextmanager` functions: they take the `with` body as a closure.
    context_managers: BTreeSet<String>,
    /// Inside a `@contextmanager` function (its `yield` calls the body).
    in_context_manager: usize,
    /// Per enclosing `with` closure, whether a `return` in it can reach the
    /// function around it (a subtest's closure inside a function).
    closure_returns: Vec<bool>,
    /// Per enclosing loop, the flag its `break` sets (a loop with `else`).
    break_flags: Vec<Option<String>>,
    /// The flag for the loop about to be entered.
    next_break_flag: Option<String>,
}

/// What marks a statement left for a hand in the Rhai; `attest check`
/// lists the lines that carry it.
pub const TODO_MARK: &str = "TODO(convert)";

/// The testScripts of the Perl driver call methods as `$node->method`,
/// which Python has no syntax for.
fn is_perl(src: &str) -> bool {
    src.lines()
        .map(str::trim_start)
        .any(|l| l.starts_with('$') && l.contains("->") || l.starts_with("startAll"))
}

impl<'s> Translator<'s> {
    /// Translates `src`. `nodes`: the test's node names (Python spelling);
    /// `None` guesses them from the receivers of driver methods.
    pub fn translate(
        src: &'s str,
        nodes: Option<&[String]>,
        interpolations: &[String],
        line_offset: usize,
    ) -> Result<Translation, String> {
        let parsed = rustpython_parser::parse(src, Mode::Module, "<testScript>");
        if parsed.is_err() {
            if let Some(requoted) = pep701::requote(src) {
                if rustpython_parser::parse(&requoted, Mode::Module, "<testScript>").is_ok() {
                    return Translator::translate(&requoted, nodes, interpolations, line_offset);
                }
            }
        }
        let suite = parsed.map_err(|e| {
            let line = line_of(src, e.offset.to_usize());
            if is_perl(src) {
                return "a Perl testScript (`$machine->…`, nixpkgs' `make-test.nix` before NixOS 20.03), not Python: convert it by hand".to_owned();
            }
            format!("the Python does not parse (line {line}): {}", e.error)
        })?;
        let ast::Mod::Module(module) = suite else {
            return Err("not a Python module".into());
        };
        let mut t = Translator {
            src,
            line_starts: std::iter::once(0)
                .chain(src.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
            nodes: nodes.unwrap_or_default().iter().cloned().collect(),
            guess_nodes: nodes.is_none(),
            guessed: BTreeSet::new(),
            comments: comments(src),
            next_comment: 0,
            out: Vec::new(),
            indent: 0,
            blocks: vec![Block::default()],
            functions: BTreeMap::new(),
            todos: Vec::new(),
            host_modules: BTreeSet::new(),
            polling: BTreeSet::new(),
            context_managers: BTreeSet::new(),
            in_context_manager: 0,
            closure_returns: Vec::new(),
            break_flags: Vec::new(),
            next_break_flag: None,
            modules: BTreeMap::new(),
            imported_fns: BTreeMap::new(),
            in_subtest: 0,
            loops_in_subtest: 0,
            in_function: 0,
            cur_line: 1,
            all_assigned: BTreeSet::new(),
            interpolations: interpolations.to_vec(),
            line_offset,
        };
        functions::all_assigned_names(&module.body, &mut t.all_assigned);
        t.collect_functions(&module.body);
        t.block(&module.body);
        t.flush_comments(usize::MAX);
        let mut rhai = t.out.join("\n");
        rhai.push('\n');
        Ok(Translation {
            rhai,
            todos: t.todos,
            host_modules: t.host_modules.into_iter().collect(),
            guessed_nodes: t.guessed.into_iter().collect(),
        })
    }

    fn line(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// The source lines of a node.
    fn source_lines(&self, node: &impl Ranged) -> (usize, usize) {
        let r = node.range();
        let first = self.line(r.start().to_usize());
        let last = self.line(
            r.end()
                .to_usize()
                .saturating_sub(1)
                .max(r.start().to_usize()),
        );
        (first, last)
    }

    fn line_text(&self, line: usize) -> &'s str {
        let start = self.line_starts[line - 1];
        let end = self
            .line_starts
            .get(line)
            .map(|e| e - 1)
            .unwrap_or(self.src.len());
        &self.src[start..end]
    }

    /// Keeps a blank line of the original before `line`.
    fn blank_before(&mut self, line: usize) {
        if line > 1
            && self.line_text(line - 1).trim().is_empty()
            && self
                .out
                .last()
                .is_some_and(|l| !l.trim().is_empty() && !l.trim_end().ends_with('{'))
        {
            self.out.push(String::new());
        }
    }

    fn emit(&mut self, code: impl AsRef<str>) {
        for l in code.as_ref().lines() {
            if l.is_empty() {
                self.out.push(String::new());
            } else {
                self.out.push(format!("{}{l}", "    ".repeat(self.indent)));
            }
        }
    }

    /// Emits the comments that stand before `line`.
    fn flush_comments(&mut self, line: usize) {
        while let Some((l, text)) = self.comments.get(self.next_comment).cloned() {
            if l >= line {
                break;
            }
            let text = text.trim_start_matches('#').trim_end();
            let c = if text.is_empty() {
                "//".to_owned()
            } else {
                format!("//{text}")
            };
            self.next_comment += 1;
            self.blank_before(l);
            self.emit(c);
        }
    }

    /// Skips the comments up to and including `line` (they are inside a
    /// statement shown as TODO, or trail a translated line).
    fn skip_comments(&mut self, line: usize) {
        while self
            .comments
            .get(self.next_comment)
            .is_some_and(|(l, _)| *l <= line)
        {
            self.next_comment += 1;
        }
    }

    /// The statement at `node` stays as TODO lines, and is listed.
    fn todo(&mut self, node: &impl Ranged, why: &str) {
        let (first, last) = self.source_lines(node);
        let lines: Vec<&str> = (first..=last).map(|l| self.line_text(l)).collect();
        let indent = lines[0].len() - lines[0].trim_start().len();
        self.emit(format!(
            "// {TODO_MARK}, source line {}: {why}",
            first + self.line_offset
        ));
        for l in &lines {
            let cut = l.len() - l.trim_start().len();
            let shown = &l[cut.min(indent)..];
            self.emit(format!("// {TODO_MARK}: {}", shown.trim_end()));
        }
        self.skip_comments(last);
        self.todos.push(Todo {
            line: first,
            reason: why.to_owned(),
            original: lines[0].trim().to_owned(),
        });
    }

    fn declared(&self, name: &str) -> Option<Kind> {
        for b in self.blocks.iter().rev() {
            if let Some(k) = b.vars.get(name) {
                return Some(*k);
            }
            if b.barrier {
                break;
            }
        }
        None
    }

    fn declare(&mut self, name: &str, kind: Kind) {
        if let Some(b) = self.blocks.last_mut() {
            b.vars.insert(name.to_owned(), kind);
        }
    }

    /// Updates a known variable's kind (after an assignment).
    fn set_kind(&mut self, name: &str, kind: Kind) {
        for b in self.blocks.iter_mut().rev() {
            if let Some(k) = b.vars.get_mut(name) {
                *k = if *k == kind { kind } else { Kind::Any };
                return;
            }
            if b.barrier {
                return;
            }
        }
    }

    fn is_node(&mut self, name: &str) -> bool {
        if self.declared(name).is_some() {
            return false;
        }
        if self.nodes.contains(name) {
            return true;
        }
        false
    }

    /// Called where a name is the receiver of a driver method; with unknown
    /// nodes, an undeclared such name is taken to be a node.
    fn maybe_guess_node(&mut self, name: &str) -> bool {
        if self.guess_nodes
            && self.declared(name).is_none()
            && !self.functions.contains_key(name)
            && !self.modules.contains_key(name)
        {
            self.guessed.insert(name.to_owned());
            self.nodes.insert(name.to_owned());
            return true;
        }
        false
    }

    /// A name for a temporary: `base`, `base2`, … — the first neither in
    /// scope nor in the Python source.
    fn fresh(&mut self, base: &str) -> String {
        let mut n = 1;
        let mut name = base.to_owned();
        while self.declared(&name).is_some() || self.used_after(&name, 0) {
            n += 1;
            name = format!("{base}{n}");
        }
        name
    }

    /// Whether `name` occurs as a word in the source after byte `offset`
    /// (over-approximates "used later": a hoisted declaration is harmless).
    fn used_after(&self, name: &str, offset: usize) -> bool {
        let rest = &self.src[offset.min(self.src.len())..];
        rest.match_indices(name).any(|(i, _)| {
            let before = rest[..i].chars().next_back();
            let after = rest[i + name.len()..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            !word(before) && !word(after)
        })
    }
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].matches('\n').count() + 1
}

/// Every comment with its line, from the Python lexer.
fn comments(src: &str) -> Vec<(usize, String)> {
    lexer::lex(src, Mode::Module)
        .filter_map(|t| t.ok())
        .filter_map(|(tok, range)| match tok {
            Tok::Comment(text) => Some((line_of(src, range.start().to_usize()), text)),
            _ => None,
        })
        .collect()
}
