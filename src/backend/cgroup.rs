//! [`PrivateCgroup`]: a cgroup of its own for a container's supervisor.
//!
//! With `--keep-unit`, systemd-nspawn splits the cgroup it starts in into
//! `supervisor` and `payload`, and the container's systemd owns `payload`.
//! Started from a shared cgroup (the root, where PID 1 is not systemd),
//! every container would share one `payload` and one set of unit cgroups —
//! and a container's systemd stopping its units would kill processes that
//! are not its own. A private cgroup per container prevents that.
//!
//! The owner holds an exclusive `flock` on each of its cgroup directories
//! while it lives: the janitor of a later run removes only cgroups whose
//! lock it can take (see [`try_lock`]), so a live run's cgroups are never
//! touched, whatever its process is called or which namespace it runs in.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The hierarchies nspawn places processes in (v1 named `systemd`, v2).
pub const HIERARCHIES: &[&str] = &[
    "/sys/fs/cgroup",
    "/sys/fs/cgroup/unified",
    "/sys/fs/cgroup/systemd",
];

/// The paths of a cgroup named `name` in every hierarchy present here.
pub fn dirs(name: &str) -> Vec<PathBuf> {
    HIERARCHIES
        .iter()
        .map(Path::new)
        .filter(|h| h.join("cgroup.procs").exists())
        .map(|h| h.join(name))
        .collect()
}

/// A cgroup named `name` in every hierarchy present, locked by its owner;
/// removed on drop.
pub struct PrivateCgroup {
    dirs: Vec<PathBuf>,
    _locks: Vec<Flock<File>>,
}

/// Takes the lock of a cgroup directory without waiting; `None` when another
/// process holds it (a live owner) or the directory is gone.
pub fn try_lock(dir: &Path) -> Option<Flock<File>> {
    let f = File::open(dir).ok()?;
    Flock::lock(f, FlockArg::LockExclusiveNonblock).ok()
}

/// Creates `dir` and locks it. A janitor may remove a directory between its
/// creation and our lock; then the locked one is not the one at the path, and
/// we try again.
fn create_locked(dir: &Path) -> Option<Flock<File>> {
    for _ in 0..50 {
        if std::fs::create_dir_all(dir).is_err() {
            return None;
        }
        if let Some(lock) = try_lock(dir) {
            let held = lock.metadata().ok().map(|m| m.ino());
            let at_path = std::fs::metadata(dir).ok().map(|m| m.ino());
            if held.is_some() && held == at_path {
                return Some(lock);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

impl PrivateCgroup {
    /// Creates and locks the cgroups (best effort: a hierarchy that refuses
    /// is skipped).
    pub fn create(name: &str) -> PrivateCgroup {
        let (dirs, locks) = dirs(name)
            .into_iter()
            .filter_map(|d| create_locked(&d).map(|l| (d, l)))
            .unzip();
        PrivateCgroup {
            dirs,
            _locks: locks,
        }
    }

    /// Makes the spawned child join the cgroups before it executes.
    pub fn enter_on_spawn(&self, cmd: &mut tokio::process::Command) {
        let procs: Vec<CString> = self
            .dirs
            .iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
            })
            .collect();
        // SAFETY: open, write and close are async-signal-safe; the closure
        // only reads the CStrings prepared above.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                }
                Ok(())
            });
        }
    }
}

impl PrivateCgroup {
    /// Removes the cgroups once their processes are gone: the kernel kills
    /// the members of a dead PID namespace asynchronously, so a cgroup may
    /// stay busy for a moment after the container's supervisor was reaped.
    /// Gives up after `limit` (the next run's janitor sweeps what is left).
    pub async fn remove_when_empty(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        let interval = std::time::Duration::from_millis(25);
        let _ = crate::process::retry(deadline, interval, || async {
            for d in &self.dirs {
                remove_tree(d);
            }
            if self.dirs.iter().all(|d| !d.exists()) {
                Ok(())
            } else {
                Err(())
            }
        })
        .await;
    }
}

impl Drop for PrivateCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            remove_tree(d);
        }
    }
}

/// Removes a cgroup and its (empty) children, deepest first.
pub fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
