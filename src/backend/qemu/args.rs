//! QEMU command lines. [`attest_args`] are the devices attest itself talks to
//! (QMP, the virtconsole backdoor, the serial console); they are appended to
//! both a plain machine description ([`plain_args`]) and a NixOS start script
//! (whose `run-<name>-vm` passes `"$@"` on to QEMU, as the NixOS driver uses
//! it). [`start_script_env`] is the environment the NixOS driver gives such a
//! script, plus `QEMU_VDE_SOCKET_<vlan>` for its vlan NICs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::accel::Accel;

/// The sockets attest opens for one VM (all in its state dir).
#[derive(Debug, Clone)]
pub struct Sockets {
    /// QMP (QEMU listens).
    pub qmp: PathBuf,
    /// The virtconsole backdoor, `/dev/hvc0` in the guest (attest listens).
    pub shell: PathBuf,
    /// The first serial port, `ttyS0` (attest listens).
    pub serial: PathBuf,
}

impl Sockets {
    /// The socket paths in `dir`.
    pub fn in_dir(dir: &Path) -> Sockets {
        Sockets {
            qmp: dir.join("qmp.sock"),
            shell: dir.join("shell.sock"),
            serial: dir.join("serial.sock"),
        }
    }
}

/// One NIC on a vlan's VDE switch.
#[derive(Debug, Clone)]
pub struct Nic {
    /// The vlan.
    pub vlan: u8,
    /// The switch's socket directory.
    pub socket: PathBuf,
    /// The MAC address ([`mac`]).
    pub mac: String,
}

impl Nic {
    /// The netdev id (`vlan<N>`, as NixOS names it); `set_link` takes it.
    pub fn netdev_id(&self) -> String {
        netdev_id(self.vlan)
    }
}

/// The netdev id of a vlan (`vlan1`), as in NixOS' qemu-vm.nix.
pub fn netdev_id(vlan: u8) -> String {
    format!("vlan{vlan}")
}

/// The MAC NixOS gives node `node` on `vlan`: `52:54:00:12:<vlan>:<node>`.
pub fn mac(vlan: u8, node: u8) -> String {
    format!("52:54:00:12:{vlan:02x}:{node:02x}")
}

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
    for nic in nics {
        a.push("-netdev".into());
        a.push(format!(
            "vde,id={},sock={}",
            nic.netdev_id(),
            nic.socket.display()
        ));
        a.push("-device".into());
        a.push(format!(
            "virtio-net-pci,netdev={},mac={}",
            nic.netdev_id(),
            nic.mac
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

/// The devices attest talks to, for any VM.
pub fn attest_args(sockets: &Sockets) -> Vec<String> {
    vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sockets.qmp.display()),
        "-chardev".into(),
        format!("socket,id=shell,path={}", sockets.shell.display()),
        "-device".into(),
        "virtio-serial-pci".into(),
        "-device".into(),
        "virtconsole,chardev=shell".into(),
        "-chardev".into(),
        format!("socket,id=console,path={}", sockets.serial.display()),
        "-serial".into(),
        "chardev:console".into(),
    ]
}

/// The kernel command line of a plain VM: the image's, then one `ip=` per
/// vlan NIC (`eth0`, `eth1`, … in vlan order), the hostname, and the hosts
/// entries the Debian image writes to `/etc/hosts`.
pub fn kernel_cmdline(
    base: &str,
    addresses: &[Ipv4Addr],
    hostname: &str,
    hosts: &[(Ipv4Addr, String)],
) -> String {
    let mut s = base.trim().to_owned();
    for (i, ip) in addresses.iter().enumerate() {
        s.push_str(&format!(" ip={ip}:::255.255.255.0::eth{i}:off"));
    }
    s.push_str(&format!(" systemd.hostname={hostname}"));
    if !hosts.is_empty() {
        let list: Vec<String> = hosts.iter().map(|(ip, n)| format!("{ip}:{n}")).collect();
        s.push_str(&format!(" attest.hosts={}", list.join(",")));
    }
    s
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
            format!("QEMU_VDE_SOCKET_{}", nic.vlan),
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

    #[test]
    fn macs_follow_nixos() {
        assert_eq!(mac(1, 2), "52:54:00:12:01:02");
        assert_eq!(mac(10, 255), "52:54:00:12:0a:ff");
    }

    #[test]
    fn cmdline_carries_addresses_hostname_and_hosts() {
        let c = kernel_cmdline(
            "root=/dev/vda rw ",
            &[
                "192.168.1.2".parse().unwrap(),
                "192.168.2.2".parse().unwrap(),
            ],
            "server",
            &[
                ("192.168.1.1".parse().unwrap(), "client".into()),
                ("192.168.1.2".parse().unwrap(), "server".into()),
            ],
        );
        assert_eq!(
            c,
            "root=/dev/vda rw ip=192.168.1.2:::255.255.255.0::eth0:off \
             ip=192.168.2.2:::255.255.255.0::eth1:off systemd.hostname=server \
             attest.hosts=192.168.1.1:client,192.168.1.2:server"
        );
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
            nics: vec![Nic {
                vlan: 1,
                socket: "/n/vde1".into(),
                mac: mac(1, 2),
            }],
            extra_args: vec!["-snapshot-extra".into()],
        };
        let a = plain_args(&spec, &s).join(" ");
        for want in [
            "-accel tcg -cpu max",
            "-nodefaults",
            "-vga std",
            "-kernel /k -initrd /i -append root=/dev/vda",
            "file=/s/disk.qcow2,if=none,id=root,format=qcow2",
            "-netdev vde,id=vlan1,sock=/n/vde1",
            "virtio-net-pci,netdev=vlan1,mac=52:54:00:12:01:02",
            "-qmp unix:/s/qmp.sock,server=on,wait=off",
            "socket,id=shell,path=/s/shell.sock",
            "virtconsole,chardev=shell",
            "-serial chardev:console",
        ] {
            assert!(a.contains(want), "missing {want:?} in {a}");
        }
        assert!(a.ends_with("-snapshot-extra"));
    }

    #[test]
    fn start_script_env_matches_the_nixos_driver() {
        let nics = vec![Nic {
            vlan: 2,
            socket: "/n/vde2".into(),
            mac: mac(2, 1),
        }];
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
