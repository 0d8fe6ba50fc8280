//! The microVM backends' settings: [`MicroVmConfig`] with the options of
//! each VMM ([`FirecrackerOptions`], [`CloudHypervisorOptions`]). The options
//! are typed and reject unknown keys, so `attest check` reports a typo with
//! the file, line and column; what depends on the VMM's version is checked
//! when the node starts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// firecracker / cloud-hypervisor settings; `O` are the VMM's own options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    bound(deserialize = "O: Deserialize<'de> + Default")
)]
pub struct MicroVmConfig<O> {
    /// A Debian test image manifest.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// Uncompressed (PVH) ELF kernel.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Initrd.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Root disk (raw), used copy-on-write.
    #[serde(default)]
    pub disk: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// vCPUs.
    #[serde(default)]
    pub cpus: Option<u32>,
    /// The VMM binary.
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// The VMM's own knobs.
    #[serde(default)]
    pub options: O,
}

impl<O> MicroVmConfig<O> {
    /// The files the settings name, by field.
    pub fn files(&self) -> Vec<(&'static str, &Option<PathBuf>)> {
        vec![
            ("image", &self.image),
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("disk", &self.disk),
        ]
    }
}

/// firecracker's knobs (see `backend::microvm::firecracker` for the
/// version each needs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirecrackerOptions {
    /// virtio-pci with MSI-X instead of MMIO (`--enable-pci`).
    #[serde(default)]
    pub enable_pci: bool,
    /// The root disk's I/O engine.
    #[serde(default)]
    pub io_engine: Option<IoEngine>,
    /// virtio-pmem devices.
    #[serde(default)]
    pub pmem_devices: Vec<PmemDevice>,
    /// Guest memory on huge pages.
    #[serde(default)]
    pub huge_pages: Option<HugePages>,
    /// A read-only second drive shared by all nodes (the Nix store image).
    #[serde(default)]
    pub store_image: Option<PathBuf>,
    /// Accepted for the Nix side: full snapshots need nothing enabled.
    #[serde(default)]
    pub snapshots: bool,
}

/// cloud-hypervisor's knobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudHypervisorOptions {
    /// Guest memory on huge pages (`--memory …,hugepages=on`).
    #[serde(default)]
    pub hugepages: bool,
    /// virtio-pmem devices (`root_device` is firecracker's only).
    #[serde(default)]
    pub pmem_devices: Vec<PmemDevice>,
    /// Accepted as `true` only: cloud-hypervisor always uses virtio-pci.
    #[serde(default)]
    pub enable_pci: Option<bool>,
    /// A read-only second disk (the Nix side's shared erofs store).
    #[serde(default)]
    pub store_image: Option<PathBuf>,
    /// Accepted for the Nix side: snapshots need nothing enabled.
    #[serde(default)]
    pub snapshots: bool,
}

/// firecracker's `io_engine` for the root disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking I/O.
    Sync,
    /// io_uring.
    Async,
}

impl IoEngine {
    /// The value firecracker's API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            IoEngine::Sync => "Sync",
            IoEngine::Async => "Async",
        }
    }
}

/// firecracker's `huge_pages` of the machine config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary pages.
    None,
    /// 2 MiB pages.
    #[serde(rename = "2M")]
    TwoMiB,
}

impl HugePages {
    /// The value firecracker's API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            HugePages::None => "None",
            HugePages::TwoMiB => "2M",
        }
    }
}

/// A virtio-pmem device: a path (read-only) or `{path, read_only, root_device}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PmemDevice {
    /// Backing file (relative to the config file).
    pub path: PathBuf,
    /// Read-only (the default: images such as the Nix store).
    pub read_only: bool,
    /// Boot from it (`root=/dev/pmem0`; firecracker only).
    pub root_device: bool,
}

/// The object form of [`PmemDevice`], with its defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PmemObject {
    path: PathBuf,
    #[serde(default = "yes")]
    read_only: bool,
    #[serde(default)]
    root_device: bool,
}

fn yes() -> bool {
    true
}

impl<'de> Deserialize<'de> for PmemDevice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PmemDevice, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PmemDevice;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a path or an object {path, read_only, root_device}")
            }

            fn visit_str<E: serde::de::Error>(self, p: &str) -> Result<PmemDevice, E> {
                Ok(PmemDevice {
                    path: PathBuf::from(p),
                    read_only: true,
                    root_device: false,
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PmemDevice, A::Error> {
                let o = PmemObject::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(PmemDevice {
                    path: o.path,
                    read_only: o.read_only,
                    root_device: o.root_device,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_typed_and_closed() {
        let o: FirecrackerOptions = serde_json::from_str(
            r#"{"enable_pci": true, "io_engine": "Async", "huge_pages": "2M",
                "pmem_devices": ["a.img", {"path": "b.img", "read_only": false, "root_device": true}]}"#,
        )
        .unwrap();
        assert!(o.enable_pci);
        assert_eq!(o.io_engine, Some(IoEngine::Async));
        assert_eq!(o.huge_pages, Some(HugePages::TwoMiB));
        assert_eq!(
            o.pmem_devices,
            [
                PmemDevice {
                    path: "a.img".into(),
                    read_only: true,
                    root_device: false
                },
                PmemDevice {
                    path: "b.img".into(),
                    read_only: false,
                    root_device: true
                }
            ]
        );
        let e = serde_json::from_str::<FirecrackerOptions>(r#"{"balloon": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `balloon`"), "{e}");
        let e = serde_json::from_str::<FirecrackerOptions>(r#"{"io_engine": "Fast"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `Fast`"), "{e}");
        let e =
            serde_json::from_str::<CloudHypervisorOptions>(r#"{"pmem_devices": [{"pth": "x"}]}"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("unknown field `pth`"), "{e}");
        let e = serde_json::from_str::<CloudHypervisorOptions>(r#"{"hugepages": "yes"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a boolean"), "{e}");
    }
}
