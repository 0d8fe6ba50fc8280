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
machine.succeed("echo one; sleep 2; echo two >&2; printf three");
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
