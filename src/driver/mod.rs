//! [`Driver`]: the supervisor of a run. It owns the machines, the network, the
//! state directory, the cancellation ([`Cancel`]: signals, global timeout),
//! the run's [`TaskTracker`] and the ordered teardown.
//!
//! Lifecycle ([`run_test`] drives it): [`Driver::new`] claims a state
//! directory (locked, so another run's janitor leaves it alone) and makes one
//! [`Machine`] per node, nothing started; [`Driver::spawn_watchers`] arms the
//! global timeout and SIGINT/SIGTERM/SIGHUP on the tracker (a first signal
//! cancels the run, a second exits at once, every child having PDEATHSIG);
//! the script runs, and whatever the cancellation ends returns its
//! [`CancelReason`] in its error; [`Driver::teardown`] ends every machine in
//! parallel (graceful, then forced), stops the watchers, waits for every
//! tracked task and removes the state directory unless `--keep-state`.

pub(crate) mod janitor;
mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::backend;
use crate::cancel::Cancel;
use crate::config::TestConfig;
use crate::machine::Machine;
use crate::net::Network;
use crate::report::Reporter;

pub use crate::cancel::CancelReason;
pub use run::{check_files, check_test, run_test, CheckError, Outcome, RunOptions};

/// How long teardown waits for the background tasks once every machine
/// has ended (their children are dead by then; this only covers the reaps).
const TASKS_LIMIT: Duration = Duration::from_secs(5);

/// Options of a run.
#[derive(Debug, Clone, Default)]
pub struct DriverOptions {
    /// Keep the state directory after the run.
    pub keep_state: bool,
    /// The guest command protocol (agent, bash, or the agent where it runs).
    pub protocol: crate::guest::agent::Protocol,
}

/// The supervisor of one test run.
pub struct Driver {
    config: Arc<TestConfig>,
    machines: BTreeMap<String, Machine>,
    reporter: Reporter,
    cancel: Cancel,
    state_dir: Option<tempfile::TempDir>,
    state_path: PathBuf,
    /// Held for the run's lifetime: the janitor of another run sweeps only
    /// state it can lock.
    _lock: janitor::RunLock,
    runtime: tokio::runtime::Handle,
    network: Option<Arc<Network>>,
    /// Every background task of the run's machines (process watchers,
    /// output pumps, relays): closed and awaited at teardown, so each child
    /// is reaped before attest exits.
    tasks: TaskTracker,
    /// Ends the global-timeout and signal watchers at teardown (they are on
    /// `tasks`, which teardown waits for).
    stop_watchers: tokio_util::sync::CancellationToken,
}

impl Driver {
    /// Prepares the machines (nothing starts yet) and the state directory.
    pub fn new(
        config: Arc<TestConfig>,
        reporter: Reporter,
        opts: &DriverOptions,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Driver> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("attest-{}-", sanitize(&config.name)))
            .tempdir()
            .map_err(|e| anyhow::anyhow!("cannot create the state directory: {e}"))?;
        let state_path = dir.path().to_owned();
        let lock = janitor::claim(&state_path).map_err(|e| {
            anyhow::anyhow!(
                "cannot lock the state directory {}: {e}",
                state_path.display()
            )
        })?;
        janitor::sweep(&std::env::temp_dir());
        let state_dir = if opts.keep_state {
            std::fs::write(state_path.join(janitor::KEPT_FILE), "")
                .map_err(|e| anyhow::anyhow!("cannot write to the state directory: {e}"))?;
            reporter.log(None, format!("keeping state in {}", state_path.display()));
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        let vlans: std::collections::BTreeSet<u8> = config
            .nodes
            .keys()
            .flat_map(|n| config.node_vlans(n))
            .collect();
        let network = (!vlans.is_empty()).then(|| Arc::new(Network::new(vlans)));
        let cancel = Cancel::new();
        let tasks = TaskTracker::new();
        let mut machines = BTreeMap::new();
        for (name, node) in &config.nodes {
            let backend = backend::for_node(node);
            machines.insert(
                name.clone(),
                Machine::new(
                    name,
                    backend,
                    config.clone(),
                    state_path.join(name),
                    network.clone(),
                    reporter.clone(),
                    cancel.clone(),
                    runtime.clone(),
                    opts.protocol,
                    tasks.clone(),
                ),
            );
        }
        Ok(Driver {
            config,
            machines,
            reporter,
            cancel,
            state_dir,
            state_path,
            _lock: lock,
            runtime,
            network,
            tasks,
            stop_watchers: Default::default(),
        })
    }

    /// The machines by node name.
    pub fn machines(&self) -> &BTreeMap<String, Machine> {
        &self.machines
    }

    /// The reporter.
    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// The test config.
    pub fn config(&self) -> &Arc<TestConfig> {
        &self.config
    }

    /// The run's cancellation (signals, global timeout), with its reason.
    pub fn cancellation(&self) -> &Cancel {
        &self.cancel
    }

    /// The state directory (kept with `--keep-state`).
    pub fn state_path(&self) -> &std::path::Path {
        &self.state_path
    }

    /// Starts the watchers, on the run's task tracker: the global timeout
    /// and SIGINT/SIGTERM/SIGHUP. A first signal cancels the run (ordered
    /// teardown follows); a second one exits at once, killing every machine.
    /// Teardown stops them only once the machines are down, so a second
    /// signal still cuts a slow teardown short.
    pub fn spawn_watchers(&self) {
        let (cancel, stop) = (self.cancel.clone(), self.stop_watchers.clone());
        let secs = self.config.global_timeout;
        self.tasks.spawn_on(
            async move {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs_f64(secs)) => {
                        cancel.cancel(CancelReason::GlobalTimeout(secs as u64));
                    }
                    () = stop.cancelled() => {}
                }
            },
            &self.runtime,
        );
        let (cancel, stop) = (self.cancel.clone(), self.stop_watchers.clone());
        let reporter = self.reporter.clone();
        self.tasks.spawn_on(
            async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) else {
                    return;
                };
                let mut count = 0;
                loop {
                    let (name, number) = tokio::select! {
                        _ = int.recv() => ("SIGINT", libc::SIGINT),
                        _ = term.recv() => ("SIGTERM", libc::SIGTERM),
                        _ = hup.recv() => ("SIGHUP", libc::SIGHUP),
                        () = stop.cancelled() => return,
                    };
                    count += 1;
                    if count == 1 {
                        reporter.log(
                            None,
                            format!(
                                "{name} received: tearing down (send it again to kill at once)"
                            ),
                        );
                        cancel.cancel(CancelReason::Signal(name, number));
                    } else {
                        reporter.log(
                            None,
                            format!("{name} received again: killing every machine now"),
                        );
                        // Exiting is the fastest sure kill: every child has
                        // PDEATHSIG=SIGKILL, and the vlan namespace dies with us.
                        std::process::exit(crate::exit_code::interrupted(number).into());
                    }
                }
            },
            &self.runtime,
        );
    }

    /// Ends every machine (in parallel), waits for the run's background
    /// tasks, and removes the state directory.
    pub fn teardown(&mut self) {
        let machines: Vec<Machine> = self.machines.values().cloned().collect();
        let reporter = self.reporter.clone();
        let network = self.network.clone();
        let tasks = self.tasks.clone();
        let stop_watchers = self.stop_watchers.clone();
        let _ = self
            .reporter
            .section(None, "tearing down", None, false, |section| {
                let task_reporter = reporter.clone();
                let handle = self.runtime.spawn(async move {
                    let mut set = tokio::task::JoinSet::new();
                    for m in machines {
                        set.spawn(async move { m.terminate().await });
                    }
                    while set.join_next().await.is_some() {}
                    if let Some(net) = network {
                        net.release_switches().await;
                    }
                    // The machines are gone, so their watchers see the exits and
                    // end, and the run's own watchers are told to; what is still
                    // running after the bound is reported.
                    stop_watchers.cancel();
                    tasks.close();
                    if tokio::time::timeout(TASKS_LIMIT, tasks.wait())
                        .await
                        .is_err()
                    {
                        task_reporter.log(
                            None,
                            format!(
                                "{} background task(s) still running {} s after teardown",
                                tasks.len(),
                                TASKS_LIMIT.as_secs()
                            ),
                        );
                    }
                });
                let r = self.runtime.block_on(handle);
                r.map_err(|e| {
                    reporter.log_in(Some(section), None, format!("teardown task failed: {e}"));
                    e
                })
            });
        if let Some(dir) = self.state_dir.take() {
            let path = dir.path().to_owned();
            if let Err(e) = dir.close() {
                self.reporter
                    .log(None, format!("cannot remove {}: {e}", path.display()));
            }
        }
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect()
}
