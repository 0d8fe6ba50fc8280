//! Child processes attest starts: each in its own process group, killed when
//! attest dies (parent-death signal), watched by a task that publishes its
//! exit, and terminated by one escalating function.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// How a machine's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// Reaping it failed (the reason).
    WaitFailed(String),
    /// The machine ended in a way its backend describes (a VMM event, an ssh
    /// master that lost its host, …).
    Other(String),
}

impl Exit {
    /// Whether it ended on its own with status 0.
    pub fn is_clean(&self) -> bool {
        *self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by signal {s} ({})", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            Exit::WaitFailed(e) => write!(f, "wait failed: {e}"),
            Exit::Other(text) => f.write_str(text),
        }
    }
}

/// Prepares `cmd` so the child is supervised: own process group (signals to
/// the group reach its helpers), SIGKILL when attest dies, killed on drop.
///
/// The parent-death signal fires when the *thread* that spawned the child
/// exits, so spawn from a runtime worker (inside an async task), never from a
/// short-lived thread.
pub fn supervise(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0).kill_on_drop(true).stdin(Stdio::null());
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe; the closure only reads
    // a copied integer.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("parent died during spawn"));
            }
            Ok(())
        });
    }
    cmd
}

/// The [`Exit`] of an exit status.
pub fn describe_exit(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        _ => Exit::Other("exited".to_owned()),
    }
}

/// A supervised child: its pid and a watch that turns `Some` when it exits.
///
/// Clones share one kill-on-drop guard: when the last clone goes (a `start`
/// future cancelled right after the spawn, an instance dropped without
/// `terminate`), the child's whole process group gets SIGKILL, and its
/// watcher task reaps it. Tasks that only wait for the exit hold
/// [`Watched::exit`] (see [`wait_for_exit`]), not a clone, so they do not
/// keep the child alive.
#[derive(Clone, Debug)]
pub struct Watched {
    /// Process id (also its process group id).
    pub pid: u32,
    /// `None` while running; how it ended afterwards.
    pub exit: watch::Receiver<Option<Exit>>,
    guard: Arc<GroupGuard>,
}

/// Kills a child's process group when dropped, unless the child was reaped.
#[derive(Debug)]
struct GroupGuard {
    pid: u32,
    /// Set by the watcher task the moment it reaps the child: from then on
    /// the pid may belong to another process, so nothing signals it.
    reaped: Arc<AtomicBool>,
}

impl GroupGuard {
    fn signal(&self, signal: nix::sys::signal::Signal) {
        // A pid of 0 or 1 would signal our own group or init's.
        if self.pid > 1 && !self.reaped.load(Ordering::SeqCst) {
            let pgid = nix::unistd::Pid::from_raw(self.pid as i32);
            let _ = nix::sys::signal::killpg(pgid, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Waits until the exit watch of a [`Watched`] turns `Some`; returns how the
/// child ended.
pub async fn wait_for_exit(exit: &watch::Receiver<Option<Exit>>) -> Exit {
    let mut rx = exit.clone();
    loop {
        if let Some(info) = rx.borrow_and_update().clone() {
            return info;
        }
        if rx.changed().await.is_err() {
            return Exit::WaitFailed("exit watcher stopped".to_owned());
        }
    }
}

impl Watched {
    /// Whether it has exited.
    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Waits until it exits; returns how.
    pub async fn wait(&self) -> Exit {
        wait_for_exit(&self.exit).await
    }

    /// Sends `signal` to the child's whole process group (nothing once the
    /// child is reaped).
    pub fn signal_group(&self, signal: nix::sys::signal::Signal) {
        self.guard.signal(signal);
    }

    /// Ends the child: SIGTERM to its group, then SIGKILL after `grace`, then
    /// waits for the reap. Returns how it ended.
    pub async fn terminate(&self, grace: Duration) -> Exit {
        use nix::sys::signal::Signal;
        if let Some(info) = self.exit.borrow().clone() {
            return info;
        }
        self.signal_group(Signal::SIGTERM);
        if let Ok(info) = tokio::time::timeout(grace, self.wait()).await {
            return info;
        }
        self.kill().await
    }

    /// SIGKILL to the child's group, then waits for the reap.
    pub async fn kill(&self) -> Exit {
        self.signal_group(nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be ignored; the bound only guards against a watcher bug.
        tokio::time::timeout(Duration::from_secs(10), self.wait())
            .await
            .unwrap_or_else(|_| Exit::WaitFailed("did not exit after SIGKILL".to_owned()))
    }
}

/// A machine's process that attest may replace on purpose (a snapshot
/// restore starts a fresh VMM or QEMU). The machine's exit watch
/// ([`ReplaceableProcess::exit_watch`]) reports only the exit of the
/// *current* process, so a planned replacement is not taken for a crash.
pub struct ReplaceableProcess {
    current: std::sync::Mutex<Option<Watched>>,
    generation: Arc<AtomicU64>,
    exit_tx: Arc<watch::Sender<Option<Exit>>>,
    exit_rx: watch::Receiver<Option<Exit>>,
    tasks: TaskTracker,
}

impl ReplaceableProcess {
    /// Watches `first`; the exit forwarders run on `tasks`.
    pub fn new(first: Watched, tasks: &TaskTracker) -> ReplaceableProcess {
        let (tx, rx) = watch::channel(None);
        let p = ReplaceableProcess {
            current: std::sync::Mutex::new(None),
            generation: Arc::new(AtomicU64::new(0)),
            exit_tx: Arc::new(tx),
            exit_rx: rx,
            tasks: tasks.clone(),
        };
        p.adopt(first);
        p
    }

    /// Makes `w` the current process and forwards its exit. The machine
    /// runs again: an exit reported before (a retired process that failed
    /// to come back) is cleared.
    pub fn adopt(&self, w: Watched) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let gen = self.generation.clone();
        let tx = self.exit_tx.clone();
        // The exit watch only: a clone of `w` would keep it alive.
        let exit = w.exit.clone();
        *self.current.lock().expect("process lock") = Some(w);
        self.exit_tx.send_replace(None);
        self.tasks.spawn(async move {
            let info = wait_for_exit(&exit).await;
            if gen.load(Ordering::SeqCst) == generation {
                tx.send_replace(Some(info));
            }
        });
    }

    /// Detaches the current process (its exit is no longer reported) and
    /// returns it, for a planned replacement.
    pub fn retire(&self) -> Option<Watched> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.current.lock().expect("process lock").take()
    }

    /// The tracker its tasks run on, for the replacement's watcher.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// The current process.
    pub fn current(&self) -> Option<Watched> {
        self.current.lock().expect("process lock").clone()
    }

    /// Reports that the machine is gone without a process exit to show for
    /// it (a failed restore after the old process was retired).
    pub fn mark_exited(&self, info: Exit) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let _ = self.exit_tx.send(Some(info));
    }

    /// The machine's exit watch.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit_rx.clone()
    }

    /// Whether the machine has exited.
    pub fn has_exited(&self) -> bool {
        self.exit_rx.borrow().is_some() || self.current().is_none_or(|w| w.has_exited())
    }

    /// SIGKILL to the current process group, then waits for the reap.
    pub async fn kill(&self) -> Exit {
        match self.current() {
            Some(w) => {
                let info = w.kill().await;
                self.publish(&w, &info);
                info
            }
            None => Exit::Other("not running".to_owned()),
        }
    }

    /// SIGTERM, SIGKILL after `grace`, reap.
    pub async fn terminate(&self, grace: Duration) -> Exit {
        match self.current() {
            Some(w) => {
                let info = w.terminate(grace).await;
                self.publish(&w, &info);
                info
            }
            None => Exit::Other("not running".to_owned()),
        }
    }

    /// Publishes the exit of `w` now if it is still the current process, so
    /// that callers see it as soon as `kill`/`terminate` return (the
    /// forwarding task may not have run yet).
    fn publish(&self, w: &Watched, info: &Exit) {
        let current = self.current().map(|c| c.pid);
        if current == Some(w.pid) && w.has_exited() {
            self.exit_tx.send_if_modified(|v| {
                if v.is_none() {
                    *v = Some(info.clone());
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Waits for the current process to exit, at most `limit`.
    pub async fn wait(&self, limit: Duration) -> Option<Exit> {
        let w = self.current()?;
        tokio::time::timeout(limit, w.wait()).await.ok()
    }
}

/// Why [`poll`] gave up.
#[derive(Debug)]
pub enum PollEnd<E, S = Exit> {
    /// The process being waited on ended first.
    Exited(S),
    /// The deadline passed; the last attempt's error.
    TimedOut(E),
}

/// Tries `attempt` every `interval` until it succeeds, `deadline` passes, or
/// `exit` shows the process it waits on has ended (a pause ends early when
/// it does): the one loop for sockets, APIs and handshakes that appear some
/// time after a start.
pub async fn poll<T, E, S, F, Fut>(
    deadline: std::time::Instant,
    interval: Duration,
    exit: &watch::Receiver<Option<S>>,
    mut attempt: F,
) -> Result<T, PollEnd<E, S>>
where
    S: Clone,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut exit = exit.clone();
    loop {
        if let Some(info) = exit.borrow_and_update().clone() {
            return Err(PollEnd::Exited(info));
        }
        let last = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if std::time::Instant::now() >= deadline {
            return Err(PollEnd::TimedOut(last));
        }
        // A closed watch can change no more: then only the pause counts.
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            Ok(()) = exit.changed() => {}
        }
    }
}

/// [`poll`] for work no process can cut short: tries `attempt` every
/// `interval` until it succeeds or `deadline` passes (then its last error).
pub async fn retry<T, E, F, Fut>(
    deadline: std::time::Instant,
    interval: Duration,
    attempt: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let (_never_sent, nothing) = watch::channel::<Option<std::convert::Infallible>>(None);
    poll(deadline, interval, &nothing, attempt)
        .await
        .map_err(|end| match end {
            PollEnd::TimedOut(e) => e,
            PollEnd::Exited(never) => match never {},
        })
}

/// How long an exit report waits for the child's output to be read.
const PUMP_DRAIN: Duration = Duration::from_secs(1);

/// Spawns the supervised child and a task on `tasks` that reaps it and
/// publishes the exit. Piped stdout and stderr are pumped line by line into
/// `output`.
pub fn spawn_watched(
    cmd: &mut Command,
    output: Option<crate::console::ConsoleLog>,
    tasks: &TaskTracker,
) -> std::io::Result<Watched> {
    let mut child: Child = supervise(cmd).spawn()?;
    let mut pumps = Vec::new();
    if let Some(log) = output {
        if let Some(out) = child.stdout.take() {
            let log = log.clone();
            pumps.push(pump_lines(out, move |l| log.push_line(&l), tasks));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump_lines(err, move |l| log.push_line(&l), tasks));
        }
    }
    let pid = child.id().unwrap_or(0);
    let (tx, rx) = watch::channel(None);
    let reaped = Arc::new(AtomicBool::new(false));
    let reaped_by_watcher = reaped.clone();
    tasks.spawn(async move {
        let info = match child.wait().await {
            Ok(status) => {
                reaped_by_watcher.store(true, Ordering::SeqCst);
                describe_exit(status)
            }
            Err(e) => Exit::WaitFailed(e.to_string()),
        };
        // The child's last words (nspawn's reason for failing) must be in
        // the log before anyone reports the exit; a grandchild still
        // holding the pipe must not delay the report for long.
        let _ = tokio::time::timeout(PUMP_DRAIN, async {
            for p in pumps {
                let _ = p.await;
            }
        })
        .await;
        let _ = tx.send(Some(info));
    });
    Ok(Watched {
        pid,
        exit: rx,
        guard: Arc::new(GroupGuard { pid, reaped }),
    })
}

/// Reads `stream` line by line into `sink` until it closes, on `tasks`.
pub fn pump_lines<R, F>(stream: R, mut sink: F, tasks: &TaskTracker) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    F: FnMut(String) + Send + 'static,
{
    tasks.spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    sink(line.trim_end_matches(['\n', '\r']).to_owned());
                }
            }
        }
    })
}

/// Finds a binary on PATH, or explains how to get it.
pub fn require_binary(
    name: &str,
    package: &str,
) -> Result<std::path::PathBuf, crate::errors::MissingBinary> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| crate::errors::MissingBinary {
            name: name.to_owned(),
            package: package.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bash -c script`, supervised, on a tracker of its own.
    fn bash(script: &str) -> Watched {
        spawn_watched(
            Command::new("bash").args(["-c", script]),
            None,
            &TaskTracker::new(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn terminate_escalates_to_sigkill_and_reaps() {
        let w = bash("trap '' TERM; sleep 30");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let info = w.terminate(Duration::from_millis(300)).await;
        assert_eq!(info, Exit::Signal(9));
        assert_eq!(info.to_string(), "killed by signal 9 (SIGKILL)");
        assert!(w.has_exited());
    }

    /// Processes of group `pgid` that are alive (not zombies).
    fn live_members(pgid: u32) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp …; comm may hold spaces.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(2) == Some(&pgid.to_string().as_str()) && fields[0] != "Z" {
                out.push(stat);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_cancelled_start_kills_the_group_it_spawned() {
        // A backend's start: spawn, then wait for a socket that never comes.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = async move {
            let w = bash("sleep 300 & sleep 300; wait");
            tx.send((w.pid, w.exit.clone())).unwrap();
            std::future::pending::<()>().await
        };
        // The caller gives up (cancellation, boot timeout): the future is dropped.
        let cancelled = tokio::time::timeout(Duration::from_millis(300), start).await;
        assert!(cancelled.is_err());
        let (pid, exit) = rx.await.unwrap();
        assert!(pid > 1);
        let info = tokio::time::timeout(Duration::from_secs(5), wait_for_exit(&exit))
            .await
            .expect("the child outlived the dropped start");
        assert_eq!(info, Exit::Signal(9));
        // The leader is reaped, and its background `sleep` is gone too.
        let leader = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None);
        assert_eq!(leader, Err(nix::errno::Errno::ESRCH));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !live_members(pid).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "left in the group: {:?}",
                live_members(pid)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn poll_stops_at_an_exit_during_its_pause() {
        let w = bash("sleep 0.2; exit 3");
        let started = std::time::Instant::now();
        let end = poll(
            started + Duration::from_secs(30),
            Duration::from_secs(10),
            &w.exit,
            || async { Err::<(), _>("not yet") },
        )
        .await;
        assert!(
            matches!(end, Err(PollEnd::Exited(Exit::Code(3)))),
            "{end:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn retry_gives_the_last_error_at_the_deadline() {
        let mut tries = 0;
        let started = std::time::Instant::now();
        let end = retry(
            started + Duration::from_millis(200),
            Duration::from_millis(20),
            || {
                tries += 1;
                let n = tries;
                async move { Err::<(), _>(n) }
            },
        )
        .await;
        assert_eq!(end, Err(tries));
        assert!(tries > 2, "{tries}");
        let ok = retry(started, Duration::from_millis(20), || async {
            Ok::<_, ()>(7)
        })
        .await;
        assert_eq!(ok, Ok(7));
    }

    #[tokio::test]
    async fn exit_is_published() {
        let w = bash("exit 7");
        assert_eq!(w.wait().await, Exit::Code(7));
        assert_eq!(Exit::Code(7).to_string(), "exited with status 7");
    }

    #[test]
    fn missing_binaries_name_the_package() {
        let e = require_binary("no-such-binary-attest", "some-pkg").unwrap_err();
        assert!(e.to_string().contains("apt-get install some-pkg"), "{e}");
    }
}
