# One node of a three-node test (a: vlan 1, b: vlans 1 2, c: vlan 2),
# evaluated as make-test.nix evaluates it (nix/node-modules.nix, then a
# module written for NixOS tests, then `extra`), with nixpkgs' module system
# and the stand-ins here. Used by tests/nix/modules/.
{ nixpkgsLib }:
let
  lib = import (/. + nixpkgsLib);
  attest = import ../../../nix/lib;
  nodeNames = [
    "a"
    "b"
    "c"
  ];
  vlans = {
    a = [ 1 ];
    b = [
      1
      2
    ];
    c = [ 2 ];
  };
  plan = attest.ipPlan { inherit nodeNames vlans; };
  hosts = attest.hostsFile plan;

  # What a node module from a NixOS test reads.
  nixosTestModule =
    { config, ... }:
    {
      environment.etc."attest-check".text =
        "${config.networking.primaryIPAddress} ${config.networking.primaryIPv6Address} "
        + "${config.virtualisation.test.nodeName} ${toString config.virtualisation.test.nodeNumber}";
    };
in
{
  inherit lib nodeNames plan;
  evalNode =
    {
      backend,
      nodeName,
      splitStore ? false,
      debugBoot ? false,
      agentBinary ? null,
      extra ? [ ],
    }:
    import ./eval.nix {
      inherit lib;
      modules =
        import ../../../nix/node-modules.nix {
          inherit
            backend
            nodeName
            plan
            hosts
            splitStore
            debugBoot
            agentBinary
            ;
        }
        ++ [ nixosTestModule ]
        ++ extra;
    };
}
