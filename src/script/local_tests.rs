//! The script bindings on a real local bash machine
//! ([`crate::backend::local`]): what a script sees, without root or a guest.

use std::sync::{Arc, OnceLock};

use super::{engine, scope_for, ScriptContext};
use crate::machine::local;
use crate::report::{ReportOptions, Reporter};

/// Runs `source` with one local machine `machine`; returns the script's
/// error text, and the JSON events when `events` is given.
fn run(source: &str, events: Option<&std::path::Path>) -> Result<(), String> {
    run_raw(source, events)?.map_err(|mut e| super::thrown::error_text(&mut e))
}

/// [`run`], the error as the script threw it; `Err` when the check fails.
fn run_raw(
    source: &str,
    events: Option<&std::path::Path>,
) -> Result<Result<(), Box<rhai::EvalAltResult>>, String> {
    run_cancelled(source, events, None)
}

/// [`run_raw`], the run cancelled for `reason` after `after` when given.
fn run_cancelled(
    source: &str,
    events: Option<&std::path::Path>,
    cancel_after: Option<(std::time::Duration, crate::cancel::CancelReason)>,
) -> Result<Result<(), Box<rhai::EvalAltResult>>, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opts = ReportOptions {
        log_json: events.map(ToOwned::to_owned),
        ..Default::default()
    };
    let reporter = Reporter::new("local", &opts).unwrap();
    let (m, state) = local::machine_reporting_to("machine", &rt, reporter.clone());
    let cancel = m.cancel().clone();
    if let Some((after, reason)) = cancel_after {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            cancel.cancel(reason);
        });
    }
    let ctx = Arc::new(ScriptContext {
        machines: vec![m.clone()],
        reporter,
        cancel,
        ast: OnceLock::new(),
        base_dir: state.path().to_owned(),
    });
    let engine = engine(ctx.clone());
    let nodes = vec![("machine".to_owned(), rhai::Dynamic::from(m.clone()))];
    let scope = scope_for(&nodes, &[]);
    let ast = super::check::check(&engine, &scope, std::path::Path::new("t.rhai"), source)
        .map_err(|e| e.rendered)?;
    let ast = Arc::new(ast);
    let _ = ctx.ast.set(ast.clone());
    let mut scope = scope_for(&nodes, &[]);
    let r = engine.run_ast_with_scope(&mut scope, &ast);
    rt.block_on(m.terminate());
    Ok(r)
}

#[test]
fn the_script_api_runs_on_a_local_machine() {
    run(
        r#"
start_all();
assert_eq(machine.succeed("echo hi"), "hi\n");
assert_eq(succeed(machine, "echo fn form"), "fn form\n");
machine.fail("exit 1");
let r = machine.execute("echo out; exit 3");
assert_eq(r.status, 3);
assert_eq(r.output, "out\n");
machine.succeed("sleep 0.2; touch /dev/shm/attest-local-flag-$PPID");
machine.wait_until_succeeds("ls /dev/shm/ | grep -q attest-local-flag-");
machine.succeed("rm -f /dev/shm/attest-local-flag-*");
let tries = 0;
retry(#{ attempts: 5, delay: 0.01 }, || { tries += 1; if tries < 3 { throw "not yet"; } });
assert_eq(tries, 3);
let outs = wait_all([machine, machine], |m| m.succeed("echo both"));
assert_eq(outs, ["both\n", "both\n"]);
"#,
        None,
    )
    .unwrap();
}

#[test]
fn a_failing_call_names_the_machine_the_call_and_the_status() {
    let e = run("machine.succeed(\"echo some-output; exit 3\");", None).unwrap_err();
    assert!(
        e.contains("machine: succeed `echo some-output; exit 3` failed (exit status 3)"),
        "{e}"
    );
    assert!(e.contains("some-output"), "{e}");
    let e = run(
        "machine.wait_until_succeeds(\"false\", #{ timeout: 1 });",
        None,
    )
    .unwrap_err();
    assert!(e.contains("timed out after 1 seconds"), "{e}");
}

/// `wait_all` runs each machine's closure on a thread of its own; a
/// `subtest` there nests in the section `wait_all` was called from.
/// The JSON event log at `path`.
fn read_events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_subtest_inside_wait_all_keeps_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    run(
        r#"
subtest("outer", || {
    wait_all([machine, machine], |m| subtest("inner", || m.succeed("true")));
});
"#,
        Some(&events),
    )
    .unwrap();
    let events = read_events(&events);
    let started = |name: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["event"] == "section_started" && e["name"] == name)
            .collect()
    };
    let outer = started("outer");
    assert_eq!(outer.len(), 1);
    let inner = started("inner");
    assert_eq!(inner.len(), 2, "{events:#?}");
    for i in inner {
        assert_eq!(i["parent"], outer[0]["id"], "{i}");
        assert_eq!(i["depth"], 1, "{i}");
    }
}

/// A machine error reaches `catch` as itself and still reads as its message.
#[test]
fn a_caught_machine_error_reads_as_its_message() {
    run(
        r#"
try {
    machine.succeed("exit 3");
    throw "succeed did not fail";
} catch (e) {
    assert_contains(`${e}`, "machine: succeed `exit 3` failed (exit status 3)");
    assert_contains(e.to_string(), "exit status 3");
    assert_contains("caught: " + e, "caught: machine: succeed");
    if !e.contains("exit status 3") { throw "contains"; }
}
"#,
        None,
    )
    .unwrap();
    let e = run(
        "try { machine.succeed(\"exit 4\"); } catch (e) { throw e; }",
        None,
    )
    .unwrap_err();
    assert!(e.contains("succeed `exit 4` failed (exit status 4)"), "{e}");
    assert!(!e.contains("MachineError"), "{e}");
}

/// The error that ends a script keeps its type through rethrows and
/// function calls: the driver reads the failure's cause from it.
#[test]
fn the_failure_cause_is_read_from_the_errors_type() {
    use crate::report::FailureCause;
    for (source, cause) in [
        ("machine.succeed(\"exit 3\");", FailureCause::CommandFailed),
        (
            "fn f() { machine.fail(\"true\") } f();",
            FailureCause::CommandFailed,
        ),
        (
            "try { machine.succeed(\"false\"); } catch (e) { throw e; }",
            FailureCause::CommandFailed,
        ),
        (
            "machine.wait_until_succeeds(\"false\", #{ timeout: 1 });",
            FailureCause::Timeout,
        ),
        ("machine.screenshot(\"x\");", FailureCause::Unsupported),
        ("start_all(); machine.block();", FailureCause::Unsupported),
        ("throw \"mine\";", FailureCause::Script),
        ("assert_eq(1, 2);", FailureCause::Script),
    ] {
        let e = run_raw(source, None).unwrap().unwrap_err();
        assert_eq!(super::thrown::failure_cause(&e), cause, "{source}: {e:?}");
    }
}

/// A cancellation reaches the driver as a value: whatever the script was
/// doing (a machine call, a sleep, a `wait_all`, a step after it caught the
/// cancellation), the error that ends it carries the reason.
#[test]
fn a_cancellation_ends_the_script_with_its_reason() {
    use crate::cancel::CancelReason;
    use crate::report::FailureCause;
    let reason = CancelReason::Signal("SIGTERM", libc::SIGTERM);
    for source in [
        "start_all(); machine.succeed(\"sleep 30\");",
        "sleep(30);",
        "start_all(); wait_all([machine], |m| m.succeed(\"sleep 30\"));",
        "subtest(\"s\", || sleep(30));",
        "try { sleep(30); } catch (e) { assert_contains(`${e}`, \"torn down\"); } sleep(30);",
    ] {
        let started = std::time::Instant::now();
        let after = std::time::Duration::from_millis(700);
        let e = run_cancelled(source, None, Some((after, reason.clone())))
            .unwrap()
            .unwrap_err();
        assert!(started.elapsed().as_secs() < 10, "{source}");
        assert_eq!(
            super::thrown::cancel_reason(&e),
            Some(reason.clone()),
            "{source}: {e:?}"
        );
        assert_eq!(
            super::thrown::failure_cause(&e),
            FailureCause::Cancelled,
            "{source}"
        );
    }
    let e = run_raw("machine.succeed(\"exit 3\");", None)
        .unwrap()
        .unwrap_err();
    assert_eq!(super::thrown::cancel_reason(&e), None);
}

/// Where every section and log line nests (depth and parent) for a script
/// that opens sections and logs from each place that can: the script, a
/// subtest, a machine call, `retry`, a `wait_all` closure on its own thread,
/// a `during` block's checks, `sleep` and a machine's `log`.
#[test]
fn sections_and_lines_nest_where_the_script_opened_them() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    run(
        r#"
start_all();
log("top");
let tries = 0;
subtest("outer", || {
    log("in outer");
    machine.succeed("true");
    retry(#{ attempts: 2, delay: 0.01 }, || { tries += 1; if tries < 2 { throw "once"; } });
    wait_all([machine, machine], |m| {
        log("in closure");
        subtest("inner", || { log("in inner"); m.succeed("true") });
    });
    sleep(0);
    machine.log("machine line");
    let c = polling_condition(|| { log("checking"); true }, #{ seconds_interval: 0, description: "holds" });
    c.during(|| { machine.succeed("true"); });
});
log("bottom");
"#,
        Some(&events),
    )
    .unwrap();
    let events = read_events(&events);
    let names: std::collections::BTreeMap<String, String> = events
        .iter()
        .filter(|e| e["event"] == "section_started")
        .map(|e| (e["id"].to_string(), e["name"].as_str().unwrap().to_owned()))
        .collect();
    let mut lines: Vec<String> = events
        .iter()
        .filter_map(|e| {
            let what = match e["event"].as_str()? {
                "section_started" => format!(
                    "section {:?} in {:?}",
                    e["name"].as_str()?,
                    names.get(&e["parent"].to_string())
                ),
                "section_finished" => format!("finished {:?}", e["name"].as_str()?),
                "log" => format!("log {:?}", e["message"].as_str()?),
                _ => return None,
            };
            Some(format!("{} {what}", e["depth"]))
        })
        .collect();
    lines.sort();
    let got = lines.join("\n");
    assert_eq!(got, EXPECTED_NESTING, "\n{got}");
}

/// What [`sections_and_lines_nest_where_the_script_opened_them`] reads
/// (sorted: the `wait_all` closures run at once), as the thread-local
/// section stack had it.
const EXPECTED_NESTING: &str = r#"0 finished "outer"
0 finished "starting all machines"
0 log "bottom"
0 log "top"
0 section "outer" in None
0 section "starting all machines" in None
1 finished "inner"
1 finished "inner"
1 finished "must succeed: true"
1 finished "must succeed: true"
1 log "attempt 1/2 failed: Runtime error: once (line 8, position 74)"
1 log "checking"
1 log "in closure"
1 log "in closure"
1 log "in outer"
1 log "machine line"
1 log "polling condition succeeded: holds ((not called yet))"
1 log "sleeping 0 seconds"
1 section "inner" in Some("outer")
1 section "inner" in Some("outer")
1 section "must succeed: true" in Some("outer")
1 section "must succeed: true" in Some("outer")
2 finished "must succeed: true"
2 finished "must succeed: true"
2 log "in inner"
2 log "in inner"
2 section "must succeed: true" in Some("inner")
2 section "must succeed: true" in Some("inner")"#;
