//! The firecracker backend against a real firecracker (v1.12.1 from
//! `.ci/fetch-firecracker`) running the tiny guest
//! (`tests/harness/tiny_guest.rs`): process, API, console, power
//! off, crash, terminate, snapshots, TAPs, the vsock handshake timeout, API
//! error reporting, prerequisites and cleanup on SIGTERM. These run on a
//! KVM-PVM host too (the tiny guest executes there; Linux guests do not).
//! The Debian-guest test runs only where KVM really runs Linux guests.
//!
//! Every test is named `vm_*` so nextest runs them one at a time.

mod harness;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attest::backend::kvm::KvmFacts;
use attest::backend::microvm::instance::MicroVmInstance;
use attest::backend::microvm::CACHE_BIN_DIR;
use attest::backend::{BackendOp, Instance};
use attest::exit_code::{FAILED, INVALID, PASSED};
use attest::net::Network;
use harness::lib_machine::LibMachine;
use harness::tiny_guest::{tiny_guest_elf, TinyGuestBehavior, TINY_GUEST_HELLO, TINY_GUEST_TICK};
use harness::{alive, attest, processes_matching, TestDir};

/// The real firecracker; fails the test with the fix when it is missing.
fn firecracker() -> PathBuf {
    if let Some(p) = std::env::var_os("ATTEST_FIRECRACKER") {
        return PathBuf::from(p);
    }
    let p = Path::new(CACHE_BIN_DIR).join("firecracker");
    assert!(
        p.is_file(),
        "{} is missing: run .ci/fetch-firecracker (it downloads firecracker v1.12.1 and checks its sha256)",
        p.display()
    );
    p
}

/// Writes the tiny guest into `dir` and returns its path.
fn tiny_guest(dir: &Path, behavior: TinyGuestBehavior) -> PathBuf {
    let p = dir.join(format!("tiny-{behavior:?}.elf"));
    std::fs::write(&p, tiny_guest_elf(behavior, false)).unwrap();
    p
}

/// A one-node firecracker test running the tiny guest; `settings` are extra
/// JSON fields of the firecracker settings, `node` extra node fields.
fn tiny_test(
    name: &str,
    behavior: TinyGuestBehavior,
    node: &str,
    settings: &str,
    script: &str,
) -> TestDir {
    firecracker();
    let t = TestDir::new(name, "{}", "", script);
    let kernel = tiny_guest(t.dir.path(), behavior);
    let nodes = format!(
        r#"{{"m":{{{node}"backend":{{"firecracker":{{"kernel":"{}","memory_mib":64{settings}}}}}}}}}"#,
        kernel.display()
    );
    std::fs::write(
        t.config(),
        format!(r#"{{"version":1,"name":"{name}","script":"test.rhai","nodes":{nodes}}}"#),
    )
    .unwrap();
    t
}

/// Firecracker processes a run of attest (by pid) started.
fn vmms_of(attest_pid: u32) -> Vec<String> {
    processes_matching(&format!("--id attest-{attest_pid}-"))
}

fn assert_no_vmm_left(attest_pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = vmms_of(attest_pid);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "firecracker left running: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node `m` of a one-node tiny-guest test, started through the library
/// ([`LibMachine::start_microvm`]) for what the script cannot reach (a guest
/// without a backdoor never finishes `start()` in a script).
fn new_lib(behavior: TinyGuestBehavior, node: &str) -> LibMachine {
    LibMachine::new(tiny_test("lib", behavior, node, "", ""))
}

/// Both entry paths: 64-bit long mode at `e_entry`, and (firecracker ≥ 1.12
/// takes the PVH note when present) 32-bit protected mode at the PVH entry,
/// which is what cloud-hypervisor uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_firecracker_tiny_guest_prints_and_powers_off() {
    for pvh in [false, true] {
        let lib = new_lib(TinyGuestBehavior::PowerOff, "");
        if pvh {
            let kernel = lib.t.dir.path().join("tiny-PowerOff.elf");
            std::fs::write(&kernel, tiny_guest_elf(TinyGuestBehavior::PowerOff, true)).unwrap();
        }
        let started = Instant::now();
        let vm = lib.start_microvm().await.expect("start");
        let pid = vm.vmm_pid().unwrap();
        lib.wait_console(TINY_GUEST_HELLO, 1, Duration::from_secs(10))
            .await;
        // The guest's i8042 reset ends firecracker by itself.
        let mut exit = vm.exit_watch();
        let info = tokio::time::timeout(Duration::from_secs(10), exit.wait_for(|e| e.is_some()))
            .await
            .expect("firecracker exits after the guest powers off")
            .unwrap()
            .clone();
        assert_eq!(info, Some(attest::process::Exit::Code(0)));
        eprintln!(
            "tiny guest (pvh: {pvh}): start → power-off in {:?}",
            started.elapsed()
        );
        vm.terminate(Duration::from_secs(1)).await;
        assert!(!alive(pid));
        // firecracker's own log went to its file, not onto the console.
        assert!(
            !lib.console.text().contains("Running Firecracker"),
            "{}",
            lib.console.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_firecracker_crash_kills_and_reaps() {
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
    assert!(!alive(pid), "firecracker {pid} still there after crash");
    vm.terminate(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_firecracker_terminate_stops_a_guest_that_ignores_everything() {
    let lib = new_lib(TinyGuestBehavior::Halt, "");
    let vm = lib.start_microvm().await.expect("start");
    let pid = vm.vmm_pid().unwrap();
    lib.wait_console(TINY_GUEST_HELLO, 1, Duration::from_secs(10))
        .await;
    // firecracker takes the power button (Ctrl-Alt-Del); the tiny guest
    // ignores it and keeps running.
    vm.power_button().await.expect("SendCtrlAltDel");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(pid));
    let t = Instant::now();
    vm.terminate(Duration::from_secs(10)).await;
    // The guest never answered on vsock, so no graceful phase is spent.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!alive(pid));
    assert!(vm.exit_watch().borrow().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_firecracker_snapshot_keeps_running_and_restores_in_a_fresh_process() {
    let lib = new_lib(TinyGuestBehavior::Tick, "");
    let vm = lib.start_microvm().await.expect("start");
    lib.wait_console(TINY_GUEST_TICK, 2, Duration::from_secs(20))
        .await;
    let snap = lib.state.path().join("snap");
    let msg = vm
        .op(BackendOp::SnapshotCreate(snap.clone()))
        .await
        .expect("snapshot_create");
    eprintln!("{msg}");
    for f in ["vm.state", "vm.mem", "attest-snapshot.json"] {
        assert!(snap.join(f).is_file(), "{f} missing from the snapshot");
    }
    // The VM keeps running: the API says so and the guest keeps ticking.
    assert_eq!(vm.vm_state().await.unwrap(), "Running");
    let ticks = lib.console.text().matches(TINY_GUEST_TICK).count();
    lib.wait_console(TINY_GUEST_TICK, ticks + 2, Duration::from_secs(20))
        .await;

    let old = vm.vmm_pid().unwrap();
    let msg = vm
        .op(BackendOp::SnapshotRestore(snap.clone()))
        .await
        .expect("snapshot_restore");
    eprintln!("{msg}");
    let new = vm.vmm_pid().unwrap();
    assert_ne!(old, new, "restore must run in a fresh firecracker process");
    assert!(!alive(old), "the old firecracker {old} is still running");
    assert_eq!(vm.vm_state().await.unwrap(), "Running");
    assert!(
        vm.exit_watch().borrow().is_none(),
        "a planned restore is not a machine exit"
    );
    let ticks = lib.console.text().matches(TINY_GUEST_TICK).count();
    lib.wait_console(TINY_GUEST_TICK, ticks + 2, Duration::from_secs(20))
        .await;
    // Resumed from memory, not rebooted: the greeting was printed once.
    assert_eq!(lib.console.text().matches(TINY_GUEST_HELLO).count(), 1);

    // A snapshot of another machine is refused with the reason.
    let meta = snap.join("attest-snapshot.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(
        &meta,
        text.replace("\"machine\": \"m\"", "\"machine\": \"other\""),
    )
    .unwrap();
    let e = vm
        .op(BackendOp::SnapshotRestore(snap.clone()))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("only `other` can restore it"), "{e}");
    assert_eq!(vm.vm_state().await.unwrap(), "Running");
    vm.terminate(Duration::from_secs(1)).await;
    assert!(!alive(new));
}

/// Runs `ip ARGS` in the namespace at `ns`.
fn ip_in(ns: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg("--")
        .arg("ip")
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_firecracker_taps_join_the_vlan_bridge_and_go_away() {
    let mut lib = new_lib(TinyGuestBehavior::Tick, r#""vlans":[1],"#);
    let network = Arc::new(Network::new([1]));
    lib.network = Some(network.clone());
    let vm = lib.start_microvm().await.expect("start");
    let pid = vm.vmm_pid().unwrap();
    let ns = network.netns_path().await.unwrap();
    let link = ip_in(&ns, &["-o", "link", "show", "tap1v1"]);
    assert!(link.contains("master br1"), "{link}");
    // firecracker holds the TAP open: the carrier is up.
    assert!(link.contains("LOWER_UP"), "{link}");
    assert!(link.contains("state UP"), "{link}");
    // It runs inside the switch namespace, not the host's.
    let vmm_ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(vmm_ns, std::fs::read_link(&ns).unwrap());
    assert_ne!(vmm_ns, std::fs::read_link("/proc/self/ns/net").unwrap());
    assert!(
        !ip_in(Path::new("/proc/self/ns/net"), &["-o", "link"]).contains("tap1v1"),
        "the TAP leaked into the host namespace"
    );

    vm.op(BackendOp::Block).await.unwrap();
    let link = ip_in(&ns, &["-o", "link", "show", "tap1v1"]);
    assert!(!link.contains(",UP"), "block leaves the TAP up: {link}");
    vm.op(BackendOp::Unblock).await.unwrap();
    let link = ip_in(&ns, &["-o", "link", "show", "tap1v1"]);
    assert!(link.contains(",UP"), "unblock leaves the TAP down: {link}");

    vm.terminate(Duration::from_secs(1)).await;
    assert!(!alive(pid));
    let link = ip_in(&ns, &["-o", "link", "show", "tap1v1"]);
    assert!(link.contains("does not exist"), "TAP left behind: {link}");
}

#[test]
fn vm_firecracker_start_without_a_backdoor_fails_clearly() {
    let t = tiny_test(
        "fc-no-backdoor",
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
    assert!(r.elapsed < Duration::from_secs(20), "took {:?}", r.elapsed);
    // The serial console reached the log.
    assert!(r.stderr.contains(TINY_GUEST_HELLO), "{}", r.stderr);
    if KvmFacts::probe().pvm {
        assert!(r.stderr.contains("KVM-PVM"), "{}", r.stderr);
    }
    assert_no_vmm_left(r.pid);
}

#[test]
fn vm_firecracker_console_reaches_the_script() {
    let t = tiny_test(
        "fc-console",
        TinyGuestBehavior::Tick,
        r#""boot_timeout":2,"#,
        "",
        &format!(
            r#"
try {{ m.start(); }} catch (e) {{ log(`start failed as expected: ${{e}}`); }}
assert_contains(m.get_console_log(), "{TINY_GUEST_HELLO}");
m.wait_for_console_text("{TINY_GUEST_TICK}");
"#
        ),
    );
    let r = attest(
        &["run", "--quiet-console", t.config().to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert_no_vmm_left(r.pid);
}

#[test]
fn vm_firecracker_api_errors_carry_the_vmm_message() {
    for (settings, vmm_says) in [
        (
            r#","cpus":64"#,
            "PUT /machine-config failed with HTTP 400: Machine config error: The number of vCPUs must be greater than 0",
        ),
        (
            r#","memory_mib":0"#,
            "PUT /machine-config failed with HTTP 400: Machine config error: The memory size (MiB) is either 0",
        ),
    ] {
        let t = tiny_test("fc-api-error", TinyGuestBehavior::Tick, "", settings, "m.start();");
        let config = std::fs::read_to_string(t.config()).unwrap();
        // `memory_mib` is set already and duplicate keys are rejected: replace it.
        if settings.contains("memory_mib") {
            std::fs::write(t.config(), config.replace(r#","memory_mib":64,"memory_mib":0"#, r#","memory_mib":0"#)).unwrap();
        }
        let r = attest(&["run", t.config().to_str().unwrap()], Duration::from_secs(60));
        assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("firecracker rejected the VM configuration: {vmm_says}")),
            "{}",
            r.stderr
        );
        assert_no_vmm_left(r.pid);
    }
    // A kernel firecracker cannot load: its message, not a hang.
    let t = tiny_test(
        "fc-bad-kernel",
        TinyGuestBehavior::Tick,
        "",
        "",
        "m.start();",
    );
    let kernel = t.dir.path().join("tiny-Tick.elf");
    std::fs::write(&kernel, b"not an ELF file at all").unwrap();
    let r = attest(
        &["run", t.config().to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(
        r.stderr.contains("PUT /actions failed with HTTP 400"),
        "{}",
        r.stderr
    );
    assert_no_vmm_left(r.pid);
}

#[test]
fn vm_firecracker_prerequisites_and_options_are_explained() {
    let cases = [
        (
            r#","binary":"/nonexistent/firecracker""#,
            "the configured firecracker binary /nonexistent/firecracker does not exist: run .ci/fetch-firecracker",
        ),
        (
            r#","options":{"enable_pci":true}"#,
            "option `enable_pci` needs firecracker ≥ 1.13, found 1.12.1",
        ),
        (
            r#","options":{"pmem_devices":["/nix-store.img"]}"#,
            "option `pmem_devices` needs firecracker ≥ 1.14, found 1.12.1",
        ),
    ];
    for (settings, message) in cases {
        let t = tiny_test(
            "fc-prereq",
            TinyGuestBehavior::Tick,
            "",
            settings,
            "m.start();",
        );
        let r = attest(
            &["run", t.config().to_str().unwrap()],
            Duration::from_secs(60),
        );
        assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
        assert!(
            r.stderr.contains(message),
            "want {message:?} in:\n{}",
            r.stderr
        );
        assert_no_vmm_left(r.pid);
    }
    // An unknown knob is a config error: the options are typed.
    let t = tiny_test(
        "fc-unknown",
        TinyGuestBehavior::Tick,
        "",
        r#","options":{"balloon":true}"#,
        "m.start();",
    );
    let r = attest(
        &["run", t.config().to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(INVALID.into()), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("unknown field `balloon`, expected one of `enable_pci`"),
        "{}",
        r.stderr
    );
    assert!(vmms_of(r.pid).is_empty());
    // Knobs firecracker 1.12 has are passed through and accepted.
    let t = tiny_test(
        "fc-knobs",
        TinyGuestBehavior::Tick,
        r#""boot_timeout":2,"#,
        r#","options":{"io_engine":"Sync","huge_pages":"None"}"#,
        "m.start();",
    );
    let r = attest(
        &["run", t.config().to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert!(
        r.stderr.contains("no backdoor on vsock port 1234"),
        "the knobs should configure fine and boot:\n{}",
        r.stderr
    );
    assert_no_vmm_left(r.pid);
}

#[test]
fn vm_firecracker_sigterm_of_attest_leaves_nothing_behind() {
    let t = tiny_test(
        "fc-sigterm",
        TinyGuestBehavior::Tick,
        r#""boot_timeout":120,"vlans":[1],"#,
        "",
        "m.start();",
    );
    // A network too, so the TAP path is covered.
    let config = std::fs::read_to_string(t.config()).unwrap();
    std::fs::write(
        t.config(),
        config.replace(r#""version":1,"#, r#""version":1,"enable_network":true,"#),
    )
    .unwrap();
    let started = Instant::now();
    let child = harness::spawn(&["run", t.config().to_str().unwrap()]);
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while vmms_of(pid).is_empty() {
        assert!(Instant::now() < deadline, "firecracker never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let r = harness::finish(child, started, Duration::from_secs(60));
    assert_ne!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(30), "took {:?}", r.elapsed);
    assert_no_vmm_left(pid);
    harness::assert_nothing_left(&r, "fc-sigterm");
}

/// A real Linux guest (the Debian image): backdoor, commands, snapshot.
/// Only where KVM runs Linux guests and the image is built.
#[test]
fn vm_firecracker_debian_guest() {
    let kvm = KvmFacts::probe();
    if !kvm.runs_linux_guests() {
        eprintln!(
            "SKIPPED vm_firecracker_debian_guest: KVM does not run Linux guests here ({})",
            if kvm.pvm {
                "/dev/kvm is KVM-PVM".to_owned()
            } else {
                format!(
                    "/dev/kvm present: {}, usable: {:?}",
                    kvm.present, kvm.usable
                )
            }
        );
        return;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian/out/manifest.json");
    assert!(
        manifest.is_file(),
        "{} is missing: build the image with images/debian/build",
        manifest.display()
    );
    firecracker();
    let node = |name: &str| {
        format!(
            r#""{name}":{{"backend":{{"firecracker":{{"image":"{}"}}}}}}"#,
            manifest.display()
        )
    };
    let t = TestDir::new(
        "fc-debian",
        &format!("{{{},{}}}", node("server"), node("client")),
        "",
        r#"
start_all();
server.wait_for_unit("nginx.service");
server.wait_for_open_port(80);
client.succeed("curl -sf http://server");
server.snapshot_create("/tmp/attest-fc-debian-snap");
server.succeed("touch /tmp/after-snapshot");
server.snapshot_restore("/tmp/attest-fc-debian-snap");
server.fail("test -e /tmp/after-snapshot");
client.succeed("curl -sf http://server");
"#,
    );
    let r = attest(
        &["run", t.config().to_str().unwrap()],
        Duration::from_secs(300),
    );
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert_no_vmm_left(r.pid);
}

#[test]
fn vm_firecracker_a_vmm_that_dies_at_start_is_reported_with_its_last_words() {
    let t = tiny_test("fc-dies", TinyGuestBehavior::Tick, "", "", "m.start();");
    let fake = t.dir.path().join("firecracker");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'Firecracker v1.12.1'; exit 0; }\necho 'simulated: cannot open /dev/kvm' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = std::fs::read_to_string(t.config()).unwrap();
    std::fs::write(
        t.config(),
        config.replace(
            r#""memory_mib":64"#,
            &format!(r#""memory_mib":64,"binary":"{}""#, fake.display()),
        ),
    )
    .unwrap();
    let r = attest(
        &["run", t.config().to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("firecracker exited with status 3 before its API socket"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("simulated: cannot open /dev/kvm"),
        "{}",
        r.stderr
    );
}

#[test]
fn vm_firecracker_two_nodes_on_a_vlan_start_and_go_away_together() {
    firecracker();
    let t = TestDir::new("fc-two", "{}", "", "");
    let kernel = tiny_guest(t.dir.path(), TinyGuestBehavior::Tick);
    let node = |n: &str| {
        format!(
            r#""{n}":{{"boot_timeout":3,"backend":{{"firecracker":{{"kernel":"{}","memory_mib":64}}}}}}"#,
            kernel.display()
        )
    };
    std::fs::write(
        t.config(),
        format!(
            r#"{{"version":1,"name":"fc-two","script":"test.rhai","nodes":{{{},{}}}}}"#,
            node("a"),
            node("b")
        ),
    )
    .unwrap();
    std::fs::write(
        t.path("test.rhai"),
        format!(
            r#"
try {{ start_all(); }} catch (e) {{ log(`start_all failed as expected: ${{e}}`); }}
assert_contains(a.get_console_log(), "{TINY_GUEST_HELLO}");
assert_contains(b.get_console_log(), "{TINY_GUEST_HELLO}");
"#
        ),
    )
    .unwrap();
    let r = attest(
        &["run", "--quiet-console", t.config().to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    // Both booted in parallel: well under two boot timeouts.
    assert!(r.elapsed < Duration::from_secs(6), "took {:?}", r.elapsed);
    assert_no_vmm_left(r.pid);
    harness::assert_nothing_left(&r, "fc-two");
}

#[test]
fn vm_firecracker_a_state_dir_too_deep_for_unix_sockets_is_explained() {
    firecracker();
    let t = TestDir::new("fc-deep", "{}", "", "");
    let kernel = tiny_guest(t.dir.path(), TinyGuestBehavior::Tick);
    let name = "n".repeat(100);
    std::fs::write(
        t.config(),
        format!(
            r#"{{"version":1,"name":"fc-deep","script":"test.rhai","nodes":{{"{name}":{{"backend":{{"firecracker":{{"kernel":"{}"}}}}}}}}}}"#,
            kernel.display()
        ),
    )
    .unwrap();
    std::fs::write(t.path("test.rhai"), format!("{name}.start();")).unwrap();
    let r = attest(
        &["run", t.config().to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("is too deep for the VMM's unix sockets (at most 107 bytes per path)"),
        "{}",
        r.stderr
    );
    assert_no_vmm_left(r.pid);
}

/// Assembles `tests/fixtures/tiny-guest/vsock-guest.S` (binutils `as`/`ld`)
/// into `dir`: a PVH guest with a polled virtio-vsock driver that answers
/// every connection on port 1234 with the backdoor banner.
fn vsock_guest(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-guest");
    let obj = dir.join("vsock-guest.o");
    let elf = dir.join("vsock-guest.elf");
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("cannot run {cmd:?} ({e}): install binutils (apt-get install binutils, or .ci/install-deps)")
        });
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("as")
        .arg("--64")
        .arg("-o")
        .arg(&obj)
        .arg(src.join("vsock-guest.S")));
    run(std::process::Command::new("ld")
        .args(["-m", "elf_x86_64", "-nostdlib", "--build-id=none", "-T"])
        .arg(src.join("vsock-guest.ld"))
        .arg("-o")
        .arg(&elf)
        .arg(&obj));
    elf
}

/// Opens a backdoor stream through the real firecracker's hybrid vsock and
/// reads the first line the guest sent.
async fn banner_over_vsock(vm: &MicroVmInstance) -> String {
    use tokio::io::AsyncBufReadExt;
    let stream = vm
        .connect(Instant::now() + Duration::from_secs(10))
        .await
        .expect("hybrid vsock connect");
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .expect("the guest's banner within 5 s")
        .unwrap();
    line
}

/// The hybrid-vsock connector against the real firecracker and a guest that
/// listens on vsock port 1234: `CONNECT 1234` → `OK <port>` → the guest's
/// banner, concurrent sessions, and reconnecting after snapshot create and
/// after restore in a fresh firecracker process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_firecracker_hybrid_vsock_reaches_a_guest_listener() {
    let lib = new_lib(TinyGuestBehavior::Halt, "");
    let elf = vsock_guest(lib.t.dir.path());
    let config = std::fs::read_to_string(lib.t.config()).unwrap();
    let tiny = lib.t.dir.path().join("tiny-Halt.elf");
    std::fs::write(
        lib.t.config(),
        config.replace(&tiny.display().to_string(), &elf.display().to_string()),
    )
    .unwrap();
    let vm = lib.start_microvm().await.expect("start");
    lib.wait_console(
        "vsock-guest: driver ready, listening on port 1234",
        1,
        Duration::from_secs(10),
    )
    .await;

    let t = Instant::now();
    assert_eq!(
        banner_over_vsock(&vm).await,
        "Spawning backdoor root shell...\n"
    );
    eprintln!("vsock connect + banner: {:?}", t.elapsed());
    // Two sessions at once.
    let (a, b) = tokio::join!(banner_over_vsock(&vm), banner_over_vsock(&vm));
    assert_eq!(a, "Spawning backdoor root shell...\n");
    assert_eq!(b, "Spawning backdoor root shell...\n");

    let snap = lib.state.path().join("snap");
    vm.op(BackendOp::SnapshotCreate(snap.clone()))
        .await
        .unwrap();
    assert_eq!(
        banner_over_vsock(&vm).await,
        "Spawning backdoor root shell...\n"
    );
    let old = vm.vmm_pid().unwrap();
    vm.op(BackendOp::SnapshotRestore(snap)).await.unwrap();
    assert_ne!(vm.vmm_pid().unwrap(), old);
    assert_eq!(
        banner_over_vsock(&vm).await,
        "Spawning backdoor root shell...\n"
    );
    // Restored, not rebooted.
    assert_eq!(lib.console.text().matches("vsock-guest: hello").count(), 1);
    vm.terminate(Duration::from_secs(1)).await;
}

/// The whole driver on the real firecracker, through the binary: the
/// vsock-guest answers every framed command with status 0 (it runs no shell),
/// so start, commands, block/unblock, snapshot create/restore with the
/// driver's reconnect, reboot (power button, fresh VMM, reconnect), crash,
/// shutdown (`systemctl poweroff` → the guest resets) and teardown's power
/// button (Ctrl-Alt-Del → the guest resets) all run for real, on three nodes
/// on a vlan.
#[test]
fn vm_firecracker_the_driver_runs_a_test_on_vsock_guests() {
    firecracker();
    let t = TestDir::new("fc-driver", "{}", "", "");
    let elf = vsock_guest(t.dir.path());
    let node = |n: &str| {
        format!(
            r#""{n}":{{"boot_timeout":20,"backend":{{"firecracker":{{"kernel":"{}","memory_mib":64}}}}}}"#,
            elf.display()
        )
    };
    std::fs::write(
        t.config(),
        format!(
            r#"{{"version":1,"name":"fc-driver","script":"test.rhai","nodes":{{{},{},{}}}}}"#,
            node("a"),
            node("b"),
            node("c")
        ),
    )
    .unwrap();
    let snap = t.path("snap");
    std::fs::write(
        t.path("test.rhai"),
        format!(
            r#"
b.start(#{{ allow_reboot: true }});
start_all();
a.succeed("true");
assert_eq(b.execute("anything").status, 0);
a.block();
a.unblock();
a.wait_for_console_text("banner sent");
a.snapshot_create("{snap}");
a.succeed("true");
a.snapshot_restore("{snap}");
a.succeed("true");
c.crash();
b.reboot();
b.succeed("true");
a.shutdown();
"#,
            snap = snap.display()
        ),
    )
    .unwrap();
    let r = attest(
        &["run", t.config().to_str().unwrap()],
        Duration::from_secs(90),
    );
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(
        r.stderr.contains("a: up (backdoor up after"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("a # vsock-guest: poweroff"),
        "{}",
        r.stderr
    );
    // b rebooted (power button, fresh VMM, boot, reconnect) and was still
    // up at the end: teardown pressed its power button again.
    assert_eq!(
        r.stderr.matches("b # vsock-guest: hello").count(),
        2,
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr.matches("b # vsock-guest: ctrl-alt-del").count(),
        2,
        "{}",
        r.stderr
    );
    assert!(snap.join("vm.mem").is_file());
    assert!(r.elapsed < Duration::from_secs(30), "took {:?}", r.elapsed);
    assert_no_vmm_left(r.pid);
    harness::assert_nothing_left(&r, "fc-driver");
}

/// Guest-to-guest traffic through the TAPs and the vlan bridge: each
/// vsock-guest brings up its virtio-net NIC and broadcasts an Ethernet frame
/// (ethertype 0x88b5, its MAC as source) every ~0.3 s, and prints the node
/// number of every such frame it receives. `block` takes a's TAP down: b
/// stops hearing a until `unblock`.
#[test]
fn vm_firecracker_guests_exchange_frames_over_the_vlan_and_block_cuts_them() {
    firecracker();
    let t = TestDir::new("fc-frames", "{}", "", "");
    let elf = vsock_guest(t.dir.path());
    let node = |n: &str| {
        format!(
            r#""{n}":{{"boot_timeout":20,"backend":{{"firecracker":{{"kernel":"{}","memory_mib":64}}}}}}"#,
            elf.display()
        )
    };
    std::fs::write(
        t.config(),
        format!(
            r#"{{"version":1,"name":"fc-frames","script":"test.rhai","nodes":{{{},{}}}}}"#,
            node("a"),
            node("b")
        ),
    )
    .unwrap();
    std::fs::write(
        t.path("test.rhai"),
        r#"
start_all();
a.wait_for_console_text("frame from node 2", #{ timeout: 10 });
b.wait_for_console_text("frame from node 1", #{ timeout: 10 });

a.block();
sleep(1.0);
b.wait_for_console_text("(?s).*");
let heard = true;
try { b.wait_for_console_text("frame from node 1", #{ timeout: 2 }); } catch { heard = false; }
if heard { throw "b heard a through a blocked link"; }
a.wait_for_console_text("(?s).*");
let heard_b = true;
try { a.wait_for_console_text("frame from node 2", #{ timeout: 2 }); } catch { heard_b = false; }
if heard_b { throw "a heard b through its blocked link"; }

a.unblock();
b.wait_for_console_text("frame from node 1", #{ timeout: 10 });
a.wait_for_console_text("frame from node 2", #{ timeout: 10 });
"#,
    )
    .unwrap();
    let r = attest(
        &["run", "--quiet-console", t.config().to_str().unwrap()],
        Duration::from_secs(90),
    );
    assert_eq!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert_no_vmm_left(r.pid);
    harness::assert_nothing_left(&r, "fc-frames");
}

/// SIGTERM while machines are up with their backdoor connected: teardown
/// presses each power button (the vsock-guests reset), and nothing is left.
#[test]
fn vm_firecracker_sigterm_with_machines_up_tears_down_gracefully() {
    firecracker();
    let t = TestDir::new("fc-graceful-term", "{}", "", "");
    let elf = vsock_guest(t.dir.path());
    let node = |n: &str| {
        format!(
            r#""{n}":{{"boot_timeout":20,"backend":{{"firecracker":{{"kernel":"{}","memory_mib":64}}}}}}"#,
            elf.display()
        )
    };
    std::fs::write(
        t.config(),
        format!(
            r#"{{"version":1,"name":"fc-graceful-term","script":"test.rhai","nodes":{{{},{}}}}}"#,
            node("a"),
            node("b")
        ),
    )
    .unwrap();
    std::fs::write(
        t.path("test.rhai"),
        // A machine wait, which the driver cancels on SIGTERM. (The global
        // `sleep()` is not cancelled by the driver at present.)
        "start_all();\nlog(\"all up\");\na.wait_for_console_text(\"never printed\", #{ timeout: 60 });\n",
    )
    .unwrap();
    let started = Instant::now();
    let child = harness::spawn(&["run", t.config().to_str().unwrap()]);
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while vmms_of(pid).len() < 2 {
        assert!(Instant::now() < deadline, "the VMs never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let r = harness::finish(child, started, Duration::from_secs(60));
    assert_ne!(r.code, Some(PASSED.into()), "{}", r.stderr);
    assert!(r.stderr.contains("all up"), "{}", r.stderr);
    assert!(
        r.stderr.contains("a # vsock-guest: ctrl-alt-del")
            && r.stderr.contains("b # vsock-guest: ctrl-alt-del"),
        "{}",
        r.stderr
    );
    assert!(r.elapsed < Duration::from_secs(20), "took {:?}", r.elapsed);
    assert_no_vmm_left(pid);
    harness::assert_nothing_left(&r, "fc-graceful-term");
}

/// The configuration firecracker really runs (`GET /vm/config`): machine
/// size, kernel and command line, the private disk copy with the `Async`
/// engine, the read-only store drive, the NIC on its TAP with the planned
/// MAC, and the vsock socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_firecracker_runs_the_configuration_attest_sent() {
    let mut lib = new_lib(TinyGuestBehavior::Tick, r#""vlans":[1],"#);
    let disk = lib.t.path("disk.img");
    let store = lib.t.path("store.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&store, vec![0u8; 1 << 20]).unwrap();
    let config = std::fs::read_to_string(lib.t.config()).unwrap();
    std::fs::write(
        lib.t.config(),
        config.replace(
            r#""memory_mib":64"#,
            &format!(
                r#""memory_mib":64,"cpus":2,"disk":"{}","cmdline":"console=ttyS0 attest.test=1","options":{{"io_engine":"Async","store_image":"{}","huge_pages":"None","snapshots":true,"enable_pci":false}}"#,
                disk.display(),
                store.display()
            ),
        ),
    )
    .unwrap();
    lib.network = Some(Arc::new(Network::new([1])));
    let vm = lib.start_microvm().await.expect("start");
    let c: serde_json::Value =
        serde_json::from_str(&vm.api_get("/vm/config").await.unwrap()).unwrap();
    assert_eq!(c["machine-config"]["vcpu_count"], 2, "{c:#}");
    assert_eq!(c["machine-config"]["mem_size_mib"], 64, "{c:#}");
    assert_eq!(
        c["boot-source"]["boot_args"], "console=ttyS0 attest.test=1",
        "{c:#}"
    );
    let drives = c["drives"].as_array().unwrap();
    assert_eq!(drives.len(), 2, "{c:#}");
    let root = &drives[0];
    assert_eq!(root["drive_id"], "rootfs");
    assert_eq!(root["is_root_device"], true);
    assert_eq!(root["io_engine"], "Async", "{c:#}");
    let root_path = root["path_on_host"].as_str().unwrap();
    assert_ne!(root_path, disk.to_str().unwrap(), "the VM must boot a copy");
    assert!(root_path.starts_with(lib.state.path().to_str().unwrap()));
    assert_eq!(drives[1]["drive_id"], "store");
    assert_eq!(drives[1]["is_read_only"], true);
    assert_eq!(drives[1]["path_on_host"], store.to_str().unwrap());
    let nic = &c["network-interfaces"][0];
    assert_eq!(nic["iface_id"], "eth0");
    assert_eq!(nic["host_dev_name"], "tap1v1");
    assert_eq!(nic["guest_mac"], "52:54:00:12:01:01");
    assert_eq!(c["vsock"]["guest_cid"], 3);
    assert!(c["vsock"]["uds_path"]
        .as_str()
        .unwrap()
        .ends_with("vm/vsock.sock"));
    vm.terminate(Duration::from_secs(1)).await;
}

// The tiny guest's own checks (it is test support, tests/harness/tiny_guest.rs).
#[test]
fn tiny_guest_elf_headers_are_consistent() {
    for pvh in [false, true] {
        for b in [
            TinyGuestBehavior::PowerOff,
            TinyGuestBehavior::Tick,
            TinyGuestBehavior::Halt,
        ] {
            let f = tiny_guest_elf(b, pvh);
            assert_eq!(&f[..4], b"\x7fELF");
            let entry = u64::from_le_bytes(f[24..32].try_into().unwrap());
            let off = (entry - u64::from(harness::tiny_guest::BASE)) as usize;
            assert_eq!(&f[off..off + 2], &[0xFA, 0xFC], "entry points at the code");
            let phnum = u16::from_le_bytes(f[56..58].try_into().unwrap());
            assert_eq!(phnum, if pvh { 2 } else { 1 });
            assert!(f.len() < 512, "tiny: {} bytes", f.len());
            let text = String::from_utf8_lossy(&f);
            assert!(text.contains(TINY_GUEST_HELLO));
        }
    }
}

/// `tests/fixtures/tiny-guest/build` runs this to write every variant
/// into `$ATTEST_TINY_GUEST_OUT` (a no-op otherwise).
#[test]
fn write_variants_when_asked() {
    let Some(dir) = std::env::var_os("ATTEST_TINY_GUEST_OUT") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, b) in [
        ("poweroff", TinyGuestBehavior::PowerOff),
        ("tick", TinyGuestBehavior::Tick),
        ("halt", TinyGuestBehavior::Halt),
    ] {
        std::fs::write(dir.join(format!("{name}.elf")), tiny_guest_elf(b, false)).unwrap();
        std::fs::write(dir.join(format!("{name}-pvh.elf")), tiny_guest_elf(b, true)).unwrap();
    }
}
