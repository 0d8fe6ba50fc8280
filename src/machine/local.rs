//! Test support: a [`Machine`] on the local backend
//! ([`crate::backend::local`]), a bash process standing in for a guest.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use super::Machine;
use crate::config::TestConfig;
use crate::report::{ReportOptions, Reporter};

/// A local machine `name` of a one-node test, not started, on `runtime`
/// (call its async operations with `runtime.block_on`). The state dir lives
/// as long as the returned guard.
pub fn machine(name: &str, runtime: &tokio::runtime::Runtime) -> (Machine, tempfile::TempDir) {
    let reporter = Reporter::new("local", &ReportOptions::default()).expect("a reporter");
    machine_reporting_to(name, runtime, reporter)
}

/// [`machine`], reporting to `reporter`.
pub fn machine_reporting_to(
    name: &str,
    runtime: &tokio::runtime::Runtime,
    reporter: Reporter,
) -> (Machine, tempfile::TempDir) {
    machine_on(name, runtime, reporter, TaskTracker::new())
}

/// [`machine`], its background tasks on `tasks` (as a driver's machines).
pub fn machine_with_tasks(
    name: &str,
    runtime: &tokio::runtime::Runtime,
    tasks: TaskTracker,
) -> (Machine, tempfile::TempDir) {
    let reporter = Reporter::new("local", &ReportOptions::default()).expect("a reporter");
    machine_on(name, runtime, reporter, tasks)
}

fn machine_on(
    name: &str,
    runtime: &tokio::runtime::Runtime,
    reporter: Reporter,
    tasks: TaskTracker,
) -> (Machine, tempfile::TempDir) {
    let mut config: TestConfig = serde_json::from_value(serde_json::json!({
        "version": 1,
        "name": "local",
        "script": "test.rhai",
        "nodes": { name: { "backend": { "nspawn": { "rootfs": "/" } } } },
    }))
    .expect("a valid config");
    config.nodes.get_mut(name).expect("the node").boot_timeout = Some(10.0);
    let state = tempfile::tempdir().expect("a state dir");
    let m = Machine::new(
        name,
        Arc::new(crate::backend::local::LocalBackend),
        Arc::new(config),
        state.path().join(name),
        None,
        reporter,
        crate::cancel::Cancel::new(),
        runtime.handle().clone(),
        crate::guest::agent::Protocol::Bash,
        tasks,
    );
    (m, state)
}
