//! The failure a person reads at the end of a failed run: where in the script
//! it failed (file:line:col and the source line underlined), then what failed,
//! then the failing machines' last console lines, each shown once.

use std::path::Path;

use rhai::EvalAltResult;

/// Console lines shown per failing machine.
pub const CONSOLE_TAIL_LINES: usize = 15;

/// `file:line:col: message`, the script line underlined, then the rest of the
/// message (command output, diagnostics).
pub fn script_error(path: &Path, source: &str, e: &EvalAltResult) -> String {
    let mut pos = e.position();
    let mut inner = e;
    // Unwrap "in call to function/closure" layers down to the real message
    // and the innermost script position (the failing line, not the
    // `subtest(` that called it).
    while let EvalAltResult::ErrorInFunctionCall(_, _, cause, _) = inner {
        inner = cause;
        if !inner.position().is_none() {
            pos = inner.position();
        }
    }
    let message = match inner {
        EvalAltResult::ErrorRuntime(d, _) => d.to_string(),
        EvalAltResult::ErrorTerminated(..) => "the test is being torn down".to_owned(),
        EvalAltResult::ErrorFunctionNotFound(sig, _) => not_found(sig),
        // The position is shown as file:line:col already.
        other => {
            let text = other.to_string();
            let at = format!(" ({})", other.position());
            text.strip_suffix(&at).unwrap_or(&text).to_owned()
        }
    };
    let (line, col) = (pos.line().unwrap_or(0), pos.position().unwrap_or(0));
    let (first, rest) = message.split_once('\n').unwrap_or((&message, ""));
    let mut out = format!("{}:{line}:{col}: {first}\n", path.display());
    out.push_str(&underline(source, line, col));
    if !rest.is_empty() {
        out.push_str(rest);
    }
    out.trim_end().to_owned()
}

/// Rhai's "Function not found: succeed (Machine, i64)" in a script's words:
/// the arguments' types (known only at run time here; literals are caught
/// by `attest check`) fit no form of the call.
fn not_found(sig: &str) -> String {
    let Some((name, args)) = sig.split_once(" (") else {
        return format!("no function `{sig}`");
    };
    let args = args.strip_suffix(')').unwrap_or(args);
    let types: Vec<&str> = args
        .split(", ")
        .filter(|t| !t.is_empty())
        .map(|t| match t {
            "i64" => "int",
            "f64" => "float",
            t if t.contains("ImmutableString") || t == "&str" || t == "String" => "string",
            t => t,
        })
        .collect();
    format!(
        "wrong argument type: no form of `{name}` takes ({}) (`attest repl`, then help(), lists the API)",
        types.join(", ")
    )
}

/// `error` followed by the last console lines of each machine in `tails`
/// (name, lines), skipping machines whose lines the error already shows.
pub fn with_console_tails(error: &str, tails: &[(String, Vec<String>)]) -> String {
    let mut out = error.trim_end().to_owned();
    for (machine, lines) in tails {
        let Some(last) = lines.last() else { continue };
        if error.lines().any(|l| l.trim() == last.trim()) {
            continue;
        }
        out.push_str(&format!("\n  last console lines of {machine}:"));
        for l in lines {
            out.push_str(&format!("\n    {l}"));
        }
    }
    out
}

/// Line `line` of `source` with a gutter and carets under the token at
/// `column` (both 1-based); empty when the line does not exist.
pub fn underline(source: &str, line: usize, column: usize) -> String {
    let Some(text) = line.checked_sub(1).and_then(|i| source.lines().nth(i)) else {
        return String::new();
    };
    let col = column.max(1);
    let token_len = text
        .chars()
        .skip(col - 1)
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .count()
        .max(1);
    let gutter = line.to_string().len();
    format!(
        "{:gutter$} |\n{line} | {text}\n{:gutter$} | {}{}\n",
        "",
        "",
        " ".repeat(col - 1),
        "^".repeat(token_len)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_no_form_takes_names_the_types_as_scripts_do() {
        let e = EvalAltResult::ErrorFunctionNotFound(
            "wait_for_unit (Machine, &str | ImmutableString | String, i64, f64)".into(),
            rhai::Position::new(2, 9),
        );
        let text = script_error(
            Path::new("t.rhai"),
            "\nmachine.wait_for_unit(u, n, x);\n",
            &e,
        );
        assert!(
            text.starts_with(
                "t.rhai:2:9: wrong argument type: no form of `wait_for_unit` takes (Machine, string, int, float)"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_script_line_comes_before_the_details_and_console_lines_once() {
        let source = "start_all();\nmachine.succeed(\"echo hi; false\");\n";
        let e = EvalAltResult::ErrorRuntime(
            "machine: succeed `echo hi; false` failed (exit status 1)\n  stdout:\n    hi".into(),
            rhai::Position::new(2, 9),
        );
        let text = script_error(Path::new("t.rhai"), source, &e);
        let tails = [
            (
                "machine".to_owned(),
                vec!["booted".to_owned(), "ready".to_owned()],
            ),
            ("shown".to_owned(), vec!["already in the error".to_owned()]),
            ("quiet".to_owned(), vec![]),
        ];
        let text = with_console_tails(
            &format!("{text}\n  last console lines:\n    already in the error"),
            &tails,
        );
        insta::assert_snapshot!(text, @r#"
        t.rhai:2:9: machine: succeed `echo hi; false` failed (exit status 1)
          |
        2 | machine.succeed("echo hi; false");
          |         ^^^^^^^
          stdout:
            hi
          last console lines:
            already in the error
          last console lines of machine:
            booted
            ready
        "#);
    }
}
