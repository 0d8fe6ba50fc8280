//! NixOS parity (issue 13): a script written for the NixOS driver means the
//! same under attest. Each test runs on real systemd-nspawn containers
//! booting the Debian test image. Needs root and `images/debian/build`.

mod harness;

use std::time::Duration;

use attest::exit_code::{FAILED, INVALID, PASSED};
use harness::{assert_nothing_left, attest, TestDir};

const LIMIT: Duration = Duration::from_secs(240);

fn run(dir: &TestDir) -> harness::Run {
    attest(
        &["run", "--quiet-console", dir.config().to_str().unwrap()],
        LIMIT,
    )
}

fn passes(name: &str, nodes: &[&str], script: &str) {
    let dir = TestDir::nspawn(name, nodes, "", script);
    let r = run(&dir);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert_nothing_left(&r, name);
}

/// Items 2, 3, 7: `execute` with NixOS's options, `succeed`/`fail` with any
/// number of commands, `wait_for_file` unquoted, ports given as strings.
#[test]
fn commands_run_with_the_nixos_semantics() {
    passes(
        "parity-commands",
        &["machine"],
        r#"
machine.wait_for_unit("multi-user.target");

// execute: (status, output) as NixOS returns them, plus stderr.
let r = machine.execute("echo out; exit 3");
assert_eq(r.status, 3);
assert_eq(r.output, "out\n");
let r = machine.execute("echo out; exit 3", #{ check_return: false });
assert_eq(r.status, -1);
assert_eq(r.output, "out\n");
// check_output: false sends the command and returns at once.
let before = timestamp();
let r = machine.execute("sleep 3; touch /dev/shm/detached", #{ check_output: false, timeout: 30 });
assert_eq(r.status, -2);
assert_eq(r.output, "");
if before.elapsed > 2.0 { throw `execute without check_output waited ${before.elapsed} s`; }
machine.wait_for_file("/dev/shm/detached", #{ timeout: 20 });

// Any number of commands, with or without options.
assert_eq(machine.succeed("echo 1", "echo 2", "echo 3", "echo 4", "echo 5", "echo 6"), "1\n2\n3\n4\n5\n6\n");
assert_eq(machine.succeed("echo 1", "echo 2", "echo 3", "echo 4", #{ timeout: 10 }), "1\n2\n3\n4\n");
machine.fail("false", "exit 2", "test -e /nonexistent", "false | true");
try { machine.fail("false", "false", "false", "true"); throw "no error"; }
catch (e) { assert_contains(`${e}`, "fail `true` unexpectedly succeeded"); }

// wait_for_file: globs and ~user expand, as the NixOS driver runs it unquoted.
machine.succeed("touch /dev/shm/glob-42.ready");
machine.wait_for_file("/dev/shm/glob-*.ready", #{ timeout: 10 });
machine.wait_for_file("~root", #{ timeout: 10 });

// Ports as strings, as `wait_for_open_port("1025")` in nixpkgs' mailhog test.
machine.wait_for_open_port("80");
machine.wait_for_open_port("80", "127.0.0.1", #{ timeout: 10 });
machine.wait_for_closed_port("81", #{ timeout: 10 });
"#,
    );
}

/// Item 4: after `crash()` (or a machine that went down) the next command
/// starts the machine again; `reboot()` reboots a container;
/// `start(#{ allow_reboot })` is accepted; a guest `reboot` run with
/// `check_return: false` returns.
#[test]
fn machines_come_back_after_crash_and_reboot() {
    passes(
        "parity-lifecycle",
        &["machine"],
        r#"
machine.start(#{ allow_reboot: true });
machine.wait_for_unit("multi-user.target");

// The machine's files outlive a crash, as a NixOS VM's disk does.
machine.succeed("echo before-crash > /root/state", "sync");
machine.crash();
assert_eq(machine.is_up(), false);
machine.succeed("true");
assert_eq(machine.is_up(), true);
machine.wait_for_unit("multi-user.target");
assert_eq(machine.succeed("cat /root/state"), "before-crash\n");

// ... and a reboot.
machine.succeed("echo before-reboot >> /root/state");
let id1 = machine.succeed("systemctl show -P InvocationID systemd-journald.service");
machine.reboot();
machine.wait_for_unit("multi-user.target");
let id2 = machine.succeed("systemctl show -P InvocationID systemd-journald.service");
if id1 == id2 { throw "reboot() did not reboot the container"; }
assert_eq(machine.succeed("cat /root/state"), "before-crash\nbefore-reboot\n");

// A command that takes the machine down returns under check_return: false.
let r = machine.execute("systemctl reboot", #{ check_return: false, timeout: 30 });
assert_eq(r.status, -1);
machine.wait_for_shutdown();
machine.wait_for_unit("multi-user.target");
let id3 = machine.succeed("systemctl show -P InvocationID systemd-journald.service");
if id3 == id2 { throw "the guest reboot did not happen"; }
"#,
    );
}

/// Item 4: without `start(#{ allow_reboot: true })` a reboot ends the
/// machine, as QEMU's `-no-reboot` does under the NixOS driver, and so does a
/// poweroff from inside: the next command fails (NixOS: "Shell
/// disconnected") until `wait_for_shutdown()` or `start()`; the disk is kept.
#[test]
fn a_reboot_without_allow_reboot_ends_the_machine() {
    passes(
        "parity-no-reboot",
        &["machine"],
        r#"
machine.start();
machine.succeed("echo kept > /root/state");
machine.reboot();
assert_eq(machine.is_up(), false);
try { machine.succeed("true"); throw "no error"; }
catch (e) {
    assert_contains(`${e}`, "machine is down: reboot() ended it: it was started without allow_reboot");
    assert_contains(`${e}`, "call wait_for_shutdown() and then start()");
}
machine.wait_for_shutdown();
machine.start();
assert_eq(machine.succeed("cat /root/state"), "kept\n");

// A poweroff from inside, the same.
let r = machine.execute("systemctl poweroff", #{ check_return: false, timeout: 30 });
assert_eq(r.status, -1);
let waited = 0;
while machine.is_up() && waited < 300 { sleep(0.1); waited += 1; }
try { machine.succeed("true"); throw "no error"; }
catch (e) { assert_contains(`${e}`, "machine is down: it powered itself off"); }
machine.wait_for_shutdown();
machine.succeed("test -e /root/state");
"#,
    );
}

/// Item 5: `wait_for_unit(unit, user)` waits for a user's unit through the
/// user's own manager, and fails at once for a failed one.
#[test]
fn wait_for_unit_with_a_user_works() {
    let dir = TestDir::nspawn(
        "parity-user-unit",
        &["machine"],
        "",
        r#"
machine.wait_for_unit("multi-user.target");
machine.succeed(
    "useradd -m alice",
    "mkdir -p /etc/systemd/user",
    "printf '[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n' > /etc/systemd/user/hello.service",
    "printf '[Service]\nType=oneshot\nExecStart=/bin/false\n' > /etc/systemd/user/doomed.service",
);
machine.wait_for_unit("default.target", "alice");
machine.systemctl("start hello.service", "alice");
machine.wait_for_unit("hello.service", "alice", #{ timeout: 60 });
machine.wait_for_unit("user@1000.service");
assert_eq(machine.get_unit_property("hello.service", "ActiveState", "alice"), "active");
machine.systemctl("start doomed.service", "alice");
log("waiting for the doomed unit");
machine.wait_for_unit("doomed.service", "alice", #{ timeout: 600 });
"#,
    );
    let r = run(&dir);
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "wait_for_unit doomed.service (user alice): unit \"doomed.service\" reached state \"failed\""
        ),
        "{}",
        r.stderr
    );
    assert!(
        r.elapsed < Duration::from_secs(120),
        "took {:?}: {}",
        r.elapsed,
        r.stderr
    );
    assert!(!r.stderr.contains("timed out"), "{}", r.stderr);
    assert_nothing_left(&r, "parity-user-unit");
}

/// Items 10, 11: machines are visible inside `fn`; a node named with a Rhai
/// keyword is mapped (and logged); a single node is also `machine`;
/// `machines` and `vlans` are there.
#[test]
fn nodes_are_visible_everywhere_under_nixos_names() {
    let dir = TestDir::nspawn(
        "parity-names",
        &["default"],
        "",
        r#"
fn check_up() {
    default_.succeed("true");
    machine.succeed("true");
    machines.len()
}
fn shadowed(machine) { machine }
default_.wait_for_unit("multi-user.target");
assert_eq(check_up(), 1);
assert_eq(shadowed(7), 7);
assert_eq(machine.name, "default");
assert_eq(machines[0].name, "default");
assert_eq(vlans, []);
"#,
    );
    let r = run(&dir);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("node `default` is `default_` in the script"),
        "{}",
        r.stderr
    );
    assert_nothing_left(&r, "parity-names");

    // Two nodes: no `machine`, both in `machines`, the vlan listed; `check` agrees.
    let dir = TestDir::nspawn(
        "parity-names2",
        &["server", "client"],
        "",
        r#"
fn both() { [server.succeed("hostname"), client.succeed("hostname")] }
start_all();
assert_eq(both(), ["server\n", "client\n"]);
assert_eq(machines.len(), 2);
assert_eq(vlans, [1]);
"#,
    );
    let r = run(&dir);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert_nothing_left(&r, "parity-names2");
    let bad = TestDir::nspawn(
        "parity-names3",
        &["server", "client"],
        "",
        "fn f() { machine.succeed(\"true\") }\nf();\n",
    );
    let r = attest(&["check", bad.config().to_str().unwrap()], LIMIT);
    assert_eq!(r.code, Some(INVALID.into()), "{}", r.stderr);
    assert!(r.stderr.contains("machine"), "{}", r.stderr);
}

/// Items 13, 14: the rest of the NixOS API. QEMU-only calls fail naming the
/// backend (their QMP side is unit-tested in `backend::qemu::qmp`).
#[test]
fn the_rest_of_the_nixos_api() {
    passes(
        "parity-api",
        &["machine"],
        r#"
machine.wait_for_unit("multi-user.target");

// `attest check` refuses these on `machine` (an nspawn node); through
// `machines` they are refused at run time, from the same table.
let m = machines[0];
for f in [
    || m.send_monitor_command("info status"),
    || m.wait_for_qmp_event(|e| true, 5),
    || m.get_screen_text_variants(),
] {
    try { f.call(); throw "no error"; }
    catch (e) { assert_matches(`${e}`, "(send_monitor_command|wait_for_qmp_event|get_screen_text_variants) is not supported by the nspawn backend of node `machine`"); }
}
try { m.switch_root(); throw "no error"; }
catch (e) { assert_contains(`${e}`, "switch_root is not supported by the nspawn backend of node `machine`: a container boots without an initrd"); }
try { machine.shared_dir; throw "no error"; }
catch (e) { assert_contains(`${e}`, "attest shares no directory"); }
try { create_machine("run-extra-vm"); throw "no error"; }
catch (e) { assert_contains(`${e}`, "add a node there"); }

// Directories and state.
if machine.state_dir == "" { throw "no state dir"; }
if machine.out_dir == "" { throw "no out dir"; }
assert_eq(machine.is_up(), true);

// nested, global and per machine; serial output on and off.
serial_stdout_off();
assert_eq(nested("outer", || machine.nested("inner", || 42)), 42);
serial_stdout_on();

// NixOS retry: fn(last_try) until true; the last call says so.
let calls = [];
retry(|last| { calls.push(last); calls.len() >= 2 });
assert_eq(calls, [false, false]);
let last_calls = [];
try { retry(|last| { last_calls.push(last); false }, 1); throw "no error"; }
catch (e) { assert_contains(`${e}`, "action timed out"); }
assert_eq(last_calls[-1], true);

// polling_condition: checked before commands while a block runs.
machine.succeed("touch /dev/shm/ok");
let ok = polling_condition(|| machine.succeed("test -e /dev/shm/ok"),
                           #{ seconds_interval: 0, description: "ok exists" });
ok.during(|| {
    machine.succeed("true");
    machine.succeed("true");
});
try {
    ok.during(|| {
        machine.succeed("rm /dev/shm/ok");
        machine.succeed("true");
        throw "the condition was not checked";
    });
} catch (e) { assert_contains(`${e}`, "Polling condition failed: ok exists"); }
assert_eq(ok.check(), false);
machine.execute("sleep 2; touch /dev/shm/ok", #{ check_output: false });
ok.wait(#{ timeout: 20 });
assert_eq(ok.check(), true);
"#,
    );
}

/// Item 4: `attest check` refuses a call the node's backend will refuse,
/// with file:line, node, backend and what to do; the run refuses the same
/// call (on a receiver check cannot know) with the same words, before the
/// machine is even started.
#[test]
fn check_and_run_refuse_what_the_backend_cannot_do() {
    let nodes = r#"{
        "server": {"backend": {"nspawn": {"rootfs": "/dev/null"}}},
        "remote": {"backend": {"ssh": {"host": "127.0.0.1"}}},
        "vm": {"backend": {"qemu": {"kernel": "/dev/null", "initrd": "/dev/null", "disk": "/dev/null"}}}
    }"#;
    let script = r#"server.wait_for_unit("multi-user.target");
server.screenshot("a.png");
send_key(server, "ctrl-c");
let text = server.get_screen_text();
remote.crash();
vm.wait_for_text("login");
vm.screenshot("b.png");
server.reboot();
fn f(server) { server.screenshot("c.png") }
for m in machines { m.get_tty_text(1); }
try { remote.shutdown(); } catch (e) { print(e); }
"#;
    let dir = TestDir::new("parity-refusals", nodes, "", script);
    let r = attest(
        &["check", "--no-files", dir.config().to_str().unwrap()],
        LIMIT,
    );
    assert_eq!(r.code, Some(INVALID.into()), "{}", r.stderr);
    for expected in [
        "test.rhai:2:8: error: screenshot is not supported by the nspawn backend of node `server`: \
         a container has no display; run this node on the qemu backend, or capture the screen \
         inside the guest with guest_screenshot()",
        "test.rhai:3:1: error: send_key is not supported by the nspawn backend of node `server`: \
         a container has no keyboard",
        "test.rhai:4:19: error: get_screen_text is not supported by the nspawn backend of node `server`",
        "test.rhai:5:8: error: crash is not supported by the ssh backend of node `remote`: attest \
         never powers off a host it did not start; set \"owned\": true on the node if this test \
         may power it off",
        "test.rhai:6:4: error: wait_for_text is not supported by the qemu backend of node `vm`: \
         OCR is not enabled for this node; set \"enable_ocr\": true in its qemu settings",
        "test.rhai: 5 errors",
    ] {
        assert!(r.stderr.contains(expected), "{expected}\n---\n{}", r.stderr);
    }
    // A refusal the script catches is its business.
    assert!(!r.stderr.contains("test.rhai:12"), "{}", r.stderr);

    // At run time: a receiver known only then is refused in the same words,
    // and the refused call boots nothing.
    let dir = TestDir::nspawn(
        "parity-refusals-run",
        &["server"],
        "",
        "for m in machines { m.screenshot(\"a.png\"); }\n",
    );
    let r = run(&dir);
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "screenshot is not supported by the nspawn backend of node `server`: a container has \
             no display; run this node on the qemu backend, or capture the screen inside the \
             guest with guest_screenshot()"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("backdoor up"), "{}", r.stderr);
    assert_nothing_left(&r, "parity-refusals-run");
}

/// NixOS's positional forms: `timeout` as a trailing number,
/// `execute(cmd, check_return, check_output, timeout)`,
/// `wait_for_open_unix_socket(addr, is_datagram, timeout)`,
/// `start(allow_reboot)`; `()` (Python's `None`) is no options; anything
/// else is an error naming what is expected.
#[test]
fn positional_arguments_as_nixos_takes_them() {
    passes(
        "parity-positional",
        &["machine"],
        r#"
machine.start(true);
machine.wait_for_unit("multi-user.target", (), );
machine.reboot();
assert_eq(machine.execute("echo out; exit 3", false).status, -1);
assert_eq(machine.execute("sleep 1", true, false).status, -2);
let r = machine.execute("echo x", true, true, 10);
assert_eq([r.status, r.output], [0, "x\n"]);
assert_eq(machine.wait_until_succeeds("echo ok", 10), "ok\n");
machine.wait_until_fails("false", 10.5);
machine.wait_for_file("/etc/os-release", 10);
machine.wait_for_open_port(80, "localhost", 10);
machine.wait_for_closed_port("81", "127.0.0.1", 10);
machine.wait_for_unit("nginx.service", 30);
machine.wait_for_open_unix_socket("/run/dbus/system_bus_socket", false, 10);
machine.wait_for_open_unix_socket("/run/dbus/system_bus_socket", false);
try { machine.wait_until_succeeds("true", "ten"); throw "no error"; }
catch (e) { assert_contains(`${e}`, "expected an options map (#{ timeout: 30 }) or a timeout in seconds, not string"); }
try { machine.wait_for_file("/nonexistent", 1); throw "no error"; }
catch (e) { assert_contains(`${e}`, "timed out after 1 seconds"); }
"#,
    );
}

/// `get_unit_property` fails where NixOS's does (a property systemd does
/// not know, which `systemctl show` answers with nothing); NixOS `retry`
/// reads its function's result with Python's truth
/// (a function that ends without returning is `None`: false).
#[test]
fn unit_properties_and_truth_as_nixos_reads_them() {
    passes(
        "parity-truth",
        &["machine"],
        r#"
machine.wait_for_unit("nginx.service");
assert_eq(machine.get_unit_property("nginx.service", "ActiveState"), "active");
assert_eq(machine.get_unit_property("nginx.service", "Description"),
          strip(machine.succeed("systemctl show -P Description nginx.service")));
assert_eq(machine.get_unit_property("nosuch.service", "ActiveState"), "inactive");
try { machine.get_unit_property("nginx.service", "NoSuchProperty"); throw "no error"; }
catch (e) {
    assert_contains(`${e}`, "machine: `systemctl --no-pager show 'nginx.service' --property='NoSuchProperty'` printed \"\"");
    assert_contains(`${e}`, "is the property name right?");
}
machine.require_unit_state("nginx.service");
try { machine.require_unit_state("nginx.service", "inactive"); throw "no error"; }
catch (e) { assert_contains(`${e}`, "expected unit \"nginx.service\" to be in state \"inactive\" but it is in state \"active\""); }

// retry: `()` (Python's None) is false, so the function runs again.
let calls = [];
retry(|last| { calls.push(last); if calls.len() >= 2 { return "yes"; } });
assert_eq(calls, [false, false]);
let calls = [];
try { retry(|last| { calls.push(last); if last { return 0; } }, 1); throw "no error"; }
catch (e) { assert_contains(`${e}`, "action timed out"); }
assert_eq(calls[-1], true);
let n = [];
retry(|last| { n.push(1); if n.len() < 2 { [] } else { [1] } });

"#,
    );
}

/// NixOS scripts pass `None` for the user positionally
/// (`wait_for_unit("x", None, 30)`, converted to `()`): every method with
/// an optional user takes `()` there, and `timeout: ()` is the default.
#[test]
fn none_in_the_place_of_a_user_is_no_user() {
    passes(
        "parity-none-user",
        &["machine"],
        r#"
machine.wait_for_unit("multi-user.target", (), 60);
machine.wait_for_unit("nginx.service", (), #{ timeout: 30 });
machine.wait_for_unit("nginx.service", ());
assert_eq(machine.get_unit_info("nginx.service", ())["ActiveState"], "active");
assert_eq(machine.get_unit_property("nginx.service", "SubState", ()), "running");
machine.require_unit_state("nginx.service", "active", ());
assert_eq(machine.systemctl("is-active nginx.service", ()).stdout, "active\n");
machine.stop_job("nginx.service", ());
machine.wait_for_closed_port(80, "localhost", 30);
machine.start_job("nginx.service", ());
machine.wait_for_open_port(80, "localhost", 30);
assert_eq(machine.succeed("echo x", #{ timeout: () }), "x\n");
assert_eq(machine.execute("echo y", true, true, ()).output, "y\n");
try { machine.wait_for_unit("nginx.service", 42, 1); throw "no error"; }
catch (e) { assert_contains(`${e}`, "user must be a string or () for none, not i64"); }
"#,
    );
}
