# Mirrors the part of nixpkgs nixos/modules/virtualisation/qemu-vm.nix that
# attest's QEMU module uses: extra QEMU options, memory, cores, graphics, the
# QEMU package, and system.build.vm (the run-<name>-vm script).
{ lib, ... }:
let
  inherit (lib) types;
in
{
  imports = [ ./guest-networking-options.nix ];

  options.virtualisation = {
    memorySize = lib.mkOption {
      type = types.ints.positive;
      default = 1024;
    };
    cores = lib.mkOption {
      type = types.ints.positive;
      default = 1;
    };
    graphics = lib.mkOption {
      type = types.bool;
      default = true;
    };
    qemu.options = lib.mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    qemu.package = lib.mkOption {
      type = types.unspecified;
      default = "qemu";
    };
  };

  config.system.build.vm = "/nix/store/00000000000000000000000000000000-nixos-vm";
}
