//! Sweeps what a SIGKILLed attest could not remove: its state directory and
//! the (empty) cgroups of its containers. Its processes are already gone —
//! parent-death signals and PID namespaces see to that — but files need a
//! later run: each state dir records its owner's pid, and anything whose
//! owner no longer runs is removed at the next start.

use std::path::Path;

use crate::backend::cgroup::{remove_tree, HIERARCHIES};

/// The file in a state dir naming the attest process that owns it.
pub const OWNER_FILE: &str = "attest.pid";

fn running(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("attest"))
        .unwrap_or(false)
}

/// Removes stale state dirs under `tmp` and stale container cgroups.
pub fn sweep(tmp: &Path) {
    if let Ok(entries) = std::fs::read_dir(tmp) {
        for e in entries.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().starts_with("attest-") {
                continue;
            }
            let owner = std::fs::read_to_string(e.path().join(OWNER_FILE))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if owner.is_some_and(|pid| !running(pid)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    for hierarchy in HIERARCHIES {
        let Ok(entries) = std::fs::read_dir(hierarchy) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Container cgroups are named attest-<pid>-<node number>.
            let Some(pid) = name
                .strip_prefix("attest-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !running(pid) {
                remove_tree(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dirs_of_dead_owners_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = tmp.path().join("attest-t-dead");
        let alive = tmp.path().join("attest-t-alive");
        let foreign = tmp.path().join("attest-t-foreign");
        for d in [&dead, &alive, &foreign] {
            std::fs::create_dir(d).unwrap();
        }
        // pid_max is at most 2^22: this pid cannot exist.
        std::fs::write(dead.join(OWNER_FILE), "4194305").unwrap();
        std::fs::write(alive.join(OWNER_FILE), std::process::id().to_string()).unwrap();
        sweep(tmp.path());
        assert!(!dead.exists());
        assert!(alive.exists(), "the test binary's name contains attest");
        assert!(foreign.exists(), "no owner file: not ours to remove");
    }
}
