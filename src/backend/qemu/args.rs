//! QEMU command lines. [`attest_args`] are the devices attest itself talks to
//! (QMP, the virtconsole backdoor, the serial console); they are appended to
//! both a plain machine description ([`plain_args`]) and a NixOS start script
//! (whose `run-<name>-vm` passes `"$@"` on to QEMU, as the NixOS driver uses
//! it). [`start_script_env`] is the environment the NixOS driver gives such a
//! script, plus `QEMU_VDE_SOCKET_<vlan>` for its vlan NICs.

use std::path::{Path, PathBuf};

use super::accel::Accel;
use crate::net::plan::VlanInterface;

/// The sockets attest opens for one VM (all in its state dir).
#[derive(Debug, Clone)]
pub struct Sockets {
    /// QMP (QEMU listens).
    pub qmp: PathBuf,
    /// The first serial port, `ttyS0` (attest listens).
    pub serial: PathBuf,
}

impl Sockets {
    /// The socket paths in `dir`.
    pub fn in_dir(dir: &Path) -> Sockets {
        Sockets {
            qmp: dir.join("qmp.sock"),
            serial: dir.join("serial.sock"),
        }
    }
}

/// One NIC on a vlan's VDE switch.
#[derive(Debug, Clone)]
pub struct Nic {
    /// The interface in the network plan: vlan, guest name, netdev id, MAC.
    pub iface: VlanInterface,
    /// The switch's socket directory.
    pub socket: PathBuf,
}

/// The netdev of the placeholder NIC a plain VM gets before its vlan NICs:
/// it takes `eth0`, as the user-mode NIC does in NixOS test VMs, so the vlan
/// NICs are `eth1`, `eth2`, … by kernel order with no renaming race.
/// `restrict=on`: the guest cannot send anything through it.
pub const PLACEHOLDER_NETDEV: &str = "attest-eth0";

/// What a plain (non-NixOS) VM is made of.
#[derive(Debug, Clone)]
pub struct PlainSpec {
    /// Accelerator.
    pub accel: Accel,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// The VM's own qcow2 overlay over the shared disk image.
    pub disk: PathBuf,
    /// The full kernel command line.
    pub cmdline: String,
    /// vlan NICs.
    pub nics: Vec<Nic>,
    /// Extra arguments from the config, last.
    pub extra_args: Vec<String>,
}

/// The accelerator's flags.
pub fn accel_args(accel: Accel) -> Vec<String> {
    match accel {
        Accel::Kvm => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
        Accel::Tcg => vec!["-accel".into(), "tcg".into(), "-cpu".into(), "max".into()],
    }
}

fn nic_args(nics: &[Nic]) -> Vec<String> {
    let mut a = Vec::new();
    if !nics.is_empty() {
        a.extend([
            "-netdev".to_owned(),
            format!("user,id={PLACEHOLDER_NETDEV},restrict=on"),
            "-device".to_owned(),
            format!("virtio-net-pci,netdev={PLACEHOLDER_NETDEV}"),
        ]);
    }
    for nic in nics {
        a.push("-netdev".into());
        a.push(format!(
            "vde,id={},sock={}",
            nic.iface.netdev_id,
            nic.socket.display()
        ));
        a.push("-device".into());
        a.push(format!(
            "virtio-net-pci,netdev={},mac={}",
            nic.iface.netdev_id, nic.iface.mac
        ));
    }
    a
}

/// The whole command line (without the binary) of a plain VM.
pub fn plain_args(spec: &PlainSpec, sockets: &Sockets) -> Vec<String> {
    let mut a: Vec<String> = vec!["-machine".into(), "q35".into()];
    a.extend(accel_args(spec.accel));
    a.extend([
        "-m".to_owned(),
        spec.memory_mib.to_string(),
        "-smp".into(),
        spec.cpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        // A VGA device even without a display: screendump reads it.
        "-vga".into(),
        "std".into(),
        "-device".into(),
        "virtio-rng-pci".into(),
        "-kernel".into(),
        spec.kernel.display().to_string(),
    ]);
    if let Some(i) = &spec.initrd {
        a.push("-initrd".into());
        a.push(i.display().to_string());
    }
    a.push("-append".into());
    a.push(spec.cmdline.clone());
    a.push("-drive".into());
    a.push(format!(
        "file={},if=none,id=root,format=qcow2",
        spec.disk.display()
    ));
    a.push("-device".into());
    a.push("virtio-blk-pci,drive=root".into());
    a.extend(nic_args(&spec.nics));
    a.extend(attest_args(sockets));
    a.extend(spec.extra_args.iter().cloned());
    a
}

/// The descriptor QEMU inherits as its end of the virtconsole backdoor
/// (`/dev/hvc0` in the guest): a socket pair attest makes
/// ([`super::relay::ShellRelay::socket_for_qemu`]), not a path, so that
/// attest can size QEMU's send buffer.
pub const SHELL_FD: i32 = 3;

/// The descriptor QEMU inherits as its end of the agent's upload port
/// ([`crate::guest::upload_port::UploadPort`]).
pub const UPLOAD_FD: i32 = 4;

/// The devices attest talks to, for any VM.
pub fn attest_args(sockets: &Sockets) -> Vec<String> {
    vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sockets.qmp.display()),
        "-chardev".into(),
        format!("socket,id=shell,fd={SHELL_FD}"),
        "-device".into(),
        "virtio-serial-pci".into(),
        "-device".into(),
        "virtconsole,chardev=shell".into(),
        "-chardev".into(),
        format!("socket,id=attest-upload,fd={UPLOAD_FD}"),
        "-device".into(),
        format!(
            "virtserialport,chardev=attest-upload,name={}",
            crate::guest::upload_port::UploadPort::NAME
        ),
        "-chardev".into(),
        format!("socket,id=console,path={}", sockets.serial.display()),
        "-serial".into(),
        "chardev:console".into(),
    ]
}

/// The environment for a NixOS start script, as the NixOS driver sets it
/// (`TMPDIR`, `USE_TMPDIR=1`, `SHARED_DIR`), plus the vlan sockets
/// (`QEMU_VDE_SOCKET_<vlan>`, read by qemu-vm.nix) and `QEMU_OPTS` carrying
/// the accelerator choice and the config's extra arguments after any
/// `QEMU_OPTS` attest itself was given.
pub fn start_script_env(
    state_dir: &Path,
    shared_dir: &Path,
    nics: &[Nic],
    accel: Accel,
    extra_args: &[String],
    inherited_qemu_opts: Option<&str>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("TMPDIR".to_owned(), state_dir.display().to_string()),
        ("USE_TMPDIR".to_owned(), "1".to_owned()),
        ("SHARED_DIR".to_owned(), shared_dir.display().to_string()),
    ];
    for nic in nics {
        env.push((
            format!("QEMU_VDE_SOCKET_{}", nic.iface.vlan),
            nic.socket.display().to_string(),
        ));
    }
    let mut opts: Vec<String> = inherited_qemu_opts
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .into_iter()
        .collect();
    // qemu-vm.nix passes `-machine accel=kvm:tcg`; a later `-machine`
    // property wins, and mixing it with `-accel` is refused by QEMU.
    opts.push(format!("-machine accel={}", accel.name()));
    if accel == Accel::Tcg {
        opts.push("-cpu max".into());
    }
    opts.push("-display none".into());
    opts.extend(extra_args.iter().cloned());
    env.push(("QEMU_OPTS".to_owned(), opts.join(" ")));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(node: u8, vlans: &[u8], socket: &str) -> Vec<Nic> {
        crate::net::plan::interfaces(node, vlans)
            .into_iter()
            .map(|iface| Nic {
                iface,
                socket: socket.into(),
            })
            .collect()
    }

    #[test]
    fn plain_args_have_the_devices_attest_needs() {
        let s = Sockets::in_dir(Path::new("/s"));
        let spec = PlainSpec {
            accel: Accel::Tcg,
            memory_mib: 1024,
            cpus: 1,
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            disk: "/s/disk.qcow2".into(),
            cmdline: "root=/dev/vda".into(),
            nics: nic(2, &[3], "/n/vde3"),
            extra_args: vec!["-snapshot-extra".into()],
        };
        let a = plain_args(&spec, &s).join(" ");
        for want in [
            "-accel tcg -cpu max",
            "-nodefaults",
            "-vga std",
            "-kernel /k -initrd /i -append root=/dev/vda",
            "file=/s/disk.qcow2,if=none,id=root,format=qcow2",
            "-netdev user,id=attest-eth0,restrict=on -device virtio-net-pci,netdev=attest-eth0 \
             -netdev vde,id=vlan1,sock=/n/vde3",
            "virtio-net-pci,netdev=vlan1,mac=52:54:00:12:03:02",
            "-qmp unix:/s/qmp.sock,server=on,wait=off",
            "socket,id=shell,fd=3",
            "virtconsole,chardev=shell",
            "socket,id=attest-upload,fd=4",
            "virtserialport,chardev=attest-upload,name=org.attest.upload",
            "-serial chardev:console",
        ] {
            assert!(a.contains(want), "missing {want:?} in {a}");
        }
        assert!(a.ends_with("-snapshot-extra"));
    }

    #[test]
    fn start_script_env_matches_the_nixos_driver() {
        let nics = nic(1, &[2], "/n/vde2");
        let env = start_script_env(
            Path::new("/s/m"),
            Path::new("/s/shared-xchg"),
            &nics,
            Accel::Tcg,
            &["-m 2048".into()],
            Some("-vga none"),
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("TMPDIR").unwrap(), "/s/m");
        assert_eq!(get("USE_TMPDIR").unwrap(), "1");
        assert_eq!(get("SHARED_DIR").unwrap(), "/s/shared-xchg");
        assert_eq!(get("QEMU_VDE_SOCKET_2").unwrap(), "/n/vde2");
        assert_eq!(
            get("QEMU_OPTS").unwrap(),
            "-vga none -machine accel=tcg -cpu max -display none -m 2048"
        );
    }
}
