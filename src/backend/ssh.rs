//! The ssh backend: drives a host that already runs, with the same script API
//! and the same command protocol as every other backend (README, "How it works").
//!
//! [`SshBackend::start`] opens one OpenSSH ControlMaster connection per
//! machine (`ssh -N -o ControlMaster=yes`), supervised like any machine
//! process: its exit is the machine's [`Instance::exit_watch`], so a host
//! that goes away fails the pending call at once. Each backdoor session is a
//! multiplexed `ssh -S <control socket> -T host '<banner>; exec bash --norc'`
//! whose stdin and stdout form the [`GuestStream`]
//! ([`SshInstance::connect`]); its stderr goes to the machine's console log.
//! A session costs one round trip per command (~20 ms, against ~60 ms for one
//! `ssh` per command over the master and ~670 ms for a fresh connection).
//!
//! The system `ssh` client is used on purpose: the user's `~/.ssh/config`,
//! agent and known_hosts keep working. The remote needs only `bash` and
//! coreutils (`base64`, `timeout`); [`SshBackend::start`] checks for them.
//!
//! Connecting waits up to the node's `boot_timeout` (default 60 s), retrying
//! while the host refuses, is unreachable or times out; a refused key, an
//! unknown host key under the strict policy, a changed host key or a bad
//! option fail at once with a message naming the host and the fix. The run
//! then fails with exit status 1 (the machine fails to start while the script
//! runs). A `jump_host` becomes a `ProxyCommand` running `ssh -W` with the
//! node's own options, so the hop uses the same identity and known_hosts.
//!
//! attest never powers off a host it did not start: `shutdown` and `crash`
//! are refused unless the node says `"owned": true`
//! (the capability table, [`super::capability::ssh`]). Teardown closes the sessions and the
//! master connection and leaves the host running.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;

use super::{Backend, BackendError, Instance, StartContext};
use crate::config::{BackendKind, KnownHostsPolicy, SshConfig};
use crate::console::ConsoleLog;
use crate::guest::{GuestStream, BANNER};
use crate::process::{
    poll, pump_lines, require_binary, spawn_watched, supervise, wait_for_exit, Exit, PollEnd,
    Watched,
};

/// Connects to existing hosts over ssh.
pub struct SshBackend {
    settings: SshConfig,
}

impl SshBackend {
    /// The backend of a node with these settings.
    pub fn new(settings: SshConfig) -> SshBackend {
        SshBackend { settings }
    }
}

/// How long the remote may take to answer the preflight check.
const PREFLIGHT_LIMIT: Duration = Duration::from_secs(30);

/// How often a session-less connection is probed for life (`ServerAliveInterval`).
const SERVER_ALIVE_SECS: u32 = 5;

/// What a connected host runs: the login shell prints the banner and becomes
/// the backdoor shell. `--norc`: no user rc file may print into the protocol.
const SESSION_COMMAND: &str = "echo 'Spawning backdoor root shell...'; exec bash --norc";

/// Lists the tools the command protocol needs that the remote lacks, one
/// `missing:<name>` line each, then `uid:<n>`. Written for any POSIX login shell.
const PREFLIGHT_COMMAND: &str = "for c in bash base64 timeout; do \
     command -v \"$c\" >/dev/null 2>&1 || echo \"missing:$c\"; done; echo \"uid:$(id -u)\"";

/// A connected host.
pub struct SshInstance {
    /// The node's name (for messages).
    machine: String,
    /// `[user@]host[:port]`, for messages.
    display: String,
    /// The `ssh` binary.
    ssh: PathBuf,
    /// The control socket of the master connection.
    control: PathBuf,
    /// The destination argument (`host`), used by mux clients for matching.
    destination: String,
    /// The master connection process.
    master: Watched,
    /// The master's exit, told as the end of the connection to the host.
    exit: watch::Receiver<Option<Exit>>,
    console: ConsoleLog,
    /// Where its stderr pumps run.
    tasks: tokio_util::task::TaskTracker,
    owned: bool,
    /// Keeps a short private directory for the control socket alive when the
    /// state directory path is too long for a unix socket.
    _control_dir: Option<tempfile::TempDir>,
}

/// Why an ssh host could not be used. `who` is `[user@]host[:port]`;
/// `last` is the last line ssh printed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SshError {
    /// The host's key differs from the one in known_hosts.
    #[error(
        "host key mismatch for {who}: the host's key differs from the one in known_hosts \
         (a reinstalled host or a man in the middle); remove the old entry \
         (ssh-keygen -R <host>) if the change is expected"
    )]
    HostKeyChanged {
        /// The host.
        who: String,
    },
    /// The host's key is unknown and the policy is strict.
    #[error(
        "host key of {who} is not in known_hosts and the policy is strict: \
         add it to known_hosts (ssh-keyscan), or set \"known_hosts\": \"accept-new\" \
         on the node to accept a host seen for the first time ({last})"
    )]
    HostKeyUnknown {
        /// The host.
        who: String,
        /// What ssh said.
        last: String,
    },
    /// The host refused every key offered.
    #[error(
        "authentication refused by {who}: {} was not accepted ({last})",
        key_text(identity)
    )]
    AuthRefused {
        /// The host.
        who: String,
        /// The configured key, if any.
        identity: Option<PathBuf>,
        /// What ssh said.
        last: String,
    },
    /// The host name does not resolve.
    #[error("cannot resolve the host name of {who} ({last})")]
    UnknownHost {
        /// The host.
        who: String,
        /// What ssh said.
        last: String,
    },
    /// ssh refuses its options or key file (a configuration error).
    #[error("ssh cannot connect to {who}: {last}")]
    BadSetup {
        /// The host.
        who: String,
        /// What ssh said.
        last: String,
    },
    /// The configured identity file does not exist.
    #[error("identity file {} for {who} does not exist", path.display())]
    NoIdentityFile {
        /// The host.
        who: String,
        /// The file.
        path: PathBuf,
    },
    /// Nothing listens on the port (yet).
    #[error("{who} refused the connection (is sshd running?)")]
    Refused {
        /// The host.
        who: String,
    },
    /// No route to the host.
    #[error("{who} is unreachable ({last})")]
    Unreachable {
        /// The host.
        who: String,
        /// What ssh said.
        last: String,
    },
    /// The TCP connection timed out.
    #[error("connecting to {who} timed out ({last})")]
    ConnectTimedOut {
        /// The host.
        who: String,
        /// What ssh said.
        last: String,
    },
    /// The host closed the connection during the handshake.
    #[error("{who} closed the connection ({last})")]
    Closed {
        /// The host.
        who: String,
        /// What ssh said.
        last: String,
    },
    /// The handshake did not end before the deadline.
    #[error("{who} did not complete the ssh handshake")]
    NoHandshake {
        /// The host.
        who: String,
    },
    /// ssh failed in a way attest does not recognise.
    #[error("ssh to {who} failed: {last}")]
    Other {
        /// The host.
        who: String,
        /// What ssh said.
        last: String,
    },
    /// Every attempt within the node's `boot_timeout` failed.
    #[error("cannot connect to {who} within {seconds} s: {last}")]
    GaveUp {
        /// The host.
        who: String,
        /// The `boot_timeout`.
        seconds: f64,
        /// The last attempt's failure.
        #[source]
        last: Box<SshError>,
    },
    /// The master connection ended.
    #[error("the ssh connection to {who} has ended ({exit}){}", if during.is_empty() { String::new() } else { format!(" {during}") })]
    Lost {
        /// The host.
        who: String,
        /// How the master exited.
        exit: Exit,
        /// What attest was doing.
        during: &'static str,
    },
    /// The host did not answer the check command.
    #[error("{who} did not answer a shell command within {} s", limit.as_secs())]
    NoAnswer {
        /// The host.
        who: String,
        /// The limit.
        limit: Duration,
    },
    /// The host lacks tools the command protocol needs.
    #[error(
        "remote lacks {} on {who}: attest needs bash and coreutils (base64, timeout) there",
        missing.join(", ")
    )]
    RemoteLacks {
        /// The host.
        who: String,
        /// The missing tools.
        missing: Vec<String>,
    },
    /// The host's login shell did not run the check command.
    #[error("{who} cannot run a shell command: {stderr}")]
    NoShell {
        /// The host.
        who: String,
        /// What ssh printed.
        stderr: String,
    },
    /// A session's `ssh` started without its pipes.
    #[error("the ssh session to {who} has no pipes")]
    NoPipes {
        /// The host.
        who: String,
    },
}

impl SshError {
    /// Whether retrying cannot help (auth refused, host key, name
    /// resolution, bad option): a configuration error.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            SshError::HostKeyChanged { .. }
                | SshError::HostKeyUnknown { .. }
                | SshError::AuthRefused { .. }
                | SshError::UnknownHost { .. }
                | SshError::BadSetup { .. }
                | SshError::NoIdentityFile { .. }
        )
    }
}

fn key_text(identity: &Option<PathBuf>) -> String {
    match identity {
        Some(k) => format!("the identity file {}", k.display()),
        None => "the keys of your ssh agent and ~/.ssh (no identity_file set)".to_owned(),
    }
}

/// Tells from ssh's stderr why one connection attempt failed.
///
/// `who` is `[user@]host[:port]`; `identity` is the configured key, if any.
fn classify(stderr: &str, who: &str, identity: Option<&Path>) -> SshError {
    let lower = stderr.to_ascii_lowercase();
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("ssh exited without a message")
        .trim()
        .to_owned();
    let who = who.to_owned();
    if lower.contains("remote host identification has changed") {
        return SshError::HostKeyChanged { who };
    }
    if lower.contains("host key verification failed")
        || lower.contains("no ed25519 host key is known")
        || lower.contains("host key is known") && lower.contains("strict checking")
    {
        return SshError::HostKeyUnknown { who, last };
    }
    if lower.contains("permission denied") || lower.contains("too many authentication failures") {
        return SshError::AuthRefused {
            who,
            identity: identity.map(Path::to_owned),
            last,
        };
    }
    if lower.contains("could not resolve hostname") || lower.contains("name or service not known") {
        return SshError::UnknownHost { who, last };
    }
    if lower.contains("bad configuration option")
        || lower.contains("no such file or directory") && lower.contains("identity")
        || lower.contains("unprotected private key")
        || lower.contains("bad permissions")
        || lower.contains("load key")
        || lower.contains("controlpath too long")
        || lower.contains("unix_listener")
    {
        return SshError::BadSetup { who, last };
    }
    if lower.contains("connection refused") {
        return SshError::Refused { who };
    }
    if lower.contains("no route to host") || lower.contains("network is unreachable") {
        return SshError::Unreachable { who, last };
    }
    if lower.contains("timed out") {
        return SshError::ConnectTimedOut { who, last };
    }
    if lower.contains("connection closed")
        || lower.contains("connection reset")
        || lower.contains("kex_exchange_identification")
    {
        return SshError::Closed { who, last };
    }
    SshError::Other { who, last }
}

/// The options every master connection gets, from the node's config.
fn master_args(
    ssh: &Path,
    c: &SshConfig,
    resolve: &dyn Fn(&Path) -> PathBuf,
    connect_wait: f64,
) -> Vec<String> {
    let connect_timeout = connect_wait.clamp(1.0, 10.0).ceil() as u32;
    let mut a: Vec<String> = vec![
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("ConnectTimeout={connect_timeout}"),
        "-o".into(),
        format!("ServerAliveInterval={SERVER_ALIVE_SECS}"),
        "-o".into(),
        "ServerAliveCountMax=3".into(),
        "-o".into(),
        format!(
            "StrictHostKeyChecking={}",
            match c.known_hosts {
                KnownHostsPolicy::Strict => "yes",
                KnownHostsPolicy::AcceptNew => "accept-new",
            }
        ),
    ];
    if let Some(f) = &c.known_hosts_file {
        a.push("-o".into());
        a.push(format!("UserKnownHostsFile={}", resolve(f).display()));
    }
    if let Some(port) = c.port {
        a.push("-p".into());
        a.push(port.to_string());
    }
    if let Some(user) = &c.user {
        a.push("-l".into());
        a.push(user.clone());
    }
    if let Some(key) = &c.identity_file {
        a.push("-i".into());
        a.push(resolve(key).display().to_string());
        a.push("-o".into());
        a.push("IdentitiesOnly=yes".into());
    }
    if let Some(jump) = &c.jump_host {
        // Not `-J`: ssh would run the hop without our identity file,
        // known_hosts policy and BatchMode. The hop gets the same options.
        a.push("-o".into());
        a.push(format!(
            "ProxyCommand={}",
            jump_proxy_command(ssh, c, jump, resolve, connect_wait)
        ));
    }
    for o in &c.options {
        a.push("-o".into());
        a.push(o.clone());
    }
    a
}

/// Splits `[user@]host[:port]` (`[v6]:port` too).
fn parse_jump(jump: &str) -> (Option<String>, String, Option<u16>) {
    let (user, rest) = match jump.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_owned()), r),
        None => (None, jump),
    };
    if let Some(v6) = rest.strip_prefix('[') {
        if let Some((host, tail)) = v6.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (user, host.to_owned(), port);
        }
    }
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (user, h.to_owned(), Some(port)),
            Err(_) => (user, rest.to_owned(), None),
        },
        _ => (user, rest.to_owned(), None),
    }
}

/// The `ProxyCommand` that reaches the target through `jump`: the same ssh
/// options as the target (identity, known_hosts, policy, BatchMode), with
/// the jump host's own user and port, and `-W %h:%p`.
fn jump_proxy_command(
    ssh: &Path,
    c: &SshConfig,
    jump: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
    connect_wait: f64,
) -> String {
    let (user, host, port) = parse_jump(jump);
    let hop = SshConfig {
        host: host.clone(),
        port,
        user,
        jump_host: None,
        ..c.clone()
    };
    let mut words = vec![ssh.display().to_string()];
    words.extend(master_args(ssh, &hop, resolve, connect_wait));
    words.extend(["-T".into(), "-W".into(), "%h:%p".into(), host]);
    words
        .iter()
        .map(|w| {
            if w == "%h:%p" {
                w.clone()
            } else {
                // `%` is ssh's token character in ProxyCommand.
                crate::shell::quote(w).replace('%', "%%")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `[user@]host[:port]` for messages.
fn display_name(c: &SshConfig) -> String {
    let mut s = String::new();
    if let Some(u) = &c.user {
        s.push_str(u);
        s.push('@');
    }
    s.push_str(&c.host);
    if let Some(p) = c.port {
        s.push_str(&format!(":{p}"));
    }
    s
}

/// Where the control socket goes: the state directory when its path fits in
/// a unix socket address (108 bytes), else a short private directory in /tmp.
fn control_path(state_dir: &Path) -> Result<(PathBuf, Option<tempfile::TempDir>), BackendError> {
    let p = state_dir.join("ssh.ctl");
    // ssh appends a random suffix to the path while it binds.
    if p.as_os_str().len() + 20 < 100 {
        return Ok((p, None));
    }
    let dir = tempfile::Builder::new()
        .prefix("attest-ssh-")
        .tempdir_in("/tmp")
        .map_err(|e| BackendError::io("create a control socket directory in", "/tmp", e))?;
    Ok((dir.path().join("ctl"), Some(dir)))
}

#[async_trait]
impl Backend for SshBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Ssh
    }

    /// How long connecting may retry while the host refuses or is unreachable.
    fn default_boot_timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn start(&self, ctx: &StartContext) -> Result<Box<dyn Instance>, BackendError> {
        let ssh = require_binary("ssh", "openssh-client")?;
        let c = &self.settings;
        if let Some(key) = &c.identity_file {
            let key = ctx.config.resolve(key);
            if !key.is_file() {
                return Err(SshError::NoIdentityFile {
                    who: display_name(c),
                    path: key,
                }
                .into());
            }
        }
        let wait = ctx.boot_timeout.as_secs_f64();
        let deadline = Instant::now() + ctx.boot_timeout;
        let display = display_name(c);
        let _ = std::fs::create_dir_all(&ctx.state_dir);
        let (control, control_dir) = control_path(&ctx.state_dir)?;
        let args = master_args(&ssh, c, &|p: &Path| ctx.config.resolve(p), wait);
        let identity = c.identity_file.as_ref().map(|k| ctx.config.resolve(k));

        let mut attempt = 0u32;
        let mut last_reason: Option<SshError> = None;
        let mut backoff = Duration::from_millis(250);
        let master = loop {
            attempt += 1;
            let _ = std::fs::remove_file(&control);
            let from = ctx.console.end_offset();
            let mut cmd = Command::new(&ssh);
            cmd.args(&args)
                .arg("-o")
                .arg("ControlMaster=yes")
                .arg("-o")
                .arg(format!("ControlPath={}", control.display()))
                .arg("-o")
                .arg("ControlPersist=no")
                .args(["-N", "-T"])
                .arg(&c.host)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let master = spawn_watched(&mut cmd, Some(ctx.console.clone()), &ctx.tasks)
                .map_err(|e| BackendError::spawn("ssh", e))?;
            let failure = match wait_master_up(&ssh, &control, &c.host, &master, deadline).await {
                MasterState::Up => break master,
                MasterState::Exited(info) => {
                    let stderr = settled_since(&ctx.console, from).await;
                    let f = classify(&stderr, &display, identity.as_deref());
                    tracing::debug!(machine = %ctx.machine, attempt, %info, ?f, "ssh master exited");
                    f
                }
                MasterState::TimedOut => {
                    master.terminate(Duration::from_secs(1)).await;
                    let stderr = settled_since(&ctx.console, from).await;
                    match classify(&stderr, &display, identity.as_deref()) {
                        f if f.is_fatal() => f,
                        // Cut short by the deadline: the previous attempt
                        // knows better what is wrong.
                        _ => last_reason.take().unwrap_or_else(|| SshError::NoHandshake {
                            who: display.clone(),
                        }),
                    }
                }
            };
            match failure {
                f if f.is_fatal() => return Err(f.into()),
                f if Instant::now() >= deadline => {
                    return Err(SshError::GaveUp {
                        who: display.clone(),
                        seconds: wait,
                        last: Box::new(f),
                    }
                    .into())
                }
                f => {
                    last_reason = Some(f);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };

        let (exit_tx, exit) = watch::channel(None);
        {
            // The exit watch only: a clone of `master` would keep it alive.
            let master_exit = master.exit.clone();
            let display = display.clone();
            ctx.tasks.spawn(async move {
                let info = wait_for_exit(&master_exit).await;
                let _ = exit_tx.send(Some(Exit::Other(format!(
                    "lost the ssh connection to {display} (ssh {info})"
                ))));
            });
        }
        let instance = SshInstance {
            machine: ctx.machine.clone(),
            display,
            exit,
            ssh,
            control,
            destination: c.host.clone(),
            master,
            console: ctx.console.clone(),
            tasks: ctx.tasks.clone(),
            owned: c.owned,
            _control_dir: control_dir,
        };
        if let Err(e) = instance.preflight(ctx).await {
            instance.close(Duration::from_secs(2)).await;
            return Err(e);
        }
        Ok(Box::new(instance))
    }
}

enum MasterState {
    Up,
    Exited(Exit),
    TimedOut,
}

/// Waits until the master answers `ssh -O check`, exits, or `deadline` passes.
async fn wait_master_up(
    ssh: &Path,
    control: &Path,
    host: &str,
    master: &Watched,
    deadline: Instant,
) -> MasterState {
    let check = || async {
        if !control.exists() {
            return Err(());
        }
        let ok = Command::new(ssh)
            .arg("-S")
            .arg(control)
            .args(["-O", "check"])
            .arg(host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(())
        }
    };
    match poll(deadline, Duration::from_millis(50), &master.exit, check).await {
        Ok(()) => MasterState::Up,
        Err(PollEnd::Exited(info)) => MasterState::Exited(info),
        Err(PollEnd::TimedOut(())) => MasterState::TimedOut,
    }
}

/// The console text after `from`, once the stderr pump has caught up with an
/// exited process (it reads until the pipe closes, shortly after the exit).
async fn settled_since(console: &ConsoleLog, from: usize) -> String {
    let mut last = console.end_offset();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let now = console.end_offset();
        if now == last && now > from {
            break;
        }
        last = now;
    }
    console.text_since(from)
}

impl SshInstance {
    /// A multiplexed `ssh` over the master that runs `remote`.
    fn mux_command(&self, remote: &str) -> Command {
        let mut cmd = Command::new(&self.ssh);
        cmd.arg("-S")
            .arg(&self.control)
            .args(["-o", "ControlMaster=no"])
            // Should the master be gone, never fall back to a fresh connection
            // (which would bypass the machine's exit watch): the first value
            // wins, so this also overrides a ProxyJump from ~/.ssh/config.
            .args(["-o", "ProxyCommand=false"])
            .args(["-o", "BatchMode=yes"])
            .arg("-T")
            .arg(&self.destination)
            .arg(remote);
        cmd
    }

    /// Checks that the remote has what the protocol needs, once per machine.
    async fn preflight(&self, ctx: &StartContext) -> Result<(), BackendError> {
        let mut cmd = self.mux_command(PREFLIGHT_COMMAND);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::select! {
            r = tokio::time::timeout(PREFLIGHT_LIMIT, cmd.output()) => r,
            exit = self.master.wait() => {
                return Err(SshError::Lost {
                    who: self.display.clone(),
                    exit,
                    during: "while checking the remote",
                }
                .into())
            }
        };
        let out = match out {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(BackendError::spawn("ssh", e)),
            Err(_) => {
                return Err(SshError::NoAnswer {
                    who: self.display.clone(),
                    limit: PREFLIGHT_LIMIT,
                }
                .into())
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let missing: Vec<String> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("missing:"))
            .map(str::to_owned)
            .collect();
        if !missing.is_empty() {
            return Err(SshError::RemoteLacks {
                who: self.display.clone(),
                missing,
            }
            .into());
        }
        let Some(uid) = stdout.lines().find_map(|l| l.strip_prefix("uid:")) else {
            return Err(SshError::NoShell {
                who: self.display.clone(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            }
            .into());
        };
        if uid.trim() != "0" {
            ctx.reporter.log(
                Some(&self.machine),
                format!(
                    "commands run as uid {} on {}, not as root",
                    uid.trim(),
                    self.display
                ),
            );
        }
        Ok(())
    }

    /// Closes the master connection (which ends every session) and reaps it.
    async fn close(&self, grace: Duration) {
        if self.master.has_exited() {
            return;
        }
        let mut exit = Command::new(&self.ssh);
        exit.arg("-S")
            .arg(&self.control)
            .args(["-O", "exit"])
            .arg(&self.destination)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), exit.status()).await;
        if tokio::time::timeout(grace.min(Duration::from_secs(2)), self.master.wait())
            .await
            .is_err()
        {
            self.master.terminate(Duration::from_secs(1)).await;
        }
        // The machine's exit watch is fed by a task that rewords the
        // master's exit; let it publish before reporting the host closed.
        let mut exit = self.exit.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), exit.wait_for(|e| e.is_some())).await;
    }
}

/// One backdoor session: a multiplexed `ssh` whose stdin and stdout carry the
/// protocol. Dropping it kills the `ssh` client (the remote shell then sees
/// its channel close and exits).
struct SshStream {
    stdin: ChildStdin,
    stdout: ChildStdout,
    _child: Child,
}

impl AsyncRead for SshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stdin).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_shutdown(cx)
    }
}

#[async_trait]
impl Instance for SshInstance {
    async fn connect(&self, _deadline: Instant) -> Result<Box<dyn GuestStream>, BackendError> {
        if let Some(exit) = self.master.exit.borrow().clone() {
            return Err(SshError::Lost {
                who: self.display.clone(),
                exit,
                during: "",
            }
            .into());
        }
        let mut cmd = self.mux_command(SESSION_COMMAND);
        supervise(&mut cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| BackendError::spawn("ssh", e))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(SshError::NoPipes {
                who: self.display.clone(),
            }
            .into());
        };
        let console = self.console.clone();
        pump_lines(stderr, move |l| console.push_line(&l), &self.tasks);
        debug_assert!(SESSION_COMMAND.contains(BANNER));
        Ok(Box::new(SshStream {
            stdin,
            stdout,
            _child: child,
        }))
    }

    fn max_sessions(&self) -> usize {
        // OpenSSH's sshd allows 10 sessions per connection (MaxSessions).
        8
    }

    fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.clone()
    }

    /// Powers the (owned) host off at once: `systemctl poweroff -ff` skips
    /// every unit and calls reboot(2) right away, which is as close to a power
    /// cut as a remote shell gets. Not `echo o > /proc/sysrq-trigger`: inside
    /// a container that could reach the kernel of the machine running it.
    async fn crash(&self) -> Result<(), BackendError> {
        super::capability::ssh(self.owned, super::capability::Capability::PowerOff).map_err(
            |refusal| BackendError::Refused {
                op: "crash",
                machine: self.machine.clone(),
                refusal,
            },
        )?;
        let mut cmd = self.mux_command(
            "nohup sh -c 'sleep 0.2; systemctl poweroff -ff || poweroff -f' >/dev/null 2>&1 &",
        );
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), cmd.status()).await;
        if tokio::time::timeout(Duration::from_secs(15), self.master.wait())
            .await
            .is_err()
        {
            self.close(Duration::from_secs(1)).await;
        }
        Ok(())
    }

    /// Closes the sessions and the connection; the host keeps running.
    async fn terminate(&self, grace: Duration) {
        self.close(grace).await;
    }

    fn backend_kind(&self) -> BackendKind {
        BackendKind::Ssh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fatal(s: &str) -> String {
        let e = classify(s, "root@10.0.0.2", Some(Path::new("/k/id")));
        assert!(e.is_fatal(), "expected fatal, got transient: {e}");
        e.to_string()
    }

    fn transient(s: &str) -> String {
        let e = classify(s, "root@10.0.0.2", None);
        assert!(!e.is_fatal(), "expected transient, got fatal: {e}");
        e.to_string()
    }

    #[test]
    fn auth_refused_names_host_and_key() {
        let m = fatal("root@10.0.0.2: Permission denied (publickey).");
        assert!(m.contains("authentication refused by root@10.0.0.2"), "{m}");
        assert!(m.contains("/k/id"), "{m}");
    }

    #[test]
    fn unknown_host_key_says_how_to_accept() {
        let m = fatal(
            "No ED25519 host key is known for 10.0.0.2 and you have requested strict checking.\nHost key verification failed.",
        );
        assert!(m.contains("not in known_hosts"), "{m}");
        assert!(m.contains("\"known_hosts\": \"accept-new\""), "{m}");
    }

    #[test]
    fn changed_host_key_is_a_mismatch() {
        let m = fatal(
            "@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.",
        );
        assert!(m.contains("host key mismatch for root@10.0.0.2"), "{m}");
    }

    #[test]
    fn network_failures_are_transient() {
        assert!(
            transient("ssh: connect to host 10.0.0.2 port 22: Connection refused")
                .contains("refused the connection")
        );
        assert!(
            transient("ssh: connect to host 10.0.0.2 port 22: No route to host")
                .contains("unreachable")
        );
        assert!(
            transient("ssh: connect to host 10.0.0.2 port 22: Connection timed out")
                .contains("timed out")
        );
    }

    #[test]
    fn jump_hosts_parse() {
        assert_eq!(parse_jump("j"), (None, "j".into(), None));
        assert_eq!(
            parse_jump("me@j.example:2222"),
            (Some("me".into()), "j.example".into(), Some(2222))
        );
        assert_eq!(parse_jump("[::1]:22"), (None, "::1".into(), Some(22)));
        assert_eq!(parse_jump("fe80::1"), (None, "fe80::1".into(), None));
    }

    #[test]
    fn silent_exit_is_transient() {
        let m = classify("", "h", None);
        assert!(matches!(m, SshError::Other { .. }), "{m:?}");
        assert!(!m.is_fatal());
    }
}
