# nspawn nodes: a NixOS container (boot.isContainer) with the unix-socket
# backdoor. The driver boots the tree with `systemd-nspawn -b`, bind-mounts
# the host's /nix/store read-only, and moves one veth per vlan into the
# container, named eth1, eth2, ... in vlan order.
{ lib, ... }:
{
  imports = [ ./backdoor-unix.nix ];

  config = {
    boot.isContainer = true;
    # Containers have no udev; the driver names the interfaces.
    attest.renameInterfacesByMac = false;
    networking.useHostResolvConf = lib.mkDefault false;
    # Nothing to log into on the container console; keep it for the log.
    console.enable = lib.mkDefault true;
    services.journald.extraConfig = ''
      ForwardToConsole=yes
      MaxLevelConsole=debug
    '';
    systemd.services."console-getty".enable = false;
  };
}
