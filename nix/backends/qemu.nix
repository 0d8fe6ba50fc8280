# QEMU: a NixOS VM per node, started by its `run-<name>-vm` script.
{ pkgs, lib, a }:
{
  module = ../modules/qemu.nix;
  requiredSystemFeatures = [ "kvm" "nixos-test" ];
  shared = _systems: { };
  settings =
    nodeName: system: _shared:
    let
      c = system.config;
    in
    {
      start_script = "${c.system.build.vm}/bin/run-${c.system.name}-vm";
      accel = "auto";
      enable_ocr = a.enableOCR;
      # No memory_mib/cpus: the start script passes qemu-vm.nix's
      # virtualisation.memorySize/cores itself, and the driver ignores them
      # for start-script nodes.
      extra_args = [ ];
    };
}
