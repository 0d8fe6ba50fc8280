# Every guest module, for every backend, evaluated with nixpkgs' real module
# system (lib.evalModules) against the NixOS stand-ins in ../nixos: option
# types, conflicting definitions, removed options and assertions fail here
# as they would in a NixOS evaluation. Nodes a (vlan 1), b (vlans 1 2) and
# c (vlan 2), each with a module written for NixOS tests that reads
# networking.primaryIPAddress and virtualisation.test.nodeNumber.
#
#   nix-instantiate --eval --strict --json --argstr nixpkgsLib <nixpkgs>/lib tests/nix/modules/guests.nix
#
# Evaluates to the per-backend network plan as the guests see it, which
# tests/nix_contract.rs compares with what the Rust backends create.
{ nixpkgsLib }:
let
  inherit (import ../nixos/node.nix { inherit nixpkgsLib; })
    lib
    nodeNames
    plan
    evalNode
    ;

  backends = [
    "qemu"
    "nspawn"
    "firecracker"
    "cloud-hypervisor"
  ];

  positional = prefix: vs: lib.genList (i: "${prefix}${toString (i + 1)}") (builtins.length vs);

  # `-device virtio-net-pci,netdev=<id>,mac=<mac>` -> { id; mac; }
  qemuNics =
    options:
    lib.concatMap (
      o:
      let
        m = builtins.match "-device virtio-net-pci,netdev=([^,]+),mac=([0-9a-f:]+)" o;
      in
      if m == null then
        [ ]
      else
        [
          {
            netdevId = builtins.elemAt m 0;
            mac = builtins.elemAt m 1;
          }
        ]
    ) options;

  # udev rules `ATTR{address}=="<mac>", NAME="<name>"` -> { mac; name; }
  udevNames =
    rules:
    lib.concatMap (
      l:
      let
        m = builtins.match ''.*ATTR\{address}=="([0-9a-f:]+)".*NAME="([^"]+)".*'' l;
      in
      if m == null then
        [ ]
      else
        [
          {
            mac = builtins.elemAt m 0;
            name = builtins.elemAt m 1;
          }
        ]
    ) (lib.splitString "\n" rules);

  summary =
    backend: nodeName:
    let
      c = evalNode { inherit backend nodeName; };
      p = plan.${nodeName};
    in
    assert c.networking.primaryIPAddress == p.primaryAddress;
    assert c.networking.primaryIPv6Address == p.primaryAddress6;
    assert c.virtualisation.test.nodeNumber == p.number;
    assert c.virtualisation.test.nodeName == nodeName;
    assert lib.hasInfix "${p.primaryAddress6} ${nodeName}\n" c.networking.extraHosts;
    assert c.networking.usePredictableInterfaceNames == false;
    assert c.services.journald.settings.Journal.ForwardToConsole == true;
    # NixOS numbering, independent of the plan code: vlan interfaces are
    # eth1, eth2, … and QEMU netdevs vlan1, vlan2, … by position
    # (qemu-common.nix qemuNICFlags), whatever the vlan numbers.
    assert builtins.attrNames c.networking.interfaces == positional "eth" p.vlans;
    assert
      backend != "qemu"
      || map (n: n.netdevId) (qemuNics c.virtualisation.qemu.options) == positional "vlan" p.vlans;
    assert
      backend != "qemu"
      || map (n: n.mac) (qemuNics c.virtualisation.qemu.options) == map (i: i.mac) p.interfaces;
    {
      interfaces = map (i: {
        inherit (i) name vlan mac;
        ipv4 = i.address;
        ipv6 = i.address6;
        configured =
          let
            ni = c.networking.interfaces.${i.name};
          in
          {
            ipv4 = map (x: "${x.address}/${toString x.prefixLength}") ni.ipv4.addresses;
            ipv6 = map (x: "${x.address}/${toString x.prefixLength}") ni.ipv6.addresses;
          };
      }) p.interfaces;
      configuredNames = builtins.attrNames c.networking.interfaces;
      hosts = c.networking.extraHosts;
      qemuNics = if backend == "qemu" then qemuNics c.virtualisation.qemu.options else [ ];
      udevNames = udevNames c.services.udev.extraRules;
      initrdUdevNames = udevNames c.boot.initrd.services.udev.rules;
    };

  nodes = backend: lib.genAttrs nodeNames (summary backend);

  # The variants make-test.nix can produce beyond the defaults.
  variants = {
    splitStore = evalNode {
      backend = "firecracker";
      nodeName = "a";
      splitStore = true;
    };
    debugBoot = evalNode {
      backend = "cloud-hypervisor";
      nodeName = "b";
      debugBoot = true;
    };
    nspawnDebug = evalNode {
      backend = "nspawn";
      nodeName = "c";
      debugBoot = true;
    };
    # make-test.nix ships the package's agent in every node.
    shippedAgent = evalNode {
      backend = "qemu";
      nodeName = "a";
      agentBinary = "/nix/store/00000000000000000000000000000000-attest/libexec/attest/attest-agent";
    };
  };
  variantsOk =
    assert variants.splitStore.fileSystems."/nix/store".overlay.lowerdir == [ "/nix/.ro-store" ];
    assert builtins.elem "systemd.log_level=debug" variants.debugBoot.boot.kernelParams;
    assert variants.nspawnDebug.boot.isContainer;
    assert
      let
        unit = variants.shippedAgent.systemd.services.attest-agent-link;
      in
      lib.hasInfix "/run/attest/agent-$hash" unit.script
      && builtins.elem "backdoor.service" unit.before
      && builtins.elem "sysinit.target" unit.wantedBy;
    assert !(variants.splitStore.systemd.services ? attest-agent-link);
    true;
in
assert variantsOk;
{
  inherit plan;
  backends = lib.genAttrs backends nodes;
}
