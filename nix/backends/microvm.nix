# firecracker and cloud-hypervisor: direct kernel boot of an uncompressed
# vmlinux with the NixOS initrd, a root disk, and with splitStore one erofs
# image of every node's closure, shared read-only by all nodes.
{ pkgs, lib, a, vmm }:
let
  binary =
    {
      firecracker = "${pkgs.firecracker}/bin/firecracker";
      cloud-hypervisor = "${pkgs.cloud-hypervisor}/bin/cloud-hypervisor";
    }
    .${vmm};

  # An ext4 image labelled `label` of `sizeMiB` (sparse), holding the closure
  # of `storePaths` (none with splitStore: then it is only the writable root
  # and the store's overlay layer, and all nodes share the same image).
  rootImage =
    {
      label,
      sizeMiB,
      storePaths,
      registerPaths ? storePaths,
    }:
    let
      closure = pkgs.closureInfo { rootPaths = storePaths; };
      registration = pkgs.closureInfo { rootPaths = registerPaths; };
    in
    pkgs.runCommand "attest-root-${label}.img"
      {
        nativeBuildInputs = [ pkgs.e2fsprogs pkgs.fakeroot ];
      }
      ''
        mkdir -p root/nix/store root/nix/.rw-store/upper root/nix/.rw-store/work root/tmp root/etc
        ${lib.optionalString (storePaths != [ ]) ''
          xargs -a ${closure}/store-paths cp -a -t root/nix/store
        ''}
        # Loaded into the Nix database at first boot (modules/microvm.nix);
        # with splitStore the paths are those of the store image.
        ${lib.optionalString (registerPaths != [ ]) ''
          cp ${registration}/registration root/nix-path-registration
        ''}
        chmod -R u+w root
        truncate -s ${toString sizeMiB}M $out
        fakeroot sh -c 'chown -R 0:0 root && mkfs.ext4 -q -L ${label} -E root_owner=0:0 -d root $out'
      '';

  # The Nix store of all nodes as one compressed erofs image.
  storeImage =
    storePaths:
    let
      closure = pkgs.closureInfo { rootPaths = storePaths; };
    in
    pkgs.runCommand "attest-store.erofs"
      {
        nativeBuildInputs = [ pkgs.erofs-utils pkgs.gnutar ];
      }
      ''
        tar --create --absolute-names --verbatim-files-from \
          --transform 'flags=rSh;s|/nix/store/||' \
          --files-from ${closure}/store-paths \
          | mkfs.erofs --quiet --force-uid=0 --force-gid=0 -T 0 \
              -zlz4hc,12 -L attest-store --tar=f $out
      '';
  # The uncompressed kernel on its own: `${kernel.dev}/vmlinux` would put
  # the whole dev output (headers, build tree, toolchain references) into
  # every test's closure.
  vmlinux =
    kernel:
    pkgs.runCommand "vmlinux-${kernel.version or "kernel"}" { } ''
      cp ${kernel.dev}/vmlinux $out
    '';

  toplevels = systems: lib.mapAttrsToList (_: s: s.config.system.build.toplevel) systems;

  networked = (import ../lib).networked { inherit (a) nodeNames enableNetwork; };
in
{
  module = ../modules/microvm.nix;
  # A networked test needs /dev/net/tun in the build sandbox for its TAPs;
  # the host says it offers it with this feature (docs/nix.md).
  requiredSystemFeatures = [
    "kvm"
    "nixos-test"
  ]
  ++ lib.optional networked "attest-dev-net-tun";

  # Computed once per test from all nodes' systems.
  shared =
    systems:
    lib.optionalAttrs a.splitStore {
      storeImage = storeImage (toplevels systems);
      registerPaths = toplevels systems;
    };

  settings =
    nodeName: system: shared:
    let
      c = system.config;
      m = c.attest.microvm;
      toplevel = c.system.build.toplevel;
    in
    {
      kernel = "${vmlinux c.boot.kernelPackages.kernel}";
      initrd = "${c.system.build.initialRamdisk}/${c.system.boot.loader.initrdFile}";
      disk = "${rootImage {
        label = m.rootLabel;
        sizeMiB = m.diskSize;
        storePaths = lib.optional (!a.splitStore) toplevel;
        registerPaths = if a.splitStore then shared.registerPaths else [ toplevel ];
      }}";
      cmdline = lib.concatStringsSep " " ([ "init=${toplevel}/init" ] ++ c.boot.kernelParams);
      memory_mib = m.memorySize;
      cpus = m.cores;
      inherit binary;
      options =
        lib.optionalAttrs (vmm == "firecracker") { enable_pci = false; }
        // lib.optionalAttrs a.splitStore { store_image = "${shared.storeImage}"; }
        // lib.optionalAttrs a.snapshots { snapshots = true; };
    };
}
