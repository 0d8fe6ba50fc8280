# firecracker / cloud-hypervisor nodes: direct kernel boot (uncompressed ELF
# vmlinux, PVH), an initrd that can find virtio-mmio (firecracker) and
# virtio-pci (cloud-hypervisor) disks, a root ext4 disk, and optionally the
# Nix store as a shared read-only erofs image on a second disk with a
# writable overlay (splitStore). The backdoor is on vsock (backdoor-vsock.nix).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.attest.microvm;
in
{
  imports = [
    ./backdoor-vsock.nix
    ./instrumentation.nix
  ];

  options.attest.microvm = {
    memorySize = lib.mkOption {
      type = lib.types.ints.positive;
      default = 1024;
      description = "Guest memory in MiB.";
    };
    cores = lib.mkOption {
      type = lib.types.ints.positive;
      default = 1;
      description = "Guest vCPUs.";
    };
    diskSize = lib.mkOption {
      type = lib.types.ints.positive;
      default = 4096;
      description = ''
        Size in MiB of the writable root disk (a sparse file; only what the
        guest writes takes space). With splitStore it also holds the store's
        writable overlay layer, so builds and downloads in a test fit.
      '';
    };
    splitStore = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Mount the Nix store from a read-only erofs image on the second disk, with a writable overlay on the root disk.";
    };
    storeOverlay = lib.mkOption {
      type = lib.types.enum [ "disk" "tmpfs" ];
      default = "disk";
      description = "Where the store's writable layer lives with splitStore: on the root disk (size diskSize) or in RAM.";
    };
    serialConsole = lib.mkOption {
      type = lib.types.str;
      default = "ttyS0";
      description = "The console device both VMMs provide (8250 serial).";
    };
    rootLabel = lib.mkOption {
      type = lib.types.str;
      default = "attest-root";
      internal = true;
    };
    storeLabel = lib.mkOption {
      type = lib.types.str;
      default = "attest-store";
      internal = true;
    };
  };

  config = {
    attest.renameInterfacesByMac = true;

    boot.loader.grub.enable = false;
    boot.initrd.availableKernelModules = [
      "virtio_mmio"
      "virtio_pci"
      "virtio_blk"
      "virtio_net"
      "virtio_console"
      "ext4"
      "erofs"
      "overlay"
    ];
    # Force-load the transports: with virtio-mmio nothing triggers autoload.
    boot.initrd.kernelModules = [ "virtio_mmio" "virtio_pci" "virtio_blk" ];

    boot.kernelParams = [
      "console=${cfg.serialConsole}"
      "reboot=k"
      "panic=1"
      "boot.panic_on_fail"
    ];
    boot.consoleLogLevel = lib.mkDefault 7;
    attest.instrumentation.console = "/dev/${cfg.serialConsole}";

    # The root image carries the registration of the store paths it holds
    # (or, with splitStore, of the store image's): load it into the Nix
    # database on first boot, as qemu-vm.nix does through its regInfo.
    boot.postBootCommands = ''
      if [ -f /nix-path-registration ]; then
        ${config.nix.package.out}/bin/nix-store --load-db < /nix-path-registration && rm /nix-path-registration
      fi
    '';
    systemd.services."serial-getty@${cfg.serialConsole}".enable = false;

    fileSystems = lib.mkMerge [
      {
        "/" = {
          device = "/dev/disk/by-label/${cfg.rootLabel}";
          fsType = "ext4";
        };
      }
      (lib.mkIf cfg.splitStore {
        "/nix/.ro-store" = {
          device = "/dev/disk/by-label/${cfg.storeLabel}";
          fsType = "erofs";
          options = [ "ro" ];
          neededForBoot = true;
        };
        "/nix/.rw-store" = lib.mkIf (cfg.storeOverlay == "tmpfs") {
          fsType = "tmpfs";
          device = "tmpfs";
          options = [ "mode=0755" ];
          neededForBoot = true;
        };
        "/nix/store" = {
          overlay = {
            lowerdir = [ "/nix/.ro-store" ];
            upperdir = "/nix/.rw-store/upper";
            workdir = "/nix/.rw-store/work";
          };
          neededForBoot = true;
        };
      })
    ];

    swapDevices = lib.mkForce [ ];
    services.timesyncd.enable = lib.mkDefault false;
    networking.useDHCP = lib.mkDefault false;
  };
}
