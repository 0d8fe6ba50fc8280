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
      memory_mib = c.virtualisation.memorySize;
      cpus = c.virtualisation.cores;
      extra_args = [ ];
    };
}
