//! The measurements. Each run gets a fresh [`Driver`] from a generated config
//! (one node, or N nodes for scaling) so it is torn down, and interrupted,
//! exactly like a test run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{BackendError, BackendOp};
use crate::config::{BackendKind, TestConfig};
use crate::driver::{self, Driver, DriverOptions, Outcome, RunOptions};
use crate::guest::agent::Protocol;
use crate::machine::{Machine, MachineError};
use crate::report::{ReportOptions, Reporter};

use super::big_data;
use super::stats::put_into;
use super::usage::Usage;
use super::{
    BackendReport, BenchError, BenchOptions, Interrupt, Interruption, ScalingPoint, ScalingReport,
    Summary,
};

/// Size of the large-output figure.
pub const MIB: usize = 1 << 20;
/// Large-output round trips per run.
const MIB_REPEATS: usize = 5;
/// Guest-side loop length for the fork/exec figures.
const GUEST_LOOP: u32 = 100;
/// The shell-pipeline figure's command (needs bash with either protocol).
const PIPELINE: &str = "echo attest | tr a-z A-Z";
/// Pipeline round trips per run.
const PIPELINES: usize = 50;
/// Commands at once for the concurrency figure.
const CONCURRENT: usize = 50;

/// Awaits spawned measurement tasks in order.
async fn futures_join<T>(
    tasks: Vec<tokio::task::JoinHandle<Result<T, MachineError>>>,
) -> Vec<Result<T, MachineError>> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| {
            Err(MachineError::TaskFailed {
                machine: String::new(),
                panicked: e.is_panic(),
                detail: e.to_string(),
            })
        }));
    }
    out
}

/// What every scenario needs.
pub struct BenchContext<'a> {
    /// The runtime machines run on.
    pub runtime: &'a tokio::runtime::Runtime,
    /// Where generated configs and snapshots go (removed at the end).
    pub dir: &'a Path,
    /// The image manifest (absolute).
    pub image: &'a Path,
    /// The options.
    pub opts: &'a BenchOptions,
    /// Set on SIGINT/SIGTERM.
    pub interrupt: &'a Interrupt,
    /// The guest protocol measured.
    pub protocol: Protocol,
    /// Also take the per-command figures of every other protocol in
    /// [`BenchOptions::protocols`] on the same machine ([`BackendReport::same_machine`]).
    pub compare_protocols: bool,
}

impl BenchContext<'_> {
    fn check_interrupt(&self) -> Result<(), BenchError> {
        if let Some(signal) = self.interrupt.signal() {
            return Err(Interruption::Signal(signal).into());
        }
        Ok(())
    }

    fn driver_options(&self) -> DriverOptions {
        DriverOptions {
            protocol: self.protocol,
            ..Default::default()
        }
    }

    fn report_options(&self) -> ReportOptions {
        ReportOptions {
            show_console: false,
            colour: self.opts.colour,
            progress: false,
            log_json: None,
            junit: None,
            live_output: false,
        }
    }
}

/// The host's CLOCK_MONOTONIC in µs (what systemd's `…Monotonic` properties use).
fn monotonic_us() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    Some(t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Why one measured run failed; the bench records it and goes on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file the bench reads or writes.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The test config to rewrite is not JSON.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The test config to rewrite lacks a field.
    #[error("{}: no {field}", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// `script` or `nodes`.
        field: &'static str,
    },
    /// The generated config does not load.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The run's report files cannot be written.
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    /// The driver could not prepare the run.
    #[error("{0}")]
    Driver(anyhow::Error),
    /// A machine operation failed.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// A measurement task panicked or was cancelled.
    #[error("measurement task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The generated config has no node.
    #[error("the generated config has no node")]
    NoNode,
    /// The 1 MiB output came back short or long.
    #[error("1 MiB output arrived as {0} bytes")]
    OutputSize(usize),
}

fn write_file(path: &Path, text: &str) -> Result<(), RunError> {
    std::fs::write(path, text).map_err(|source| RunError::File {
        path: path.to_owned(),
        source,
    })
}

fn to_json(path: &Path, v: &serde_json::Value) -> Result<String, RunError> {
    serde_json::to_string_pretty(v).map_err(|source| RunError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Writes a config with `nodes` nodes of `backend` on the test image.
fn write_config(
    ctx: &BenchContext<'_>,
    name: &str,
    backend: BackendKind,
    nodes: usize,
    network: bool,
) -> Result<PathBuf, RunError> {
    let mut map = serde_json::Map::new();
    for i in 1..=nodes {
        map.insert(
            format!("n{i:02}"),
            serde_json::json!({ "backend": { backend.name(): { "image": ctx.image } } }),
        );
    }
    let config = serde_json::json!({
        "version": 1,
        "name": name,
        "script": "bench.rhai",
        "global_timeout": if backend.is_vm() { 3600 } else { 600 },
        "enable_network": network,
        "nodes": map,
    });
    let script = ctx.dir.join("bench.rhai");
    let path = ctx.dir.join(format!("{name}.json"));
    write_file(&script, "start_all();\n")?;
    write_file(&path, &to_json(&path, &config)?)?;
    Ok(path)
}

/// Runs `f` with a fresh driver for `config`, then tears it down whatever
/// happened. The outer error is an interruption, the inner one a failure.
fn with_driver<T>(
    ctx: &BenchContext<'_>,
    config: &Path,
    f: impl FnOnce(&Driver) -> Result<T, RunError>,
) -> Result<Result<T, RunError>, BenchError> {
    ctx.check_interrupt()?;
    let setup = || -> Result<Driver, RunError> {
        let config = Arc::new(TestConfig::load(config)?);
        let reporter = Reporter::new(&config.name, &ctx.report_options())?;
        Driver::new(
            config,
            reporter,
            &ctx.driver_options(),
            ctx.runtime.handle().clone(),
        )
        .map_err(RunError::Driver)
    };
    let mut driver = match setup() {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    driver.spawn_watchers();
    let result = f(&driver);
    // A cancelled run (signal, global timeout) is not a figure, whatever
    // error it caused the scenario.
    let cancelled = driver.cancellation().check();
    driver.teardown();
    if let Err(reason) = cancelled {
        return Err(Interruption::Cancelled(reason).into());
    }
    ctx.check_interrupt()?;
    Ok(result)
}

/// Runs a future on the runtime (a worker thread spawns the guest processes,
/// as for a script) and waits for it.
fn block<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = Result<T, MachineError>> + Send + 'static,
) -> Result<T, RunError> {
    match rt.block_on(rt.spawn(fut)) {
        Ok(r) => Ok(r?),
        Err(e) => Err(RunError::Task(e)),
    }
}

/// Why a figure is missing: the node's backend lacks the operation.
#[derive(Debug, Clone, thiserror::Error)]
enum NotSupported {
    /// The capability table refused it before anything was sent.
    #[error(transparent)]
    Refused(MachineError),
    /// The backend itself answered it does not have it.
    #[error(transparent)]
    Backend(BackendError),
}

/// The samples of one single-node run.
#[derive(Default)]
struct SingleRun {
    boot_backdoor: f64,
    boot_multi_user: f64,
    boot_multi_user_guest: Option<f64>,
    commands: CommandRun,
    /// Every protocol's per-command figures on this one machine, when compared.
    same_machine: Vec<(Protocol, CommandRun)>,
    guest_exec_true: f64,
    guest_bash_c_true: f64,
    guest_bash_c_pipeline: f64,
    output_64mib: f64,
    concurrent: f64,
    big: Vec<big_data::Sample>,
    snapshot: Option<Result<f64, NotSupported>>,
    shutdown: f64,
}

async fn guest_loop_ms(m: &Machine, body: &str) -> Result<f64, MachineError> {
    let cmd = format!(
        "s=$(date +%s%N); for i in $(seq {GUEST_LOOP}); do {body}; done; e=$(date +%s%N); echo $((e - s))"
    );
    let out = m.execute(&cmd, Duration::from_secs(300)).await?;
    let ns: f64 = out
        .stdout_text()
        .trim()
        .parse()
        .map_err(|_| MachineError::UnexpectedOutput {
            machine: m.name().to_owned(),
            command: cmd.clone(),
            stdout: out.stdout_text(),
            expected: "a number of nanoseconds",
        })?;
    Ok(ns / 1e6 / f64::from(GUEST_LOOP))
}

fn expect_ok(
    m: &Machine,
    out: &crate::guest::CommandOutput,
    what: &str,
) -> Result<(), MachineError> {
    if out.status == 0 {
        return Ok(());
    }
    Err(MachineError::CommandFailed {
        machine: m.name().to_owned(),
        call: "bench",
        command: what.to_owned(),
        expectation: "failed",
        status: out.status,
        stdout: out.stdout_text(),
        stderr: out.stderr_text(),
    })
}

fn single_run(
    ctx: &BenchContext<'_>,
    driver: &Driver,
    snapshot: PathBuf,
) -> Result<SingleRun, RunError> {
    let rt = ctx.runtime;
    let m = driver
        .machines()
        .values()
        .next()
        .cloned()
        .ok_or(RunError::NoNode)?;
    let vm = m.backend_kind().is_vm();
    let mut run = SingleRun::default();

    let mm = m.clone();
    let shares_clock = m.backend_kind() == BackendKind::Nspawn;
    let (backdoor, multi_user, entered) = block(rt, async move {
        let mono0 = monotonic_us();
        let t0 = Instant::now();
        mm.start().await?;
        let backdoor = t0.elapsed();
        let limit = Duration::from_secs(if vm { 900 } else { 120 });
        mm.wait_for_unit("multi-user.target", None, limit).await?;
        let multi_user = t0.elapsed();
        // A container shares the host's CLOCK_MONOTONIC, so systemd's own
        // timestamp says when the target was reached, free of the
        // wait_for_unit polling interval.
        let mut entered = None;
        if shares_clock {
            let out = mm
                .execute(
                    "systemctl show multi-user.target -p ActiveEnterTimestampMonotonic --value",
                    Duration::from_secs(30),
                )
                .await?;
            if let (Ok(us), Some(mono0)) = (out.stdout_text().trim().parse::<u64>(), mono0) {
                entered = us.checked_sub(mono0).map(|d| d as f64 / 1000.0);
            }
        }
        Ok((backdoor, multi_user, entered))
    })?;
    run.boot_backdoor = ms(backdoor);
    run.boot_multi_user = ms(multi_user);
    run.boot_multi_user_guest = entered;

    run.commands = command_figures(ctx, &m)?;
    if ctx.compare_protocols {
        // Every protocol on this machine, one after the other: two boots
        // compare two machines (two TCG VMs differ with the host's load).
        run.same_machine.push((ctx.protocol, run.commands.clone()));
        for &other in ctx.opts.protocols.iter().filter(|p| **p != ctx.protocol) {
            for p in [other, ctx.protocol] {
                let mm = m.clone();
                block(rt, async move { mm.switch_protocol(p).await })?;
                if p == other {
                    run.same_machine.push((other, command_figures(ctx, &m)?));
                }
            }
        }
    }
    single_run_rest(ctx, m, run, snapshot)
}

/// Per-command figures of one protocol on one machine.
#[derive(Debug, Clone, Default)]
struct CommandRun {
    round_trips: Vec<f64>,
    mib: Vec<f64>,
    pipelines: Vec<f64>,
    attest_cpu_per_command: f64,
    attest_cpu_per_mib: f64,
}

/// Round trips as a script makes them: one blocking call per command from
/// the script thread (`true`, 1 MiB outputs, shell pipelines).
fn command_figures(ctx: &BenchContext<'_>, m: &Machine) -> Result<CommandRun, RunError> {
    let mut run = CommandRun::default();
    let timeout = Duration::from_secs(30);
    for _ in 0..5 {
        m.block_on({
            let m = m.clone();
            async move { m.execute("true", timeout).await }
        })?;
    }
    let u0 = Usage::now();
    for _ in 0..ctx.opts.commands {
        let t = Instant::now();
        let out = m.block_on({
            let m = m.clone();
            async move { m.execute("true", timeout).await }
        })?;
        run.round_trips.push(ms(t.elapsed()));
        expect_ok(m, &out, "true")?;
    }
    run.attest_cpu_per_command =
        Usage::now().since(&u0).self_cpu_s() * 1000.0 / ctx.opts.commands.max(1) as f64;

    let u0 = Usage::now();
    for _ in 0..MIB_REPEATS {
        let t = Instant::now();
        let out = m.block_on({
            let m = m.clone();
            async move {
                m.execute(
                    &format!("head -c {MIB} /dev/zero"),
                    Duration::from_secs(120),
                )
                .await
            }
        })?;
        run.mib.push(ms(t.elapsed()));
        if out.stdout.len() != MIB {
            return Err(RunError::OutputSize(out.stdout.len()));
        }
    }

    run.attest_cpu_per_mib = Usage::now().since(&u0).self_cpu_s() * 1000.0 / MIB_REPEATS as f64;

    for _ in 0..PIPELINES {
        let t = Instant::now();
        let out = m.block_on({
            let m = m.clone();
            async move { m.execute(PIPELINE, timeout).await }
        })?;
        run.pipelines.push(ms(t.elapsed()));
        expect_ok(m, &out, PIPELINE)?;
    }
    Ok(run)
}

/// The figures after the per-command ones, with the machine's own protocol.
fn single_run_rest(
    ctx: &BenchContext<'_>,
    m: Machine,
    mut run: SingleRun,
    snapshot: PathBuf,
) -> Result<SingleRun, RunError> {
    let rt = ctx.runtime;
    let vm = m.backend_kind().is_vm();
    let mm = m.clone();
    let (exec_true, bash_c, bash_c_pipeline) = block(rt, async move {
        let a = guest_loop_ms(&mm, "/bin/true").await?;
        let b = guest_loop_ms(&mm, "bash -c true").await?;
        let c = guest_loop_ms(&mm, &format!("bash -c '{PIPELINE}' >/dev/null")).await?;
        Ok((a, b, c))
    })?;
    run.guest_exec_true = exec_true;
    run.guest_bash_c_true = bash_c;
    run.guest_bash_c_pipeline = bash_c_pipeline;

    let mm = m.clone();
    run.output_64mib = block(rt, async move {
        let t = Instant::now();
        let out = mm
            .execute(
                &format!("head -c {} /dev/zero", 64 * MIB),
                Duration::from_secs(300),
            )
            .await?;
        let took = ms(t.elapsed());
        expect_ok(&mm, &out, "64 MiB output")?;
        Ok(took)
    })?;

    let mm = m.clone();
    run.concurrent = block(rt, async move {
        let t = Instant::now();
        let all = (0..CONCURRENT).map(|_| {
            let mm = mm.clone();
            tokio::spawn(async move { mm.execute("sleep 1", Duration::from_secs(120)).await })
        });
        for r in futures_join(all.collect()).await {
            let out = r?;
            expect_ok(&mm, &out, "sleep 1")?;
        }
        Ok(ms(t.elapsed()))
    })?;

    // Past 256 MiB only where issue 15 sets its goals: the agent on nspawn.
    let agent_on_nspawn = m.backend_kind() == BackendKind::Nspawn
        && matches!(ctx.protocol, Protocol::Agent | Protocol::Auto);
    let sizes = ctx.opts.big_data.iter().copied();
    for size in sizes.filter(|s| s.0 <= big_data::Size::EVERYWHERE || agent_on_nspawn) {
        let (mm, dir) = (m.clone(), ctx.dir.to_owned());
        run.big.push(block(rt, async move {
            big_data::measure(&mm, &dir, size).await
        })?);
    }

    let mm = m.clone();
    run.snapshot = Some(block(rt, async move {
        match mm
            .backend_op(BackendOp::SnapshotCreate(snapshot.clone()))
            .await
        {
            // Refused by the capability table before anything is sent, or
            // by the backend itself: either way a figure this backend lacks.
            Err(e @ MachineError::Unsupported { .. }) => Ok(Err(NotSupported::Refused(e))),
            Err(MachineError::Backend {
                error: e @ BackendError::Unsupported { .. },
                ..
            }) => Ok(Err(NotSupported::Backend(e))),
            Err(e) => Err(e),
            Ok(_) => {
                let t = Instant::now();
                mm.backend_op(BackendOp::SnapshotRestore(snapshot)).await?;
                let out = mm.execute("true", Duration::from_secs(60)).await?;
                expect_ok(&mm, &out, "true after restore")?;
                Ok(Ok(ms(t.elapsed())))
            }
        }
    })?);

    let mm = m.clone();
    let shutdown = block(rt, async move {
        let t = Instant::now();
        mm.shutdown(Duration::from_secs(if vm { 300 } else { 60 }))
            .await?;
        Ok(t.elapsed())
    })?;
    run.shutdown = ms(shutdown);
    Ok(run)
}

/// The test config rewritten so every node runs on `backend` with the image.
fn rewrite_test(ctx: &BenchContext<'_>, backend: BackendKind) -> Result<PathBuf, RunError> {
    let src = &ctx.opts.test_config;
    let file_error = |source| RunError::File {
        path: src.clone(),
        source,
    };
    let text = std::fs::read_to_string(src).map_err(file_error)?;
    let mut v: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| RunError::Json {
            path: src.clone(),
            source,
        })?;
    let base = std::path::absolute(src)
        .map_err(file_error)?
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let script = v
        .get("script")
        .and_then(|s| s.as_str())
        .ok_or_else(|| RunError::Field {
            path: src.clone(),
            field: "script",
        })?;
    v["script"] = serde_json::json!(base.join(script));
    let name = v
        .get("name")
        .and_then(|s| s.as_str())
        .unwrap_or("test")
        .to_owned();
    v["name"] = serde_json::json!(format!("{name}-{backend}"));
    if backend.is_vm() {
        v["global_timeout"] = serde_json::json!(3600);
    }
    let nodes = v
        .get_mut("nodes")
        .and_then(|n| n.as_object_mut())
        .ok_or_else(|| RunError::Field {
            path: src.clone(),
            field: "nodes",
        })?;
    for node in nodes.values_mut() {
        node["backend"] = serde_json::json!({ backend.name(): { "image": ctx.image } });
    }
    let path = ctx.dir.join(format!("whole-{backend}.json"));
    write_file(&path, &to_json(&path, &v)?)?;
    Ok(path)
}

fn put(b: &mut BackendReport, name: &str, samples: &[f64], p99: bool) {
    put_into(&mut b.figures, name, samples, p99);
}

/// The per-command figures of `runs` (all runs pooled).
fn put_commands(figures: &mut BTreeMap<String, Summary>, runs: &[&CommandRun]) {
    let pooled = |f: fn(&CommandRun) -> &Vec<f64>| -> Vec<f64> {
        runs.iter().flat_map(|r| f(r).iter().copied()).collect()
    };
    put_into(
        figures,
        "true_round_trip_ms",
        &pooled(|r| &r.round_trips),
        true,
    );
    put_into(figures, "output_1mib_ms", &pooled(|r| &r.mib), false);
    put_into(
        figures,
        "pipeline_round_trip_ms",
        &pooled(|r| &r.pipelines),
        true,
    );
    let each = |f: fn(&CommandRun) -> f64| runs.iter().map(|r| f(r)).collect::<Vec<f64>>();
    put_into(
        figures,
        "attest_cpu_per_command_ms",
        &each(|r| r.attest_cpu_per_command),
        false,
    );
    put_into(
        figures,
        "attest_cpu_per_1mib_ms",
        &each(|r| r.attest_cpu_per_mib),
        false,
    );
}

/// Every single-node figure and the whole-test wall time for one backend.
pub fn measure_backend(
    ctx: &BenchContext<'_>,
    backend: BackendKind,
    b: &mut BackendReport,
) -> Result<(), BenchError> {
    let mut runs = Vec::new();
    let mut interrupted = Ok(());
    for i in 0..b.runs {
        let config = match write_config(ctx, &format!("bench-{backend}"), backend, 1, false) {
            Ok(c) => c,
            Err(e) => {
                b.errors.push(e.to_string());
                break;
            }
        };
        let snapshot = ctx.dir.join(format!("snapshot-{backend}-{i}"));
        eprintln!("bench: {backend}: single-node run {}/{}", i + 1, b.runs);
        match with_driver(ctx, &config, |d| single_run(ctx, d, snapshot)) {
            Ok(Ok(r)) => runs.push(r),
            Ok(Err(e)) => b.errors.push(format!("run {}: {e}", i + 1)),
            Err(e) => {
                // Keep the runs done so far.
                interrupted = Err(e);
                break;
            }
        }
    }
    let col = |f: fn(&SingleRun) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    put(b, "boot_backdoor_ms", &col(|r| r.boot_backdoor), false);
    put(b, "boot_multi_user_ms", &col(|r| r.boot_multi_user), false);
    let guest: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.boot_multi_user_guest)
        .collect();
    put(b, "boot_multi_user_guest_clock_ms", &guest, false);
    if guest.is_empty() && !runs.is_empty() {
        b.not_applicable.insert(
            "boot_multi_user_guest_clock_ms".into(),
            "the guest has its own monotonic clock".into(),
        );
    }
    let own: Vec<&CommandRun> = runs.iter().map(|r| &r.commands).collect();
    put_commands(&mut b.figures, &own);
    for protocol in &ctx.opts.protocols {
        let on_one_machine: Vec<&CommandRun> = runs
            .iter()
            .flat_map(|r| &r.same_machine)
            .filter(|(p, _)| p == protocol)
            .map(|(_, c)| c)
            .collect();
        if !on_one_machine.is_empty() {
            let figures = b
                .same_machine
                .entry(protocol.name().to_owned())
                .or_default();
            put_commands(figures, &on_one_machine);
        }
    }
    put(b, "output_64mib_ms", &col(|r| r.output_64mib), false);
    put(
        b,
        "guest_bash_c_pipeline_ms",
        &col(|r| r.guest_bash_c_pipeline),
        false,
    );
    put(b, "concurrent_50_sleep_1_ms", &col(|r| r.concurrent), false);
    let big: Vec<big_data::Sample> = runs.iter().flat_map(|r| r.big.clone()).collect();
    big_data::put_figures(b, &ctx.opts.big_data, &big);
    put(b, "shutdown_ms", &col(|r| r.shutdown), false);
    put(b, "guest_exec_true_ms", &col(|r| r.guest_exec_true), false);
    put(
        b,
        "guest_bash_c_true_ms",
        &col(|r| r.guest_bash_c_true),
        false,
    );
    let snaps: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.snapshot.clone())
        .filter_map(|s| s.ok())
        .collect();
    put(b, "snapshot_restore_first_command_ms", &snaps, false);
    if let Some(reason) = runs
        .iter()
        .find_map(|r| r.snapshot.clone().and_then(|s| s.err()))
    {
        b.not_applicable.insert(
            "snapshot_restore_first_command_ms".into(),
            reason.to_string(),
        );
    }
    interrupted?;

    let mut walls = Vec::new();
    for i in 0..b.runs {
        ctx.check_interrupt()?;
        let config = match rewrite_test(ctx, backend) {
            Ok(c) => c,
            Err(e) => {
                b.errors.push(format!("whole test: {e}"));
                break;
            }
        };
        eprintln!("bench: {backend}: whole test run {}/{}", i + 1, b.runs);
        let opts = RunOptions {
            report: ctx.report_options(),
            driver: ctx.driver_options(),
            interactive: false,
        };
        let t = Instant::now();
        let outcome = driver::run_test(&config, &opts, ctx.runtime);
        let wall = ms(t.elapsed());
        ctx.check_interrupt()?;
        match outcome {
            Outcome::Passed => walls.push(wall),
            Outcome::Failed(e) | Outcome::Error(e) | Outcome::Interrupted(_, e) => {
                b.errors.push(format!("whole test run {}: {e}", i + 1))
            }
        }
    }
    put(b, "whole_test_ms", &walls, false);
    Ok(())
}

/// `start_all` of N nodes (every backdoor up), for each requested N.
pub fn measure_scaling(
    ctx: &BenchContext<'_>,
    backend: BackendKind,
    errors: &mut Vec<String>,
) -> Result<Option<ScalingReport>, BenchError> {
    let mut points = Vec::new();
    for &n in &ctx.opts.scaling {
        let config = match write_config(ctx, &format!("scale-{backend}-{n}"), backend, n, true) {
            Ok(c) => c,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let mut samples = Vec::new();
        for i in 0..ctx.opts.runs {
            eprintln!(
                "bench: {backend}: start_all of {n} nodes, run {}/{}",
                i + 1,
                ctx.opts.runs
            );
            let r = with_driver(ctx, &config, |d| {
                let machines: Vec<Machine> = d.machines().values().cloned().collect();
                block(ctx.runtime, async move {
                    let t = Instant::now();
                    let mut set = tokio::task::JoinSet::new();
                    for m in machines {
                        set.spawn(async move { m.start().await });
                    }
                    while let Some(r) = set.join_next().await {
                        if let Ok(Err(e)) = r {
                            return Err(e);
                        }
                    }
                    Ok(t.elapsed())
                })
            })?;
            match r {
                Ok(d) => samples.push(ms(d)),
                Err(e) => errors.push(format!("start_all of {n}: {e}")),
            }
        }
        if let Some(s) = Summary::of(&samples, false) {
            points.push(ScalingPoint {
                nodes: n,
                per_node_ms: s.median / n.max(1) as f64,
                start_all_ms: s,
            });
        }
    }
    Ok(Some(ScalingReport {
        backend: backend.to_string(),
        points,
    }))
}
