//! [`VdeSwitches`]: one `vde_switch` per vlan for QEMU VMs (`-netdev vde`).
//! Each switch runs in the foreground under [`spawn_watched`] (own process
//! group, parent-death signal). `vde_switch` exits on EOF on its stdin
//! console, so its stdin is a FIFO opened read-write (never EOF) by the shell
//! that execs it. Dropping [`VdeSwitches`] kills them ([`Watched`]'s guard);
//! their watcher tasks, which the driver awaits, reap them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio_util::task::TaskTracker;

use super::NetError;
use crate::process::{poll, require_binary, spawn_watched, PollEnd, Watched};

/// The running switches of a test, by vlan.
pub struct VdeSwitches {
    switches: BTreeMap<u8, (PathBuf, Watched)>,
}

impl VdeSwitches {
    /// Starts one switch per vlan under `dir` and waits until each accepts
    /// connections (its `ctl` socket exists).
    pub async fn start(
        dir: &Path,
        vlans: impl IntoIterator<Item = u8>,
        tasks: &TaskTracker,
    ) -> Result<VdeSwitches, NetError> {
        let bin = require_binary("vde_switch", "vde2")?;
        std::fs::create_dir_all(dir).map_err(|e| NetError::Create {
            path: dir.to_owned(),
            source: std::sync::Arc::new(e),
        })?;
        let mut switches = VdeSwitches {
            switches: BTreeMap::new(),
        };
        for vlan in vlans {
            let sock = dir.join(format!("vde{vlan}.ctl"));
            let fifo = dir.join(format!("vde{vlan}.stdin"));
            let _ = std::fs::remove_file(&fifo);
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(
                |source| NetError::Fifo {
                    path: fifo.clone(),
                    source,
                },
            )?;
            let mut cmd = Command::new("bash");
            cmd.arg("-c")
                .arg("exec \"$0\" --sock \"$1\" --dirmode 0700 <>\"$2\"")
                .arg(&bin)
                .arg(&sock)
                .arg(&fifo)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let w = spawn_watched(&mut cmd, None, tasks).map_err(|e| NetError::RunVde {
                source: std::sync::Arc::new(e),
            })?;
            switches.switches.insert(vlan, (sock.clone(), w.clone()));
            let deadline = Instant::now() + Duration::from_secs(10);
            let ctl = sock.join("ctl");
            poll(deadline, Duration::from_millis(10), &w.exit, || async {
                if ctl.exists() {
                    Ok(())
                } else {
                    Err(())
                }
            })
            .await
            .map_err(|e| match e {
                PollEnd::Exited(exit) => NetError::VdeExited { vlan, exit },
                PollEnd::TimedOut(()) => NetError::VdeNoSocket {
                    vlan,
                    sock: sock.clone(),
                },
            })?;
        }
        Ok(switches)
    }

    /// The socket directory of a vlan's switch (`-netdev vde,sock=…`).
    pub fn socket(&self, vlan: u8) -> Option<&Path> {
        self.switches.get(&vlan).map(|(p, _)| p.as_path())
    }

    /// A switch that died, if any (vlan and how it ended).
    pub fn dead(&self) -> Option<(u8, String)> {
        self.switches
            .iter()
            .find_map(|(v, (_, w))| w.exit.borrow().clone().map(|i| (*v, i.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn switches_run_until_dropped() {
        if require_binary("vde_switch", "vde2").is_err() {
            panic!("vde_switch is missing: apt-get install vde2");
        }
        let dir = tempfile::tempdir().unwrap();
        let tasks = TaskTracker::new();
        let s = VdeSwitches::start(dir.path(), [1, 3], &tasks)
            .await
            .unwrap();
        let sock = s.socket(3).unwrap().to_owned();
        assert!(sock.join("ctl").exists());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(s.dead().is_none(), "a switch died: {:?}", s.dead());
        let pids: Vec<u32> = s.switches.values().map(|(_, w)| w.pid).collect();
        drop(s);
        // The run's teardown: every watcher ends, having reaped its switch.
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the switches outlived their handle");
        for pid in pids {
            let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None);
            assert_eq!(gone, Err(nix::errno::Errno::ESRCH));
        }
    }
}
