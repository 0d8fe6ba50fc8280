//! [`Machine`]: a cheap handle to one node. It owns the node's lifecycle
//! (`Created → Booting → Up → Off | Crashed`), its pool of backdoor sessions
//! and its console, and runs the high-level operations (`succeed`,
//! `wait_for_unit`, …) with the NixOS driver's semantics. Every call races
//! the machine's exit and the driver's cancellation, so nothing waits on a
//! dead machine.

mod channel;
mod copy;
mod error;
mod live;
mod ops;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use copy::copy_from_vm_target;
pub use error::{MachineError, WaitFailure};

use crate::backend::capability::{self, Capability};
use crate::backend::{Backend, BackendOp, Instance, StartContext};
use crate::cancel::Cancel;
use crate::config::{BackendKind, TestConfig};
use crate::console::ConsoleLog;
use crate::guest::agent::Protocol;
use crate::guest::{CommandOutput, Session};
use crate::net::Network;
use crate::process::Exit;
use crate::report::{EventKind, Reporter};
use crate::shell;
use channel::Channel;

/// Default seconds for commands and waits, as in the NixOS driver.
pub const DEFAULT_TIMEOUT: f64 = 900.0;

/// How long a reboot's orderly shutdown may take.
const REBOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a machine is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineState {
    /// Not started yet.
    Created,
    /// Started, backdoor not up yet.
    Booting,
    /// Backdoor connected.
    Up,
    /// Shut down cleanly (or powered off from inside).
    Off,
    /// Killed on purpose by `crash()`, or failed to boot.
    Crashed,
    /// Ended without being asked to (killed from outside, a fault): the next
    /// call fails at once and names the cause.
    Died,
    /// Its boot was cut short by the run's cancellation (signal, timeout).
    Interrupted,
}

impl MachineState {
    fn name(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Booting => "booting",
            MachineState::Up => "up",
            MachineState::Off => "off",
            MachineState::Crashed => "crashed",
            MachineState::Died => "died",
            MachineState::Interrupted => "interrupted",
        }
    }
}

/// A handle to one machine. Clones share the machine.
#[derive(Clone)]
pub struct Machine {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    backend: Arc<dyn Backend>,
    config: Arc<TestConfig>,
    state_dir: std::path::PathBuf,
    network: Option<Arc<Network>>,
    reporter: Reporter,
    console: ConsoleLog,
    /// Where `wait_for_console_text` continues matching.
    console_cursor: Mutex<usize>,
    state: watch::Sender<MachineState>,
    /// How the machine last ended on its own, for the error of the next call.
    last_exit: Mutex<Option<Exit>>,
    /// NixOS `start(allow_reboot)` of the running (or last) boot: without
    /// it, a reboot ends the machine (QEMU's `-no-reboot`).
    allow_reboot: std::sync::atomic::AtomicBool,
    /// Why the machine went down by itself and was not waited for: as in
    /// NixOS, the next command does not start it again until
    /// `wait_for_shutdown()` or `start()`.
    went_down: Mutex<Option<String>>,
    running: tokio::sync::Mutex<Option<Running>>,
    cancel: Cancel,
    runtime: tokio::runtime::Handle,
    /// The protocol the next channel speaks ([`Machine::switch_protocol`]).
    protocol: Mutex<Protocol>,
    /// The run's background tasks (the driver waits for them at the end).
    tasks: TaskTracker,
}

/// The future [`Machine::with_session`] runs on a session.
pub type SessionWork<'s, T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<T, crate::guest::GuestError>> + Send + 's>,
>;

/// What exists while the machine runs.
struct Running {
    instance: Arc<dyn Instance>,
    channel: Channel,
    /// Set before attest itself stops the machine, so its exit is not
    /// reported as a death.
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl Machine {
    /// A machine that is not started yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        backend: Arc<dyn Backend>,
        config: Arc<TestConfig>,
        state_dir: std::path::PathBuf,
        network: Option<Arc<Network>>,
        reporter: Reporter,
        cancel: Cancel,
        runtime: tokio::runtime::Handle,
        protocol: Protocol,
        tasks: TaskTracker,
    ) -> Machine {
        let forward_reporter = reporter.clone();
        let forward_name = name.to_owned();
        // Every line is an event: the reporters decide what to show (boot
        // progress uses console lines even when they are not printed).
        let console = ConsoleLog::new(Arc::new(move |line: &str| {
            forward_reporter.emit(EventKind::Console {
                machine: forward_name.clone(),
                line: line.to_owned(),
            });
        }));
        Machine {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                backend,
                config,
                state_dir,
                network,
                reporter,
                console,
                console_cursor: Mutex::new(0),
                state: watch::channel(MachineState::Created).0,
                last_exit: Mutex::new(None),
                allow_reboot: Default::default(),
                went_down: Mutex::new(None),
                running: tokio::sync::Mutex::new(None),
                cancel,
                runtime,
                protocol: Mutex::new(protocol),
                tasks,
            }),
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The backend.
    pub fn backend_kind(&self) -> BackendKind {
        self.inner.backend.kind()
    }

    /// Fails, before anything is sent, when the node's backend cannot do
    /// `method` (a script method name): the same table and words as
    /// `attest check`.
    pub fn require(&self, method: &str) -> Result<(), MachineError> {
        let Some(cap) = Capability::of_method(method) else {
            return Ok(());
        };
        let backend = &self.inner.config.nodes[&self.inner.name].backend;
        capability::support(backend, cap).map_err(|refusal| MachineError::Unsupported {
            machine: self.inner.name.clone(),
            method: method.to_owned(),
            refusal,
        })
    }

    /// The current state.
    pub fn state(&self) -> MachineState {
        *self.inner.state.borrow()
    }

    /// The console log.
    pub fn console(&self) -> &ConsoleLog {
        &self.inner.console
    }

    fn set_state(&self, state: MachineState, detail: Option<String>) {
        self.inner.state.send_replace(state);
        self.inner.reporter.emit(EventKind::MachineState {
            machine: self.inner.name.clone(),
            state: state.name().to_owned(),
            detail,
        });
    }

    /// Runs an async operation to completion from a synchronous caller (the
    /// script thread). The future runs on a runtime worker, so processes it
    /// spawns get a long-lived parent thread (see `process::supervise`).
    pub fn block_on<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, MachineError>> + Send + 'static,
    ) -> Result<T, MachineError> {
        let handle = self.inner.runtime.spawn(fut);
        match self.inner.runtime.block_on(handle) {
            Ok(r) => r,
            Err(e) => Err(MachineError::TaskFailed {
                machine: self.inner.name.clone(),
                panicked: e.is_panic(),
                detail: e.to_string(),
            }),
        }
    }

    /// The boot timeout of this node: its own, else its backend's.
    fn boot_timeout(&self) -> Duration {
        crate::backend::boot_timeout(
            &self.inner.config.nodes[&self.inner.name],
            &*self.inner.backend,
        )
    }

    /// Starts the machine and waits for its backdoor. A no-op when it is up.
    pub async fn start(&self) -> Result<(), MachineError> {
        self.start_with(false).await
    }

    /// NixOS `start(allow_reboot)`: with it, `reboot()` (and a reboot from
    /// inside) keeps the machine running; without it, a reboot ends the
    /// machine, as QEMU's `-no-reboot` does under the NixOS driver. A no-op
    /// when the machine is up.
    pub async fn start_with(&self, allow_reboot: bool) -> Result<(), MachineError> {
        if self.inner.running.lock().await.is_some() {
            return Ok(());
        }
        self.inner
            .allow_reboot
            .store(allow_reboot, std::sync::atomic::Ordering::SeqCst);
        self.went_down_seen();
        self.boot().await
    }

    fn allow_reboot(&self) -> bool {
        self.inner
            .allow_reboot
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The script has taken note that the machine is down.
    fn went_down_seen(&self) {
        self.inner.went_down.lock().expect("went down").take();
    }

    /// The guest ended itself cleanly (`poweroff`, or a reboot when that
    /// ends it): remembered for the next command, unless a reboot keeps the
    /// machine running.
    fn ended_by_itself(&self) {
        if !self.allow_reboot() {
            *self.inner.went_down.lock().expect("went down") = Some(
                "it powered itself off (a reboot does that too when the machine was \
                 started without allow_reboot)"
                    .into(),
            );
        }
    }

    /// Boots the machine (see [`Machine::start`]), keeping `allow_reboot`.
    async fn boot(&self) -> Result<(), MachineError> {
        let mut running = self.inner.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        self.set_state(MachineState::Booting, None);
        let started = Instant::now();
        let ctx = StartContext {
            machine: self.inner.name.clone(),
            config: self.inner.config.clone(),
            boot_timeout: self.boot_timeout(),
            state_dir: self.inner.state_dir.clone(),
            console: self.inner.console.clone(),
            network: self.inner.network.clone(),
            reporter: self.inner.reporter.clone(),
            tasks: self.inner.tasks.clone(),
        };
        let _ = std::fs::create_dir_all(&self.inner.state_dir);
        let instance: Arc<dyn Instance> = tokio::select! {
            r = self.inner.backend.start(&ctx) => Arc::from(r.map_err(|e| self.backend_error("start", e))?),
            () = self.inner.cancel.token().cancelled() => {
                self.set_state(MachineState::Interrupted, None);
                return Err(self.cancelled());
            }
        };
        let deadline = started + self.boot_timeout();
        let channel = tokio::select! {
            r = self.open_channel(&*instance, deadline) => r,
            () = self.inner.cancel.token().cancelled() => Err(self.cancelled()),
        };
        let channel = match channel {
            Ok(s) => s,
            Err(e) => {
                instance.terminate(Duration::from_secs(3)).await;
                match &e {
                    MachineError::Cancelled { .. } => {
                        self.set_state(MachineState::Interrupted, None)
                    }
                    _ => self.set_state(MachineState::Crashed, Some(e.to_string())),
                }
                return Err(e);
            }
        };
        let protocol = channel.protocol();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.watch_for_death(instance.clone(), stopping.clone());
        *self.inner.last_exit.lock().expect("last exit") = None;
        *running = Some(Running {
            instance,
            channel,
            stopping,
        });
        self.set_state(
            MachineState::Up,
            Some(format!(
                "backdoor up after {:.2} s ({protocol} protocol)",
                started.elapsed().as_secs_f64()
            )),
        );
        Ok(())
    }

    /// Reports the machine's end when it happens, if attest did not ask for
    /// it: a machine that dies between commands is logged at once, and the
    /// next call fails naming the cause. A clean exit is the guest powering
    /// itself off.
    fn watch_for_death(
        &self,
        instance: Arc<dyn Instance>,
        stopping: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let me = self.clone();
        let watch = async move {
            let mut rx = instance.exit_watch();
            let exit = wait_exit(&mut rx).await;
            if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            // The lock is held until the state says what happened: a call
            // in between would otherwise find no instance while the state
            // still reads "up" (wait_for_shutdown returning at once, the
            // next command refusing to restart a machine that is "up").
            let mut g = me.inner.running.lock().await;
            let ours = matches!(g.as_ref(), Some(r)
                if Arc::ptr_eq(&r.instance, &instance)
                    && !r.stopping.load(std::sync::atomic::Ordering::SeqCst));
            if !ours {
                return;
            }
            let Some(r) = g.take() else { return };
            drop(r.channel);
            // Reaps what is left (the backend's helpers, its cgroup).
            r.instance.terminate(Duration::from_secs(3)).await;
            if exit.is_clean() {
                me.ended_by_itself();
                me.set_state(MachineState::Off, Some("powered off from inside".into()));
            } else {
                *me.inner.last_exit.lock().expect("last exit") = Some(exit.clone());
                me.set_state(MachineState::Died, Some(exit.to_string()));
            }
            drop(g);
        };
        self.inner.tasks.spawn_on(watch, &self.inner.runtime);
    }

    fn backend_error(&self, op: &str, e: crate::backend::BackendError) -> MachineError {
        MachineError::Backend {
            machine: self.inner.name.clone(),
            op: op.to_owned(),
            error: e,
        }
    }

    fn cancelled(&self) -> MachineError {
        MachineError::Cancelled {
            machine: self.inner.name.clone(),
            reason: self.inner.cancel.check().err(),
        }
    }

    fn died(&self, exit: &Exit, during: &str) -> MachineError {
        MachineError::Died {
            machine: self.inner.name.clone(),
            exit: exit.clone(),
            during: during.to_owned(),
            console_tail: self.inner.console.last_lines(20).join("\n"),
        }
    }

    fn not_running(&self) -> MachineError {
        MachineError::NotRunning {
            machine: self.inner.name.clone(),
            state: self.state().name(),
            cause: self.inner.last_exit.lock().expect("last exit").clone(),
        }
    }

    async fn ensure_started(&self) -> Result<(), MachineError> {
        if self.inner.running.lock().await.is_none() {
            // As in NixOS, a machine that was crashed or shut down starts
            // again on the next command; one that went down by itself, only
            // after wait_for_shutdown() or start(); one that died is an
            // error until start().
            if let Some(why) = self.inner.went_down.lock().expect("went down").clone() {
                return Err(MachineError::WentDown {
                    machine: self.inner.name.clone(),
                    why,
                });
            }
            match self.state() {
                MachineState::Created | MachineState::Off | MachineState::Crashed => {
                    self.boot().await?
                }
                _ => return Err(self.not_running()),
            }
        }
        Ok(())
    }

    /// The running instance and its channel, starting the machine if needed.
    async fn started_channel(&self) -> Result<(Arc<dyn Instance>, Channel), MachineError> {
        self.ensure_started().await?;
        let g = self.inner.running.lock().await;
        let r = g.as_ref().ok_or_else(|| self.not_running())?;
        Ok((r.instance.clone(), r.channel.clone()))
    }

    /// Runs one command in the guest (starting the machine if needed).
    pub async fn execute(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, MachineError> {
        let (instance, channel) = self.started_channel().await?;
        let mut exit = instance.exit_watch();
        let work = self.run_on(&channel, &*instance, command, timeout);
        let result = tokio::select! {
            r = work => r,
            info = wait_exit(&mut exit) => Err(self.died(&info, &format!("running `{command}`"))),
            () = self.inner.cancel.token().cancelled() => Err(self.cancelled()),
        };
        let broken = matches!(result, Err(MachineError::Guest { .. }));
        self.settle(result, broken, &instance, command).await
    }

    /// Runs `work` on a bash backdoor session of this machine (starting the
    /// machine if needed): a pooled one, or a new one when all are busy;
    /// when the machine's commands go through the agent, a shell tunnelled
    /// through it (file transfers are bash protocol). The work races the machine's exit and the run's
    /// cancellation; `what` names it in errors.
    pub async fn with_session<T, F>(&self, what: &str, work: F) -> Result<T, MachineError>
    where
        T: Send,
        F: for<'s> FnOnce(&'s mut Session) -> SessionWork<'s, T> + Send,
    {
        let (instance, channel) = self.started_channel().await?;
        let fresh = || self.open_session(&*instance, Instant::now() + Duration::from_secs(30));
        let run = async {
            let (mut session, pool) = match &channel {
                channel::Channel::Bash { sessions, slots } => {
                    let permit = slots
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| (self.cancelled(), false))?;
                    let pooled = sessions.lock().expect("session pool lock").pop();
                    let session = match pooled {
                        Some(s) => s,
                        None => fresh().await.map_err(|e| (e, false))?,
                    };
                    (session, Some((sessions.clone(), permit)))
                }
                channel::Channel::Agent(slot) => (
                    self.agent_session(slot, &*instance)
                        .await
                        .map_err(|e| (e, false))?,
                    None,
                ),
            };
            let out = work(&mut session).await;
            let broken = !session.is_usable();
            if let (false, Some((sessions, _permit))) = (broken, pool) {
                sessions.lock().expect("session pool lock").push(session);
            }
            out.map_err(|e| {
                let e = MachineError::Guest {
                    machine: self.inner.name.clone(),
                    command: what.to_owned(),
                    error: e,
                };
                (e, broken)
            })
        };
        self.race_and_settle(&instance, what, run).await
    }

    /// Runs `run` (whose error says whether its channel broke) racing the
    /// machine's exit and the run's cancellation, then [`Machine::settle`]s.
    async fn race_and_settle<T>(
        &self,
        instance: &Arc<dyn Instance>,
        what: &str,
        run: impl std::future::Future<Output = Result<T, (MachineError, bool)>>,
    ) -> Result<T, MachineError> {
        let mut exit = instance.exit_watch();
        let result = tokio::select! {
            r = run => r,
            info = wait_exit(&mut exit) => Err((self.died(&info, &format!("running `{what}`")), false)),
            () = self.inner.cancel.token().cancelled() => Err((self.cancelled(), false)),
        };
        let (result, broken) = match result {
            Ok(v) => (Ok(v), false),
            Err((e, broken)) => (Err(e), broken),
        };
        self.settle(result, broken, instance, what).await
    }

    /// After a call: when its channel broke, the machine is usually dying
    /// and its process exit may lag the socket's close by a moment; a death
    /// is reported as such and the instance forgotten.
    async fn settle<T>(
        &self,
        result: Result<T, MachineError>,
        broken: bool,
        instance: &Arc<dyn Instance>,
        what: &str,
    ) -> Result<T, MachineError> {
        if broken {
            let mut exit = instance.exit_watch();
            if let Ok(info) =
                tokio::time::timeout(Duration::from_secs(3), wait_exit(&mut exit)).await
            {
                // A clean exit is the guest powering off or rebooting from
                // inside (e.g. the command was `reboot`): the next command
                // starts it again, as after the idle watcher sees the same.
                let state = if info.is_clean() {
                    self.ended_by_itself();
                    MachineState::Off
                } else {
                    MachineState::Died
                };
                self.forget_instance(state).await;
                return Err(self.died(&info, &format!("running `{what}`")));
            }
        }
        if let Err(MachineError::Died { .. }) = &result {
            self.forget_instance(MachineState::Died).await;
        }
        result
    }

    async fn forget_instance(&self, state: MachineState) {
        let taken = self.inner.running.lock().await.take();
        if let Some(r) = taken {
            r.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
            r.instance.terminate(Duration::from_secs(3)).await;
            let exit = r.instance.exit_watch().borrow().clone();
            if state == MachineState::Died {
                *self.inner.last_exit.lock().expect("last exit") = exit.clone();
            }
            // A clean exit needs no detail: "off", not "off (exited with status 0)".
            let detail = exit.filter(|e| !(state == MachineState::Off && e.is_clean()));
            self.set_state(state, detail.map(|e| e.to_string()));
        }
    }

    /// Marks the current instance as being stopped by attest.
    async fn expect_exit(&self) {
        if let Some(r) = self.inner.running.lock().await.as_ref() {
            r.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Starts a command and returns without waiting for it (NixOS
    /// `execute(…, check_output=False)`): for commands that take the machine
    /// down. It runs detached in the guest (`setsid -f`), so it neither holds
    /// up the channel nor dies with it.
    pub async fn send_detached(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<(), MachineError> {
        let detached = format!(
            "setsid -f timeout {} bash -c {} </dev/null >/dev/null 2>&1",
            timeout.as_secs_f64().ceil().max(1.0),
            shell::quote(&format!("set -euo pipefail; {command}"))
        );
        let out = self.execute(&detached, Duration::from_secs(30)).await?;
        if out.status != 0 {
            return Err(MachineError::Detach {
                machine: self.inner.name.clone(),
                command: command.to_owned(),
                status: out.status,
                stderr: out.stderr_text().trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Powers the machine off through the guest and waits for it to stop.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), MachineError> {
        self.require("shutdown")?;
        self.went_down_seen();
        let Some(instance) = self.current_instance().await else {
            return Ok(());
        };
        self.expect_exit().await;
        let mut exit = instance.exit_watch();
        // `poweroff` kills the shell that would answer, so no reply is read.
        let channel = {
            let g = self.inner.running.lock().await;
            g.as_ref().map(|r| r.channel.clone())
        };
        let sent = match channel {
            Some(c) => {
                self.fire_and_forget(&c, "systemctl poweroff --no-block || poweroff")
                    .await
            }
            None => false,
        };
        if !sent {
            let _ = self
                .execute("systemctl poweroff --no-block", Duration::from_secs(30))
                .await;
        }
        let r = tokio::time::timeout(timeout, wait_exit(&mut exit)).await;
        match r {
            Ok(_) => {
                self.forget_instance(MachineState::Off).await;
                Ok(())
            }
            Err(_) => Err(MachineError::Timeout {
                machine: self.inner.name.clone(),
                what: "shutdown".into(),
                seconds: timeout.as_secs_f64(),
                diagnostics: self.inner.console.last_lines(20).join("\n"),
            }),
        }
    }

    /// Waits until the machine stops on its own (e.g. after `poweroff` in the guest).
    pub async fn wait_for_shutdown(&self, timeout: Duration) -> Result<(), MachineError> {
        self.went_down_seen();
        let Some(instance) = self.current_instance().await else {
            return Ok(());
        };
        let mut exit = instance.exit_watch();
        tokio::select! {
            _ = wait_exit(&mut exit) => {}
            () = tokio::time::sleep(timeout) => {
                return Err(MachineError::Timeout {
                    machine: self.inner.name.clone(),
                    what: "wait_for_shutdown".into(),
                    seconds: timeout.as_secs_f64(),
                    diagnostics: String::new(),
                })
            }
            () = self.inner.cancel.token().cancelled() => return Err(self.cancelled()),
        }
        self.forget_instance(MachineState::Off).await;
        Ok(())
    }

    /// Kills the machine at once.
    pub async fn crash(&self) -> Result<(), MachineError> {
        self.require("crash")?;
        self.went_down_seen();
        let Some(instance) = self.current_instance().await else {
            return Ok(());
        };
        self.expect_exit().await;
        instance
            .crash()
            .await
            .map_err(|e| self.backend_error("crash", e))?;
        self.forget_instance(MachineState::Crashed).await;
        Ok(())
    }

    /// A backend-specific operation.
    pub async fn backend_op(&self, op: BackendOp) -> Result<String, MachineError> {
        let name = op.name();
        self.require(name)?;
        if matches!(op, BackendOp::Reboot) && !self.allow_reboot() {
            // NixOS runs QEMU with -no-reboot unless start(allow_reboot=True):
            // the guest goes down in order and the machine ends; its next
            // command fails until wait_for_shutdown() or start().
            self.shutdown(REBOOT_TIMEOUT).await?;
            *self.inner.went_down.lock().expect("went down") = Some(
                "reboot() ended it: it was started without allow_reboot, so a reboot \
                 powers it off (QEMU's -no-reboot in the NixOS driver)"
                    .into(),
            );
            return Ok(String::new());
        }
        let reconnect = matches!(op, BackendOp::SnapshotRestore(_) | BackendOp::Reboot);
        self.ensure_started().await?;
        let instance = self.running_instance().await?;
        if reconnect {
            // The old system's end (a container's reboot ends its nspawn)
            // is not a death.
            self.set_stopping(true).await;
        }
        let out = instance
            .op(op)
            .await
            .map_err(|e| self.backend_error(name, e));
        if reconnect && out.is_err() {
            self.set_stopping(false).await;
        }
        let out = out?;
        let ended = instance.exit_watch().borrow().is_some();
        if reconnect && ended {
            // The backend's process ended with the old system (a container
            // reboots into a new nspawn): start the machine again, once the
            // old instance (and its cgroup, which the new one reuses by
            // name) is gone.
            drop(instance);
            self.forget_instance(MachineState::Off).await;
            self.boot().await?;
        } else if reconnect {
            self.reconnect(&*instance).await?;
            self.set_stopping(false).await;
        }
        Ok(out)
    }

    /// Replaces the channel (it talks to a guest that no longer exists) by
    /// one to the new backdoor.
    async fn reconnect(&self, instance: &dyn Instance) -> Result<(), MachineError> {
        let started = Instant::now();
        let channel = self
            .open_channel(instance, started + self.boot_timeout())
            .await?;
        self.inner.reporter.log(
            Some(&self.inner.name),
            format!(
                "backdoor back after {:.2} s ({} protocol)",
                started.elapsed().as_secs_f64(),
                channel.protocol()
            ),
        );
        if let Some(r) = self.inner.running.lock().await.as_mut() {
            r.channel = channel;
        }
        Ok(())
    }

    /// Replaces the running machine's command channel by one speaking
    /// `protocol` (`attest bench` compares the protocols on one VM): an
    /// agent hands its terminal back to a shell, a shell bootstraps the
    /// agent. Later reconnects (reboot, restore) keep it. No command may be
    /// running meanwhile.
    pub async fn switch_protocol(&self, protocol: Protocol) -> Result<(), MachineError> {
        let instance = self.running_instance().await?;
        *self.inner.protocol.lock().expect("protocol lock") = protocol;
        instance.wake_on_next_connect();
        self.reconnect(&*instance).await
    }

    /// Marks the current instance's end as expected (or not any more).
    async fn set_stopping(&self, stopping: bool) {
        if let Some(r) = self.inner.running.lock().await.as_ref() {
            r.stopping
                .store(stopping, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// NixOS `switch_root()`: from the initrd (with its backdoor, NixOS
    /// `testing.initrdBackdoor`) to the real system, reconnecting to the
    /// new backdoor. Containers and hosts have no initrd.
    pub async fn switch_root(&self, timeout: Duration) -> Result<(), MachineError> {
        self.require("switch_root")?;
        self.wait_for_unit("initrd.target", None, timeout).await?;
        self.send_detached(
            "systemctl isolate --no-block initrd-switch-root.target",
            Duration::from_secs(60),
        )
        .await?;
        let instance = self.running_instance().await?;
        self.reconnect(&*instance).await
    }

    /// The machine's state directory on the host (sockets, overlays, logs).
    pub fn state_dir(&self) -> &std::path::Path {
        &self.inner.state_dir
    }

    async fn running_instance(&self) -> Result<Arc<dyn Instance>, MachineError> {
        self.current_instance()
            .await
            .ok_or_else(|| self.not_running())
    }

    async fn current_instance(&self) -> Option<Arc<dyn Instance>> {
        self.inner
            .running
            .lock()
            .await
            .as_ref()
            .map(|r| r.instance.clone())
    }

    /// Ends the machine for teardown (graceful, then forced).
    pub async fn terminate(&self) {
        let taken = self.inner.running.lock().await.take();
        if let Some(r) = taken {
            r.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(r.channel);
            r.instance.terminate(Duration::from_secs(10)).await;
            self.set_state(MachineState::Off, Some("torn down".into()));
        }
    }

    /// The reporter.
    pub fn reporter(&self) -> &Reporter {
        &self.inner.reporter
    }

    /// The cancellation token of the run.
    pub fn cancel_token(&self) -> &CancellationToken {
        self.inner.cancel.token()
    }

    /// The run's cancellation, with its reason.
    pub fn cancel(&self) -> &Cancel {
        &self.inner.cancel
    }
}

async fn wait_exit(rx: &mut watch::Receiver<Option<Exit>>) -> Exit {
    loop {
        if let Some(info) = rx.borrow_and_update().clone() {
            return info;
        }
        if rx.changed().await.is_err() {
            // The watcher is gone: the machine cannot report an exit any
            // more; never resolve rather than claim it died.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
pub(crate) mod local;
#[cfg(test)]
mod tests;
