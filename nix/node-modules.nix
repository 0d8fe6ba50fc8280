# The modules attest adds to one node's NixOS configuration, whatever
# evaluates it: make-test.nix (nixpkgs' eval-config) and nix/check (nixpkgs'
# lib.evalModules with the stand-ins in tests/nix/nixos). builtins only.
#
#   import ./node-modules.nix { backend; nodeName; plan; hosts; debugBoot; splitStore; agentBinary; }
#   -> [ module ]
{
  backend,
  nodeName,
  plan,
  hosts,
  debugBoot ? false,
  splitStore ? false,
  # The attest-agent binary to ship in the node (modules/agent.nix), or null.
  agentBinary ? null,
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
  ./modules/agent.nix
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
      agent.binary = agentBinary;
    };
  }
]
++ (if isMicroVm then [ { attest.microvm.splitStore = splitStore; } ] else [ ])
