//! Backends start and stop machines and give the driver byte streams to their
//! backdoor shells. [`Backend`] makes an [`Instance`]; everything a backend
//! may not support goes through [`Instance::op`] and fails with
//! [`BackendError::Unsupported`] by default.

pub mod capability;
pub mod cgroup;
mod error;
pub mod kvm;
#[cfg(test)]
pub mod local;
pub mod microvm;
pub mod nspawn;
pub mod qemu;
pub mod ssh;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::config::{BackendConfig, BackendKind, NodeConfig, TestConfig};
use crate::console::ConsoleLog;
use crate::guest::GuestStream;
use crate::net::Network;
use crate::process::Exit;
use crate::report::Reporter;

pub use error::{check_file, BackendError, SnapshotError, VmmBinaryProblem, VsockError};

/// Everything a backend needs to start one machine.
pub struct StartContext {
    /// The node's name.
    pub machine: String,
    /// The whole test config (node settings, numbering, vlans).
    pub config: Arc<TestConfig>,
    /// How long the machine may take to bring up its backdoor: the node's
    /// `boot_timeout`, else the backend's default.
    pub boot_timeout: Duration,
    /// A directory private to this machine, removed at teardown.
    pub state_dir: PathBuf,
    /// Where console lines go.
    pub console: ConsoleLog,
    /// The test's network, when it has one.
    pub network: Option<Arc<Network>>,
    /// For backend log lines (accelerator choice, warnings).
    pub reporter: Reporter,
    /// Where the machine's background tasks run (process watchers, output
    /// pumps, relays): the driver waits for them before it exits, so no
    /// child is left unreaped.
    pub tasks: tokio_util::task::TaskTracker,
}

impl StartContext {
    /// The run's id: the random suffix of the run's state dir
    /// `attest-<name>-<id>`, the parent of `state_dir`. Host-wide objects a
    /// machine creates (cgroups) carry it in their names, so a later run's
    /// janitor ties them to this run's lock.
    pub fn run_id(&self) -> String {
        run_id(self.state_dir.parent().unwrap_or(&self.state_dir))
    }
}

fn run_id(run_dir: &std::path::Path) -> String {
    run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .and_then(|n| n.rsplit('-').next().map(str::to_owned))
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

/// Operations only some backends have.
#[derive(Debug, Clone)]
pub enum BackendOp {
    /// Save the screen as PNG.
    Screenshot(PathBuf),
    /// Press a key combination (QMP qcodes, e.g. `ctrl-alt-delete`).
    SendKey(String),
    /// Type text.
    SendChars(String),
    /// Write text to the serial console.
    SendConsole(String),
    /// Take the machine's links down.
    Block,
    /// Bring them back up.
    Unblock,
    /// Forward a host TCP port to a guest port.
    ForwardPort {
        /// Host port.
        host: u16,
        /// Guest port.
        guest: u16,
    },
    /// Save the running machine; it keeps running.
    SnapshotCreate(PathBuf),
    /// Replace the machine by one loaded from a snapshot.
    SnapshotRestore(PathBuf),
    /// Text on the screen, by OCR: a JSON array of strings, the raw
    /// screenshot's reading first, then (with `variants`) those of its
    /// preprocessed variants.
    ScreenText {
        /// Also read the preprocessed variants (NixOS `get_screen_text_variants`).
        variants: bool,
    },
    /// Reboot the machine (the driver reconnects afterwards).
    Reboot,
    /// A QEMU monitor (HMP) command line; returns its output.
    MonitorCommand(String),
    /// The next QMP event (as JSON), waiting at most this long.
    QmpEvent(Duration),
}

impl BackendOp {
    /// The operation's script name.
    pub fn name(&self) -> &'static str {
        match self {
            BackendOp::Screenshot(_) => "screenshot",
            BackendOp::SendKey(_) => "send_key",
            BackendOp::SendChars(_) => "send_chars",
            BackendOp::SendConsole(_) => "send_console",
            BackendOp::Block => "block",
            BackendOp::Unblock => "unblock",
            BackendOp::ForwardPort { .. } => "forward_port",
            BackendOp::SnapshotCreate(_) => "snapshot_create",
            BackendOp::SnapshotRestore(_) => "snapshot_restore",
            BackendOp::ScreenText { variants: false } => "get_screen_text",
            BackendOp::ScreenText { variants: true } => "get_screen_text_variants",
            BackendOp::Reboot => "reboot",
            BackendOp::MonitorCommand(_) => "send_monitor_command",
            BackendOp::QmpEvent(_) => "wait_for_qmp_event",
        }
    }
}

/// A backend: knows how to start machines of its kind.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// How long a machine of this backend may take to bring up its backdoor
    /// when the node sets no `boot_timeout`.
    fn default_boot_timeout(&self) -> Duration;

    /// Starts the machine. Returns once the process runs; the backdoor may not
    /// be up yet.
    async fn start(&self, ctx: &StartContext) -> Result<Box<dyn Instance>, BackendError>;
}

/// A running machine.
#[async_trait]
pub trait Instance: Send + Sync {
    /// Opens a stream to the backdoor shell, waiting until `deadline` for the
    /// transport to appear. Fails at once when the machine has exited.
    async fn connect(&self, deadline: Instant) -> Result<Box<dyn GuestStream>, BackendError>;

    /// How many backdoor sessions may be open at once (1 for hvc0).
    fn max_sessions(&self) -> usize;

    /// A fresh unix socket path the guest agent can connect to itself, so
    /// its bytes skip the backdoor's relay (nspawn: a host directory
    /// bind-mounted into the container); `None` where there is none.
    fn agent_socket(&self) -> Option<crate::guest::agent::DirectSocket> {
        None
    }

    /// How much unacknowledged output an agent serving the backdoor stream
    /// may keep in flight (its `--window`): what the stream can hold
    /// without losing bytes. `None`: the agent's default.
    fn agent_window(&self) -> Option<u64> {
        None
    }

    /// A raw channel into the guest for the agent's upload, beside the
    /// backdoor terminal (QEMU: a virtio-serial port); `None` where there
    /// is none.
    fn agent_upload_port(&self) -> Option<crate::guest::upload_port::UploadPort> {
        None
    }

    /// The next [`Instance::connect`] reaches a backdoor that already
    /// announced itself (the one terminal of a VM, whose agent or shell is
    /// idle): ask it to announce itself again. A no-op where every
    /// connection gets a fresh backdoor.
    fn wake_on_next_connect(&self) {}

    /// Turns `Some` when the machine process has exited.
    fn exit_watch(&self) -> watch::Receiver<Option<Exit>>;

    /// Kills the machine at once, as a power cut would.
    async fn crash(&self) -> Result<(), BackendError>;

    /// Ends the machine for teardown: graceful within `grace`, then forced.
    /// Must leave no process behind.
    async fn terminate(&self, grace: Duration);

    /// A backend-specific operation.
    async fn op(&self, op: BackendOp) -> Result<String, BackendError> {
        Err(BackendError::Unsupported {
            op: op.name().to_owned(),
            backend: self.backend_kind(),
        })
    }

    /// The backend, for errors.
    fn backend_kind(&self) -> BackendKind;
}

/// Makes the backend of a node, from its typed settings.
pub fn for_node(node: &NodeConfig) -> Arc<dyn Backend> {
    match &node.backend {
        BackendConfig::Nspawn(c) => Arc::new(nspawn::NspawnBackend::new(c.clone())),
        BackendConfig::Qemu(c) => Arc::new(qemu::QemuBackend::new(c.clone())),
        BackendConfig::Ssh(c) => Arc::new(ssh::SshBackend::new(c.clone())),
        BackendConfig::Firecracker(c) => {
            Arc::new(microvm::MicroVmBackend::<microvm::firecracker::Firecracker>::new(c.clone()))
        }
        BackendConfig::CloudHypervisor(c) => Arc::new(microvm::MicroVmBackend::<
            microvm::cloud_hypervisor::CloudHypervisor,
        >::new(c.clone())),
    }
}

/// How long a node may take to bring up its backdoor: its own
/// `boot_timeout`, else its backend's default.
pub fn boot_timeout(node: &NodeConfig, backend: &dyn Backend) -> Duration {
    node.boot_timeout
        .map(Duration::from_secs_f64)
        .unwrap_or_else(|| backend.default_boot_timeout())
}

/// Polls `attempt` until it succeeds, `deadline` passes, or `exit` shows the
/// machine died. Used by transports that appear some time after start.
pub async fn poll_until<T, E, F, Fut>(
    what: &str,
    deadline: Instant,
    exit: &watch::Receiver<Option<Exit>>,
    mut attempt: F,
) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    use crate::process::{poll, PollEnd};
    poll(deadline, Duration::from_millis(20), exit, &mut attempt)
        .await
        .map_err(|e| match e {
            PollEnd::Exited(exit) => BackendError::Exited {
                process: "the machine".into(),
                exit,
                during: format!("while waiting for {what}"),
                output: String::new(),
            },
            PollEnd::TimedOut(last) => BackendError::TimedOut {
                what: what.to_owned(),
                limit: None,
                last: last.to_string(),
                output: String::new(),
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_id_is_the_state_dirs_random_suffix() {
        assert_eq!(
            run_id(std::path::Path::new("/tmp/attest-nginx-aB3xY9")),
            "aB3xY9"
        );
        assert_eq!(run_id(std::path::Path::new("/tmp/attest-web-1-x.y")), "xy");
    }
}
