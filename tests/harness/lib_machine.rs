//! A machine started through the library rather than the binary, for what a
//! script cannot reach (e.g. a guest without a backdoor never finishes
//! `start()`): its test dir, state dir, console and optional network, and
//! the [`StartContext`] a backend's `start_instance` takes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use attest::backend::microvm::cloud_hypervisor::CloudHypervisorBackend;
use attest::backend::microvm::firecracker::FirecrackerBackend;
use attest::backend::microvm::instance::MicroVmInstance;
use attest::backend::{self, BackendError, StartContext};
use attest::config::BackendConfig;
use attest::config::TestConfig;
use attest::console::ConsoleLog;
use attest::net::Network;
use attest::report::{ReportOptions, Reporter};

use super::TestDir;

/// One node `m` of the test in `t`, started by the test itself.
pub struct LibMachine {
    pub t: TestDir,
    pub state: tempfile::TempDir,
    pub console: ConsoleLog,
    pub network: Option<Arc<Network>>,
}

impl LibMachine {
    pub fn new(t: TestDir) -> LibMachine {
        LibMachine {
            t,
            state: tempfile::tempdir().unwrap(),
            console: ConsoleLog::new(Arc::new(|_| {})),
            network: None,
        }
    }

    /// The start context of node `m`, with its state dir created.
    pub fn context(&self) -> StartContext {
        let config = Arc::new(TestConfig::load(&self.t.config()).unwrap());
        let node = &config.nodes["m"];
        let ctx = StartContext {
            machine: "m".into(),
            boot_timeout: backend::boot_timeout(node, &*backend::for_node(node)),
            config: config.clone(),
            state_dir: self.state.path().join("m"),
            console: self.console.clone(),
            network: self.network.clone(),
            reporter: Reporter::new("lib", &ReportOptions::default()).unwrap(),
            tasks: tokio_util::task::TaskTracker::new(),
        };
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        ctx
    }

    /// Starts node `m` on the microVM backend its config names (a
    /// [`MicroVmInstance`], for what only the instance shows: the VMM's pid,
    /// its exit, snapshots).
    pub async fn start_microvm(&self) -> Result<MicroVmInstance, BackendError> {
        let ctx = self.context();
        match &ctx.config.nodes["m"].backend {
            BackendConfig::Firecracker(s) => {
                FirecrackerBackend::new(s.clone())
                    .start_instance(&ctx)
                    .await
            }
            BackendConfig::CloudHypervisor(s) => {
                CloudHypervisorBackend::new(s.clone())
                    .start_instance(&ctx)
                    .await
            }
            _ => panic!("node m of {} is not a microVM", self.t.config().display()),
        }
    }

    /// Waits until the console holds `text` `count` times.
    pub async fn wait_console(&self, text: &str, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.console.text();
            if log.matches(text).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} did not appear {count} times on the console within {limit:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
