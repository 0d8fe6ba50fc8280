# The nixpkgs packages and builders attest's guest modules name, as store
# path strings: evaluation needs their names, never their contents.
let
  path = name: "/nix/store/00000000000000000000000000000000-${name}";
  pkg = name: path name;
in
{
  writeShellScript = name: _text: path name;
  writeText = name: _text: path name;
  writeShellScriptBin = name: _text: path name;
  socat = pkg "socat";
  coreutils = pkg "coreutils";
  bashNonInteractive = pkg "bash";
  bash = pkg "bash";
  iproute2 = pkg "iproute2";
  nix = pkg "nix";
}
