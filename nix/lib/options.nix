# make-test.nix options: names, defaults, and the checks that need no
# nixpkgs. builtins only.
let
  inherit (builtins)
    attrNames
    concatStringsSep
    elem
    filter
    isAttrs
    isBool
    isFunction
    isInt
    isFloat
    isPath
    isString
    throw
    toJSON
    ;

  backends = [
    "qemu"
    "firecracker"
    "cloud-hypervisor"
    "nspawn"
  ];

  # Backends that boot a VM (need /dev/kvm and the `kvm` system feature).
  isVmBackend = backend: backend != "nspawn";
  isMicroVmBackend = backend: backend == "firecracker" || backend == "cloud-hypervisor";

  # Every option of make-test.nix with its default. `null` means required.
  optionDefaults = {
    pkgs = null;
    attest = null;
    name = null;
    nodes = null;
    testScript = null;
    backend = "qemu";
    defaults = { };
    vlans = { };
    enableNetwork = false;
    globalTimeout = 3600;
    bootTimeout = null;
    splitStore = false;
    debugBoot = false;
    enableOCR = false;
    interactive = false;
    snapshots = false;
    extraBackendSettings = { };
  };

  required = filter (n: optionDefaults.${n} == null && n != "bootTimeout") (attrNames optionDefaults);

  fail = msg: throw "attest make-test: ${msg}";
  isNumber = v: isInt v || isFloat v;

  # Fills in defaults and rejects what cannot work, with a message that says
  # what to do. `args` is what the user passed to make-test.nix.
  normalizeArgs =
    args:
    let
      unknown = filter (n: !(optionDefaults ? ${n})) (attrNames args);
      missing = filter (n: !(args ? ${n})) required;
      a = optionDefaults // args;
      nodeNames = attrNames a.nodes;
      checks = [
        {
          ok = unknown == [ ];
          msg = "unknown option(s) ${concatStringsSep ", " unknown}; known: ${concatStringsSep ", " (attrNames optionDefaults)}";
        }
        {
          ok = missing == [ ];
          msg = "missing option(s) ${concatStringsSep ", " missing}";
        }
        {
          ok = isString a.name && a.name != "";
          msg = "`name` must be a non-empty string";
        }
        {
          ok = isAttrs a.nodes && nodeNames != [ ];
          msg = "`nodes` must be an attribute set with at least one node";
        }
        {
          ok = isString a.testScript || isPath a.testScript;
          msg = "`testScript` must be a string (the Rhai script) or a path to a .rhai file";
        }
        {
          ok = elem a.backend backends;
          msg = "`backend` is ${toJSON a.backend}; use one of ${concatStringsSep ", " backends}";
        }
        {
          ok = isAttrs a.vlans && filter (n: !(a.nodes ? ${n})) (attrNames a.vlans) == [ ];
          msg = "`vlans` names nodes that do not exist: ${concatStringsSep ", " (filter (n: !(a.nodes ? ${n})) (attrNames a.vlans))}";
        }
        {
          ok =
            isAttrs a.vlans
            && builtins.all (
              n:
              a.vlans.${n} == null
              || (builtins.isList a.vlans.${n} && builtins.all (v: isInt v && v >= 1 && v <= 255) a.vlans.${n})
            ) (attrNames a.vlans);
          msg = "`vlans`: vlans must be numbers 1..255, got ${toJSON a.vlans}";
        }
        {
          ok = isBool a.enableNetwork;
          msg = "`enableNetwork` must be true or false";
        }
        {
          ok = isNumber a.globalTimeout && a.globalTimeout > 0;
          msg = "`globalTimeout` must be a positive number of seconds";
        }
        {
          ok = a.bootTimeout == null || (isNumber a.bootTimeout && a.bootTimeout > 0);
          msg = "`bootTimeout` must be null or a positive number of seconds";
        }
        {
          ok = isBool a.splitStore && (!a.splitStore || isMicroVmBackend a.backend);
          msg = "`splitStore` works with the firecracker and cloud-hypervisor backends only (backend is ${a.backend}); QEMU nodes use the host store over 9p, nspawn nodes bind-mount it";
        }
        {
          ok = isBool a.enableOCR && (!a.enableOCR || a.backend == "qemu");
          msg = "`enableOCR` needs a screen: only the qemu backend has one (backend is ${a.backend})";
        }
        {
          ok = isBool a.snapshots && (!a.snapshots || isVmBackend a.backend);
          msg = "`snapshots` are not supported by the nspawn backend";
        }
        {
          ok = isBool a.debugBoot && isBool a.interactive;
          msg = "`debugBoot` and `interactive` must be true or false";
        }
        {
          ok = isAttrs a.defaults || isFunction a.defaults || isPath a.defaults;
          msg = "`defaults` must be a NixOS module (attribute set, function or path)";
        }
        {
          ok = isAttrs a.extraBackendSettings;
          msg = "`extraBackendSettings` must be an attribute set (node name -> backend settings)";
        }
      ];
      failed = filter (c: !c.ok) checks;
    in
    if failed != [ ] then fail (builtins.head failed).msg else a // { inherit nodeNames; };
in
{
  inherit
    backends
    isVmBackend
    isMicroVmBackend
    optionDefaults
    normalizeArgs
    ;
}
