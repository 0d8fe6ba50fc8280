# make-test.nix with `backend = "qemu"`; every other option as in ../make-test.nix.
args: import ../make-test.nix ({ backend = "qemu"; } // args)
