//! The cloud-hypervisor backend: [`CloudHypervisorBackend`] starts one
//! `cloud-hypervisor` process per node with the whole VM on its command line
//! (`--api-socket path=…`, `--kernel`, `--initramfs`, `--cmdline`, `--cpus
//! boot=N`, `--memory size=…M`, `--disk path=…` (a private copy), `--pmem`,
//! `--net tap=…,mac=…`, `--vsock cid=3,socket=…`, `--serial tty`, `--console
//! off`), so it boots at once; the REST API (`/api/v1/…`) does the rest:
//! `vm.pause`, `vm.resume`, `vm.snapshot {destination_url}`, `vm.restore
//! {source_url}` (into a fresh process started with only `--api-socket`),
//! `vm.power-button`, `vm.info`, `vmm.ping`. Shapes follow cloud-hypervisor's
//! `docs/api.md` and `docs/snapshot_restore.md`.
//!
//! The guest needs a PVH ELF kernel (`XEN_ELFNOTE_PHYS32_ENTRY`).
//!
//! Knobs (`options`): `hugepages` (bool: `--memory …,hugepages=on`),
//! `pmem_devices` (list of paths or `{path, read_only}`: `--pmem
//! file=…,discard_writes=on` for read-only ones), `enable_pci` (accepted as
//! `true` only: cloud-hypervisor always uses virtio-pci), `store_image` (a
//! read-only second disk: the Nix side's shared erofs store), `snapshots`
//! (accepted for the Nix side; nothing needs enabling).
//!
//! A snapshot directory holds cloud-hypervisor's `config.json`, `state.json`
//! and `memory-ranges`, plus `disk.img` and `attest-snapshot.json`; as on
//! firecracker it refers to the machine's own paths (disk copy, vsock socket,
//! TAP names), so the same machine of the same run restores it.

use std::path::Path;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::api::{ApiClient, ApiError};
use super::instance::{Flavor, VmmPaths};
use super::{resolve_option_files, MicroVmBackend, MicroVmSpec, Version, Vmm, GUEST_CID};
use crate::backend::{BackendError, StartContext};
use crate::config::{BackendKind, CloudHypervisorOptions};

/// How to get cloud-hypervisor, for error messages.
pub const HOW_TO_GET: &str = "no Debian or PyPI package ships it: download a static release from https://github.com/cloud-hypervisor/cloud-hypervisor/releases and set $ATTEST_CLOUD_HYPERVISOR or `binary`";

/// Starts cloud-hypervisor microVMs.
pub type CloudHypervisorBackend = MicroVmBackend<CloudHypervisor>;

/// The cloud-hypervisor side of a [`MicroVmInstance`](super::instance::MicroVmInstance).
pub struct CloudHypervisor {
    spec: MicroVmSpec,
    /// With paths resolved against the config's directory.
    options: CloudHypervisorOptions,
    version: Version,
}

impl Vmm for CloudHypervisor {
    type Options = CloudHypervisorOptions;
    const KIND: BackendKind = BackendKind::CloudHypervisor;
    const ENV_VAR: &'static str = "ATTEST_CLOUD_HYPERVISOR";
    const HOW_TO_GET: &'static str = HOW_TO_GET;

    fn prepare(
        spec: MicroVmSpec,
        options: &CloudHypervisorOptions,
        version: Version,
        ctx: &StartContext,
    ) -> Result<(MicroVmSpec, Box<dyn Flavor>), BackendError> {
        let mut options = options.clone();
        resolve_option_files(
            Self::KIND,
            ctx,
            &mut options.store_image,
            &mut options.pmem_devices,
        )?;
        let flavor = CloudHypervisor {
            spec: spec.clone(),
            options,
            version,
        };
        Ok((spec, Box::new(flavor)))
    }
}

/// The command-line arguments of a booting VM (without the binary).
pub fn boot_args(
    spec: &MicroVmSpec,
    options: &CloudHypervisorOptions,
    paths: &VmmPaths,
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--kernel".into(),
        spec.kernel.display().to_string(),
        "--cmdline".into(),
        spec.cmdline.clone(),
        "--cpus".into(),
        format!("boot={}", spec.cpus),
        "--memory".into(),
        format!(
            "size={}M{}",
            spec.memory_mib,
            if options.hugepages {
                ",hugepages=on"
            } else {
                ""
            }
        ),
        "--serial".into(),
        "tty".into(),
        "--console".into(),
        "off".into(),
        "--vsock".into(),
        format!("cid={GUEST_CID},socket={}", paths.vsock.display()),
    ];
    if let Some(i) = &spec.initrd {
        a.push("--initramfs".into());
        a.push(i.display().to_string());
    }
    // Several devices of a kind follow one flag (`--disk path=a path=b`), as
    // cloud-hypervisor's own docs write it.
    let mut disks = Vec::new();
    if let Some(d) = &paths.disk {
        disks.push(format!("path={}", d.display()));
    }
    if let Some(s) = &options.store_image {
        disks.push(format!("path={},readonly=on", s.display()));
    }
    let pmem = options.pmem_devices.iter().map(|d| {
        format!(
            "file={}{}",
            d.path.display(),
            if d.read_only {
                ",discard_writes=on"
            } else {
                ""
            }
        )
    });
    let nets = paths
        .taps
        .iter()
        .map(|(tap, _vlan, mac)| format!("tap={tap},mac={mac}"));
    for (flag, values) in [
        ("--disk", disks),
        ("--pmem", pmem.collect()),
        ("--net", nets.collect()),
    ] {
        if !values.is_empty() {
            a.push(flag.into());
            a.extend(values);
        }
    }
    a
}

#[async_trait]
impl Flavor for CloudHypervisor {
    fn kind(&self) -> BackendKind {
        BackendKind::CloudHypervisor
    }

    fn version(&self) -> Version {
        self.version
    }

    fn args(&self, paths: &VmmPaths, boot: bool) -> Vec<String> {
        let mut a = vec![
            "--api-socket".to_owned(),
            format!("path={}", paths.api_socket.display()),
            "--log-file".to_owned(),
            paths.log.display().to_string(),
        ];
        if boot {
            a.extend(boot_args(&self.spec, &self.options, paths));
        }
        a
    }

    fn api_probe(&self) -> &'static str {
        "/api/v1/vmm.ping"
    }

    async fn configure_and_boot(&self, api: &ApiClient, _paths: &VmmPaths) -> Result<(), ApiError> {
        // The command line created and booted the VM; a VM that failed to
        // start is reported here with cloud-hypervisor's words.
        api.get("/api/v1/vm.info").await.map(|_| ())
    }

    async fn power_button(&self, api: &ApiClient) -> Result<(), ApiError> {
        api.put("/api/v1/vm.power-button", None).await.map(|_| ())
    }

    async fn pause(&self, api: &ApiClient) -> Result<(), ApiError> {
        api.put("/api/v1/vm.pause", None).await.map(|_| ())
    }

    async fn resume(&self, api: &ApiClient) -> Result<(), ApiError> {
        api.put("/api/v1/vm.resume", None).await.map(|_| ())
    }

    async fn snapshot(&self, api: &ApiClient, dir: &Path) -> Result<(), ApiError> {
        api.put(
            "/api/v1/vm.snapshot",
            Some(&json!({ "destination_url": format!("file://{}", dir.display()) })),
        )
        .await
        .map(|_| ())
    }

    async fn restore(&self, api: &ApiClient, dir: &Path) -> Result<(), ApiError> {
        // A restored VM starts paused (docs/snapshot_restore.md).
        api.put(
            "/api/v1/vm.restore",
            Some(&json!({ "source_url": format!("file://{}", dir.display()) })),
        )
        .await?;
        api.put("/api/v1/vm.resume", None).await.map(|_| ())
    }

    async fn state(&self, api: &ApiClient) -> Result<String, ApiError> {
        let body = api.get("/api/v1/vm.info").await?;
        Ok(serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("state").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_follows_the_cli_docs() {
        let spec = MicroVmSpec {
            from_image: false,
            binary: None,
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            disk: Some("/img/disk.img".into()),
            cmdline: "console=ttyS0".into(),
            memory_mib: 512,
            cpus: 2,
            vlans: vec![1],
            number: 2,
        };
        let paths = VmmPaths {
            api_socket: "/s/api.sock".into(),
            vsock: "/s/vsock.sock".into(),
            log: "/s/ch.log".into(),
            disk: Some("/s/disk.img".into()),
            taps: vec![("tap2v1".into(), 1, "52:54:00:12:01:02".into())],
        };
        let options = CloudHypervisorOptions {
            hugepages: true,
            pmem_devices: vec![crate::config::PmemDevice {
                path: "/nix.img".into(),
                read_only: true,
                root_device: false,
            }],
            ..Default::default()
        };
        let a = boot_args(&spec, &options, &paths).join(" ");
        assert_eq!(
            a,
            "--kernel /k/vmlinux --cmdline console=ttyS0 --cpus boot=2 --memory size=512M,hugepages=on \
             --serial tty --console off --vsock cid=3,socket=/s/vsock.sock --initramfs /k/initrd \
             --disk path=/s/disk.img --pmem file=/nix.img,discard_writes=on \
             --net tap=tap2v1,mac=52:54:00:12:01:02"
        );
    }
}
