//! `attest bench` against real nspawn guests: the JSON has every figure,
//! unavailable backends are listed with a reason, and Ctrl-C cleans up.
//! No timing assertions: benchmarks print figures, tests check they exist.

mod harness;

use attest::exit_code::{FAILED, PASSED};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn image() -> PathBuf {
    let m = root().join("images/debian/out/manifest.json");
    assert!(
        m.is_file() && root().join("images/debian/out/rootfs/usr").is_dir(),
        "the Debian test image is missing ({}): run images/debian/build",
        m.display()
    );
    m
}

fn bench_command(args: &[&str], json: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_attest"));
    cmd.current_dir(root())
        .arg("bench")
        .arg(root().join("examples/nginx/test.json"))
        .arg("--image")
        .arg(image())
        .arg("--json")
        .arg(json)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn read_all(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        r.read_to_string(&mut s).ok();
        s
    })
}

/// Runs to completion with a hard limit; returns (exit code, stdout, stderr).
fn run(cmd: Command, limit: Duration) -> (Option<i32>, String, String) {
    let r = harness::run_command(cmd, limit);
    (r.code, r.stdout, r.stderr)
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("the --json file exists");
    serde_json::from_str(&text).expect("the --json file is JSON")
}

fn backend<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("backend {name} is not in the report: {report:#}"))
}

fn assert_positive(v: &serde_json::Value, what: &str) {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
}

fn assert_summary(s: &serde_json::Value, what: &str) {
    for k in ["median", "min", "max"] {
        assert_positive(&s[k], &format!("{what}.{k}"));
    }
}

/// Containers started by the attest process `pid` that still run.
fn leftover_containers(pid: u32) -> Vec<String> {
    let needle = format!("--machine=attest-{pid}-");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}

#[test]
fn nspawn_figures_are_all_there_and_unavailable_backends_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let cmd = bench_command(
        &[
            "--backends",
            "nspawn,firecracker",
            "--runs",
            "2",
            "--scaling",
            "1,2",
            // Small: the figures' machinery, not their size, is tested.
            "--big-data",
            "4m",
        ],
        &json,
    );
    let (code, stdout, stderr) = run(cmd, Duration::from_secs(400));
    assert_eq!(
        code,
        Some(PASSED.into()),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report = read_json(&json);
    // One report per protocol, side by side; the agent's own figures.
    let protocols: Vec<&str> = report["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["name"] == "nspawn")
        .map(|b| b["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(protocols, ["bash", "agent"], "{report:#}");
    let agent = &report["backends"].as_array().unwrap()[1];
    assert_eq!(agent["errors"].as_array().unwrap().len(), 0, "{agent:#}");
    for key in [
        "true_round_trip_ms",
        "pipeline_round_trip_ms",
        "output_64mib_ms",
        "concurrent_50_sleep_1_ms",
        "guest_bash_c_pipeline_ms",
    ] {
        assert_summary(&agent["figures"][key], key);
    }
    // Big data figures on both protocols, in their units.
    for b in report["backends"].as_array().unwrap() {
        for key in [
            "output_4mib_ms",
            "output_4mib_mb_s",
            "output_4mib_peak_rss_mib",
            "copy_from_host_4mib_mb_s",
            "copy_from_machine_4mib_mb_s",
        ] {
            if b["name"] == "nspawn" {
                assert_summary(&b["figures"][key], key);
            }
        }
    }
    assert!(stdout.contains(" MB/s"), "{stdout}");
    assert!(stdout.contains(" MiB ["), "{stdout}");
    assert!(stdout.contains("| nspawn bash (runs: 2)"), "{stdout}");
    assert!(stdout.contains("| nspawn agent (runs: 2)"), "{stdout}");
    // The per-command figures of both protocols on one machine (the first
    // protocol's container switched to the agent and back).
    let bash = &report["backends"].as_array().unwrap()[0];
    for protocol in ["bash", "agent"] {
        for key in ["true_round_trip_ms", "pipeline_round_trip_ms"] {
            assert_summary(&bash["same_machine"][protocol][key], key);
        }
    }
    assert!(
        stdout.contains("| nspawn: the protocols on one machine (runs: 2)"),
        "{stdout}"
    );

    let nspawn = backend(&report, "nspawn");
    assert_eq!(nspawn["available"], true, "{nspawn:#}");
    assert_eq!(nspawn["errors"].as_array().unwrap().len(), 0, "{nspawn:#}");
    let figures = nspawn["figures"].as_object().unwrap();
    for key in [
        "boot_backdoor_ms",
        "boot_multi_user_ms",
        "true_round_trip_ms",
        "output_1mib_ms",
        "shutdown_ms",
        "whole_test_ms",
        "guest_exec_true_ms",
        "guest_bash_c_true_ms",
        "attest_cpu_per_command_ms",
    ] {
        let s = figures
            .get(key)
            .unwrap_or_else(|| panic!("nspawn has no {key}: {nspawn:#}"));
        assert_summary(s, key);
    }
    for (key, s) in figures {
        assert_summary(s, key);
    }
    assert_positive(&figures["true_round_trip_ms"]["p99"], "true p99");
    assert_eq!(figures["true_round_trip_ms"]["n"], 400);
    assert_eq!(figures["boot_backdoor_ms"]["n"], 2);
    // nspawn has no snapshots: the figure says so instead of vanishing.
    let na = nspawn["not_applicable"]["snapshot_restore_first_command_ms"]
        .as_str()
        .unwrap_or_else(|| panic!("no n/a reason for snapshots: {nspawn:#}"));
    assert!(na.contains("not supported"), "{na}");

    let points = report["scaling"]["points"].as_array().unwrap();
    let counts: Vec<u64> = points
        .iter()
        .map(|p| p["nodes"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 2]);
    for p in points {
        assert_summary(&p["start_all_ms"], "start_all_ms");
        assert_positive(&p["per_node_ms"], "per_node_ms");
    }

    assert_positive(&report["attest"]["peak_rss_mib"], "peak RSS");
    assert_positive(&report["attest"]["usage"]["self_user_s"], "attest user CPU");
    assert!(!report["date"].as_str().unwrap_or("").is_empty());
    for k in ["cpu_model", "kernel"] {
        let v = report["machine"][k].as_str().unwrap_or("");
        assert!(!v.is_empty(), "{k}: {report:#}");
    }
    let version = nspawn["version"].as_str().unwrap_or("");
    assert!(version.starts_with("systemd"), "{nspawn:#}");

    let fc = backend(&report, "firecracker");
    assert_eq!(fc["available"], false, "{fc:#}");
    let reason = fc["reason"].as_str().unwrap_or("");
    assert!(!reason.is_empty(), "{fc:#}");
    assert!(
        stdout.contains(&format!("firecracker: unavailable: {reason}")),
        "{stdout}"
    );
    assert!(stdout.contains("boot: start → backdoor ready"), "{stdout}");
}

#[test]
fn unknown_and_unusable_backends_are_listed_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let args = [
        "--backends",
        "cloud-hypervisor,ssh,nosuch",
        "--scaling",
        "none",
    ];
    let (code, stdout, stderr) = run(bench_command(&args, &json), Duration::from_secs(30));
    assert_eq!(
        code,
        Some(PASSED.into()),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report = read_json(&json);
    for name in ["cloud-hypervisor", "ssh", "nosuch"] {
        let b = backend(&report, name);
        assert_eq!(b["available"], false, "{b:#}");
        assert!(!b["reason"].as_str().unwrap_or("").is_empty(), "{b:#}");
        assert!(
            stdout.contains(&format!("{name}: unavailable: ")),
            "{stdout}"
        );
    }
    let reason = backend(&report, "nosuch")["reason"].as_str().unwrap();
    assert!(reason.contains("unknown backend"), "{reason}");
}

#[test]
fn ctrl_c_tears_everything_down_and_keeps_partial_figures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let args = ["--backends", "nspawn", "--runs", "3", "--scaling", "none"];
    let mut child = bench_command(&args, &json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn attest");
    let pid = child.id();
    let out = read_all(child.stdout.take().unwrap());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let start = Instant::now();
    let mut seen = String::new();
    // Interrupt while the second run's guest is up (the first run is done).
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("attest exited before the guest came up:\n{seen}");
        }
        seen.push_str(&line);
        if seen.contains("single-node run 2/3") && line.contains("n01: up") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{seen}");
    }
    assert!(
        !leftover_containers(pid).is_empty(),
        "the guest should be running now"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let rest = read_all(stderr);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "attest did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (rest, out) = (rest.join().unwrap(), out.join().unwrap());
    assert_eq!(status.code(), Some(FAILED.into()), "{seen}{rest}");
    let left = leftover_containers(pid);
    assert!(left.is_empty(), "{left:?}");
    assert!(out.contains("bench incomplete: "), "{out}");
    let report = read_json(&json);
    let why = report["interrupted"].as_str().unwrap_or("");
    assert!(why.contains("SIGINT"), "{report:#}");
    // The first run's figures survive the interruption.
    let nspawn = backend(&report, "nspawn");
    assert_summary(&nspawn["figures"]["boot_backdoor_ms"], "boot");
}
