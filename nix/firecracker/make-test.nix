# make-test.nix with `backend = "firecracker"`; every other option as in ../make-test.nix.
args: import ../make-test.nix ({ backend = "firecracker"; } // args)
