# expect: vlans must be numbers 1..255
import ../../../nix/make-test.nix {
  pkgs = { };
  attest = "/nix/store/00000000000000000000000000000000-attest";
  name = "vlan0";
  nodes.machine = { };
  vlans.machine = [ 0 ];
  testScript = "";
}
