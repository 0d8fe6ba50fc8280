//! Small pieces of Rhai syntax: literals, identifiers, precedence.

/// What the translator knows about a value's type; used where Python and
/// Rhai differ by type (truthiness, division, `print`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Str,
    /// An integer.
    Int,
    /// A float.
    Float,
    /// A boolean.
    Bool,
    /// An array.
    List,
    /// An object map.
    Map,
    /// `()`.
    Unit,
    /// A machine.
    Machine,
    /// `execute()`'s `#{ status, stdout }` (a tuple in Python).
    Exec,
    /// `regex_search`'s captures array, or `()` for no match.
    Match,
    /// Unknown.
    Any,
    /// Bound by a statement left as TODO: every use is a TODO too.
    Todo,
}

/// A translated expression.
#[derive(Debug, Clone)]
pub struct RExpr {
    /// The Rhai code.
    pub code: String,
    /// Its type, as far as known.
    pub kind: Kind,
    /// Whether it can be an operand without parentheses.
    pub atom: bool,
}

impl RExpr {
    /// An expression that binds tighter than any operator.
    pub fn atom(code: impl Into<String>, kind: Kind) -> RExpr {
        RExpr {
            code: code.into(),
            kind,
            atom: true,
        }
    }

    /// An operator expression.
    pub fn op(code: impl Into<String>, kind: Kind) -> RExpr {
        RExpr {
            code: code.into(),
            kind,
            atom: false,
        }
    }

    /// The code, parenthesized unless it is an atom.
    pub fn operand(&self) -> String {
        if self.atom {
            self.code.clone()
        } else {
            format!("({})", self.code)
        }
    }
}

/// Words Rhai reserves; a Python name that is one gets a trailing `_`.
const RESERVED: &[&str] = &[
    "let",
    "const",
    "if",
    "else",
    "switch",
    "do",
    "while",
    "loop",
    "until",
    "for",
    "in",
    "continue",
    "break",
    "return",
    "throw",
    "try",
    "catch",
    "fn",
    "private",
    "import",
    "export",
    "as",
    "global",
    "Fn",
    "call",
    "curry",
    "this",
    "type_of",
    "print",
    "debug",
    "eval",
    "is_def_fn",
    "is_def_var",
    "is_shared",
    "var",
    "static",
    "shared",
    "goto",
    "exit",
    "match",
    "case",
    "public",
    "protected",
    "new",
    "use",
    "with",
    "module",
    "package",
    "super",
    "spawn",
    "thread",
    "go",
    "sync",
    "async",
    "await",
    "yield",
    "default",
    "void",
    "null",
    "nil",
    "true",
    "false",
    "is",
];

/// A Python identifier as a Rhai identifier.
pub fn ident(name: &str) -> String {
    if name == "_" {
        "_ignored".to_owned()
    } else if RESERVED.contains(&name) {
        format!("{name}_")
    } else {
        name.to_owned()
    }
}

/// A string literal, `"…"` with escapes. Placeholders of Nix interpolations
/// are plain identifier characters and pass unchanged.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The text of a literal piece inside a backtick string, or `None` when it
/// cannot be written there (then the caller concatenates instead).
pub fn backtick_piece(s: &str) -> Option<String> {
    if s.contains("${") || s.contains("__nix_interp_") || s.ends_with('\\') || s.contains('\r') {
        return None;
    }
    Some(s.replace('`', "``"))
}

/// A float literal Rhai reads as a float.
pub fn float(f: f64) -> String {
    let s = format!("{f:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(string("a\"b\\c\n"), r#""a\"b\\c\n""#);
        assert_eq!(backtick_piece("a`b").unwrap(), "a``b");
        assert!(backtick_piece("echo ${HOME}").is_none());
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(0.5), "0.5");
        assert_eq!(ident("default"), "default_");
        assert_eq!(ident("server"), "server");
    }
}
