# What nixpkgs' test-instrumentation.nix gives NixOS test VMs, for the nodes
# that do not import it (microVMs, nspawn containers; QEMU nodes import the
# real one): journald on the console through `settings` (extraConfig is
# removed), slow-start manager timeouts, an empty root password for
# interactive debugging, no logrotate, and for VMs the OOM panic and hung
# task timeout. The console device is the backend's.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.attest.instrumentation;
in
{
  options.attest.instrumentation = {
    console = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/dev/ttyS0";
      description = "The TTY journald forwards to; null: the container's console (nspawn).";
    };
    kernel = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Whether the node has its own kernel (sysctls make sense).";
    };
  };

  config = {
    services.journald.settings.Journal = {
      ForwardToConsole = true;
      MaxLevelConsole = "debug";
    }
    // lib.optionalAttrs (cfg.console != null) { TTYPath = cfg.console; };

    systemd.settings.Manager = {
      ShowStatus = false;
      DefaultTimeoutStartSec = 300;
      DefaultDeviceTimeoutSec = 300;
    };

    boot.kernel.sysctl = lib.mkIf cfg.kernel {
      "kernel.hung_task_timeout_secs" = 600;
      "vm.panic_on_oom" = lib.mkDefault 2;
    };

    users.users.root.hashedPasswordFile = lib.mkOverride 150 "${pkgs.writeText "hashed-password.root" ""}";
    services.logrotate.enable = lib.mkOverride 150 false;
  };
}
