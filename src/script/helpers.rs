//! String and data helpers a NixOS test script takes from Python's standard
//! library (`str.strip`, `re.search`, `json`, `shlex.quote`), under the names
//! `attest convert` emits. Where Rhai has its own (`parse_json`, `to_json`,
//! `split`, `trim`), these wrap or complement it; `trim` mutates in place and
//! returns `()`, hence value-returning `strip`.

use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Position};

type R<T> = Result<T, Box<EvalAltResult>>;

fn err(e: impl std::fmt::Display) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(e.to_string().into(), Position::NONE).into()
}

/// Whether `assert_eq` takes `a` and `b` as equal: same type, same value.
pub(super) fn same_value(a: &Dynamic, b: &Dynamic) -> bool {
    a.type_name() == b.type_name() && format!("{a:?}") == format!("{b:?}")
}

/// Registers the helpers.
pub fn register(engine: &mut Engine) {
    engine.register_fn("strip", |s: &str| s.trim().to_owned());
    engine.register_fn("lstrip", |s: &str| s.trim_start().to_owned());
    engine.register_fn("rstrip", |s: &str| s.trim_end().to_owned());
    // Python's `strip(chars)` family: any of `chars` at the ends.
    engine.register_fn("strip", |s: &str, c: &str| {
        s.trim_matches(|x| c.contains(x)).to_owned()
    });
    engine.register_fn("lstrip", |s: &str, c: &str| {
        s.trim_start_matches(|x| c.contains(x)).to_owned()
    });
    engine.register_fn("rstrip", |s: &str, c: &str| {
        s.trim_end_matches(|x| c.contains(x)).to_owned()
    });
    engine.register_fn("removeprefix", |s: &str, p: &str| {
        s.strip_prefix(p).unwrap_or(s).to_owned()
    });
    engine.register_fn("removesuffix", |s: &str, p: &str| {
        s.strip_suffix(p).unwrap_or(s).to_owned()
    });
    engine.register_fn("count", |s: &str, sub: &str| -> i64 {
        if sub.is_empty() {
            s.chars().count() as i64 + 1
        } else {
            s.matches(sub).count() as i64
        }
    });
    engine.register_fn("count", |a: Array, x: Dynamic| -> i64 {
        a.iter().filter(|v| same(v, &x)).count() as i64
    });
    engine.register_fn("isdigit", |s: &str| {
        !s.is_empty() && s.chars().all(|c| c.is_numeric())
    });
    engine.register_fn("slice", slice);
    engine.register_fn("sorted", sorted);
    engine.register_fn("regex_findall", regex_findall);
    engine.register_fn("repr", |v: Dynamic| repr(&v));
    engine.register_fn("regex_sub", regex_sub);
    // Python's `s * n`, `xs * n` and `a // b`.
    engine.register_fn("repeat", |s: &str, n: i64| s.repeat(n.max(0) as usize));
    engine.register_fn("repeat", |a: Array, n: i64| -> Array {
        (0..n.max(0)).flat_map(|_| a.clone()).collect()
    });
    engine.register_fn("floor_div", |a: i64, b: i64| -> R<i64> {
        if b == 0 {
            return Err(err("integer division by zero"));
        }
        Ok(a.div_euclid(b) - i64::from(b < 0 && a.rem_euclid(b) != 0))
    });
    engine.register_fn("floor_div", |a: f64, b: f64| (a / b).floor());
    engine.register_fn("floor_div", |a: i64, b: f64| (a as f64 / b).floor());
    engine.register_fn("floor_div", |a: f64, b: i64| (a / b as f64).floor());
    // Python's `dict.items()`.
    engine.register_fn("items", |m: rhai::Map| -> Array {
        m.into_iter()
            .map(|(k, v)| Dynamic::from_array(vec![k.into(), v]))
            .collect()
    });
    // Python's builtins over lists.
    engine.register_fn("zip", |a: Array, b: Array| -> Array {
        a.into_iter()
            .zip(b)
            .map(|(x, y)| Dynamic::from_array(vec![x, y]))
            .collect()
    });
    let enumerate = |a: Array, start: i64| -> Array {
        (start..)
            .zip(a)
            .map(|(i, x)| Dynamic::from_array(vec![i.into(), x]))
            .collect()
    };
    engine.register_fn("enumerate", move |a: Array| enumerate(a, 0));
    engine.register_fn("enumerate", enumerate);
    engine.register_fn("range_list", |a: i64, b: i64, step: i64| -> R<Array> {
        if step == 0 {
            return Err(err("range: the step must not be zero"));
        }
        let mut out = Array::new();
        let mut i = a;
        while (step > 0 && i < b) || (step < 0 && i > b) {
            out.push(i.into());
            i += step;
        }
        Ok(out)
    });
    // Python's truth of a value of unknown type (`if x:`).
    engine.register_fn("truthy", |v: Dynamic| super::common::truthy(&v));
    engine.register_fn("any", |a: Array| a.iter().any(super::common::truthy));
    engine.register_fn("all", |a: Array| a.iter().all(super::common::truthy));
    engine.register_fn("sum", |a: Array| -> R<Dynamic> {
        let mut int: i64 = 0;
        let mut float: Option<f64> = None;
        for v in &a {
            match (v.as_int(), v.as_float()) {
                (Ok(i), _) => int += i,
                (_, Ok(f)) => *float.get_or_insert(0.0) += f,
                _ => return Err(err(format!("sum: cannot add a {}", v.type_name()))),
            }
        }
        Ok(match float {
            Some(f) => (f + int as f64).into(),
            None => int.into(),
        })
    });
    engine.register_fn("max", |a: Array| {
        extreme(a, "max", std::cmp::Ordering::Greater)
    });
    engine.register_fn("min", |a: Array| {
        extreme(a, "min", std::cmp::Ordering::Less)
    });
    engine.register_fn("dedent", |s: &str| dedent(s));
    engine.register_fn("format_spec", |v: Dynamic, spec: &str| {
        format_spec(&v, spec)
    });
    // Python's `time.time()`.
    engine.register_fn("unix_time", || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    });
    engine.register_fn("splitlines", |s: &str| -> Array {
        s.lines().map(|l| Dynamic::from(l.to_owned())).collect()
    });
    engine.register_fn("join", |a: Array, sep: &str| -> String {
        a.iter()
            .map(|v| match v.clone().into_immutable_string() {
                Ok(s) => s.to_string(),
                Err(_) => v.to_string(),
            })
            .collect::<Vec<_>>()
            .join(sep)
    });
    engine.register_fn("regex_search", regex_search);
    engine.register_fn("assert_not_contains", |text: &str, needle: &str| -> R<()> {
        if text.contains(needle) {
            Err(err(format!(
                "assert_not_contains: {needle:?} found in:\n{text}"
            )))
        } else {
            Ok(())
        }
    });
    // Rhai has no `assert`; scripts written by hand reach for it.
    fn assert(cond: bool, message: &str) -> R<()> {
        match cond {
            true => Ok(()),
            false => Err(err(message)),
        }
    }
    engine.register_fn("assert", |c: bool| assert(c, "assertion failed"));
    engine.register_fn("assert", |c: bool, m: &str| {
        assert(c, &format!("assertion failed: {m}"))
    });
    engine.register_fn("assert_ne", |a: Dynamic, b: Dynamic| {
        assert(!same_value(&a, &b), &format!("assert_ne: both are {a:?}"))
    });
    engine.register_fn("shell_quote", |s: &str| crate::shell::quote(s));
    // Rhai's `parse_json` (built on serde_json here) takes any JSON value.
    engine.register_fn("json_parse", |s: &str| -> R<Dynamic> {
        serde_json::from_str(s).map_err(|e| err(format!("json_parse: {e}")))
    });
    engine.register_fn("json_string", |v: Dynamic| -> R<String> {
        serde_json::to_string(&v).map_err(|e| err(format!("json_string: {e}")))
    });
}

/// Python's `re.search(re, text)`: the first match as an array of captures
/// (index 0 the whole match, `()` for a group that did not take part), or
/// `()` when nothing matches.
fn regex_search(re: &str, text: &str) -> R<Dynamic> {
    let r = regex::Regex::new(re).map_err(|e| err(format!("regex_search: bad regex: {e}")))?;
    Ok(match r.captures(text) {
        None => Dynamic::UNIT,
        Some(c) => {
            let groups: Array = c
                .iter()
                .map(|g| {
                    g.map_or(Dynamic::UNIT, |m| {
                        Dynamic::from(ImmutableString::from(m.as_str()))
                    })
                })
                .collect();
            groups.into()
        }
    })
}

/// Python's `==` between two values of the script (Rhai's `==` is not
/// defined between every pair of types).
fn same(a: &Dynamic, b: &Dynamic) -> bool {
    a.type_id() == b.type_id() && a.to_string() == b.to_string()
}

/// A Python slice bound: `()` for an absent one, negative from the end,
/// clamped to `0..=len`.
fn bound(b: &Dynamic, len: usize, absent: usize) -> R<usize> {
    if b.is_unit() {
        return Ok(absent);
    }
    let i = b
        .as_int()
        .map_err(|t| err(format!("slice: an index must be an integer, not {t}")))?;
    let len = len as i64;
    Ok((if i < 0 { len + i } else { i }).clamp(0, len) as usize)
}

/// Python's `x[start:end]` on a string (by characters) or an array.
fn slice(x: Dynamic, start: Dynamic, end: Dynamic) -> R<Dynamic> {
    if let Ok(s) = x.clone().into_immutable_string() {
        let chars: Vec<char> = s.chars().collect();
        let (a, b) = (
            bound(&start, chars.len(), 0)?,
            bound(&end, chars.len(), chars.len())?,
        );
        let out: String = chars.get(a..b.max(a)).unwrap_or_default().iter().collect();
        return Ok(out.into());
    }
    let Some(arr) = x.clone().try_cast::<Array>() else {
        return Err(err(format!("slice: cannot slice a {}", x.type_name())));
    };
    let (a, b) = (
        bound(&start, arr.len(), 0)?,
        bound(&end, arr.len(), arr.len())?,
    );
    Ok(Dynamic::from_array(
        arr.get(a..b.max(a)).unwrap_or_default().to_vec(),
    ))
}

/// Python's `sorted(list)` over numbers or strings.
fn sorted(a: Array) -> R<Array> {
    let mut a = a;
    let mut bad = None;
    a.sort_by(|x, y| {
        if let (Ok(x), Ok(y)) = (x.as_int(), y.as_int()) {
            return x.cmp(&y);
        }
        let num = |v: &Dynamic| {
            v.as_float()
                .ok()
                .or_else(|| v.as_int().ok().map(|i| i as f64))
        };
        if let (Some(x), Some(y)) = (num(x), num(y)) {
            return x.total_cmp(&y);
        }
        match (
            x.read_lock::<ImmutableString>(),
            y.read_lock::<ImmutableString>(),
        ) {
            (Some(x), Some(y)) => x.as_str().cmp(y.as_str()),
            _ => {
                bad = Some(format!("{} and {}", x.type_name(), y.type_name()));
                std::cmp::Ordering::Equal
            }
        }
    });
    match bad {
        Some(b) => Err(err(format!("sorted: cannot compare {b}"))),
        None => Ok(a),
    }
}

/// Python's `max(list)` / `min(list)`: the element `sorted` puts last /
/// first.
fn extreme(a: Array, name: &str, keep: std::cmp::Ordering) -> R<Dynamic> {
    if a.is_empty() {
        return Err(err(format!("{name}: the list is empty")));
    }
    let sorted = sorted(a)?;
    Ok(match keep {
        std::cmp::Ordering::Greater => sorted.last(),
        _ => sorted.first(),
    }
    .cloned()
    .unwrap_or(Dynamic::UNIT))
}

/// Python's `re.findall(re, text)`: every match, as the whole match without
/// groups, the group with one, an array of the groups with several.
fn regex_findall(re: &str, text: &str) -> R<Array> {
    let r = regex::Regex::new(re).map_err(|e| err(format!("regex_findall: bad regex: {e}")))?;
    let text_of = |m: Option<regex::Match>| -> Dynamic {
        ImmutableString::from(m.map_or("", |m| m.as_str())).into()
    };
    Ok(r.captures_iter(text)
        .map(|c| match c.len() {
            1 => text_of(c.get(0)),
            2 => text_of(c.get(1)),
            n => Dynamic::from_array((1..n).map(|i| text_of(c.get(i))).collect()),
        })
        .collect())
}

/// Python's `re.sub(re, repl, text)`: `\\1` and `\\g<name>` in `repl` are
/// groups, every match is replaced.
fn regex_sub(re: &str, repl: &str, text: &str) -> R<String> {
    let r = regex::Regex::new(re).map_err(|e| err(format!("regex_sub: bad regex: {e}")))?;
    let mut rust = String::new();
    let mut chars = repl.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => rust.push_str("$$"),
            '\\' => match chars.next() {
                Some(d) if d.is_ascii_digit() => {
                    let mut n = d.to_string();
                    while let Some(d) = chars.next_if(char::is_ascii_digit) {
                        n.push(d);
                    }
                    rust.push_str(&format!("${{{n}}}"));
                }
                Some('g') if chars.peek() == Some(&'<') => {
                    chars.next();
                    let name: String = chars.by_ref().take_while(|c| *c != '>').collect();
                    rust.push_str(&format!("${{{name}}}"));
                }
                Some('n') => rust.push('\n'),
                Some('t') => rust.push('\t'),
                Some('\\') => rust.push('\\'),
                Some(o) => {
                    rust.push('\\');
                    rust.push(o);
                }
                None => rust.push('\\'),
            },
            c => rust.push(c),
        }
    }
    Ok(r.replace_all(text, rust.as_str()).into_owned())
}

/// Python's `textwrap.dedent`: the whitespace every non-blank line starts
/// with removed; blank lines become empty.
fn dedent(s: &str) -> String {
    let lines: Vec<&str> = s.split('\n').collect();
    let margin = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| &l[..l.len() - l.trim_start().len()])
        .reduce(|a, b| {
            let n = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
            &a[..a.char_indices().nth(n).map_or(a.len(), |(i, _)| i)]
        })
        .unwrap_or("");
    lines
        .iter()
        .map(|l| {
            if l.trim().is_empty() {
                ""
            } else {
                l.strip_prefix(margin).unwrap_or(l)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Python's format mini-language (`{x:>8}`, `{n:03d}`, `{f:.2f}`, `{n:x}`,
/// `{n:,}`, `{r:.1%}`) for strings, integers and floats.
fn format_spec(v: &Dynamic, spec: &str) -> R<String> {
    let bad = || {
        err(format!(
            "format_spec: unsupported format spec {spec:?} for a {}",
            v.type_name()
        ))
    };
    let mut rest: Vec<char> = spec.chars().collect();
    let (mut fill, mut align) = (' ', None);
    if rest.len() >= 2 && matches!(rest[1], '<' | '>' | '^' | '=') {
        fill = rest[0];
        align = Some(rest[1]);
        rest.drain(..2);
    } else if rest
        .first()
        .is_some_and(|c| matches!(c, '<' | '>' | '^' | '='))
    {
        align = Some(rest.remove(0));
    }
    let sign = if rest.first().is_some_and(|c| matches!(c, '+' | '-' | ' ')) {
        Some(rest.remove(0))
    } else {
        None
    };
    if rest.first() == Some(&'0') {
        rest.remove(0);
        if align.is_none() {
            fill = '0';
            align = Some('=');
        }
    }
    let digits = |r: &mut Vec<char>| -> Option<usize> {
        let n = r.iter().take_while(|c| c.is_ascii_digit()).count();
        let s: String = r.drain(..n).collect();
        s.parse().ok()
    };
    let width = digits(&mut rest).unwrap_or(0);
    let grouping = rest.first() == Some(&',');
    if grouping {
        rest.remove(0);
    }
    let precision = if rest.first() == Some(&'.') {
        rest.remove(0);
        Some(digits(&mut rest).ok_or_else(bad)?)
    } else {
        None
    };
    let ty = match rest.as_slice() {
        [] => None,
        [t] => Some(*t),
        _ => return Err(bad()),
    };
    let group = |s: String| -> String {
        if !grouping {
            return s;
        }
        let (int, frac) = s
            .split_once('.')
            .map_or((s.as_str(), None), |(a, b)| (a, Some(b)));
        let mut out = String::new();
        for (i, c) in int.chars().enumerate() {
            if i > 0 && (int.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        match frac {
            Some(f) => format!("{out}.{f}"),
            None => out,
        }
    };
    let (negative, body, numeric) = if let Some(s) = v.read_lock::<ImmutableString>() {
        if !matches!(ty, None | Some('s')) || sign.is_some() {
            return Err(bad());
        }
        let s: String = match precision {
            Some(p) => s.chars().take(p).collect(),
            None => s.to_string(),
        };
        (false, s, false)
    } else if let Ok(i) = v.as_int() {
        let a = i.unsigned_abs();
        let body = match ty {
            None | Some('d') | Some('n') => group(a.to_string()),
            Some('x') => format!("{a:x}"),
            Some('X') => format!("{a:X}"),
            Some('o') => format!("{a:o}"),
            Some('b') => format!("{a:b}"),
            Some('f' | 'F') => group(format!("{:.*}", precision.unwrap_or(6), a as f64)),
            Some('%') => format!("{:.*}%", precision.unwrap_or(6), a as f64 * 100.0),
            _ => return Err(bad()),
        };
        (i < 0, body, true)
    } else if let Ok(f) = v.as_float() {
        let a = f.abs();
        let body = match ty {
            Some('f' | 'F') => group(format!("{:.*}", precision.unwrap_or(6), a)),
            Some('%') => format!("{:.*}%", precision.unwrap_or(6), a * 100.0),
            Some('e') => format!("{:.*e}", precision.unwrap_or(6), a),
            None | Some('g') if precision.is_none() => group(a.to_string()),
            _ => return Err(bad()),
        };
        (f.is_sign_negative() && f != 0.0, body, true)
    } else {
        return Err(bad());
    };
    let sign_str = match (negative, sign) {
        (true, _) => "-",
        (false, Some('+')) => "+",
        (false, Some(' ')) => " ",
        _ => "",
    };
    let len = sign_str.chars().count() + body.chars().count();
    let pad = width.saturating_sub(len);
    let fills = |n: usize| fill.to_string().repeat(n);
    Ok(match align.unwrap_or(if numeric { '>' } else { '<' }) {
        '<' => format!("{sign_str}{body}{}", fills(pad)),
        '^' => format!("{}{sign_str}{body}{}", fills(pad / 2), fills(pad - pad / 2)),
        '=' => format!("{sign_str}{}{body}", fills(pad)),
        _ => format!("{}{sign_str}{body}", fills(pad)),
    })
}

/// Python's `repr()`: strings in single quotes (double when they hold a
/// single one), `True`/`False`/`None`, lists and maps element-wise.
fn repr(v: &Dynamic) -> String {
    if let Some(s) = v.read_lock::<ImmutableString>() {
        let q = if s.contains('\'') && !s.contains('"') {
            '"'
        } else {
            '\''
        };
        let mut out = String::from(q);
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c == q => {
                    out.push('\\');
                    out.push(c);
                }
                c => out.push(c),
            }
        }
        out.push(q);
        return out;
    }
    if let Ok(b) = v.as_bool() {
        return if b { "True" } else { "False" }.into();
    }
    if v.is_unit() {
        return "None".into();
    }
    if let Some(a) = v.read_lock::<Array>() {
        return format!("[{}]", a.iter().map(repr).collect::<Vec<_>>().join(", "));
    }
    if let Some(m) = v.read_lock::<rhai::Map>() {
        let items: Vec<String> = m
            .iter()
            .map(|(k, v)| format!("{}: {}", repr(&k.as_str().into()), repr(v)))
            .collect();
        return format!("{{{}}}", items.join(", "));
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval<T: Clone + Send + Sync + 'static>(src: &str) -> T {
        let mut e = Engine::new();
        register(&mut e);
        e.eval::<T>(src)
            .unwrap_or_else(|err| panic!("{src}: {err}"))
    }

    #[test]
    fn assert_takes_a_condition_and_a_message() {
        let mut e = Engine::new();
        register(&mut e);
        e.run("assert(1 == 1); assert(true, \"fine\"); assert_ne(1, \"1\"); assert_ne(1, 2);")
            .unwrap();
        let msg = |src: &str| e.run(src).unwrap_err().to_string();
        assert!(msg("assert(1 == 2)").contains("assertion failed"));
        assert!(msg("assert(false, \"the port is open\")")
            .contains("assertion failed: the port is open"));
        assert!(msg("assert_ne([1], [1])").contains("assert_ne: both are [1]"));
    }

    #[test]
    fn strings() {
        assert_eq!(eval::<String>(r#"strip("  a b \n")"#), "a b");
        assert_eq!(eval::<String>(r#"" a ".strip()"#), "a");
        assert_eq!(eval::<String>(r#"lstrip("  a ")"#), "a ");
        assert_eq!(eval::<String>(r#"" a ".rstrip()"#), " a");
        assert_eq!(eval::<i64>(r#"splitlines("a\nb\r\nc\n").len()"#), 3);
        assert_eq!(eval::<String>(r#"join(["a", 1, "b"], ", ")"#), "a, 1, b");
        assert_eq!(eval::<String>(r#"["x", "y"].join("-")"#), "x-y");
        assert_eq!(eval::<String>(r#"shell_quote("it's")"#), r#"'it'\''s'"#);
    }

    #[test]
    fn python_string_methods() {
        assert_eq!(eval::<String>(r#"strip("'abc'\n", "'\n")"#), "abc");
        assert_eq!(eval::<String>(r#"rstrip("a\n\n", "\n")"#), "a");
        assert_eq!(eval::<String>(r#"lstrip("xxa", "x")"#), "a");
        assert_eq!(eval::<String>(r#"removeprefix("'tok'", "'")"#), "tok'");
        assert_eq!(eval::<String>(r#"removesuffix("tok'", "'")"#), "tok");
        assert_eq!(eval::<String>(r#"removesuffix("tok", "x")"#), "tok");
        assert_eq!(eval::<i64>(r#"count("a,b,c", ",")"#), 2);
        assert_eq!(eval::<i64>(r#"count([1, 2, 1], 1)"#), 2);
        assert!(eval::<bool>(r#"isdigit("123")"#));
        assert!(!eval::<bool>(r#"isdigit("12a")"#) && !eval::<bool>(r#"isdigit("")"#));
    }

    #[test]
    fn slices_follow_python() {
        assert_eq!(eval::<String>(r#"slice("héllo", 1, ())"#), "éllo");
        assert_eq!(eval::<String>(r#"slice("hello", (), -1)"#), "hell");
        assert_eq!(eval::<String>(r#"slice("hello", -3, ())"#), "llo");
        assert_eq!(eval::<String>(r#"slice("hello", 4, 2)"#), "");
        assert_eq!(eval::<String>(r#"slice("hi", 0, 10)"#), "hi");
        assert_eq!(eval::<i64>(r#"slice([1, 2, 3, 4], 1, 3)[1]"#), 3);
        assert_eq!(eval::<i64>(r#"slice([1, 2, 3, 4], -1, ()).len()"#), 1);
        let mut e = Engine::new();
        register(&mut e);
        assert!(e.eval::<Dynamic>(r#"slice(1, 0, 1)"#).is_err());
    }

    #[test]
    fn sorted_findall_repr() {
        assert_eq!(
            eval::<String>(r#"join(sorted(["b", "a", "c"]), "")"#),
            "abc"
        );
        assert_eq!(eval::<i64>(r#"sorted([3, 1, 2])[0]"#), 1);
        assert_eq!(
            eval::<String>(r#"join(regex_findall("\\d+", "a1b22c"), ",")"#),
            "1,22"
        );
        assert_eq!(
            eval::<String>(r#"join(regex_findall("v(\\d)", "v1 v2"), ",")"#),
            "1,2"
        );
        assert_eq!(
            eval::<String>(r#"regex_findall("(a)(b)", "ab ab")[1][1]"#),
            "b"
        );
        assert_eq!(eval::<String>(r#"repr("it's")"#), r#""it's""#);
        assert_eq!(eval::<String>(r#"repr("a\nb")"#), r#"'a\nb'"#);
        assert_eq!(
            eval::<String>(r#"repr(["a", 1, true, ()])"#),
            "['a', 1, True, None]"
        );
        assert!(eval::<f64>("unix_time()") > 1.7e9);
    }

    /// Shapes `attest convert` emits around the helpers run as Python does.
    #[test]
    fn converted_shapes_evaluate() {
        assert!(eval::<bool>(
            r#"{ let text = "○ foo"; ["●", "○"].some(|p| text.starts_with(p)) }"#
        ));
        assert_eq!(
            eval::<String>(
                r#"let m = { let map = #{}; for item in [["a", "1"], ["b", "2"]] { let k = item[0]; let v = item[1]; if k != "b" { map[k] = v; } } map }; m.a + m.keys().len()"#
            ),
            "11"
        );
        assert_eq!(
            eval::<i64>(
                r#"[["x", 1], ["y", 2]].map(|item| { let k = item[0]; let v = item[1]; v * 10 })[1]"#
            ),
            20
        );
        assert_eq!(
            eval::<String>(
                r#"let env = #{ a: "1" }; join(items(env).map(|item| item[0] + item[1]), ",")"#
            ),
            "a1"
        );
    }

    #[test]
    fn finally_rethrows() {
        let mut e = Engine::new();
        register(&mut e);
        let src = |body: &str| {
            format!("let failure = (); try {{ {body} }} catch (e) {{ failure = e; }} let cleaned = true; if type_of(failure) != \"()\" {{ throw failure; }} cleaned")
        };
        assert!(e.eval::<bool>(&src("1;")).unwrap());
        let msg = e
            .eval::<bool>(&src(r#"throw "boom";"#))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("boom"), "{msg}");
    }

    /// A Rhai closure gives its last statement's value, `;` or not: the
    /// converted `return` in a subtest ends the closure with `()` so that
    /// only a `return [v]` gives an array.
    #[test]
    fn closures_give_their_last_value() {
        assert_eq!(
            eval::<String>("let f = || { [1, 2]; }; type_of(f.call())"),
            "array"
        );
        assert_eq!(
            eval::<String>("let f = || { [1, 2]; () }; type_of(f.call())"),
            "()"
        );
        assert_eq!(eval::<String>("fn f() { [1, 2]; } type_of(f())"), "array");
        assert_eq!(
            eval::<String>("let f = || { if true { return [3]; } () }; type_of(f.call())"),
            "array"
        );
    }

    #[test]
    fn repetition_and_floor_division() {
        assert_eq!(eval::<String>(r#"repeat("-", 3)"#), "---");
        assert_eq!(eval::<i64>("repeat([0, 1], 2).len()"), 4);
        assert_eq!(eval::<i64>("floor_div(7, 2)"), 3);
        assert_eq!(eval::<i64>("floor_div(-7, 2)"), -4);
        assert_eq!(eval::<i64>("floor_div(7, -2)"), -4);
        assert_eq!(eval::<i64>("floor_div(-7, -2)"), 3);
        assert_eq!(eval::<f64>("floor_div(7.0, 2)"), 3.0);
    }

    #[test]
    fn list_builtins() {
        assert_eq!(eval::<String>(r#"zip(["a", "b", "c"], [1, 2])[1][0]"#), "b");
        assert_eq!(eval::<i64>(r#"zip(["a", "b", "c"], [1, 2]).len()"#), 2);
        assert_eq!(eval::<i64>(r#"enumerate(["a", "b"], 1)[1][0]"#), 2);
        assert_eq!(eval::<String>(r#"enumerate(["a", "b"])[1][1]"#), "b");
        assert_eq!(
            eval::<String>(r#"join(range_list(5, 0, -2), ",")"#),
            "5,3,1"
        );
        assert_eq!(eval::<i64>(r#"range_list(0, 3, 1).len()"#), 3);
        assert!(eval::<bool>(r#"any(["", 0, "x"])"#) && !eval::<bool>(r#"all(["", 1])"#));
        assert!(eval::<bool>(
            r#"truthy("x") && truthy([1]) && !truthy(()) && !truthy(#{})"#
        ));
        assert_eq!(eval::<i64>("sum([1, 2, 3])"), 6);
        assert_eq!(eval::<f64>("sum([1, 2.5])"), 3.5);
        assert_eq!(eval::<i64>("max([3, 9, 2])"), 9);
        assert_eq!(eval::<String>(r#"min(["b", "a"])"#), "a");
        assert_eq!(eval::<i64>("max(3, 4)"), 4);
        let mut e = Engine::new();
        register(&mut e);
        assert!(e.eval::<Dynamic>("max([])").is_err());
    }

    #[test]
    fn regex_sub_dedent_format_spec() {
        assert_eq!(
            eval::<String>(r#"regex_sub("(\\d+)", "<\\1>", "a1b22")"#),
            "a<1>b<22>"
        );
        assert_eq!(
            eval::<String>(r#"regex_sub("(?P<n>x)", "\\g<n>$", "axb")"#),
            "ax$b"
        );
        assert_eq!(
            eval::<String>(r#"dedent("\n    a\n      b\n  \n")"#),
            "\na\n  b\n\n"
        );
        let f = |v: &str, spec: &str| eval::<String>(&format!("format_spec({v}, {spec:?})"));
        assert_eq!(f("7", "03d"), "007");
        assert_eq!(f("-7", "04"), "-007");
        assert_eq!(f("3.14159", ".2f"), "3.14");
        assert_eq!(f("\"ab\"", ">4"), "  ab");
        assert_eq!(f("\"ab\"", "*^6"), "**ab**");
        assert_eq!(f("\"ab\"", "<4"), "ab  ");
        assert_eq!(f("255", "x"), "ff");
        assert_eq!(f("1234567", ","), "1,234,567");
        assert_eq!(f("0.25", ".1%"), "25.0%");
        assert_eq!(f("5", "+d"), "+5");
        let mut e = Engine::new();
        register(&mut e);
        assert!(e.eval::<String>(r#"format_spec("x", "d")"#).is_err());
    }

    #[test]
    fn regex_search_returns_captures_or_unit() {
        assert_eq!(
            eval::<String>(r#"regex_search("v(\\d+)\\.(\\d+)", "at v12.3 now")[2]"#),
            "3"
        );
        assert_eq!(
            eval::<String>(r#"regex_search("v(\\d+)", "v7 and v8")[0]"#),
            "v7"
        );
        assert!(eval::<bool>(r#"regex_search("nope", "text") == ()"#));
        assert!(eval::<bool>(r#"regex_search("(a)|(b)", "b")[1] == ()"#));
    }

    #[test]
    fn assert_not_contains_fails_when_found() {
        let mut e = Engine::new();
        register(&mut e);
        e.run(r#"assert_not_contains("abc", "x")"#).unwrap();
        let msg = e
            .run(r#"assert_not_contains("abc", "b")"#)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"b\" found in"), "{msg}");
    }

    #[test]
    fn json_round_trips_any_value() {
        assert_eq!(
            eval::<i64>(r#"json_parse(`{"a": [1, {"b": 2}], "c": null}`).a[1].b"#),
            2
        );
        assert_eq!(eval::<i64>(r#"json_parse("[1, 2, 3]").len()"#), 3);
        assert_eq!(
            eval::<String>(r#"json_string(#{ a: [1, "x", true, ()] })"#),
            r#"{"a":[1,"x",true,null]}"#
        );
        let mut e = Engine::new();
        register(&mut e);
        assert!(e.eval::<Dynamic>(r#"json_parse("{bad")"#).is_err());
    }
}
