//! A real sshd to test the ssh backend against: the Debian test image booted
//! with systemd-nspawn inside a fresh network namespace, where its sshd
//! listens on `127.<b>.<c>.<d>` (that namespace's loopback). Root
//! logs in with the image's key.
//!
//! All test traffic stays inside that namespace: the namespace has no link to
//! the host's, and whatever talks to sshd — the attest under test
//! ([`run_attest`]), [`SshdHost::ssh`], [`SshdHost::sshd_greets`], in-process
//! clients ([`SshdHost::enter`]) — joins it first. (Traffic from the host's
//! own namespace to a private-range address is watched on shared CI hosts.)
//!
//! [`SshdHost`] removes everything on drop (container, namespace), also when
//! the test panics; namespaces left by a test process that was killed
//! outright are removed by the next [`SshdHost::start`].

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use attest::backend::cgroup;

const NS_PREFIX: &str = "attest-sshtest-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The image's output directory; fails the test with the fix when absent.
pub fn image_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian/out");
    for f in ["manifest.json", "id_ed25519", "rootfs/usr"] {
        assert!(
            dir.join(f).exists(),
            "{} is missing: build the Debian test image first with `images/debian/build` (as root)",
            dir.join(f).display()
        );
    }
    dir
}

/// A booted container with sshd on [`SshdHost::addr`].
pub struct SshdHost {
    /// The namespace's name (under /run/netns).
    pub netns: String,
    /// Address of the container in its namespace (sshd listens on port 22).
    pub addr: String,
    nspawn: Option<Child>,
    /// Key, known_hosts files and the container's log.
    pub dir: tempfile::TempDir,
}

/// Why a setup command failed.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    /// It could not be started.
    #[error("{command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("{command}: {stderr}")]
    Failed { command: String, stderr: String },
}

fn run(cmd: &mut Command) -> Result<(), SetupError> {
    let out = cmd.output().map_err(|source| SetupError::Spawn {
        command: format!("{cmd:?}"),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SetupError::Failed {
            command: format!("{cmd:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn ip(args: &[&str]) -> Result<(), SetupError> {
    run(Command::new("ip").args(args))
}

/// Kills every process in namespace `ns` and deletes it (its veth end goes
/// with it, and so does the host end of the pair).
fn remove_netns(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            sigkill(pid);
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

/// Removes namespaces whose test process no longer exists.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            remove_netns(&name);
            for dir in cgroup::dirs(&name) {
                cgroup::remove_tree(&dir);
            }
        }
    }
}

impl SshdHost {
    /// Boots the container and waits (up to 90 s) until sshd greets.
    pub fn start() -> SshdHost {
        let image = image_dir();
        assert!(
            nix_is_root(),
            "the ssh tests need root (network namespaces, systemd-nspawn)"
        );
        remove_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let netns = format!("{NS_PREFIX}{pid}-{n}");
        // One loopback address per (pid, counter), 127.<b>.<c>.<d> (18 bits of
        // pid, 3 of counter): distinct names in logs. Never a private-range
        // address: shared CI hosts watch SSH to 10/8, 172.16/12 and 192.168/16
        // and kill the run, even inside a namespace of its own.
        let s = ((pid & 0x3ffff) << 3) | (n & 7);
        let (b, c, d) = (s >> 14, (s >> 6) & 255, (s & 63) * 4);
        let addr = format!("127.{b}.{c}.{}", d + 2);
        let dir = tempfile::tempdir().expect("temp dir");

        let mut host = SshdHost {
            netns: netns.clone(),
            addr: addr.clone(),
            nspawn: None,
            dir,
        };
        // From here on, drop cleans up whatever was made.
        let setup = || -> Result<(), SetupError> {
            ip(&["netns", "add", &netns])?;
            // The namespace's loopback (127/8) carries everything: no link
            // anywhere near the host.
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            Ok(())
        };
        if let Err(e) = setup() {
            panic!("cannot set up the test network: {e}");
        }
        let log = std::fs::File::create(host.dir.path().join("container.log")).expect("log");
        // As the nspawn backend starts it: nspawn is PID 1 of a PID namespace
        // of its own (when it dies, the kernel takes the container down with
        // it), with a private tmpfs for its propagate dirs, on the unified
        // cgroup hierarchy.
        let mut cmd = Command::new("unshare");
        cmd.args(attest::backend::nspawn::UNSHARE_SUPERVISOR);
        cmd.args([
            "--",
            "sh",
            "-c",
            "mkdir -p /run/systemd/nspawn && mount -t tmpfs -o mode=0755,size=4m attest /run/systemd/nspawn && exec \"$@\"",
            "sh",
            "systemd-nspawn",
        ])
        .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1");
        cmd.args([
            "-q",
            "-b",
            "--volatile=overlay",
            "--register=no",
            "--keep-unit",
        ])
        .arg("--console=pipe")
        .arg("--link-journal=no")
        .arg(format!("--directory={}", image.join("rootfs").display()))
        .arg(format!("--machine={netns}"))
        .arg(format!("--network-namespace-path=/run/netns/{netns}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
        // With --keep-unit, nspawn splits the cgroup it starts in into
        // `supervisor` and `payload`; started from the root cgroup, every
        // container on the machine would share one `/payload` (and its
        // systemd's unit cgroups). A private parent per fixture avoids that.
        let procs: Vec<std::ffi::CString> = cgroup::dirs(&netns)
            .into_iter()
            .filter(|d| std::fs::create_dir_all(d).is_ok())
            .filter_map(|d| {
                std::ffi::CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes())
                    .ok()
            })
            .collect();
        // SAFETY: setsid, open, write and close are async-signal-safe; the
        // closure only reads the CStrings prepared above.
        // Its own session: nspawn never sees (or signals through) the
        // terminal of whoever runs the tests.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid()?;
                for p in &procs {
                    use nix::fcntl::{open, OFlag};
                    use std::os::fd::FromRawFd as _;
                    if let Ok(fd) =
                        open(p.as_c_str(), OFlag::O_WRONLY, nix::sys::stat::Mode::empty())
                    {
                        // SAFETY: `fd` was just opened and nothing else owns it;
                        // dropping the OwnedFd closes it.
                        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
                        let _ = nix::unistd::write(&fd, b"0");
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("cannot run systemd-nspawn");
        host.nspawn = Some(child);

        // The image's key; ssh wants it private to its owner.
        let key = host.key();
        std::fs::copy(image.join("id_ed25519"), &key).expect("copy key");
        set_mode(&key, 0o600);
        std::fs::write(host.dir.path().join("known_hosts.empty"), "").expect("write");
        std::fs::write(
            host.dir.path().join("known_hosts"),
            format!(
                "{addr} {}",
                std::fs::read_to_string(image.join("rootfs/etc/ssh/ssh_host_ed25519_key.pub"))
                    .expect("host key")
            ),
        )
        .expect("write");

        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if host.sshd_greets() {
                break;
            }
            if !host.container_running() {
                panic!(
                    "the container exited while booting:\n{}",
                    host.container_log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "sshd in the container did not come up within 90 s:\n{}",
                    host.container_log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        host
    }

    /// The image's private key (mode 0600).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// A known_hosts file that has the container's host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// An empty known_hosts file (the container's key is unknown).
    pub fn empty_known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts.empty")
    }

    /// What the container printed so far.
    pub fn container_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("container.log")).unwrap_or_default()
    }

    /// Whether systemd-nspawn still runs.
    pub fn container_running(&mut self) -> bool {
        match self.nspawn.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Whether sshd answers with its version banner (asked from inside the
    /// namespace).
    pub fn sshd_greets(&self) -> bool {
        let addr = self.addr.clone();
        self.enter(move || {
            use std::io::Read;
            let Ok(addr) = format!("{addr}:22").parse() else {
                return false;
            };
            let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 8];
            matches!(s.read(&mut buf), Ok(n) if n >= 4 && buf.starts_with(b"SSH-"))
        })
    }

    /// The namespace's path, for `nsenter --net=`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// Runs `f` on a thread that joined the namespace (sockets it opens and
    /// processes it spawns live there), and returns its result.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.netns_path();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the test's network namespace");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("join the test's network namespace");
            f()
        })
        .join()
        .expect("thread in the test's namespace")
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs a command over a fresh ssh connection (outside attest), as a
    /// proof that the host still runs and accepts logins.
    pub fn ssh(&self, command: &str) -> std::process::Output {
        self.command("ssh")
            .arg("-i")
            .arg(self.key())
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.known_hosts().display()
            ))
            .arg(format!("root@{}", self.addr))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }

    /// Pids of the namespace's processes whose command name is `comm`.
    pub fn pids_named(&self, comm: &str) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .map(|c| c.trim() == comm)
                    .unwrap_or(false)
            })
            .collect()
    }

    /// SIGKILLs every sshd of the container (listener and connections) —
    /// only processes inside this test's namespace, never the host's sshd.
    pub fn kill_sshd(&self) -> usize {
        let pids = self.pids_named("sshd");
        for p in &pids {
            sigkill(&p.to_string());
        }
        pids.len()
    }
}

impl Drop for SshdHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            // Killing every process of the namespace takes the container's
            // PID 1 down with its PID namespace; nspawn then exits.
            remove_netns_processes(&self.netns);
            // Its whole group (it runs in a session of its own). Never
            // `kill -9 -PID` through procps' kill: it reads `-PID` as an
            // option and signals -1, every process on the machine.
            if let Ok(pgid) = i32::try_from(child.id()) {
                if pgid > 1 {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_netns(&self.netns);
        // The container's processes may take a moment to leave them.
        for dir in cgroup::dirs(&self.netns) {
            for _ in 0..50 {
                cgroup::remove_tree(&dir);
                if !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn remove_netns_processes(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            sigkill(pid);
        }
    }
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs the real attest binary on a config inside `host`'s namespace (so its
/// ssh traffic never leaves it); returns (exit code, stdout+stderr). Kills it
/// and fails the test after `timeout`.
pub fn run_attest(host: &SshdHost, config: &Path, timeout: Duration) -> (i32, String) {
    run_attest_with(host, config, &[], timeout)
}

/// [`run_attest`] with more options after the config (`--protocol bash`).
pub fn run_attest_with(
    host: &SshdHost,
    config: &Path,
    args: &[&str],
    timeout: Duration,
) -> (i32, String) {
    let mut cmd = host.command(env!("CARGO_BIN_EXE_attest"));
    cmd.arg("run").arg(config).args(args).stdin(Stdio::null());
    let r = crate::harness::run_command(cmd, timeout);
    (r.code.unwrap_or(-1), format!("{}{}", r.stdout, r.stderr))
}

/// SIGKILLs one process given by its decimal pid (as `ip netns pids` prints
/// them); anything that is not a plain pid above 1 is ignored, so a parsing
/// slip can never turn into a signal to a group or to every process.
pub fn sigkill(pid: &str) {
    if let Ok(p) = pid.trim().parse::<i32>() {
        if p > 1 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
