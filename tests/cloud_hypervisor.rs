//! The cloud-hypervisor backend against a real cloud-hypervisor running the
//! tiny guest (with its PVH note). No registry ships cloud-hypervisor, so
//! these run only when `ATTEST_CLOUD_HYPERVISOR=/path/to/cloud-hypervisor` is
//! set, and otherwise print a visible skip reason and return. The checks
//! that need no binary (command line, options) are unit tests in
//! `src/backend/microvm/cloud_hypervisor.rs`.
//!
//! Every test is named `vm_*` so nextest runs them one at a time.

mod harness;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attest::backend::kvm::KvmFacts;
use attest::backend::{BackendOp, Instance};
use attest::exit_code::{FAILED, PASSED};
use attest::net::Network;
use harness::lib_machine::LibMachine;
use harness::tiny_guest::{tiny_guest_elf, TinyGuestBehavior, TINY_GUEST_HELLO, TINY_GUEST_TICK};
use harness::{alive, attest, processes_matching, TestDir};

/// The cloud-hypervisor binary, or `None` after printing why the test skips.
fn cloud_hypervisor(test: &str) -> Option<PathBuf> {
    match std::env::var_os("ATTEST_CLOUD_HYPERVISOR").filter(|p| !p.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "ATTEST_CLOUD_HYPERVISOR={} does not exist",
                p.display()
            );
            Some(p)
        }
        None => {
            eprintln!(
                "SKIPPED {test}: set ATTEST_CLOUD_HYPERVISOR=/path/to/cloud-hypervisor to run it (no package registry ships cloud-hypervisor)"
            );
            None
        }
    }
}

/// A one-node cloud-hypervisor test running the tiny guest.
fn tiny_test(
    name: &str,
    behavior: TinyGuestBehavior,
    node: &str,
    settings: &str,
    script: &str,
) -> TestDir {
    let t = TestDir::new(name, "{}", "", script);
    let kernel = t.dir.path().join(format!("tiny-{behavior:?}-pvh.elf"));
    std::fs::write(&kernel, tiny_guest_elf(behavior, true)).unwrap();
    let nodes = format!(
        r#"{{"m":{{{node}"backend":{{"cloud-hypervisor":{{"kernel":"{}","memory_mib":64{settings}}}}}}}}}"#,
        kernel.display()
    );
    std::fs::write(
        t.config(),
        format!(r#"{{"version":1,"name":"{name}","script":"test.rhai","nodes":{nodes}}}"#),
    )
    .unwrap();
    t
}

/// cloud-hypervisor processes that belong to a state dir under `needle`.
fn vmms_matching(needle: &str) -> Vec<String> {
    processes_matching(needle)
        .into_iter()
        .filter(|p| p.contains("--api-socket"))
        .collect()
}

/// Node `m` of a one-node tiny-guest test, started through the library
/// ([`LibMachine::start_microvm`]) for what the script cannot reach (a guest
/// without a backdoor never finishes `start()` in a script).
fn new_lib(behavior: TinyGuestBehavior, node: &str) -> LibMachine {
    LibMachine::new(tiny_test("lib", behavior, node, "", ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cloud_hypervisor_tiny_guest_prints_and_powers_off() {
    if cloud_hypervisor("vm_cloud_hypervisor_tiny_guest_prints_and_powers_off").is_none() {
        return;
    }
    let lib = new_lib(TinyGuestBehavior::PowerOff, "");
    let vm = lib.start_microvm().await.expect("start");
    let pid = vm.vmm_pid().unwrap();
    lib.wait_console(TINY_GUEST_HELLO, 1, Duration::from_secs(10))
        .await;
    // ACPI S5 on port 0x600 ends cloud-hypervisor.
    let mut exit = vm.exit_watch();
    tokio::time::timeout(Duration::from_secs(10), exit.wait_for(|e| e.is_some()))
        .await
        .expect("cloud-hypervisor exits after the guest powers off")
        .unwrap();
    vm.terminate(Duration::from_secs(1)).await;
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cloud_hypervisor_crash_and_terminate_leave_nothing() {
    if cloud_hypervisor("vm_cloud_hypervisor_crash_and_terminate_leave_nothing").is_none() {
        return;
    }
    let lib = new_lib(TinyGuestBehavior::Tick, "");
    let vm = lib.start_microvm().await.expect("start");
    let pid = vm.vmm_pid().unwrap();
    lib.wait_console(TINY_GUEST_HELLO, 1, Duration::from_secs(10))
        .await;
    vm.crash().await.unwrap();
    assert_eq!(
        *vm.exit_watch().borrow(),
        Some(attest::process::Exit::Signal(9))
    );
    assert!(!alive(pid));

    let lib = new_lib(TinyGuestBehavior::Halt, "");
    let vm = lib.start_microvm().await.expect("start");
    let pid = vm.vmm_pid().unwrap();
    lib.wait_console(TINY_GUEST_HELLO, 1, Duration::from_secs(10))
        .await;
    let t = Instant::now();
    vm.terminate(Duration::from_secs(10)).await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cloud_hypervisor_snapshot_keeps_running_and_restores_in_a_fresh_process() {
    if cloud_hypervisor(
        "vm_cloud_hypervisor_snapshot_keeps_running_and_restores_in_a_fresh_process",
    )
    .is_none()
    {
        return;
    }
    let lib = new_lib(TinyGuestBehavior::Tick, "");
    let vm = lib.start_microvm().await.expect("start");
    lib.wait_console(TINY_GUEST_TICK, 2, Duration::from_secs(20))
        .await;
    let snap = lib.state.path().join("snap");
    vm.op(BackendOp::SnapshotCreate(snap.clone()))
        .await
        .expect("snapshot_create");
    for f in ["config.json", "state.json", "attest-snapshot.json"] {
        assert!(snap.join(f).is_file(), "{f} missing from the snapshot");
    }
    assert_eq!(vm.vm_state().await.unwrap(), "Running");
    let ticks = lib.console.text().matches(TINY_GUEST_TICK).count();
    lib.wait_console(TINY_GUEST_TICK, ticks + 2, Duration::from_secs(20))
        .await;
    let old = vm.vmm_pid().unwrap();
    vm.op(BackendOp::SnapshotRestore(snap.clone()))
        .await
        .expect("snapshot_restore");
    let new = vm.vmm_pid().unwrap();
    assert_ne!(old, new);
    assert!(!alive(old));
    assert_eq!(vm.vm_state().await.unwrap(), "Running");
    assert!(vm.exit_watch().borrow().is_none());
    let ticks = lib.console.text().matches(TINY_GUEST_TICK).count();
    lib.wait_console(TINY_GUEST_TICK, ticks + 2, Duration::from_secs(20))
        .await;
    assert_eq!(lib.console.text().matches(TINY_GUEST_HELLO).count(), 1);
    vm.terminate(Duration::from_secs(1)).await;
    assert!(!alive(new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cloud_hypervisor_taps_join_the_vlan_bridge_and_go_away() {
    if cloud_hypervisor("vm_cloud_hypervisor_taps_join_the_vlan_bridge_and_go_away").is_none() {
        return;
    }
    let mut lib = new_lib(TinyGuestBehavior::Tick, r#""vlans":[1],"#);
    let network = Arc::new(Network::new([1]));
    lib.network = Some(network.clone());
    let vm = lib.start_microvm().await.expect("start");
    let pid = vm.vmm_pid().unwrap();
    let ns = network.netns_path().await.unwrap();
    let show = || {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["--", "ip", "-o", "link", "show", "tap1v1"])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let link = show();
    assert!(
        link.contains("master br1") && link.contains("LOWER_UP"),
        "{link}"
    );
    vm.op(BackendOp::Block).await.unwrap();
    assert!(!show().contains(",UP"));
    vm.op(BackendOp::Unblock).await.unwrap();
    assert!(show().contains(",UP"));
    vm.terminate(Duration::from_secs(1)).await;
    assert!(!alive(pid));
    assert!(show().contains("does not exist"));
}

#[test]
fn vm_cloud_hypervisor_start_without_a_backdoor_fails_clearly() {
    let Some(_) = cloud_hypervisor("vm_cloud_hypervisor_start_without_a_backdoor_fails_clearly")
    else {
        return;
    };
    let t = tiny_test(
        "ch-no-backdoor",
        TinyGuestBehavior::Tick,
        r#""boot_timeout":3,"#,
        "",
        "m.start();",
    );
    let r = attest(
        &["run", t.config().to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("no backdoor on vsock port 1234 within 3s"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(TINY_GUEST_HELLO), "{}", r.stderr);
    let dir = t.dir.path().display().to_string();
    assert!(vmms_matching(&dir).is_empty());
}

#[test]
fn vm_cloud_hypervisor_errors_carry_the_vmm_message() {
    if cloud_hypervisor("vm_cloud_hypervisor_errors_carry_the_vmm_message").is_none() {
        return;
    }
    // A kernel without a PVH note: cloud-hypervisor refuses it in its own words.
    let t = tiny_test("ch-no-pvh", TinyGuestBehavior::Tick, "", "", "m.start();");
    let kernel = t.dir.path().join("tiny-Tick-pvh.elf");
    std::fs::write(&kernel, tiny_guest_elf(TinyGuestBehavior::Tick, false)).unwrap();
    let r = attest(
        &["run", t.config().to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(r.stderr.contains("cloud-hypervisor"), "{}", r.stderr);
    let e = attest(
        &[
            "run",
            tiny_test(
                "ch-opt",
                TinyGuestBehavior::Tick,
                "",
                r#","options":{"balloon":1}"#,
                "m.start();",
            )
            .config()
            .to_str()
            .unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(
        e.stderr
            .contains("unknown cloud-hypervisor option `balloon`"),
        "{}",
        e.stderr
    );
}

#[test]
fn vm_cloud_hypervisor_missing_binary_is_explained() {
    // Runs everywhere: no binary needed to check the message.
    let t = tiny_test(
        "ch-missing",
        TinyGuestBehavior::Tick,
        "",
        r#","binary":"/nonexistent/cloud-hypervisor""#,
        "m.start();",
    );
    let r = attest(
        &["run", t.config().to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "the configured cloud-hypervisor binary /nonexistent/cloud-hypervisor does not exist"
        ),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("ATTEST_CLOUD_HYPERVISOR"), "{}", r.stderr);
}

/// A real Linux guest: only where KVM runs Linux guests, a binary is given
/// and the Debian image is built.
#[test]
fn vm_cloud_hypervisor_debian_guest() {
    let kvm = KvmFacts::probe();
    if !kvm.runs_linux_guests() {
        eprintln!(
            "SKIPPED vm_cloud_hypervisor_debian_guest: KVM does not run Linux guests here{}",
            if kvm.pvm {
                " (/dev/kvm is KVM-PVM)"
            } else {
                ""
            }
        );
        return;
    }
    if cloud_hypervisor("vm_cloud_hypervisor_debian_guest").is_none() {
        return;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian/out/manifest.json");
    assert!(
        manifest.is_file(),
        "{} is missing: build the image with images/debian/build",
        manifest.display()
    );
    let node = |name: &str| {
        format!(
            r#""{name}":{{"backend":{{"cloud-hypervisor":{{"image":"{}"}}}}}}"#,
            manifest.display()
        )
    };
    let t = TestDir::new(
        "ch-debian",
        &format!("{{{},{}}}", node("server"), node("client")),
        "",
        r#"
start_all();
server.wait_for_unit("nginx.service");
server.wait_for_open_port(80);
client.succeed("curl -sf http://server");
"#,
    );
    let r = attest(
        &["run", t.config().to_str().unwrap()],
        Duration::from_secs(300),
    );
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
}

/// attest's side of the cloud-hypervisor protocol, against
/// `tests/fixtures/fake-cloud-hypervisor` (a Python stand-in implementing the
/// documented command line and REST calls). Runs everywhere; proves the
/// call sequence and shapes attest sends, not cloud-hypervisor's behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cloud_hypervisor_call_sequence_against_a_stand_in_vmm() {
    if let Err(e) = &KvmFacts::probe().usable {
        eprintln!("SKIPPED vm_cloud_hypervisor_call_sequence_against_a_stand_in_vmm: /dev/kvm unusable ({e})");
        return;
    }
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-cloud-hypervisor");
    let mut lib = new_lib(TinyGuestBehavior::Tick, r#""vlans":[1],"#);
    let log = lib.state.path().join("calls.jsonl");
    // Read by the stand-in VMM, which inherits the environment; set before it starts.
    std::env::set_var("FAKE_CH_LOG", &log);
    let config = std::fs::read_to_string(lib.t.config()).unwrap();
    std::fs::write(
        lib.t.config(),
        config.replace(
            r#""memory_mib":64"#,
            &format!(
                r#""memory_mib":64,"cpus":2,"binary":"{}","options":{{"hugepages":true}}"#,
                fake.display()
            ),
        ),
    )
    .unwrap();
    let network = Arc::new(Network::new([1]));
    lib.network = Some(network.clone());
    let calls = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let requests = || -> Vec<String> {
        calls()
            .iter()
            .filter_map(|c| c.get("path").and_then(|p| p.as_str()).map(str::to_owned))
            .filter(|p| p != "/api/v1/vmm.ping")
            .collect()
    };

    let vm = lib.start_microvm().await.expect("start");
    lib.wait_console(
        "fake-cloud-hypervisor: serial console up",
        1,
        Duration::from_secs(10),
    )
    .await;
    let argv: Vec<String> = serde_json::from_value(calls()[0]["argv"].clone()).unwrap();
    let argv = argv.join(" ");
    for part in [
        "--api-socket path=",
        "--cpus boot=2",
        "--memory size=64M,hugepages=on",
        "--serial tty --console off",
        "--vsock cid=3,socket=",
        "--net tap=tap1v1,mac=52:54:00:12:01:01",
    ] {
        assert!(argv.contains(part), "{part:?} missing from {argv}");
    }
    assert_eq!(requests(), ["/api/v1/vm.info"]);

    let snap = lib.state.path().join("snap");
    vm.op(BackendOp::SnapshotCreate(snap.clone()))
        .await
        .unwrap();
    assert_eq!(
        requests()[1..],
        [
            "/api/v1/vm.pause",
            "/api/v1/vm.snapshot",
            "/api/v1/vm.resume"
        ]
    );
    let snapshot_call = calls()
        .into_iter()
        .find(|c| c["path"] == "/api/v1/vm.snapshot")
        .unwrap();
    assert_eq!(
        snapshot_call["body"]["destination_url"],
        format!("file://{}", snap.display())
    );
    assert_eq!(vm.vm_state().await.unwrap(), "Running");

    let old = vm.vmm_pid().unwrap();
    vm.op(BackendOp::SnapshotRestore(snap.clone()))
        .await
        .unwrap();
    assert_ne!(vm.vmm_pid().unwrap(), old);
    assert!(!alive(old));
    let argvs: Vec<serde_json::Value> = calls()
        .into_iter()
        .filter(|c| c.get("argv").is_some())
        .collect();
    let restore_argv: Vec<String> = serde_json::from_value(argvs[1]["argv"].clone()).unwrap();
    assert_eq!(
        restore_argv.len(),
        4,
        "a restoring VMM gets only its sockets: {restore_argv:?}"
    );
    let r = requests();
    let tail = &r[r.len() - 2..];
    assert_eq!(tail, ["/api/v1/vm.restore", "/api/v1/vm.resume"]);
    assert_eq!(vm.vm_state().await.unwrap(), "Running");

    // The power button ends the VMM on its own.
    vm.power_button().await.unwrap();
    let mut exit = vm.exit_watch();
    let info = tokio::time::timeout(Duration::from_secs(10), exit.wait_for(|e| e.is_some()))
        .await
        .expect("the VMM exits after the power button")
        .unwrap()
        .clone();
    assert_eq!(info, Some(attest::process::Exit::Code(0)));
    vm.terminate(Duration::from_secs(1)).await;
}
