//! What a person reads: `attest check` diagnostics, the wording of the human
//! log on failures, boot progress and the REPL (issue 11, items 12 and 14–16).

mod harness;

use harness::{check, TestDir, UNBOOTABLE_NODES as NODES};

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
