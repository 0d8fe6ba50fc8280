//! [`NetError`]: why the test's network could not be set up or changed.

use std::sync::Arc;

use crate::errors::MissingBinary;
use crate::process::Exit;

/// Why a network operation failed. `Clone` (causes behind `Arc`) so it can
/// ride in a [`crate::backend::BackendError`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    /// `unshare(CLONE_NEWNET)` failed.
    #[error("cannot create a network namespace ({source}): vlans need root (CAP_SYS_ADMIN)")]
    Namespace {
        /// Why.
        #[source]
        source: nix::errno::Errno,
    },
    /// The thread that holds the namespace could not start.
    #[error("cannot start the network namespace thread: {source}")]
    Thread {
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The thread that holds the namespace ended before saying whether it
    /// made one.
    #[error("network namespace thread died")]
    ThreadDied,
    /// `nsenter`/`ip` could not run.
    #[error("cannot run nsenter/ip (apt-get install util-linux iproute2): {source}")]
    RunIp {
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// `ip` failed.
    #[error("ip {args}: {stderr}")]
    Ip {
        /// Its arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
    /// The blocking task that ran `ip` panicked or was cancelled.
    #[error("the ip task failed: {reason}")]
    IpTask {
        /// Why.
        reason: String,
    },
    /// A machine's interface did not appear in time to join its vlan.
    #[error("cannot attach {ifname} to vlan {vlan}: {source}")]
    Attach {
        /// The host end.
        ifname: String,
        /// The vlan.
        vlan: u8,
        /// The last attempt's failure.
        #[source]
        source: Box<NetError>,
    },
    /// A thread panicked while holding the network's lock.
    #[error("network lock poisoned")]
    Poisoned,
    /// A binary the switch needs is missing.
    #[error(transparent)]
    Missing(#[from] MissingBinary),
    /// A file or directory of a VDE switch could not be made.
    #[error("cannot create {path}: {source}")]
    Create {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A VDE switch's FIFO could not be made.
    #[error("cannot create {path}: {source}")]
    Fifo {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: nix::errno::Errno,
    },
    /// `vde_switch` could not be started.
    #[error("cannot run vde_switch: {source}")]
    RunVde {
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A `vde_switch` exited while starting.
    #[error("vde_switch for vlan {vlan} {exit}")]
    VdeExited {
        /// The vlan.
        vlan: u8,
        /// How it ended.
        exit: Exit,
    },
    /// A `vde_switch` did not create its socket in time.
    #[error("vde_switch for vlan {vlan} did not create {}", sock.display())]
    VdeNoSocket {
        /// The vlan.
        vlan: u8,
        /// The socket directory it should have made.
        sock: std::path::PathBuf,
    },
}
