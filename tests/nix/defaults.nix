# make-test.nix option defaults and the checks that need no nixpkgs.
let
  l = import ../../nix/lib;
  base = {
    pkgs = { };
    attest = "/nix/store/00000000000000000000000000000000-attest";
    name = "t";
    nodes.machine = { };
    testScript = "start_all();";
  };
  a = l.normalizeArgs base;
  fails = args: !(builtins.tryEval (builtins.deepSeq (l.normalizeArgs (base // args)) true)).success;
in
assert a.backend == "qemu" && a.globalTimeout == 3600 && a.enableNetwork == false;
assert a.splitStore == false && a.debugBoot == false && a.enableOCR == false;
assert a.interactive == false && a.snapshots == false && a.vlans == { } && a.nodeNames == [ "machine" ];
assert fails { backend = "vbox"; };
assert fails { bogus = 1; };
assert fails { splitStore = true; }; # qemu
assert !(fails { splitStore = true; backend = "firecracker"; });
assert fails { enableOCR = true; backend = "nspawn"; };
assert fails { snapshots = true; backend = "nspawn"; };
assert fails { vlans.nobody = [ 1 ]; };
assert fails { globalTimeout = 0; };
assert fails { nodes = { }; };
{
  defaults = removeAttrs a [ "pkgs" "nodes" ];
}
