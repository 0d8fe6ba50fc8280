//! The test config: the JSON contract between the Nix side (`nix/`) and the
//! driver. [`TestConfig::load`] parses and validates it; every error names the
//! file and, where serde knows it, the line and column.
//!
//! Version 1 shape (paths are relative to the config file's directory):
//!
//! ```json
//! {
//!   "version": 1,
//!   "name": "nginx",
//!   "script": "test.rhai",
//!   "global_timeout": 600,
//!   "nodes": {
//!     "server": { "vlans": [1], "backend": { "nspawn": { "image": "…/manifest.json" } } },
//!     "client": { "vlans": [1], "backend": { "nspawn": { "image": "…/manifest.json" } } }
//!   }
//! }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod microvm;
pub use microvm::{
    CloudHypervisorOptions, FirecrackerOptions, HugePages, IoEngine, MicroVmConfig, PmemDevice,
};

/// The only config version this driver reads.
pub const CONFIG_VERSION: u32 = 1;

/// Why a test config or an image manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. The OS reason is part of the message:
    /// callers pass this error on as text.
    #[error("{path}: cannot read file: {}", crate::errors::os_reason(reason))]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        reason: std::io::Error,
    },
    /// The JSON is malformed or does not match the schema.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde said.
        message: String,
    },
    /// The JSON is well-formed but not a valid test.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

/// A whole test: nodes, script, limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestConfig {
    /// Schema version; must be [`CONFIG_VERSION`].
    pub version: u32,
    /// The test's name (JUnit suite name, log header).
    pub name: String,
    /// The Rhai test script, relative to the config file.
    pub script: PathBuf,
    /// Seconds the whole test may take before it is torn down and failed.
    #[serde(default = "default_global_timeout")]
    pub global_timeout: f64,
    /// Give single-node tests a network too (multi-node tests always get one).
    #[serde(default)]
    pub enable_network: bool,
    /// The machines, by name.
    pub nodes: BTreeMap<String, NodeConfig>,
    /// The directory relative paths are resolved against (the config's own).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Where the config was read from.
    #[serde(skip)]
    pub path: PathBuf,
}

fn default_global_timeout() -> f64 {
    3600.0
}

/// One machine of the test.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The vlans this node has a NIC on. Defaults to `[1]` when the test has a
    /// network, none otherwise.
    #[serde(default)]
    pub vlans: Option<Vec<u8>>,
    /// Seconds to wait for the guest's backdoor after start.
    #[serde(default)]
    pub boot_timeout: Option<f64>,
    /// Which backend runs the node, with its settings.
    pub backend: BackendConfig,
}

/// The backend of a node and its settings; exactly one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendConfig {
    /// A systemd-nspawn container.
    Nspawn(NspawnConfig),
    /// A QEMU VM.
    Qemu(QemuConfig),
    /// A firecracker microVM.
    Firecracker(MicroVmConfig<FirecrackerOptions>),
    /// A cloud-hypervisor microVM.
    CloudHypervisor(MicroVmConfig<CloudHypervisorOptions>),
    /// A host that already runs, reached over ssh.
    Ssh(SshConfig),
}

impl BackendConfig {
    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendConfig::Nspawn(_) => BackendKind::Nspawn,
            BackendConfig::Qemu(_) => BackendKind::Qemu,
            BackendConfig::Firecracker(_) => BackendKind::Firecracker,
            BackendConfig::CloudHypervisor(_) => BackendKind::CloudHypervisor,
            BackendConfig::Ssh(_) => BackendKind::Ssh,
        }
    }
}

/// The backends, by the one name each has in config keys, `--backends`,
/// logs and errors (clap's kebab-case spelling of the variant).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    clap::ValueEnum,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// systemd-nspawn containers.
    Nspawn,
    /// QEMU VMs.
    Qemu,
    /// firecracker microVMs.
    Firecracker,
    /// cloud-hypervisor microVMs.
    CloudHypervisor,
    /// Existing hosts over ssh.
    Ssh,
    /// A bash process on this host: the test suite's stand-in for a guest
    /// (`backend::local`); no config selects it.
    #[value(skip)]
    Local,
}

impl BackendKind {
    /// Every backend, in the order `attest bench` lists them.
    pub const ALL: [BackendKind; 5] = [
        BackendKind::Nspawn,
        BackendKind::Qemu,
        BackendKind::Firecracker,
        BackendKind::CloudHypervisor,
        BackendKind::Ssh,
    ];

    /// The backend's name (`cloud-hypervisor`, …).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Nspawn => "nspawn",
            BackendKind::Qemu => "qemu",
            BackendKind::Firecracker => "firecracker",
            BackendKind::CloudHypervisor => "cloud-hypervisor",
            BackendKind::Ssh => "ssh",
            BackendKind::Local => "local",
        }
    }

    /// Whether the backend runs a virtual machine (slow under TCG, has an
    /// initrd and a kernel of its own).
    pub fn is_vm(self) -> bool {
        matches!(
            self,
            BackendKind::Qemu | BackendKind::Firecracker | BackendKind::CloudHypervisor
        )
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name attest does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend `{0}` (known: {known})", known = BackendKind::ALL.map(BackendKind::name).join(", "))]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for BackendKind {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<BackendKind, UnknownBackend> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownBackend(s.to_owned()))
    }
}

/// systemd-nspawn settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NspawnConfig {
    /// A Debian test image manifest (`images/debian/build`); its `rootfs` is used.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// A root directory to boot (a NixOS container tree, or any systemd tree).
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// Extra `systemd-nspawn` arguments.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

/// QEMU settings: either a NixOS start script or a plain machine description.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// A NixOS `run-<name>-vm` start script.
    #[serde(default)]
    pub start_script: Option<PathBuf>,
    /// A Debian test image manifest: kernel, initrd, disk and command line.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// Kernel (overrides the image's).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Initrd (overrides the image's).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Raw disk image, used copy-on-write (overrides the image's).
    #[serde(default)]
    pub disk: Option<PathBuf>,
    /// Kernel command line (overrides the image's).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// vCPUs.
    #[serde(default)]
    pub cpus: Option<u32>,
    /// `auto` (KVM when it really runs guests, else TCG), `kvm` or `tcg`.
    #[serde(default)]
    pub accel: Option<String>,
    /// Enable OCR (`get_screen_text`, `wait_for_text`).
    #[serde(default)]
    pub enable_ocr: bool,
    /// Extra QEMU arguments.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// The QEMU binary.
    #[serde(default)]
    pub qemu_binary: Option<PathBuf>,
}

/// How an unknown ssh host key is treated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KnownHostsPolicy {
    /// Only hosts already in known_hosts (the default).
    #[default]
    Strict,
    /// Accept and record keys of hosts not seen before; reject changed keys.
    AcceptNew,
}

/// An existing host reached over ssh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// Host name or address.
    pub host: String,
    /// Port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Remote user.
    #[serde(default)]
    pub user: Option<String>,
    /// Private key file.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// Host key policy.
    #[serde(default)]
    pub known_hosts: KnownHostsPolicy,
    /// A known_hosts file to use instead of the user's.
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
    /// `[user@]host[:port]` to jump through.
    #[serde(default)]
    pub jump_host: Option<String>,
    /// attest may power this host off (`shutdown`, `crash`). Off by default:
    /// attest never powers off a machine it did not start.
    #[serde(default)]
    pub owned: bool,
    /// Extra `ssh` options (`-o` values).
    #[serde(default)]
    pub options: Vec<String>,
}

/// A Debian test image, as written by `images/debian/build`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageManifest {
    /// Manifest version.
    pub version: u32,
    /// Image name.
    pub name: String,
    /// Hash of the build inputs.
    #[serde(default)]
    pub content_hash: String,
    /// Root tree for containers.
    pub rootfs: PathBuf,
    /// Raw ext4 disk for VMs.
    pub disk: PathBuf,
    /// bzImage.
    pub kernel: PathBuf,
    /// initrd.
    pub initrd: PathBuf,
    /// Uncompressed PVH ELF kernel, when it could be extracted.
    #[serde(default)]
    pub vmlinux: Option<PathBuf>,
    /// The private key root's authorized key belongs to.
    pub ssh_private_key: PathBuf,
    /// Its public half.
    pub ssh_public_key: PathBuf,
    /// The kernel command line the image needs.
    pub kernel_cmdline: String,
    /// Directory the manifest was read from; paths above are made absolute.
    #[serde(skip)]
    pub dir: PathBuf,
}

impl ImageManifest {
    /// Reads a manifest and makes its paths absolute.
    pub fn load(path: &Path) -> Result<ImageManifest, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_owned(),
            reason,
        })?;
        let mut m: ImageManifest = parse_json(path, &text)?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        for p in [
            &mut m.rootfs,
            &mut m.disk,
            &mut m.kernel,
            &mut m.initrd,
            &mut m.ssh_private_key,
            &mut m.ssh_public_key,
        ] {
            *p = dir.join(&*p);
        }
        if let Some(v) = m.vmlinux.as_mut() {
            *v = dir.join(&*v);
        }
        m.dir = dir;
        Ok(m)
    }
}

/// Parses `text`; an error names the field it is in (`nodes.server.backend`),
/// not only its line and column.
fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let (field, result) = match serde_path_to_error::deserialize(&mut *de) {
        Ok(v) => (String::new(), de.end().map(|()| v)),
        Err(e) => {
            // An unknown field's path ends in the field itself, which the
            // message names already: the path of the object that has it.
            let mut path = e.path().to_string();
            if e.inner().to_string().starts_with("unknown field") {
                path = path
                    .rsplit_once('.')
                    .map_or(String::new(), |(p, _)| p.to_owned());
            }
            (path, Err(e.into_inner()))
        }
    };
    result.map_err(|e| {
        let message = e.to_string();
        let message = message.split(" at line ").next().unwrap_or("");
        ConfigError::Parse {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: match field.as_str() {
                "" | "." => message.to_owned(),
                field => format!("in `{field}`: {message}"),
            },
        }
    })
}

/// Maps a node name to the script identifier it is bound to: as the NixOS
/// driver does ([`python_name`]), and a Rhai keyword (`default`, `fn`, …)
/// gets a trailing `_`.
pub fn script_name(node: &str) -> String {
    let name = python_name(node);
    // Rhai keywords and reserved words (`default`, `fn`, `let`, …) cannot
    // name a variable; Rhai's own parser is the authority on which they are.
    let is_keyword = rhai::Engine::new_raw()
        .compile(format!("let {name} = ();"))
        .is_err();
    if is_keyword {
        format!("{name}_")
    } else {
        name
    }
}

/// The identifier the NixOS driver binds a node to in a Python testScript:
/// a leading digit and every non-word character become `_`.
pub fn python_name(node: &str) -> String {
    node.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok = c.is_ascii_alphanumeric() || c == '_';
            if !ok || (i == 0 && c.is_ascii_digit()) {
                '_'
            } else {
                c
            }
        })
        .collect()
}

impl TestConfig {
    /// Reads, parses and validates a test config.
    pub fn load(path: &Path) -> Result<TestConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_owned(),
            reason,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<TestConfig, ConfigError> {
        // Check the version before the schema, so an old or new config gets a
        // version error rather than a confusing field error.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            match v.get("version").and_then(|v| v.as_u64()) {
                Some(n) if n == u64::from(CONFIG_VERSION) => {}
                Some(n) => {
                    return Err(ConfigError::Invalid {
                        path: path.to_owned(),
                        message: format!(
                            "config version {n} is not supported: this attest reads version {CONFIG_VERSION}; regenerate the config with a matching nix/make-test.nix"
                        ),
                    })
                }
                None => {
                    return Err(ConfigError::Invalid {
                        path: path.to_owned(),
                        message: format!("missing field `version`: add \"version\": {CONFIG_VERSION}"),
                    })
                }
            }
        }
        let mut config: TestConfig = parse_json(path, text)?;
        config.path = path.to_owned();
        config.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(self.invalid("`name` is empty: give the test a name"));
        }
        if !(self.global_timeout > 0.0 && self.global_timeout.is_finite()) {
            return Err(self.invalid(format!(
                "`global_timeout` is {}: it must be a positive number of seconds",
                self.global_timeout
            )));
        }
        if self.nodes.is_empty() {
            return Err(self.invalid("`nodes` is empty: a test needs at least one node"));
        }
        if self.nodes.len() > 254 {
            return Err(self.invalid("more than 254 nodes: addresses 192.168.<vlan>.<n> run out"));
        }
        let mut seen = BTreeMap::new();
        for (name, node) in &self.nodes {
            if name.is_empty() {
                return Err(self.invalid("a node has an empty name"));
            }
            let ident = script_name(name);
            if let Some(other) = seen.insert(ident.clone(), name.clone()) {
                return Err(self.invalid(format!(
                    "nodes `{other}` and `{name}` both map to the script name `{ident}`: rename one"
                )));
            }
            if let Some(vlans) = &node.vlans {
                if vlans.contains(&0) {
                    return Err(self.invalid(format!(
                        "node `{name}`: vlan 0 is not allowed; vlans are numbered 1..=255"
                    )));
                }
            }
            if let Some(t) = node.boot_timeout {
                if !(t > 0.0 && t.is_finite()) {
                    return Err(self.invalid(format!(
                        "node `{name}`: `boot_timeout` must be a positive number of seconds"
                    )));
                }
            }
            self.validate_backend(name, &node.backend)?;
        }
        let script = self.script_path();
        if !script.is_file() {
            return Err(self.invalid(format!(
                "script `{}` does not exist (resolved to {})",
                self.script.display(),
                script.display()
            )));
        }
        Ok(())
    }

    fn validate_backend(&self, name: &str, backend: &BackendConfig) -> Result<(), ConfigError> {
        let need_one = |what: &str, a: bool, b: bool| {
            if a == b {
                Err(self.invalid(format!(
                    "node `{name}` ({}): set exactly one of {what}",
                    backend.kind()
                )))
            } else {
                Ok(())
            }
        };
        match backend {
            BackendConfig::Nspawn(c) => {
                need_one("`image` or `rootfs`", c.image.is_some(), c.rootfs.is_some())?
            }
            BackendConfig::Qemu(c) => {
                let plain = c.image.is_some() || c.kernel.is_some() || c.disk.is_some();
                need_one(
                    "`start_script` or a machine description (`image`, or `kernel` + `disk`)",
                    c.start_script.is_some(),
                    plain,
                )?;
                if let Some(a) = &c.accel {
                    if !["auto", "kvm", "tcg"].contains(&a.as_str()) {
                        return Err(self.invalid(format!(
                            "node `{name}`: `accel` is `{a}`; use `auto`, `kvm` or `tcg`"
                        )));
                    }
                }
            }
            BackendConfig::Firecracker(c) => need_one(
                "`image` or `kernel` + `disk`",
                c.image.is_some(),
                c.kernel.is_some(),
            )?,
            BackendConfig::CloudHypervisor(c) => {
                need_one(
                    "`image` or `kernel` + `disk`",
                    c.image.is_some(),
                    c.kernel.is_some(),
                )?;
                if c.options.enable_pci == Some(false) {
                    return Err(self.invalid(format!(
                        "node `{name}` (cloud-hypervisor): option `enable_pci` can only be true: cloud-hypervisor always uses virtio-pci"
                    )));
                }
                if c.options.pmem_devices.iter().any(|d| d.root_device) {
                    return Err(self.invalid(format!(
                        "node `{name}` (cloud-hypervisor): `root_device` in `pmem_devices` is a firecracker option: boot cloud-hypervisor from `disk`"
                    )));
                }
            }
            BackendConfig::Ssh(c) => {
                if c.host.trim().is_empty() {
                    return Err(self.invalid(format!("node `{name}` (ssh): `host` is empty")));
                }
            }
        }
        Ok(())
    }

    /// Every file the nodes' settings name that does not exist, as
    /// `node `m` (nspawn): `image` /path: No such file or directory`. Binaries
    /// are looked up on PATH at start and are not listed; known_hosts files
    /// may be created by the run.
    pub fn missing_files(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for (name, node) in &self.nodes {
            let b = &node.backend;
            let fields: Vec<(&str, &Option<PathBuf>)> = match b {
                BackendConfig::Nspawn(c) => vec![("image", &c.image), ("rootfs", &c.rootfs)],
                BackendConfig::Qemu(c) => vec![
                    ("start_script", &c.start_script),
                    ("image", &c.image),
                    ("kernel", &c.kernel),
                    ("initrd", &c.initrd),
                    ("disk", &c.disk),
                ],
                BackendConfig::Firecracker(c) => c.files(),
                BackendConfig::CloudHypervisor(c) => c.files(),
                BackendConfig::Ssh(c) => vec![("identity_file", &c.identity_file)],
            };
            for (field, value) in fields {
                let Some(p) = value else { continue };
                let resolved = self.resolve(p);
                if let Err(e) = std::fs::metadata(&resolved) {
                    let hint = if field == "image" {
                        " (the Debian test image: build it with images/debian/build)"
                    } else {
                        ""
                    };
                    missing.push(format!(
                        "{}: node `{name}` ({}): `{field}` {}: {}{hint}",
                        self.path.display(),
                        b.kind(),
                        resolved.display(),
                        crate::errors::os_reason(&e)
                    ));
                }
            }
        }
        missing
    }

    /// The script file, resolved.
    pub fn script_path(&self) -> PathBuf {
        self.resolve(&self.script)
    }

    /// Resolves a path from the config against the config's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Whether the test's nodes are networked.
    pub fn networked(&self) -> bool {
        self.enable_network || self.nodes.len() > 1
    }

    /// The vlans of a node after defaults.
    pub fn node_vlans(&self, node: &str) -> Vec<u8> {
        match self.nodes.get(node).and_then(|n| n.vlans.clone()) {
            Some(v) => v,
            None if self.networked() => vec![1],
            None => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, config: &str) -> PathBuf {
        std::fs::write(dir.join("t.rhai"), "start_all();").unwrap();
        let p = dir.join("test.json");
        std::fs::write(&p, config).unwrap();
        p
    }

    #[test]
    fn parses_a_two_node_config_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"{"version":1,"name":"t","script":"t.rhai","nodes":{
              "server":{"backend":{"nspawn":{"rootfs":"/"}}},
              "client":{"backend":{"nspawn":{"rootfs":"/"}}}}}"#,
        );
        let c = TestConfig::load(&p).unwrap();
        assert_eq!(c.node_vlans("server"), vec![1]);
        assert_eq!(c.global_timeout, 3600.0);
    }

    #[test]
    fn single_node_has_no_network_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"{"version":1,"name":"t","script":"t.rhai","nodes":{"m":{"backend":{"nspawn":{"rootfs":"/"}}}}}"#,
        );
        assert!(TestConfig::load(&p).unwrap().node_vlans("m").is_empty());
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "{\"version\":1,\"name\":\"t\",\"script\":\"t.rhai\",\n \"nodes\":{\"m\":{\"backend\":{\"vbox\":{}}}}}",
        );
        let e = TestConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("test.json:2:"), "{e}");
        assert!(e.contains("unknown variant `vbox`"), "{e}");
    }

    #[test]
    fn rejects_other_versions_unknown_fields_and_missing_script() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"{"version":2,"name":"t","script":"t.rhai","nodes":{}}"#,
        );
        assert!(TestConfig::load(&p)
            .unwrap_err()
            .to_string()
            .contains("version 2 is not supported"));
        let p = write(
            dir.path(),
            r#"{"version":1,"name":"t","script":"t.rhai","nodes":{},"bogus":1}"#,
        );
        assert!(TestConfig::load(&p)
            .unwrap_err()
            .to_string()
            .contains("unknown field `bogus`"));
        let p = write(
            dir.path(),
            r#"{"version":1,"name":"t","script":"nope.rhai","nodes":{"m":{"backend":{"nspawn":{"rootfs":"/"}}}}}"#,
        );
        assert!(TestConfig::load(&p)
            .unwrap_err()
            .to_string()
            .contains("script `nope.rhai` does not exist"));
    }

    #[test]
    fn backend_kinds_have_one_name_everywhere() {
        use clap::ValueEnum;
        for kind in BackendKind::ALL {
            let name = kind.to_string();
            assert_eq!(name.parse::<BackendKind>(), Ok(kind));
            let clap_name = kind.to_possible_value().expect("listed");
            assert_eq!(clap_name.get_name(), name);
            assert_eq!(serde_json::to_value(kind).unwrap(), name.as_str());
        }
        assert_eq!(BackendKind::value_variants(), BackendKind::ALL);
        let e = "vbox".parse::<BackendKind>().unwrap_err();
        assert!(e.to_string().contains("unknown backend `vbox`"), "{e}");
        let c: BackendConfig =
            serde_json::from_str(r#"{"cloud-hypervisor": {"kernel": "k"}}"#).unwrap();
        assert_eq!(c.kind(), BackendKind::CloudHypervisor);
    }

    #[test]
    fn script_names_follow_the_nixos_driver() {
        assert_eq!(script_name("server"), "server");
        assert_eq!(script_name("web-1"), "web_1");
        assert_eq!(script_name("1st"), "_st");
        for keyword in ["default", "fn", "let", "this", "var"] {
            assert_eq!(script_name(keyword), format!("{keyword}_"));
        }
    }
}
