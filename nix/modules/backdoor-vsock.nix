# The attest backdoor for microVMs (firecracker, cloud-hypervisor): a root
# bash on AF_VSOCK port 1234. Every connection gets its own shell, which first
# prints the banner the driver waits for, exactly like nixpkgs'
# test-instrumentation.nix does on hvc0. The host reaches it through the
# VMM's hybrid vsock socket (`CONNECT 1234`).
{ config, lib, pkgs, ... }:
let
  cfg = config.attest.backdoor.vsock;
  shell = pkgs.writeShellScript "attest-backdoor-shell" ''
    export USER=root HOME=/root PAGER= SYSTEMD_PAGER=
    if [ -e /etc/profile ]; then
      set +o nounset
      source /etc/profile
    fi
    export PAGER= SYSTEMD_PAGER=
    cd /tmp
    echo "Spawning backdoor root shell..."
    PS1="" exec ${pkgs.bashNonInteractive or pkgs.bash}/bin/bash --norc
  '';
in
{
  options.attest.backdoor.vsock = {
    enable = lib.mkEnableOption "the attest backdoor root shell on vsock" // {
      default = true;
    };
    port = lib.mkOption {
      type = lib.types.port;
      default = 1234;
      description = "AF_VSOCK port the backdoor listens on (the driver connects with `CONNECT <port>`).";
    };
  };

  config = lib.mkIf cfg.enable {
    boot.kernelModules = [ "vsock" "vmw_vsock_virtio_transport" ];

    systemd.services.attest-backdoor = {
      description = "attest backdoor root shell on vsock port ${toString cfg.port}";
      wantedBy = [ "multi-user.target" ];
      # Start as early as possible: the driver waits for it, and a test may
      # want to look at a boot that never reaches multi-user.target.
      unitConfig = {
        DefaultDependencies = false;
        ConditionVirtualization = "vm";
      };
      after = [ "systemd-modules-load.service" "local-fs.target" ];
      wants = [ "systemd-modules-load.service" ];
      before = [ "shutdown.target" ];
      conflicts = [ "shutdown.target" ];
      serviceConfig = {
        ExecStart = "${pkgs.socat}/bin/socat VSOCK-LISTEN:${toString cfg.port},fork,reuseaddr EXEC:${shell}";
        Restart = "always";
        RestartSec = "100ms";
        # Command stderr the protocol does not capture goes to the console log.
        StandardError = "journal+console";
        KillMode = "process";
        KillSignal = "SIGHUP";
      };
    };
  };
}
