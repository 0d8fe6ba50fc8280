//! Ownership of a run's files by lock, and the sweep of what a SIGKILLed
//! attest could not remove.
//!
//! A run holds an exclusive `flock` on `attest.lock` in its state directory
//! for as long as it lives; the kernel drops the lock when the process dies,
//! however it dies. The sweep at the next start removes only state dirs whose
//! lock it can take and that are not marked kept (`--keep-state`): a live run
//! holds its lock whatever its binary is called or whichever PID namespace it
//! runs in, so it is never mistaken for a dead one. Container cgroups are
//! locked the same way by their owner (see `backend::cgroup`). Processes need
//! no sweep: parent-death signals and PID namespaces take them down.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::backend::cgroup::{remove_tree, try_lock, HIERARCHIES};

/// The file in a state dir whose lock the owning run holds.
pub const LOCK_FILE: &str = "attest.lock";
/// The marker of a state dir kept with `--keep-state`: never swept.
pub const KEPT_FILE: &str = "attest.kept";

/// The lock a live run holds on its state dir; released when dropped or when
/// the process dies.
#[derive(Debug)]
pub struct RunLock {
    _lock: Flock<File>,
}

/// Takes the lock of a fresh state dir. The file is locked before it gets
/// its name, so no sweep ever sees it unlocked.
pub fn claim(dir: &Path) -> std::io::Result<RunLock> {
    let pending = dir.join(format!("{LOCK_FILE}.new"));
    let file = File::create(&pending)?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e)?;
    std::fs::rename(&pending, dir.join(LOCK_FILE))?;
    Ok(RunLock { _lock: lock })
}

/// What the sweep may do with a state dir.
enum Owner {
    /// Its lock is held: a live run.
    Alive,
    /// Its lock was free; we hold it now.
    Dead(#[allow(dead_code)] Flock<File>),
    /// No lock file (being created, or not a dir of this version): untouched.
    Unknown,
}

fn owner(dir: &Path) -> Owner {
    let Ok(file) = File::open(dir.join(LOCK_FILE)) else {
        return Owner::Unknown;
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Owner::Dead(lock),
        Err(_) => Owner::Alive,
    }
}

fn state_dirs(tmp: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return vec![];
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("attest-"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// The run id in a container cgroup's name,
/// `attest-<pid>-<node>-<run id>[-<start count>]`.
fn cgroup_run_id(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("attest-")?;
    let parts: Vec<&str> = rest.split('-').collect();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [pid, node, id] | [pid, node, id, _]
            if parts.get(3).is_none_or(|start| numeric(start))
                && numeric(pid)
                && numeric(node)
                && id.len() == 6
                && id.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            Some(id)
        }
        _ => None,
    }
}

/// Removes state dirs of dead runs under `tmp` (unless kept) and the
/// container cgroups no live run holds.
pub fn sweep(tmp: &Path) {
    for dir in state_dirs(tmp) {
        if dir.join(KEPT_FILE).exists() {
            continue;
        }
        if let Owner::Dead(_lock) = owner(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    for hierarchy in HIERARCHIES {
        let Ok(entries) = std::fs::read_dir(hierarchy) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Only names of this version's containers: older versions
            // (and other tools) do not lock theirs.
            if cgroup_run_id(&name).is_some() {
                if let Some(_lock) = try_lock(&e.path()) {
                    remove_tree(&e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_dir(tmp: &Path, name: &str) -> PathBuf {
        let d = tmp.join(name);
        std::fs::create_dir(&d).unwrap();
        d
    }

    #[test]
    fn only_unlocked_unkept_dirs_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = state_dir(tmp.path(), "attest-t-dead01");
        let alive = state_dir(tmp.path(), "attest-t-alive1");
        let kept = state_dir(tmp.path(), "attest-t-kept01");
        let foreign = state_dir(tmp.path(), "attest-t-foreig");
        drop(claim(&dead).unwrap());
        let _held = claim(&alive).unwrap();
        drop(claim(&kept).unwrap());
        std::fs::write(kept.join(KEPT_FILE), "").unwrap();
        sweep(tmp.path());
        assert!(!dead.exists());
        assert!(alive.exists(), "its lock is held");
        assert!(kept.exists(), "marked kept");
        assert!(foreign.exists(), "no lock file: not ours to remove");
    }

    #[test]
    fn cgroup_names_of_this_version_are_recognised() {
        assert_eq!(cgroup_run_id("attest-12-1-aB3xY9"), Some("aB3xY9"));
        assert_eq!(cgroup_run_id("attest-12-1-aB3xY9-3"), Some("aB3xY9"));
        assert_eq!(cgroup_run_id("attest-12-1-aB3xY9-x"), None);
        assert_eq!(
            cgroup_run_id("attest-12-1"),
            None,
            "older versions do not lock"
        );
        assert_eq!(cgroup_run_id("attest-sshtest-12-0"), None);
    }
}
