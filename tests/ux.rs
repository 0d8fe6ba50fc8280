//! What a person reads: `attest check` diagnostics, the wording of the human
//! log on failures, boot progress and the REPL (issue 11, items 12 and 14–16).

mod harness;

use std::time::Duration;

use attest::exit_code::{FAILED, INVALID, PASSED};
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
    assert_eq!(r.code, Some(INVALID.into()), "{}", r.stderr);
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
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
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
        assert_eq!(r.code, Some(INVALID.into()), "{}", r.stderr);
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
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
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
        assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
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

/// Runs `attest ARGS` with stderr on a pseudo-terminal of 100 columns;
/// returns the exit status and everything written to the terminal.
fn attest_on_a_tty(args: &[&str]) -> (Option<i32>, String) {
    use std::io::Read;
    let winsize = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&winsize), None).expect("openpty");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_attest"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(pty.slave))
        .spawn()
        .expect("cannot run attest");
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the last holder of the terminal is gone.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("attest did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), reader.join().unwrap())
}

/// On a terminal a booting machine gets a line with its boot time and last
/// console line, redrawn in place; piped, the log has no such line.
#[test]
fn boots_show_progress_in_place_on_a_terminal_only() {
    let dir = TestDir::nspawn(
        "progress",
        &["server"],
        "",
        "server.start();\nserver.succeed(\"true\");\n",
    );
    let (code, tty) = attest_on_a_tty(&["run", "--quiet-console", dir.config().to_str().unwrap()]);
    assert_eq!(code, Some(PASSED.into()), "{tty}");
    let progress = regex::Regex::new(r"server: booting +\d+s \S").unwrap();
    assert!(progress.is_match(&tty), "no progress line in:\n{tty:?}");
    // Redrawn in place: the line is cleared, not scrolled.
    assert!(tty.contains("\x1b[2K"), "{tty:?}");
    assert!(tty.contains("test passed"), "{tty:?}");

    let piped = attest(
        &["run", "--quiet-console", dir.config().to_str().unwrap()],
        LIMIT,
    );
    assert_eq!(piped.code, Some(PASSED.into()), "{}", piped.stderr);
    assert!(!progress.is_match(&piped.stderr), "{}", piped.stderr);
    assert!(!piped.stderr.contains('\x1b'), "{:?}", piped.stderr);
}

/// Runs `attest repl` on `dir` with `input` as its stdin and `state` as
/// `$XDG_STATE_HOME`.
fn repl(dir: &TestDir, state: &std::path::Path, input: &str) -> harness::Run {
    use std::io::Write;
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_attest"))
        .args(["repl", dir.config().to_str().unwrap()])
        .env("XDG_STATE_HOME", state)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run attest");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    harness::finish(child, started, LIMIT)
}

#[test]
fn the_repl_suggests_helps_keeps_history_and_does_not_claim_a_pass() {
    let dir = TestDir::new("repl", NODES, "", "start_all();\n");
    let state = tempfile::tempdir().unwrap();
    let r = repl(
        &dir,
        state.path(),
        "server.succed(\"true\");\nhelp()\n:help\nlet x = 40 + 2;\nx\n",
    );
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("<repl>:1:8: error: unknown method `succed`; did you mean `succeed`?"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stdout
            .matches("machines: client_1 (node `client-1`), server\n")
            .count(),
        2,
        "{}",
        r.stdout
    );
    for api in ["wait_for_unit", "succeed", "start_all", "subtest"] {
        assert!(r.stdout.contains(api), "no {api} in help:\n{}", r.stdout);
    }
    assert!(r.stdout.contains("42\n"), "{}", r.stdout);
    assert!(!r.stderr.contains("test passed"), "{}", r.stderr);
    assert!(r.stderr.contains("REPL closed after"), "{}", r.stderr);

    // The next session finds the first one's history and adds to it.
    let r = repl(&dir, state.path(), "let y = 1;\n");
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    let history = std::fs::read_to_string(state.path().join("attest/repl_history")).unwrap();
    assert!(history.contains("let x = 40 + 2;"), "{history}");
    assert!(history.contains("let y = 1;"), "{history}");
}
