# Mirrors nixpkgs nixos/modules/misc/assertions.nix: the options; eval.nix
# fails on a false assertion as system.build.toplevel does.
{ lib, ... }:
{
  options = {
    assertions = lib.mkOption {
      type = lib.types.listOf lib.types.unspecified;
      internal = true;
      default = [ ];
    };
    warnings = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      internal = true;
      default = [ ];
    };
  };
}
