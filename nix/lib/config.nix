# The JSON test config (version 1) the driver reads: src/config.rs is the
# schema. The driver rejects unknown fields, so only known keys are emitted;
# a key it does not know is an evaluation error here, not a run-time one.
# builtins only.
{ network }:
let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    isAttrs
    listToAttrs
    map
    throw
    ;

  version = 1;

  # Keys each backend accepts (NspawnConfig, QemuConfig, MicroVmConfig).
  backendKeys = rec {
    nspawn = [
      "image"
      "rootfs"
      "extra_args"
    ];
    qemu = [
      "start_script"
      "image"
      "kernel"
      "initrd"
      "disk"
      "cmdline"
      "memory_mib"
      "cpus"
      "accel"
      "enable_ocr"
      "extra_args"
      "qemu_binary"
    ];
    firecracker = [
      "image"
      "kernel"
      "initrd"
      "disk"
      "cmdline"
      "memory_mib"
      "cpus"
      "binary"
      "options"
    ];
    cloud-hypervisor = firecracker;
  };

  dropNulls =
    set:
    listToAttrs (
      map (n: {
        name = n;
        value = set.${n};
      }) (filter (n: set.${n} != null) (attrNames set))
    );

  backendSettings =
    node: backend: settings:
    let
      allowed =
        backendKeys.${backend}
          or (throw "attest: node `${node}`: unknown backend `${backend}`; use one of ${concatStringsSep ", " (attrNames backendKeys)}");
      s = dropNulls settings;
      bad = filter (k: !(builtins.elem k allowed)) (attrNames s);
    in
    if bad != [ ] then
      throw "attest: node `${node}` (${backend}): unknown setting(s) ${concatStringsSep ", " bad}; the driver accepts ${concatStringsSep ", " allowed}"
    else
      s;

  # mkTestConfig {
  #   name; script;                  # script: path string, absolute or relative to the config
  #   globalTimeout ? 3600; enableNetwork ? false;
  #   vlans ? { };                    # node -> [ vlan ], overrides the default
  #   bootTimeout ? null;             # seconds, for every node
  #   nodes = { <name> = { backend = "qemu"; settings = { start_script = ...; }; bootTimeout ? null; }; };
  # }
  # -> the config as a Nix value; builtins.toJSON makes the file.
  mkTestConfig =
    {
      name,
      script,
      nodes,
      globalTimeout ? 3600,
      enableNetwork ? false,
      vlans ? { },
      bootTimeout ? null,
    }:
    let
      nodeNames = attrNames nodes;
      nodeVlans = network.effectiveVlans { inherit nodeNames enableNetwork vlans; };
      checkNames =
        let
          idents = map network.scriptName nodeNames;
          dups = filter (i: builtins.length (filter (j: j == i) idents) > 1) idents;
        in
        if !(isAttrs nodes) || nodeNames == [ ] then
          throw "attest: `nodes` is empty: a test needs at least one node"
        else if dups != [ ] then
          throw "attest: several nodes map to the script name `${builtins.head dups}`: rename one"
        else
          true;
      node =
        n:
        let
          spec = nodes.${n};
          timeout = spec.bootTimeout or bootTimeout;
        in
        {
          vlans = nodeVlans.${n};
          backend = {
            ${spec.backend} = backendSettings n spec.backend (spec.settings or { });
          };
        }
        // (if timeout == null then { } else { boot_timeout = timeout; });
    in
    assert checkNames;
    {
      inherit version name;
      script = toString script;
      global_timeout = globalTimeout;
      enable_network = enableNetwork;
      nodes = listToAttrs (
        map (n: {
          name = n;
          value = node n;
        }) nodeNames
      );
    };
in
{
  inherit version backendKeys mkTestConfig;
}
