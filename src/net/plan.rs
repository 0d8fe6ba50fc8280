//! The network plan every backend follows, as NixOS tests have it (nixpkgs
//! nixos/lib/testing/network.nix and nixos/lib/qemu-common.nix): node `n`
//! (1.. in name order) has, on its `i`-th vlan `v` (0-based position in its
//! vlan list), the interface `eth<i+1>` (eth0 is QEMU's user NIC in NixOS
//! tests, so vlan interfaces start at eth1), the QEMU netdev id `vlan<i+1>`,
//! the MAC `52:54:00:12:<v>:<n>`, `192.168.<v>.<n>/24`,
//! `2001:db8:<v>::<n>/64` and a link-local IPv6 address. `/etc/hosts` names
//! every node at both addresses of its first vlan.
//!
//! `nix/lib/network.nix` is the same plan for NixOS guests; tests/nix_contract.rs
//! checks that both agree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::TestConfig;

/// One vlan interface of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanInterface {
    /// The vlan.
    pub vlan: u8,
    /// The guest's interface name (`eth1`, `eth2`, … in vlan-list order).
    pub name: String,
    /// The QEMU netdev id (`vlan1`, `vlan2`, … by position), which QMP
    /// `set_link` takes.
    pub netdev_id: String,
    /// The MAC address.
    pub mac: String,
    /// `192.168.<vlan>.<node>` (prefix length 24).
    pub ipv4: Ipv4Addr,
    /// `2001:db8:<vlan>::<node>` (prefix length 64).
    pub ipv6: Ipv6Addr,
}

/// Prefix length of the IPv4 addresses.
pub const IPV4_PREFIX: u8 = 24;
/// Prefix length of the IPv6 addresses.
pub const IPV6_PREFIX: u8 = 64;

/// The guest interface of the `index`-th vlan (0-based): `eth<index+1>`.
pub fn interface_name(index: usize) -> String {
    format!("eth{}", index + 1)
}

/// The QEMU netdev id of the `index`-th vlan NIC (0-based): `vlan<index+1>`,
/// as qemu-common.nix's `qemuNICFlags` numbers NICs by position.
pub fn netdev_id(index: usize) -> String {
    format!("vlan{}", index + 1)
}

/// The MAC NixOS gives node `node` on `vlan`: `52:54:00:12:<vlan>:<node>`.
pub fn mac(vlan: u8, node: u8) -> String {
    format!("52:54:00:12:{vlan:02x}:{node:02x}")
}

/// `192.168.<vlan>.<node>`.
pub fn ipv4(vlan: u8, node: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, vlan, node)
}

/// `2001:db8:<vlan>::<node>`, the numbers written in decimal digits as
/// network.nix writes them (vlan 10 is `2001:db8:10::…`, i.e. 0x10).
pub fn ipv6(vlan: u8, node: u8) -> Ipv6Addr {
    let group = |n: u8| u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex");
    Ipv6Addr::new(0x2001, 0xdb8, group(vlan), 0, 0, 0, 0, group(node))
}

/// The interfaces of node number `node` on `vlans`, in order.
pub fn interfaces(node: u8, vlans: &[u8]) -> Vec<VlanInterface> {
    vlans
        .iter()
        .enumerate()
        .map(|(i, &vlan)| VlanInterface {
            vlan,
            name: interface_name(i),
            netdev_id: netdev_id(i),
            mac: mac(vlan, node),
            ipv4: ipv4(vlan, node),
            ipv6: ipv6(vlan, node),
        })
        .collect()
}

/// The `/etc/hosts` entries of a node with these interfaces: IPv4 then IPv6
/// of its first vlan, as network.nix writes them.
pub fn host_entries(name: &str, interfaces: &[VlanInterface]) -> Vec<(IpAddr, String)> {
    interfaces
        .first()
        .map(|i| {
            vec![
                (IpAddr::V4(i.ipv4), name.to_owned()),
                (IpAddr::V6(i.ipv6), name.to_owned()),
            ]
        })
        .unwrap_or_default()
}

/// The node's number in `config` (1-based, in name order), as NixOS numbers
/// nodes.
pub fn node_number(config: &TestConfig, node: &str) -> Option<u8> {
    config
        .nodes
        .keys()
        .position(|n| n == node)
        .and_then(|i| u8::try_from(i + 1).ok())
}

/// The vlan interfaces of `node` in `config`, in vlan-list order.
pub fn node_interfaces(config: &TestConfig, node: &str) -> Vec<VlanInterface> {
    match node_number(config, node) {
        Some(n) => interfaces(n, &config.node_vlans(node)),
        None => Vec::new(),
    }
}

/// `/etc/hosts` entries for every networked node of `config`: the IPv4 and
/// IPv6 addresses of its first vlan and its name.
pub fn hosts_entries(config: &TestConfig) -> Vec<(IpAddr, String)> {
    config
        .nodes
        .keys()
        .flat_map(|n| host_entries(n, &node_interfaces(config, n)))
        .collect()
}

/// A systemd-networkd `.network` file for one interface: both addresses and
/// an IPv6 link-local address, no DHCP, no router advertisements.
pub fn networkd_file(i: &VlanInterface) -> String {
    format!(
        "[Match]\nName={name}\n\n[Link]\nRequiredForOnline=no\n\n[Network]\n\
         Address={v4}/{IPV4_PREFIX}\nAddress={v6}/{IPV6_PREFIX}\n\
         LinkLocalAddressing=ipv6\nIPv6AcceptRA=no\nDHCP=no\n",
        name = i.name,
        v4 = i.ipv4,
        v6 = i.ipv6,
    )
}

/// The kernel command line of a Debian-image VM: `base`, then per vlan
/// interface its IPv4 and IPv6 `ip=` and an `ifname=` naming it by MAC
/// (systemd-network-generator turns them into networkd and link files; no
/// `LinkLocalAddressing=` is written, so link-local is on), the hostname,
/// and the hosts entries the image's `attest-hosts.service` writes to
/// `/etc/hosts` (`attest.hosts=IP:NAME,…`).
pub fn kernel_cmdline(
    base: &str,
    interfaces: &[VlanInterface],
    hostname: &str,
    hosts: &[(IpAddr, String)],
) -> String {
    let mut s = base.trim().to_owned();
    for i in interfaces {
        let name = &i.name;
        s.push_str(&format!(
            " ip={}:::{}::{name}:off ip=[{}]:::{IPV6_PREFIX}::{name}:off ifname={name}:{}",
            i.ipv4,
            Ipv4Addr::from(u32::MAX << (32 - u32::from(IPV4_PREFIX))),
            i.ipv6,
            i.mac
        ));
    }
    s.push_str(&format!(" systemd.hostname={hostname}"));
    if !hosts.is_empty() {
        let list: Vec<String> = hosts.iter().map(|(ip, n)| format!("{ip}:{n}")).collect();
        s.push_str(&format!(" attest.hosts={}", list.join(",")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_follow_nixos_numbering() {
        let is = interfaces(3, &[2, 5]);
        assert_eq!(is[0].name, "eth1");
        assert_eq!(is[1].name, "eth2");
        assert_eq!(is[0].netdev_id, "vlan1");
        assert_eq!(is[1].netdev_id, "vlan2");
        assert_eq!(is[1].mac, "52:54:00:12:05:03");
        assert_eq!(is[1].ipv4, "192.168.5.3".parse::<Ipv4Addr>().unwrap());
        assert_eq!(is[1].ipv6, "2001:db8:5::3".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn ipv6_writes_numbers_as_network_nix_does() {
        assert_eq!(ipv6(10, 12).to_string(), "2001:db8:10::12");
        assert_eq!(ipv6(255, 254).to_string(), "2001:db8:255::254");
        assert_eq!(mac(10, 255), "52:54:00:12:0a:ff");
    }

    #[test]
    fn nodes_are_numbered_in_name_order() {
        let c: TestConfig = serde_json::from_str(
            r#"{"version":1,"name":"t","script":"t.rhai","nodes":{
              "server":{"backend":{"nspawn":{"rootfs":"/"}}},
              "client":{"backend":{"nspawn":{"rootfs":"/"}}}}}"#,
        )
        .unwrap();
        assert_eq!(node_number(&c, "client"), Some(1));
        assert_eq!(node_number(&c, "nobody"), None);
        let server = node_interfaces(&c, "server");
        assert_eq!(server[0].name, "eth1");
        assert_eq!(server[0].ipv4, "192.168.1.2".parse::<Ipv4Addr>().unwrap());
        let hosts: Vec<String> = hosts_entries(&c)
            .iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect();
        assert_eq!(
            hosts,
            [
                "192.168.1.1 client",
                "2001:db8:1::1 client",
                "192.168.1.2 server",
                "2001:db8:1::2 server"
            ]
        );
    }

    #[test]
    fn hosts_name_the_first_vlan_in_both_families() {
        let e = host_entries("server", &interfaces(2, &[3, 1]));
        let text: Vec<String> = e.iter().map(|(a, n)| format!("{a} {n}")).collect();
        assert_eq!(text, ["192.168.3.2 server", "2001:db8:3::2 server"]);
        assert!(host_entries("lonely", &[]).is_empty());
    }

    #[test]
    fn cmdline_carries_addresses_names_hostname_and_hosts() {
        let c = kernel_cmdline(
            "root=/dev/vda rw ",
            &interfaces(2, &[1, 2]),
            "server",
            &host_entries("client", &interfaces(1, &[1])),
        );
        assert_eq!(
            c,
            "root=/dev/vda rw ip=192.168.1.2:::255.255.255.0::eth1:off \
             ip=[2001:db8:1::2]:::64::eth1:off ifname=eth1:52:54:00:12:01:02 \
             ip=192.168.2.2:::255.255.255.0::eth2:off \
             ip=[2001:db8:2::2]:::64::eth2:off ifname=eth2:52:54:00:12:02:02 \
             systemd.hostname=server attest.hosts=192.168.1.1:client,2001:db8:1::1:client"
        );
    }

    /// The `ip=`/`ifname=` arguments mean what we want to systemd's own
    /// parser (the generator the Debian image runs at boot).
    #[test]
    fn systemd_network_generator_reads_the_cmdline_as_meant() {
        let generator = [
            "/lib/systemd/systemd-network-generator",
            "/usr/lib/systemd/systemd-network-generator",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("systemd-network-generator not found: install systemd");
        let root = tempfile::tempdir().unwrap();
        let cmdline = kernel_cmdline("", &interfaces(3, &[1, 2]), "c", &[]);
        let out = std::process::Command::new(generator)
            .arg(format!("--root={}", root.path().display()))
            .arg("--")
            .args(cmdline.split_whitespace())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let dir = root.path().join("run/systemd/network");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let eth2 = read("90-eth2.network");
        for want in [
            "Name=eth2",
            "Address=192.168.2.3/24",
            "Address=2001:db8:2::3/64",
            "DHCP=no",
        ] {
            assert!(eth2.contains(want), "{want} missing in {eth2}");
        }
        assert!(!eth2.contains("LinkLocalAddressing"), "{eth2}");
        let link = read("90-eth1.link");
        assert!(
            link.contains("MACAddress=52:54:00:12:01:03") && link.contains("Name=eth1"),
            "{link}"
        );
    }

    #[test]
    fn networkd_file_has_both_families_and_link_local() {
        let f = networkd_file(&interfaces(2, &[1])[0]);
        assert!(f.contains("Name=eth1\n"), "{f}");
        assert!(f.contains("Address=192.168.1.2/24\n"), "{f}");
        assert!(f.contains("Address=2001:db8:1::2/64\n"), "{f}");
        assert!(f.contains("LinkLocalAddressing=ipv6\n"), "{f}");
    }
}
