# A complete JSON test config for a two-node nspawn test, made by the same
# code as make-test.nix (nix/backends/nspawn.nix and nix/lib mkTestConfig).
# The script is `test.rhai` next to the config (tests/nix_contract.rs writes it).
let
  l = import ../../nix/lib;
  fake = import ./fake.nix;
  args = {
    pkgs = fake.pkgs;
    attest = "/nix/store/00000000000000000000000000000000-attest";
    name = "nginx-nspawn";
    backend = "nspawn";
    nodes = { server = { }; client = { }; };
    testScript = "";
    globalTimeout = 600;
  };
  a = l.normalizeArgs args;
  backend = import ../../nix/backends/nspawn.nix { inherit (fake) pkgs lib; inherit a; };
  plan = l.ipPlan { inherit (a) nodeNames enableNetwork vlans; };
  systems = builtins.mapAttrs (n: _: fake.nspawnSystem n) a.nodes;
in
l.mkTestConfig {
  inherit (a) name globalTimeout enableNetwork;
  script = "test.rhai";
  vlans = builtins.mapAttrs (n: _: plan.${n}.vlans) a.nodes;
  nodes = builtins.mapAttrs (n: s: {
    inherit (a) backend;
    settings = backend.settings n s (backend.shared systems);
  }) systems;
}
