# Mirrors nixpkgs nixos/modules/virtualisation/guest-networking-options.nix:
# the options NixOS test nodes (VMs and nspawn containers) read for their
# test network: networking.primaryIPAddress/primaryIPv6Address,
# virtualisation.vlans/interfaces/allInterfaces (vlans become eth1, eth2, …).
{ config, lib, ... }:
let
  inherit (lib) types;
  cfg = config.virtualisation;
  interfaceType = types.submodule (
    { name, ... }:
    {
      options = {
        name = lib.mkOption {
          type = types.str;
          default = name;
        };
        vlan = lib.mkOption { type = types.ints.unsigned; };
        assignIP = lib.mkOption {
          type = types.bool;
          default = false;
        };
      };
    }
  );
  fromVlans = lib.listToAttrs (
    lib.imap1 (i: vlan: {
      name = "eth${toString i}";
      value = {
        name = "eth${toString i}";
        inherit vlan;
        assignIP = true;
      };
    }) cfg.vlans
  );
in
{
  options = {
    networking.primaryIPAddress = lib.mkOption {
      type = types.str;
      default = "";
      internal = true;
    };
    networking.primaryIPv6Address = lib.mkOption {
      type = types.str;
      default = "";
      internal = true;
    };
    virtualisation.vlans = lib.mkOption {
      type = types.listOf types.ints.unsigned;
      default = if cfg.interfaces == { } then [ 1 ] else [ ];
    };
    virtualisation.interfaces = lib.mkOption {
      type = types.attrsOf interfaceType;
      default = { };
    };
    virtualisation.allInterfaces = lib.mkOption {
      type = types.attrsOf interfaceType;
      readOnly = true;
      default = fromVlans // cfg.interfaces;
    };
  };
}
