//! `attest bench`: the same scenario on every requested backend, with the
//! Debian test image, reported as a table and as JSON ([`BenchReport`]).
//!
//! Every figure comes from a real guest booted through the normal
//! [`Driver`](crate::driver::Driver) (so teardown, signal handling and the
//! global timeout are the ones a test run gets). Backends that cannot run on
//! this host are reported with the reason, never dropped.
//!
//! - [`stats`]: median/min/max/p99 of samples;
//! - [`usage`]: attest's own CPU time and peak RSS;
//! - [`scenario`]: the measurements;
//! - [`output`]: the table and the JSON document.

pub mod big_data;
pub mod output;
pub mod scenario;
pub mod stats;
pub mod usage;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::backend::kvm::KvmProblem;
use crate::config::{BackendKind, ImageManifest};
use crate::guest::agent::Protocol;
pub use stats::Summary;
pub use usage::Usage;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The test whose wall time is measured (rewritten to each backend).
    pub test_config: PathBuf,
    /// The Debian test image manifest.
    pub image: PathBuf,
    /// Backends to measure, in order.
    pub backends: Vec<String>,
    /// Guest protocols to measure on each backend, side by side.
    pub protocols: Vec<Protocol>,
    /// Runs per figure on fast backends (nspawn).
    pub runs: usize,
    /// Runs per figure on VM backends (slow under TCG).
    pub vm_runs: usize,
    /// `true` round trips per run.
    pub commands: usize,
    /// Node counts for the `start_all` scaling figure (nspawn only).
    pub scaling: Vec<usize>,
    /// Sizes of the big output and copy figures ([`big_data`]).
    pub big_data: Vec<big_data::Size>,
    /// Colour the progress log.
    pub colour: bool,
}

/// Everything one `attest bench` produced; serialized as the `--json` file.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// attest's version.
    pub attest_version: String,
    /// When the run started (UTC, RFC 3339).
    pub date: String,
    /// The host.
    pub machine: MachineInfo,
    /// The options the figures were taken with.
    pub options: ReportedOptions,
    /// One entry per requested backend, available or not.
    pub backends: Vec<BackendReport>,
    /// `start_all` time by node count.
    pub scaling: Option<ScalingReport>,
    /// attest's own cost over the whole run.
    pub attest: AttestCost,
    /// Set when the run was cut short (Ctrl-C, global timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
}

/// The host the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// Online CPUs.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// What `/dev/kvm` is on this host.
    pub kvm: String,
    /// `/proc/loadavg`'s 1-minute figure when the bench started and ended
    /// (other work on the host inflates every figure).
    pub load_average: [f64; 2],
}

/// The options, as recorded in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportedOptions {
    /// Runs on fast backends.
    pub runs: usize,
    /// Runs on VM backends.
    pub vm_runs: usize,
    /// `true` round trips per run.
    pub commands: usize,
    /// Scaling node counts.
    pub scaling: Vec<usize>,
    /// Sizes of the big data figures, bytes.
    pub big_data: Vec<usize>,
    /// The whole-test config.
    pub test_config: PathBuf,
    /// The image manifest.
    pub image: PathBuf,
    /// Whether attest was built with optimizations.
    pub release_build: bool,
}

/// The figures of one backend.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BackendReport {
    /// The backend.
    pub name: String,
    /// The guest protocol the figures were taken with (`bash`, `agent`).
    pub protocol: String,
    /// Whether it could run here.
    pub available: bool,
    /// Why not, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// First line of the backend binary's `--version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Runs measured.
    pub runs: usize,
    /// Figures by name: milliseconds, or MB/s (`_mb_s`) or MiB (`_mib`)
    /// (see [`output::FIGURES`] and [`big_data`]).
    pub figures: BTreeMap<String, Summary>,
    /// Figures that do not apply, with the reason.
    pub not_applicable: BTreeMap<String, String>,
    /// Failures while measuring (the figure is then missing).
    pub errors: Vec<String>,
    /// The per-command figures (`true_round_trip_ms`,
    /// `pipeline_round_trip_ms`, `output_1mib_ms`, attest's CPU) of every
    /// protocol measured, by protocol, taken on one machine one after the
    /// other: a boot per protocol compares two machines, and two VMs under
    /// TCG differ with the host's load. In the first protocol's report.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub same_machine: BTreeMap<String, BTreeMap<String, Summary>>,
}

/// `start_all` time by node count.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingReport {
    /// The backend measured.
    pub backend: String,
    /// One point per node count.
    pub points: Vec<ScalingPoint>,
}

/// One node count.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingPoint {
    /// Nodes started at once.
    pub nodes: usize,
    /// `start_all` → every backdoor up, ms.
    pub start_all_ms: Summary,
    /// That time divided by the node count, ms (median run).
    pub per_node_ms: f64,
}

/// attest's own cost over the whole bench.
#[derive(Debug, Clone, Serialize)]
pub struct AttestCost {
    /// Peak RSS of attest (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// CPU times of attest and of its reaped children.
    pub usage: Usage,
    /// Wall time of the whole bench, s.
    pub wall_s: f64,
}

/// Why `attest bench` stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A signal or the global timeout ended the run.
    #[error("interrupted: {0}")]
    Interrupted(#[from] Interruption),
    /// The image path cannot be made absolute.
    #[error("{}: {}", path.display(), crate::errors::os_reason(error))]
    ImagePath {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// The image's manifest cannot be read.
    #[error("{0}: the Debian test image is missing; run images/debian/build")]
    NoImage(#[source] crate::config::ConfigError),
    /// The bench's scratch directory cannot be created.
    #[error("cannot create a temp dir: {}", crate::errors::os_reason(.0))]
    TempDir(#[source] std::io::Error),
}

/// What interrupted the bench.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Interruption {
    /// The bench's own listener saw a signal between runs.
    #[error("interrupted by {0}")]
    Signal(&'static str),
    /// A run was cancelled (signal, global timeout).
    #[error("{0}")]
    Cancelled(crate::cancel::CancelReason),
}

/// Set by the bench's own SIGINT/SIGTERM listener; checked between runs.
#[derive(Clone, Default)]
pub struct Interrupt(Arc<std::sync::Mutex<Option<&'static str>>>);

impl Interrupt {
    /// The signal that arrived, if one did.
    pub fn signal(&self) -> Option<&'static str> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a signal arrived.
    pub fn is_set(&self) -> bool {
        self.signal().is_some()
    }

    /// Listens for SIGINT/SIGTERM on `runtime` (the running Driver's own
    /// watchers cancel the machines; this makes the bench stop between runs).
    pub fn listen(&self, runtime: &tokio::runtime::Runtime) {
        let flag = self.0.clone();
        runtime.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = Some(name);
        });
    }
}

/// A `--scaling` entry that is not a node count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a node count from 1 to 64")]
pub struct BadCount(pub String);

/// Parses `1,4,8,16` (or `none` / empty: no scaling figure).
pub fn parse_counts(s: &str) -> Result<Vec<usize>, BadCount> {
    let s = s.trim();
    if s.is_empty() || s == "none" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|p| match p.trim().parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => Ok(n),
            _ => Err(BadCount(p.to_owned())),
        })
        .collect()
}

/// Whether `/dev/kvm` is usable here, or why not.
pub fn kvm_state() -> Result<(), KvmProblem> {
    crate::backend::kvm::KvmFacts::probe().summary()
}

fn binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The binary a backend runs.
pub fn backend_binary(backend: BackendKind) -> &'static str {
    match backend {
        BackendKind::Nspawn => "systemd-nspawn",
        BackendKind::Qemu => "qemu-system-x86_64",
        BackendKind::Firecracker => "firecracker",
        BackendKind::CloudHypervisor => "cloud-hypervisor",
        BackendKind::Ssh => "ssh",
        BackendKind::Local => "bash",
    }
}

/// First line of `<binary> --version`, if the binary runs.
pub fn backend_version(backend: BackendKind) -> Option<String> {
    let bin = binary(backend_binary(backend))?;
    let out = std::process::Command::new(bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

/// Why a backend cannot be measured here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// ssh measures a host the user brings, not one bench boots.
    #[error(
        "needs an existing host; bench boots its own guests (measure ssh with a test config of your own)"
    )]
    NeedsHost,
    /// A microVM backend without usable KVM.
    #[error("needs KVM; {}", .0.summary())]
    NoKvm(#[source] KvmProblem),
    /// The backend's binary (or `qemu-img`) is missing.
    #[error("`{binary}` is not installed{hint}")]
    NotInstalled {
        /// The binary.
        binary: &'static str,
        /// How to install it, when known.
        hint: &'static str,
    },
    /// nspawn without root.
    #[error("systemd-nspawn needs root")]
    NotRoot,
    /// The image's root tree is not built.
    #[error("{} is not a root tree: run images/debian/build", .0.display())]
    NoRootTree(PathBuf),
    /// The image's kernel or disk is not built.
    #[error("{} is missing: run images/debian/build", .0.display())]
    Missing(PathBuf),
}

/// Why `backend` cannot run here with `image`, or `Ok` when it can.
pub fn availability(backend: BackendKind, image: &ImageManifest) -> Result<(), Unavailable> {
    if backend == BackendKind::Ssh {
        return Err(Unavailable::NeedsHost);
    }
    if matches!(
        backend,
        BackendKind::Firecracker | BackendKind::CloudHypervisor
    ) {
        kvm_state().map_err(Unavailable::NoKvm)?;
    }
    let bin = backend_binary(backend);
    if binary(bin).is_none() {
        return Err(Unavailable::NotInstalled {
            binary: bin,
            hint: "",
        });
    }
    if backend == BackendKind::Qemu && binary("qemu-img").is_none() {
        return Err(Unavailable::NotInstalled {
            binary: "qemu-img",
            hint: " (apt-get install qemu-utils)",
        });
    }
    match backend {
        BackendKind::Nspawn => {
            if !nix::unistd::Uid::effective().is_root() {
                return Err(Unavailable::NotRoot);
            }
            if !image.rootfs.join("usr").is_dir() {
                return Err(Unavailable::NoRootTree(image.rootfs.clone()));
            }
        }
        _ => {
            for p in [&image.kernel, &image.disk] {
                if !p.is_file() {
                    return Err(Unavailable::Missing(p.clone()));
                }
            }
        }
    }
    Ok(())
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The host's description.
pub fn machine_info() -> MachineInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0);
    let kvm = match kvm_state() {
        Ok(()) => "usable".to_owned(),
        Err(e) => e.summary(),
    };
    MachineInfo {
        cpu_model,
        cores,
        kernel,
        memory_mib,
        kvm,
        load_average: [load_average(), 0.0],
    }
}

/// Now as UTC RFC 3339 (seconds).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs the whole bench. Returns the report even when it was interrupted
/// (then [`BenchReport::interrupted`] says why) so partial figures are kept.
pub fn run(
    opts: &BenchOptions,
    runtime: &tokio::runtime::Runtime,
) -> Result<BenchReport, BenchError> {
    let started = std::time::Instant::now();
    let usage0 = Usage::now();
    let image_path = std::path::absolute(&opts.image).map_err(|error| BenchError::ImagePath {
        path: opts.image.clone(),
        error,
    })?;
    let image = ImageManifest::load(&image_path).map_err(BenchError::NoImage)?;
    let interrupt = Interrupt::default();
    interrupt.listen(runtime);
    let dir = tempfile::Builder::new()
        .prefix("attest-bench-")
        .tempdir()
        .map_err(BenchError::TempDir)?;
    let mut report = BenchReport {
        attest_version: env!("CARGO_PKG_VERSION").to_owned(),
        date: utc_now(),
        machine: machine_info(),
        options: ReportedOptions {
            runs: opts.runs,
            vm_runs: opts.vm_runs,
            commands: opts.commands,
            scaling: opts.scaling.clone(),
            big_data: opts.big_data.iter().map(|s| s.0).collect(),
            test_config: opts.test_config.clone(),
            image: image_path.clone(),
            release_build: !cfg!(debug_assertions),
        },
        backends: Vec::new(),
        scaling: None,
        attest: AttestCost {
            peak_rss_mib: 0.0,
            usage: Usage::default(),
            wall_s: 0.0,
        },
        interrupted: None,
    };
    let ctx_for = |protocol, compare_protocols| scenario::BenchContext {
        runtime,
        dir: dir.path(),
        image: &image_path,
        opts,
        interrupt: &interrupt,
        protocol,
        compare_protocols,
    };
    let result = (|| -> Result<(), BenchError> {
        for name in &opts.backends {
            let backend = match name.parse::<BackendKind>() {
                Ok(k) => k,
                Err(reason) => {
                    report.backends.push(BackendReport {
                        name: name.clone(),
                        reason: Some(reason.to_string()),
                        ..Default::default()
                    });
                    continue;
                }
            };
            for (i, protocol) in opts.protocols.iter().enumerate() {
                let ctx = ctx_for(*protocol, i == 0 && opts.protocols.len() > 1);
                let mut b = BackendReport {
                    name: name.clone(),
                    protocol: protocol.name().to_owned(),
                    version: backend_version(backend),
                    ..Default::default()
                };
                if let Err(reason) = availability(backend, &image) {
                    b.reason = Some(reason.to_string());
                    report.backends.push(b);
                    break;
                }
                b.available = true;
                b.runs = if backend.is_vm() {
                    opts.vm_runs
                } else {
                    opts.runs
                };
                let r = scenario::measure_backend(&ctx, backend, &mut b);
                let last = i + 1 == opts.protocols.len();
                let r = r.and_then(|()| {
                    // Once, with what a test run gets by default.
                    if last && backend == BackendKind::Nspawn && !opts.scaling.is_empty() {
                        let ctx = ctx_for(Protocol::default(), false);
                        report.scaling = scenario::measure_scaling(&ctx, backend, &mut b.errors)?;
                    }
                    Ok(())
                });
                report.backends.push(b);
                r?;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        match e {
            BenchError::Interrupted(why) => report.interrupted = Some(why.to_string()),
            other => return Err(other),
        }
    }
    report.machine.load_average[1] = load_average();
    report.attest = AttestCost {
        peak_rss_mib: usage::peak_rss_kib().unwrap_or(0) as f64 / 1024.0,
        usage: Usage::now().since(&usage0),
        wall_s: started.elapsed().as_secs_f64(),
    };
    Ok(report)
}
