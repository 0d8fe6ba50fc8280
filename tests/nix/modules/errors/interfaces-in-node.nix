# expect: virtualisation.interfaces is not supported
{ nixpkgsLib }:
(import ../../nixos/node.nix { inherit nixpkgsLib; }).evalNode {
  backend = "nspawn";
  nodeName = "b";
  extra = [ { virtualisation.interfaces.enp1s0.vlan = 1; } ];
}
