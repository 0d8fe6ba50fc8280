//! Shared helpers for the integration tests: write a test (config + script)
//! to a temp dir, run the real `attest` binary with a deadline, and check that
//! nothing it started is left behind.
#![allow(dead_code)]

pub mod lib_machine;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Two nodes whose rootfs does not exist: enough for `attest check`, which
/// boots nothing.
pub const UNBOOTABLE_NODES: &str = r#"{"server":{"backend":{"nspawn":{"rootfs":"/nonexistent"}}},"client-1":{"backend":{"nspawn":{"rootfs":"/nonexistent"}}}}"#;

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
    /// `nodes` is the JSON object of nodes; `extra` more top-level fields.
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
        let nodes: Vec<String> = nodes
            .iter()
            .map(|n| {
                format!(
                    r#""{n}":{{"backend":{{"nspawn":{{"image":"{}"}}}}}}"#,
                    manifest.display()
                )
            })
            .collect();
        TestDir::new(name, &format!("{{{}}}", nodes.join(",")), extra, script)
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
}

/// Starts `attest ARGS` with piped output.
pub fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_attest"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run attest")
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
            return Run {
                code: status.code(),
                stdout: t_out.join().unwrap(),
                stderr: t_err.join().unwrap(),
                pid,
                elapsed: started.elapsed(),
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

/// Runs `attest ARGS` to completion.
pub fn attest(args: &[&str], limit: Duration) -> Run {
    let started = Instant::now();
    finish(spawn(args), started, limit)
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

/// Fails if a run of attest (by pid) left a container or a state dir.
pub fn assert_nothing_left(run: &Run, test_name: &str) {
    // Containers are named attest-<attest pid>-<n>; give the kernel a moment to reap.
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
    let tmp = std::env::temp_dir();
    let prefix = format!("attest-{test_name}-");
    // Only dirs made during this run: a killed earlier run may have left some.
    let run_start = std::time::SystemTime::now() - run.elapsed - Duration::from_secs(1);
    let dirs: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .filter(|e| {
            // attest-<name>-<6 random characters>, nothing longer: another
            // test's name may start with this one's.
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix(&prefix).is_some_and(|rest| {
                rest.len() == 6 && rest.chars().all(|c| c.is_ascii_alphanumeric())
            })
        })
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= run_start)
        })
        .map(|e| e.path())
        .collect();
    assert!(dirs.is_empty(), "state dirs left behind: {dirs:?}");
}
