//! Choosing QEMU's accelerator. A `/dev/kvm` that opens is not proof that KVM
//! runs guests: a KVM-PVM host (`/sys/module/kvm_pvm`, no `vmx`/`svm` CPU
//! flag) accepts VMs but a stock guest kernel never executes on it. `auto`
//! picks KVM only when it really works and falls back to TCG with a warning;
//! an explicit `kvm` on a host that cannot do it is an error naming the cause.

use crate::backend::kvm::{KvmFacts, KvmProblem};

/// The accelerator QEMU runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (`-accel kvm -cpu host`).
    Kvm,
    /// Emulation (`-accel tcg -cpu max`).
    Tcg,
}

impl Accel {
    /// The name in logs and on QEMU's command line.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The choice and, for a fallback, the warning to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The accelerator to use.
    pub accel: Accel,
    /// Why KVM was not used, when `auto` fell back to TCG.
    pub warning: Option<String>,
}

/// Why the requested accelerator cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccelError {
    /// `kvm` was asked for on a host where KVM does not run stock guests.
    #[error("accel is `kvm` but {why}; use `accel: \"tcg\"` or `\"auto\"`")]
    NoKvm {
        /// Why KVM does not work here.
        #[source]
        why: KvmProblem,
    },
    /// Neither `auto`, `kvm` nor `tcg`.
    #[error("unknown accel `{0}`; use auto, kvm or tcg")]
    Unknown(String),
}

/// Decides the accelerator for `requested` (`auto`, `kvm`, `tcg`).
pub fn decide(requested: &str, facts: &KvmFacts) -> Result<Decision, AccelError> {
    match requested {
        "tcg" => Ok(Decision {
            accel: Accel::Tcg,
            warning: None,
        }),
        "kvm" => match facts.why_not_stock_guests() {
            None => Ok(Decision {
                accel: Accel::Kvm,
                warning: None,
            }),
            Some(why) => Err(AccelError::NoKvm { why }),
        },
        "auto" => Ok(match facts.why_not_stock_guests() {
            None => Decision {
                accel: Accel::Kvm,
                warning: None,
            },
            Some(why) => Decision {
                accel: Accel::Tcg,
                warning: Some(format!(
                    "{why}; falling back to TCG emulation (slow: about 1 minute per boot)"
                )),
            },
        }),
        other => Err(AccelError::Unknown(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(dev: bool, pvm: bool, flag: bool) -> KvmFacts {
        KvmFacts {
            present: dev,
            usable: if dev {
                Ok(())
            } else {
                Err(std::sync::Arc::new(std::io::Error::from_raw_os_error(
                    libc::ENOENT,
                )))
            },
            pvm,
            cpu_virt_flag: flag,
        }
    }

    #[test]
    fn auto_uses_kvm_only_when_it_really_works() {
        assert_eq!(
            decide("auto", &facts(true, false, true)).unwrap().accel,
            Accel::Kvm
        );
        for (f, needle) in [
            (facts(true, true, false), "KVM-PVM"),
            (facts(false, false, true), "not available"),
            (facts(true, false, false), "vmx/svm"),
        ] {
            let d = decide("auto", &f).unwrap();
            assert_eq!(d.accel, Accel::Tcg);
            assert!(d.warning.as_deref().unwrap().contains(needle), "{d:?}");
        }
    }

    #[test]
    fn explicit_kvm_on_a_pvm_host_is_an_error_naming_the_cause() {
        let e = decide("kvm", &facts(true, true, false)).unwrap_err();
        assert!(e.to_string().contains("KVM-PVM"), "{e}");
        let e = decide("kvm", &facts(false, false, true)).unwrap_err();
        assert!(
            matches!(
                &e,
                AccelError::NoKvm {
                    why: KvmProblem::Missing
                }
            ),
            "{e}"
        );
        assert_eq!(
            decide("kvm", &facts(true, false, true)).unwrap().accel,
            Accel::Kvm
        );
    }

    #[test]
    fn tcg_is_always_possible() {
        let d = decide("tcg", &facts(false, true, false)).unwrap();
        assert_eq!(
            d,
            Decision {
                accel: Accel::Tcg,
                warning: None
            }
        );
        assert!(matches!(
            decide("hvf", &facts(true, false, true)),
            Err(AccelError::Unknown(a)) if a == "hvf"
        ));
    }
}
