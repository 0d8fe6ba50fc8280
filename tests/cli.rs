//! The command line without guests: `attest check`, config and script errors,
//! exit statuses.

mod harness;

use std::time::Duration;

use attest::exit_code::{INVALID, PASSED};
use harness::{attest, check, TestDir, UNBOOTABLE_NODES as NODES};

#[test]
fn a_valid_test_checks_without_booting() {
    let dir = TestDir::new(
        "ok",
        NODES,
        "",
        "start_all();\nclient_1.succeed(\"curl -sf http://server\");\n",
    );
    let r = check(&dir);
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(r.stderr.contains("ok (2 nodes)"), "{}", r.stderr);
}

#[test]
fn script_errors_exit_2_with_file_line_col_and_underline() {
    let dir = TestDir::new(
        "bad",
        NODES,
        "",
        "start_all();\nserver.succeed(\"true\");\nclinet.succeed(\"curl server\");\n",
    );
    let r = check(&dir);
    assert_eq!(r.code, Some(INVALID.into()), "{}", r.stderr);
    let shown = r.stderr.replace(dir.dir.path().to_str().unwrap(), "<dir>");
    insta::assert_snapshot!(shown, @r#"
    <dir>/test.rhai:3:1: error: undefined variable `clinet`; did you mean `client_1`? (the nodes are `client_1`, `server`)
      |
    3 | clinet.succeed("curl server");
      | ^^^^^^
    "#);
}

#[test]
fn unknown_methods_and_arity_are_caught_before_boot() {
    let dir = TestDir::new(
        "bad2",
        NODES,
        "",
        "server.wait_for_unitt(\"x\");\nserver.succeed();\n",
    );
    let r = check(&dir);
    assert_eq!(r.code, Some(INVALID.into()));
    assert!(
        r.stderr.contains(
            "test.rhai:1:8: error: unknown method `wait_for_unitt`; did you mean `wait_for_unit`?"
        ),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("test.rhai:2:8: error: `succeed`"),
        "{}",
        r.stderr
    );
}

/// Literal arguments of a type no form of the call takes are caught before
/// boot, with the forms there are; values only the run knows are not
/// guessed at.
#[test]
fn wrong_argument_types_are_caught_before_boot() {
    let dir = TestDir::new(
        "badtype",
        NODES,
        "",
        "server.succeed(42);
succeed(server, true);
server.wait_for_unit(\"x\", 30);
server.wait_for_open_port(\"80\");
server.copy_from_host(1, \"/x\");
let n = 42;
server.succeed(`${n}`);
",
    );
    let r = attest(
        &["run", dir.config().to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(INVALID.into()), "{}", r.stderr);
    for expected in [
        "test.rhai:1:8: error: wrong argument type: `succeed` takes (array) or (string), not (int)",
        "test.rhai:2:1: error: wrong argument type: `succeed` takes (Machine, array) or (Machine, string), not (…, bool)",
        "test.rhai:5:8: error: wrong argument type: `copy_from_host` takes (string, string), not (int, string)",
        "test.rhai: 3 errors",
    ] {
        assert!(r.stderr.contains(expected), "{expected}\n---\n{}", r.stderr);
    }
    assert!(!r.stderr.contains("booting"), "{}", r.stderr);
}

#[test]
fn run_refuses_a_bad_script_before_anything_boots() {
    // The rootfs does not exist: if the check did not stop the run first, the
    // error would be about the rootfs instead.
    let dir = TestDir::new("bad3", NODES, "", "start_all(;\n");
    let r = attest(
        &["run", dir.config().to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(INVALID.into()), "{}", r.stderr);
    assert!(r.stderr.contains("test.rhai:1:"), "{}", r.stderr);
    assert!(!r.stderr.contains("booting"), "{}", r.stderr);
}

#[test]
fn config_errors_exit_2_with_file_line_col() {
    let dir = TestDir::new(
        "cfg",
        r#"{"server":{"backend":{"vbox":{}}}}"#,
        "",
        "start_all();",
    );
    let r = check(&dir);
    assert_eq!(r.code, Some(INVALID.into()));
    assert!(r.stderr.contains("test.json:1:"), "{}", r.stderr);
    assert!(r.stderr.contains("in `nodes.server.backend`: unknown variant `vbox`, expected one of `nspawn`, `qemu`, `firecracker`, `cloud-hypervisor`, `ssh`"), "{}", r.stderr);

    // A wrong type or an unknown field names the field, not only the place.
    for (nodes, extra, expected) in [
        (
            NODES,
            r#""global_timeout": "ten""#,
            "in `global_timeout`: invalid type: string \"ten\", expected f64",
        ),
        (
            r#"{"server":{"vlans":["one"],"backend":{"nspawn":{"rootfs":"/"}}}}"#,
            "",
            "in `nodes.server.vlans[0]`: invalid type: string \"one\"",
        ),
        (
            r#"{"server":{"backend":{"nspawn":{"rootfs":"/","imgae":"x"}}}}"#,
            "",
            "in `nodes.server.backend.nspawn`: unknown field `imgae`",
        ),
    ] {
        let dir = TestDir::new("cfg-field", nodes, extra, "start_all();");
        let r = check(&dir);
        assert_eq!(r.code, Some(INVALID.into()), "{}", r.stderr);
        assert!(r.stderr.contains("test.json:1:"), "{}", r.stderr);
        assert!(r.stderr.contains(expected), "{expected}\n---\n{}", r.stderr);
    }

    let dir = TestDir::new("cfg2", NODES, r#""global_timeout": -1"#, "start_all();");
    let r = check(&dir);
    assert_eq!(r.code, Some(INVALID.into()));
    assert!(
        r.stderr
            .contains("`global_timeout` is -1: it must be a positive number of seconds"),
        "{}",
        r.stderr
    );
}

#[test]
fn missing_files_are_named() {
    let r = attest(
        &["check", "/nonexistent/test.json"],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(INVALID.into()));
    assert!(
        r.stderr
            .contains("/nonexistent/test.json: cannot read file: No such file or directory"),
        "{}",
        r.stderr
    );
}

/// Every file the config names and that is missing is a config error
/// (exit 2, naming node and field), from `check` and from `run` before
/// anything boots.
#[test]
fn missing_files_named_by_the_config_are_config_errors() {
    let dir = TestDir::new(
        "nofiles",
        r#"{"m":{"backend":{"nspawn":{"image":"/nonexistent/manifest.json"}}},
            "q":{"backend":{"qemu":{"kernel":"/nonexistent/vmlinuz","disk":"/dev/null"}}},
            "s":{"backend":{"ssh":{"host":"127.0.0.1","identity_file":"/nonexistent/id_ed25519"}}}}"#,
        "",
        "m.start();",
    );
    let config = dir.config();
    let config = config.to_str().unwrap();
    for r in [
        check(&dir),
        attest(&["run", config], Duration::from_secs(30)),
    ] {
        assert_eq!(r.code, Some(INVALID.into()), "{}", r.stderr);
        for needle in [
            "node `m` (nspawn): `image` /nonexistent/manifest.json: No such file or directory (the Debian test image: build it with images/debian/build)",
            "node `q` (qemu): `kernel` /nonexistent/vmlinuz: No such file or directory",
            "node `s` (ssh): `identity_file` /nonexistent/id_ed25519: No such file or directory",
        ] {
            assert!(r.stderr.contains(&format!("{config}: {needle}")), "missing {needle:?} in:\n{}", r.stderr);
        }
        assert!(!r.stderr.contains("machine: up"), "{}", r.stderr);
    }
    // A check before the nodes are built (Nix's script check) skips them.
    let r = attest(&["check", "--no-files", config], Duration::from_secs(30));
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
}

/// microVM `options` are typed: a misspelt knob is a config error with file,
/// line and column from `check`, before any VMM runs.
#[test]
fn a_typo_in_microvm_options_is_a_config_error_with_its_line() {
    let dir = TestDir::new(
        "typo",
        "{\"m\":{\"backend\":{\"firecracker\":{\"kernel\":\"/k\",\n\"options\":{\"enable_pci\":true,\n\"io_engin\":\"Async\"}}}}}",
        "",
        "m.start();",
    );
    let r = check(&dir);
    assert_eq!(r.code, Some(INVALID.into()), "{}", r.stderr);
    let config = dir.config();
    let at = format!("{}:3:", config.display());
    assert!(r.stderr.contains(&at), "no {at} in:\n{}", r.stderr);
    assert!(
        r.stderr
            .contains("unknown field `io_engin`, expected one of `enable_pci`, `io_engine`"),
        "{}",
        r.stderr
    );
}

/// A backend's program missing from PATH is a missing prerequisite (exit
/// 2, as a missing image is): the run names node, program and what to
/// install before anything starts, and leaves nothing.
#[test]
fn a_missing_backend_program_says_what_to_install() {
    let manifest = harness::image_manifest();
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().to_str().unwrap();
    for (backend, expected) in [
        (
            "nspawn",
            "test.json: node `machine` (nspawn): `systemd-nspawn` is not installed or not on PATH: install it (apt-get install systemd-container, or run .ci/install-deps)",
        ),
        (
            "qemu",
            "test.json: node `machine` (qemu): `qemu-system-x86_64` is not installed or not on PATH: install it (apt-get install qemu-system-x86, or run .ci/install-deps)",
        ),
    ] {
        let dir = TestDir::new(
            &format!("missing-{backend}"),
            &format!(
                r#"{{"machine":{{"backend":{{"{backend}":{{"image":"{}"}}}}}}}}"#,
                manifest.display()
            ),
            "",
            "machine.start();\n",
        );
        let r = harness::attest_env(
            &["run", dir.config().to_str().unwrap()],
            &[("PATH", path)],
            Duration::from_secs(60),
        );
        assert_eq!(r.code, Some(INVALID.into()), "{}", r.stderr);
        assert!(r.stderr.contains(expected), "{expected}\n---\n{}", r.stderr);
        assert!(!r.stderr.contains("machine: starting"), "{}", r.stderr);
        harness::assert_nothing_left(&r, backend);
    }
}
