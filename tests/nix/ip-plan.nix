# The IP plan: vlan defaults, addresses 192.168.<vlan>.<n>, interface names
# eth1.. in vlan order, MACs in the QEMU scheme.
let
  l = import ../../nix/lib;
  plan = l.ipPlan {
    nodeNames = [ "server" "client" "router" ];
    vlans.router = [ 1 2 ];
  };
  single = l.ipPlan { nodeNames = [ "machine" ]; };
  singleNet = l.ipPlan { nodeNames = [ "machine" ]; enableNetwork = true; };
in
assert plan.client.number == 1 && plan.router.number == 2 && plan.server.number == 3;
assert plan.server.vlans == [ 1 ];
assert map (i: i.address) plan.router.interfaces == [ "192.168.1.2" "192.168.2.2" ];
assert map (i: i.name) plan.router.interfaces == [ "eth1" "eth2" ];
assert (builtins.head plan.server.interfaces).mac == "52:54:00:12:01:03";
assert plan.router.primaryAddress == "192.168.1.2";
assert single.machine.vlans == [ ] && single.machine.primaryAddress == null;
assert singleNet.machine.vlans == [ 1 ];
{
  inherit plan single singleNet;
  tryBadVlan = (builtins.tryEval (builtins.deepSeq (l.effectiveVlans {
    nodeNames = [ "a" ];
    vlans.a = [ 0 ];
  }) true)).success;
}
