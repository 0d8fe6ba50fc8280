# make-test.nix with `backend = "cloud-hypervisor"`; every other option as in ../make-test.nix.
args: import ../make-test.nix ({ backend = "cloud-hypervisor"; } // args)
