//! [`Usage`]: attest's own resource use (getrusage and `/proc/self/status`).

use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeVal;
use serde::Serialize;

/// CPU times of attest itself and of its reaped children, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Usage {
    /// User CPU of attest (all threads).
    pub self_user_s: f64,
    /// System CPU of attest (all threads).
    pub self_sys_s: f64,
    /// User CPU of children attest has waited for (nspawn, QEMU, and what they reaped).
    pub children_user_s: f64,
    /// System CPU of those children.
    pub children_sys_s: f64,
}

fn rusage(who: UsageWho) -> (f64, f64) {
    let Ok(ru) = getrusage(who) else {
        return (0.0, 0.0);
    };
    let t = |tv: TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    (t(ru.user_time()), t(ru.system_time()))
}

impl Usage {
    /// The totals so far.
    pub fn now() -> Usage {
        let (self_user_s, self_sys_s) = rusage(UsageWho::RUSAGE_SELF);
        let (children_user_s, children_sys_s) = rusage(UsageWho::RUSAGE_CHILDREN);
        Usage {
            self_user_s,
            self_sys_s,
            children_user_s,
            children_sys_s,
        }
    }

    /// What was used since `earlier`.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            self_user_s: self.self_user_s - earlier.self_user_s,
            self_sys_s: self.self_sys_s - earlier.self_sys_s,
            children_user_s: self.children_user_s - earlier.children_user_s,
            children_sys_s: self.children_sys_s - earlier.children_sys_s,
        }
    }

    /// attest's own user+sys CPU seconds.
    pub fn self_cpu_s(&self) -> f64 {
        self.self_user_s + self.self_sys_s
    }
}

/// attest's peak resident set size in KiB (`VmHWM`), if readable.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets the peak RSS to the current RSS (`clear_refs` "5", Linux 4.0+),
/// so the next [`peak_rss_kib`] is the peak of what ran in between.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_grows_and_rss_is_known() {
        let a = Usage::now();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let d = Usage::now().since(&a);
        assert!(d.self_cpu_s() >= 0.0);
        assert!(peak_rss_kib().unwrap() > 0);
    }
}
