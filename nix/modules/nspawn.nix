# nspawn nodes: a NixOS container (boot.isContainer) with the unix-socket
# backdoor. The driver boots the tree with `systemd-nspawn -b`, bind-mounts
# the host's /nix/store read-only, and moves one veth per vlan into the
# container, named eth1, eth2, ... in vlan order (as NixOS tests name them).
{ lib, ... }:
{
  imports = [
    ./backdoor-unix.nix
    ./instrumentation.nix
  ];

  config = {
    boot.isContainer = true;
    # Containers have no udev; the driver names the interfaces.
    attest.renameInterfacesByMac = false;
    attest.instrumentation.kernel = false;
    # container-config.nix sets the opposite with mkDefault; a plain
    # definition wins, as in nixpkgs' own nspawn test nodes. The test
    # network has no DNS server to take from the host.
    networking.useHostResolvConf = false;
    # The console is the driver's log of the container.
    console.enable = true;
    systemd.services."console-getty".enable = false;
  };
}
