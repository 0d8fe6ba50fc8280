//! The contract between `nix/` and the driver: the JSON test configs the Nix
//! fixtures in `tests/nix/` produce (with the same code `nix/make-test.nix`
//! uses) must pass `attest check`, and a script naming a node the config does
//! not have must be rejected with exit status 2. And the network as the
//! guests' NixOS modules configure it (interface names, addresses, MACs,
//! QEMU netdev ids, /etc/hosts; evaluated with nixpkgs' module system by
//! `tests/nix/modules/guests.nix`) must be exactly what the Rust backends
//! create ([`attest::net::plan`], which nspawn, QEMU and the microVMs use).
//!
//! Needs `nix-instantiate` (Debian's `nix-bin`, installed by
//! `.ci/install-deps`). Without it the tests fail rather than skip: a skipped
//! contract test is an untested contract.

use std::path::{Path, PathBuf};
use std::process::Command;

use attest::net::plan;

const ATTEST: &str = env!("CARGO_BIN_EXE_attest");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Evaluates a fixture to JSON with a private, throwaway Nix state.
fn eval_fixture(fixture: &str) -> serde_json::Value {
    eval_nix(fixture, &[])
}

/// Evaluates `tests/nix/<fixture>` to JSON, with `--argstr` pairs.
fn eval_nix(fixture: &str, argstrs: &[(&str, &str)]) -> serde_json::Value {
    let state = tempfile::tempdir().expect("temp dir for nix state");
    let conf = state.path().join("conf");
    let home = state.path().join("home");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(conf.join("nix.conf"), "build-users-group =\n").unwrap();
    let file = repo().join("tests/nix").join(fixture);
    let out = match Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--readonly-mode"])
        .args(
            argstrs
                .iter()
                .flat_map(|(k, v)| ["--argstr".to_owned(), k.to_string(), v.to_string()]),
        )
        .arg(&file)
        .env("NIX_STATE_DIR", state.path().join("state"))
        .env("NIX_CONF_DIR", &conf)
        .env("HOME", &home)
        .env("NIX_PATH", "")
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "nix-instantiate not found: run .ci/install-deps (it installs Debian's nix-bin) \
             so the Nix/driver contract can be tested"
        ),
        Err(e) => panic!("cannot run nix-instantiate: {e}"),
    };
    assert!(
        out.status.success(),
        "nix-instantiate --eval {} failed:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{} did not evaluate to JSON ({e}):\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Writes the config and a script next to it; returns the config's path.
fn write_test(dir: &Path, config: &serde_json::Value, script: &str) -> PathBuf {
    let script_name = config["script"].as_str().expect("config has a script");
    assert!(
        !Path::new(script_name).is_absolute(),
        "fixtures name the script relative to the config"
    );
    std::fs::write(dir.join(script_name), script).unwrap();
    let path = dir.join("test.json");
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    path
}

fn attest_check(config: &Path) -> (i32, String) {
    let out = Command::new(ATTEST)
        // The evaluated store paths are not built here.
        .args(["check", "--no-files"])
        .arg(config)
        .output()
        .expect("run attest check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

const GOOD_SCRIPT: &str = r#"start_all();
server.wait_for_unit("multi-user.target");
client.succeed("curl -sf http://server");
"#;

const BAD_SCRIPT: &str = r#"start_all();
server.wait_for_unit("multi-user.target");
database.succeed("true");
"#;

fn check_fixture(fixture: &str, backend: &str) {
    let config = eval_fixture(fixture);

    // The shape the driver expects, spelled out so a drift shows here first.
    assert_eq!(config["version"], 1, "{fixture}: version");
    let nodes = config["nodes"].as_object().expect("nodes");
    assert_eq!(
        nodes.keys().collect::<Vec<_>>(),
        ["client", "server"],
        "{fixture}: nodes"
    );
    for (name, node) in nodes {
        assert_eq!(
            node["vlans"],
            serde_json::json!([1]),
            "{fixture}: {name} vlans"
        );
        assert!(
            node["backend"][backend].is_object(),
            "{fixture}: {name} runs on {backend}: {node}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let path = write_test(dir.path(), &config, GOOD_SCRIPT);
    let (code, out) = attest_check(&path);
    assert_eq!(code, 0, "attest check {fixture} (good script):\n{out}");

    let dir = tempfile::tempdir().unwrap();
    let path = write_test(dir.path(), &config, BAD_SCRIPT);
    let (code, out) = attest_check(&path);
    assert_eq!(
        code, 2,
        "attest check {fixture} (script names node `database`):\n{out}"
    );
    assert!(
        out.contains("database"),
        "the error should name the unknown node `database`:\n{out}"
    );
}

#[test]
fn nspawn_config_from_nix_passes_attest_check() {
    check_fixture("config-nspawn.nix", "nspawn");
}

#[test]
fn qemu_config_from_nix_passes_attest_check() {
    check_fixture("config-qemu.nix", "qemu");
}

#[test]
fn firecracker_config_from_nix_passes_attest_check() {
    check_fixture("config-firecracker.nix", "firecracker");
}

#[test]
fn pure_fixtures_evaluate() {
    // Each fixture asserts its expected values; evaluating is the test.
    let plan = eval_fixture("ip-plan.nix");
    assert_eq!(
        plan["plan"]["server"]["interfaces"][0]["address"],
        "192.168.1.3"
    );
    let hosts = eval_fixture("hosts.nix");
    assert!(hosts["file"]
        .as_str()
        .unwrap()
        .contains("192.168.1.1 client\n"));
    let numbering = eval_fixture("numbering.nix");
    assert_eq!(numbering["numbers"]["client"], 3);
    let defaults = eval_fixture("defaults.nix");
    assert_eq!(defaults["defaults"]["backend"], "qemu");
}

/// nixpkgs' lib/ for the module evaluation: `NIXPKGS_LIB`, else
/// `../shared/nixpkgs-lib/lib` next to the repo, else the machine's shared copy.
fn nixpkgs_lib() -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os("NIXPKGS_LIB") {
        Some(p) if !p.is_empty() => vec![PathBuf::from(p)],
        _ => vec![
            repo().join("../shared/nixpkgs-lib/lib"),
            PathBuf::from("/work/shared/nixpkgs-lib/lib"),
        ],
    };
    candidates
        .iter()
        .find(|p| p.join("default.nix").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no nixpkgs lib/ among {candidates:?}: set NIXPKGS_LIB to a nixpkgs checkout's lib/ \
                 so the guest modules can be evaluated"
            )
        })
        .canonicalize()
        .unwrap()
}

/// The nodes of tests/nix/modules/guests.nix as a driver config.
fn guests_config(dir: &Path, backend: &str) -> attest::config::TestConfig {
    let settings = match backend {
        "qemu" => r#"{"start_script":"/bin/true"}"#,
        "nspawn" => r#"{"rootfs":"/"}"#,
        _ => r#"{"kernel":"/k","disk":"/d"}"#,
    };
    let node = |vlans: &str| format!(r#"{{"vlans":{vlans},"backend":{{"{backend}":{settings}}}}}"#);
    let config = format!(
        r#"{{"version":1,"name":"guests","script":"t.rhai","nodes":{{"a":{},"b":{},"c":{}}}}}"#,
        node("[1]"),
        node("[1,2]"),
        node("[2]")
    );
    std::fs::write(dir.join("t.rhai"), "start_all();").unwrap();
    let path = dir.join(format!("{backend}.json"));
    std::fs::write(&path, config).unwrap();
    attest::config::TestConfig::load(&path).unwrap()
}

/// `[{k1: "x", k2: "y"}, …]` -> `[("x", "y"), …]`.
fn pairs(list: &serde_json::Value, k1: &str, k2: &str) -> Vec<(String, String)> {
    let field = |n: &serde_json::Value, k: &str| n[k].as_str().unwrap_or_default().to_owned();
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|n| (field(n, k1), field(n, k2)))
        .collect()
}

#[test]
fn guest_modules_configure_the_network_the_backends_create() {
    let lib = nixpkgs_lib();
    let nix = eval_nix(
        "modules/guests.nix",
        &[("nixpkgsLib", lib.to_str().unwrap())],
    );
    let dir = tempfile::tempdir().unwrap();
    let backends = nix["backends"].as_object().expect("backends");
    assert_eq!(
        backends.keys().collect::<Vec<_>>(),
        ["cloud-hypervisor", "firecracker", "nspawn", "qemu"],
        "every backend is evaluated"
    );
    for (backend, nodes) in backends {
        let config = guests_config(dir.path(), backend);
        let rust_hosts: String = plan::hosts_entries(&config)
            .iter()
            .map(|(a, n)| format!("{a} {n}\n"))
            .collect();
        for name in ["a", "b", "c"] {
            let guest = &nodes[name];
            let at = format!("{backend} node {name}");
            let rust = plan::node_interfaces(&config, name);
            let strs = |v: &serde_json::Value| -> Vec<String> {
                v.as_array()
                    .unwrap_or_else(|| panic!("{at}: not a list: {v}"))
                    .iter()
                    .map(|x| x.as_str().unwrap().to_owned())
                    .collect()
            };
            // Interface names: what nspawn's --network-veth-extra creates
            // and its networkd files match, what QEMU/microVM guests rename
            // their NICs to.
            let names: Vec<String> = rust.iter().map(|i| i.name.clone()).collect();
            assert_eq!(
                strs(&guest["configuredNames"]),
                names,
                "{at}: interface names"
            );
            let interfaces = guest["interfaces"].as_array().unwrap();
            assert_eq!(interfaces.len(), rust.len(), "{at}: interfaces");
            for (g, r) in interfaces.iter().zip(&rust) {
                assert_eq!(g["name"], r.name.as_str(), "{at}");
                assert_eq!(g["vlan"], r.vlan, "{at}");
                assert_eq!(g["mac"], r.mac.as_str(), "{at}: MAC");
                assert_eq!(g["ipv4"], r.ipv4.to_string(), "{at}: IPv4");
                assert_eq!(g["ipv6"], r.ipv6.to_string(), "{at}: IPv6");
                assert_eq!(
                    strs(&g["configured"]["ipv4"]),
                    [format!("{}/{}", r.ipv4, plan::IPV4_PREFIX)],
                    "{at}: configured IPv4"
                );
                assert_eq!(
                    strs(&g["configured"]["ipv6"]),
                    [format!("{}/{}", r.ipv6, plan::IPV6_PREFIX)],
                    "{at}: configured IPv6"
                );
            }
            assert_eq!(guest["hosts"], rust_hosts.as_str(), "{at}: /etc/hosts");
            if backend == "qemu" {
                // The netdev ids block()/unblock() pass to QMP set_link, and
                // the names the guest's udev rules give the NICs by MAC.
                type Pair = fn(&plan::VlanInterface) -> (String, String);
                let checks: [(&str, &str, &str, Pair); 2] = [
                    ("qemuNics", "netdevId", "mac", |i| {
                        (i.netdev_id.clone(), i.mac.clone())
                    }),
                    ("udevNames", "mac", "name", |i| {
                        (i.mac.clone(), i.name.clone())
                    }),
                ];
                for (list, k1, k2, of_rust) in checks {
                    let want: Vec<_> = rust.iter().map(of_rust).collect();
                    assert_eq!(pairs(&guest[list], k1, k2), want, "{at}: {list}");
                }
            }
        }
    }
}
