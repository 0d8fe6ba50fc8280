# The modules attest adds to one node's NixOS configuration, whatever
# evaluates it: make-test.nix (nixpkgs' eval-config) and nix/check (nixpkgs'
# lib.evalModules with the stand-ins in tests/nix/nixos). builtins only.
#
#   import ./node-modules.nix { backend; nodeName; plan; hosts; debugBoot; splitStore; }
#   -> [ module ]
{
  backend,
  nodeName,
  plan,
  hosts,
  debugBoot ? false,
  splitStore ? false,
}:
let
  isMicroVm = backend == "firecracker" || backend == "cloud-hypervisor";
  backendModule =
    {
      qemu = ./modules/qemu.nix;
      nspawn = ./modules/nspawn.nix;
      firecracker = ./modules/microvm.nix;
      cloud-hypervisor = ./modules/microvm.nix;
    }
    .${backend};
  p = plan.${nodeName};
in
[
  ./modules/node.nix
  backendModule
  {
    attest = {
      inherit
        nodeName
        backend
        debugBoot
        hosts
        ;
      nodeNumber = p.number;
      inherit (p) vlans interfaces;
    };
  }
]
++ (if isMicroVm then [ { attest.microvm.splitStore = splitStore; } ] else [ ])
