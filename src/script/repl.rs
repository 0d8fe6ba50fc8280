//! The REPL: the script API with every machine in scope, one statement at a
//! time, for debugging a test (`attest repl CONFIG`, `attest run --interactive`).

use rhai::{Engine, Scope};

/// Reads statements until EOF (Ctrl-D) or `exit`, printing results and errors.
pub fn run(engine: &Engine, scope: &mut Scope, cancel: &tokio_util::sync::CancellationToken) {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("attest: cannot start the REPL: {e}");
            return;
        }
    };
    eprintln!("attest REPL: the script API is in scope (start_all(), server.succeed(\"…\"), …); Ctrl-D quits");
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
        if line == "exit" || line == "quit" {
            break;
        }
        let _ = editor.add_history_entry(line);
        match engine.eval_with_scope::<rhai::Dynamic>(scope, line) {
            Ok(v) if v.is_unit() => {}
            Ok(v) => println!("{v}"),
            Err(e) => eprintln!("error: {e}"),
        }
    }
}
