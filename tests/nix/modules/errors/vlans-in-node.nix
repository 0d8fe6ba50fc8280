# expect: set the node's vlans with make-test.nix's `vlans` argument
# virtualisation.vlans in a node module is not read by attest: an assertion says so.
{ nixpkgsLib }:
(import ../../nixos/node.nix { inherit nixpkgsLib; }).evalNode {
  backend = "qemu";
  nodeName = "a";
  extra = [ { virtualisation.vlans = [ 3 ]; } ];
}
