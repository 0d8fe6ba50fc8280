# Mirrors nixpkgs nixos/modules/virtualisation/container-config.nix (always
# imported by NixOS): the defaults it sets for containers, at the priority it
# sets them, so a module that sets the opposite at the same priority fails
# here as it does on NixOS ("conflicting definition values").
{ config, lib, ... }:
{
  config = lib.mkIf config.boot.isContainer {
    console.enable = lib.mkDefault false;
    documentation.nixos.enable = lib.mkDefault false;
    networking.useHostResolvConf = lib.mkDefault true;
    services.openssh.startWhenNeeded = lib.mkDefault true;
    security.audit.enable = false;
  };
}
