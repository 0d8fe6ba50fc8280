//! The command line without guests: `attest check`, config and script errors,
//! exit statuses.

mod harness;

use std::time::Duration;

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
    assert_eq!(r.code, Some(0), "{}", r.stderr);
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
    assert_eq!(r.code, Some(2), "{}", r.stderr);
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
    assert_eq!(r.code, Some(2));
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

#[test]
fn run_refuses_a_bad_script_before_anything_boots() {
    // The rootfs does not exist: if the check did not stop the run first, the
    // error would be about the rootfs instead.
    let dir = TestDir::new("bad3", NODES, "", "start_all(;\n");
    let r = attest(
        &["run", dir.config().to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
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
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("test.json:1:"), "{}", r.stderr);
    assert!(r.stderr.contains("unknown variant `vbox`, expected one of `nspawn`, `qemu`, `firecracker`, `cloud-hypervisor`, `ssh`"), "{}", r.stderr);

    let dir = TestDir::new("cfg2", NODES, r#""global_timeout": -1"#, "start_all();");
    let r = check(&dir);
    assert_eq!(r.code, Some(2));
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
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("/nonexistent/test.json: cannot read file: No such file or directory"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_missing_image_is_a_clear_error_at_run_time() {
    let dir = TestDir::new(
        "noimg",
        r#"{"m":{"backend":{"nspawn":{"image":"/nonexistent/manifest.json"}}}}"#,
        "",
        "m.start();",
    );
    let r = attest(
        &["run", dir.config().to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "m: start: /nonexistent/manifest.json: cannot read file: No such file or directory"
        ),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("images/debian/build"), "{}", r.stderr);
}
