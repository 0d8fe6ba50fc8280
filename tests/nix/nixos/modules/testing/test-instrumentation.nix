# Mirrors nixpkgs nixos/modules/testing/test-instrumentation.nix: its option
# and the definitions it makes, at the priorities it makes them (journald
# through `settings`, manager timeouts, sysctls, root password, logrotate).
{ lib, ... }:
{
  options.testing.backdoor = lib.mkEnableOption "backdoor service in stage 2" // {
    default = true;
  };

  config = {
    systemd.services."serial-getty@ttyS0".enable = false;
    systemd.services."serial-getty@hvc0".enable = false;
    boot.kernel.sysctl = {
      "kernel.hung_task_timeout_secs" = 600;
      "vm.panic_on_oom" = lib.mkDefault 2;
    };
    boot.kernelParams = [
      "console=ttyS0"
      "console=tty0"
      "panic=1"
      "boot.panic_on_fail"
      "clocksource=acpi_pm"
    ];
    services.journald.settings.Journal = {
      ForwardToConsole = true;
      TTYPath = "/dev/ttyS0";
      MaxLevelConsole = "debug";
    };
    systemd.settings.Manager = {
      ShowStatus = false;
      DefaultTimeoutStartSec = 300;
      DefaultDeviceTimeoutSec = 300;
    };
    boot.consoleLogLevel = 7;
    networking.defaultGateway = lib.mkOverride 150 null;
    networking.nameservers = lib.mkOverride 150 [ ];
    networking.usePredictableInterfaceNames = false;
    users.users.root.hashedPasswordFile = lib.mkOverride 150 "/nix/store/00000000000000000000000000000000-hashed-password.root";
    services.logrotate.enable = lib.mkOverride 150 false;
    system.stateVersion = lib.mkOverride 1200 lib.trivial.release;
  };
}
