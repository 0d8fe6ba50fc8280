# What every attest node gets, whatever the backend: its name and number,
# static addresses on its vlans, /etc/hosts for all nodes, and optionally
# systemd debug output. make-test.nix sets the `attest.*` values from the
# pure plan in nix/lib (node numbering, IP plan, hosts file).
{ config, lib, ... }:
let
  cfg = config.attest;
in
{
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
      type = lib.types.enum [ "qemu" "firecracker" "cloud-hypervisor" "nspawn" ];
      description = "The backend that runs this node.";
    };
    interfaces = lib.mkOption {
      type = lib.types.listOf lib.types.attrs;
      default = [ ];
      description = "The node's vlan interfaces from the IP plan: name, vlan, address, prefixLength, address6, prefixLength6, mac.";
    };
    hosts = lib.mkOption {
      type = lib.types.lines;
      default = "";
      description = "/etc/hosts lines naming every node at its first vlan's address.";
    };
    renameInterfacesByMac = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Name the vlan interfaces eth<i> by their MAC with udev rules (VMs; in containers the driver names them).";
    };
    debugBoot = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Verbose systemd (and kernel) output on the console.";
    };
  };

  config = {
    networking.hostName = lib.mkDefault cfg.nodeName;
    system.name = lib.mkDefault cfg.nodeName;

    networking.interfaces = lib.listToAttrs (
      map (i: {
        inherit (i) name;
        value = {
          useDHCP = lib.mkDefault false;
          ipv4.addresses = [ { inherit (i) address prefixLength; } ];
          ipv6.addresses = [ { address = i.address6; prefixLength = i.prefixLength6; } ];
        };
      }) cfg.interfaces
    );

    networking.extraHosts = cfg.hosts;

    # Tests must not reach the Internet (same as test-instrumentation.nix).
    networking.defaultGateway = lib.mkOverride 150 null;
    networking.nameservers = lib.mkOverride 150 [ ];
    networking.usePredictableInterfaceNames = false;

    services.udev.extraRules = lib.mkIf cfg.renameInterfacesByMac (
      lib.concatMapStrings (i: ''
        SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="${i.mac}", NAME="${i.name}"
      '') cfg.interfaces
    );
    boot.initrd.services.udev.rules = lib.mkIf cfg.renameInterfacesByMac (
      lib.concatMapStrings (i: ''
        SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="${i.mac}", NAME="${i.name}"
      '') cfg.interfaces
    );

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
