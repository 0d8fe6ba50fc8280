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

/// Registers the helpers.
pub fn register(engine: &mut Engine) {
    engine.register_fn("strip", |s: &str| s.trim().to_owned());
    engine.register_fn("lstrip", |s: &str| s.trim_start().to_owned());
    engine.register_fn("rstrip", |s: &str| s.trim_end().to_owned());
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
