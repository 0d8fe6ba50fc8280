//! One test run from a config file: check, boot, script, teardown, report.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rhai::Dynamic;

use super::{CancelReason, Driver, DriverOptions};
use crate::config::{BackendConfig, ConfigError, TestConfig};
use crate::report::{failure, EventKind, FailureCause, ReportOptions, Reporter};
use crate::script::{self, thrown, Script, ScriptContext};

/// How a run ended; maps to the exit status (see [`crate::exit_code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step passed.
    Passed,
    /// The script failed at run time, a machine died, or the global timeout
    /// passed.
    Failed(String),
    /// The config or the script is invalid, a file it names is missing, or a
    /// prerequisite is missing.
    Error(String),
    /// A signal cancelled the run (its number, and what was going on).
    Interrupted(i32, String),
}

impl Outcome {
    /// The process exit status.
    pub fn exit_code(&self) -> u8 {
        use crate::exit_code::{interrupted, FAILED, INVALID, PASSED};
        match self {
            Outcome::Passed => PASSED,
            Outcome::Failed(_) => FAILED,
            Outcome::Error(_) => INVALID,
            Outcome::Interrupted(signal, _) => interrupted(*signal),
        }
    }
}

/// Options for [`run_test`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Reporter options.
    pub report: ReportOptions,
    /// Driver options.
    pub driver: DriverOptions,
    /// Open the REPL instead of running the script.
    pub interactive: bool,
}

/// Why a test is invalid before anything boots (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The config does not load or validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The script file cannot be read.
    #[error("{}: cannot read script: {}", path.display(), crate::errors::os_reason(source))]
    ReadScript {
        /// The script.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A report file cannot be written.
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    /// The script does not pass the static check.
    #[error(transparent)]
    Script(#[from] crate::script::ScriptCheckError),
    /// Files the config names do not exist (one line each).
    #[error("{}", .0.join("\n"))]
    MissingFiles(Vec<String>),
    /// Programs the nodes' backends run are not installed (one line each).
    #[error("{}", .0.join("\n"))]
    MissingPrograms(Vec<String>),
}

/// Loads the config and the script and checks both; nothing boots.
pub fn check_test(config_path: &Path) -> Result<(TestConfig, Script), CheckError> {
    let config = TestConfig::load(config_path)?;
    let script_path = config.script_path();
    let script = Script::load(&script_path).map_err(|source| CheckError::ReadScript {
        path: script_path.clone(),
        source,
    })?;
    let reporter = Reporter::new(&config.name, &ReportOptions::default())?;
    let ctx = Arc::new(ScriptContext {
        machines: vec![],
        reporter,
        cancel: Default::default(),
        ast: OnceLock::new(),
        base_dir: config.base_dir.clone(),
    });
    let engine = script::engine(ctx);
    let nodes: Vec<(String, Dynamic)> = config
        .nodes
        .keys()
        .map(|n| (n.clone(), Dynamic::UNIT))
        .collect();
    let scope = script::scope_for(&nodes, &script::test_vlans(&config));
    let backends = script::node_backends(&config);
    script::check::check_with_backends(&engine, &scope, &script.path, &script.source, &backends)?;
    Ok((config, script))
}

/// Checks that every file the config names exists (images, kernels, root
/// trees, start scripts, keys): a missing one is a config error, reported
/// before anything boots.
pub fn check_files(config: &TestConfig) -> Result<(), CheckError> {
    let missing = config.missing_files();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CheckError::MissingFiles(missing))
    }
}

/// The programs each node's backend runs, found on PATH before anything
/// boots: a missing one is a missing prerequisite, named with its node and
/// what to install. (firecracker and cloud-hypervisor find theirs through
/// their own variables when they start.)
pub fn check_programs(config: &TestConfig) -> Result<(), CheckError> {
    let mut missing = Vec::new();
    for (name, node) in &config.nodes {
        let needs: &[(&str, &str)] = match &node.backend {
            BackendConfig::Nspawn(_) => &[("systemd-nspawn", "systemd-container")],
            // A start script brings its own QEMU.
            BackendConfig::Qemu(q) if q.start_script.is_some() => &[],
            BackendConfig::Qemu(q) if q.qemu_binary.is_some() => &[("qemu-img", "qemu-utils")],
            BackendConfig::Qemu(_) => &[
                ("qemu-system-x86_64", "qemu-system-x86"),
                ("qemu-img", "qemu-utils"),
            ],
            BackendConfig::Ssh(_) => &[("ssh", "openssh-client")],
            BackendConfig::Firecracker(_) | BackendConfig::CloudHypervisor(_) => &[],
        };
        for (program, package) in needs {
            if let Err(e) = crate::process::require_binary(program, package) {
                missing.push(format!(
                    "{}: node `{name}` ({}): {e}",
                    config.path.display(),
                    node.backend.kind()
                ));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CheckError::MissingPrograms(missing))
    }
}

/// Runs a test end to end. Never leaves a machine or state dir behind.
pub fn run_test(
    config_path: &Path,
    opts: &RunOptions,
    runtime: &tokio::runtime::Runtime,
) -> Outcome {
    let (config, script) = match check_test(config_path).and_then(|(c, s)| {
        check_files(&c)?;
        check_programs(&c)?;
        Ok((c, s))
    }) {
        Ok(v) => v,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let reporter = match Reporter::new(&config.name, &opts.report) {
        Ok(r) => r,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    reporter.emit(EventKind::TestStarted {
        name: config.name.clone(),
        nodes: config.nodes.keys().cloned().collect(),
    });
    for (node, ident) in script::renamed_nodes(config.nodes.keys()) {
        reporter.log(None, format!("node `{node}` is `{ident}` in the script"));
    }
    let config = Arc::new(config);
    let mut driver = match Driver::new(
        config.clone(),
        reporter.clone(),
        &opts.driver,
        runtime.handle().clone(),
    ) {
        Ok(d) => d,
        Err(e) => return finish(&reporter, Outcome::Error(e.to_string()), false),
    };
    driver.spawn_watchers();
    // A panic in a binding must still tear the machines down before it
    // propagates.
    let end = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_script(&driver, &script, opts.interactive)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        ScriptEnd::Invalid(format!("attest panicked (a bug; please report it): {what}"))
    });
    let (outcome, cause) = match end {
        ScriptEnd::Passed => (Outcome::Passed, None),
        ScriptEnd::Invalid(e) => (Outcome::Error(e), None),
        ScriptEnd::Failed { text, cause } => (failed(&driver, text, None), Some(cause)),
        // A cancelled run did not pass, even if its last step happened to
        // return; a signal outranks the failure it caused (CI tells
        // "cancelled" apart by the exit status).
        ScriptEnd::Cancelled {
            reason,
            error: None,
        } => (
            failed(&driver, reason.to_string(), reason.signal()),
            Some(FailureCause::Cancelled),
        ),
        ScriptEnd::Cancelled {
            reason,
            error: Some((text, cause)),
        } => (
            failed(&driver, format!("{reason}\n{text}"), reason.signal()),
            Some(cause),
        ),
    };
    driver.teardown();
    let (outcome, cause) = match signal_in_teardown(&driver, outcome, opts.interactive) {
        Ok(o) => (o, cause),
        Err(o) => (o, cause.or(Some(FailureCause::Cancelled))),
    };
    finish_with(&reporter, outcome, cause, opts.interactive)
}

/// A signal that came only during teardown still interrupted the run (the
/// caller asked attest to stop; its exit status says so, 128 + N), though
/// every machine was torn down in order: `Err` with that outcome.
fn signal_in_teardown(
    driver: &Driver,
    outcome: Outcome,
    interactive: bool,
) -> Result<Outcome, Outcome> {
    let reason = match driver.cancellation().check() {
        Err(reason) if !interactive => reason,
        _ => return Ok(outcome),
    };
    let Some(n) = reason.signal() else {
        return Ok(outcome);
    };
    let during = format!("{reason} during teardown (every machine was still torn down)");
    match outcome {
        Outcome::Passed => Err(Outcome::Interrupted(
            n,
            format!("{during}; the script had passed"),
        )),
        Outcome::Failed(text) => Err(Outcome::Interrupted(n, format!("{text}\n{during}"))),
        other => Ok(other),
    }
}

/// A failed run's outcome: `text` and the failing machines' last console
/// lines; interrupted when signal `signal` cancelled the run.
fn failed(driver: &Driver, text: String, signal: Option<i32>) -> Outcome {
    let text = failure::with_console_tails(&text, &console_tails(driver));
    match signal {
        Some(n) => Outcome::Interrupted(n, text),
        None => Outcome::Failed(text),
    }
}

/// How the script ended, as [`run_test`] maps it to an outcome.
enum ScriptEnd {
    /// It returned.
    Passed,
    /// It failed (the rendered error and its kind).
    Failed { text: String, cause: FailureCause },
    /// The run was cancelled; `error` is what the script failed with, if it
    /// did not return.
    Cancelled {
        reason: CancelReason,
        error: Option<(String, FailureCause)>,
    },
    /// The script is invalid (or attest panicked): nothing it did counts.
    Invalid(String),
}

/// Runs the script; a failure comes with its cause and a cancellation with
/// its reason, both read from the type of the error that ended the script.
fn run_script(driver: &Driver, script: &Script, interactive: bool) -> ScriptEnd {
    let cancel = driver.cancellation().clone();
    let ctx = Arc::new(ScriptContext {
        machines: driver.machines().values().cloned().collect(),
        reporter: driver.reporter().clone(),
        cancel: cancel.clone(),
        ast: OnceLock::new(),
        base_dir: driver.config().base_dir.clone(),
    });
    let engine = script::engine(ctx.clone());
    let nodes: Vec<(String, Dynamic)> = driver
        .machines()
        .iter()
        .map(|(n, m)| (n.clone(), Dynamic::from(m.clone())))
        .collect();
    let mut scope = script::scope_for(&nodes, &script::test_vlans(driver.config()));
    let result = if interactive {
        script::repl::run(&engine, &mut scope, &cancel);
        Ok(())
    } else {
        let backends = script::node_backends(driver.config());
        let ast = match script::check::check_with_backends(
            &engine,
            &scope,
            &script.path,
            &script.source,
            &backends,
        ) {
            Ok(ast) => Arc::new(ast),
            Err(e) => return ScriptEnd::Invalid(e.rendered),
        };
        let _ = ctx.ast.set(ast.clone());
        let mut scope = script::run_scope(&script::test_vlans(driver.config()));
        engine.run_ast_with_scope(&mut scope, &ast)
    };
    match result {
        // The script may have caught the cancellation and returned (a REPL
        // session ends on it): the run's cancellation still says why.
        Ok(()) => match cancel.check() {
            Ok(()) => ScriptEnd::Passed,
            Err(reason) => ScriptEnd::Cancelled {
                reason,
                error: None,
            },
        },
        Err(mut e) => {
            let text = thrown::with_text(&mut e, |e| {
                failure::script_error(&script.path, &script.source, e)
            });
            let cause = thrown::failure_cause(&e);
            // The error carries the reason when the cancellation ended the
            // script; one that was caught and turned into another failure
            // (or folded into a binding's message) leaves it to the run's
            // cancellation.
            match thrown::cancel_reason(&e).map_or_else(|| cancel.check(), Err) {
                Ok(()) => ScriptEnd::Failed { text, cause },
                Err(reason) => ScriptEnd::Cancelled {
                    reason,
                    error: Some((text, cause)),
                },
            }
        }
    }
}

/// The last console lines of the machines that failed (of every started
/// machine when none is known to have failed), taken before teardown adds
/// shutdown messages.
fn console_tails(driver: &Driver) -> Vec<(String, Vec<String>)> {
    let failed = driver.reporter().failed_machines();
    driver
        .machines()
        .values()
        .filter(|m| {
            if failed.is_empty() {
                m.state() != crate::machine::MachineState::Created
            } else {
                failed.iter().any(|f| f == m.name())
            }
        })
        .map(|m| {
            let tail = m.console().last_lines(failure::CONSOLE_TAIL_LINES);
            (m.name().to_owned(), tail)
        })
        .collect()
}

/// Reports the end of the run; a REPL session that ends is `closed`, not a
/// test that passed.
fn finish(reporter: &Reporter, outcome: Outcome, interactive: bool) -> Outcome {
    finish_with(reporter, outcome, None, interactive)
}

/// [`finish`], naming what kind of failure ended the run.
fn finish_with(
    reporter: &Reporter,
    outcome: Outcome,
    cause: Option<FailureCause>,
    interactive: bool,
) -> Outcome {
    let (name, error) = match &outcome {
        Outcome::Passed if interactive => ("closed", None),
        Outcome::Passed => ("passed", None),
        Outcome::Failed(e) => ("failed", Some(e.clone())),
        Outcome::Error(e) => ("error", Some(e.clone())),
        Outcome::Interrupted(_, e) => ("interrupted", Some(e.clone())),
    };
    reporter.emit(EventKind::TestFinished {
        outcome: name.to_owned(),
        error,
        cause: cause.filter(|_| matches!(outcome, Outcome::Failed(_) | Outcome::Interrupted(..))),
        duration: reporter.elapsed().as_secs_f64(),
    });
    if let Err(e) = reporter.finish() {
        eprintln!("attest: {e}");
    }
    outcome
}
