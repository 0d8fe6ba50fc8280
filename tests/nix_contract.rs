//! The contract between `nix/` and the driver: the JSON test configs the Nix
//! fixtures in `tests/nix/` produce (with the same code `nix/make-test.nix`
//! uses) must pass `attest check`, and a script naming a node the config does
//! not have must be rejected with exit status 2.
//!
//! Needs `nix-instantiate` (Debian's `nix-bin`, installed by
//! `.ci/install-deps`). Without it the tests fail rather than skip: a skipped
//! contract test is an untested contract.

use std::path::{Path, PathBuf};
use std::process::Command;

const ATTEST: &str = env!("CARGO_BIN_EXE_attest");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Evaluates a fixture to JSON with a private, throwaway Nix state.
fn eval_fixture(fixture: &str) -> serde_json::Value {
    let state = tempfile::tempdir().expect("temp dir for nix state");
    let conf = state.path().join("conf");
    let home = state.path().join("home");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(conf.join("nix.conf"), "build-users-group =\n").unwrap();
    let file = repo().join("tests/nix").join(fixture);
    let out = match Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--readonly-mode"])
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
        .arg("check")
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
