# nspawn: a NixOS container tree per node. The tree is tiny: the store is the
# host's, bind-mounted read-only, and the root is a volatile overlay, so the
# read-only store path can be booted by several tests at once.
{ pkgs, lib, a }:
let
  containerRoot =
    nodeName: system:
    let
      toplevel = system.config.system.build.toplevel;
    in
    pkgs.runCommand "attest-container-root-${nodeName}" { } ''
      mkdir -p $out/{etc,sbin,usr/lib,nix/store,run/backdoor,dev,proc,sys,tmp,root,var}
      # nspawn checks for os-release before anything is mounted, so it must
      # be a real file, not a link into the store.
      cp ${toplevel}/etc/os-release $out/usr/lib/os-release
      cp ${toplevel}/etc/os-release $out/etc/os-release
      # Stage 2 of NixOS: activation, then systemd as PID 1.
      ln -s ${toplevel}/init $out/sbin/init
      ln -s ${toplevel} $out/system
    '';
in
{
  module = ../modules/nspawn.nix;
  # systemd-nspawn in the build sandbox needs a uid range and cgroups
  # (nix.conf: auto-allocate-uids, use-cgroups, experimental features
  # auto-allocate-uids and cgroups, which give the system feature
  # uid-range), like nixpkgs' own nspawn-flavoured NixOS tests.
  requiredSystemFeatures = [
    "nixos-test"
    "uid-range"
  ];
  shared = _systems: { };
  settings = nodeName: system: _shared: {
    rootfs = "${containerRoot nodeName system}";
    extra_args = [
      "--bind-ro=/nix/store"
      "--volatile=overlay"
      # As nixpkgs' nspawn-container runner (nixos/modules/virtualisation/
      # nspawn-container): in the Nix build sandbox nspawn may not mount
      # procfs/sysfs for a user-namespaced container, so no user namespace
      # and the sandbox's own /proc and /sys are handed on.
      "--private-users=no"
      "--bind=/proc:/run/host/proc"
      "--bind=/sys:/run/host/sys"
    ]
    ++ lib.optional a.debugBoot "--setenv=SYSTEMD_LOG_LEVEL=debug"
    ++ lib.optional a.debugBoot "--setenv=SYSTEMD_SHOW_STATUS=1";
  };
}
