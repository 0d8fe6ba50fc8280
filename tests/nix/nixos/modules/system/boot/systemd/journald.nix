# Mirrors nixpkgs nixos/modules/system/boot/systemd/journald.nix as of
# nixos-unstable: journald.conf comes from `settings` (sections of keys), and
# `extraConfig` is removed (mkRemovedOptionModule: any definition is an
# assertion failure).
{ lib, ... }:
let
  inherit (lib) types;
  value = types.oneOf [
    types.bool
    types.int
    types.str
    (types.listOf types.str)
  ];
in
{
  imports = [
    (lib.mkRemovedOptionModule [
      "services"
      "journald"
      "extraConfig"
    ] "Use services.journald.settings.Journal instead.")
  ];

  options.services.journald = {
    settings = lib.mkOption {
      type = types.submodule { freeformType = types.attrsOf (types.attrsOf value); };
      default = { };
    };
    storage = lib.mkOption {
      type = types.enum [
        "persistent"
        "volatile"
        "auto"
        "none"
      ];
      default = "persistent";
    };
  };
}
