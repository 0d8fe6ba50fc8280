# Node numbering, vlans, addresses, MACs and /etc/hosts, as NixOS tests have
# them (nixpkgs nixos/lib/testing/network.nix): nodes are numbered 1.. in
# name order, a node gets 192.168.<vlan>.<n> on each of its vlans, and every
# node's /etc/hosts names every node at its first vlan's address.
#
# builtins only.
let
  inherit (builtins)
    attrNames
    concatStringsSep
    elemAt
    genList
    head
    length
    listToAttrs
    map
    stringLength
    substring
    throw
    toString
    ;

  # 0..255 as two lowercase hex digits.
  hexDigits = "0123456789abcdef";
  hexByte =
    n:
    if n < 0 || n > 255 then
      throw "attest: ${toString n} does not fit in a byte (at most 254 nodes and 255 vlans)"
    else
      substring (n / 16) 1 hexDigits + substring (n - (n / 16) * 16) 1 hexDigits;

  # "web-1" -> "web_1", "1st" -> "_st": what the driver binds the node to in
  # the script (src/config.rs `script_name`, the NixOS driver's pythonizeName).
  isWordChar = c: builtins.match "[A-Za-z0-9_]" c != null;
  isDigit = c: builtins.match "[0-9]" c != null;
  scriptName =
    name:
    concatStringsSep "" (
      genList (
        i:
        let
          c = substring i 1 name;
        in
        if !(isWordChar c) || (i == 0 && isDigit c) then "_" else c
      ) (stringLength name)
    );

  # { name = n; } numbering nodes 1.. in (byte-wise) name order, as
  # `attrNames` sorts and as the driver's BTreeMap does.
  nodeNumbers =
    nodeNames:
    let
      sorted = builtins.sort builtins.lessThan nodeNames;
      n = length sorted;
    in
    if n > 254 then
      throw "attest: ${toString n} nodes, but addresses 192.168.<vlan>.<n> allow at most 254"
    else
      listToAttrs (
        genList (i: {
          name = elemAt sorted i;
          value = i + 1;
        }) n
      );

  # Whether the test's nodes get a network: more than one node, or asked for.
  networked = { nodeNames, enableNetwork }: enableNetwork || length nodeNames > 1;

  # A node's vlans after defaults: the explicit list, else [ 1 ] when the test
  # is networked, else none. Same rule as the driver (TestConfig::node_vlans).
  effectiveVlans =
    {
      nodeNames,
      enableNetwork ? false,
      vlans ? { },
    }:
    let
      net = networked { inherit nodeNames enableNetwork; };
      check =
        name: vs:
        if builtins.any (v: !(builtins.isInt v) || v < 1 || v > 255) vs then
          throw "attest: node `${name}`: vlans must be numbers 1..255, got ${builtins.toJSON vs}"
        else
          vs;
    in
    listToAttrs (
      map (name: {
        inherit name;
        value =
          if vlans ? ${name} && vlans.${name} != null then
            check name vlans.${name}
          else if net then
            [ 1 ]
          else
            [ ];
      }) nodeNames
    );

  address = vlan: number: "192.168.${toString vlan}.${toString number}";
  address6 = vlan: number: "2001:db8:${toString vlan}::${toString number}";

  # The QEMU convention (nixpkgs nixos/lib/qemu-common.nix qemuNicMac); the
  # guest names its interfaces by it, so every backend must use it too.
  macAddress = vlan: number: "52:54:00:12:${hexByte vlan}:${hexByte number}";

  # The interface plan of every node:
  #   { name = { number; vlans; interfaces = [ { name; vlan; address;
  #     prefixLength; address6; mac; } ]; primaryAddress; }; }
  # Interfaces are eth1, eth2, … in vlan-list order. NixOS tests
  # use eth1.. (eth0 is QEMU's user-mode NIC); attest keeps that numbering on
  # every backend, so node modules written for NixOS tests work unchanged.
  ipPlan =
    {
      nodeNames,
      enableNetwork ? false,
      vlans ? { },
    }:
    let
      numbers = nodeNumbers nodeNames;
      nodeVlans = effectiveVlans { inherit nodeNames enableNetwork vlans; };
    in
    listToAttrs (
      map (
        name:
        let
          number = numbers.${name};
          vs = nodeVlans.${name};
          interfaces = genList (
            i:
            let
              vlan = elemAt vs i;
            in
            {
              name = "eth${toString (i + 1)}";
              inherit vlan;
              address = address vlan number;
              prefixLength = 24;
              address6 = address6 vlan number;
              prefixLength6 = 64;
              mac = macAddress vlan number;
            }
          ) (length vs);
        in
        {
          inherit name;
          value = {
            inherit number interfaces;
            vlans = vs;
            primaryAddress = if interfaces == [ ] then null else (head interfaces).address;
            primaryAddress6 = if interfaces == [ ] then null else (head interfaces).address6;
          };
        }
      ) (builtins.sort builtins.lessThan nodeNames)
    );

  # [ { address; name; } ] for every node with a network, in node order:
  # the IPv4 and the IPv6 address of its first vlan (the driver's
  # TestConfig::hosts_entries).
  hostsEntries =
    plan:
    builtins.concatMap (
      name:
      let
        p = plan.${name};
      in
      if p.primaryAddress == null then
        [ ]
      else
        [
          {
            address = p.primaryAddress;
            inherit name;
          }
          {
            address = p.primaryAddress6;
            inherit name;
          }
        ]
    ) (attrNames plan);

  # The /etc/hosts lines NixOS tests add (IPv4 and IPv6 per node).
  hostsFile =
    plan: concatStringsSep "" (map (e: "${e.address} ${e.name}\n") (hostsEntries plan));
in
{
  inherit
    hexByte
    scriptName
    nodeNumbers
    networked
    effectiveVlans
    address
    address6
    macAddress
    ipPlan
    hostsEntries
    hostsFile
    ;
}
