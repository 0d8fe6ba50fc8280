//! What a person reads: `attest check` diagnostics, the wording of the human
//! log on failures, boot progress and the REPL (issue 11, items 12 and 14–16).

mod harness;

use std::time::Duration;

use harness::{attest, check, TestDir, UNBOOTABLE_NODES as NODES};

const LIMIT: Duration = Duration::from_secs(180);

#[test]
fn check_reports_every_error_in_a_script() {
    let dir = TestDir::new(
        "every",
        NODES,
        "",
        "start_all();\nserver.succeed(\"true\");\nlet x = 1;\nserver.wait_for_unitt(\"a\");\nclinet.succeed(\"b\");\nstrat_all();\ncp(\"a\");\n",
    );
    let r = check(&dir);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    for needle in [
        "test.rhai:4:8: error: unknown method `wait_for_unitt`; did you mean `wait_for_unit`?",
        "test.rhai:5:1: error: undefined variable `clinet`; did you mean `client_1`? (the nodes are `client_1`, `server`)",
        "test.rhai:6:1: error: unknown function `strat_all`; did you mean `start_all`?",
        "test.rhai:7:1: error: unknown function `cp`\n",
        "test.rhai: 4 errors",
    ] {
        assert!(r.stderr.contains(needle), "missing {needle:?} in:\n{}", r.stderr);
    }
}

#[test]
fn check_counts_one_node_in_the_singular() {
    let dir = TestDir::new(
        "one",
        r#"{"server":{"backend":{"nspawn":{"rootfs":"/dev/null"}}}}"#,
        "",
        "start_all();\n",
    );
    let r = check(&dir);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains(": ok (1 node)\n"), "{}", r.stderr);
}

#[test]
fn unwritable_report_files_are_named_before_anything_boots() {
    let dir = TestDir::new("reports", NODES, "", "start_all();\n");
    for (flag, what) in [
        ("--junit", "JUnit report"),
        ("--log-json", "JSON event log"),
    ] {
        let r = attest(
            &[
                "run",
                flag,
                "/nonexistent/report",
                dir.config().to_str().unwrap(),
            ],
            LIMIT,
        );
        assert_eq!(r.code, Some(2), "{}", r.stderr);
        assert!(
            r.stderr.contains(&format!(
                "cannot write the {what} file /nonexistent/report: No such file or directory"
            )),
            "{}",
            r.stderr
        );
        // The nodes' rootfs does not exist: booting would have said so.
        assert!(!r.stderr.contains("booting"), "{}", r.stderr);
    }
}

/// A failing command on a node named `machine`, on a real container.
#[test]
fn a_failure_shows_the_script_line_first_and_console_lines_once() {
    let dir = TestDir::nspawn(
        "failwording",
        &["machine"],
        "",
        "start_all();\nmachine.succeed(\"true\");\nmachine.succeed(\"echo hi; false\");\n",
    );
    let r = attest(&["run", dir.config().to_str().unwrap()], LIMIT);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(!r.stderr.contains("machine machine"), "{}", r.stderr);
    let summary = &r.stderr[r.stderr.find("\nerror: ").expect("an error") + 1..];
    let order = [
        "test.rhai:3:9: machine: succeed `echo hi; false` failed (exit status 1)\n",
        "3 | machine.succeed(\"echo hi; false\");\n",
        "  stdout:\n    hi\n",
        "  last console lines of machine:\n",
        "test failed after",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|n| {
            summary
                .find(n)
                .unwrap_or_else(|| panic!("no {n:?} in:\n{summary}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "order {at:?}:\n{summary}"
    );
    assert_eq!(
        r.stderr.matches("last console lines").count(),
        1,
        "{}",
        r.stderr
    );
    harness::assert_nothing_left(&r, "failwording");
}

/// nspawn refuses to start (a bind source that does not exist): its own
/// reason is in the error, once.
#[test]
fn a_failed_nspawn_start_shows_nspawns_error_line() {
    let nodes = format!(
        r#"{{"server":{{"backend":{{"nspawn":{{"image":"{}","extra_args":["--bind=/nonexistent-bind-source:/x"]}}}}}}}}"#,
        harness::image_manifest().display()
    );
    let dir = TestDir::new("nspawnfail", &nodes, "", "start_all();\n");
    for _ in 0..3 {
        let r = attest(
            &["run", "--quiet-console", dir.config().to_str().unwrap()],
            LIMIT,
        );
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        let summary = &r.stderr[r.stderr.find("\nerror: ").expect("an error") + 1..];
        assert!(
            summary.contains("Failed to stat /nonexistent-bind-source: No such file or directory"),
            "{}",
            r.stderr
        );
        assert_eq!(
            r.stderr.matches("Failed to stat").count(),
            1,
            "{}",
            r.stderr
        );
        harness::assert_nothing_left(&r, "nspawnfail");
    }
}
