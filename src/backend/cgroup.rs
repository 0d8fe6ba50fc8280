//! [`PrivateCgroup`]: a cgroup of its own for a container's supervisor.
//!
//! With `--keep-unit`, systemd-nspawn splits the cgroup it starts in into
//! `supervisor` and `payload`, and the container's systemd owns `payload`.
//! Started from a shared cgroup (the root, where PID 1 is not systemd),
//! every container would share one `payload` and one set of unit cgroups —
//! and a container's systemd stopping its units would kill processes that
//! are not its own. A private cgroup per container prevents that.

use std::ffi::CString;
use std::path::{Path, PathBuf};

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

/// A cgroup named `name` in every hierarchy present; removed on drop.
pub struct PrivateCgroup {
    dirs: Vec<PathBuf>,
}

impl PrivateCgroup {
    /// Creates the cgroups (best effort: a hierarchy that refuses is skipped).
    pub fn create(name: &str) -> PrivateCgroup {
        let dirs = dirs(name)
            .into_iter()
            .filter(|d| std::fs::create_dir_all(d).is_ok())
            .collect();
        PrivateCgroup { dirs }
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
