# Stand-ins for the few nixpkgs functions the backends' settings use, so the
# real nix/backends/*.nix code runs here without nixpkgs. builtins only.
{
  pkgs = {
    runCommand = name: _env: _script: "/nix/store/00000000000000000000000000000000-${name}";
    writeText = name: _text: "/nix/store/00000000000000000000000000000000-${name}";
    closureInfo = _: "/nix/store/00000000000000000000000000000000-closure-info";
    firecracker = "/nix/store/00000000000000000000000000000000-firecracker";
    cloud-hypervisor = "/nix/store/00000000000000000000000000000000-cloud-hypervisor";
    e2fsprogs = null;
    fakeroot = null;
    erofs-utils = null;
    gnutar = null;
  };
  lib = {
    optional = cond: x: if cond then [ x ] else [ ];
    optionalAttrs = cond: set: if cond then set else { };
    concatStringsSep = builtins.concatStringsSep;
    mapAttrs = builtins.mapAttrs;
    optionalString = cond: s: if cond then s else "";
    mapAttrsToList = f: set: map (n: f n set.${n}) (builtins.attrNames set);
  };
  # A NixOS system as far as the backends look at it.
  qemuSystem = name: {
    config = {
      system.name = name;
      system.build.vm = "/nix/store/00000000000000000000000000000000-nixos-vm";
      virtualisation.memorySize = 1024;
      virtualisation.cores = 1;
    };
  };
  nspawnSystem = name: {
    config.system.build.toplevel = "/nix/store/00000000000000000000000000000000-nixos-system-${name}";
  };
  microvmSystem = name: {
    config = {
      system.build.toplevel = "/nix/store/00000000000000000000000000000000-nixos-system-${name}";
      system.build.initialRamdisk = "/nix/store/00000000000000000000000000000000-initrd-linux";
      system.boot.loader.initrdFile = "initrd";
      boot.kernelPackages.kernel.dev = "/nix/store/00000000000000000000000000000000-linux-dev";
      boot.kernelParams = [ "console=ttyS0" "reboot=k" "panic=1" ];
      attest.microvm = {
        memorySize = 512;
        cores = 1;
        diskSize = 4096;
        rootLabel = "attest-root";
      };
    };
  };
}
