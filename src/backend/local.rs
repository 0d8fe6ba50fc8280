//! Test support: a machine that is a bash process on this host. Its backdoor
//! is the same banner + `bash --norc` every guest runs, over a socketpair, so
//! `Machine`, its operations and the script bindings are tested against a
//! real shell in milliseconds, without root, a container or a VM
//! (`machine::local` makes such a machine).
//!
//! The "machine" is a `sleep` in a process group of its own: a crash is a
//! SIGKILL to that group, and every backdoor shell joins the group, so it
//! dies with the machine like a guest's shell dies with the guest.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::{Backend, BackendError, Instance, StartContext};
use crate::config::BackendKind;
use crate::guest::{GuestStream, BANNER};
use crate::process::{spawn_watched, Exit, Watched};

/// Starts local machines.
pub struct LocalBackend;

/// A running local machine.
pub struct LocalInstance {
    process: Watched,
    shells: Mutex<Vec<Child>>,
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn default_boot_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    async fn start(&self, ctx: &StartContext) -> Result<Box<dyn Instance>, BackendError> {
        let mut cmd = Command::new("sleep");
        cmd.arg("infinity");
        let process = spawn_watched(&mut cmd, Some(ctx.console.clone()), &ctx.tasks)
            .map_err(|e| BackendError::spawn("sleep", e))?;
        Ok(Box::new(LocalInstance {
            process,
            shells: Mutex::new(Vec::new()),
        }))
    }
}

impl LocalInstance {
    fn shell(&self) -> std::io::Result<tokio::net::UnixStream> {
        let (ours, theirs) = StdUnixStream::pair()?;
        let theirs: std::os::fd::OwnedFd = theirs.into();
        let stdout = theirs.try_clone()?;
        let child = Command::new("bash")
            .args(["-c", &format!("echo '{BANNER}'; exec bash --norc")])
            .stdin(theirs)
            .stdout(stdout)
            .process_group(self.process.pid as i32)
            .kill_on_drop(true)
            .spawn()?;
        self.shells.lock().expect("shells").push(child);
        ours.set_nonblocking(true)?;
        tokio::net::UnixStream::from_std(ours)
    }
}

#[async_trait]
impl Instance for LocalInstance {
    async fn connect(&self, _deadline: Instant) -> Result<Box<dyn GuestStream>, BackendError> {
        if let Some(exit) = self.process.exit.borrow().clone() {
            return Err(BackendError::Exited {
                process: "the machine".into(),
                exit,
                during: String::new(),
                output: String::new(),
            });
        }
        let shell = self.shell().map_err(|e| BackendError::spawn("bash", e))?;
        Ok(Box::new(shell))
    }

    fn max_sessions(&self) -> usize {
        4
    }

    fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.process.exit.clone()
    }

    async fn crash(&self) -> Result<(), BackendError> {
        self.process.kill().await;
        Ok(())
    }

    async fn terminate(&self, grace: Duration) {
        self.process.terminate(grace).await;
        let shells = std::mem::take(&mut *self.shells.lock().expect("shells"));
        for mut s in shells {
            let _ = s.kill().await;
        }
    }

    fn backend_kind(&self) -> BackendKind {
        BackendKind::Local
    }
}
