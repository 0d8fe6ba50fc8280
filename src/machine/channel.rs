//! [`Channel`]: how a running machine's commands reach its guest — a pool of
//! bash backdoor sessions, or one agent connection carrying every command at
//! once. [`Protocol`] chooses; `auto` uses the agent where it runs and falls
//! back to bash with the reason in the log.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::live::LiveLines;
use super::{wait_exit, Machine, MachineError};
use crate::agent::wire;
use crate::backend::Instance;
use crate::config::BackendKind;
use crate::guest::agent::{self, AgentClient, Protocol};
use crate::guest::{CommandOutput, GuestError, GuestStream, Session};

/// The command channel of a running machine. Clones share it.
#[derive(Clone)]
pub(super) enum Channel {
    /// Bash backdoor sessions, one command each at a time.
    Bash {
        sessions: Arc<Mutex<Vec<Session>>>,
        slots: Arc<Semaphore>,
    },
    /// The agent, many commands at once; replaced by a fresh one (on a new
    /// connection, without a new upload) when it died.
    Agent(Arc<tokio::sync::Mutex<Arc<AgentClient>>>),
}

/// Backends where `auto` tries the agent: those it is tested on. On the
/// microVMs (vsock) it runs only with `--protocol agent`: no Linux guest
/// boots there on the hosts attest is tested on.
const AGENT_BY_DEFAULT: &[BackendKind] =
    &[BackendKind::Nspawn, BackendKind::Qemu, BackendKind::Ssh];

/// Longest wait for a banner on a fresh stream after the agent's bootstrap
/// failed with the stream in an unknown state: on a single-stream transport
/// (hvc0) the "fresh" stream is the same shell, which may never print one.
const FALLBACK_BANNER_WAIT: Duration = Duration::from_secs(60);

impl Channel {
    /// The protocol's name, for logs and the bench.
    pub(super) fn protocol(&self) -> &'static str {
        match self {
            Channel::Bash { .. } => "bash",
            Channel::Agent(_) => "agent",
        }
    }
}

impl Machine {
    /// Connects the channel the protocol option asks for, racing the
    /// machine's exit.
    pub(super) async fn open_channel(
        &self,
        instance: &dyn Instance,
        deadline: Instant,
    ) -> Result<Channel, MachineError> {
        let protocol = *self.inner.protocol.lock().expect("protocol lock");
        let use_agent = match protocol {
            Protocol::Bash => false,
            Protocol::Agent => true,
            Protocol::Auto => AGENT_BY_DEFAULT.contains(&self.backend_kind()),
        };
        let bash = |session| Channel::Bash {
            sessions: Arc::new(Mutex::new(vec![session])),
            slots: Arc::new(Semaphore::new(instance.max_sessions().max(1))),
        };
        if !use_agent {
            return Ok(bash(self.open_session(instance, deadline).await?));
        }
        let booted = self
            .over_fresh_stream(
                instance,
                deadline,
                "starting the guest agent",
                |stream| async move {
                    Ok(
                        agent::bootstrap(stream, deadline, placement(instance), &self.inner.tasks)
                            .await,
                    )
                },
            )
            .await?;
        let fallback = match booted {
            Ok(client) => {
                return Ok(Channel::Agent(Arc::new(tokio::sync::Mutex::new(Arc::new(
                    client,
                )))))
            }
            Err(f) => f,
        };
        if protocol == Protocol::Agent {
            return Err(self.guest_error(
                "(starting the guest agent)",
                GuestError::AgentStart(fallback.reason),
            ));
        }
        self.inner.reporter.log(
            Some(&self.inner.name),
            format!(
                "using the bash protocol: {} (--protocol bash skips the agent)",
                fallback.reason
            ),
        );
        let session = match fallback.stream {
            Some(stream) => self.establish_session(stream, deadline).await?,
            None => {
                let bounded = deadline.min(Instant::now() + FALLBACK_BANNER_WAIT);
                self.open_session(instance, bounded).await?
            }
        };
        Ok(bash(session))
    }

    /// Connects a fresh backdoor stream and hands it to `then`; fails at
    /// once, naming `during`, if the machine exits meanwhile.
    async fn over_fresh_stream<T, F, Fut>(
        &self,
        instance: &dyn Instance,
        deadline: Instant,
        during: &str,
        then: F,
    ) -> Result<T, MachineError>
    where
        F: FnOnce(Box<dyn GuestStream>) -> Fut,
        Fut: std::future::Future<Output = Result<T, MachineError>>,
    {
        let mut exit = instance.exit_watch();
        let attempt = async {
            let stream = instance
                .connect(deadline)
                .await
                .map_err(|e| self.backend_error("connect to the backdoor", e))?;
            then(stream).await
        };
        tokio::select! {
            // An exit explains a failed connect better than the connect error.
            biased;
            info = wait_exit(&mut exit) => Err(self.died(&info, during)),
            r = attempt => r,
        }
    }

    /// A bash session on a fresh backdoor stream.
    pub(super) async fn open_session(
        &self,
        instance: &dyn Instance,
        deadline: Instant,
    ) -> Result<Session, MachineError> {
        self.over_fresh_stream(instance, deadline, "waiting for the backdoor shell", |s| {
            self.establish_session(s, deadline)
        })
        .await
    }

    async fn establish_session(
        &self,
        stream: Box<dyn GuestStream>,
        deadline: Instant,
    ) -> Result<Session, MachineError> {
        let left = deadline.saturating_duration_since(Instant::now());
        Session::establish(stream, left.max(Duration::from_secs(1)))
            .await
            .map_err(|e| self.guest_error("(waiting for the backdoor shell)", e))
    }

    fn guest_error(&self, command: &str, error: GuestError) -> MachineError {
        MachineError::Guest {
            machine: self.inner.name.clone(),
            command: command.to_owned(),
            error,
        }
    }

    /// Runs one command on the channel (without the exit/cancel races,
    /// which the caller adds).
    pub(super) async fn run_on(
        &self,
        channel: &Channel,
        instance: &dyn Instance,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, MachineError> {
        let guest_error = |e: GuestError| self.guest_error(command, e);
        match channel {
            Channel::Agent(slot) => {
                let client = self.live_agent(slot, instance).await?;
                if !self.inner.reporter.live_output() {
                    return client.execute(command, timeout).await.map_err(guest_error);
                }
                let mut lines = LiveLines::new(&self.inner.reporter, &self.inner.name);
                client
                    .execute_streaming(command, timeout, &mut |kind, bytes| {
                        lines.chunk(kind == wire::STDERR, bytes)
                    })
                    .await
                    .map_err(guest_error)
            }
            Channel::Bash { sessions, slots } => {
                let _permit = slots.acquire().await.map_err(|_| self.cancelled())?;
                let pooled = sessions.lock().expect("session pool lock").pop();
                let mut session = match pooled {
                    Some(s) => s,
                    None => {
                        self.open_session(instance, Instant::now() + Duration::from_secs(30))
                            .await?
                    }
                };
                let out = session.execute(command, timeout).await;
                if session.is_usable() {
                    sessions.lock().expect("session pool lock").push(session);
                }
                let out = out.map_err(guest_error)?;
                if self.inner.reporter.live_output() {
                    // Captured in the guest: the lines come at the end.
                    let mut lines = LiveLines::new(&self.inner.reporter, &self.inner.name);
                    lines.chunk(false, &out.stdout);
                    lines.chunk(true, &out.stderr);
                }
                Ok(out)
            }
        }
    }

    /// The agent of the slot, restarted first if its connection broke (the
    /// call that saw it break has failed already, as a bash session's would).
    async fn live_agent(
        &self,
        slot: &tokio::sync::Mutex<Arc<AgentClient>>,
        instance: &dyn Instance,
    ) -> Result<Arc<AgentClient>, MachineError> {
        let mut current = slot.lock().await;
        if current.is_usable() {
            return Ok(current.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = self
            .over_fresh_stream(
                instance,
                deadline,
                "restarting the guest agent",
                |s| async move {
                    Ok(agent::bootstrap(s, deadline, placement(instance), &self.inner.tasks).await)
                },
            )
            .await?
            .map_err(|f| {
                self.guest_error(
                    "(restarting the guest agent)",
                    GuestError::AgentStart(f.reason),
                )
            })?;
        *current = Arc::new(client);
        Ok(current.clone())
    }

    /// Whether the machine's commands go through the agent (starting the
    /// machine if needed).
    pub(super) async fn speaks_agent(&self) -> Result<bool, MachineError> {
        let (_, channel) = self.started_channel().await?;
        Ok(matches!(channel, Channel::Agent(_)))
    }

    /// Runs `work` on the machine's agent (starting the machine if needed),
    /// racing its exit and the run's cancellation; `Ok(None)` when its
    /// commands go through bash sessions. `what` names the call in errors.
    pub(super) async fn with_agent<T, F, Fut>(
        &self,
        what: &str,
        work: F,
    ) -> Result<Option<T>, MachineError>
    where
        F: FnOnce(Arc<AgentClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, GuestError>>,
    {
        let (instance, channel) = self.started_channel().await?;
        let Channel::Agent(slot) = &channel else {
            return Ok(None);
        };
        let run = async {
            let client = self
                .live_agent(slot, &*instance)
                .await
                .map_err(|e| (e, false))?;
            let r = work(client.clone()).await;
            r.map_err(|e| (self.guest_error(what, e), !client.is_usable()))
        };
        self.race_and_settle(&instance, what, run).await.map(Some)
    }

    /// A bash session for what still speaks the bash protocol (file
    /// transfers): tunnelled through the agent, which may own the only
    /// stream (hvc0).
    pub(super) async fn agent_session(
        &self,
        slot: &tokio::sync::Mutex<Arc<AgentClient>>,
        instance: &dyn Instance,
    ) -> Result<Session, MachineError> {
        let client = self.live_agent(slot, instance).await?;
        let stream = client
            .open_shell()
            .await
            .map_err(|e| self.guest_error("(opening a shell through the agent)", e))?;
        self.establish_session(Box::new(stream), Instant::now() + Duration::from_secs(30))
            .await
    }

    /// Sends a command whose reply never comes (`poweroff`). `false` when
    /// no idle channel could take it.
    pub(super) async fn fire_and_forget(&self, channel: &Channel, command: &str) -> bool {
        match channel {
            Channel::Agent(slot) => {
                let client = slot.lock().await.clone();
                client.send_fire_and_forget(command).await.is_ok()
            }
            Channel::Bash { sessions, .. } => {
                let pooled = sessions.lock().expect("session pool lock").pop();
                match pooled {
                    Some(mut s) => {
                        let _ = s.send_fire_and_forget(command).await;
                        true
                    }
                    None => false,
                }
            }
        }
    }
}

/// Where `instance` wants its agent to serve ([`agent::Placement`]).
fn placement(instance: &dyn Instance) -> agent::Placement {
    agent::Placement {
        direct: instance.agent_socket(),
        window: instance.agent_window(),
        upload: instance.agent_upload_port(),
    }
}
