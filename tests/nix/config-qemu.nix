# A complete JSON test config for a two-node QEMU test, made by the same code
# as make-test.nix (nix/backends/qemu.nix and nix/lib mkTestConfig).
let
  l = import ../../nix/lib;
  fake = import ./fake.nix;
  args = {
    pkgs = fake.pkgs;
    attest = "/nix/store/00000000000000000000000000000000-attest";
    name = "nginx-qemu";
    backend = "qemu";
    nodes = { server = { }; client = { }; };
    testScript = "";
    globalTimeout = 600;
    bootTimeout = 120;
  };
  a = l.normalizeArgs args;
  backend = import ../../nix/backends/qemu.nix { inherit (fake) pkgs lib; inherit a; };
  plan = l.ipPlan { inherit (a) nodeNames enableNetwork vlans; };
  systems = builtins.mapAttrs (n: _: fake.qemuSystem n) a.nodes;
in
l.mkTestConfig {
  inherit (a) name globalTimeout enableNetwork bootTimeout;
  script = "test.rhai";
  vlans = builtins.mapAttrs (n: _: plan.${n}.vlans) a.nodes;
  nodes = builtins.mapAttrs (n: s: {
    inherit (a) backend;
    settings = backend.settings n s (backend.shared systems);
  }) systems;
}
