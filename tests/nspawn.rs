//! The driver against real systemd-nspawn containers booting the Debian test
//! image: the examples, the whole script API, failures, faults and cleanup.
//! Needs root and `images/debian/build`.

mod harness;

use std::time::{Duration, Instant};

use attest::exit_code::{interrupted, FAILED, PASSED};
use harness::{assert_nothing_left, attest, TestDir};

const LIMIT: Duration = Duration::from_secs(180);

fn run(dir: &TestDir) -> harness::Run {
    attest(
        &["run", "--quiet-console", dir.config().to_str().unwrap()],
        LIMIT,
    )
}

/// Runs with the JSON event log; returns the run and the failure cause of
/// its `test_finished` event.
fn run_logged(dir: &TestDir) -> (harness::Run, serde_json::Value) {
    let events = dir.path("events.jsonl");
    let r = attest(
        &[
            "run",
            "--quiet-console",
            "--log-json",
            events.to_str().unwrap(),
            dir.config().to_str().unwrap(),
        ],
        LIMIT,
    );
    let events = std::fs::read_to_string(&events).unwrap();
    let finished = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "test_finished")
        .expect("a test_finished event");
    (r, finished["cause"].clone())
}

#[test]
fn the_examples_pass() {
    harness::image_manifest();
    for example in ["single", "nginx"] {
        let config = format!(
            "{}/examples/{example}/test.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let r = attest(&["run", "--quiet-console", &config], LIMIT);
        assert_eq!(
            r.code,
            Some(PASSED.into()),
            "example {example} failed:\n{}",
            r.stderr
        );
        assert!(r.stderr.contains("test passed"), "{}", r.stderr);
        assert_nothing_left(&r, example);
    }
}

/// Every script method and global at least once, on real containers, with
/// the guest agent.
#[test]
fn the_script_api_works_on_real_containers() {
    script_api_tour("agent");
}

/// The same with the bash backdoor protocol.
#[test]
fn the_script_api_works_on_real_containers_with_the_bash_protocol() {
    script_api_tour("bash");
}

fn script_api_tour(protocol: &str) {
    let name = format!("api-{protocol}");
    let dir = TestDir::nspawn(
        &name,
        &["server", "client"],
        "",
        r#"
start_all();
wait_all([server, client], |m| m.wait_for_unit("multi-user.target"));

subtest("commands", || {
    let r = execute(server, "echo out; echo err >&2; exit 4", #{ timeout: 10 });
    assert_eq(r.status, 4);
    assert_eq(r.stdout, "out\n");
    assert_eq(r.stderr, "err\n");
    assert_eq(server.succeed("echo a", "echo b"), "a\nb\n");
    assert_eq(succeed(server, ["echo c", "echo d"]), "c\nd\n");
    server.fail("false");
    // Where and with what NixOS's backdoor runs commands (the image's
    // backdoor itself starts in / without DISPLAY).
    assert_eq(server.succeed("pwd; echo \"$DISPLAY\" \"${PAGER-unset}\""), "/tmp\n:0.0 \n");
    let n = server.wait_until_succeeds("test -e /tmp/flag || { touch /tmp/flag; false; }", #{ timeout: 20 });
    server.wait_until_fails("rm /tmp/flag", #{ timeout: 20 });
    subtest("nested", || log("inside a nested subtest"));
});

subtest("systemd", || {
    server.wait_for_unit("nginx.service");
    server.require_unit_state("nginx.service", "active");
    let info = server.get_unit_info("nginx.service");
    assert_eq(info["ActiveState"], "active");
    assert_eq(server.get_unit_property("nginx.service", "SubState"), "running");
    let st = server.systemctl("is-active nginx.service");
    assert_eq(st.stdout, "active\n");
    server.stop_job("nginx.service");
    server.wait_for_closed_port(80);
    server.start_job("nginx.service");
    server.wait_for_open_port(80, #{ timeout: 30 });
    assert_contains(server.journal("nginx.service", 50), "nginx");
    server.succeed("systemd-run --unit=attest-sock socat UNIX-LISTEN:/run/t.sock,fork EXEC:cat");
    server.wait_for_open_unix_socket("/run/t.sock");
    server.succeed("(sleep 1; touch /tmp/later) >/dev/null 2>&1 &");
    server.wait_for_file("/tmp/later");
    server.succeed("echo attest-console-marker > /dev/console");
    server.wait_for_console_text("attest-console-marker");
    assert_contains(server.get_console_log(), "attest-console-marker");
});

subtest("files", || {
    server.succeed("head -c 300000 /dev/urandom > /tmp/blob; sha256sum /tmp/blob | cut -c1-64 > /tmp/blob.sum");
    server.copy_from_machine("/tmp/blob", "out");
    server.copy_from_vm("/tmp/blob.sum", "out");
    client.copy_from_host("out/blob", "/root/blob");
    let sum = client.succeed("sha256sum /root/blob | cut -c1-64");
    assert_eq(sum, server.succeed("cat /tmp/blob.sum"));
    client.copy_from_host("out", "/root/outdir");
    client.succeed("test -s /root/outdir/blob.sum");
});

subtest("network and helpers", || {
    assert_contains(client.wait_until_succeeds("curl -sf http://server"), "nginx");
    assert_matches(client.succeed("ip -4 addr show eth1"), "192\\.168\\.1\\.1/24");
    let tries = 0;
    retry(#{ attempts: 5, delay: 0.1 }, || { tries += 1; if tries < 3 { throw "not yet"; } });
    assert_eq(tries, 3);
    let names = wait_all([server, client], |m| m.succeed("hostname"));
    assert_eq(names, ["server\n", "client\n"]);
    // Each closure runs on a thread of its own; its subtest keeps its parent.
    wait_all([server, client], |m| subtest("inside wait_all", || m.succeed("true")));
    sleep(0.1);
    server.sleep(0.1);
    server.log("a machine log line");
});

subtest("backend-specific calls say they are unsupported", || {
    // `attest check` refuses `server.screenshot(…)`; through `machines` the
    // call is refused at run time, from the same table.
    let server = machines[1];
    try { server.screenshot("x.png"); throw "no error"; }
    catch (e) { assert_contains(`${e}`, "screenshot is not supported by the nspawn backend"); }
    try { server.guest_screenshot("shot.png"); throw "no error"; }
    catch (e) { assert_contains(`${e}`, "the guest has no way to capture its screen"); }
    try { server.snapshot_create("snap"); throw "no error"; }
    catch (e) { assert_contains(`${e}`, "snapshot_create is not supported by the nspawn backend"); }
});

subtest("lifecycle", || {
    client.crash();
    client.start();
    client.wait_for_unit("multi-user.target");
    client.shutdown();
    client.start();
    client.succeed("true");
});
"#,
    );
    let r = attest(
        &[
            "run",
            "--quiet-console",
            dir.config().to_str().unwrap(),
            "--junit",
            dir.path("junit.xml").to_str().unwrap(),
            "--log-json",
            dir.path("events.jsonl").to_str().unwrap(),
            "--protocol",
            protocol,
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("({protocol} protocol)")),
        "{}",
        r.stderr
    );
    let junit = std::fs::read_to_string(dir.path("junit.xml")).unwrap();
    for case in [
        "commands",
        "commands / nested",
        "network and helpers / inside wait_all",
        "systemd",
        "files",
        "lifecycle",
    ] {
        assert!(junit.contains(&format!("name=\"{case}\"")), "{junit}");
    }
    let events = std::fs::read_to_string(dir.path("events.jsonl")).unwrap();
    assert!(events
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    assert!(
        events.contains(r#""event":"test_finished""#) && events.contains(r#""outcome":"passed""#)
    );
    assert_nothing_left(&r, &name);
}

#[test]
fn a_failing_command_fails_the_test_with_context() {
    let dir = TestDir::nspawn(
        "failing",
        &["machine"],
        "",
        "machine.start();\nmachine.succeed(\"echo some-output; echo some-error >&2; exit 3\");\n",
    );
    let (r, cause) = run_logged(&dir);
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert_eq!(cause, "command-failed");
    for needle in [
        "test.rhai:2:",
        "machine: succeed `echo some-output; echo some-error >&2; exit 3` failed (exit status 3)",
        "some-output",
        "some-error",
        "test failed",
    ] {
        assert!(
            r.stderr.contains(needle),
            "missing {needle:?} in:\n{}",
            r.stderr
        );
    }
    assert_nothing_left(&r, "failing");
}

#[test]
fn wait_for_unit_fails_at_once_on_a_failed_unit_with_diagnostics() {
    let dir = TestDir::nspawn(
        "unitfail",
        &["machine"],
        "",
        "machine.start();\nmachine.succeed(\"systemd-run --unit=doomed.service false\");\nmachine.wait_for_unit(\"doomed.service\", #{ timeout: 120 });\n",
    );
    let r = run(&dir);
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("unit \"doomed.service\" reached state \"failed\""),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--- failed units:"), "{}", r.stderr);
    assert!(r.stderr.contains("doomed.service"), "{}", r.stderr);
    assert!(
        r.stderr.contains("--- last 30 journal lines:"),
        "{}",
        r.stderr
    );
    assert!(r.elapsed < Duration::from_secs(60), "{:?}", r.elapsed);
}

#[test]
fn a_container_killed_mid_command_fails_the_call_at_once() {
    let dir = TestDir::nspawn(
        "killed",
        &["victim"],
        "",
        "victim.start();\nvictim.succeed(\"sleep 120\");\n",
    );
    let started = Instant::now();
    let child = harness::spawn(&["run", "--quiet-console", dir.config().to_str().unwrap()]);
    // Wait for the container, then kill its PID 1 from outside.
    let leader = container_leader(child.id(), 1);
    let killed_at = Instant::now();
    let leader: i32 = leader.trim().parse().expect("the leader's pid");
    assert!(leader > 1, "not a container leader: {leader}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the container's PID 1");
    let r = harness::finish(child, started, LIMIT);
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(
        killed_at.elapsed() < Duration::from_secs(20),
        "took {:?}",
        killed_at.elapsed()
    );
    assert!(r.stderr.contains("victim: "), "{}", r.stderr);
    assert!(
        r.stderr.contains("while running `sleep 120`"),
        "{}",
        r.stderr
    );
    // The container's fate, not nspawn's status.
    assert!(
        r.stderr.contains("killed by signal 9 (SIGKILL)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("exited with status 1"), "{}", r.stderr);
    assert_nothing_left(&r, "killed");
}

/// The container killed while a wait polls: the wait fails at once with
/// either protocol, naming the machine, how it died and the wait (not the
/// probe the bash protocol happened to run, nor "not running").
#[test]
fn a_container_killed_mid_wait_fails_the_wait_at_once() {
    let dir = TestDir::nspawn(
        "killedwait",
        &["victim"],
        "",
        "victim.start();\nvictim.wait_for_file(\"/nonexistent\", #{ timeout: 120 });\n",
    );
    for protocol in ["agent", "bash"] {
        let started = Instant::now();
        let child = harness::spawn(&[
            "run",
            "--quiet-console",
            "--protocol",
            protocol,
            dir.config().to_str().unwrap(),
        ]);
        let leader: i32 = container_leader(child.id(), 1).trim().parse().unwrap();
        assert!(leader > 1, "not a container leader: {leader}");
        std::thread::sleep(Duration::from_secs(2));
        let killed_at = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(leader),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let r = harness::finish(child, started, LIMIT);
        assert_eq!(r.code, Some(FAILED.into()), "{protocol}: {}", r.stderr);
        assert!(killed_at.elapsed() < Duration::from_secs(20), "{protocol}");
        assert!(
            r.stderr.contains(
                "victim: killed by signal 9 (SIGKILL) while running `wait_for_file /nonexistent`"
            ),
            "{protocol}: {}",
            r.stderr
        );
        assert_nothing_left(&r, "killedwait");
    }
}

/// Starts a two-node test, waits until both containers run, sends SIGTERM
/// and checks the teardown.
fn sigterm_during(name: &str, script: &str) {
    signal_during(name, script, nix::sys::signal::Signal::SIGTERM)
}

/// Sends `signal` to the run `child`, waits for it, and checks that it
/// exited with 128 + the signal, saying `expected`.
fn interrupt(
    child: std::process::Child,
    started: Instant,
    signal: nix::sys::signal::Signal,
    expected: &str,
) -> harness::Run {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let r = harness::finish(child, started, LIMIT);
    assert_eq!(
        r.code,
        Some(interrupted(signal as i32).into()),
        "128 + {signal}: {}",
        r.stderr
    );
    assert!(r.stderr.contains(expected), "{expected}\n---\n{}", r.stderr);
    r
}

/// [`sigterm_during`] with `signal`.
fn signal_during(name: &str, script: &str, signal: nix::sys::signal::Signal) {
    let dir = TestDir::nspawn(name, &["a", "b"], "", script);
    let started = Instant::now();
    let child = harness::spawn(&["run", "--quiet-console", dir.config().to_str().unwrap()]);
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness::processes_matching(&format!("--machine=attest-{pid}-")).len() < 2 {
        assert!(Instant::now() < deadline, "containers never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let signalled = Instant::now();
    let r = interrupt(child, started, signal, &format!("interrupted by {signal}"));
    assert!(
        signalled.elapsed() < Duration::from_secs(30),
        "teardown took {:?}",
        signalled.elapsed()
    );
    assert_nothing_left(&r, name);
}

#[test]
fn sigterm_tears_everything_down() {
    sigterm_during("sigterm", "start_all();\na.succeed(\"sleep 120\");\n");
}

/// Ctrl-C (one SIGINT) during a long command: the same ordered teardown,
/// 128 + SIGINT.
#[test]
fn sigint_during_a_long_command_tears_everything_down() {
    signal_during(
        "sigint",
        "start_all();\nb.succeed(\"sleep 120\");\n",
        nix::sys::signal::Signal::SIGINT,
    );
}

/// A signal that comes only during teardown (here a unit that takes its
/// time to stop): every machine is still torn down, and the run is
/// interrupted (128 + N), not passed.
#[test]
fn a_signal_during_teardown_still_tears_down_and_exits_128_plus_n() {
    use nix::sys::signal::Signal;
    for (signal, name) in [
        (Signal::SIGTERM, "teardownterm"),
        (Signal::SIGINT, "teardownint"),
    ] {
        let dir = TestDir::nspawn(
            name,
            &["machine"],
            "",
            "machine.start();\nmachine.succeed(\"systemd-run --unit=slowstop -p KillSignal=SIGCONT -p TimeoutStopSec=60 sleep 1000\");\n",
        );
        let log = dir.path("events.jsonl");
        let started = Instant::now();
        let child = harness::spawn(&[
            "run",
            "--quiet-console",
            "--log-json",
            log.to_str().unwrap(),
            dir.config().to_str().unwrap(),
        ]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(r#""name":"tearing down""#)
        {
            assert!(Instant::now() < deadline, "the teardown never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        let r = interrupt(
            child,
            started,
            signal,
            &format!(
                "interrupted by {signal} during teardown (every machine was still torn down); the script had passed"
            ),
        );
        assert!(
            r.stderr.contains("machine: off (torn down)"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("test passed"), "{}", r.stderr);
        assert_nothing_left(&r, name);
    }
}

#[test]
fn sigterm_interrupts_a_script_sleep() {
    sigterm_during(
        "sigterm-sleep",
        "start_all();\nsleep(120);\nlog(\"not reached\");\n",
    );
}

#[test]
fn the_global_timeout_ends_the_test() {
    let dir = TestDir::nspawn(
        "globaltimeout",
        &["machine"],
        r#""global_timeout": 8"#,
        "machine.start();\nmachine.succeed(\"sleep 120\");\n",
    );
    let (r, cause) = run_logged(&dir);
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert_eq!(cause, "cancelled");
    assert!(
        r.stderr.contains("`global_timeout` of 8 seconds"),
        "{}",
        r.stderr
    );
    assert!(r.elapsed < Duration::from_secs(40), "{:?}", r.elapsed);
    assert_nothing_left(&r, "globaltimeout");
}

/// A script that boots nothing: the run only prepares (and sweeps).
const NO_BOOT: &str = "log(\"nothing to boot\");\n";

#[test]
fn kept_state_survives_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = TestDir::nspawn("keepstate", &["machine"], "", "machine.start();\n");
    let r = harness::attest_in(
        tmp.path(),
        &[
            "run",
            "--quiet-console",
            "--keep-state",
            dir.config().to_str().unwrap(),
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    let kept = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("keeping state in "))
        .expect("state dir logged")
        .to_owned();
    assert!(std::path::Path::new(&kept).join("machine").is_dir());
    // The next run's janitor must leave it alone.
    let next = TestDir::nspawn("afterkeep", &["machine"], "", NO_BOOT);
    let r = harness::attest_in(tmp.path(), &["run", next.config().to_str().unwrap()], LIMIT);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(
        std::path::Path::new(&kept).join("machine").is_dir(),
        "the kept state dir {kept} was removed by the next run"
    );
}

/// The first run's state dir under `tmp`, once it exists.
fn wait_for_state_dir(tmp: &std::path::Path, name: &str) -> std::path::PathBuf {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(d) = harness::state_dirs(tmp).into_iter().find(|d| {
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("attest-{name}-"))
        }) {
            return d;
        }
        assert!(Instant::now() < deadline, "no state dir for {name}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until attest `pid` has `n` containers running.
fn wait_for_containers(pid: u32, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness::processes_matching(&format!("--machine=attest-{pid}-"))
        .iter()
        .filter(|l| l.contains("systemd-nspawn"))
        .count()
        < n
    {
        assert!(Instant::now() < deadline, "containers never started");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ownership is a lock, not a process name: a run of a renamed binary is
/// alive for the janitor of a second run sharing its TMPDIR.
#[test]
fn a_live_run_of_a_renamed_binary_keeps_its_state() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("tdrv");
    std::fs::copy(env!("CARGO_BIN_EXE_attest"), &bin).unwrap();
    let first = TestDir::nspawn(
        "renamed",
        &["machine"],
        "",
        "machine.start();\nmachine.wait_for_file(\"/run/backdoor/go\", #{ timeout: 60 });\nmachine.succeed(\"true\");\n",
    );
    let started = Instant::now();
    let a = harness::spawn_binary(
        &bin,
        tmp.path(),
        &["run", "--quiet-console", first.config().to_str().unwrap()],
        false,
    );
    wait_for_containers(a.id(), 1);
    let state = wait_for_state_dir(tmp.path(), "renamed");
    let second = TestDir::nspawn("second", &["machine"], "", NO_BOOT);
    let b = harness::spawn_binary(
        &bin,
        tmp.path(),
        &["run", second.config().to_str().unwrap()],
        false,
    );
    let rb = harness::finish(b, Instant::now(), LIMIT);
    assert_eq!(rb.code, Some(PASSED.into()), "{}", rb.stderr);
    assert!(
        state.join("machine").is_dir(),
        "the second run removed the live first run's state dir {}",
        state.display()
    );
    // Let the first run go on: a new backdoor connection needs the socket.
    std::fs::write(state.join("machine/backdoor/go"), "").unwrap();
    let ra = harness::finish(a, started, LIMIT);
    assert_eq!(ra.code, Some(PASSED.into()), "{}", ra.stderr);
    assert_nothing_left(&ra, "renamed");
}

#[test]
fn a_crashed_machine_leaves_nothing_behind() {
    let dir = TestDir::nspawn(
        "crashclean",
        &["machine"],
        "",
        "machine.start();\nmachine.crash();\n",
    );
    let r = run(&dir);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert_nothing_left(&r, "crashclean");
}

/// SIGKILL to attest: its processes die with it, and the next run sweeps
/// its state dir and cgroups; nspawn's runtime dirs never reach the host.
#[test]
fn after_sigkill_the_next_run_sweeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = TestDir::nspawn("sigkill", &["a", "b"], "", "start_all();\nsleep(120);\n");
    let started = Instant::now();
    let child = harness::spawn_in(
        tmp.path(),
        &["run", "--quiet-console", dir.config().to_str().unwrap()],
    );
    let pid = child.id();
    wait_for_containers(pid, 2);
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let r = harness::finish(child, started, LIMIT);
    assert_eq!(r.code, None, "killed by a signal");
    let next = TestDir::nspawn("sweeper", &["machine"], "", NO_BOOT);
    // The kernel takes the containers down asynchronously.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = harness::attest_in(tmp.path(), &["run", next.config().to_str().unwrap()], LIMIT);
        assert_eq!(n.code, Some(PASSED.into()), "{}", n.stderr);
        if harness::host_leftovers(pid).is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_nothing_left(&r, "sigkill");
}

/// A pass prints nothing that reads as an error, console lines included.
#[test]
fn a_passing_run_prints_nothing_that_looks_like_an_error() {
    harness::image_manifest();
    let config = format!("{}/examples/nginx/test.json", env!("CARGO_MANIFEST_DIR"));
    let r = attest(&["run", &config], LIMIT);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    let alarming: Vec<&str> = r
        .stderr
        .lines()
        // The script's own call, `client.fail(…)`, is logged as "must fail".
        .filter(|l| !l.contains("must fail"))
        .filter(|l| {
            let l = l.to_lowercase();
            ["fail", "error", "attempted", "cannot", "unable", "warn"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    assert!(
        alarming.is_empty(),
        "a pass printed:\n{}",
        alarming.join("\n")
    );
    assert_nothing_left(&r, "nginx");
}

/// The leader (the container's init) of attest `pid`'s container `n`, a few
/// seconds into its boot.
fn container_leader(pid: u32, n: u32) -> String {
    let needle = format!("--machine=attest-{pid}-{n}-");
    let deadline = Instant::now() + Duration::from_secs(60);
    let nspawn_pid = loop {
        // nspawn itself, not the unshare or sh that carry its command line.
        let found = harness::processes_matching(&needle);
        if let Some(line) = found.iter().find(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|argv0| argv0.ends_with("systemd-nspawn"))
        }) {
            break line.split(':').next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "container never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    // nspawn's first children are transient: let the container boot.
    std::thread::sleep(Duration::from_secs(3));
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children"))
                .unwrap_or_default();
        if let Some(leader) = children.split_whitespace().next() {
            return leader.to_owned();
        }
        assert!(Instant::now() < deadline, "container has no leader");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A machine killed between commands is reported when it dies; the next
/// call fails at once naming the cause; states tell what happened.
#[test]
fn an_idle_machine_that_dies_is_reported_at_once() {
    let dir = TestDir::nspawn(
        "idledeath",
        &["victim"],
        "",
        "victim.start();\nvictim.succeed(\"touch /run/backdoor/up\");\nsleep(10);\nlog(\"after the sleep\");\nvictim.succeed(\"true\");\n",
    );
    let started = Instant::now();
    let child = harness::spawn(&["run", "--quiet-console", dir.config().to_str().unwrap()]);
    let leader = container_leader(child.id(), 1);
    let leader: i32 = leader.trim().parse().expect("the leader's pid");
    assert!(leader > 1, "not a container leader: {leader}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the container's PID 1");
    let r = harness::finish(child, started, LIMIT);
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    let died = r
        .stderr
        .find("victim: died (killed by signal 9 (SIGKILL))")
        .unwrap_or_else(|| panic!("death not reported:\n{}", r.stderr));
    let after = r
        .stderr
        .find("after the sleep")
        .expect("the script went on");
    assert!(died < after, "reported only later:\n{}", r.stderr);
    assert!(
        r.stderr.contains(
            "victim is not running (died: killed by signal 9 (SIGKILL)): start it again with start()"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("torn down"), "{}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(40), "{:?}", r.elapsed);
    assert_nothing_left(&r, "idledeath");
}

/// A clean shutdown is "off"; a boot cut short by SIGTERM is "interrupted".
#[test]
fn states_say_what_happened() {
    let dir = TestDir::nspawn(
        "offstate",
        &["machine"],
        "",
        "machine.start();\nmachine.shutdown();\n",
    );
    let r = run(&dir);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(
        r.stderr.lines().any(|l| l == "machine: off"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("off (exited"), "{}", r.stderr);
    assert_nothing_left(&r, "offstate");

    // No backdoor: the boot waits until SIGTERM cuts it short.
    let dir = without_backdoor("bootterm");
    let started = Instant::now();
    let child = harness::spawn(&["run", "--quiet-console", dir.config().to_str().unwrap()]);
    let pid = child.id();
    container_leader(pid, 1);
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let r = harness::finish(child, started, LIMIT);
    assert!(r.stderr.contains("machine: interrupted"), "{}", r.stderr);
    assert!(!r.stderr.contains("crashed"), "{}", r.stderr);
    assert_nothing_left(&r, "bootterm");
}

/// A one-node test whose container never starts its backdoor: its boot
/// waits until something cuts it short.
fn without_backdoor(name: &str) -> TestDir {
    TestDir::new(
        name,
        &format!(
            r#"{{"machine":{{"backend":{{"nspawn":{{"image":"{}","extra_args":["--bind-ro=/dev/null:/etc/systemd/system/attest-backdoor-unix.service"]}}}}}}}}"#,
            harness::image_manifest().display()
        ),
        "",
        "machine.start();\n",
    )
}

/// Ctrl-C (one SIGINT) during a boot: 128 + SIGINT, the boot cut short,
/// nothing left.
#[test]
fn sigint_during_boot_tears_everything_down() {
    let dir = without_backdoor("bootint");
    let started = Instant::now();
    let child = harness::spawn(&["run", "--quiet-console", dir.config().to_str().unwrap()]);
    container_leader(child.id(), 1);
    std::thread::sleep(Duration::from_secs(2));
    let r = interrupt(
        child,
        started,
        nix::sys::signal::Signal::SIGINT,
        "interrupted by SIGINT",
    );
    assert!(r.stderr.contains("machine: interrupted"), "{}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(60), "{:?}", r.elapsed);
    assert_nothing_left(&r, "bootint");
}

/// A second signal exits at once, also with 128 + signal; the kernel takes
/// the containers down and the next run sweeps what is left.
#[test]
fn a_double_signal_exits_128_plus_signal_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = TestDir::nspawn("double", &["a", "b"], "", "start_all();\nsleep(120);\n");
    let started = Instant::now();
    let child = harness::spawn_in(
        tmp.path(),
        &["run", "--quiet-console", dir.config().to_str().unwrap()],
    );
    let pid = child.id();
    wait_for_containers(pid, 2);
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..2 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = harness::finish(child, started, LIMIT);
    assert_eq!(
        r.code,
        Some(interrupted(nix::sys::signal::Signal::SIGINT as i32).into()),
        "128 + SIGINT: {}",
        r.stderr
    );
    let next = TestDir::nspawn("sweeper", &["machine"], "", NO_BOOT);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = harness::attest_in(tmp.path(), &["run", next.config().to_str().unwrap()], LIMIT);
        assert_eq!(n.code, Some(PASSED.into()), "{}", n.stderr);
        if harness::host_leftovers(pid).is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_nothing_left(&r, "double");
}
