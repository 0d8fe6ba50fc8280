//! The firecracker backend: [`FirecrackerBackend`] starts one `firecracker`
//! process per node (`--api-sock`, own process group, inside the switch
//! namespace when the node has vlans) and configures it over the REST API:
//! `machine-config`, `boot-source`, `drives/rootfs` (a private copy of the
//! disk), `pmem/*`, `network-interfaces/eth<i>` (one TAP per vlan), `vsock`
//! (hybrid vsock on a unix socket), then `actions: InstanceStart`.
//!
//! Knobs (`options` in the node's settings), each checked against the
//! version `firecracker --version` reports:
//!
//! | option | value | needs |
//! |---|---|---|
//! | `enable_pci` | bool: virtio-pci with MSI-X instead of MMIO (`--enable-pci`) | ≥ 1.13 |
//! | `io_engine` | `"Sync"` or `"Async"` (io_uring) for the root disk | ≥ 1.0 |
//! | `pmem_devices` | list of paths or `{path, read_only, root_device}`: virtio-pmem | ≥ 1.14 |
//! | `huge_pages` | `"None"` or `"2M"`: guest memory on 2 MiB huge pages | ≥ 1.7 |
//! | `store_image` | path: a read-only second drive (the Nix side's shared erofs store) | — |
//! | `snapshots` | bool: accepted for the Nix side; full snapshots need nothing enabled | — |
//!
//! Snapshots (`snapshot_create(dir)`): pause, `PUT /snapshot/create`
//! (`Full`: `vm.state` + `vm.mem`), copy the disk to `dir/disk.img`, write
//! `attest-snapshot.json`, resume — the VM keeps running.
//! `snapshot_restore(dir)`: kill the VMM, put `disk.img` back in place of the
//! VM's disk, start a fresh VMM and `PUT /snapshot/load` with
//! `resume_vm: true`. The state file records host paths (the VM's disk copy,
//! the vsock socket, TAP names), so a snapshot is restorable by the same
//! machine in the same attest run, with the same firecracker version and
//! kernel; attest checks the machine name and the version.

use std::path::Path;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::api::{ApiClient, ApiError};
use super::instance::{snapshot_files, Flavor, VmmPaths};
use super::{
    require_version, resolve_option_files, MicroVmBackend, MicroVmSpec, Version, Vmm, GUEST_CID,
};
use crate::backend::{BackendError, StartContext};
use crate::config::{BackendKind, FirecrackerOptions};

/// How to get firecracker, for error messages.
pub const HOW_TO_GET: &str = "run .ci/fetch-firecracker (installs firecracker v1.12.1 into /var/cache/attest/bin), set $ATTEST_FIRECRACKER, or set `binary` in the node's firecracker settings";

/// Starts firecracker microVMs.
pub type FirecrackerBackend = MicroVmBackend<Firecracker>;

/// Checks the options against the firecracker `version`.
fn check_version(o: &FirecrackerOptions, version: Version) -> Result<(), BackendError> {
    let vmm = "firecracker";
    if o.enable_pci {
        require_version(vmm, "enable_pci", Version(1, 13, 0), version)?;
    }
    if o.huge_pages.is_some() {
        require_version(vmm, "huge_pages", Version(1, 7, 0), version)?;
    }
    if !o.pmem_devices.is_empty() {
        require_version(vmm, "pmem_devices", Version(1, 14, 0), version)?;
    }
    Ok(())
}

/// The firecracker side of a [`MicroVmInstance`](super::instance::MicroVmInstance).
pub struct Firecracker {
    spec: MicroVmSpec,
    /// With paths resolved against the config's directory.
    options: FirecrackerOptions,
    version: Version,
    id: String,
}

impl Vmm for Firecracker {
    type Options = FirecrackerOptions;
    const KIND: BackendKind = BackendKind::Firecracker;
    const ENV_VAR: &'static str = "ATTEST_FIRECRACKER";
    const HOW_TO_GET: &'static str = HOW_TO_GET;

    fn prepare(
        mut spec: MicroVmSpec,
        options: &FirecrackerOptions,
        version: Version,
        ctx: &StartContext,
    ) -> Result<(MicroVmSpec, Box<dyn Flavor>), BackendError> {
        if spec.from_image && !spec.cmdline.contains("reboot=") {
            // A guest reboot (and Ctrl-Alt-Del) then ends firecracker through
            // the keyboard controller, firecracker's only way out.
            spec.cmdline.push_str(" reboot=k");
        }
        check_version(options, version)?;
        let mut options = options.clone();
        resolve_option_files(
            Self::KIND,
            ctx,
            &mut options.store_image,
            &mut options.pmem_devices,
        )?;
        let flavor = Firecracker {
            id: format!("attest-{}-{}", std::process::id(), spec.number),
            spec: spec.clone(),
            options,
            version,
        };
        Ok((spec, Box::new(flavor)))
    }
}

fn action(kind: &str) -> Value {
    json!({ "action_type": kind })
}

#[async_trait]
impl Flavor for Firecracker {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn version(&self) -> Version {
        self.version
    }

    fn args(&self, paths: &VmmPaths, _boot: bool) -> Vec<String> {
        // The serial console is firecracker's stdout; its own log goes to a
        // file so the console stays the guest's.
        let mut a = vec![
            "--api-sock".to_owned(),
            paths.api_socket.display().to_string(),
            "--id".to_owned(),
            self.id.clone(),
            "--log-path".to_owned(),
            paths.log.display().to_string(),
            "--level".to_owned(),
            "Info".to_owned(),
        ];
        if self.options.enable_pci {
            a.push("--enable-pci".to_owned());
        }
        a
    }

    fn api_probe(&self) -> &'static str {
        "/"
    }

    async fn configure_and_boot(&self, api: &ApiClient, paths: &VmmPaths) -> Result<(), ApiError> {
        let s = &self.spec;
        let mut machine = json!({
            "vcpu_count": s.cpus,
            "mem_size_mib": s.memory_mib,
            "smt": false,
        });
        if let Some(h) = self.options.huge_pages {
            machine["huge_pages"] = json!(h.as_str());
        }
        api.put("/machine-config", Some(&machine)).await?;
        let mut boot = json!({
            "kernel_image_path": s.kernel,
            "boot_args": s.cmdline,
        });
        if let Some(i) = &s.initrd {
            boot["initrd_path"] = json!(i);
        }
        api.put("/boot-source", Some(&boot)).await?;
        if let Some(disk) = &paths.disk {
            let mut drive = json!({
                "drive_id": "rootfs",
                "path_on_host": disk,
                "is_root_device": true,
                "is_read_only": false,
            });
            if let Some(e) = self.options.io_engine {
                drive["io_engine"] = json!(e.as_str());
            }
            api.put("/drives/rootfs", Some(&drive)).await?;
        }
        if let Some(store) = &self.options.store_image {
            api.put(
                "/drives/store",
                Some(&json!({
                    "drive_id": "store",
                    "path_on_host": store,
                    "is_root_device": false,
                    "is_read_only": true,
                })),
            )
            .await?;
        }
        for (i, p) in self.options.pmem_devices.iter().enumerate() {
            let id = format!("pmem{i}");
            api.put(
                &format!("/pmem/{id}"),
                Some(&json!({
                    "id": id,
                    "path_on_host": p.path,
                    "root_device": p.root_device,
                    "read_only": p.read_only,
                })),
            )
            .await?;
        }
        for (i, (tap, _vlan, mac)) in paths.taps.iter().enumerate() {
            let id = format!("eth{i}");
            api.put(
                &format!("/network-interfaces/{id}"),
                Some(&json!({ "iface_id": id, "host_dev_name": tap, "guest_mac": mac })),
            )
            .await?;
        }
        api.put(
            "/vsock",
            Some(&json!({ "guest_cid": GUEST_CID, "uds_path": paths.vsock })),
        )
        .await?;
        api.put("/actions", Some(&action("InstanceStart"))).await?;
        Ok(())
    }

    async fn power_button(&self, api: &ApiClient) -> Result<(), ApiError> {
        // firecracker has no ACPI power button; Ctrl-Alt-Del makes a Linux
        // guest reboot, and a guest reboot ends the firecracker process.
        api.put("/actions", Some(&action("SendCtrlAltDel")))
            .await
            .map(|_| ())
    }

    async fn pause(&self, api: &ApiClient) -> Result<(), ApiError> {
        api.patch("/vm", &json!({ "state": "Paused" }))
            .await
            .map(|_| ())
    }

    async fn resume(&self, api: &ApiClient) -> Result<(), ApiError> {
        api.patch("/vm", &json!({ "state": "Resumed" }))
            .await
            .map(|_| ())
    }

    async fn snapshot(&self, api: &ApiClient, dir: &Path) -> Result<(), ApiError> {
        api.put(
            "/snapshot/create",
            Some(&json!({
                "snapshot_type": "Full",
                "snapshot_path": dir.join(snapshot_files::STATE),
                "mem_file_path": dir.join(snapshot_files::MEMORY),
            })),
        )
        .await
        .map(|_| ())
    }

    async fn restore(&self, api: &ApiClient, dir: &Path) -> Result<(), ApiError> {
        api.put(
            "/snapshot/load",
            Some(&json!({
                "snapshot_path": dir.join(snapshot_files::STATE),
                "mem_backend": {
                    "backend_type": "File",
                    "backend_path": dir.join(snapshot_files::MEMORY),
                },
                "resume_vm": true,
            })),
        )
        .await
        .map(|_| ())
    }

    async fn state(&self, api: &ApiClient) -> Result<String, ApiError> {
        let body = api.get("/").await?;
        Ok(serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("state").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(json: &str) -> FirecrackerOptions {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn options_are_checked_against_the_version() {
        let v12 = Version(1, 12, 1);
        let e = check_version(&opts(r#"{"enable_pci": true}"#), v12)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "option `enable_pci` needs firecracker ≥ 1.13, found 1.12.1"
        );
        let e = check_version(&opts(r#"{"pmem_devices": ["/nix/store.img"]}"#), v12)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs firecracker ≥ 1.14, found 1.12.1"), "{e}");
        let e = check_version(&opts(r#"{"huge_pages": "2M"}"#), Version(1, 6, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs firecracker ≥ 1.7, found 1.6.0"), "{e}");
        let all = opts(
            r#"{"enable_pci": true, "io_engine": "Async", "huge_pages": "2M",
                  "pmem_devices": ["s.img", {"path": "/r.img", "read_only": false}]}"#,
        );
        assert!(check_version(&all, Version(1, 14, 0)).is_ok());
        assert!(check_version(&opts(r#"{"enable_pci": false, "snapshots": true}"#), v12).is_ok());
    }
}
