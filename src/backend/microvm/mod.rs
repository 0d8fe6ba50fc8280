//! The microVM backends: [`firecracker`] and [`cloud_hypervisor`]. Both run one
//! VMM process per node, configured over a REST API on a unix socket
//! ([`api::ApiClient`]), reach the guest's backdoor over *hybrid vsock*
//! ([`connect_hybrid_vsock`]), drain the serial console from the VMM's stdout,
//! and put each NIC on a TAP attached to the vlan's bridge in attest's private
//! switch namespace ([`Taps`]). Snapshots are taken by the VMM and restored by
//! a fresh VMM process ([`crate::process::ReplaceableProcess`] keeps one exit
//! watch across both).
//!
//! See `docs/microvm.md` for what was verified where and what a snapshot
//! contains.

pub mod api;
pub mod cloud_hypervisor;
pub mod firecracker;
pub mod instance;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;

use self::instance::{Flavor, MicroVmInstance};
use super::kvm::KvmFacts;
use super::{Backend, BackendError, Instance, StartContext, VmmBinaryProblem, VsockError};
use crate::config::{BackendKind, ImageManifest, MicroVmConfig, PmemDevice};
use crate::net::{plan, Network};
use crate::process::{poll, Exit, PollEnd, Watched};

/// The vsock port the guest's backdoor listens on.
pub const BACKDOOR_VSOCK_PORT: u32 = 1234;
/// The guest CID given to every microVM (each VMM has its own vsock socket).
pub const GUEST_CID: u32 = 3;
/// How long one `CONNECT` may wait for `OK`: before the guest's vsock driver
/// is up, firecracker accepts the unix connection and answers nothing.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between two handshake attempts.
const HANDSHAKE_RETRY: Duration = Duration::from_millis(100);

/// The warning logged when a microVM starts on a KVM-PVM host.
pub fn pvm_warning(vmm: &str) -> String {
    format!(
        "/dev/kvm is KVM-PVM (/sys/module/kvm_pvm exists): Linux guest kernels cannot run under {vmm} here (only PVM-patched ones); the VMM is started anyway, so tiny test guests run but a Linux guest will never reach its backdoor"
    )
}

/// Why firecracker snapshot restores will be slow on this host, if they
/// will: its memory controller is on a cgroup v1 hierarchy (also on hybrid
/// hosts that mount cgroup2 beside it), or there is no cgroup2 at all.
pub fn cgroup_v1_warning() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let mut v1_memory = false;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.get(2) {
            Some(&"cgroup2") => v2 = true,
            Some(&"cgroup")
                if f.get(3)
                    .is_some_and(|o| o.split(',').any(|o| o == "memory")) =>
            {
                v1_memory = true
            }
            _ => {}
        }
    }
    if v1_memory {
        Some("the host's memory cgroup controller is on cgroups v1: firecracker restores snapshots much more slowly than on a cgroup2-only host".to_owned())
    } else if !v2 {
        Some("the host has no cgroup2 hierarchy: firecracker restores snapshots much more slowly on cgroups v1".to_owned())
    } else {
        None
    }
}

/// A VMM version `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Version {
    /// Finds the first `[v]X.Y[.Z]` in `--version` output
    /// (`Firecracker v1.12.1`, `cloud-hypervisor v43.0`).
    pub fn parse_from(text: &str) -> Option<Version> {
        let re = regex::Regex::new(r"v?(\d+)\.(\d+)(?:\.(\d+))?").expect("valid regex");
        let c = re.captures(text)?;
        let n = |i: usize| c.get(i).and_then(|m| m.as_str().parse().ok());
        Some(Version(n(1)?, n(2)?, n(3).unwrap_or(0)))
    }
}

/// Runs `binary --version` and parses it.
pub async fn vmm_version(binary: &Path) -> Result<Version, BackendError> {
    let out = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| BackendError::spawn(format_args!("{} --version", binary.display()), e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Version::parse_from(&text).ok_or_else(|| BackendError::VmmVersion {
        binary: binary.to_owned(),
        output: text.trim().to_owned(),
    })
}

/// A VMM attest drives: its options, its name and how a VM of it is
/// prepared. [`MicroVmBackend`] does the rest, the same for every VMM.
pub trait Vmm: Send + Sync + 'static {
    /// The VMM's `options` in the node's settings.
    type Options: Clone + Send + Sync + 'static;
    /// Which backend this VMM is.
    const KIND: BackendKind;
    /// The environment variable that names the binary.
    const ENV_VAR: &'static str;
    /// How to get the binary, for error messages.
    const HOW_TO_GET: &'static str;

    /// Checks the options against the VMM's `version`, resolves their paths,
    /// and returns the (possibly adjusted) spec and the VM's [`Flavor`].
    fn prepare(
        spec: MicroVmSpec,
        options: &Self::Options,
        version: Version,
        ctx: &StartContext,
    ) -> Result<(MicroVmSpec, Box<dyn Flavor>), BackendError>;
}

/// The backend of one microVM node, from its typed settings.
pub struct MicroVmBackend<V: Vmm> {
    settings: MicroVmConfig<V::Options>,
}

impl<V: Vmm> MicroVmBackend<V> {
    /// The backend of a node with these settings.
    pub fn new(settings: MicroVmConfig<V::Options>) -> MicroVmBackend<V> {
        MicroVmBackend { settings }
    }

    /// Starts the node and returns the concrete instance (tests use its
    /// extra methods).
    pub async fn start_instance(
        &self,
        ctx: &StartContext,
    ) -> Result<MicroVmInstance, BackendError> {
        let spec = MicroVmSpec::resolve(ctx, &self.settings)?;
        let name = V::KIND.name();
        let binary = spec.find_binary(name, V::ENV_VAR, V::HOW_TO_GET)?;
        let kvm = KvmFacts::probe();
        kvm.require(V::KIND)?;
        let version = vmm_version(&binary).await?;
        let (spec, flavor) = V::prepare(spec, &self.settings.options, version, ctx)?;
        instance::start(ctx, &spec, flavor, binary, &kvm).await
    }
}

#[async_trait::async_trait]
impl<V: Vmm> Backend for MicroVmBackend<V> {
    fn kind(&self) -> BackendKind {
        V::KIND
    }

    fn default_boot_timeout(&self) -> Duration {
        Duration::from_secs(120)
    }

    async fn start(&self, ctx: &StartContext) -> Result<Box<dyn Instance>, BackendError> {
        Ok(Box::new(self.start_instance(ctx).await?))
    }
}

/// Resolves the option files both VMMs take (`store_image`, `pmem_devices`)
/// against the config's directory and checks they exist, naming the VMM.
pub fn resolve_option_files(
    vmm: BackendKind,
    ctx: &StartContext,
    store_image: &mut Option<PathBuf>,
    pmem_devices: &mut [PmemDevice],
) -> Result<(), BackendError> {
    if let Some(p) = store_image.as_mut() {
        *p = ctx.config.resolve(p);
    }
    for d in pmem_devices.iter_mut() {
        d.path = ctx.config.resolve(&d.path);
    }
    let files = pmem_devices
        .iter()
        .map(|d| &d.path)
        .chain(store_image.iter());
    for p in files {
        super::check_file(p).map_err(|e| BackendError::File {
            what: format!("the {vmm} option file"),
            path: p.clone(),
            error: Arc::new(e),
            fix: None,
        })?;
    }
    Ok(())
}

/// A node's microVM settings after resolving the image manifest.
#[derive(Debug, Clone)]
pub struct MicroVmSpec {
    /// The VMM binary the settings name.
    pub binary: Option<PathBuf>,
    /// The kernel and disk come from a Debian test image.
    pub from_image: bool,
    /// Uncompressed ELF kernel.
    pub kernel: PathBuf,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// Root disk (the original; the VM gets a copy).
    pub disk: Option<PathBuf>,
    /// Kernel command line, including `ip=` arguments for each NIC.
    pub cmdline: String,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// The vlans, in NIC order (`eth1`, `eth2`, … in the guest).
    pub vlans: Vec<u8>,
    /// The node's number (1-based).
    pub number: u8,
}

impl MicroVmSpec {
    /// Resolves the node's settings.
    pub fn resolve<O>(
        ctx: &StartContext,
        c: &MicroVmConfig<O>,
    ) -> Result<MicroVmSpec, BackendError> {
        let manifest = match &c.image {
            Some(image) => {
                Some(ImageManifest::load(&ctx.config.resolve(image)).map_err(BackendError::image)?)
            }
            None => None,
        };
        let kernel = match (&c.kernel, &manifest) {
            (Some(k), _) => ctx.config.resolve(k),
            (None, Some(m)) => m.vmlinux.clone().ok_or_else(|| BackendError::NoVmlinux {
                image: m.dir.clone(),
            })?,
            (None, None) => {
                return Err(BackendError::NotConfigured {
                    what: "kernel",
                    fix: "set `image` or `kernel`",
                })
            }
        };
        let file = |what: &str, p: &Path| {
            super::check_file(p).map_err(|e| BackendError::File {
                what: what.to_owned(),
                path: p.to_owned(),
                error: Arc::new(e),
                fix: None,
            })
        };
        file("kernel", &kernel)?;
        let initrd = c
            .initrd
            .as_ref()
            .map(|p| ctx.config.resolve(p))
            .or_else(|| manifest.as_ref().map(|m| m.initrd.clone()));
        let disk = c
            .disk
            .as_ref()
            .map(|p| ctx.config.resolve(p))
            .or_else(|| manifest.as_ref().map(|m| m.disk.clone()));
        if let Some(p) = &initrd {
            file("initrd", p)?;
        }
        if let Some(p) = &disk {
            file("disk", p)?;
        }
        let vlans = ctx.config.node_vlans(&ctx.machine);
        let number = plan::node_number(&ctx.config, &ctx.machine).unwrap_or(1);
        let base = c
            .cmdline
            .clone()
            .or_else(|| manifest.as_ref().map(|m| m.kernel_cmdline.clone()))
            .unwrap_or_else(|| "console=ttyS0 reboot=k panic=-1".to_owned());
        // The Debian image configures its NICs from `ip=`/`ifname=` (see
        // images/debian/README.md) and names itself from systemd.hostname;
        // a NixOS guest has all of that in its own configuration.
        let cmdline = if manifest.is_some() {
            plan::kernel_cmdline(
                &base,
                &plan::node_interfaces(&ctx.config, &ctx.machine),
                &ctx.machine,
                &plan::hosts_entries(&ctx.config),
            )
        } else {
            base
        };
        Ok(MicroVmSpec {
            memory_mib: c.memory_mib.unwrap_or(1024),
            cpus: c.cpus.unwrap_or(1),
            binary: c.binary.clone(),
            from_image: manifest.is_some(),
            kernel,
            initrd,
            disk,
            cmdline,
            vlans,
            number,
        })
    }

    /// Finds the VMM binary: `binary` from the config, `$env_var`, PATH, then
    /// attest's cache directory. `how` says how to get it.
    pub fn find_binary(
        &self,
        name: &'static str,
        env_var: &'static str,
        how: &'static str,
    ) -> Result<PathBuf, BackendError> {
        let missing = |problem| BackendError::VmmBinary { problem, how };
        if let Some(b) = &self.binary {
            return if b.is_file() {
                Ok(b.clone())
            } else {
                Err(missing(VmmBinaryProblem::Configured {
                    name,
                    path: b.clone(),
                }))
            };
        }
        if let Some(p) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(missing(VmmBinaryProblem::FromEnv {
                    var: env_var,
                    path: p,
                }))
            };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .chain(std::iter::once(Path::new(CACHE_BIN_DIR).join(name)))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                missing(VmmBinaryProblem::NotInstalled {
                    name,
                    cache: CACHE_BIN_DIR,
                    var: env_var,
                })
            })
    }
}

/// Where `.ci/fetch-firecracker` installs binaries.
pub const CACHE_BIN_DIR: &str = "/var/cache/attest/bin";

/// The TAP of a node on a vlan (inside the private switch namespace).
pub fn tap_name(node: u8, vlan: u8) -> String {
    format!("tap{node}v{vlan}")
}

/// A node's TAPs in the switch namespace, one per vlan, attached to the
/// vlan's bridge. Removed by [`Taps::remove`] (and with the namespace anyway).
pub struct Taps {
    network: Option<Arc<Network>>,
    /// (tap name, vlan, MAC) in NIC order.
    pub links: Vec<(String, u8, String)>,
}

impl Taps {
    /// No network.
    pub fn none() -> Taps {
        Taps {
            network: None,
            links: Vec::new(),
        }
    }

    /// Creates and attaches the TAPs of `spec`'s vlans.
    pub async fn create(network: &Arc<Network>, spec: &MicroVmSpec) -> Result<Taps, BackendError> {
        let switch = network.switch_async().await?;
        let mut taps = Taps {
            network: Some(network.clone()),
            links: Vec::new(),
        };
        for vlan in &spec.vlans {
            let name = tap_name(spec.number, *vlan);
            // A TAP left by an earlier start of this node (restart) is reused.
            let _ = switch.ip_async(&["link", "del", &name]).await;
            if let Err(error) = switch
                .ip_async(&["tuntap", "add", "dev", &name, "mode", "tap"])
                .await
            {
                taps.remove_async().await;
                return Err(BackendError::Tap { name, error });
            }
            taps.links
                .push((name.clone(), *vlan, plan::mac(*vlan, spec.number)));
            if let Err(e) = network.attach(&name, *vlan, Duration::from_secs(5)).await {
                taps.remove_async().await;
                return Err(e.into());
            }
        }
        Ok(taps)
    }

    /// The namespace the VMM must run in to open the TAPs.
    pub async fn netns(&self) -> Result<Option<PathBuf>, BackendError> {
        match (&self.network, self.links.is_empty()) {
            (Some(n), false) => Ok(Some(n.netns_path().await?)),
            _ => Ok(None),
        }
    }

    /// The network and TAP names, for taking the links down (`block`) or up
    /// (`unblock`) with [`Taps::set_up`] without holding the taps.
    pub fn links_to_set(
        &self,
        op: &'static str,
    ) -> Result<(Arc<Network>, Vec<String>), BackendError> {
        let net = self
            .network
            .as_ref()
            .filter(|_| !self.links.is_empty())
            .ok_or(BackendError::NoVlanLink { op })?;
        Ok((
            net.clone(),
            self.links.iter().map(|l| l.0.clone()).collect(),
        ))
    }

    /// Takes the links down (`block`) or up (`unblock`).
    pub async fn set_up(
        (net, names): (Arc<Network>, Vec<String>),
        up: bool,
    ) -> Result<(), BackendError> {
        for name in &names {
            net.set_link(name, up).await?;
        }
        Ok(())
    }

    /// Deletes the TAPs (best effort; the namespace dies with attest
    /// anyway). Blocks on `ip`: for `Drop`; async code uses
    /// [`Taps::remove_async`].
    pub fn remove(&mut self) {
        if let Some(net) = &self.network {
            if let Ok(switch) = net.switch() {
                for (name, _, _) in self.links.drain(..) {
                    let _ = switch.ip(&["link", "del", &name]);
                }
            }
        }
    }

    /// [`Taps::remove`] without blocking a runtime worker.
    pub async fn remove_async(&mut self) {
        if let Some(net) = &self.network {
            if let Ok(switch) = net.switch_async().await {
                for (name, _, _) in self.links.drain(..) {
                    let _ = switch.ip_async(&["link", "del", &name]).await;
                }
            }
        }
    }

    /// Moves the TAPs out (this one is left with none), so they can be
    /// removed without holding a lock on their owner.
    pub fn take(&mut self) -> Taps {
        Taps {
            network: self.network.clone(),
            links: std::mem::take(&mut self.links),
        }
    }
}

/// Makes the VM's private copy of a disk image. firecracker and
/// cloud-hypervisor take raw files only (no qcow2 backing files), so the
/// copy is a reflink where the file system supports it (instant) and a sparse
/// full copy otherwise.
pub async fn copy_disk(from: &Path, to: &Path) -> Result<(), BackendError> {
    let out = tokio::process::Command::new("cp")
        .args(["--reflink=auto", "--sparse=always", "--"])
        .arg(from)
        .arg(to)
        .output()
        .await
        .map_err(|e| BackendError::spawn("cp", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BackendError::ToolFailed {
            action: format!("copying {} to {}", from.display(), to.display()),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// A hybrid-vsock stream to the guest: the unix connection after the
/// `CONNECT`/`OK` handshake, read through the buffered reader that read `OK`
/// (guest bytes may have arrived in the same read).
pub type VsockStream = BufReader<UnixStream>;

/// One handshake attempt on the VMM's vsock socket.
async fn handshake_once(uds: &Path, port: u32) -> Result<VsockStream, VsockError> {
    let stream = UnixStream::connect(uds)
        .await
        .map_err(|e| VsockError::Connect {
            socket: uds.to_owned(),
            error: Arc::new(e),
        })?;
    let exchange = |e| VsockError::Exchange { error: Arc::new(e) };
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(exchange)?;
    let mut line = Vec::new();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => Err(VsockError::NoAnswer {
            port,
            limit: HANDSHAKE_TIMEOUT,
        }),
        Ok(Err(e)) => Err(exchange(e)),
        Ok(Ok(0)) => Err(VsockError::NobodyListens { port }),
        Ok(Ok(_)) => {
            let text = String::from_utf8_lossy(&line);
            if text.starts_with("OK ") {
                Ok(reader)
            } else {
                Err(VsockError::Unexpected {
                    answer: text.trim_end().to_owned(),
                })
            }
        }
    }
}

/// Connects to the guest's vsock `port` through the VMM's hybrid vsock unix
/// socket `uds`: short handshake attempts, retried until `deadline`; fails at
/// once when the VMM exits. `since` is when the machine started (for the
/// message).
pub async fn connect_hybrid_vsock(
    uds: &Path,
    port: u32,
    since: Instant,
    deadline: Instant,
    exit: &watch::Receiver<Option<Exit>>,
    hint: &str,
) -> Result<VsockStream, BackendError> {
    poll(deadline, HANDSHAKE_RETRY, exit, || {
        handshake_once(uds, port)
    })
    .await
    .map_err(|e| match e {
        PollEnd::Exited(exit) => BackendError::Exited {
            process: "the VMM".into(),
            exit,
            during: format!("while waiting for the backdoor on vsock port {port}"),
            output: String::new(),
        },
        PollEnd::TimedOut(last) => BackendError::NoVsockBackdoor {
            port,
            waited: deadline.saturating_duration_since(since),
            last,
            hint: hint.to_owned(),
        },
    })
}

/// An error for an option the VMM version lacks.
pub fn require_version(
    vmm: &'static str,
    key: &str,
    need: Version,
    have: Version,
) -> Result<(), BackendError> {
    if have < need {
        Err(BackendError::VmmTooOld {
            vmm,
            option: key.to_owned(),
            need: format!("{}.{}", need.0, need.1),
            have: have.to_string(),
        })
    } else {
        Ok(())
    }
}

/// Removes a stale socket file (VMMs refuse to bind over an existing one).
pub fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Waits until the VMM's API answers `GET probe`.
pub async fn wait_for_api(
    api: &api::ApiClient,
    probe: &str,
    process: &Watched,
    limit: Duration,
    vmm: &'static str,
) -> Result<(), BackendError> {
    let deadline = Instant::now() + limit;
    poll(deadline, Duration::from_millis(10), &process.exit, || {
        api.get(probe)
    })
    .await
    .map(drop)
    .map_err(|e| match e {
        PollEnd::Exited(exit) => BackendError::Exited {
            process: vmm.to_owned(),
            exit,
            during: format!("before its API socket {} answered", api.socket().display()),
            output: String::new(),
        },
        PollEnd::TimedOut(error) => BackendError::TimedOut {
            what: format!("{vmm}'s API"),
            limit: Some(limit),
            last: error.to_string(),
            output: String::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(binary: Option<&str>) -> MicroVmSpec {
        MicroVmSpec {
            binary: binary.map(PathBuf::from),
            from_image: false,
            kernel: PathBuf::new(),
            initrd: None,
            disk: None,
            cmdline: String::new(),
            memory_mib: 64,
            cpus: 1,
            vlans: Vec::new(),
            number: 1,
        }
    }

    #[test]
    fn a_missing_vmm_binary_says_where_it_was_looked_for_and_how_to_get_it() {
        let e = spec(Some("/nonexistent/fc"))
            .find_binary("firecracker", "ATTEST_TEST_UNSET_VAR", "fetch it")
            .unwrap_err();
        assert!(
            matches!(
                &e,
                BackendError::VmmBinary {
                    problem: VmmBinaryProblem::Configured { .. },
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "the configured firecracker binary /nonexistent/fc does not exist: fetch it"
        );
        let e = spec(None)
            .find_binary("attest-no-such-vmm", "ATTEST_TEST_UNSET_VAR", "fetch it")
            .unwrap_err();
        assert!(
            matches!(
                &e,
                BackendError::VmmBinary {
                    problem: VmmBinaryProblem::NotInstalled { .. },
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("$ATTEST_TEST_UNSET_VAR unset): fetch it"),
            "{e}"
        );
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            Version::parse_from("Firecracker v1.12.1\n\n2026-… exiting"),
            Some(Version(1, 12, 1))
        );
        assert_eq!(
            Version::parse_from("cloud-hypervisor v43.0"),
            Some(Version(43, 0, 0))
        );
        assert!(Version(1, 12, 1) < Version(1, 13, 0));
        assert_eq!(Version::parse_from("nothing"), None);
    }

    #[test]
    fn macs_and_taps_follow_the_plan() {
        assert!(tap_name(254, 255).len() <= 15);
    }

    #[tokio::test]
    async fn handshake_times_out_when_the_vmm_stays_silent() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let listener = tokio::net::UnixListener::bind(&uds).unwrap();
        // Accept and say nothing, like firecracker before the guest's vsock is up.
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let (_tx, rx) = watch::channel(None);
        let started = Instant::now();
        let e = connect_hybrid_vsock(
            &uds,
            1234,
            started,
            started + Duration::from_millis(1200),
            &rx,
            "",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no backdoor on vsock port 1234 within 1s"),
            "{e}"
        );
        assert!(e.contains("got no answer within 500 ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn handshake_keeps_bytes_that_follow_ok() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let listener = tokio::net::UnixListener::bind(&uds).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"CONNECT 1234\n");
            // OK and the guest's first bytes in one write.
            s.write_all(b"OK 1073741824\nSpawning backdoor root shell...\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let (_tx, rx) = watch::channel(None);
        let now = Instant::now();
        let mut s = connect_hybrid_vsock(&uds, 1234, now, now + Duration::from_secs(5), &rx, "")
            .await
            .unwrap();
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        assert_eq!(line, "Spawning backdoor root shell...\n");
    }
}
