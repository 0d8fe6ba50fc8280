# /etc/hosts: every networked node at its first vlan's address (IPv4 and IPv6).
let
  l = import ../../nix/lib;
  plan = l.ipPlan {
    nodeNames = [ "server" "client" "router" ];
    vlans.router = [ 2 1 ];
  };
  file = l.hostsFile plan;
in
assert file == ''
  192.168.1.1 client
  2001:db8:1::1 client
  192.168.2.2 router
  2001:db8:2::2 router
  192.168.1.3 server
  2001:db8:1::3 server
'';
assert l.hostsEntries plan == [
  { address = "192.168.1.1"; name = "client"; }
  { address = "2001:db8:1::1"; name = "client"; }
  { address = "192.168.2.2"; name = "router"; }
  { address = "2001:db8:2::2"; name = "router"; }
  { address = "192.168.1.3"; name = "server"; }
  { address = "2001:db8:1::3"; name = "server"; }
];
{ inherit file; entries = l.hostsEntries plan; }
