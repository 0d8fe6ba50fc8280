# The attest guest agent shipped in the node's closure, so the driver need
# not upload it each boot. The driver's bootstrap asks the backdoor shell for
# /run/attest/agent-<first 16 hex digits of its SHA-256> and, when it is
# there and executable, skips the upload and `exec`s it (after a `--version`
# probe), exactly as for an agent it uploaded itself earlier in the boot.
# This unit puts that link in place before any backdoor starts. A binary of
# another attest build has another hash: the driver then uploads its own,
# so a mismatch costs time, never correctness.
{ config, lib, pkgs, ... }:
let
  cfg = config.attest.agent;
in
{
  options.attest.agent.binary = lib.mkOption {
    type = lib.types.nullOr lib.types.path;
    default = null;
    example = lib.literalExpression ''"''${attest}/libexec/attest/attest-agent"'';
    description = "The attest-agent binary to offer the driver (null: it uploads its own).";
  };

  config = lib.mkIf (cfg.binary != null) {
    systemd.services.attest-agent-link = {
      description = "attest guest agent in /run/attest";
      wantedBy = [ "sysinit.target" ];
      before = [
        "attest-backdoor.service"
        "attest-backdoor-vsock.service"
        "backdoor.service"
      ];
      unitConfig.DefaultDependencies = false;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      script = ''
        set -eu
        bin=${cfg.binary}
        [ -s "$bin" ] || exit 0
        hash=$(${pkgs.coreutils}/bin/sha256sum <"$bin" | ${pkgs.coreutils}/bin/cut -c1-16)
        ${pkgs.coreutils}/bin/mkdir -p /run/attest
        ${pkgs.coreutils}/bin/ln -sfn "$bin" "/run/attest/agent-$hash"
      '';
    };
  };
}
