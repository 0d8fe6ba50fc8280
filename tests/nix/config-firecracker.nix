# A complete JSON test config for a two-node firecracker test with the split
# store, made by the same code as make-test.nix (nix/backends/microvm.nix).
let
  l = import ../../nix/lib;
  fake = import ./fake.nix;
  args = {
    pkgs = fake.pkgs;
    attest = "/nix/store/00000000000000000000000000000000-attest";
    name = "network-firecracker";
    backend = "firecracker";
    nodes = { server = { }; client = { }; };
    testScript = "";
    splitStore = true;
  };
  a = l.normalizeArgs args;
  backend = import ../../nix/backends/microvm.nix {
    inherit (fake) pkgs lib;
    inherit a;
    vmm = "firecracker";
  };
  plan = l.ipPlan { inherit (a) nodeNames enableNetwork vlans; };
  systems = builtins.mapAttrs (n: _: fake.microvmSystem n) a.nodes;
  shared = backend.shared systems;
in
l.mkTestConfig {
  inherit (a) name globalTimeout enableNetwork;
  script = "test.rhai";
  vlans = builtins.mapAttrs (n: _: plan.${n}.vlans) a.nodes;
  nodes = builtins.mapAttrs (n: s: {
    inherit (a) backend;
    settings = backend.settings n s shared;
  }) systems;
}
