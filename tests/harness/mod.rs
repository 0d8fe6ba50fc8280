//! Shared helpers for the integration tests: write a test (config + script)
//! to a temp dir, run the real `attest` binary with a deadline, and check that
//! nothing it started is left behind.
#![allow(dead_code)]

pub mod lib_machine;
pub mod tiny_guest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attest::config::{BackendConfig, NodeConfig, NspawnConfig, TestConfig};

/// The Debian test image manifest; fails the test with the fix when absent.
pub fn image_manifest() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian/out/manifest.json");
    assert!(
        p.is_file(),
        "{} is missing: build the test guest first with `images/debian/build` (as root)",
        p.display()
    );
    p
}

/// A version-1 test `name` running `test.rhai` on `nodes`, defaults elsewhere.
pub fn test_config(name: &str, nodes: BTreeMap<String, NodeConfig>) -> TestConfig {
    TestConfig {
        version: attest::config::CONFIG_VERSION,
        name: name.to_owned(),
        script: "test.rhai".into(),
        global_timeout: 3600.0,
        enable_network: false,
        nodes,
        base_dir: PathBuf::new(),
        path: PathBuf::new(),
    }
}

/// Two nodes whose rootfs exists but is no root tree (`/dev/null`): enough
/// for `attest check`, which boots nothing; a boot would fail.
pub const UNBOOTABLE_NODES: &str = r#"{"server":{"backend":{"nspawn":{"rootfs":"/dev/null"}}},"client-1":{"backend":{"nspawn":{"rootfs":"/dev/null"}}}}"#;

/// Runs `attest check` on a test.
pub fn check(dir: &TestDir) -> Run {
    attest(
        &["check", dir.config().to_str().unwrap()],
        Duration::from_secs(30),
    )
}

/// A test written to a temp dir.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    /// The config as text: `nodes` is the JSON object of nodes, `extra` more
    /// top-level fields. For configs a test means to be malformed (line and
    /// column of an error); valid ones are built as a [`TestConfig`]
    /// ([`TestDir::write`]).
    pub fn new(name: &str, nodes: &str, extra: &str, script: &str) -> TestDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("test.rhai"), script).unwrap();
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(",{extra}")
        };
        std::fs::write(
            dir.path().join("test.json"),
            format!(
                r#"{{"version":1,"name":"{name}","script":"test.rhai","nodes":{nodes}{extra}}}"#
            ),
        )
        .unwrap();
        TestDir { dir }
    }

    /// A test whose nodes all boot the Debian image on nspawn.
    pub fn nspawn(name: &str, nodes: &[&str], extra: &str, script: &str) -> TestDir {
        let manifest = image_manifest();
        let node = NodeConfig {
            vlans: None,
            boot_timeout: None,
            backend: BackendConfig::Nspawn(NspawnConfig {
                image: Some(manifest),
                ..Default::default()
            }),
        };
        let nodes = nodes.iter().map(|n| (n.to_string(), node.clone()));
        TestDir::write(test_config(name, nodes.collect()), extra, script)
    }

    /// Writes `config` (serialised, `extra` top-level JSON fields merged in)
    /// and the script.
    pub fn write(config: TestConfig, extra: &str, script: &str) -> TestDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("test.rhai"), script).unwrap();
        let mut json = serde_json::to_value(&config).unwrap();
        if !extra.is_empty() {
            let extra: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&format!("{{{extra}}}")).expect("extra is JSON fields");
            json.as_object_mut().unwrap().extend(extra);
        }
        std::fs::write(
            dir.path().join("test.json"),
            serde_json::to_string_pretty(&json).unwrap(),
        )
        .unwrap();
        TestDir { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("test.json")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stderr: String,
    pub stdout: String,
    pub pid: u32,
    pub elapsed: Duration,
    /// The run's TMPDIR (its state dirs live there).
    pub tmpdir: PathBuf,
}

/// The TMPDIR each spawned attest got, by pid: every run gets one of its
/// own, so the checks of what it left behind count only what it created
/// (another attest on the host — a user's, another test's — must not fail them).
/// The flag says whether the harness made the dir (and removes it).
static TMPDIRS: std::sync::Mutex<Vec<(u32, PathBuf, bool)>> = std::sync::Mutex::new(Vec::new());

/// Starts `attest ARGS` with piped output and a TMPDIR of its own (removed
/// when the run leaves it empty, else by [`assert_nothing_left`]).
pub fn spawn(args: &[&str]) -> Child {
    spawn_with(&own_tmpdir(), args, true)
}

/// A fresh TMPDIR for one run, kept until [`tmpdir_of`] or
/// [`assert_nothing_left`] removes it.
fn own_tmpdir() -> PathBuf {
    tempfile::Builder::new()
        .prefix("harness-tmp-")
        .tempdir()
        .unwrap()
        .keep()
}

/// Deterministic bytes that differ per seed (xorshift).
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Starts `attest ARGS` with piped output and TMPDIR `tmp`.
pub fn spawn_in(tmp: &Path, args: &[&str]) -> Child {
    spawn_with(tmp, args, false)
}

fn spawn_with(tmp: &Path, args: &[&str], owned: bool) -> Child {
    spawn_binary(Path::new(env!("CARGO_BIN_EXE_attest")), tmp, args, owned)
}

/// Starts `BINARY ARGS` (attest, possibly renamed) with TMPDIR `tmp`.
pub fn spawn_binary(binary: &Path, tmp: &Path, args: &[&str], owned: bool) -> Child {
    spawn_binary_env(binary, tmp, args, &[], owned)
}

/// Runs `attest ARGS` to completion with extra environment variables.
pub fn attest_env(args: &[&str], envs: &[(&str, &str)], limit: Duration) -> Run {
    let started = Instant::now();
    let binary = Path::new(env!("CARGO_BIN_EXE_attest"));
    let child = spawn_binary_env(binary, &own_tmpdir(), args, envs, true);
    finish(child, started, limit)
}

fn spawn_binary_env(
    binary: &Path,
    tmp: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    owned: bool,
) -> Child {
    let child = Command::new(binary)
        .args(args)
        .envs(envs.iter().copied())
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run attest");
    TMPDIRS
        .lock()
        .unwrap()
        .push((child.id(), tmp.to_owned(), owned));
    child
}

/// The TMPDIR of run `pid`; a harness-made one is removed here if empty.
fn tmpdir_of(pid: u32) -> PathBuf {
    let (dir, owned) = TMPDIRS
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _, _)| *p == pid)
        .map(|(_, d, o)| (d.clone(), *o))
        .unwrap_or_else(|| (std::env::temp_dir(), false));
    if owned {
        let _ = std::fs::remove_dir(&dir);
    }
    dir
}

/// Waits for a child with a deadline (kills it and fails the test on expiry).
pub fn finish(mut child: Child, started: Instant, limit: Duration) -> Run {
    let pid = child.id();
    // Drain output on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = t_err.join().unwrap();
            // Teardown waits for every background task; one still running
            // means a child or a pump outlived its machine.
            assert!(
                !stderr.contains("background task(s) still running"),
                "attest's teardown left tasks running; stderr:\n{stderr}"
            );
            return Run {
                code: status.code(),
                stdout: t_out.join().unwrap(),
                stderr,
                pid,
                elapsed: started.elapsed(),
                tmpdir: tmpdir_of(pid),
            };
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "attest did not finish within {limit:?}; stderr:\n{}",
                t_err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a prepared command (attest with other arguments, an environment, a
/// namespace, …) to completion with piped output: the one runner every
/// test binary uses.
pub fn run_command(mut cmd: Command, limit: Duration) -> Run {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run attest");
    finish(child, started, limit)
}

/// Runs `attest ARGS` to completion.
pub fn attest(args: &[&str], limit: Duration) -> Run {
    let started = Instant::now();
    finish(spawn(args), started, limit)
}

/// Runs `attest ARGS` to completion with TMPDIR `tmp`.
pub fn attest_in(tmp: &Path, args: &[&str], limit: Duration) -> Run {
    let started = Instant::now();
    finish(spawn_in(tmp, args), started, limit)
}

/// Processes whose command line mentions `needle` (other than this test).
pub fn processes_matching(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{pid}: {cmd}"));
            }
        }
    }
    found
}

/// Host-wide things named after attest process `pid` that exist now:
/// container cgroups and nspawn runtime dirs.
pub fn host_leftovers(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("attest-{pid}-");
    [
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/systemd",
        "/run/systemd/nspawn/propagate",
    ]
    .iter()
    .filter_map(|d| std::fs::read_dir(d).ok())
    .flat_map(|entries| entries.flatten())
    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    .map(|e| e.path())
    .collect()
}

/// State dirs in a run's TMPDIR.
pub fn state_dirs(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("attest-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Fails if a run of attest (by pid) left a process, a container cgroup, an
/// nspawn runtime dir or a state dir — counting only what that run created.
pub fn assert_nothing_left(run: &Run, test_name: &str) {
    // Containers are named attest-<attest pid>-<n>-<run id>; give the kernel
    // a moment to reap.
    let needle = format!("--machine=attest-{}-", run.pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_matching(&needle);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = host_leftovers(run.pid);
    assert!(left.is_empty(), "{test_name}: left behind: {left:?}");
    let dirs = state_dirs(&run.tmpdir);
    assert!(
        dirs.is_empty(),
        "{test_name}: state dirs left behind: {dirs:?}"
    );
}

/// Whether process `pid` runs; a zombie does not (the reap is what the
/// backends promise).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}
