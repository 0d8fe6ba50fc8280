//! The REPL: the script API with every machine in scope, one statement at a
//! time, for debugging a test (`attest repl CONFIG`, `attest run --interactive`).
//! Each line gets the static check a script gets (so a typo gets the same
//! "did you mean"), `help()` lists the machines and the API, and the history
//! persists in `$XDG_STATE_HOME/attest/repl_history`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rhai::{Engine, Scope};

use super::check;
use crate::machine::Machine;

/// Reads statements until EOF (Ctrl-D) or `exit`, printing results and errors.
pub fn run(engine: &Engine, scope: &mut Scope, cancel: &crate::cancel::Cancel) {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("attest: cannot start the REPL: {e}");
            return;
        }
    };
    let history = history_path();
    if let Some(p) = &history {
        // No history yet is the normal first session.
        let _ = editor.load_history(p);
    }
    eprintln!("attest REPL: the script API is in scope (start_all(), server.succeed(\"…\"), …); help() lists it; Ctrl-D quits");
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let line = match editor.readline("attest> ") {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        match line.trim_end_matches(';') {
            "exit" | "quit" | "exit()" | "quit()" => break,
            ":help" | "help" | "help()" => {
                println!("{}", help(engine, scope));
                continue;
            }
            _ => {}
        }
        if let Err(e) = check::check(engine, scope, Path::new("<repl>"), line) {
            eprintln!("{}", e.rendered);
            continue;
        }
        match engine.eval_with_scope::<rhai::Dynamic>(scope, line) {
            Ok(v) if v.is_unit() => {}
            Ok(v) => println!("{v}"),
            Err(mut e) => eprintln!("error: {}", super::thrown::error_text(&mut e)),
        }
    }
    if let Some(p) = &history {
        let saved = p
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| editor.save_history(p).map_err(std::io::Error::other));
        if let Err(e) = saved {
            eprintln!(
                "attest: cannot save the REPL history to {}: {}",
                p.display(),
                crate::errors::os_reason(&e)
            );
        }
    }
}

/// `$XDG_STATE_HOME/attest/repl_history`, else `~/.local/state/attest/repl_history`.
fn history_path() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("attest/repl_history"))
}

/// The machines in scope and the API, by name.
fn help(engine: &Engine, scope: &Scope) -> String {
    let machines: Vec<String> = scope
        .iter()
        .filter_map(|(ident, _, value)| {
            let m = value.try_cast::<Machine>()?;
            Some(if m.name() == ident {
                ident.to_owned()
            } else {
                format!("{ident} (node `{}`)", m.name())
            })
        })
        .collect();
    let mut methods = BTreeSet::new();
    let mut functions = BTreeSet::new();
    for r in super::registry::registered(engine, false) {
        if r.property || r.name.starts_with("to_") || r.name.starts_with("anon") {
            continue;
        }
        if r.on_machine {
            methods.insert(r.name);
        } else {
            functions.insert(r.name);
        }
    }
    let list = |s: BTreeSet<String>| s.into_iter().collect::<Vec<_>>().join(", ");
    format!(
        "machines: {}\nmachine methods (server.succeed(\"…\") or succeed(server, \"…\")): {}\nfunctions: {}\nREPL: help() or :help, exit or Ctrl-D; history in {}",
        if machines.is_empty() { "none".to_owned() } else { machines.join(", ") },
        list(methods),
        list(functions),
        history_path().map_or("(no $HOME)".to_owned(), |p| p.display().to_string()),
    )
}
