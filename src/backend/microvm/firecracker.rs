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

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::api::{ApiClient, ApiError};
use super::instance::{self, snapshot_files, Flavor, MicroVmInstance, VmmPaths};
use super::{
    option_error, require_version, vmm_version, KvmFacts, MicroVmSpec, Version, GUEST_CID,
};
use crate::backend::{Backend, BackendError, Instance, StartContext};

/// How to get firecracker, for error messages.
pub const HOW_TO_GET: &str = "run .ci/fetch-firecracker (installs firecracker v1.12.1 into /var/cache/attest/bin), set $ATTEST_FIRECRACKER, or set `binary` in the node's firecracker settings";

/// Starts firecracker microVMs.
pub struct FirecrackerBackend;

/// A virtio-pmem device.
#[derive(Debug, Clone, PartialEq)]
pub struct PmemDevice {
    /// Backing file.
    pub path: PathBuf,
    /// Read-only (the default: images such as the Nix store).
    pub read_only: bool,
    /// Boot from it (`root=/dev/pmem0`).
    pub root_device: bool,
}

/// The checked `options` of a firecracker node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FirecrackerOptions {
    /// `--enable-pci`.
    pub enable_pci: bool,
    /// The root disk's `io_engine`.
    pub io_engine: Option<String>,
    /// virtio-pmem devices.
    pub pmem_devices: Vec<PmemDevice>,
    /// `huge_pages` of the machine config.
    pub huge_pages: Option<String>,
    /// A read-only second drive shared by all nodes (the Nix store image).
    pub store_image: Option<PathBuf>,
}

const KNOWN: &str = "enable_pci, io_engine, pmem_devices, huge_pages, store_image, snapshots";

impl FirecrackerOptions {
    /// Checks `options` against the firecracker `version`.
    pub fn parse(
        options: &std::collections::BTreeMap<String, Value>,
        version: Version,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<FirecrackerOptions, BackendError> {
        let vmm = "firecracker";
        let mut o = FirecrackerOptions::default();
        for (key, value) in options {
            match key.as_str() {
                "enable_pci" => {
                    o.enable_pci = value
                        .as_bool()
                        .ok_or_else(|| option_error(vmm, key, "true or false", value))?;
                    if o.enable_pci {
                        require_version(vmm, key, Version(1, 13, 0), version)?;
                    }
                }
                "store_image" => {
                    let p = value
                        .as_str()
                        .ok_or_else(|| option_error(vmm, key, "a path", value))?;
                    o.store_image = Some(resolve(Path::new(p)));
                }
                "snapshots" => {
                    value
                        .as_bool()
                        .ok_or_else(|| option_error(vmm, key, "true or false", value))?;
                }
                "io_engine" => match value.as_str() {
                    Some(e @ ("Sync" | "Async")) => o.io_engine = Some(e.to_owned()),
                    _ => return Err(option_error(vmm, key, "\"Sync\" or \"Async\"", value)),
                },
                "huge_pages" => {
                    match value.as_str() {
                        Some(h @ ("None" | "2M")) => o.huge_pages = Some(h.to_owned()),
                        _ => return Err(option_error(vmm, key, "\"None\" or \"2M\"", value)),
                    }
                    require_version(vmm, key, Version(1, 7, 0), version)?;
                }
                "pmem_devices" => {
                    let list = value.as_array().ok_or_else(|| {
                        option_error(vmm, key, "a list of paths or {path, read_only}", value)
                    })?;
                    for item in list {
                        let dev = match item {
                            Value::String(p) => PmemDevice {
                                path: resolve(Path::new(p)),
                                read_only: true,
                                root_device: false,
                            },
                            Value::Object(m) => PmemDevice {
                                path: resolve(Path::new(
                                    m.get("path").and_then(Value::as_str).ok_or_else(|| {
                                        option_error(vmm, key, "an object with `path`", item)
                                    })?,
                                )),
                                read_only: m
                                    .get("read_only")
                                    .and_then(Value::as_bool)
                                    .unwrap_or(true),
                                root_device: m
                                    .get("root_device")
                                    .and_then(Value::as_bool)
                                    .unwrap_or(false),
                            },
                            _ => return Err(option_error(vmm, key, "a path or an object", item)),
                        };
                        o.pmem_devices.push(dev);
                    }
                    if !o.pmem_devices.is_empty() {
                        require_version(vmm, key, Version(1, 14, 0), version)?;
                    }
                }
                other => {
                    return Err(BackendError::Prerequisite(format!(
                        "unknown firecracker option `{other}`; known options: {KNOWN}"
                    )))
                }
            }
        }
        Ok(o)
    }
}

/// The firecracker side of a [`MicroVmInstance`].
pub struct Firecracker {
    spec: MicroVmSpec,
    options: FirecrackerOptions,
    version: Version,
    id: String,
}

#[async_trait]
impl Backend for FirecrackerBackend {
    fn kind(&self) -> &'static str {
        "firecracker"
    }

    async fn start(&self, ctx: &StartContext) -> Result<Box<dyn Instance>, BackendError> {
        Ok(Box::new(FirecrackerBackend::start_instance(ctx).await?))
    }
}

impl FirecrackerBackend {
    /// Starts the node and returns the concrete instance (tests use its
    /// extra methods).
    pub async fn start_instance(ctx: &StartContext) -> Result<MicroVmInstance, BackendError> {
        let mut spec = MicroVmSpec::resolve(ctx)?;
        if spec.config.image.is_some() && !spec.cmdline.contains("reboot=") {
            // A guest reboot (and Ctrl-Alt-Del) then ends firecracker through
            // the keyboard controller, firecracker's only way out.
            spec.cmdline.push_str(" reboot=k");
        }
        let binary = spec.find_binary("firecracker", "ATTEST_FIRECRACKER", HOW_TO_GET)?;
        let kvm = KvmFacts::probe();
        kvm.require("firecracker")?;
        let version = vmm_version(&binary).await?;
        let options =
            FirecrackerOptions::parse(&spec.config.options, version, |p| ctx.config.resolve(p))?;
        for p in options
            .pmem_devices
            .iter()
            .map(|p| &p.path)
            .chain(options.store_image.iter())
        {
            if !p.is_file() {
                return Err(BackendError::Prerequisite(format!(
                    "{} (from the firecracker options) does not exist",
                    p.display()
                )));
            }
        }
        let flavor = Firecracker {
            id: format!("attest-{}-{}", std::process::id(), spec.number),
            spec: spec.clone(),
            options,
            version,
        };
        instance::start(ctx, &spec, Box::new(flavor), binary, &kvm).await
    }
}

fn action(kind: &str) -> Value {
    json!({ "action_type": kind })
}

#[async_trait]
impl Flavor for Firecracker {
    fn name(&self) -> &'static str {
        "firecracker"
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
        if let Some(h) = &self.options.huge_pages {
            machine["huge_pages"] = json!(h);
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
            if let Some(e) = &self.options.io_engine {
                drive["io_engine"] = json!(e);
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

    fn opts(json: &str) -> std::collections::BTreeMap<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn options_are_checked_against_the_version() {
        let v12 = Version(1, 12, 1);
        let e = FirecrackerOptions::parse(&opts(r#"{"enable_pci": true}"#), v12, Path::to_owned)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "option `enable_pci` needs firecracker ≥ 1.13, found 1.12.1"
        );
        let e = FirecrackerOptions::parse(
            &opts(r#"{"pmem_devices": ["/nix/store.img"]}"#),
            v12,
            Path::to_owned,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs firecracker ≥ 1.14, found 1.12.1"), "{e}");
        let o = FirecrackerOptions::parse(
            &opts(
                r#"{"enable_pci": true, "io_engine": "Async", "huge_pages": "2M",
                      "pmem_devices": ["s.img", {"path": "/r.img", "read_only": false}]}"#,
            ),
            Version(1, 14, 0),
            |p| Path::new("/base").join(p),
        )
        .unwrap();
        assert!(o.enable_pci);
        assert_eq!(o.io_engine.as_deref(), Some("Async"));
        assert_eq!(o.pmem_devices[0].path, Path::new("/base/s.img"));
        assert!(o.pmem_devices[0].read_only);
        assert!(!o.pmem_devices[1].read_only);
        assert_eq!(o.huge_pages.as_deref(), Some("2M"));
    }

    #[test]
    fn unknown_and_malformed_options_are_named() {
        let v = Version(1, 12, 1);
        let o = FirecrackerOptions::parse(
            &opts(r#"{"enable_pci": false, "snapshots": true, "store_image": "s.erofs"}"#),
            v,
            |p| Path::new("/b").join(p),
        )
        .unwrap();
        assert_eq!(o.store_image.as_deref(), Some(Path::new("/b/s.erofs")));
        let e = FirecrackerOptions::parse(&opts(r#"{"balloon": 1}"#), v, Path::to_owned)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown firecracker option `balloon`"), "{e}");
        let e = FirecrackerOptions::parse(&opts(r#"{"io_engine": "Fast"}"#), v, Path::to_owned)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected \"Sync\" or \"Async\""), "{e}");
    }
}
