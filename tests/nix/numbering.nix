# Node numbering and script names, as NixOS tests and the driver have them.
let
  l = import ../../nix/lib;
  numbers = l.nodeNumbers [ "server" "client" "web-1" "Zeta" "1st" ];
  names = map l.scriptName [ "server" "web-1" "1st" "a.b" ];
in
# byte-wise name order: "1st" < "Zeta" < "client" < "server" < "web-1"
assert numbers == { "1st" = 1; Zeta = 2; client = 3; server = 4; "web-1" = 5; };
assert names == [ "server" "web_1" "_st" "a_b" ];
{ inherit numbers names; }
