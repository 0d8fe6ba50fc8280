//! [`SwitchNamespace`]: a network namespace private to this attest process.
//!
//! A parked thread of attest holds it (`unshare(CLONE_NEWNET)` affects only
//! the calling thread), so it lives exactly as long as attest or its machine
//! processes do: nothing to clean up, nothing named in `/run/netns` to leak.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::NetError;

/// A private network namespace and the thread that holds it.
pub struct SwitchNamespace {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    holder: Option<std::thread::JoinHandle<()>>,
}

impl SwitchNamespace {
    /// Creates the namespace (needs CAP_SYS_ADMIN: run attest as root).
    pub fn create() -> Result<SwitchNamespace, NetError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let holder = std::thread::Builder::new()
            .name("attest-netns".into())
            .spawn(move || {
                let r = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map(|()| nix::unistd::gettid().as_raw());
                let ok = r.is_ok();
                let _ = tx.send(r);
                if ok {
                    while !stop2.load(Ordering::Relaxed) {
                        std::thread::park();
                    }
                }
            })
            .map_err(|e| NetError::Thread {
                source: Arc::new(e),
            })?;
        let tid = rx
            .recv()
            .map_err(|_| NetError::ThreadDied)?
            .map_err(|source| NetError::Namespace { source })?;
        let ns = SwitchNamespace {
            path: PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id())),
            stop,
            holder: Some(holder),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `/proc/…/ns/net` of the namespace.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`SwitchNamespace::ip`] on a blocking thread, for async callers: `ip`
    /// must not stall a runtime worker.
    pub async fn ip_async(self: &Arc<Self>, args: &[&str]) -> Result<(), NetError> {
        let ns = self.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ns.ip(&args)
        })
        .await
        .map_err(|e| NetError::IpTask {
            reason: e.to_string(),
        })?
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetError> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg("ip")
            .args(args)
            .output()
            .map_err(|e| NetError::RunIp {
                source: Arc::new(e),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NetError::Ip {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

impl Drop for SwitchNamespace {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.holder.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}
