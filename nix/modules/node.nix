# What every attest node gets, whatever the backend: its name and number,
# static addresses on its vlans (IPv4 and IPv6, as NixOS tests have them),
# /etc/hosts for all nodes, the options NixOS test modules read
# (networking.primaryIPAddress, virtualisation.test.nodeNumber, …), and
# optionally systemd debug output. make-test.nix sets the `attest.*` values
# from the pure plan in nix/lib (node numbering, IP plan, hosts file).
{
  config,
  lib,
  pkgs,
  modulesPath,
  ...
}:
let
  cfg = config.attest;
  isMicroVm = cfg.backend == "firecracker" || cfg.backend == "cloud-hypervisor";
  primary = lib.findFirst (_: true) null cfg.interfaces;

  # Renames the vlan NICs by MAC in two steps (all to temporary names, then
  # to eth1, eth2, …), so no rename can collide with a name the kernel gave
  # another NIC (a microVM has no user NIC taking eth0: its vlan NICs come
  # up as eth0, eth1, …).
  renameScript = ''
    set -eu
    byMac() {
      for d in /sys/class/net/*; do
        if [ "$(cat "$d/address" 2>/dev/null)" = "$1" ]; then basename "$d"; return 0; fi
      done
      return 1
    }
    ${lib.concatImapStrings (i: iface: ''
      for _ in $(seq 100); do byMac ${iface.mac} >/dev/null && break; sleep 0.1; done
      cur=$(byMac ${iface.mac}) || { echo "attest: no NIC with MAC ${iface.mac} (vlan ${toString iface.vlan})" >&2; exit 1; }
      if [ "$cur" != ${iface.name} ]; then
        ip link set dev "$cur" down
        ip link set dev "$cur" name attest-tmp${toString i}
      fi
    '') cfg.interfaces}
    ${lib.concatImapStrings (i: iface: ''
      if [ -e /sys/class/net/attest-tmp${toString i} ]; then
        ip link set dev attest-tmp${toString i} name ${iface.name}
      fi
    '') cfg.interfaces}
  '';
  udevRules = lib.concatMapStrings (i: ''
    SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="${i.mac}", NAME="${i.name}"
  '') cfg.interfaces;
in
{
  # The options NixOS test nodes read about their test network; nixpkgs'
  # qemu-vm.nix and nspawn-container import this file too (imported once).
  imports = [ (modulesPath + "/virtualisation/guest-networking-options.nix") ];

  options.attest = {
    nodeName = lib.mkOption {
      type = lib.types.str;
      description = "The node's name in `nodes`.";
    };
    nodeNumber = lib.mkOption {
      type = lib.types.ints.between 1 254;
      description = "The node's number: its position in name order, from 1 (the last byte of its addresses).";
    };
    backend = lib.mkOption {
      type = lib.types.enum [
        "qemu"
        "firecracker"
        "cloud-hypervisor"
        "nspawn"
      ];
      description = "The backend that runs this node.";
    };
    vlans = lib.mkOption {
      type = lib.types.listOf lib.types.ints.unsigned;
      default = [ ];
      description = "The node's vlans (make-test.nix's `vlans`, defaults applied).";
    };
    interfaces = lib.mkOption {
      type = lib.types.listOf lib.types.attrs;
      default = [ ];
      description = "The node's vlan interfaces from the IP plan: name, vlan, address, prefixLength, address6, prefixLength6, mac.";
    };
    hosts = lib.mkOption {
      type = lib.types.lines;
      default = "";
      description = "/etc/hosts lines naming every node at both addresses of its first vlan.";
    };
    renameInterfacesByMac = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Name the vlan interfaces eth<i> by their MAC (VMs; in containers the driver names them).";
    };
    debugBoot = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Verbose systemd (and kernel) output on the console.";
    };
  };

  # As nixpkgs nixos/lib/testing/network.nix declares them for test nodes.
  options.virtualisation.test = {
    nodeName = lib.mkOption {
      type = lib.types.str;
      internal = true;
      default = cfg.nodeName;
      description = "The node's name in `nodes`.";
    };
    nodeNumber = lib.mkOption {
      type = lib.types.int;
      internal = true;
      readOnly = true;
      default = cfg.nodeNumber;
      description = "The node's number (1.. in name order).";
    };
  };

  config = {
    assertions = [
      {
        assertion = config.virtualisation.vlans == cfg.vlans;
        message = ''
          attest node `${cfg.nodeName}`: virtualisation.vlans is ${builtins.toJSON config.virtualisation.vlans}, but attest plans the network before evaluating NixOS: set the node's vlans with make-test.nix's `vlans` argument (vlans.${cfg.nodeName} = ${builtins.toJSON config.virtualisation.vlans};) instead.
        '';
      }
      {
        assertion = config.virtualisation.interfaces == { };
        message = ''
          attest node `${cfg.nodeName}`: virtualisation.interfaces is not supported (the driver creates one interface per vlan, eth1, eth2, … in vlan order); use make-test.nix's `vlans` argument.
        '';
      }
    ];

    networking.hostName = lib.mkDefault cfg.nodeName;
    system.name = lib.mkDefault cfg.nodeName;

    virtualisation.vlans = lib.mkDefault cfg.vlans;
    networking.primaryIPAddress = lib.mkIf (primary != null) primary.address;
    networking.primaryIPv6Address = lib.mkIf (primary != null) primary.address6;

    networking.interfaces = lib.listToAttrs (
      map (i: {
        inherit (i) name;
        value = {
          useDHCP = lib.mkDefault false;
          ipv4.addresses = [ { inherit (i) address prefixLength; } ];
          ipv6.addresses = [
            {
              address = i.address6;
              prefixLength = i.prefixLength6;
            }
          ];
        };
      }) cfg.interfaces
    );

    networking.extraHosts = cfg.hosts;

    # Tests must not reach the Internet (same as test-instrumentation.nix).
    networking.defaultGateway = lib.mkOverride 150 null;
    networking.nameservers = lib.mkOverride 150 [ ];
    networking.usePredictableInterfaceNames = false;

    # QEMU: the user NIC is eth0 and the vlan NICs come up as eth1, … in
    # order, so the rules only confirm the names (as NixOS tests do them).
    services.udev.extraRules = lib.mkIf (cfg.renameInterfacesByMac && !isMicroVm) udevRules;
    boot.initrd.services.udev.rules = lib.mkIf (cfg.renameInterfacesByMac && !isMicroVm) udevRules;

    systemd.services.attest-rename-interfaces =
      lib.mkIf (cfg.renameInterfacesByMac && isMicroVm && cfg.interfaces != [ ])
        {
          description = "attest: name the vlan NICs eth1, eth2, … by MAC";
          wantedBy = [ "network-pre.target" ];
          before = [ "network-pre.target" ];
          wants = [ "network-pre.target" ];
          after = [ "systemd-udev-trigger.service" ];
          unitConfig.DefaultDependencies = false;
          path = [
            pkgs.iproute2
            pkgs.coreutils
          ];
          serviceConfig.Type = "oneshot";
          serviceConfig.RemainAfterExit = true;
          script = renameScript;
        };

    boot.kernelParams = lib.mkIf (cfg.debugBoot && cfg.backend != "nspawn") [
      "systemd.log_level=debug"
      "systemd.log_target=console"
      "systemd.show_status=true"
      "rd.systemd.show_status=true"
      "debug"
    ];

    documentation.nixos.enable = lib.mkDefault false;
    system.stateVersion = lib.mkOverride 1200 lib.trivial.release;
  };
}
