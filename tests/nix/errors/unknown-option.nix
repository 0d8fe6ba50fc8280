# expect: attest make-test: unknown option(s) nodess
# make-test.nix must reach its own option check (nix/lib/options.nix) for a
# misspelt option, not stop at Nix's "called with unexpected argument".
import ../../../nix/make-test.nix {
  pkgs = { };
  attest = "/nix/store/00000000000000000000000000000000-attest";
  name = "typo";
  nodess.machine = { };
  nodes.machine = { };
  testScript = "";
}
