# attest's pure Nix logic: node numbering, the IP plan, /etc/hosts, vlan
# defaults, option defaults and the JSON test config (version 1).
#
# Only `builtins` are used, so this file evaluates without nixpkgs
# (`nix-instantiate --eval --strict` in tests/nix/ and nix/check). Everything
# that needs nixpkgs (NixOS evaluation, images, derivations) lives elsewhere
# and calls in here.
let
  network = import ./network.nix;
  config = import ./config.nix { inherit network; };
  options = import ./options.nix;
in
network // config // options
