//! [`KvmFacts`]: what this host's `/dev/kvm` is, probed once per start and
//! read by every backend that wants KVM (QEMU's accelerator choice, the
//! microVMs' prerequisite check, `attest bench`). A `/dev/kvm` that opens is
//! not proof that KVM runs guests: on a KVM-PVM host (`/sys/module/kvm_pvm`,
//! no `vmx`/`svm` CPU flag) a stock guest kernel never executes.

use std::path::Path;
use std::sync::Arc;

use super::BackendError;
use crate::config::BackendKind;
use crate::errors::os_reason;

/// Why KVM cannot run (stock) guests here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KvmProblem {
    /// There is no `/dev/kvm`.
    #[error("KVM is not available (/dev/kvm does not exist)")]
    Missing,
    /// `/dev/kvm` does not open read-write.
    #[error("KVM is not available (/dev/kvm: {})", os_reason(.0))]
    NotAccessible(#[source] Arc<std::io::Error>),
    /// `/dev/kvm` is KVM-PVM: stock guest kernels do not run on it.
    #[error(
        "/dev/kvm is KVM-PVM (/sys/module/kvm_pvm exists): stock guest kernels do not run on it"
    )]
    Pvm,
    /// The CPU has no hardware virtualisation.
    #[error("the CPU has no vmx/svm flag: /dev/kvm is not hardware virtualisation")]
    NoCpuFlag,
}

impl KvmProblem {
    /// What a VMM needs that is missing, and what to do: the end of
    /// `<vmm> needs …`.
    pub fn need(&self) -> String {
        match self {
            KvmProblem::Missing => "/dev/kvm, which does not exist: load kvm_intel or kvm_amd, \
                 or run on a host with hardware virtualisation"
                .into(),
            KvmProblem::NotAccessible(e) => format!(
                "read-write access to /dev/kvm ({}): run attest as root or add the user to the kvm group",
                os_reason(e)
            ),
            other => format!("a /dev/kvm that runs stock guest kernels, but {other}"),
        }
    }

    /// The problem in a few words, for `attest bench`'s host description.
    pub fn summary(&self) -> String {
        match self {
            KvmProblem::Pvm => "/dev/kvm is KVM-PVM (stock guest kernels do not run)".into(),
            KvmProblem::Missing => "/dev/kvm is missing".into(),
            KvmProblem::NotAccessible(e) => format!("/dev/kvm is not accessible: {e}"),
            KvmProblem::NoCpuFlag => "the CPU has no vmx/svm flag".into(),
        }
    }
}

/// What the host's `/dev/kvm` is.
#[derive(Debug, Clone)]
pub struct KvmFacts {
    /// `/dev/kvm` exists.
    pub present: bool,
    /// It opens read-write (an `Err` holds why not).
    pub usable: Result<(), Arc<std::io::Error>>,
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
                .map_err(Arc::new),
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
    pub fn why_not_stock_guests(&self) -> Option<KvmProblem> {
        if !self.present {
            return Some(KvmProblem::Missing);
        }
        if let Err(e) = &self.usable {
            return Some(KvmProblem::NotAccessible(e.clone()));
        }
        if self.pvm {
            return Some(KvmProblem::Pvm);
        }
        if !self.cpu_virt_flag {
            return Some(KvmProblem::NoCpuFlag);
        }
        None
    }

    /// Why a VMM cannot run at all here, if it cannot.
    pub fn require(&self, vmm: BackendKind) -> Result<(), BackendError> {
        let problem = if !self.present {
            KvmProblem::Missing
        } else if let Err(e) = &self.usable {
            KvmProblem::NotAccessible(e.clone())
        } else {
            return Ok(());
        };
        Err(BackendError::Kvm { vmm, problem })
    }

    /// Whether KVM is usable, for `attest bench`: `Ok`, or why not.
    pub fn summary(&self) -> Result<(), KvmProblem> {
        if self.pvm {
            return Err(KvmProblem::Pvm);
        }
        if !self.present {
            return Err(KvmProblem::Missing);
        }
        self.usable.clone().map_err(KvmProblem::NotAccessible)
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
            usable: Err(Arc::new(std::io::Error::from_raw_os_error(libc::ENOENT))),
            pvm: false,
            cpu_virt_flag: true,
        };
        let e = missing.require(BackendKind::Firecracker).unwrap_err();
        assert!(
            matches!(
                &e,
                BackendError::Kvm {
                    problem: KvmProblem::Missing,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(
            e.contains(
                "firecracker needs /dev/kvm, which does not exist: load kvm_intel or kvm_amd"
            ),
            "{e}"
        );
        assert_eq!(
            missing.summary().unwrap_err().summary(),
            "/dev/kvm is missing"
        );
        let denied = KvmFacts {
            present: true,
            usable: Err(Arc::new(std::io::Error::from_raw_os_error(libc::EACCES))),
            pvm: false,
            cpu_virt_flag: true,
        };
        let e = denied
            .require(BackendKind::CloudHypervisor)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cloud-hypervisor needs read-write access to /dev/kvm (Permission denied): run attest as root"),
            "{e}"
        );
        let pvm = KvmFacts {
            present: true,
            usable: Ok(()),
            pvm: true,
            cpu_virt_flag: false,
        };
        assert!(pvm.require(BackendKind::Firecracker).is_ok());
        assert!(!pvm.runs_linux_guests());
        assert!(matches!(pvm.why_not_stock_guests(), Some(KvmProblem::Pvm)));
        assert!(pvm
            .why_not_stock_guests()
            .unwrap()
            .to_string()
            .contains("KVM-PVM"));
        assert!(matches!(pvm.summary(), Err(KvmProblem::Pvm)));
        assert!(pvm.summary().unwrap_err().summary().contains("KVM-PVM"));
    }

    #[test]
    fn cpu_flags_are_read_from_cpuinfo() {
        assert!(cpu_has_virt_flag(
            "processor: 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(!cpu_has_virt_flag("flags\t\t: fpu vme sse\nvmx: none\n"));
    }
}
