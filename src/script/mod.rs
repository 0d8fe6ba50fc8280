//! The Rhai test script: the engine with attest's API ([`bindings`]), the
//! static check run before anything boots ([`check`]), and the REPL ([`repl`]).

pub mod bindings;
pub mod check;
mod common;
mod flow;
pub mod helpers;
mod in_place;
pub mod nixos;
pub mod polling;
pub mod registry;
pub mod repl;
pub mod thrown;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rhai::{Dynamic, Engine, Scope, AST};

pub use check::{Diagnostic, ScriptCheckError};

use crate::cancel::Cancel;
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
    pub cancel: Cancel,
    /// The compiled script, for calling closures from other threads (`wait_all`).
    pub ast: OnceLock<Arc<AST>>,
    /// The directory of the config (relative host paths resolve against it).
    pub base_dir: PathBuf,
}

impl ScriptContext {
    /// Where files for the user go (NixOS `out_dir`): `$out` in a Nix
    /// build, otherwise the config's directory.
    pub fn out_dir(&self) -> PathBuf {
        std::env::var_os("out")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.base_dir.clone())
    }
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
    // The script's own flow of work; `wait_all` starts one per closure.
    engine.set_default_tag(flow::Flow::default().tag());
    let cancel = ctx.cancel.clone();
    // A cancelled run ends the script at its next step, with the reason
    // as the termination value (see [`thrown::cancel_reason`]).
    engine.on_progress(move |_| cancel.check().err().map(Dynamic::from));
    // Rhai's optimizer copies the scope's constants (the nodes) into
    // function bodies even where a parameter of the same name shadows them
    // (`fn f(machine) { machine }` would return the node); nodes reach
    // functions through the resolver below instead. A test script gains
    // nothing measurable from constant folding.
    engine.set_optimization_level(rhai::OptimizationLevel::None);
    resolve_nodes_in_functions(&mut engine, &ctx);
    thrown::register(&mut engine);
    bindings::register(&mut engine, ctx.clone());
    nixos::register(&mut engine, ctx.clone());
    polling::register(&mut engine, ctx);
    engine
}

/// Rhai functions (`fn f() { … }`) do not see the script's scope, but a
/// NixOS test script uses its machines everywhere: resolve the node names
/// (and `machine`, `machines`) there too. The static check already accepts
/// them (the scope's constants are visible to strict variables in function
/// bodies), so check and run agree.
fn resolve_nodes_in_functions(engine: &mut Engine, ctx: &ScriptContext) {
    let nodes: Vec<(String, Dynamic)> = ctx
        .machines
        .iter()
        .map(|m| (m.name().to_owned(), Dynamic::from(m.clone())))
        .collect();
    resolve_nodes(engine, &nodes);
}

fn resolve_nodes(engine: &mut Engine, nodes: &[(String, Dynamic)]) {
    if nodes.is_empty() {
        return;
    }
    let globals: std::collections::HashMap<String, Dynamic> =
        node_bindings(nodes).into_iter().collect();
    #[allow(deprecated)] // `on_var` is marked volatile, not deprecated.
    engine.on_var(move |name, index, ctx| {
        // A local (a parameter, a `let`) shadows a node.
        Ok(if index > 0 || ctx.scope().contains(name) {
            None
        } else {
            globals.get(name).cloned()
        })
    });
}

/// The names every node is known by in a script: its script name, `machine`
/// when it is the only node (as NixOS does), and `machines`, all of them in
/// name order.
pub fn node_bindings(nodes: &[(String, Dynamic)]) -> Vec<(String, Dynamic)> {
    let mut out: Vec<(String, Dynamic)> = nodes
        .iter()
        .map(|(name, value)| (script_name(name), value.clone()))
        .collect();
    if let [(name, value)] = nodes {
        if script_name(name) != "machine" {
            out.push(("machine".into(), value.clone()));
        }
    }
    let all: rhai::Array = nodes.iter().map(|(_, v)| v.clone()).collect();
    out.push(("machines".into(), all.into()));
    out
}

/// A scope with every node bound to its script name (as constants), plus
/// `machine`, `machines` and `vlans` (the test's vlan numbers): what the
/// static check and the REPL see.
pub fn scope_for(nodes: &[(String, Dynamic)], vlans: &[u8]) -> Scope<'static> {
    let mut scope = run_scope(vlans);
    for (name, value) in node_bindings(nodes) {
        scope.push_constant_dynamic(name, value);
    }
    scope
}

/// The scope a checked script runs in: `vlans` only, the nodes come from
/// the resolver. A closure then captures a node as a copy of its handle, not
/// as a variable shared with the script, so closures that use the same
/// machine can run inside each other (a polling condition checked during a
/// command of a `during` block) without Rhai's "data race" on the variable.
pub fn run_scope(vlans: &[u8]) -> Scope<'static> {
    let mut scope = Scope::new();
    let vlans: rhai::Array = vlans
        .iter()
        .map(|v| Dynamic::from_int(i64::from(*v)))
        .collect();
    scope.push_constant_dynamic("vlans", vlans.into());
    scope
}

/// Each node's backend settings under every name the script knows the node
/// by, for the static check's capability refusals.
pub fn node_backends(config: &crate::config::TestConfig) -> check::NodeBackends {
    let mut out: check::NodeBackends = config
        .nodes
        .iter()
        .map(|(n, node)| (script_name(n), (n.clone(), node.backend.clone())))
        .collect();
    if let [(n, node)] = config.nodes.iter().collect::<Vec<_>>()[..] {
        out.entry("machine".into())
            .or_insert_with(|| (n.clone(), node.backend.clone()));
    }
    out
}

/// Every vlan of the test, in order (`vlans` in a script).
pub fn test_vlans(config: &crate::config::TestConfig) -> Vec<u8> {
    let mut v: Vec<u8> = config
        .nodes
        .keys()
        .flat_map(|n| config.node_vlans(n))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The node → script name mappings that differ, for the log.
pub fn renamed_nodes<'a>(nodes: impl IntoIterator<Item = &'a String>) -> Vec<(String, String)> {
    nodes
        .into_iter()
        .filter(|n| script_name(n) != **n)
        .map(|n| (n.clone(), script_name(n)))
        .collect()
}

/// An engine with every binding registered and no machines, for tests of
/// the engine itself (the static check, the parity table).
#[cfg(test)]
mod local_tests;

#[cfg(test)]
pub(crate) fn test_engine() -> Engine {
    let reporter = crate::report::Reporter::new("t", &Default::default()).unwrap();
    engine(Arc::new(ScriptContext {
        machines: vec![],
        reporter,
        cancel: Default::default(),
        ast: Default::default(),
        base_dir: ".".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Node;

    #[test]
    fn nodes_resolve_inside_functions_unless_shadowed() {
        // A custom type, as machines are: the optimizer does not inline it.
        let nodes = [("server".to_owned(), Dynamic::from(Node))];
        let mut engine = Engine::new();
        engine.set_strict_variables(true);
        engine.register_type_with_name::<Node>("Node");
        engine.set_optimization_level(rhai::OptimizationLevel::None);
        resolve_nodes(&mut engine, &nodes);
        let mut scope = scope_for(&nodes, &[]);
        let src = "fn f() { [type_of(server), type_of(machine), machines.len()] }\n\
                   fn g(machine) { machine }\n\
                   fn h() { let server = 1; server }\n\
                   `${f()} ${g(7)} ${h()}`";
        let ast = engine.compile_with_scope(&scope, src).unwrap();
        let r: String = engine.eval_ast_with_scope(&mut scope, &ast).unwrap();
        assert_eq!(r, r#"["Node", "Node", 1] 7 1"#);
    }
}

#[cfg(test)]
mod parity_table {
    //! docs/parity.md against the engine: every NixOS name the table says
    //! attest has is registered, and the table lists every public name of
    //! the NixOS driver.
    use super::*;

    /// The NixOS driver's public machine methods and script globals
    /// (nixpkgs test-driver `machine/__init__.py`, `driver.py`).
    const NIXOS: &[&str] = &[
        "start",
        "shutdown",
        "crash",
        "reboot",
        "wait_for_shutdown",
        "is_up",
        "execute",
        "succeed",
        "fail",
        "wait_until_succeeds",
        "wait_until_fails",
        "sleep",
        "systemctl",
        "wait_for_unit",
        "get_unit_info",
        "get_unit_property",
        "require_unit_state",
        "start_job",
        "stop_job",
        "wait_for_file",
        "wait_for_open_port",
        "wait_for_closed_port",
        "wait_for_open_unix_socket",
        "wait_for_console_text",
        "get_console_log",
        "screenshot",
        "get_screen_text",
        "wait_for_text",
        "get_screen_text_variants",
        "send_key",
        "send_chars",
        "send_console",
        "send_monitor_command",
        "wait_for_qmp_event",
        "get_tty_text",
        "wait_until_tty_matches",
        "dump_tty_contents",
        "wait_for_x",
        "get_window_names",
        "wait_for_window",
        "forward_port",
        "block",
        "unblock",
        "switch_root",
        "nested",
        "log",
        "start_all",
        "join_all",
        "subtest",
        "retry",
        "polling_condition",
        "serial_stdout_on",
        "serial_stdout_off",
        "create_machine",
    ];

    #[test]
    fn the_parity_table_matches_the_engine() {
        let table = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/parity.md"),
        )
        .unwrap();
        let e = test_engine();
        let registered: std::collections::BTreeSet<String> = super::registry::registered(&e, false)
            .into_iter()
            .map(|r| r.name)
            .collect();
        let mut missing = Vec::new();
        for line in table.lines().filter(|l| l.starts_with("| `")) {
            let cols: Vec<&str> = line.split(" | ").collect();
            let name = cols[0]
                .trim_start_matches("| `")
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("");
            let applicable = cols.get(1).is_some_and(|c| c.trim() != "—");
            if applicable && NIXOS.contains(&name) && !registered.contains(name) {
                missing.push(name.to_owned());
            }
        }
        assert!(
            missing.is_empty(),
            "in docs/parity.md but not registered: {missing:?}"
        );
        let unlisted: Vec<&&str> = NIXOS
            .iter()
            .filter(|n| !table.contains(&format!("`{n}")))
            .collect();
        assert!(unlisted.is_empty(), "not in docs/parity.md: {unlisted:?}");
    }
}
