//! [`KvmFacts`]: what this host's `/dev/kvm` is, probed once per start and
//! read by every backend that wants KVM (QEMU's accelerator choice, the
//! microVMs' prerequisite check, `attest bench`). A `/dev/kvm` that opens is
//! not proof that KVM runs guests: on a KVM-PVM host (`/sys/module/kvm_pvm`,
//! no `vmx`/`svm` CPU flag) a stock guest kernel never executes.

use std::path::Path;

use super::BackendError;

/// What the host's `/dev/kvm` is.
#[derive(Debug, Clone)]
pub struct KvmFacts {
    /// `/dev/kvm` exists.
    pub present: bool,
    /// It opens read-write (an `Err` holds why not).
    pub usable: Result<(), String>,
    /// The `kvm_pvm` module is loaded: stock guest kernels cannot run.
    pub pvm: bool,
    /// `/proc/cpuinfo` lists `vmx` or `svm`.
    pub cpu_virt_flag: bool,
}

impl KvmFacts {
    /// Looks at this host.
    pub fn probe() -> KvmFacts {
        let dev = Path::new("/dev/kvm");
        KvmFacts {
            present: dev.exists(),
            usable: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dev)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            pvm: Path::new("/sys/module/kvm_pvm").exists(),
            cpu_virt_flag: std::fs::read_to_string("/proc/cpuinfo")
                .map(|s| cpu_has_virt_flag(&s))
                .unwrap_or(false),
        }
    }

    /// Whether KVM runs ordinary Linux guests here.
    pub fn runs_linux_guests(&self) -> bool {
        self.present && self.usable.is_ok() && !self.pvm
    }

    /// Why stock guests cannot run under KVM here, if they cannot (QEMU's
    /// `auto` falls back to TCG with this as the warning).
    pub fn why_not_stock_guests(&self) -> Option<String> {
        if let Err(e) = &self.usable {
            return Some(format!("KVM is not available (/dev/kvm: {e})"));
        }
        if self.pvm {
            return Some(
                "/dev/kvm is KVM-PVM (/sys/module/kvm_pvm exists): stock guest kernels do not run on it"
                    .into(),
            );
        }
        if !self.cpu_virt_flag {
            return Some(
                "the CPU has no vmx/svm flag: /dev/kvm is not hardware virtualisation".into(),
            );
        }
        None
    }

    /// A prerequisite error when a VMM cannot run at all.
    pub fn require(&self, vmm: &str) -> Result<(), BackendError> {
        if !self.present {
            return Err(BackendError::Prerequisite(format!(
                "{vmm} needs /dev/kvm, which does not exist: load kvm_intel or kvm_amd, or run on a host with hardware virtualisation"
            )));
        }
        if let Err(e) = &self.usable {
            return Err(BackendError::Prerequisite(format!(
                "{vmm} needs read-write access to /dev/kvm ({e}): run attest as root or add the user to the kvm group"
            )));
        }
        Ok(())
    }

    /// The state in words, for `attest bench`: `usable`, or why not.
    pub fn summary(&self) -> Result<&'static str, String> {
        if self.pvm {
            return Err("/dev/kvm is KVM-PVM (stock guest kernels do not run)".into());
        }
        if !self.present {
            return Err("/dev/kvm is missing".into());
        }
        match &self.usable {
            Ok(()) => Ok("usable"),
            Err(e) => Err(format!("/dev/kvm is not accessible: {e}")),
        }
    }
}

fn cpu_has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_problems_are_explained() {
        let missing = KvmFacts {
            present: false,
            usable: Err("No such file or directory".into()),
            pvm: false,
            cpu_virt_flag: true,
        };
        let e = missing.require("firecracker").unwrap_err().to_string();
        assert!(
            e.contains("firecracker needs /dev/kvm, which does not exist"),
            "{e}"
        );
        assert_eq!(missing.summary(), Err("/dev/kvm is missing".into()));
        let denied = KvmFacts {
            present: true,
            usable: Err("Permission denied (os error 13)".into()),
            pvm: false,
            cpu_virt_flag: true,
        };
        let e = denied.require("cloud-hypervisor").unwrap_err().to_string();
        assert!(
            e.contains("read-write access to /dev/kvm (Permission denied"),
            "{e}"
        );
        let pvm = KvmFacts {
            present: true,
            usable: Ok(()),
            pvm: true,
            cpu_virt_flag: false,
        };
        assert!(pvm.require("firecracker").is_ok());
        assert!(!pvm.runs_linux_guests());
        assert!(pvm.why_not_stock_guests().unwrap().contains("KVM-PVM"));
        assert!(pvm.summary().unwrap_err().contains("KVM-PVM"));
    }

    #[test]
    fn cpu_flags_are_read_from_cpuinfo() {
        assert!(cpu_has_virt_flag(
            "processor: 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(!cpu_has_virt_flag("flags\t\t: fpu vme sse\nvmx: none\n"));
    }
}
