//! [`MicroVmInstance`]: one running microVM, whichever VMM runs it. The
//! VMM-specific parts (command line, REST calls) sit behind [`Flavor`]; the
//! lifecycle (spawn, console, TAPs, vsock, terminate, snapshots) is shared.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::api::{ApiClient, ApiError};
use super::{
    cgroup_v1_warning, connect_hybrid_vsock, copy_disk, remove_socket, wait_for_api, MicroVmSpec,
    Taps, BACKDOOR_VSOCK_PORT,
};
use crate::backend::kvm::KvmFacts;
use crate::backend::{BackendError, BackendOp, Instance, SnapshotError, StartContext};
use crate::config::BackendKind;
use crate::console::ConsoleLog;
use crate::guest::GuestStream;
use crate::process::{spawn_watched, Exit, ReplaceableProcess, Watched};
use crate::report::Reporter;

/// Files of one VM in its state directory.
#[derive(Debug, Clone)]
pub struct VmmPaths {
    /// The VMM's API socket.
    pub api_socket: PathBuf,
    /// The hybrid vsock unix socket.
    pub vsock: PathBuf,
    /// The VMM's own log file.
    pub log: PathBuf,
    /// The VM's private copy of the root disk.
    pub disk: Option<PathBuf>,
    /// TAP name, vlan, MAC, in NIC order.
    pub taps: Vec<(String, u8, String)>,
}

/// The file names a snapshot directory holds.
pub mod snapshot_files {
    /// VMM device and vCPU state.
    pub const STATE: &str = "vm.state";
    /// Guest memory.
    pub const MEMORY: &str = "vm.mem";
    /// The root disk at the moment of the snapshot.
    pub const DISK: &str = "disk.img";
    /// What took the snapshot (JSON): VMM, version, machine, disk.
    pub const META: &str = "attest-snapshot.json";
}

/// What differs between firecracker and cloud-hypervisor.
#[async_trait]
pub trait Flavor: Send + Sync {
    /// Which VMM this is.
    fn kind(&self) -> BackendKind;
    /// The VMM's name, for messages and file names.
    fn name(&self) -> &'static str {
        self.kind().name()
    }
    /// The VMM's version (for snapshot compatibility checks).
    fn version(&self) -> super::Version;
    /// VMM arguments: a VM to boot (`boot`), or an empty VMM that waits for
    /// a snapshot to load.
    fn args(&self, paths: &VmmPaths, boot: bool) -> Vec<String>;
    /// A cheap GET that answers once the API is up.
    fn api_probe(&self) -> &'static str;
    /// Configures the VM over the API and starts it (a no-op when the
    /// command line already did).
    async fn configure_and_boot(&self, api: &ApiClient, paths: &VmmPaths) -> Result<(), ApiError>;
    /// Asks the guest to shut down (Ctrl-Alt-Del / ACPI power button).
    async fn power_button(&self, api: &ApiClient) -> Result<(), ApiError>;
    /// Pauses the vCPUs.
    async fn pause(&self, api: &ApiClient) -> Result<(), ApiError>;
    /// Resumes the vCPUs.
    async fn resume(&self, api: &ApiClient) -> Result<(), ApiError>;
    /// Writes memory and VM state of the paused VM into `dir`.
    async fn snapshot(&self, api: &ApiClient, dir: &Path) -> Result<(), ApiError>;
    /// Loads the snapshot in `dir` into a fresh VMM and resumes it.
    async fn restore(&self, api: &ApiClient, dir: &Path) -> Result<(), ApiError>;
    /// The VM state as the VMM reports it (`Running`, `Paused`, …).
    async fn state(&self, api: &ApiClient) -> Result<String, ApiError>;
}

/// A running microVM.
pub struct MicroVmInstance {
    flavor: Box<dyn Flavor>,
    machine: String,
    reporter: Reporter,
    console: ConsoleLog,
    binary: PathBuf,
    netns: Option<PathBuf>,
    paths: VmmPaths,
    api: ApiClient,
    vmm: ReplaceableProcess,
    taps: Mutex<Taps>,
    started: Mutex<Instant>,
    backdoor_seen: AtomicBool,
    pvm: bool,
    ops: tokio::sync::Mutex<()>,
}

/// How long one API call may take (snapshot of a big guest included).
const API_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a fresh VMM may take to open its API socket.
const API_UP_LIMIT: Duration = Duration::from_secs(10);
/// How long `reboot` waits for the guest to react to the power button.
const REBOOT_GRACE: Duration = Duration::from_secs(30);

fn spawn_vmm(
    binary: &Path,
    netns: Option<&Path>,
    args: &[String],
    console: &ConsoleLog,
    tasks: &TaskTracker,
) -> Result<Watched, BackendError> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display()))
                .arg("--")
                .arg(binary);
            c
        }
        None => Command::new(binary),
    };
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    spawn_watched(&mut cmd, Some(console.clone()), tasks)
        .map_err(|e| BackendError::spawn(binary.display(), e))
}

/// Starts a microVM: private disk copy, TAPs, the VMM process, its
/// configuration over the API, boot. Cleans up everything on failure.
pub async fn start(
    ctx: &StartContext,
    spec: &MicroVmSpec,
    flavor: Box<dyn Flavor>,
    binary: PathBuf,
    kvm: &KvmFacts,
) -> Result<MicroVmInstance, BackendError> {
    let vmm_name = flavor.name();
    if kvm.pvm {
        ctx.reporter
            .log(Some(&ctx.machine), super::pvm_warning(vmm_name));
    }
    // Unix socket paths are limited to 108 bytes: keep the names short.
    let dir = ctx.state_dir.join("vm");
    std::fs::create_dir_all(&dir).map_err(|e| BackendError::io("create", &dir, e))?;
    // sun_path holds 108 bytes including the NUL.
    let longest = dir.join("vsock.sock");
    if longest.as_os_str().len() > 107 {
        return Err(BackendError::SocketPathTooLong {
            dir,
            longest,
            whose: "the VMM's",
        });
    }
    let log = dir.join(format!("{vmm_name}.log"));
    std::fs::write(&log, b"").map_err(|e| BackendError::io("write", &log, e))?;
    let disk = match &spec.disk {
        Some(original) => {
            let copy = dir.join("disk.img");
            copy_disk(original, &copy).await?;
            Some(copy)
        }
        None => None,
    };
    let taps = match &ctx.network {
        Some(net) if !spec.vlans.is_empty() => Taps::create(net, spec).await?,
        _ => Taps::none(),
    };
    let paths = VmmPaths {
        api_socket: dir.join("api.sock"),
        vsock: dir.join("vsock.sock"),
        log,
        disk,
        taps: taps.links.clone(),
    };
    let netns = taps.netns().await?;
    let mut taps = taps;
    remove_socket(&paths.api_socket);
    remove_socket(&paths.vsock);
    let process = match spawn_vmm(
        &binary,
        netns.as_deref(),
        &flavor.args(&paths, true),
        &ctx.console,
        &ctx.tasks,
    ) {
        Ok(p) => p,
        Err(e) => {
            taps.remove_async().await;
            return Err(e);
        }
    };
    let api = ApiClient::new(&paths.api_socket, API_TIMEOUT);
    let instance = MicroVmInstance {
        machine: ctx.machine.clone(),
        reporter: ctx.reporter.clone(),
        console: ctx.console.clone(),
        binary,
        netns,
        api,
        vmm: ReplaceableProcess::new(process.clone(), &ctx.tasks),
        taps: Mutex::new(taps),
        started: Mutex::new(Instant::now()),
        backdoor_seen: AtomicBool::new(false),
        pvm: kvm.pvm,
        ops: tokio::sync::Mutex::new(()),
        paths,
        flavor,
    };
    let booted = async {
        wait_for_api(
            &instance.api,
            instance.flavor.api_probe(),
            &process,
            API_UP_LIMIT,
            vmm_name,
        )
        .await?;
        instance
            .flavor
            .configure_and_boot(&instance.api, &instance.paths)
            .await
            .map_err(|e| instance.api_failure("rejected the VM configuration", e, &process))
    }
    .await;
    if let Err(e) = booted {
        // A VMM that died says why in its last output.
        let e = if process.has_exited() {
            e.with_output(instance.last_words())
        } else {
            e
        };
        instance.stop_now().await;
        return Err(e);
    }
    Ok(instance)
}

impl MicroVmInstance {
    /// An API error with the VMM's message, or how the VMM died.
    fn api_failure(&self, what: &'static str, e: ApiError, process: &Watched) -> BackendError {
        let vmm = self.flavor.name();
        if let Some(exit) = process.exit.borrow().clone() {
            return BackendError::Exited {
                process: vmm.to_owned(),
                exit,
                during: format!("({e})"),
                output: self.last_words(),
            };
        }
        BackendError::Api {
            vmm,
            what,
            error: e,
        }
    }

    /// The VMM's last output (stdout/stderr and its log file), for errors
    /// about a VMM that died.
    fn last_words(&self) -> String {
        let mut s = String::new();
        let console = self.console.last_lines(5);
        if !console.is_empty() {
            s.push_str(&format!("its last output:\n    {}", console.join("\n    ")));
        }
        if let Ok(log) = std::fs::read_to_string(&self.paths.log) {
            let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            if !lines.is_empty() {
                let tail = &lines[lines.len().saturating_sub(5)..];
                if !s.is_empty() {
                    s.push('\n');
                }
                s.push_str(&format!(
                    "its log ({}):\n    {}",
                    self.paths.log.display(),
                    tail.join("\n    ")
                ));
            }
        }
        s
    }

    /// Kills the VMM, reaps it and removes the TAPs.
    async fn stop_now(&self) {
        self.vmm.kill().await;
        self.remove_taps_async().await;
    }

    async fn remove_taps_async(&self) {
        let taps = match self.taps.lock() {
            Ok(mut t) => t.take(),
            Err(_) => return,
        };
        let mut taps = taps;
        taps.remove_async().await;
    }

    fn remove_taps(&self) {
        if let Ok(mut t) = self.taps.lock() {
            t.remove();
        }
    }

    /// Pause, snapshot, copy the disk, and resume in every case.
    async fn snapshot_create(&self, dir: &Path) -> Result<String, BackendError> {
        let vmm = self.flavor.name();
        let failed = |what, error| BackendError::Api { vmm, what, error };
        std::fs::create_dir_all(dir).map_err(|e| BackendError::io("create", dir, e))?;
        let started = Instant::now();
        self.flavor
            .pause(&self.api)
            .await
            .map_err(|e| failed("could not pause the VM", e))?;
        let taken = async {
            self.flavor
                .snapshot(&self.api, dir)
                .await
                .map_err(|e| failed("could not write the snapshot", e))?;
            if let Some(disk) = &self.paths.disk {
                copy_disk(disk, &dir.join(snapshot_files::DISK)).await?;
            }
            let meta = serde_json::json!({
                "vmm": vmm,
                "version": self.flavor.version().to_string(),
                "machine": self.machine,
                "disk": self.paths.disk,
                "vsock": self.paths.vsock,
                "taps": self.paths.taps.iter().map(|t| &t.0).collect::<Vec<_>>(),
            });
            let meta_path = dir.join(snapshot_files::META);
            std::fs::write(
                &meta_path,
                serde_json::to_string_pretty(&meta).unwrap_or_default(),
            )
            .map_err(|e| BackendError::io("write", meta_path, e))
        }
        .await;
        // The VM keeps running whatever happened.
        let resumed = self
            .flavor
            .resume(&self.api)
            .await
            .map_err(|e| failed("could not resume the VM after the snapshot", e));
        taken?;
        resumed?;
        Ok(format!(
            "snapshot of {} in {} ({:.0} ms)",
            self.machine,
            dir.display(),
            started.elapsed().as_secs_f64() * 1000.0
        ))
    }

    /// Checks that `dir` holds a snapshot this machine can load.
    fn check_snapshot(&self, dir: &Path) -> Result<(), BackendError> {
        let vmm = self.flavor.name();
        let meta_path = dir.join(snapshot_files::META);
        let meta: serde_json::Value = std::fs::read_to_string(&meta_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| SnapshotError::NotASnapshot {
                dir: dir.to_owned(),
                backend: self.flavor.kind(),
                file: snapshot_files::META,
            })?;
        let field = |k: &str| {
            meta.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_owned()
        };
        let dir = dir.to_owned();
        if field("vmm") != vmm {
            return Err(SnapshotError::OtherVmm {
                dir,
                found: field("vmm"),
                vmm,
            }
            .into());
        }
        let version = self.flavor.version().to_string();
        if field("version") != version {
            return Err(SnapshotError::OtherVersion {
                dir,
                vmm,
                found: field("version"),
                have: version,
            }
            .into());
        }
        if field("machine") != self.machine {
            return Err(SnapshotError::OtherMachine {
                dir,
                machine: field("machine"),
            }
            .into());
        }
        if self.paths.disk.is_some() && !dir.join(snapshot_files::DISK).is_file() {
            return Err(SnapshotError::MissingPart {
                dir,
                file: snapshot_files::DISK.to_owned(),
            }
            .into());
        }
        Ok(())
    }

    /// Starts a fresh VMM process for this machine (`boot`: configured to
    /// boot; otherwise bare, to load a snapshot), makes it the machine's
    /// process and waits for its API.
    async fn fresh_vmm(&self, boot: bool) -> Result<Watched, BackendError> {
        let vmm = self.flavor.name();
        remove_socket(&self.paths.api_socket);
        remove_socket(&self.paths.vsock);
        let process = spawn_vmm(
            &self.binary,
            self.netns.as_deref(),
            &self.flavor.args(&self.paths, boot),
            &self.console,
            self.vmm.tasks(),
        )?;
        self.vmm.adopt(process.clone());
        wait_for_api(
            &self.api,
            self.flavor.api_probe(),
            &process,
            API_UP_LIMIT,
            vmm,
        )
        .await?;
        Ok(process)
    }

    /// Reboots the machine. Neither VMM restarts a guest in place (a guest
    /// reboot ends firecracker), so: power button (when the guest ever
    /// answered) and wait for the VMM to end, else kill it; then a fresh VMM
    /// boots the same configuration on the same disk copy, whose contents
    /// survive as on a real reboot. The driver reconnects afterwards.
    async fn reboot(&self) -> Result<String, BackendError> {
        let vmm = self.flavor.name();
        let started = Instant::now();
        // Detach the old process from the exit watch first: its end is planned.
        if let Some(old) = self.vmm.retire() {
            if !old.has_exited()
                && self.backdoor_seen.load(Ordering::Relaxed)
                && self.flavor.power_button(&self.api).await.is_ok()
            {
                let _ = tokio::time::timeout(REBOOT_GRACE, old.wait()).await;
            }
            old.signal_group(nix::sys::signal::Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(10), old.wait()).await;
        }
        let booted = async {
            let process = self.fresh_vmm(true).await?;
            self.flavor
                .configure_and_boot(&self.api, &self.paths)
                .await
                .map_err(|e| self.api_failure("rejected the VM configuration", e, &process))
        }
        .await;
        if let Err(e) = booted {
            self.vmm.kill().await;
            self.vmm
                .mark_exited(Exit::Other(format!("was lost in a failed reboot: {e}")));
            return Err(e);
        }
        *self.started.lock().expect("start lock") = Instant::now();
        Ok(format!(
            "{} rebooted in a fresh {vmm} process ({:.0} ms)",
            self.machine,
            started.elapsed().as_secs_f64() * 1000.0
        ))
    }

    /// Replaces the VMM by a fresh one that loads the snapshot in `dir`.
    async fn snapshot_restore(&self, dir: &Path) -> Result<String, BackendError> {
        let vmm = self.flavor.name();
        self.check_snapshot(dir)?;
        if vmm == "firecracker" {
            if let Some(w) = cgroup_v1_warning() {
                self.reporter
                    .log(Some(&self.machine), format!("warning: {w}"));
            }
        }
        let started = Instant::now();
        // The old VMM's exit is planned: detach it from the exit watch first.
        if let Some(old) = self.vmm.retire() {
            old.signal_group(nix::sys::signal::Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(10), old.wait()).await;
        }
        let restored = async {
            if let Some(disk) = &self.paths.disk {
                let _ = std::fs::remove_file(disk);
                copy_disk(&dir.join(snapshot_files::DISK), disk).await?;
            }
            let process = self.fresh_vmm(false).await?;
            self.flavor
                .restore(&self.api, dir)
                .await
                .map_err(|e| self.api_failure("could not load the snapshot", e, &process))
        }
        .await;
        if let Err(e) = restored {
            self.vmm.kill().await;
            self.vmm.mark_exited(Exit::Other(format!(
                "was lost in a failed snapshot restore: {e}"
            )));
            return Err(e);
        }
        *self.started.lock().expect("start lock") = Instant::now();
        Ok(format!(
            "{} restored from {} in a fresh {vmm} process ({:.0} ms)",
            self.machine,
            dir.display(),
            started.elapsed().as_secs_f64() * 1000.0
        ))
    }
}

#[async_trait]
impl Instance for MicroVmInstance {
    async fn connect(&self, deadline: Instant) -> Result<Box<dyn GuestStream>, BackendError> {
        let since = *self.started.lock().expect("start lock");
        let hint = if self.pvm && !self.backdoor_seen.load(Ordering::Relaxed) {
            " — /dev/kvm on this host is KVM-PVM, where Linux guests cannot boot"
        } else {
            ""
        };
        let stream = connect_hybrid_vsock(
            &self.paths.vsock,
            BACKDOOR_VSOCK_PORT,
            since,
            deadline,
            &self.vmm.exit_watch(),
            hint,
        )
        .await?;
        self.backdoor_seen.store(true, Ordering::Relaxed);
        Ok(Box::new(stream))
    }

    fn max_sessions(&self) -> usize {
        8
    }

    fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.vmm.exit_watch()
    }

    async fn crash(&self) -> Result<(), BackendError> {
        let _g = self.ops.lock().await;
        self.vmm.kill().await;
        Ok(())
    }

    async fn terminate(&self, grace: Duration) {
        let _g = self.ops.lock().await;
        if !self.vmm.has_exited() {
            // A guest that never answered on vsock (still booting, or a guest
            // without a backdoor) gets no graceful phase: nothing would act on it.
            if self.backdoor_seen.load(Ordering::Relaxed)
                && !grace.is_zero()
                && self.flavor.power_button(&self.api).await.is_ok()
            {
                let _ = self.vmm.wait(grace).await;
            }
            if !self.vmm.has_exited() {
                self.vmm.terminate(Duration::from_secs(2)).await;
            }
        }
        self.remove_taps_async().await;
        remove_socket(&self.paths.api_socket);
        remove_socket(&self.paths.vsock);
    }

    async fn op(&self, op: BackendOp) -> Result<String, BackendError> {
        let _g = self.ops.lock().await;
        match op {
            BackendOp::Block | BackendOp::Unblock => {
                let up = matches!(op, BackendOp::Unblock);
                let links = self
                    .taps
                    .lock()
                    .expect("taps lock")
                    .links_to_set(op.name())?;
                Taps::set_up(links, up).await?;
                Ok(String::new())
            }
            BackendOp::SnapshotCreate(dir) => self.snapshot_create(&dir).await,
            BackendOp::SnapshotRestore(dir) => self.snapshot_restore(&dir).await,
            BackendOp::Reboot => self.reboot().await,
            other => Err(BackendError::Unsupported {
                op: other.name().to_owned(),
                backend: self.flavor.kind(),
            }),
        }
    }

    fn backend_kind(&self) -> BackendKind {
        self.flavor.kind()
    }
}

impl MicroVmInstance {
    /// The VM state as the VMM reports it (`Running`, `Paused`, …).
    pub async fn vm_state(&self) -> Result<String, BackendError> {
        self.flavor
            .state(&self.api)
            .await
            .map_err(|error| BackendError::Api {
                vmm: self.flavor.name(),
                what: "could not tell the VM state",
                error,
            })
    }

    /// Presses the VM's power button (firecracker: Ctrl-Alt-Del), as
    /// teardown does first for a guest that answered on vsock.
    pub async fn power_button(&self) -> Result<(), BackendError> {
        self.flavor
            .power_button(&self.api)
            .await
            .map_err(|error| BackendError::Api {
                vmm: self.flavor.name(),
                what: "could not press the power button",
                error,
            })
    }

    /// `GET path` on the VMM's API, for diagnostics and tests (firecracker's
    /// `/vm/config` shows the whole configuration it runs).
    pub async fn api_get(&self, path: &str) -> Result<String, BackendError> {
        self.api.get(path).await.map_err(|error| BackendError::Api {
            vmm: self.flavor.name(),
            what: "API request failed",
            error,
        })
    }

    /// The current VMM process id (changes on snapshot restore).
    pub fn vmm_pid(&self) -> Option<u32> {
        self.vmm.current().map(|w| w.pid)
    }
}

impl Drop for MicroVmInstance {
    fn drop(&mut self) {
        // Last resort (the driver terminates instances explicitly): no VMM
        // outlives its instance.
        if let Some(w) = self.vmm.current() {
            w.signal_group(nix::sys::signal::Signal::SIGKILL);
        }
        self.remove_taps();
    }
}
