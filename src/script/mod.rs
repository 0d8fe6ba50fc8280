//! The Rhai test script: the engine with attest's API ([`bindings`]), the
//! static check run before anything boots ([`check`]), and the REPL ([`repl`]).

pub mod bindings;
pub mod check;
pub mod repl;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rhai::{Dynamic, Engine, Scope, AST};
use tokio_util::sync::CancellationToken;

pub use check::{Diagnostic, ScriptCheckError};

use crate::config::script_name;
use crate::machine::Machine;
use crate::report::Reporter;

/// What the bindings need at run time. In check mode there are no machines.
pub struct ScriptContext {
    /// Every machine, in node-name order.
    pub machines: Vec<Machine>,
    /// The reporter.
    pub reporter: Reporter,
    /// The run's cancellation.
    pub cancel: CancellationToken,
    /// The compiled script, for calling closures from other threads (`wait_all`).
    pub ast: OnceLock<Arc<AST>>,
    /// The directory of the config (relative host paths resolve against it).
    pub base_dir: PathBuf,
}

/// A test script read from disk.
pub struct Script {
    /// Where it came from.
    pub path: PathBuf,
    /// Its text.
    pub source: String,
}

impl Script {
    /// Reads a script.
    pub fn load(path: &Path) -> std::io::Result<Script> {
        Ok(Script {
            path: path.to_owned(),
            source: std::fs::read_to_string(path)?,
        })
    }
}

/// The Rhai engine with attest's API.
pub fn engine(ctx: Arc<ScriptContext>) -> Engine {
    let mut engine = Engine::new();
    engine.set_strict_variables(true);
    engine.set_max_expr_depths(256, 256);
    let cancel = ctx.cancel.clone();
    engine.on_progress(move |_| {
        cancel
            .is_cancelled()
            .then(|| Dynamic::from("the test is being torn down"))
    });
    bindings::register(&mut engine, ctx);
    engine
}

/// A scope with every node bound to its script name (as constants).
pub fn scope_for(nodes: &[(String, Dynamic)]) -> Scope<'static> {
    let mut scope = Scope::new();
    for (name, value) in nodes {
        scope.push_constant_dynamic(script_name(name), value.clone());
    }
    scope
}

/// The node → script name mappings that differ, for the log.
pub fn renamed_nodes<'a>(nodes: impl IntoIterator<Item = &'a String>) -> Vec<(String, String)> {
    nodes
        .into_iter()
        .filter(|n| script_name(n) != **n)
        .map(|n| (n.clone(), script_name(n)))
        .collect()
}
