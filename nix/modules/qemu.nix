# QEMU nodes: nixpkgs' own qemu-vm.nix and test-instrumentation.nix (the
# backdoor on hvc0, the serial console log), as NixOS tests build them, plus
# one virtio NIC per vlan on the VDE switch the driver passes in
# $QEMU_VDE_SOCKET_<vlan> (the NixOS driver's convention).
{ config, lib, modulesPath, ... }:
let
  cfg = config.attest;
in
{
  imports = [
    (modulesPath + "/virtualisation/qemu-vm.nix")
    (modulesPath + "/testing/test-instrumentation.nix")
  ];

  config = {
    attest.renameInterfacesByMac = true;

    virtualisation.qemu.options = lib.concatLists (
      lib.imap1 (idx: i: [
        "-device virtio-net-pci,netdev=vlan${toString idx},mac=${i.mac}"
        ''-netdev vde,id=vlan${toString idx},sock="$QEMU_VDE_SOCKET_${toString i.vlan}"''
      ]) cfg.interfaces
    );

    # OCR and screenshots need a display; everything else runs headless.
    virtualisation.graphics = lib.mkDefault true;
  };
}
