//! [`BackendError`]: why a backend could not start a machine or do an
//! operation on it. Each variant says what happened and keeps its cause
//! (`source()`): the file and the I/O error, the program that did not run,
//! the process that exited and how, the VMM's API error. Messages are
//! complete on their own (the reporter prints `Display` only) and end with
//! what to do where there is something to do.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{BackendKind, ConfigError};
use crate::errors::os_reason;
use crate::process::Exit;

use super::capability::Refusal;
use super::kvm::KvmProblem;

/// Why a backend operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The operation does not exist on this backend.
    #[error("{op} is not supported by the {backend} backend")]
    Unsupported {
        /// The operation.
        op: String,
        /// The backend.
        backend: BackendKind,
    },
    /// The capability table refuses the operation on this node (powering
    /// off a host attest did not start).
    #[error("{}", refusal.message(op, machine))]
    Refused {
        /// The operation.
        op: &'static str,
        /// The machine.
        machine: String,
        /// Why not and what to do instead.
        refusal: Refusal,
    },
    /// A binary the backend runs is missing.
    #[error(transparent)]
    Missing(#[from] crate::errors::MissingBinary),
    /// The node's image manifest cannot be read: the image is not built.
    #[error("{error}: build it with images/debian/build")]
    ImageNotBuilt {
        /// Why the manifest cannot be read.
        #[source]
        error: Arc<ConfigError>,
    },
    /// A file the machine needs is missing or cannot be used.
    #[error("{what} {}: {}{}", path.display(), os_reason(error), fix.map(|f| format!(": {f}")).unwrap_or_default())]
    File {
        /// Its role (`kernel`, `disk image`, `identity file of root@host`).
        what: String,
        /// The file.
        path: PathBuf,
        /// Why it cannot be used (`No such file or directory`).
        #[source]
        error: Arc<std::io::Error>,
        /// What to do, when there is one thing to do.
        fix: Option<&'static str>,
    },
    /// The image has no uncompressed kernel, which microVMs need.
    #[error(
        "the image {} has no uncompressed `vmlinux` (microVMs need an ELF kernel): rebuild it with images/debian/build",
        image.display()
    )]
    NoVmlinux {
        /// The image's directory.
        image: PathBuf,
    },
    /// A container's root is not a file system tree.
    #[error(
        "{} is not a root file system tree: build the image with images/debian/build",
        path.display()
    )]
    NotARootTree {
        /// The configured root.
        path: PathBuf,
    },
    /// The node's settings lack something the backend needs.
    #[error("no {what} configured: {fix}")]
    NotConfigured {
        /// What is missing (`kernel`, `rootfs`).
        what: &'static str,
        /// Which settings give it.
        fix: &'static str,
    },
    /// The backend needs root.
    #[error("{program} needs root: run attest as root")]
    NeedsRoot {
        /// The program that needs it.
        program: &'static str,
    },
    /// KVM cannot be used by a VMM that needs it.
    #[error("{vmm} needs {}", problem.need())]
    Kvm {
        /// The VMM.
        vmm: BackendKind,
        /// What is wrong with `/dev/kvm`.
        #[source]
        problem: KvmProblem,
    },
    /// QEMU's accelerator cannot be used.
    #[error(transparent)]
    Accel(#[from] super::qemu::accel::AccelError),
    /// A path the container's root overlay would use has a character
    /// overlayfs cannot take.
    #[error(
        "{}: the container's root overlay cannot use a path with `,` or `:`; move it (or TMPDIR) elsewhere",
        path.display()
    )]
    OverlayPath {
        /// The path.
        path: PathBuf,
    },
    /// A unix socket in the state dir would have a path longer than the
    /// kernel allows.
    #[error(
        "the state directory {} is too deep for {whose} unix sockets (at most 107 bytes per path): {} has {} bytes; set TMPDIR to a shorter directory or use a shorter node name",
        dir.display(), longest.display(), longest.as_os_str().len()
    )]
    SocketPathTooLong {
        /// The state dir.
        dir: PathBuf,
        /// The longest socket path.
        longest: PathBuf,
        /// Whose sockets (`QEMU's`, `the VMM's`).
        whose: &'static str,
    },
    /// A host-side file step failed (creating the state dir, writing a file
    /// the machine gets, copying a disk).
    #[error("cannot {action} {}: {}", path.display(), os_reason(error))]
    Io {
        /// What was done (`create`, `write`, `copy the disk to`).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        error: Arc<std::io::Error>,
    },
    /// A program could not be started.
    #[error("cannot run {program}: {}", os_reason(error))]
    Spawn {
        /// The program (and the arguments that matter).
        program: String,
        /// Why.
        #[source]
        error: Arc<std::io::Error>,
    },
    /// A helper program ran and failed.
    #[error("{action} failed: {output}")]
    ToolFailed {
        /// What it was asked to do (`qemu-img create of …`, `cp A B`).
        action: String,
        /// What it printed.
        output: String,
    },
    /// The machine's process (or a process it depends on) exited while
    /// attest waited for it.
    #[error("{process} {exit}{}{}", if during.is_empty() { String::new() } else { format!(" {during}") }, last_words(output))]
    Exited {
        /// The process (`QEMU`, `firecracker`, `systemd-nspawn`, `the machine`).
        process: String,
        /// How it ended.
        exit: Exit,
        /// What attest was waiting for (`while starting`).
        during: String,
        /// Its last output, when there is some.
        output: String,
    },
    /// Something the machine should bring up did not come within the time
    /// allowed.
    #[error(
        "timed out{} waiting for {what}{}{}",
        limit.map(|l| format!(" after {} s", l.as_secs_f64())).unwrap_or_default(),
        if last.is_empty() { String::new() } else { format!(": {last}") },
        last_words(output)
    )]
    TimedOut {
        /// What was awaited.
        what: String,
        /// How long, when known.
        limit: Option<Duration>,
        /// The last attempt's error.
        last: String,
        /// The process's last output, when there is some.
        output: String,
    },
    /// Nothing answered on the guest's vsock port in time.
    #[error("no backdoor on vsock port {port} within {:.0}s (last attempt: {last}){hint}", waited.as_secs_f64())]
    NoVsockBackdoor {
        /// The port.
        port: u32,
        /// How long attest waited.
        waited: Duration,
        /// The last handshake's failure.
        #[source]
        last: VsockError,
        /// What to check (empty, or starting with `; `).
        hint: String,
    },
    /// The VMM could not be reached or refused a request.
    #[error("{vmm} {what}: {error}")]
    Api {
        /// The VMM.
        vmm: &'static str,
        /// What attest asked for.
        what: &'static str,
        /// The API's answer.
        #[source]
        error: super::microvm::api::ApiError,
    },
    /// The VMM binary is not where the settings say or not installed.
    #[error("{problem}: {how}")]
    VmmBinary {
        /// What is wrong.
        problem: VmmBinaryProblem,
        /// How to get the binary.
        how: &'static str,
    },
    /// `<vmm> --version` printed no version.
    #[error("cannot read a version from `{} --version`: {output}", binary.display())]
    VmmVersion {
        /// The binary.
        binary: PathBuf,
        /// What it printed.
        output: String,
    },
    /// A VMM option needs a newer VMM.
    #[error("option `{option}` needs {vmm} ≥ {need}, found {have}")]
    VmmTooOld {
        /// The VMM.
        vmm: &'static str,
        /// The option.
        option: String,
        /// The version it needs (`X.Y`).
        need: String,
        /// The version found.
        have: String,
    },
    /// A container's init process is gone (it cannot be rebooted).
    #[error("the container's init process is gone")]
    ContainerInitGone,
    /// A process of the machine could not be signalled.
    #[error("cannot signal {what}: {error}")]
    Signal {
        /// The process.
        what: &'static str,
        /// Why.
        #[source]
        error: nix::errno::Errno,
    },
    /// The node has vlans but the test set up no network.
    #[error("the node has vlans but the test has no network")]
    NoTestNetwork,
    /// The test's network has no switch for a vlan of the node.
    #[error("the test's network has no switch for vlan {vlan}")]
    NoVlanSwitch {
        /// The vlan.
        vlan: u8,
    },
    /// A microVM's TAP could not be created.
    #[error("cannot create TAP {name}: {error}")]
    Tap {
        /// The TAP.
        name: String,
        /// Why.
        #[source]
        error: crate::net::NetError,
    },
    /// The machine has no vlan link for `block`/`unblock`.
    #[error("the machine has no vlan network to {op}")]
    NoVlanLink {
        /// `block` or `unblock`.
        op: &'static str,
    },
    /// `forward_port` without a user-mode NIC.
    #[error(
        "forward_port needs a user-mode NIC: add `-netdev user,id=user.0 -device virtio-net-pci,netdev=user.0` to the machine's qemu extra_args"
    )]
    NoUserNic,
    /// A QEMU monitor (HMP) command answered with an error.
    #[error("{command}: {reply}")]
    Monitor {
        /// The command.
        command: &'static str,
        /// QEMU's answer.
        reply: String,
    },
    /// A snapshot could not be taken or loaded.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The ssh connection to a host failed.
    #[error(transparent)]
    Ssh(#[from] super::ssh::SshError),
    /// A QEMU monitor (QMP) command failed.
    #[error(transparent)]
    Qmp(#[from] super::qemu::qmp::QmpError),
    /// A QEMU chardev socket (backdoor, serial console) failed.
    #[error(transparent)]
    Relay(#[from] super::qemu::relay::RelayError),
    /// A key or text cannot be typed (QEMU `send-key`).
    #[error(transparent)]
    Key(#[from] super::qemu::keys::KeyError),
    /// The screen could not be read (QEMU OCR).
    #[error(transparent)]
    Ocr(#[from] super::qemu::ocr::OcrError),
    /// The test's network could not be set up or changed.
    #[error(transparent)]
    Network(#[from] crate::net::NetError),
}

impl BackendError {
    /// A failed file step.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        BackendError::Io {
            action,
            path: path.into(),
            error: Arc::new(error),
        }
    }

    /// A program that did not start.
    pub fn spawn(program: impl std::fmt::Display, error: std::io::Error) -> Self {
        BackendError::Spawn {
            program: program.to_string(),
            error: Arc::new(error),
        }
    }

    /// An image manifest that cannot be read.
    pub fn image(error: ConfigError) -> Self {
        BackendError::ImageNotBuilt {
            error: Arc::new(error),
        }
    }

    /// The machine's process exited (or an earlier error said so): adds its
    /// last output to an [`BackendError::Exited`] or
    /// [`BackendError::TimedOut`] that has none yet.
    pub fn with_output(mut self, text: String) -> Self {
        if let BackendError::Exited { output, .. } | BackendError::TimedOut { output, .. } =
            &mut self
        {
            if output.is_empty() {
                *output = text;
            }
        }
        self
    }
}

/// A file that must exist: `Ok` when `path` is a regular file, else the
/// error [`BackendError::File`] reports (`No such file or directory`, `Is a
/// directory`).
pub fn check_file(path: &std::path::Path) -> Result<(), std::io::Error> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(libc::EISDIR))
    }
}

/// A process's last output, on lines of its own after the message.
fn last_words(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("\n{}", output.trim_end())
    }
}

/// What is wrong with the VMM binary.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VmmBinaryProblem {
    /// The node's `binary` names a file that does not exist.
    #[error("the configured {name} binary {} does not exist", path.display())]
    Configured {
        /// The VMM.
        name: &'static str,
        /// The configured path.
        path: PathBuf,
    },
    /// The environment variable names a file that does not exist.
    #[error("${var} is {} but that file does not exist", path.display())]
    FromEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        path: PathBuf,
    },
    /// Nowhere to be found.
    #[error("`{name}` is not installed (not on PATH, not in {cache}, ${var} unset)")]
    NotInstalled {
        /// The VMM.
        name: &'static str,
        /// attest's cache of binaries.
        cache: &'static str,
        /// The variable that could name it.
        var: &'static str,
    },
}

/// Why one hybrid-vsock handshake failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VsockError {
    /// The VMM's vsock socket does not accept connections (yet).
    #[error("cannot connect to {}: {}", socket.display(), os_reason(error))]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        error: Arc<std::io::Error>,
    },
    /// Sending `CONNECT` or reading its answer failed.
    #[error("the CONNECT exchange failed: {}", os_reason(error))]
    Exchange {
        /// Why.
        #[source]
        error: Arc<std::io::Error>,
    },
    /// No answer in time.
    #[error("CONNECT {port} got no answer within {} ms", limit.as_millis())]
    NoAnswer {
        /// The port.
        port: u32,
        /// How long attest waited.
        limit: Duration,
    },
    /// The VMM closed the connection: nothing listens on the port.
    #[error("the VMM closed the connection after CONNECT {port} (nothing listens on that port in the guest yet)")]
    NobodyListens {
        /// The port.
        port: u32,
    },
    /// An answer other than `OK <port>`.
    #[error("unexpected CONNECT answer {answer:?}")]
    Unexpected {
        /// The answer.
        answer: String,
    },
}

/// Why a snapshot could not be taken or loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    /// The directory holds no snapshot attest wrote for this backend.
    #[error("{} holds no attest snapshot of the {backend} backend (no readable {file})", dir.display())]
    NotASnapshot {
        /// The directory.
        dir: PathBuf,
        /// The backend.
        backend: BackendKind,
        /// The metadata file that is missing.
        file: &'static str,
    },
    /// A file of the snapshot is missing.
    #[error("{} has no {file}", dir.display())]
    MissingPart {
        /// The directory.
        dir: PathBuf,
        /// The file.
        file: String,
    },
    /// It was taken by another VMM.
    #[error("{} holds a {found} snapshot; this machine runs {vmm}", dir.display())]
    OtherVmm {
        /// The directory.
        dir: PathBuf,
        /// The VMM that took it.
        found: String,
        /// This machine's VMM.
        vmm: &'static str,
    },
    /// It was taken by another version of the VMM.
    #[error("{} was taken with {vmm} {found}; this is {vmm} {have}, which cannot load it", dir.display())]
    OtherVersion {
        /// The directory.
        dir: PathBuf,
        /// The VMM.
        vmm: &'static str,
        /// The version that took it.
        found: String,
        /// This machine's version.
        have: String,
    },
    /// It was taken of another machine.
    #[error(
        "{} is a snapshot of machine `{machine}`; a snapshot refers to its machine's disk, vsock socket and TAPs, so only `{machine}` can restore it",
        dir.display()
    )]
    OtherMachine {
        /// The directory.
        dir: PathBuf,
        /// The machine it was taken of.
        machine: String,
    },
    /// A writable disk lies outside the state dir, so a restore could not
    /// put it back.
    #[error(
        "disk {} is outside the machine's state dir (a `snapshot=on` disk?); snapshots need the disk images in {}",
        disk.display(), state_dir.display()
    )]
    DiskOutside {
        /// The disk.
        disk: PathBuf,
        /// The state dir.
        state_dir: PathBuf,
    },
    /// QEMU's migration (saving or loading the state) failed.
    #[error("{what} failed: {reason}")]
    Migration {
        /// `saving the VM state` or `loading the VM state`.
        what: &'static str,
        /// QEMU's `error-desc`.
        reason: String,
    },
    /// QEMU's migration did not end in time.
    #[error("{what} did not finish in {} s (migration status {status:?})", limit.as_secs())]
    MigrationTimedOut {
        /// `saving the VM state` or `loading the VM state`.
        what: &'static str,
        /// The limit.
        limit: Duration,
        /// The last status.
        status: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_names_its_role_path_reason_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("vmlinux");
        let error = check_file(&missing).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
        let e = BackendError::File {
            what: "kernel".into(),
            path: missing.clone(),
            error: Arc::new(error),
            fix: Some("build the image with images/debian/build"),
        };
        assert_eq!(
            e.to_string(),
            format!(
                "kernel {}: No such file or directory: build the image with images/debian/build",
                missing.display()
            )
        );
        assert!(std::error::Error::source(&e).is_some());
        let e = check_file(dir.path()).unwrap_err();
        assert_eq!(os_reason(&e), "Is a directory");
    }

    #[test]
    fn a_process_that_exited_gets_its_last_words_once() {
        let e = BackendError::Exited {
            process: "QEMU".into(),
            exit: Exit::Code(1),
            during: "while starting".into(),
            output: String::new(),
        }
        .with_output("QEMU said:\n-foo: invalid option".into())
        .with_output("later words".into());
        assert_eq!(
            e.to_string(),
            "QEMU exited with status 1 while starting\nQEMU said:\n-foo: invalid option"
        );
    }
}
