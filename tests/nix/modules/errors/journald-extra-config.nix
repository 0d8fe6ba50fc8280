# expect: The option definition `services.journald.extraConfig' in
# The stand-ins catch what nixpkgs rejects: journald's extraConfig is removed.
{ nixpkgsLib }:
(import ../../nixos/node.nix { inherit nixpkgsLib; }).evalNode {
  backend = "firecracker";
  nodeName = "c";
  extra = [ { services.journald.extraConfig = "Storage=volatile"; } ];
}
