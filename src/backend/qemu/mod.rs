//! The QEMU backend: [`QemuBackend`] starts a VM from a plain description
//! (kernel, initrd, disk, command line — the Debian test image) or from a
//! NixOS `run-<name>-vm` start script; [`QemuInstance`] is the running VM.
//!
//! - Screenshots: QMP `screendump` with `format: "png"`.
//! - Channels: attest listens on the virtconsole socket (`/dev/hvc0`, the
//!   backdoor) and the serial socket (`ttyS0`, drained into the console
//!   log); QEMU connects to both ([`relay`]). Everything else goes through
//!   attest's own QMP client ([`qmp`]); HMP only for `hostfwd_add`.
//! - Accelerator: [`accel`] (KVM only where it really runs guests).
//! - Disk: a qcow2 overlay per VM in its state dir over the shared image, so
//!   snapshots can save and restore the disk with the memory.
//! - Networking: one VDE switch per vlan ([`crate::net::VdeSwitches`]), NICs
//!   with netdev ids `vlan<position>` and NixOS' MACs ([`crate::net::plan`],
//!   as qemu-common.nix numbers them); `block`/`unblock` are QMP `set_link`
//!   on those ids.
//! - Snapshots: `stop`, `migrate` to `exec:cat > DIR/vm.state`, copy the
//!   writable disks, `cont`. Restore kills the QEMU, starts the same command
//!   line with `-incoming defer`, copies the disks back, `migrate-incoming`.
//!   The restored guest's shell is still waiting for its next command, so
//!   attest asks it to print the banner again.

pub mod accel;
pub mod args;
pub mod keys;
pub mod ocr;
pub mod qmp;
pub mod relay;

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use self::accel::{decide, Accel};
use self::args::{Nic, PlainSpec, Sockets};
use self::qmp::Qmp;
use self::relay::{SerialRelay, ShellRelay};
use super::kvm::KvmFacts;
use super::{poll_until, Backend, BackendError, BackendOp, Instance, SnapshotError, StartContext};
use crate::config::{BackendKind, ImageManifest, QemuConfig};
use crate::guest::upload_port::UploadPort;
use crate::guest::GuestStream;
use crate::net::{plan, VdeSwitches};
use crate::process::{
    poll, require_binary, spawn_watched, Exit, PollEnd, ReplaceableProcess, Watched,
};
use crate::shell;

/// How long a fresh QEMU may take to open its QMP socket.
const QMP_LIMIT: Duration = Duration::from_secs(60);

/// How long saving or loading the VM state may take.
const MIGRATION_LIMIT: Duration = Duration::from_secs(600);

/// The file that makes a directory an attest QEMU snapshot.
const SNAPSHOT_META: &str = "attest-snapshot.json";

/// Starts QEMU VMs.
pub struct QemuBackend {
    settings: QemuConfig,
}

impl QemuBackend {
    /// The backend of a node with these settings.
    pub fn new(settings: QemuConfig) -> QemuBackend {
        QemuBackend { settings }
    }
}

/// How to (re)start the VM's QEMU process: the same for a first start and
/// for a restore from a snapshot.
#[derive(Debug, Clone)]
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    /// QEMU's stdout and stderr.
    log: PathBuf,
    /// The QMP socket QEMU listens on.
    qmp: PathBuf,
}

/// One QEMU process and its QMP session.
struct Proc {
    process: Watched,
    session: Session,
}

/// The QMP session of one QEMU process.
#[derive(Clone)]
struct Session {
    qmp: Arc<Qmp>,
    /// QMP events since this process started, for `wait_for_qmp_event`.
    events: Arc<tokio::sync::Mutex<tokio::sync::broadcast::Receiver<Value>>>,
}

/// A running QEMU VM.
pub struct QemuInstance {
    machine: String,
    state_dir: PathBuf,
    launch: Launch,
    /// The current QMP session; its lock also orders restore, crash and
    /// terminate.
    current: tokio::sync::Mutex<Session>,
    /// The QEMU process, replaced on purpose by a restore (whose old
    /// process's exit is not the machine's).
    process: ReplaceableProcess,
    shell: ShellRelay,
    upload: UploadPort,
    serial: SerialRelay,
    netdevs: Vec<String>,
    user_netdev: Option<String>,
    enable_ocr: bool,
    /// After a restore the guest's shell is mid-session and prints no
    /// banner by itself; the next connect asks it to.
    banner_on_connect: AtomicBool,
    screenshots: AtomicU64,
    _vde: Option<Arc<VdeSwitches>>,
}

/// A path that exists, made absolute (QEMU runs in the state dir).
fn existing(p: &Path, what: &str) -> Result<PathBuf, BackendError> {
    std::fs::canonicalize(p).map_err(|e| BackendError::File {
        what: what.to_owned(),
        path: p.to_owned(),
        error: Arc::new(e),
        fix: Some("for the Debian test image run images/debian/build"),
    })
}

fn absolute(p: &Path) -> Result<PathBuf, BackendError> {
    std::path::absolute(p).map_err(|e| BackendError::io("make absolute", p, e))
}

/// QEMU exited while attest waited for it.
fn qemu_exited(exit: Exit, during: impl Into<String>) -> BackendError {
    BackendError::Exited {
        process: "QEMU".into(),
        exit,
        during: during.into(),
        output: String::new(),
    }
}

/// The last lines of QEMU's own output, for start errors.
async fn log_tail(log: &Path) -> String {
    let text = tokio::fs::read_to_string(log).await.unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.trim().is_empty() {
        "(QEMU printed nothing)".into()
    } else {
        tail
    }
}

/// Makes the child see `fd` as `target`, open across exec.
///
/// One `dup2` in the child; the `command-fds` crate does this too but
/// would bring a second version of `nix`.
fn inherit_as(cmd: &mut Command, fd: RawFd, target: RawFd) {
    // SAFETY: dup2 and fcntl are async-signal-safe; the closure copies two
    // integers. `fd` stays open in the parent until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                // dup2 onto itself keeps FD_CLOEXEC: clear it instead.
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The user-mode netdev `forward_port` can use: NixOS VMs have `user.0`;
/// a plain VM has one only if its `extra_args` add it.
fn find_user_netdev(extra: &[String]) -> Option<String> {
    extra.iter().find_map(|a| {
        let rest = a.strip_prefix("user,")?;
        rest.split(',')
            .find_map(|kv| kv.strip_prefix("id=").map(str::to_owned))
    })
}

/// Creates the VM's qcow2 overlay over `base`.
async fn create_overlay(base: &Path, overlay: &Path) -> Result<(), BackendError> {
    let qemu_img = require_binary("qemu-img", "qemu-utils")?;
    let format = if base.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    let out = Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(base)
        .arg(overlay)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| BackendError::spawn("qemu-img", e))?;
    if !out.status.success() {
        return Err(BackendError::ToolFailed {
            action: format!("qemu-img create of {}", overlay.display()),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

impl Launch {
    /// Starts QEMU and connects QMP. A QEMU that exits meanwhile (bad flag,
    /// missing file) fails at once with its own output.
    async fn spawn(
        &self,
        incoming: bool,
        shell: &ShellRelay,
        upload: &UploadPort,
        tasks: &TaskTracker,
    ) -> Result<Proc, BackendError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| BackendError::io("open", &self.log, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| BackendError::io("open", &self.log, e))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdout(log)
            .stderr(log2);
        if incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let backdoor = shell.socket_for_qemu()?;
        inherit_as(&mut cmd, backdoor.as_raw_fd(), args::SHELL_FD);
        let upload_end = upload
            .pair_for_vm()
            .map_err(|e| BackendError::spawn(self.program.display(), e))?;
        inherit_as(&mut cmd, upload_end.as_raw_fd(), args::UPLOAD_FD);
        let process = spawn_watched(&mut cmd, None, tasks)
            .map_err(|e| BackendError::spawn(self.program.display(), e))?;
        let qmp_path = self.qmp.clone();
        let deadline = Instant::now() + QMP_LIMIT;
        let qmp = poll_until("QEMU's QMP socket", deadline, &process.exit, || {
            let p = qmp_path.clone();
            async move { Qmp::connect(&p).await }
        })
        .await;
        match qmp {
            Ok(q) => Ok(Proc {
                process,
                session: Session {
                    events: Arc::new(tokio::sync::Mutex::new(q.subscribe())),
                    qmp: Arc::new(q),
                },
            }),
            Err(e) => {
                let exited = process.exit.borrow().clone();
                process.terminate(Duration::from_secs(2)).await;
                let said = format!("QEMU said:\n{}", log_tail(&self.log).await);
                Err(match (exited, e) {
                    (Some(exit), _) => qemu_exited(exit, "while starting"),
                    (None, BackendError::TimedOut { last, .. }) => BackendError::TimedOut {
                        what: "QEMU's QMP socket".into(),
                        limit: Some(QMP_LIMIT),
                        last,
                        output: String::new(),
                    },
                    (None, other) => other,
                }
                .with_output(said))
            }
        }
    }
}

#[async_trait]
impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    /// Generous: a full guest under TCG takes about a minute to its backdoor,
    /// several on a loaded host.
    fn default_boot_timeout(&self) -> Duration {
        Duration::from_secs(600)
    }

    async fn start(&self, ctx: &StartContext) -> Result<Box<dyn Instance>, BackendError> {
        let c = &self.settings;
        let name = ctx.machine.as_str();
        let state_dir = absolute(&ctx.state_dir)?;
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| BackendError::io("create", &state_dir, e))?;

        // Unix socket paths are limited to 107 bytes; say so up front rather
        // than let QEMU or vde_switch fail obscurely.
        let longest = [
            Sockets::in_dir(&state_dir).serial,
            state_dir
                .parent()
                .unwrap_or(&state_dir)
                .join("vde/vde255.ctl/ctl"),
        ]
        .into_iter()
        .take(if ctx.config.node_vlans(name).is_empty() {
            1
        } else {
            2
        })
        .max_by_key(|p| p.as_os_str().len())
        .unwrap_or_default();
        if longest.as_os_str().len() > 107 {
            return Err(BackendError::SocketPathTooLong {
                dir: state_dir,
                longest,
                whose: "QEMU's",
            });
        }

        let facts = KvmFacts::probe();
        let decision = decide(c.accel.as_deref().unwrap_or("auto"), &facts)?;
        if let Some(w) = &decision.warning {
            ctx.reporter.log(Some(name), format!("warning: {w}"));
        }
        ctx.reporter.log(
            Some(name),
            format!("qemu: accelerator {}", decision.accel.name()),
        );

        // Networking: the test's VDE switches, one NIC per vlan.
        let interfaces = plan::node_interfaces(&ctx.config, name);
        let mut nics = Vec::new();
        let mut vde = None;
        if !interfaces.is_empty() {
            let net = ctx.network.as_ref().ok_or(BackendError::NoTestNetwork)?;
            let dir = state_dir.parent().unwrap_or(&state_dir).join("vde");
            let switches = net.vde_switches(&dir, &ctx.tasks).await?;
            for iface in interfaces {
                let socket = switches
                    .socket(iface.vlan)
                    .ok_or(BackendError::NoVlanSwitch { vlan: iface.vlan })?
                    .to_owned();
                nics.push(Nic { iface, socket });
            }
            vde = Some(switches);
        }

        let sockets = Sockets::in_dir(&state_dir);
        let (launch, user_netdev) = match &c.start_script {
            Some(script) => {
                let script = existing(&ctx.config.resolve(script), "start script")?;
                let shared = state_dir.parent().unwrap_or(&state_dir).join("shared-xchg");
                std::fs::create_dir_all(&shared)
                    .map_err(|e| BackendError::io("create", &shared, e))?;
                let env = args::start_script_env(
                    &state_dir,
                    &shared,
                    &nics,
                    decision.accel,
                    &c.extra_args,
                    std::env::var("QEMU_OPTS").ok().as_deref(),
                );
                (
                    Launch {
                        program: script,
                        args: args::attest_args(&sockets),
                        env,
                        cwd: state_dir.clone(),
                        log: state_dir.join("qemu.log"),
                        qmp: sockets.qmp.clone(),
                    },
                    Some("user.0".to_owned()),
                )
            }
            None => (
                plain_launch(ctx, c, &state_dir, &sockets, decision.accel, nics.clone()).await?,
                find_user_netdev(&c.extra_args),
            ),
        };
        let _ = std::fs::write(
            state_dir.join("qemu.cmdline"),
            format!("{} {}\n", launch.program.display(), launch.args.join(" ")),
        );

        let shell = ShellRelay::new(&ctx.tasks);
        let serial = SerialRelay::listen(&sockets.serial, ctx.console.clone(), &ctx.tasks)?;
        let upload = UploadPort::default();
        let proc_ = launch.spawn(false, &shell, &upload, &ctx.tasks).await?;
        let instance = QemuInstance {
            machine: name.to_owned(),
            state_dir,
            launch,
            current: tokio::sync::Mutex::new(proc_.session),
            process: ReplaceableProcess::new(proc_.process, &ctx.tasks),
            shell,
            upload,
            serial,
            netdevs: nics.iter().map(|n| n.iface.netdev_id.clone()).collect(),
            user_netdev,
            enable_ocr: c.enable_ocr,
            banner_on_connect: AtomicBool::new(false),
            screenshots: AtomicU64::new(0),
            _vde: vde,
        };
        Ok(Box::new(instance))
    }
}

/// The launch of a VM described by an image manifest and/or explicit files.
async fn plain_launch(
    ctx: &StartContext,
    c: &QemuConfig,
    state_dir: &Path,
    sockets: &Sockets,
    accel: Accel,
    nics: Vec<Nic>,
) -> Result<Launch, BackendError> {
    let manifest = match &c.image {
        Some(image) => {
            Some(ImageManifest::load(&ctx.config.resolve(image)).map_err(BackendError::image)?)
        }
        None => None,
    };
    let pick = |own: &Option<PathBuf>, from: Option<&PathBuf>| -> Option<PathBuf> {
        own.as_ref()
            .map(|p| ctx.config.resolve(p))
            .or_else(|| from.cloned())
    };
    let kernel = pick(&c.kernel, manifest.as_ref().map(|m| &m.kernel)).ok_or(
        BackendError::NotConfigured {
            what: "kernel",
            fix: "set `image` or `kernel` in the node's qemu settings",
        },
    )?;
    let kernel = existing(&kernel, "kernel")?;
    let initrd = pick(&c.initrd, manifest.as_ref().map(|m| &m.initrd))
        .map(|p| existing(&p, "initrd"))
        .transpose()?;
    let disk =
        pick(&c.disk, manifest.as_ref().map(|m| &m.disk)).ok_or(BackendError::NotConfigured {
            what: "disk",
            fix: "set `image` or `disk` in the node's qemu settings",
        })?;
    let disk = existing(&disk, "disk image")?;
    let base_cmdline = c
        .cmdline
        .clone()
        .or_else(|| manifest.as_ref().map(|m| m.kernel_cmdline.clone()))
        .unwrap_or_else(|| "root=/dev/vda rw console=ttyS0".into());
    let name = ctx.machine.as_str();
    let interfaces: Vec<_> = nics.iter().map(|n| n.iface.clone()).collect();
    let hosts = if nics.is_empty() {
        Vec::new()
    } else {
        plan::hosts_entries(&ctx.config)
    };
    let overlay = state_dir.join("disk.qcow2");
    // The disk lives as long as the test, as in the NixOS driver: a machine
    // started again after shutdown or crash finds what it wrote.
    if !overlay.exists() {
        create_overlay(&disk, &overlay).await?;
    }
    let program = match &c.qemu_binary {
        Some(b) => b.clone(),
        None => require_binary("qemu-system-x86_64", "qemu-system-x86")?,
    };
    let spec = PlainSpec {
        accel,
        memory_mib: c.memory_mib.unwrap_or(1024),
        cpus: c.cpus.unwrap_or(1),
        kernel,
        initrd,
        disk: overlay,
        cmdline: plan::kernel_cmdline(&base_cmdline, &interfaces, name, &hosts),
        nics,
        extra_args: c.extra_args.clone(),
    };
    Ok(Launch {
        program,
        args: args::plain_args(&spec, sockets),
        env: Vec::new(),
        cwd: state_dir.to_owned(),
        log: state_dir.join("qemu.log"),
        qmp: sockets.qmp.clone(),
    })
}

impl QemuInstance {
    async fn qmp(&self) -> Arc<Qmp> {
        self.current.lock().await.qmp.clone()
    }

    /// Runs a QMP command, failing at once if QEMU is gone.
    async fn command(&self, cmd: &str, args: Option<Value>) -> Result<Value, BackendError> {
        if let Some(exit) = self.process.exit_watch().borrow().clone() {
            return Err(qemu_exited(exit, ""));
        }
        self.qmp()
            .await
            .execute(cmd, args)
            .await
            .map_err(BackendError::from)
    }

    async fn send_key(&self, combo: &str) -> Result<(), BackendError> {
        let keys = keys::combination(combo)?;
        self.command("send-key", Some(json!({ "keys": keys })))
            .await
            .map(drop)
    }

    /// QMP `screendump` straight to PNG (QEMU ≥ 7.1 with libpng).
    async fn screenshot(&self, path: &Path) -> Result<(), BackendError> {
        let path = absolute(path)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| BackendError::io("create", dir, e))?;
        }
        self.command(
            "screendump",
            Some(json!({ "filename": path.display().to_string(), "format": "png" })),
        )
        .await
        .map(drop)
    }

    /// Polls `query-migrate` until the migration ends.
    async fn wait_migration(&self, qmp: &Qmp, what: &'static str) -> Result<(), BackendError> {
        let deadline = Instant::now() + MIGRATION_LIMIT;
        // Ok(outcome) ends the wait; Err(status) polls again.
        let attempt = || async {
            let st = match qmp.execute("query-migrate", None).await {
                Ok(st) => st,
                Err(e) => return Ok(Err(e.into())),
            };
            match st.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => Ok(Ok(())),
                "failed" | "cancelled" => Ok(Err(SnapshotError::Migration {
                    what,
                    reason: st
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .to_owned(),
                }
                .into())),
                other => Err(other.to_owned()),
            }
        };
        let exit = self.process.exit_watch();
        match poll(deadline, Duration::from_millis(50), &exit, attempt).await {
            Ok(outcome) => outcome,
            Err(PollEnd::Exited(exit)) => Err(qemu_exited(exit, format!("while {what}"))),
            Err(PollEnd::TimedOut(status)) => Err(SnapshotError::MigrationTimedOut {
                what,
                limit: MIGRATION_LIMIT,
                status,
            }
            .into()),
        }
    }

    /// The VM's writable disk images (they must live in the state dir, so a
    /// restore can put them back).
    async fn writable_disks(&self, qmp: &Qmp) -> Result<Vec<PathBuf>, BackendError> {
        let blocks = qmp.execute("query-block", None).await?;
        let mut out = Vec::new();
        for b in blocks.as_array().into_iter().flatten() {
            let Some(ins) = b.get("inserted") else {
                continue;
            };
            if ins.get("ro").and_then(Value::as_bool).unwrap_or(false) {
                continue;
            }
            let Some(file) = ins.get("file").and_then(Value::as_str) else {
                continue;
            };
            let file = PathBuf::from(file);
            if !file.starts_with(&self.state_dir) {
                return Err(SnapshotError::DiskOutside {
                    disk: file,
                    state_dir: self.state_dir.clone(),
                }
                .into());
            }
            out.push(file);
        }
        Ok(out)
    }

    async fn snapshot_create(&self, dir: &Path) -> Result<String, BackendError> {
        let dir = absolute(dir)?;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| BackendError::io("create", &dir, e))?;
        let qmp = self.qmp().await;
        let started = Instant::now();
        qmp.execute("stop", None).await?;
        let result = async {
            let _ = qmp
                .execute(
                    "migrate-set-parameters",
                    Some(json!({ "max-bandwidth": 1u64 << 40 })),
                )
                .await;
            let state = dir.join("vm.state");
            let uri = format!("exec:cat > {}", shell::quote(&state.display().to_string()));
            qmp.execute("migrate", Some(json!({ "uri": uri }))).await?;
            self.wait_migration(&qmp, "saving the VM state").await?;
            // The migration flushed and released the disks; copy them now,
            // before the guest writes again.
            let disks = self.writable_disks(&qmp).await?;
            let mut names = Vec::new();
            for d in &disks {
                let base = d.file_name().unwrap_or_default();
                tokio::fs::copy(d, dir.join(base))
                    .await
                    .map_err(|e| BackendError::io("copy", d, e))?;
                names.push(d.display().to_string());
            }
            let meta = json!({ "machine": self.machine, "disks": names });
            let meta_path = dir.join(SNAPSHOT_META);
            tokio::fs::write(&meta_path, meta.to_string())
                .await
                .map_err(|e| BackendError::io("write", meta_path, e))?;
            Ok::<_, BackendError>(())
        }
        .await;
        // The VM keeps running whatever happened.
        let cont = qmp.execute("cont", None).await.map_err(BackendError::from);
        result?;
        cont?;
        Ok(format!(
            "snapshot saved to {} in {:.2} s",
            dir.display(),
            started.elapsed().as_secs_f64()
        ))
    }

    async fn snapshot_restore(&self, dir: &Path) -> Result<String, BackendError> {
        let dir = absolute(dir)?;
        let meta: Value = tokio::fs::read_to_string(dir.join(SNAPSHOT_META))
            .await
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| SnapshotError::NotASnapshot {
                dir: dir.clone(),
                backend: BackendKind::Qemu,
                file: SNAPSHOT_META,
            })?;
        let state = dir.join("vm.state");
        if !state.is_file() {
            return Err(SnapshotError::MissingPart {
                dir: dir.clone(),
                file: "vm.state".into(),
            }
            .into());
        }
        let started = Instant::now();
        let mut current = self.current.lock().await;
        // Replace the process: its exit is not the machine's.
        let old = self.process.retire();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), current.qmp.execute("quit", None)).await;
        if let Some(old) = old {
            if tokio::time::timeout(Duration::from_secs(5), old.wait())
                .await
                .is_err()
            {
                old.terminate(Duration::from_secs(2)).await;
            }
        }
        let connections = self.shell.connections();
        let fresh = async {
            for d in meta["disks"].as_array().into_iter().flatten() {
                let Some(d) = d.as_str().map(PathBuf::from) else {
                    continue;
                };
                let saved = dir.join(d.file_name().unwrap_or_default());
                tokio::fs::copy(&saved, &d)
                    .await
                    .map_err(|e| BackendError::io("restore", &d, e))?;
            }
            self.launch
                .spawn(true, &self.shell, &self.upload, self.process.tasks())
                .await
        }
        .await;
        let fresh = match fresh {
            Ok(f) => f,
            Err(e) => {
                // The old QEMU is gone and no new one runs: the machine is down.
                self.process.mark_exited(Exit::Other(format!(
                    "did not come back from the snapshot: {e}"
                )));
                return Err(e);
            }
        };
        self.process.adopt(fresh.process);
        let fresh = fresh.session;
        *current = fresh.clone();
        drop(current);
        let uri = format!("exec:cat {}", shell::quote(&state.display().to_string()));
        fresh
            .qmp
            .execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await?;
        self.wait_migration(&fresh.qmp, "loading the VM state")
            .await?;
        let status = fresh.qmp.execute("query-status", None).await?;
        if status.get("status").and_then(Value::as_str) != Some("running") {
            fresh.qmp.execute("cont", None).await?;
        }
        // QEMU connects its chardevs at start; make sure the backdoor did.
        let shell = &self.shell;
        let exit = self.process.exit_watch();
        let deadline = Instant::now() + Duration::from_secs(30);
        poll(deadline, Duration::from_millis(20), &exit, || async {
            if shell.connections() != connections && shell.is_connected() {
                Ok(())
            } else {
                Err(())
            }
        })
        .await
        .map_err(|e| match e {
            PollEnd::Exited(exit) => BackendError::Exited {
                process: "the restored QEMU".into(),
                exit,
                during: "before it connected the backdoor socket".into(),
                output: String::new(),
            },
            PollEnd::TimedOut(()) => BackendError::TimedOut {
                what: "the restored QEMU to connect the backdoor socket".into(),
                limit: Some(Duration::from_secs(30)),
                last: String::new(),
                output: String::new(),
            },
        })?;
        self.banner_on_connect.store(true, Ordering::SeqCst);
        Ok(format!(
            "restored from {} in {:.2} s",
            dir.display(),
            started.elapsed().as_secs_f64()
        ))
    }
}

#[async_trait]
impl Instance for QemuInstance {
    async fn connect(&self, deadline: Instant) -> Result<Box<dyn GuestStream>, BackendError> {
        let shell = &self.shell;
        poll_until(
            "QEMU's virtconsole connection",
            deadline,
            &self.process.exit_watch(),
            || async {
                if shell.is_connected() {
                    Ok(())
                } else {
                    Err("QEMU has not connected the backdoor socket".to_owned())
                }
            },
        )
        .await?;
        let session = self.shell.session()?;
        if self.banner_on_connect.swap(false, Ordering::SeqCst) {
            // Restored: the same shell (or agent) as at snapshot time, idle;
            // it announces itself again.
            self.shell
                .write_raw(crate::guest::wake_line().as_bytes())
                .await?;
        }
        Ok(Box::new(session))
    }

    fn max_sessions(&self) -> usize {
        1
    }

    fn wake_on_next_connect(&self) {
        self.banner_on_connect.store(true, Ordering::SeqCst);
    }

    fn agent_window(&self) -> Option<u64> {
        Some(relay::agent_window(self.shell.send_buffer()))
    }

    fn agent_upload_port(&self) -> Option<UploadPort> {
        Some(self.upload.clone())
    }

    fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.process.exit_watch()
    }

    async fn crash(&self) -> Result<(), BackendError> {
        let _current = self.current.lock().await;
        // A power cut: no chance for QEMU to flush or the guest to notice.
        self.process.kill().await;
        Ok(())
    }

    async fn terminate(&self, grace: Duration) {
        let current = self.current.lock().await;
        if self.process.has_exited() {
            return;
        }
        // The disk is a throw-away overlay, so QMP `quit` is a clean end for
        // everything attest keeps; a guest poweroff would cost seconds.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), current.qmp.execute("quit", None)).await;
        if self.process.wait(grace).await.is_none() {
            self.process.terminate(Duration::from_secs(2)).await;
        }
    }

    async fn op(&self, op: BackendOp) -> Result<String, BackendError> {
        match op {
            BackendOp::Screenshot(path) => {
                self.screenshot(&path).await?;
                Ok(path.display().to_string())
            }
            BackendOp::SendKey(k) => self.send_key(&k).await.map(|()| String::new()),
            BackendOp::SendChars(text) => {
                for c in text.chars() {
                    let combo = keys::for_char(c)?;
                    self.send_key(&combo).await?;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(String::new())
            }
            BackendOp::SendConsole(text) => {
                self.serial.send(&text).await?;
                Ok(String::new())
            }
            BackendOp::Block | BackendOp::Unblock => {
                if self.netdevs.is_empty() {
                    return Err(BackendError::NoVlanLink { op: op.name() });
                }
                let up = matches!(op, BackendOp::Unblock);
                for id in &self.netdevs {
                    self.command("set_link", Some(json!({ "name": id, "up": up })))
                        .await?;
                }
                Ok(String::new())
            }
            BackendOp::ForwardPort { host, guest } => {
                let Some(id) = &self.user_netdev else {
                    return Err(BackendError::NoUserNic);
                };
                let reply = self
                    .qmp()
                    .await
                    .hmp(&format!("hostfwd_add {id} tcp::{host}-:{guest}"))
                    .await?;
                if !reply.trim().is_empty() {
                    return Err(BackendError::Monitor {
                        command: "hostfwd_add",
                        reply: reply.trim().to_owned(),
                    });
                }
                Ok(String::new())
            }
            BackendOp::ScreenText { variants } => {
                ocr::check_available(self.enable_ocr)?;
                let n = self.screenshots.fetch_add(1, Ordering::Relaxed);
                let png = self.state_dir.join(format!("ocr-{n}.png"));
                self.screenshot(&png).await?;
                let texts = ocr::screen_text_variants(&png, variants).await?;
                // A list of strings always serialises.
                Ok(Value::from(texts).to_string())
            }
            BackendOp::SnapshotCreate(dir) => self.snapshot_create(&dir).await,
            BackendOp::SnapshotRestore(dir) => self.snapshot_restore(&dir).await,
            BackendOp::MonitorCommand(line) => self
                .qmp()
                .await
                .hmp(&line)
                .await
                .map_err(BackendError::from),
            BackendOp::QmpEvent(timeout) => {
                let events = self.current.lock().await.events.clone();
                let mut events = events.lock().await;
                qmp::next_event(&mut events, timeout)
                    .await
                    .map(|v| v.to_string())
                    .map_err(BackendError::from)
            }
            BackendOp::Reboot => {
                // A clean reboot, as the NixOS driver does it. QEMU resets
                // (no -no-reboot) and keeps the virtconsole connection; the
                // driver's next connect waits for the new shell's banner.
                self.send_key("ctrl-alt-delete").await?;
                Ok(String::new())
            }
        }
    }

    fn backend_kind(&self) -> BackendKind {
        BackendKind::Qemu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_netdev_is_found_in_extra_args() {
        let a: Vec<String> = ["-netdev", "user,id=u1,hostfwd=tcp::2222-:22"]
            .map(String::from)
            .to_vec();
        assert_eq!(find_user_netdev(&a).as_deref(), Some("u1"));
        assert_eq!(find_user_netdev(&[]), None);
    }
}
