//! The guest agent on real systemd-nspawn containers: faults, limits,
//! concurrency and the fallback to the bash protocol. The whole script API
//! runs with both protocols in `nspawn.rs`. Needs root and the Debian image.

mod harness;

use std::time::{Duration, Instant};

use attest::exit_code::{FAILED, PASSED};
use harness::{assert_nothing_left, attest, TestDir};

const LIMIT: Duration = Duration::from_secs(180);

fn run_with(dir: &TestDir, args: &[&str]) -> harness::Run {
    let config = dir.config();
    let mut all = vec!["run", "--quiet-console", config.to_str().unwrap()];
    all.extend_from_slice(args);
    attest(&all, LIMIT)
}

#[test]
fn the_agent_killed_mid_command_fails_the_call_at_once() {
    let dir = TestDir::nspawn(
        "agentkill",
        &["victim"],
        "",
        // The command's parent is the agent: one fork+exec per command.
        // The next call gets a fresh agent, as it would a fresh bash session.
        r#"
victim.start();
try { victim.succeed("kill -9 $PPID; sleep 120"); } catch (e) { log(`first: ${e}`); }
victim.succeed("echo the agent is back");
victim.succeed("kill -9 $PPID; sleep 120");
"#,
    );
    let r = run_with(&dir, &["--protocol", "agent"]);
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(30), "took {:?}", r.elapsed);
    assert!(
        r.stderr
            .contains("victim: kill -9 $PPID; sleep 120: guest channel closed"),
        "{}",
        r.stderr
    );
    assert_nothing_left(&r, "agentkill");
}

#[test]
fn timeouts_floods_and_concurrency() {
    let dir = TestDir::nspawn(
        "agentlimits",
        &["machine"],
        "",
        r#"
machine.start();
// A command hanging past its timeout: its whole process group is killed.
let t = timestamp();
let r = machine.execute("(sleep 1000 &); sleep 1000", #{ timeout: 2 });
assert_eq(r.status, 124);
if t.elapsed > 10.0 { throw `the timeout took ${t.elapsed} s`; }
machine.fail("pgrep -x sleep");

// On nspawn the agent serves a socket of its own in the bind-mounted
// /run/backdoor, not the backdoor's relayed stream.
let args = machine.succeed("tr '\\0' ' ' </proc/$PPID/cmdline");
if !args.contains("--connect /run/backdoor/agent-") { throw `the agent runs as: ${args}`; }

// A flood arrives whole.
let out = machine.succeed("head -c 200000000 /dev/zero | tr '\\0' x");
assert_eq(out.len, 200000000);

// 50 commands at once on one machine.
let ms = [];
for i in 0..50 { ms.push(machine); }
let t = timestamp();
let outs = wait_all(ms, |m| m.succeed("sleep 1; echo done"));
assert_eq(outs.len, 50);
// They ran at once (in turn they take 50 s); how fast is the bench's figure.
if t.elapsed > 10.0 { throw `50 concurrent sleep 1 took ${t.elapsed} s: not concurrent`; }

// Binary output, byte for byte; a background process holding stdout
// does not hold the reply.
machine.succeed("head -c 1000000 /dev/urandom > /root/blob");
machine.copy_from_machine("/root/blob", "out");
machine.copy_from_host("out/blob", "/root/blob2");
machine.succeed("cmp /root/blob /root/blob2");
let t = timestamp();
assert_eq(machine.succeed("sleep 60 & echo started"), "started\n");
if t.elapsed > 5.0 { throw "a background process held the reply"; }
"#,
    );
    let r = run_with(&dir, &["--protocol", "agent"]);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(r.stderr.contains("(agent protocol)"), "{}", r.stderr);
    assert_nothing_left(&r, "agentlimits");
}

#[test]
fn a_guest_where_the_agent_cannot_run_falls_back_to_bash_with_the_reason() {
    // /run/attest noexec: the upload works, running it does not.
    let manifest = harness::image_manifest();
    let nodes = format!(
        r#"{{"machine":{{"backend":{{"nspawn":{{"image":"{}","extra_args":["--tmpfs=/run/attest:mode=0700,noexec"]}}}}}}}}"#,
        manifest.display()
    );
    let dir = TestDir::new(
        "agentnoexec",
        &nodes,
        "",
        "machine.start();\nassert_eq(machine.succeed(\"echo via-bash\"), \"via-bash\\n\");\n",
    );
    let r = run_with(&dir, &[]);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    for needle in [
        "machine: using the bash protocol: the agent cannot run in the guest",
        "Permission denied",
        "(bash protocol)",
    ] {
        assert!(
            r.stderr.contains(needle),
            "missing {needle:?}:\n{}",
            r.stderr
        );
    }
    // Forced, the same guest is an error that names the machine.
    let r = run_with(&dir, &["--protocol", "agent"]);
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("machine: (starting the guest agent): the agent cannot run"),
        "{}",
        r.stderr
    );
    assert_nothing_left(&r, "agentnoexec");
}

/// The agent travels gzipped where the guest has gzip; a guest without
/// it gets the raw binary and runs the agent all the same.
#[test]
fn a_guest_without_gzip_gets_the_agent_uncompressed() {
    let manifest = harness::image_manifest();
    let nodes = format!(
        r#"{{"machine":{{"backend":{{"nspawn":{{"image":"{}","extra_args":["--bind-ro=/dev/null:/usr/bin/gzip"]}}}}}}}}"#,
        manifest.display()
    );
    let dir = TestDir::new(
        "agentnogzip",
        &nodes,
        "",
        "machine.start();\nmachine.fail(\"gzip --version\");\nassert_eq(machine.succeed(\"echo via-agent\"), \"via-agent\\n\");\n",
    );
    let r = run_with(&dir, &["--protocol", "agent"]);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(r.stderr.contains("(agent protocol)"), "{}", r.stderr);
    assert_nothing_left(&r, "agentnogzip");
}

#[test]
fn a_broken_agent_binary_falls_back_to_bash() {
    let dir = TestDir::nspawn(
        "agentbad",
        &["machine"],
        "",
        "machine.start();\nmachine.succeed(\"true\");\n",
    );
    let bad = dir.path("not-an-agent");
    std::fs::write(&bad, b"\x7fELF but not really").unwrap();
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("harness-tmp-")
        .tempdir()
        .unwrap()
        .keep();
    // `env` execs attest in place: the pid the harness records stays attest's.
    let child = harness::spawn_binary(
        std::path::Path::new("env"),
        &tmp,
        &[
            &format!("ATTEST_AGENT={}", bad.display()),
            env!("CARGO_BIN_EXE_attest"),
            "run",
            "--quiet-console",
            dir.config().to_str().unwrap(),
        ],
        true,
    );
    let r = harness::finish(child, started, LIMIT);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("machine: using the bash protocol: the agent cannot run in the guest"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("(bash protocol)"), "{}", r.stderr);
    assert_nothing_left(&r, "agentbad");
}

/// `--live-output`: with the agent a command's lines arrive while it runs
/// (in the human log and as `command_output` events in `--log-json`); with
/// the bash protocol the same lines arrive when it ends.
#[test]
fn live_output_streams_lines_as_they_are_written() {
    let dir = TestDir::nspawn(
        "agentlive",
        &["machine"],
        "",
        r#"
machine.start();
subtest("live", || machine.succeed("echo one; sleep 2; echo two >&2; printf three"));
"#,
    );
    for protocol in ["agent", "bash"] {
        let log = dir.path(&format!("events-{protocol}.json"));
        let r = run_with(
            &dir,
            &[
                "--protocol",
                protocol,
                "--live-output",
                "--log-json",
                log.to_str().unwrap(),
            ],
        );
        assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
        for shown in [
            "machine stdout> one",
            "machine stderr> two",
            "machine stdout> three",
        ] {
            assert!(
                r.stderr.contains(shown),
                "{protocol}: no {shown:?} in\n{}",
                r.stderr
            );
        }
        let text = std::fs::read_to_string(&log).unwrap();
        let at = |line: &str| -> f64 {
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|e| e["event"] == "command_output" && e["line"] == line)
                .unwrap_or_else(|| panic!("{protocol}: no event for {line:?} in\n{text}"))
                ["elapsed"]
                .as_f64()
                .unwrap()
        };
        let (one, two) = (at("one"), at("two"));
        at("three");
        // The lines belong to the call's section, inside the subtest.
        for e in text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["event"] == "command_output")
        {
            assert_eq!(e["depth"], 2, "{protocol}: {e}");
        }
        assert!(
            r.stderr.contains("\n    machine stdout> one\n"),
            "{protocol}: not indented as its section:\n{}",
            r.stderr
        );
        if protocol == "agent" {
            assert!(
                two - one > 1.5,
                "agent: 'one' at {one} s, 'two' at {two} s: not live"
            );
        } else {
            assert!(two - one < 1.0, "bash: 'one' at {one} s, 'two' at {two} s");
        }
        assert_nothing_left(&r, "agentlive");
    }
}

/// Every wait, with either protocol: met when its condition becomes true a
/// second later, `wait_for_unit` failing at once on a failed unit, and the
/// same timeout errors; nothing of a timed-out wait left in the guest.
/// With the agent a wait is one request retried in the guest (see
/// `agent::wait`); with bash the host polls.
fn waits_script() -> &'static str {
    r#"
// Runs `cmd` in the guest a second from now, outside the caller.
fn later(m, cmd) { m.succeed(`systemd-run -q --collect sh -c 'sleep 1; ${cmd}'`); }
machine.start();
machine.wait_for_unit("multi-user.target");

let t = timestamp();
later(machine, "touch /run/later-file");
machine.wait_for_file("/run/later-file", #{ timeout: 60 });
log(`LATE file ${t.elapsed}`);

// Activating for a second (its start job pending), then active.
let t = timestamp();
machine.succeed("systemd-run -q --no-block --unit=later.service -p Type=oneshot -p RemainAfterExit=yes sleep 1");
machine.wait_for_unit("later.service", #{ timeout: 60 });
log(`LATE unit ${t.elapsed}`);

let t = timestamp();
later(machine, "systemd-run -q --unit=port.service socat TCP-LISTEN:4567,fork,reuseaddr SYSTEM:true");
machine.wait_for_open_port(4567, #{ timeout: 60 });
log(`LATE open-port ${t.elapsed}`);
let t = timestamp();
later(machine, "systemctl stop port.service");
machine.wait_for_closed_port(4567, #{ timeout: 60 });
log(`LATE closed-port ${t.elapsed}`);

let t = timestamp();
later(machine, "systemd-run -q --unit=sock.service socat UNIX-LISTEN:/run/later.sock,fork SYSTEM:true");
machine.wait_for_open_unix_socket("/run/later.sock", #{ timeout: 60 });
log(`LATE unix-socket ${t.elapsed}`);

// The output of the try that met the condition; tries are few while
// nothing changes (never faster than one per 25 ms, pauses growing).
let t = timestamp();
later(machine, "sleep 3; touch /run/later-2");
let out = machine.wait_until_succeeds("echo try >>/run/tries; cat /run/later-2; echo found", #{ timeout: 60 });
assert_eq(out, "found\n");
log(`LATE until-succeeds ${t.elapsed}`);
let tries = parse_int(machine.succeed("wc -l </run/tries | tr -d '\\n'"));
log(`TRIES ${tries}`);
if tries > 16 { throw `${tries} tries in 4 s`; }
later(machine, "rm /run/later-2");
machine.wait_until_fails("test -e /run/later-2", #{ timeout: 60 });

// A unit that fails ends the wait at once, not at its timeout.
let t = timestamp();
machine.succeed("systemd-run -q --no-block --unit=doomed.service -p 'ExecStartPre=/bin/sleep 1' false");
let failed = false;
try { machine.wait_for_unit("doomed.service", #{ timeout: 60 }); } catch (e) { failed = true; log(`ERROR doomed: ${e}`); }
if !failed { throw "waiting for a failing unit succeeded"; }
if t.elapsed > 10.0 { throw `the failed unit was noticed after ${t.elapsed} s`; }

// Timeouts: the same errors with either protocol.
try { machine.wait_for_file("/run/never", #{ timeout: 2 }); } catch (e) { log(`ERROR file: ${e}`); }
try { machine.wait_for_unit("never.service", #{ timeout: 2 }); } catch (e) { log(`ERROR unit-missing: ${e}`); }
machine.succeed("systemd-run -q --no-block --unit=slow.service --service-type=oneshot sleep 600");
try { machine.wait_for_unit("slow.service", #{ timeout: 2 }); } catch (e) { log(`ERROR unit: ${e}`); }
try { machine.wait_for_open_port(4999, #{ timeout: 2 }); } catch (e) { log(`ERROR open-port: ${e}`); }
try { machine.wait_for_closed_port(22, #{ timeout: 2 }); } catch (e) { log(`ERROR closed-port: ${e}`); }
try { machine.wait_for_open_unix_socket("/run/never.sock", #{ timeout: 2 }); } catch (e) { log(`ERROR unix-socket: ${e}`); }
try { machine.wait_until_succeeds("echo no; test -e /run/never", #{ timeout: 2 }); } catch (e) { log(`ERROR until-succeeds: ${e}`); }
try { machine.wait_until_fails("true", #{ timeout: 2 }); } catch (e) { log(`ERROR until-fails: ${e}`); }
// A try still running at the timeout is killed with its process group.
try { machine.wait_until_succeeds("sleep 100 & sleep 200; test -e /run/never", #{ timeout: 2 }); } catch (e) { log(`ERROR until-slow: ${e}`); }
machine.fail("pgrep -f 'sleep [12]00'");
machine.fail("pgrep -f 'run/neve[r]'");
"#
}

/// The first line of each `ERROR name: text` the script logged.
fn wait_errors(stderr: &str) -> std::collections::BTreeMap<String, String> {
    stderr
        .lines()
        .filter_map(|l| l.split_once("ERROR ").map(|(_, e)| e))
        .filter_map(|e| e.split_once(": "))
        .map(|(name, text)| (name.to_owned(), text.to_owned()))
        .collect()
}

#[test]
fn waits_behave_the_same_with_both_protocols_and_end_in_time() {
    let mut errors = Vec::new();
    for protocol in ["agent", "bash"] {
        let dir = TestDir::nspawn(
            &format!("waits{protocol}"),
            &["machine"],
            "",
            waits_script(),
        );
        let r = run_with(&dir, &["--protocol", protocol]);
        assert_eq!(r.code, Some(PASSED.into()), "{protocol}: {}", r.stderr);
        let late: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| l.contains("LATE ") || l.contains("TRIES "))
            .collect();
        eprintln!("{protocol}: {late:#?}");
        let e = wait_errors(&r.stderr);
        assert_eq!(e.len(), 10, "{protocol}: {e:#?}\n{}", r.stderr);
        assert!(
            e["doomed"].contains("unit \"doomed.service\" reached state \"failed\""),
            "{e:#?}"
        );
        assert_nothing_left(&r, &format!("waits{protocol}"));
        errors.push(e);
    }
    assert_eq!(errors[0], errors[1]);
}

/// With the agent, a unit's wait hears systemd's D-Bus signals: a unit
/// that turns active four seconds after it started (no entry in
/// `/run/systemd/units` changes then) is answered with a few tries, where
/// pauses alone would take about twelve. A `systemctl` earlier in PATH counts
/// the tries.
#[test]
fn a_unit_wait_tries_when_systemd_signals_a_change() {
    let script = r#"
// The systemctl calls since the last count (the probe's tries).
fn calls(m) {
    parse_int(m.succeed(": >>/run/systemctl-calls; wc -l </run/systemctl-calls | tr -d '\n'; : >/run/systemctl-calls"))
}
machine.start();
machine.wait_for_unit("multi-user.target");
machine.succeed("printf '#!/bin/sh\necho >>/run/systemctl-calls\nexec /usr/bin/systemctl \"$@\"\n' >/usr/local/sbin/systemctl; chmod +x /usr/local/sbin/systemctl");
machine.succeed("systemd-run -q --no-block --unit=late.service -p 'ExecStartPre=/bin/sleep 4' sleep 600");
let t = timestamp();
calls(machine);
machine.wait_for_unit("late.service", #{ timeout: 60 });
let took = t.elapsed;
let tries = calls(machine);
log(`SIGNALS ${tries} tries in ${took} s`);
if took < 3.5 { throw `late.service was active after ${took} s, before its ExecStartPre ended`; }
if tries > 5 { throw `${tries} tries while late.service started`; }

// A target systemd reports active is the answer without a try; one on its
// way is waited for without tries either.
calls(machine);
machine.wait_for_unit("multi-user.target");
let active = calls(machine);
if active != 0 { throw `${active} systemctl calls for an active target`; }
machine.succeed("printf '[Unit]\nWants=slow.service\nAfter=slow.service\n' >/run/systemd/system/later.target; printf '[Service]\nType=oneshot\nExecStart=/bin/sleep 2\n' >/run/systemd/system/slow.service; /usr/bin/systemctl daemon-reload; /usr/bin/systemctl start --no-block later.target");
let t = timestamp();
calls(machine);
machine.wait_for_unit("later.target", #{ timeout: 60 });
let took = t.elapsed;
let on_its_way = calls(machine);
log(`TARGET ${on_its_way} systemctl calls in ${took} s`);
if took < 1.5 { throw `later.target was active after ${took} s, before slow.service ended`; }
if on_its_way != 0 { throw `${on_its_way} systemctl calls for a target`; }
"#;
    let dir = TestDir::nspawn("unitsignals", &["machine"], "", script);
    let r = run_with(&dir, &["--protocol", "agent"]);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    for needle in ["SIGNALS ", "TARGET "] {
        let line = r.stderr.lines().find(|l| l.contains(needle));
        eprintln!("{line:?}");
        assert!(line.is_some(), "{}", r.stderr);
    }
    assert_nothing_left(&r, "unitsignals");
}
