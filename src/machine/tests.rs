//! [`Machine`] against a real local bash ([`crate::backend::local`]): the
//! operations, and the faults a guest can show (a shell killed mid-command,
//! a machine that dies, a command that hangs, a flood of output), in
//! milliseconds and without root.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Machine, MachineError, MachineState};
use crate::machine::local;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `test` on a started local machine `local` (and its state dir), then
/// terminates the machine.
fn on_machine<Fut: std::future::Future<Output = ()>>(test: impl FnOnce(Machine, PathBuf) -> Fut) {
    let rt = runtime();
    let (m, state) = local::machine("local", &rt);
    rt.block_on(async {
        m.start().await.unwrap();
        test(m.clone(), state.path().to_owned()).await;
        m.terminate().await;
    });
}

#[test]
fn teardown_leaves_no_task_and_no_process() {
    let rt = runtime();
    let tasks = tokio_util::task::TaskTracker::new();
    let (m, _state) = local::machine_with_tasks("local", &rt, tasks.clone());
    rt.block_on(async {
        m.start().await.unwrap();
        // The machine's process group (the backdoor shell is a member).
        let pgid: i32 = m
            .succeed(&cmds("ps -o pgid= -p $$"), T)
            .await
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(pgid > 1);
        tasks.close();
        // While the machine is up its watchers run, and the tracker knows.
        let early = tokio::time::timeout(Duration::from_millis(300), tasks.wait()).await;
        assert!(early.is_err(), "no task tracked while the machine is up");
        m.terminate().await;
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("tasks still running after the machine ended");
        let group = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None);
        assert_eq!(group, Err(nix::errno::Errno::ESRCH));
    });
}

fn cmds(c: &str) -> Vec<String> {
    vec![c.to_owned()]
}

const T: Duration = Duration::from_secs(10);

#[test]
fn succeed_and_fail_follow_the_exit_status() {
    on_machine(|m, _state| async move {
        assert_eq!(m.state(), MachineState::Up);
        assert_eq!(m.succeed(&cmds("echo hi"), T).await.unwrap(), "hi\n");
        assert_eq!(m.fail(&cmds("echo no; exit 3"), T).await.unwrap(), "no\n");
        let e = m
            .succeed(&cmds("echo out; echo err >&2; exit 4"), T)
            .await
            .unwrap_err();
        assert!(
            matches!(e, MachineError::CommandFailed { status: 4, .. }),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with(
                "local: succeed `echo out; echo err >&2; exit 4` failed (exit status 4)"
            ),
            "{text}"
        );
        assert!(text.contains("out") && text.contains("err"), "{text}");
        let e = m.fail(&cmds("true"), T).await.unwrap_err().to_string();
        assert!(e.contains("unexpectedly succeeded"), "{e}");
        // `set -euo pipefail`, as the NixOS driver runs commands.
        assert!(m.succeed(&cmds("false | true"), T).await.is_err());
    });
}

#[test]
fn waits_poll_until_the_condition_holds_or_time_runs_out() {
    on_machine(|m, state| async move {
        let flag = state.join("flag");
        let f = flag.display().to_string();
        m.send_detached(&format!("sleep 0.3; touch {f}"), T)
            .await
            .unwrap();
        m.wait_for_file(&f, T).await.unwrap();
        let started = Instant::now();
        let e = m
            .wait_until_succeeds("test -e /nonexistent/attest", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, MachineError::Timeout { .. }), "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    });
}

/// With the bash protocol a wait polls from the host, and never faster
/// than a try costs: under TCG every try is guest forks competing with what
/// the wait waits for. A try of 300 ms is followed by a pause of at least
/// as long, so tries start at least ~600 ms apart (the growing pauses alone
/// would start the first ones 325 and 350 ms apart).
#[test]
fn a_bash_protocol_wait_never_polls_faster_than_a_try_costs() {
    on_machine(|m, state| async move {
        let log = state.join("tries");
        let probe = format!("date +%s%N >>{}; sleep 0.3; false", log.display());
        let e = m
            .wait_until_succeeds(&probe, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(e, MachineError::Timeout { .. }), "{e:?}");
        crate::guest::agent::tests::assert_tries_apart(&log, 550);
    });
}

/// A command that outlives its timeout is killed in the guest (status 124)
/// and the call returns in time; the machine goes on.
#[test]
fn a_hanging_command_times_out_and_the_machine_goes_on() {
    on_machine(|m, _state| async move {
        let started = Instant::now();
        let out = m.execute("sleep 30", Duration::from_secs(1)).await.unwrap();
        assert_eq!(out.status, 124);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(m.succeed(&cmds("echo alive"), T).await.unwrap(), "alive\n");
    });
}

/// The backdoor shell killed while its command runs: the call fails at once
/// naming the machine and the command, and the next call gets a new shell.
#[test]
fn a_shell_killed_mid_command_fails_the_call_and_the_next_one_works() {
    on_machine(|m, _state| async move {
        // $PPID is `timeout`; its parent is the backdoor shell.
        let kill = "kill -9 $(cut -d' ' -f4 /proc/$PPID/stat); sleep 30";
        let started = Instant::now();
        let e = m.execute(kill, Duration::from_secs(60)).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let text = e.to_string();
        assert!(text.starts_with("local: "), "{text}");
        assert!(text.contains("sleep 30"), "{text}");
        assert_eq!(m.succeed(&cmds("echo again"), T).await.unwrap(), "again\n");
    });
}

/// The machine dies while a command runs: the pending call fails at once
/// with how it ended, and the machine is marked crashed.
#[test]
fn a_machine_that_dies_fails_the_pending_call_at_once() {
    on_machine(|m, _state| async move {
        let killer = m.clone();
        let pending =
            tokio::spawn(async move { killer.execute("sleep 30", Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // From a second session: SIGKILL to the machine process itself (the
        // leader of the group its backdoor shells are in), as a VM killed
        // from outside. $PPID is `timeout`, its parent the backdoor shell.
        let started = Instant::now();
        let kill = "b=$(cut -d' ' -f4 /proc/$PPID/stat); g=$(cut -d' ' -f5 /proc/$b/stat); \
                    [ \"$g\" -gt 1 ] && kill -9 \"$g\"";
        let _ = m.execute(kill, T).await;
        let e = pending.await.unwrap().unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(e, MachineError::Died { .. }), "{e:?}");
        assert!(e.to_string().contains("killed by signal 9"), "{e}");
    });
}

/// A big output arrives whole and in order.
#[test]
fn a_flood_of_output_arrives_whole() {
    on_machine(|m, _state| async move {
        let out = m
            .execute("seq 1 2000000; seq 1 100000 >&2", Duration::from_secs(60))
            .await
            .unwrap();
        let text = out.stdout_text();
        assert_eq!(text.lines().count(), 2_000_000);
        assert!(text.ends_with("1999999\n2000000\n"));
        assert_eq!(out.stderr_text().lines().count(), 100_000);
    });
}

#[test]
fn crash_then_start_brings_a_fresh_machine() {
    on_machine(|m, _state| async move {
        m.succeed(&cmds("true"), T).await.unwrap();
        m.crash().await.unwrap();
        assert_ne!(m.state(), MachineState::Up);
        m.start().await.unwrap();
        assert_eq!(m.succeed(&cmds("echo back"), T).await.unwrap(), "back\n");
    });
}
