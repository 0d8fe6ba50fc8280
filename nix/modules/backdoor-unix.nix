# The attest backdoor for nspawn containers: a root bash on the unix socket
# /run/backdoor/shell.sock. The driver bind-mounts a host directory on
# /run/backdoor (systemd-nspawn --bind=<host dir>:/run/backdoor) and connects
# to the socket from the host. Every connection gets its own shell, which
# first prints the same banner as nixpkgs' test-instrumentation.nix.
{ config, lib, pkgs, ... }:
let
  cfg = config.attest.backdoor.unix;
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
  options.attest.backdoor.unix = {
    enable = lib.mkEnableOption "the attest backdoor root shell on a unix socket" // {
      default = true;
    };
    directory = lib.mkOption {
      type = lib.types.str;
      default = "/run/backdoor";
      description = "Directory the driver bind-mounts from the host; the socket is `shell.sock` in it.";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.attest-backdoor = {
      description = "attest backdoor root shell on ${cfg.directory}/shell.sock";
      wantedBy = [ "multi-user.target" ];
      unitConfig = {
        DefaultDependencies = false;
        ConditionVirtualization = "container";
      };
      after = [ "local-fs.target" ];
      before = [ "shutdown.target" ];
      conflicts = [ "shutdown.target" ];
      serviceConfig = {
        # The directory is normally the host's bind mount; create it if the
        # container was started without one (then only nsenter can reach us).
        ExecStartPre = "${pkgs.coreutils}/bin/mkdir -p ${cfg.directory}";
        ExecStart = "${pkgs.socat}/bin/socat UNIX-LISTEN:${cfg.directory}/shell.sock,fork,unlink-early,mode=0600 EXEC:${shell}";
        Restart = "always";
        RestartSec = "100ms";
        StandardError = "journal+console";
        KillMode = "process";
        KillSignal = "SIGHUP";
      };
    };
  };
}
