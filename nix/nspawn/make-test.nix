# make-test.nix with `backend = "nspawn"`; every other option as in ../make-test.nix.
args: import ../make-test.nix ({ backend = "nspawn"; } // args)
