//! Files and big outputs through the bash backdoor on real nspawn
//! containers: concurrent copies to one machine, integrity checks that
//! catch corruption, sizes, NixOS's copy semantics, and the guest's output
//! files removed per command. Needs root and `images/debian/build`.

mod harness;

use std::time::Duration;

use attest::exit_code::PASSED;
use harness::{assert_nothing_left, attest, bytes, TestDir};
use sha2::{Digest as _, Sha256};

const LIMIT: Duration = Duration::from_secs(240);

/// Runs the test on the given command protocol (`bash`, or `auto`: the
/// agent on nspawn, with transfers on bash sessions of their own).
fn run_on(dir: &TestDir, protocol: &str) -> harness::Run {
    attest(
        &[
            "run",
            "--quiet-console",
            "--protocol",
            protocol,
            dir.config().to_str().unwrap(),
        ],
        LIMIT,
    )
}

fn run(dir: &TestDir) -> harness::Run {
    run_on(dir, "bash")
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Issue 11 item 3: two different files copied at once to one machine
/// both arrive intact (they shared one staging file before).
#[test]
fn concurrent_copies_to_one_machine_arrive_intact() {
    let a = bytes(2 << 20, 1);
    let b = bytes(2 << 20, 2);
    let script = format!(
        r#"
machine.start();
for round in 0..3 {{
    machine.succeed("rm -rf /run/attest-pick /root/a.bin /root/b.bin");
    // One closure takes a.bin, the other b.bin: mkdir succeeds only once.
    wait_all([machine, machine], |m| {{
        if m.execute("mkdir /run/attest-pick").status == 0 {{
            m.copy_from_host("a.bin", "/root/a.bin");
        }} else {{
            m.copy_from_host("b.bin", "/root/b.bin");
        }}
    }});
    assert_eq(machine.succeed("sha256sum /root/a.bin | cut -c1-64"), "{ha}\n");
    assert_eq(machine.succeed("sha256sum /root/b.bin | cut -c1-64"), "{hb}\n");
}}
assert_eq(machine.succeed("ls -A /root | grep -c attest-upload || true"), "0\n");
"#,
        ha = sha256_hex(&a),
        hb = sha256_hex(&b),
    );
    let dir = TestDir::nspawn("xfer-concurrent", &["machine"], "", &script);
    std::fs::write(dir.path("a.bin"), &a).unwrap();
    std::fs::write(dir.path("b.bin"), &b).unwrap();
    for protocol in ["bash", "auto"] {
        let r = run_on(&dir, protocol);
        assert_eq!(
            r.code,
            Some(PASSED.into()),
            "--protocol {protocol}: {}",
            r.stderr
        );
        assert_nothing_left(&r, "xfer-concurrent");
    }
}

/// Sizes at the edges of the encoding, both directions, both protocols, and NixOS's copy
/// semantics: `copy_from_host` into an existing directory keeps the
/// basename, `copy_from_vm(src, dir)` writes `$out/dir/<basename>`.
#[test]
fn files_of_every_size_and_directories_round_trip() {
    let sizes = [0usize, 1, 2, 3, 2303, 2304, 2305, 1 << 20, (3 << 20) + 7];
    let mut script = String::from("machine.start();\nmachine.succeed(\"mkdir -p /srv/in\");\n");
    for (i, len) in sizes.iter().enumerate() {
        script.push_str(&format!(
            "machine.copy_from_host(\"f{i}\", \"/srv/in\");\n\
             assert_eq(machine.succeed(\"stat -c %s /srv/in/f{i}\"), \"{len}\\n\");\n\
             machine.copy_from_vm(\"/srv/in/f{i}\", \"back\");\n"
        ));
    }
    script.push_str(
        r#"
machine.copy_from_host("tree", "/srv/tree");
assert_eq(machine.succeed("cat /srv/tree/sub/deep.txt"), "deep\n");
machine.copy_from_host("tree", "/srv/tree");
machine.succeed("test -f /srv/tree/tree/top.txt");
machine.copy_from_host_via_shell("tree/top.txt", "/srv/new/dir/top.txt");
assert_eq(machine.succeed("cat /srv/new/dir/top.txt"), "top\n");
machine.copy_from_machine("/srv/tree", "fromvm");
machine.copy_from_vm("/srv/tree/top.txt");
try { machine.copy_from_vm("/nonexistent/file"); throw "no error"; }
catch (e) { assert_contains(`${e}`, "/nonexistent/file: No such file or directory"); }
try { machine.copy_from_host("missing.bin", "/srv/x"); throw "no error"; }
catch (e) { assert_contains(`${e}`, "missing.bin: No such file or directory"); }
"#,
    );
    let dir = TestDir::nspawn("xfer-sizes", &["machine"], "", &script);
    let mut data = Vec::new();
    for (i, len) in sizes.iter().enumerate() {
        let d = bytes(*len, i as u64 + 10);
        std::fs::write(dir.path(&format!("f{i}")), &d).unwrap();
        data.push(d);
    }
    std::fs::create_dir_all(dir.path("tree/sub")).unwrap();
    std::fs::write(dir.path("tree/top.txt"), "top\n").unwrap();
    std::fs::write(dir.path("tree/sub/deep.txt"), "deep\n").unwrap();
    for protocol in ["bash", "agent"] {
        let _ = std::fs::remove_dir_all(dir.path("back"));
        let _ = std::fs::remove_dir_all(dir.path("fromvm"));
        let r = run_on(&dir, protocol);
        assert_eq!(
            r.code,
            Some(PASSED.into()),
            "--protocol {protocol}: {}",
            r.stderr
        );
        for (i, d) in data.iter().enumerate() {
            let back = std::fs::read(dir.path(&format!("back/f{i}"))).unwrap();
            assert!(
                back == *d,
                "{protocol}: f{i} ({} bytes) came back different",
                d.len()
            );
        }
        assert_eq!(
            std::fs::read_to_string(dir.path("top.txt")).unwrap(),
            "top\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path("fromvm/tree/sub/deep.txt")).unwrap(),
            "deep\n"
        );
        assert_nothing_left(&r, "xfer-sizes");
    }
}

/// A transfer that arrives different fails the call: a guest whose
/// `sha256sum` lies (both directions), and a guest file that grows while
/// it is copied. Nothing is left under the target's name.
#[test]
fn corrupted_transfers_fail_the_call() {
    let script = r#"
machine.start();
machine.succeed("head -c 3000000 /dev/urandom > /root/src.bin");
// Big enough that the copy takes a while: a loaded host may leave the
// writer unscheduled through a copy of a few KiB.
machine.succeed("head -c 20000000 /dev/zero > /root/growing");
machine.succeed("(while :; do echo more >> /root/growing; done) >/dev/null 2>&1 & echo $! > /run/writer.pid");
machine.wait_until_succeeds("test -s /root/growing");
try { machine.copy_from_vm("/root/growing"); throw "no error"; }
catch (e) { assert_contains(`${e}`, "did the file change while it was copied?"); }
machine.succeed("kill $(cat /run/writer.pid)");

machine.succeed("printf '#!/bin/sh\\ncat >/dev/null; echo 1111111111111111111111111111111111111111111111111111111111111111 -\\n' > /usr/local/bin/sha256sum; chmod +x /usr/local/bin/sha256sum");
try { machine.copy_from_host("payload.bin", "/root/payload.bin"); throw "no error"; }
catch (e) { assert_contains(`${e}`, "arrived different from what was sent"); }
machine.fail("test -e /root/payload.bin");
assert_eq(machine.succeed("ls -A /root | grep -c attest-upload || true"), "0\n");
try { machine.copy_from_vm("/root/src.bin"); throw "no error"; }
catch (e) { assert_contains(`${e}`, "arrived different from the guest's file"); }
machine.succeed("rm /usr/local/bin/sha256sum");
machine.copy_from_host("payload.bin", "/root/payload.bin");
"#;
    let dir = TestDir::nspawn("xfer-corrupt", &["machine"], "", script);
    std::fs::write(dir.path("payload.bin"), bytes(1 << 20, 7)).unwrap();
    let r = run(&dir);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(
        !dir.path("growing").exists(),
        "a failed copy left a file under the target's name"
    );
    assert!(!dir.path("src.bin").exists());
    assert_nothing_left(&r, "xfer-corrupt");
}

/// Issue 11 items 4 and 6: a big output arrives whole, and no command's
/// output files stay in the guest's /dev/shm once its reply was read.
#[test]
fn big_outputs_arrive_whole_and_output_files_do_not_pile_up() {
    let script = r#"
machine.start();
for i in 0..20 { machine.succeed("echo out; echo err >&2"); }
// Only the running command's own two files exist.
assert_eq(machine.succeed("ls -A /dev/shm | grep -c '^\\.attest-'"), "2\n");
let out = machine.succeed("head -c 64000000 /dev/zero | tr '\\0' x");
assert_eq(out.len(), 64000000);
let r = machine.execute("head -c 5000000 /dev/zero | tr '\\0' y >&2; exit 3");
assert_eq(r.status, 3);
assert_eq(r.stderr.len(), 5000000);
assert_eq(machine.succeed("ls -A /dev/shm | grep -c '^\\.attest-'"), "2\n");
"#;
    let dir = TestDir::nspawn("xfer-output", &["machine"], "", script);
    let r = run(&dir);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert_nothing_left(&r, "xfer-output");
}

/// Issue 15: with the agent, a data frame corrupted in flight (one byte
/// flipped after the sender hashed it, by attest's test hook) fails the
/// copy in that direction, leaving nothing under the target's name, while
/// the other direction still works.
#[test]
fn a_frame_corrupted_in_flight_fails_the_copy_over_the_agent() {
    let upload = r#"
machine.succeed("head -c 3000000 /dev/urandom > /root/src.bin");
try { machine.copy_from_host("payload.bin", "/root/payload.bin"); throw "no error"; }
catch (e) { assert_contains(`${e}`, "/root/payload.bin arrived different from what was sent"); }
machine.fail("test -e /root/payload.bin");
assert_eq(machine.succeed("ls -A /root | grep -c '^\\.attest' || true"), "0\n");
machine.copy_from_vm("/root/src.bin");
"#;
    let download = r#"
machine.succeed("head -c 3000000 /dev/urandom > /root/src.bin");
try { machine.copy_from_vm("/root/src.bin"); throw "no error"; }
catch (e) { assert_contains(`${e}`, "/root/src.bin arrived different from the guest's file"); }
machine.copy_from_host("payload.bin", "/root/payload.bin");
assert_eq(machine.succeed("stat -c %s /root/payload.bin"), "1048576\n");
"#;
    for (direction, script, arrives) in [("upload", upload, true), ("download", download, false)] {
        let dir = TestDir::nspawn("xfer-flip", &["machine"], "", script);
        std::fs::write(dir.path("payload.bin"), bytes(1 << 20, 8)).unwrap();
        let r = harness::attest_env(
            &[
                "run",
                "--quiet-console",
                "--protocol",
                "agent",
                dir.config().to_str().unwrap(),
            ],
            &[(attest::guest::CORRUPT_ENV, direction)],
            LIMIT,
        );
        assert_eq!(
            r.code,
            Some(PASSED.into()),
            "corrupting the {direction}: {}",
            r.stderr
        );
        assert_eq!(dir.path("src.bin").exists(), arrives, "{direction}");
        let temporaries: Vec<_> = std::fs::read_dir(dir.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".attest"))
            .collect();
        assert!(temporaries.is_empty(), "{direction}: {temporaries:?}");
        assert_nothing_left(&r, "xfer-flip");
    }
}
