//! The network plan on real nspawn containers (Debian test image): vlan
//! interfaces are eth1, eth2, … as in NixOS tests, each with
//! `192.168.<vlan>.<n>/24`, `2001:db8:<vlan>::<n>/64` and a link-local
//! address, and `/etc/hosts` names every node in both families.
//! Needs root and `images/debian/build`.

mod harness;

use std::time::Duration;

use attest::exit_code::PASSED;
use harness::{assert_nothing_left, attest, image_manifest, TestDir};

/// Nodes a (1, vlan 1), b (2, vlans 1 and 2), c (3, vlan 2).
fn three_nodes_on_two_vlans(name: &str, script: &str) -> TestDir {
    let image = image_manifest();
    let node = |vlans: &str| {
        format!(
            r#"{{"vlans":{vlans},"backend":{{"nspawn":{{"image":"{}"}}}}}}"#,
            image.display()
        )
    };
    TestDir::new(
        name,
        &format!(
            r#"{{"a":{},"b":{},"c":{}}}"#,
            node("[1]"),
            node("[1,2]"),
            node("[2]")
        ),
        "",
        script,
    )
}

#[test]
fn vlans_have_ipv4_ipv6_link_local_and_hosts_in_both_families() {
    let dir = three_nodes_on_two_vlans(
        "ipv6",
        r#"
start_all();
wait_all([a, b, c], |m| m.wait_for_unit("multi-user.target"));

subtest("interface names and addresses", || {
    assert_matches(b.succeed("ip -4 -o addr show dev eth1"), "inet 192\\.168\\.1\\.2/24");
    assert_matches(b.succeed("ip -6 -o addr show dev eth1 scope global"), "inet6 2001:db8:1::2/64");
    assert_matches(b.succeed("ip -4 -o addr show dev eth2"), "inet 192\\.168\\.2\\.2/24");
    assert_matches(b.succeed("ip -6 -o addr show dev eth2 scope global"), "inet6 2001:db8:2::2/64");
    b.fail("ip link show dev eth0");
    assert_matches(c.succeed("ip -6 -o addr show dev eth1 scope global"), "inet6 2001:db8:2::3/64");
});

subtest("link-local on every vlan interface", || {
    for m in [a, b, c] {
        m.wait_until_succeeds("ip -6 -o addr show dev eth1 scope link | grep -q 'inet6 fe80::'", #{ timeout: 30 });
    }
    b.wait_until_succeeds("ip -6 -o addr show dev eth2 scope link | grep -q 'inet6 fe80::'", #{ timeout: 30 });
    let ll = b.succeed("ip -6 -o addr show dev eth1 scope link | sed -n 's/.*inet6 \\(fe80::[0-9a-f:]*\\)\\/64.*/\\1/p' | tr -d '\\n'");
    assert_matches(ll, "^fe80::[0-9a-f:]+$");
    a.wait_until_succeeds(`ping -6 -c1 -W2 ${ll}%eth1`, #{ timeout: 30 });
});

subtest("IPv6 between nodes, by address and by name", || {
    a.wait_until_succeeds("ping -6 -c1 -W2 2001:db8:1::2", #{ timeout: 30 });
    c.wait_until_succeeds("ping -6 -c1 -W2 2001:db8:2::2", #{ timeout: 30 });
    assert_eq(a.succeed("getent ahostsv6 b | awk 'NR==1 {print $1}'"), "2001:db8:1::2\n");
    assert_eq(a.succeed("getent ahostsv4 b | awk 'NR==1 {print $1}'"), "192.168.1.2\n");
    assert_eq(a.succeed("getent ahostsv6 c | awk 'NR==1 {print $1}'"), "2001:db8:2::3\n");
    a.succeed("ping -6 -c1 -W2 b");
    a.succeed("ping -4 -c1 -W2 b");
    b.succeed("ping -6 -c1 -W2 c", "ping -4 -c1 -W2 c");
    b.wait_for_open_port(80);
    assert_contains(a.succeed("curl -6 -sf --max-time 5 http://b/"), "nginx");
    assert_contains(a.succeed("curl -4 -sf --max-time 5 http://b/"), "nginx");
    assert_contains(a.succeed("curl -sf --max-time 5 'http://[2001:db8:1::2]/'"), "nginx");
});

subtest("vlans stay apart", || {
    a.fail("ping -6 -c1 -W1 2001:db8:2::3");
});
"#,
    );
    let r = attest(
        &["run", "--quiet-console", dir.config().to_str().unwrap()],
        Duration::from_secs(180),
    );
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert_nothing_left(&r, "ipv6");
}
