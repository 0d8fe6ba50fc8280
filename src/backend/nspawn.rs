//! The systemd-nspawn backend: containers with real systemd, no KVM needed.
//!
//! Every container boots the same read-only tree under an overlay whose upper
//! layer lives in the machine's state dir, so the machine keeps its files
//! across `reboot()` and `crash()` + restart, as a NixOS VM keeps its disk;
//! the backdoor is a unix socket in a host directory bind-mounted at
//! `/run/backdoor`; vlans are veths (`--network-veth-extra`) whose host ends
//! attest attaches to the bridges of its private switch namespace, and the
//! addresses come from networkd files bind-mounted at `/run/systemd/network`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::process::Command;
use tokio::sync::watch;

use super::cgroup::PrivateCgroup;
use super::{poll_until, Backend, BackendError, BackendOp, Instance, StartContext};
use crate::config::{BackendKind, ImageManifest, NspawnConfig};
use crate::console::ConsoleLog;
use crate::guest::agent::DirectSocket;
use crate::guest::GuestStream;
use crate::net::{plan, Network};
use crate::process::{require_binary, spawn_watched, wait_for_exit, Exit, Watched};

/// Where the container sees the host's backdoor directory.
const GUEST_BACKDOOR_DIR: &str = "/run/backdoor";

/// Where systemd-nspawn keeps per-container runtime dirs.
const NSPAWN_RUN_DIR: &str = "/run/systemd/nspawn";

/// `unshare` options that make systemd-nspawn PID 1 of a PID namespace of its
/// own, with a mount namespace and a matching /proc: when nspawn dies, the
/// kernel takes its container down with it. Test fixtures that boot a
/// container by hand use the same.
pub const UNSHARE_SUPERVISOR: &[&str] = &[
    "--mount",
    "--pid",
    "--fork",
    "--mount-proc",
    "--kill-child=SIGKILL",
];

/// How long a dead container's cgroup may stay busy before it is left to
/// the next run's janitor.
const CGROUP_DRAIN: Duration = Duration::from_secs(5);

/// Starts systemd-nspawn containers.
pub struct NspawnBackend {
    settings: NspawnConfig,
}

impl NspawnBackend {
    /// The backend of a node with these settings.
    pub fn new(settings: NspawnConfig) -> NspawnBackend {
        NspawnBackend { settings }
    }
}

/// A running container.
pub struct NspawnInstance {
    process: Watched,
    /// How the container ended, as nspawn tells it (see [`container_exit`]).
    exit: watch::Receiver<Option<Exit>>,
    socket: PathBuf,
    /// Direct agent sockets handed out (see [`Instance::agent_socket`]).
    agent_sockets: AtomicU32,
    network: Option<Arc<Network>>,
    host_links: Vec<String>,
    /// Declared last: removed after the process fields are dropped.
    cgroup: PrivateCgroup,
}

/// Host-side name of a node's veth on a vlan (at most 15 bytes).
fn host_link(node_number: u8, vlan: u8) -> String {
    format!("at{node_number}v{vlan}")
}

fn rootfs_of(ctx: &StartContext, c: &NspawnConfig) -> Result<PathBuf, BackendError> {
    let rootfs = match (&c.rootfs, &c.image) {
        (Some(r), _) => ctx.config.resolve(r),
        (None, Some(image)) => {
            let m = ImageManifest::load(&ctx.config.resolve(image)).map_err(BackendError::image)?;
            m.rootfs
        }
        (None, None) => {
            return Err(BackendError::NotConfigured {
                what: "rootfs",
                fix: "set `image` or `rootfs` in the node's nspawn settings",
            })
        }
    };
    if !rootfs.join("usr").is_dir() && !rootfs.join("nix").is_dir() {
        return Err(BackendError::NotARootTree { path: rootfs });
    }
    Ok(rootfs)
}

/// Writes the networkd files the container gets: one per vlan interface
/// (eth1, eth2, … as in NixOS tests), both address families, link-local.
fn write_network_files(ctx: &StartContext, dir: &Path) -> Result<(), BackendError> {
    std::fs::create_dir_all(dir).map_err(|e| BackendError::io("create", dir, e))?;
    for i in plan::node_interfaces(&ctx.config, &ctx.machine) {
        let file = dir.join(format!("10-attest-{}.network", i.name));
        std::fs::write(&file, plan::networkd_file(&i))
            .map_err(|e| BackendError::io("write", file, e))?;
    }
    Ok(())
}

fn hosts_file(ctx: &StartContext) -> String {
    let mut s = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n");
    for (addr, name) in plan::hosts_entries(&ctx.config) {
        s.push_str(&format!("{addr} {name}\n"));
    }
    s
}

/// The container's root: the image's tree (read-only, shared by every
/// node) under an upper layer of the machine's own, kept in its state dir
/// across reboots and restarts and removed with it at teardown.
struct RootOverlay {
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    merged: PathBuf,
}

impl RootOverlay {
    fn prepare(rootfs: &Path, state_dir: &Path) -> Result<RootOverlay, BackendError> {
        let o = RootOverlay {
            lower: rootfs.canonicalize().unwrap_or_else(|_| rootfs.to_owned()),
            upper: state_dir.join("root-upper"),
            work: state_dir.join("root-work"),
            merged: state_dir.join("root"),
        };
        for p in [&o.lower, &o.upper, &o.work, &o.merged] {
            // overlayfs separates its options with `,` and layers with `:`.
            if p.to_string_lossy().contains([',', ':']) {
                return Err(BackendError::OverlayPath { path: p.clone() });
            }
        }
        for d in [&o.upper, &o.work, &o.merged] {
            std::fs::create_dir_all(d).map_err(|e| BackendError::io("create", d, e))?;
        }
        Ok(o)
    }

    fn options(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        )
    }
}

/// Containers started by this process, for unique machine names.
static STARTS: AtomicU64 = AtomicU64::new(0);

#[async_trait]
impl Backend for NspawnBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Nspawn
    }

    fn default_boot_timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn start(&self, ctx: &StartContext) -> Result<Box<dyn Instance>, BackendError> {
        let nspawn = require_binary("systemd-nspawn", "systemd-container")?;
        if !nix::unistd::Uid::effective().is_root() {
            return Err(BackendError::NeedsRoot {
                program: "systemd-nspawn",
            });
        }
        let rootfs = rootfs_of(ctx, &self.settings)?;
        let settings = &self.settings;
        let backdoor_dir = ctx.state_dir.join("backdoor");
        let network_dir = ctx.state_dir.join("network");
        let hosts = ctx.state_dir.join("hosts");
        std::fs::create_dir_all(&backdoor_dir)
            .map_err(|e| BackendError::io("create", &backdoor_dir, e))?;
        write_network_files(ctx, &network_dir)?;
        std::fs::write(&hosts, hosts_file(ctx))
            .map_err(|e| BackendError::io("write", &hosts, e))?;

        let number = plan::node_number(&ctx.config, &ctx.machine).unwrap_or(1);
        // Unique per run (pid and the run's id), so parallel runs do not
        // collide; the run id ties the container's cgroup to the run's lock
        // for the janitor of a later run.
        // The start count makes every boot of a node a new name: a restarted
        // container (after crash() or reboot()) never shares a cgroup with
        // the remains of its previous boot, which the kernel may still be
        // tearing down.
        let start = STARTS.fetch_add(1, Ordering::Relaxed);
        let machine_name = format!(
            "attest-{}-{}-{}-{start}",
            std::process::id(),
            number,
            ctx.run_id()
        );
        let interfaces = plan::node_interfaces(&ctx.config, &ctx.machine);

        // nspawn runs as PID 1 of a PID namespace of its own (`unshare
        // --pid --fork --kill-child`): when nspawn dies for any reason —
        // even attest being SIGKILLed, through the parent-death signals —
        // the kernel kills everything in that namespace, the container
        // included. nspawn alone does not take its container down with it.
        // It also gets a mount namespace of its own, with a /proc that
        // matches its PID namespace (nspawn reads its parent's network
        // namespace from /proc at exit) and a private tmpfs on
        // /run/systemd/nspawn: nspawn keeps a per-container `propagate/`
        // dir there that it removes only from a tmpfs, never when killed —
        // the private tmpfs vanishes with the namespace, however nspawn ends.
        let mut cmd = match (&ctx.network, interfaces.is_empty()) {
            (Some(net), false) => {
                let ns = net.netns_path().await?;
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg("unshare");
                c
            }
            _ => Command::new("unshare"),
        };
        std::fs::create_dir_all(NSPAWN_RUN_DIR)
            .map_err(|e| BackendError::io("create", NSPAWN_RUN_DIR, e))?;
        let root = RootOverlay::prepare(&rootfs, &ctx.state_dir)?;
        // The overlay is mounted in the same private mount namespace: it
        // vanishes with it, however nspawn ends; its upper layer stays in
        // the state dir for the next boot of this machine.
        cmd.args(UNSHARE_SUPERVISOR)
            .args([
                "--",
                "sh",
                "-c",
                &format!(
                    "mount -t tmpfs -o mode=0755,size=4m attest {NSPAWN_RUN_DIR} && \
                 mount -t overlay attest-root -o \"$1\" \"$2\" && shift 2 && exec \"$@\""
                ),
                "sh",
            ])
            .arg(root.options())
            .arg(&root.merged)
            .arg(&nspawn);
        let mut host_links = Vec::new();
        if let Some(net) = &ctx.network {
            for i in &interfaces {
                let link = host_link(number, i.vlan);
                // A container killed a moment ago may still own this name:
                // the kernel destroys its network namespace asynchronously.
                if let Ok(switch) = net.switch_async().await {
                    let _ = switch.ip_async(&["link", "del", &link]).await;
                }
                cmd.arg(format!("--network-veth-extra={link}:{}", i.name));
                host_links.push(link);
            }
        }
        cmd.args([
            "-q",
            "-b",
            "--private-network",
            "--register=no",
            "--keep-unit",
            "--console=read-only",
            "--link-journal=no",
        ])
        .arg(format!("--directory={}", root.merged.display()))
        .arg(format!("--machine={machine_name}"))
        .arg(format!("--hostname={}", ctx.machine))
        .arg(format!(
            "--bind={}:{GUEST_BACKDOOR_DIR}",
            backdoor_dir.display()
        ))
        .arg(format!(
            "--bind-ro={}:/run/systemd/network",
            network_dir.display()
        ))
        .arg(format!("--bind-ro={}:/etc/hosts", hosts.display()))
        .args(&settings.extra_args)
        .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());

        let cgroup = PrivateCgroup::create(&machine_name);
        cgroup.enter_on_spawn(&mut cmd);
        let process = spawn_watched(&mut cmd, Some(ctx.console.clone()), &ctx.tasks)
            .map_err(|e| BackendError::spawn("systemd-nspawn", e))?;

        if let Some(net) = &ctx.network {
            for (link, i) in host_links.iter().zip(&interfaces) {
                let attached = tokio::select! {
                    r = net.attach(link, i.vlan, Duration::from_secs(15)) => r.map_err(Into::into),
                    exit = process.wait() => Err(BackendError::Exited {
                        process: "systemd-nspawn".into(),
                        exit,
                        during: format!("while attaching {link} to vlan {}", i.vlan),
                        output: ctx.console.last_lines(10).join("\n"),
                    }),
                };
                if let Err(e) = attached {
                    process.terminate(Duration::from_secs(3)).await;
                    return Err(e);
                }
            }
        }
        let (exit_tx, exit) = watch::channel(None);
        {
            // The exit watch only: a clone of `process` would keep it alive.
            let (process_exit, console) = (process.exit.clone(), ctx.console.clone());
            ctx.tasks.spawn(async move {
                let raw = wait_for_exit(&process_exit).await;
                let _ = exit_tx.send(Some(container_exit(raw, &console, &machine_name).await));
            });
        }
        Ok(Box::new(NspawnInstance {
            process,
            exit,
            socket: backdoor_dir.join("shell.sock"),
            agent_sockets: AtomicU32::new(0),
            network: ctx.network.clone(),
            host_links,
            cgroup,
        }))
    }
}

/// How the container ended. nspawn exits with status 1 when its container
/// was killed by a signal, and says which on stderr (even with `-q`):
/// `Container NAME terminated by signal KILL.` That line is the truth; the
/// status is only nspawn's. The line may trail the exit by a moment; the
/// wait for it is bounded (1 s), then nspawn's status stands.
async fn container_exit(raw: Exit, console: &ConsoleLog, machine_name: &str) -> Exit {
    // nspawn with `--keep-unit` exits 133 when its container rebooted: an
    // orderly end, as QEMU's exit on a guest reboot under -no-reboot (NixOS's
    // default); the next command starts the machine again.
    if raw == Exit::Code(133) {
        return Exit::Code(0);
    }
    if raw != Exit::Code(1) {
        return raw;
    }
    let prefix = format!("Container {machine_name} terminated by signal ");
    // Under load the stderr pump can lag the reap by hundreds of ms.
    for _ in 0..100 {
        let found = console.last_lines(10).iter().find_map(|l| {
            let name = l.strip_prefix(&prefix)?.trim_end_matches('.');
            name.parse::<nix::sys::signal::Signal>()
                .or_else(|_| format!("SIG{name}").parse())
                .ok()
        });
        if let Some(sig) = found {
            return Exit::Signal(sig as i32);
        }
        // nspawn itself was SIGKILLed (its container died with it): `unshare`
        // cannot re-raise SIGKILL on itself and exits 1 saying so.
        if console
            .last_lines(10)
            .iter()
            .any(|l| l.starts_with("unshare: sigprocmask unblock failed"))
        {
            return Exit::Signal(nix::sys::signal::Signal::SIGKILL as i32);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    raw
}

/// The first child of a process.
fn first_child(pid: i32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// How long a container may take from SIGINT to the end of its reboot.
const REBOOT_TIMEOUT: Duration = Duration::from_secs(90);

impl NspawnInstance {
    /// Powers the container off (SIGTERM to nspawn), then kills it.
    async fn stop(&self, grace: Duration) {
        if self.process.has_exited() {
            return;
        }
        // SIGTERM to nspawn asks the container's systemd to power off
        // (`unshare` itself does not forward signals).
        if let Some(pid) = self.nspawn_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(grace, self.process.wait())
            .await
            .is_err()
        {
            self.process.kill().await;
        }
    }

    /// systemd-nspawn's pid (the child of the `unshare` attest started).
    fn nspawn_pid(&self) -> Option<i32> {
        first_child(self.process.pid as i32)
    }

    /// Reboots the container as `machinectl reboot` does: SIGINT to its
    /// init (systemd's ctrl-alt-del). systemd-nspawn started with
    /// `--keep-unit` then exits with status 133 rather than booting the
    /// container again itself; the driver starts a new one.
    async fn reboot(&self) -> Result<String, BackendError> {
        let init = self
            .nspawn_pid()
            .and_then(first_child)
            .ok_or(BackendError::ContainerInitGone)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(init),
            nix::sys::signal::Signal::SIGINT,
        )
        .map_err(|error| BackendError::Signal {
            what: "the container's init",
            error,
        })?;
        // The instance's exit (not only the process's), which the driver
        // looks at as soon as this returns.
        let mut exit = self.exit.clone();
        let ended = async move { exit.wait_for(Option::is_some).await.map(drop) };
        match tokio::time::timeout(REBOOT_TIMEOUT, ended).await {
            Ok(_) => Ok(String::new()),
            Err(_) => Err(BackendError::TimedOut {
                what: "the container to finish its reboot".into(),
                limit: Some(REBOOT_TIMEOUT),
                last: String::new(),
                output: String::new(),
            }),
        }
    }
}

#[async_trait]
impl Instance for NspawnInstance {
    async fn connect(&self, deadline: Instant) -> Result<Box<dyn GuestStream>, BackendError> {
        let socket = self.socket.clone();
        let stream = poll_until("the backdoor socket", deadline, &self.process.exit, || {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(&socket)
                    .await
                    .map_err(|e| format!("{}: {}", socket.display(), crate::errors::os_reason(&e)))
            }
        })
        .await?;
        Ok(Box::new(stream))
    }

    fn max_sessions(&self) -> usize {
        16
    }

    fn agent_socket(&self) -> Option<DirectSocket> {
        // Fresh per agent start: a restarted agent never meets the socket
        // (or a late connection) of the previous one.
        let n = self.agent_sockets.fetch_add(1, Ordering::Relaxed);
        let name = format!("agent-{n}.sock");
        Some(DirectSocket {
            host: self.socket.with_file_name(&name),
            guest: format!("{GUEST_BACKDOOR_DIR}/{name}"),
        })
    }

    fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.clone()
    }

    async fn crash(&self) -> Result<(), BackendError> {
        // SIGKILL to the group kills unshare and nspawn; nspawn is PID 1 of
        // its PID namespace, so the kernel kills the container with it.
        self.process.kill().await;
        self.cgroup.remove_when_empty(CGROUP_DRAIN).await;
        Ok(())
    }

    async fn terminate(&self, grace: Duration) {
        self.stop(grace).await;
        self.cgroup.remove_when_empty(CGROUP_DRAIN).await;
    }

    async fn op(&self, op: BackendOp) -> Result<String, BackendError> {
        match op {
            BackendOp::Reboot => self.reboot().await,
            BackendOp::Block | BackendOp::Unblock => {
                let net = self
                    .network
                    .as_ref()
                    .ok_or(BackendError::NoVlanLink { op: op.name() })?;
                let up = matches!(op, BackendOp::Unblock);
                for link in &self.host_links {
                    net.set_link(link, up).await?;
                }
                Ok(String::new())
            }
            other => Err(BackendError::Unsupported {
                op: other.name().to_owned(),
                backend: BackendKind::Nspawn,
            }),
        }
    }

    fn backend_kind(&self) -> BackendKind {
        BackendKind::Nspawn
    }
}
