# The NixOS options attest's guest modules set or read that are not in a
# mirrored file under modules/, with the types nixpkgs gives them. Each
# group names the nixpkgs file that declares it. Plus what every NixOS
# system imports and attest can clash with (modules/virtualisation/
# container-config.nix, modules/system/boot/systemd/journald.nix).
{ lib, ... }:
let
  inherit (lib) mkOption types;
  opt = type: default: mkOption { inherit type default; };
  bool = d: mkOption {
    type = types.bool;
    default = d;
  };
  strs = opt (types.listOf types.str) [ ];
  lines = opt types.lines "";
  enable = d: { enable = bool d; };

  # nixos/modules/tasks/network-interfaces.nix: networking.interfaces.<name>
  address = types.submodule {
    options = {
      address = mkOption { type = types.str; };
      prefixLength = mkOption { type = types.addCheck types.int (n: n >= 0 && n <= 128); };
    };
  };
  interface = types.submodule {
    options = {
      useDHCP = opt (types.nullOr types.bool) null;
      ipv4.addresses = opt (types.listOf address) [ ];
      ipv6.addresses = opt (types.listOf address) [ ];
    };
  };
  gateway = types.submodule {
    options = {
      address = mkOption { type = types.str; };
      interface = opt (types.nullOr types.str) null;
    };
  };

  # nixos/lib/systemd-unit-options.nix, as far as attest's units go.
  unit = types.submodule {
    options = {
      enable = bool true;
      description = opt types.str "";
      wantedBy = strs;
      requiredBy = strs;
      wants = strs;
      requires = strs;
      after = strs;
      before = strs;
      conflicts = strs;
      path = opt (types.listOf types.unspecified) [ ];
      script = lines;
      unitConfig = opt (types.attrsOf types.unspecified) { };
      serviceConfig = opt (types.attrsOf types.unspecified) { };
    };
  };

  # nixos/modules/tasks/filesystems.nix and overlayfs.nix.
  fileSystem = types.submodule (
    { name, ... }:
    {
      options = {
        mountPoint = opt types.str name;
        device = opt (types.nullOr types.str) null;
        fsType = opt types.str "auto";
        options = opt (types.nonEmptyListOf types.str) [ "defaults" ];
        neededForBoot = bool false;
        overlay = {
          lowerdir = opt (types.nullOr (types.nonEmptyListOf types.str)) null;
          upperdir = opt (types.nullOr types.str) null;
          workdir = opt (types.nullOr types.str) null;
        };
      };
    }
  );

  sysctlValue = types.nullOr (
    types.oneOf [
      types.bool
      types.str
      types.int
    ]
  );
in
{
  imports = [
    ./modules/misc/assertions.nix
    ./modules/system/boot/systemd/journald.nix
    ./modules/virtualisation/container-config.nix
  ];

  options = {
    # nixos/modules/tasks/network-interfaces.nix
    networking = {
      hostName = opt (types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$") "nixos";
      domain = opt (types.nullOr types.str) null;
      interfaces = opt (types.attrsOf interface) { };
      defaultGateway = opt (types.nullOr (types.coercedTo types.str (address: { inherit address; }) gateway)) null;
      nameservers = strs;
      usePredictableInterfaceNames = bool true;
      useDHCP = bool true;
      useNetworkd = bool false;
      # nixos/modules/config/networking.nix
      extraHosts = lines;
      # nixos/modules/tasks/network-interfaces.nix (resolv.conf from the host)
      useHostResolvConf = bool false;
      # nixos/modules/services/networking/firewall.nix
      firewall.allowedTCPPorts = opt (types.listOf types.port) [ ];
    };

    # nixos/modules/config/console.nix
    console = enable true;

    # nixos/modules/system/boot/kernel.nix, stage-1.nix, loader/grub, udev
    boot = {
      isContainer = bool false;
      kernelParams = opt (types.listOf (types.strMatching ''([^"[:space:]]|"[^"]*")+'')) [ ];
      kernelModules = strs;
      kernelPackages = opt types.raw { kernel.dev = "/nix/store/00000000000000000000000000000000-linux-dev"; };
      kernel.sysctl = opt (types.attrsOf sysctlValue) { };
      consoleLogLevel = opt types.int 4;
      postBootCommands = lines;
      loader.grub = enable true;
      initrd = {
        availableKernelModules = strs;
        kernelModules = strs;
        services.udev.rules = lines;
      };
    };

    services = {
      # nixos/modules/services/hardware/udev.nix
      udev.extraRules = lines;
      # nixos/modules/system/boot/timesyncd.nix, logrotate.nix, openssh.nix
      timesyncd = enable true;
      logrotate = enable true;
      openssh.startWhenNeeded = bool false;
    };

    # nixos/modules/security/audit.nix
    security.audit.enable = opt (types.enum [
      false
      true
      "lock"
    ]) false;

    # nixos/modules/system/boot/systemd.nix
    systemd = {
      services = opt (types.attrsOf unit) { };
      settings.Manager = opt (types.attrsOf types.unspecified) { };
    };

    # nixos/modules/tasks/filesystems.nix, config/swap.nix
    fileSystems = opt (types.attrsOf fileSystem) { };
    swapDevices = opt (types.listOf types.unspecified) [ ];

    # nixos/modules/config/users-groups.nix
    users.users = opt (types.attrsOf (
      types.submodule {
        options = {
          hashedPasswordFile = opt (types.nullOr types.str) null;
          initialHashedPassword = opt (types.nullOr types.str) null;
        };
      }
    )) { };

    # nixos/modules/config/nix.nix (a package: only its store path is used)
    nix.package = opt types.unspecified { out = "/nix/store/00000000000000000000000000000000-nix"; };

    # nixos/modules/misc/documentation.nix
    documentation.nixos = enable true;

    # nixos/modules/system/etc/etc.nix, config/system-path.nix
    environment = {
      etc = opt (types.attrsOf (types.submodule { options.text = lines; })) { };
      systemPackages = opt (types.listOf types.unspecified) [ ];
    };

    # nixos/modules/system/activation/top-level.nix, misc/version.nix
    system = {
      name = opt types.str "nixos";
      stateVersion = opt types.str lib.trivial.release;
      build = opt (types.submoduleWith {
        modules = [ { freeformType = types.lazyAttrsOf (types.uniq types.unspecified); } ];
      }) { };
    };
  };
}
