//! Real QEMU VMs (the Debian test image; TCG where KVM cannot run guests, so
//! about a minute per boot). Driven through the real `attest` binary; every
//! test checks that no QEMU or vde_switch it started is left running.
//!
//! Boots: two-node test 2, lifecycle test 3, kill test 1. Tests that boot
//! are named `vm_*`: nextest runs them one at a time (.config/nextest.toml).
//! The lifecycle and kill tests use the default protocol (the agent over
//! hvc0, bootstrapped again after a restore and a reboot), the two-node test
//! the bash protocol, so both stay tested on QEMU.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::Digest;

fn manifest() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian/out/manifest.json");
    let disk = p.with_file_name("rootfs.ext4");
    assert!(
        p.is_file() && disk.is_file(),
        "the Debian test image is missing ({}): run images/debian/build first",
        p.display()
    );
    p
}

/// A test directory: config + script, and a private TMPDIR for attest so its
/// state dir (and every process started from it) is recognisable.
struct Case {
    dir: tempfile::TempDir,
    /// `--protocol` for the run (None: attest's default).
    protocol: Option<&'static str>,
}

struct Outcome {
    code: i32,
    stderr: String,
}

impl Case {
    /// `nodes`: name and the body of its `qemu` settings ([`image_settings`]).
    fn new(name: &str, nodes: &[(&str, String)], enable_network: bool, script: &str) -> Case {
        let dir = tempfile::Builder::new()
            .prefix("attest-qemu-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let nodes: Vec<String> = nodes
            .iter()
            .map(|(n, settings)| {
                format!(r#""{n}": {{ "backend": {{ "qemu": {{ {settings} }} }} }}"#)
            })
            .collect();
        let config = format!(
            r#"{{ "version": 1, "name": "{name}", "script": "test.rhai", "global_timeout": 1500,
                 "enable_network": {enable_network}, "nodes": {{ {} }} }}"#,
            nodes.join(",\n")
        );
        std::fs::write(dir.path().join("test.json"), config).unwrap();
        std::fs::write(dir.path().join("test.rhai"), script).unwrap();
        Case {
            dir,
            protocol: None,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Runs attest; `on_line` sees every stderr line as it comes.
    fn run(&self, mut on_line: impl FnMut(&str)) -> Outcome {
        let mut child = Command::new(env!("CARGO_BIN_EXE_attest"))
            .arg("run")
            .arg(self.path("test.json"))
            .args(self.protocol.iter().flat_map(|p| ["--protocol", p]))
            .env("TMPDIR", self.path("tmp"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        // A failed assertion in `on_line` must not leave attest running.
        let mut child = KillOnDrop(child);
        let out_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(l) = line else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut stderr = String::new();
        for line in rx {
            eprintln!("{line}");
            on_line(&line);
            stderr.push_str(&line);
            stderr.push('\n');
        }
        let status = child.0.wait().unwrap();
        let _ = out_thread.join();
        Outcome {
            code: status.code().unwrap_or(-1),
            stderr,
        }
    }

    /// Processes whose command line mentions this case's directory.
    fn processes(&self) -> Vec<(i32, String)> {
        processes_mentioning(&self.dir.path().display().to_string())
    }

    /// Asserts nothing the run started is left (a short grace for reaping).
    fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.processes();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!("processes left behind: {left:#?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The qemu settings of a node booting the Debian test image.
fn image_settings() -> String {
    format!(r#""image": "{}""#, manifest().display())
}

/// A stand-in for NixOS' `run-<name>-vm` (qemu-vm.nix) booting the Debian
/// image: its disk in `$TMPDIR`, the user-mode NIC `user.0` first (eth0),
/// then vlan NICs `vlan<position>` from `QEMU_VDE_SOCKET_<n>` with NixOS'
/// MACs (eth1, …), its own `accel=kvm:tcg`, then `$QEMU_OPTS` and `"$@"` last.
fn fake_nixos_start_script(dir: &Path, name: &str, number: u8, hosts: &str) -> PathBuf {
    let m = manifest();
    let out = m.parent().unwrap();
    let text = std::fs::read_to_string(&m).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cmdline = v["kernel_cmdline"].as_str().unwrap();
    let script = format!(
        r#"#!/usr/bin/env bash
set -e
test "$USE_TMPDIR" = 1
NIX_DISK_IMAGE=${{NIX_DISK_IMAGE:-$TMPDIR/{name}.qcow2}}
test -e "$NIX_DISK_IMAGE" || qemu-img create -q -f qcow2 -F raw -b {out}/rootfs.ext4 "$NIX_DISK_IMAGE"
exec qemu-system-x86_64 -machine q35,accel=kvm:tcg -m 1024 -nodefaults -no-user-config -vga std \
  -drive file="$NIX_DISK_IMAGE",if=none,id=root,format=qcow2 -device virtio-blk-pci,drive=root \
  -netdev user,id=user.0,restrict=on -device virtio-net-pci,netdev=user.0 \
  -netdev vde,id=vlan1,sock="$QEMU_VDE_SOCKET_1" -device virtio-net-pci,netdev=vlan1,mac=52:54:00:12:01:0{number} \
  -kernel {out}/vmlinuz -initrd {out}/initrd.img \
  -append "{cmdline} ip=192.168.1.{number}:::255.255.255.0::eth1:off ip=[2001:db8:1::{number}]:::64::eth1:off systemd.hostname={name} attest.hosts={hosts} $QEMU_KERNEL_PARAMS" \
  $QEMU_OPTS "$@"
"#,
        out = out.display()
    );
    let p = dir.join(format!("run-{name}-vm"));
    std::fs::write(&p, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) && (cmd.contains("qemu-system") || cmd.contains("vde_switch")) {
            found.push((pid, cmd));
        }
    }
    found
}

fn assert_passed(o: &Outcome) {
    assert_eq!(o.code, 0, "attest failed:\n{}", o.stderr);
}

#[test]
fn vm_two_nodes_on_a_vde_vlan_reach_each_other_by_name() {
    // The client comes from a NixOS-style start script, the server from
    // the plain image description: both paths in one test.
    let scripts = tempfile::tempdir().unwrap();
    let run_client = fake_nixos_start_script(
        scripts.path(),
        "client",
        1,
        "192.168.1.1:client,2001:db8:1::1:client,192.168.1.2:server,2001:db8:1::2:server",
    );
    let case = Case::new(
        "qemu-two-nodes",
        &[
            ("server", image_settings()),
            (
                "client",
                format!(r#""start_script": "{}""#, run_client.display()),
            ),
        ],
        false,
        r#"
start_all();
server.wait_for_unit("nginx.service");
server.wait_for_open_port(80);
let page = client.wait_until_succeeds("curl -sf http://server", #{ timeout: 120 });
assert_contains(page, "Welcome to nginx");
assert_matches(client.succeed("getent ahostsv4 server"), "^192\\.168\\.1\\.2\\s");
assert_matches(client.succeed("getent ahostsv6 server"), "^2001:db8:1::2\\s");
assert_matches(client.succeed("cat /sys/class/net/eth1/address"), "^52:54:00:12:01:01");
assert_matches(server.succeed("cat /sys/class/net/eth1/address"), "^52:54:00:12:01:02");
assert_matches(server.succeed("ip -6 -o addr show dev eth1 scope global"), "2001:db8:1::2/64");
server.wait_until_succeeds("ip -6 -o addr show dev eth1 scope link | grep -q fe80::", #{ timeout: 60 });
client.wait_until_succeeds("ping -6 -c1 -W2 2001:db8:1::2", #{ timeout: 60 });
// Over hvc0 the bash protocol has no flow control: a big output arrives
// whole only because QEMU's end of the backdoor can hold it (relay.rs).
for m in [server, client] {
    let out = m.succeed("head -c 4194304 /dev/zero | tr '\\0' a");
    assert_eq(out.len(), 4194304);
}
server.block();
client.fail("curl -sf --max-time 3 http://server");
server.unblock();
client.wait_until_succeeds("curl -sf --max-time 3 http://server", #{ timeout: 60 });
log("two-node test done");
"#,
    );
    let mut case = case;
    case.protocol = Some("bash");
    let o = case.run(|_| {});
    assert_passed(&o);
    assert!(o.stderr.contains("accelerator"), "{}", o.stderr);
    assert!(o.stderr.contains("two-node test done"));
    assert!(o.stderr.contains("(bash protocol)"), "{}", o.stderr);
    case.assert_nothing_left();
    assert!(
        case.path("tmp").read_dir().unwrap().next().is_none(),
        "attest left its state dir behind"
    );
}

#[test]
fn a_bad_qemu_flag_fails_the_start_at_once_with_qemus_message() {
    let case = Case::new(
        "qemu-bad-flag",
        &[(
            "m",
            format!(r#"{}, "extra_args": ["-no-such-flag"]"#, image_settings()),
        )],
        false,
        "m.start();",
    );
    let started = Instant::now();
    let o = case.run(|_| {});
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("QEMU exited with status 1 while starting"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("-no-such-flag: invalid option"),
        "{}",
        o.stderr
    );
    case.assert_nothing_left();
}

#[test]
fn vm_lifecycle_screens_keys_ocr_links_snapshots_reboot_shutdown_crash() {
    let dir_marker = "@DIR@";
    let script = r#"
// NixOS: reboot() keeps the machine running only under allow_reboot.
machine.start(#{ allow_reboot: true });
machine.wait_for_unit("multi-user.target");

// The agent runs the commands (auto's choice on QEMU): it is their parent.
let agent = machine.succeed("cat /proc/$PPID/comm");
assert_contains(agent, "agent-");
// A big output arrives whole through hvc0 (the agent keeps its window of
// unacknowledged bytes), and files travel both ways as raw frames.
let out = machine.succeed("head -c 4194304 /dev/zero | tr '\\0' x");
assert_eq(out.len, 4194304);
machine.succeed("head -c 1048576 /dev/urandom > /root/blob");
machine.copy_from_machine("/root/blob", "@DIR@/fromvm");
log(`guest blob ${machine.succeed("sha256sum </root/blob")}`);
machine.copy_from_host("@DIR@/fromvm/blob", "/root/blob2");
machine.succeed("cmp /root/blob /root/blob2");

// The VGA console, as PNG.
machine.screenshot("@DIR@/screen.png");

// Keys reach the guest's keyboard: switch the VGA console to tty2.
machine.send_key("ctrl-alt-f2");
machine.wait_until_succeeds("grep -qx tty2 /sys/class/tty/tty0/active", #{ timeout: 30 });

// OCR of the VGA console (tesseract + the NixOS driver's preprocessing).
machine.succeed("printf '\\033c' > /dev/tty2; echo 'ATTEST READS THIS SCREEN' > /dev/tty2");
machine.wait_for_text("READS THIS", #{ timeout: 120 });
// NixOS: the raw reading, and the raw one plus two preprocessed variants.
let variants = machine.get_screen_text_variants();
assert_eq(variants.len(), 3);
if !variants.some(|t| t.contains("READS")) { throw `no variant reads the screen: ${variants}`; }
assert_eq(type_of(machine.get_screen_text()), "string");
// The same tty read through the guest, and dumped to its journal.
assert_contains(machine.get_tty_text("2"), "ATTEST READS THIS SCREEN");
machine.dump_tty_contents(2);
// grep without -q reads to the end: `grep -q` exits at the first match and
// journalctl's SIGPIPE (141) fails the pipeline under pipefail, as in NixOS.
machine.wait_until_succeeds("journalctl -b -o cat | grep 'ATTEST READS THIS SCREEN' >/dev/null", #{ timeout: 30 });
// No X server in this guest: the NixOS command fails, naming xwininfo.
try { machine.get_window_names(); throw "no error"; }
catch (e) { assert_contains(`${e}`, "xwininfo"); }

// block/unblock take the vlan link down and up.
machine.block();
machine.wait_until_succeeds("grep -qx 0 /sys/class/net/eth1/carrier", #{ timeout: 30 });
machine.unblock();
machine.wait_until_succeeds("grep -qx 1 /sys/class/net/eth1/carrier", #{ timeout: 30 });

// Snapshots: memory and disk; the VM keeps running after create.
machine.succeed("echo before > /root/marker && sync && echo in-memory > /run/mem-marker");
machine.snapshot_create("@DIR@/snap");
machine.succeed("rm /root/marker /run/mem-marker && echo after > /root/after && sync");
machine.snapshot_restore("@DIR@/snap");
assert_contains(machine.succeed("cat /root/marker"), "before");
assert_contains(machine.succeed("cat /run/mem-marker"), "in-memory");
machine.fail("test -e /root/after");
log("snapshot restored");

// After a restore the agent hands hvc0 back to a shell and is started
// again; its outputs still arrive whole, and waits still work.
assert_eq(machine.succeed("cat /proc/$PPID/comm"), agent);
assert_eq(machine.succeed("head -c 1048576 /dev/zero | tr '\\0' y").len, 1048576);
machine.wait_for_unit("multi-user.target");

// Reboot: /run is fresh, the disk is kept, the backdoor comes back.
machine.reboot();
machine.fail("test -e /run/mem-marker");
assert_eq(machine.succeed("cat /proc/$PPID/comm"), agent);
assert_contains(machine.succeed("cat /root/marker"), "before");
log("rebooted");

// Shutdown and start again: the disk survives.
machine.shutdown();
machine.start();
assert_contains(machine.succeed("cat /root/marker"), "before");
log("started again");

machine.crash();
log("crashed");
"#
    .to_owned();
    let settings = format!(r#"{}, "enable_ocr": true"#, image_settings());
    let case = Case::new("qemu-lifecycle", &[("machine", settings)], true, "");
    let script = script.replace(dir_marker, &case.dir.path().display().to_string());
    std::fs::write(case.path("test.rhai"), script).unwrap();
    let o = case.run(|_| {});
    assert_passed(&o);
    for step in ["snapshot restored", "rebooted", "started again", "crashed"] {
        assert!(o.stderr.contains(step), "missing {step:?}:\n{}", o.stderr);
    }
    // Both starts, the restore and the reboot used the agent; nothing
    // fell back to bash.
    assert_eq!(
        o.stderr.matches("(agent protocol)").count(),
        4,
        "{}",
        o.stderr
    );
    assert!(
        !o.stderr.contains("using the bash protocol") && !o.stderr.contains("(bash protocol)"),
        "{}",
        o.stderr
    );
    let fetched = std::fs::read(case.path("fromvm/blob")).unwrap();
    assert_eq!(fetched.len(), 1 << 20);
    let sum: String = sha2::Sha256::digest(&fetched)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        o.stderr.contains(&format!("guest blob {sum}  -")),
        "copy_from_machine differs from the guest's file (host sha256 {sum}):\n{}",
        o.stderr
    );
    let png = std::fs::read(case.path("screen.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // IHDR: the VGA text console's size (the OCR step read what is on it).
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!(&png[12..16], b"IHDR", "no IHDR");
    assert!(
        dim(16) >= 640 && dim(20) >= 400,
        "screenshot is {}x{}",
        dim(16),
        dim(20)
    );
    assert!(case.path("snap/vm.state").is_file());
    case.assert_nothing_left();
}

#[test]
fn vm_killed_mid_command_fails_the_call_at_once() {
    // The victim also has a user-mode NIC, to check forward_port on the way.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(manifest()).unwrap()).unwrap();
    let cmdline = format!(
        "{} ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off",
        v["kernel_cmdline"].as_str().unwrap()
    );
    let settings = format!(
        r#"{}, "cmdline": "{cmdline}",
           "extra_args": ["-netdev", "user,id=user0", "-device", "virtio-net-pci,netdev=user0"]"#,
        image_settings()
    );
    let case = Case::new(
        "qemu-killed",
        &[("victim", settings)],
        false,
        &r#"
victim.start();
victim.wait_for_unit("nginx.service");
victim.forward_port(@PORT@, 80);
log("about to sleep");
victim.succeed("sleep 60");
log("should not get here");
"#
        .replace("@PORT@", &port.to_string()),
    );
    let needle = case.path("tmp").display().to_string();
    let mut killed_at = None;
    let mut forwarded = false;
    let o = case.run(|line| {
        if killed_at.is_none() && line.contains("about to sleep") {
            // forward_port: the guest's nginx answers on the host port.
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut page = String::new();
            let _ = c.read_to_string(&mut page);
            assert!(page.contains("nginx"), "forwarded port answered {page:?}");
            forwarded = true;
            std::thread::sleep(Duration::from_secs(3));
            let qemu: Vec<_> = processes_mentioning(&needle)
                .into_iter()
                .filter(|(_, c)| c.contains("qemu-system"))
                .collect();
            assert_eq!(qemu.len(), 1, "expected one QEMU: {qemu:?}");
            let pid = qemu[0].0;
            assert!(pid > 1, "not a QEMU pid: {pid}");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .expect("kill QEMU");
            killed_at = Some(Instant::now());
        }
    });
    let killed_at = killed_at.expect("the script never reached the sleep");
    assert!(forwarded);
    assert!(
        killed_at.elapsed() < Duration::from_secs(45),
        "the failure took {:?} after the kill",
        killed_at.elapsed()
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("killed by signal 9 (SIGKILL) while running `sleep 60`"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("last console lines"), "{}", o.stderr);
    assert!(!o.stderr.contains("should not get here"));
    case.assert_nothing_left();
}
