# Evaluates one node's modules the way NixOS would, with the real module
# system: every defined option is forced (conflicting definitions and type
# errors fail here) and every assertion must hold (as system.build.toplevel
# demands). Returns the node's config.
{ lib, modules }:
let
  evaluated = lib.evalModules {
    specialArgs.modulesPath = ./modules;
    modules = [
      ./base.nix
      { _module.args.pkgs = import ./pkgs.nix; }
    ]
    ++ modules;
  };
  inherit (evaluated) config options;
  # _module.args holds the module arguments (pkgs, lazily thrown errors of
  # arguments nobody asked for): not NixOS options.
  defined = builtins.filter (o: o.isDefined && builtins.head o.loc != "_module") (
    lib.collect lib.isOption options
  );
  forced = builtins.foldl' (acc: o: builtins.deepSeq o.value acc) true defined;
  failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
in
if failed != [ ] then
  throw "Failed assertions:\n${lib.concatMapStringsSep "\n" (m: "- ${m}") failed}"
else
  builtins.seq forced config
