//! The ssh backend against a real sshd (the Debian test image in a container
//! in a network namespace of the test's own, see `common/sshd_host.rs`),
//! through the real binary run inside that namespace: no test traffic leaves it.
//!
//! Connection errors (wrong key, unknown or changed host key) fail the run
//! with exit status 1: the config is valid, the machine fails to start while
//! the script runs (`remote.start()`), and the message names the host and says
//! what to change. Needs root and `images/debian/build`.

mod common;
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::sshd_host::{run_attest, run_attest_with, SshdHost};
use sha2::{Digest, Sha256};

/// Writes `test.json` (nodes as given) and `test.rhai` into a temp dir.
fn write_test(name: &str, nodes: &str, script: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("test.rhai"), script).expect("write script");
    let config = dir.path().join("test.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"version":1,"name":"{name}","script":"test.rhai","global_timeout":240,"nodes":{nodes}}}"#
        ),
    )
    .expect("write config");
    (dir, config)
}

/// The JSON of an ssh node reaching `host`; `extra` adds fields.
fn ssh_node(host: &SshdHost, key: &Path, known_hosts: &Path, extra: &str) -> String {
    format!(
        r#"{{"backend":{{"ssh":{{"host":"{}","user":"root","identity_file":"{}","known_hosts_file":"{}"{extra}}}}}}}"#,
        host.addr,
        key.display(),
        known_hosts.display()
    )
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// ssh clients attest left running towards `addr` (there must be none).
fn leftover_ssh_clients(addr: &str) -> Vec<String> {
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ssh = args.first().is_some_and(|a| a.ends_with("ssh"));
        // Any ssh towards this test's own address: nothing else talks to it.
        if is_ssh
            && args
                .iter()
                .any(|a| a == addr || a.ends_with(&format!("@{addr}")))
        {
            left.push(args.join(" "));
        }
    }
    left
}

/// The test's sshd lives in a namespace whose only link is its loopback, and
/// its address is a loopback one: nothing of the test can leave that
/// namespace, and nothing in it is a private-range address (shared CI hosts
/// watch SSH to those and kill the run).
fn assert_confined_to_its_namespace(host: &SshdHost) {
    let links = std::process::Command::new("ip")
        .args(["-n", &host.netns, "-o", "link", "show"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    let names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    assert_eq!(
        names,
        ["lo"],
        "the test's namespace has other links:\n{links}"
    );
    assert!(
        host.addr.starts_with("127."),
        "the test's sshd address {} is not a loopback one",
        host.addr
    );
    let ours = std::fs::metadata("/proc/self/ns/net").expect("own netns");
    let theirs = std::fs::metadata(host.netns_path()).expect("test netns");
    use std::os::unix::fs::MetadataExt;
    assert_ne!(
        ours.ino(),
        theirs.ino(),
        "the test runs in the host's namespace"
    );
}

#[test]
fn ssh_script_api_copies_and_latency() {
    let host = SshdHost::start();
    assert_confined_to_its_namespace(&host);
    // A binary file of 6 MiB with every byte value.
    let blob: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let blob_hash = sha256_hex(&blob);
    let script = format!(
        r#"
remote.start();
remote.wait_for_unit("multi-user.target");
remote.wait_for_unit("ssh.service");
assert_eq(remote.succeed("echo hi"), "hi\n");
let r = remote.execute("echo out; echo err >&2; exit 3");
assert_eq(r.status, 3);
assert_eq(r.stdout, "out\n");
assert_eq(r.stderr, "err\n");
remote.fail("false");
assert_eq(remote.succeed("id -u"), "0\n");

remote.copy_from_host("blob.bin", "/tmp/attest-blob.bin");
assert_eq(remote.succeed("sha256sum /tmp/attest-blob.bin | cut -d' ' -f1"), "{blob_hash}\n");
remote.succeed("head -c 5500000 /dev/urandom > /tmp/gen.bin; sha256sum /tmp/gen.bin | cut -d' ' -f1 > /tmp/gen.sha");
remote.copy_from_machine("/tmp/gen.bin");
remote.copy_from_vm("/tmp/gen.sha", "");

let n = 100;
let t = timestamp();
for i in 0..n {{ remote.execute("true"); }}
print(`ssh-latency-ms: ${{t.elapsed * 1000.0 / n}}`);

// Through `machines` (known only at run time): `attest check` refuses
// `remote.shutdown()` itself; the machine refuses from the same table.
let host = machines.filter(|m| m.name == "remote")[0];
let refused = false;
try {{ host.shutdown(); }} catch (e) {{
    refused = true;
    if !`${{e}}`.contains("shutdown is not supported by the ssh backend of node `remote`: attest never powers off") {{ throw `${{e}}`; }}
}}
if !refused {{ throw "shutdown of a host attest does not own must be refused"; }}
try {{ host.crash(); refused = false; }} catch (e) {{ }}
if !refused {{ throw "crash of a host attest does not own must be refused"; }}
remote.succeed("true");
"#
    );
    let (dir, config) = write_test(
        "ssh-api",
        &format!(
            r#"{{"remote":{}}}"#,
            ssh_node(&host, &host.key(), &host.known_hosts(), "")
        ),
        &script,
    );
    std::fs::write(dir.path().join("blob.bin"), &blob).expect("write blob");
    // The bash protocol, then the default: the agent, uploaded over the
    // connection into the host's /run and run in one session.
    for (args, protocol) in [(&["--protocol", "bash"][..], "bash"), (&[][..], "agent")] {
        let _ = std::fs::remove_file(dir.path().join("gen.bin"));
        let (code, out) = run_attest_with(&host, &config, args, Duration::from_secs(180));
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("({protocol} protocol)")), "{out}");

        let back = std::fs::read(dir.path().join("gen.bin")).expect("copied file");
        assert_eq!(back.len(), 5_500_000);
        let want = std::fs::read_to_string(dir.path().join("gen.sha")).expect("hash file");
        assert_eq!(
            sha256_hex(&back),
            want.trim(),
            "copy_from_machine corrupted the file"
        );

        let ms: f64 = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("ssh-latency-ms: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no latency line:\n{out}"));
        eprintln!(
            "ssh per-command latency, {protocol} protocol (execute(\"true\"), mean of 100): {ms:.2} ms"
        );
        assert!(ms < 200.0, "per-command latency {ms} ms");
    }
    // The agent stays where attest put it (once per boot, as in a VM) and
    // nothing it started runs on.
    let listing = String::from_utf8_lossy(&host.ssh("ls /run/attest").stdout).into_owned();
    assert!(listing.contains("agent-"), "{listing}");
    let running = host.ssh("pgrep -af '/run/attest/[a]gent-' || true");
    let running = String::from_utf8_lossy(&running.stdout).into_owned();
    assert_eq!(running, "", "an agent outlived attest");

    // The host still runs and takes logins; attest left no ssh behind.
    let again = host.ssh("systemctl is-system-running || true");
    assert!(again.status.success(), "host no longer answers: {again:?}");
    assert!(
        leftover_ssh_clients(&host.addr).is_empty(),
        "{:?}",
        leftover_ssh_clients(&host.addr)
    );
}

#[test]
fn ssh_wrong_key_is_a_clear_error() {
    let host = SshdHost::start();
    let wrong = host.dir.path().join("wrong_key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&wrong)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let (_dir, config) = write_test(
        "ssh-wrong-key",
        &format!(
            r#"{{"remote":{}}}"#,
            ssh_node(&host, &wrong, &host.known_hosts(), "")
        ),
        "remote.start();\nremote.succeed(\"true\");\n",
    );
    let started = Instant::now();
    let (code, out) = run_attest(&host, &config, Duration::from_secs(60));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("authentication refused by root@{}", host.addr)),
        "{out}"
    );
    assert!(out.contains(&wrong.display().to_string()), "{out}");
    // A configuration error is not retried until the boot timeout.
    assert!(started.elapsed() < Duration::from_secs(20), "{out}");
}

#[test]
fn ssh_unknown_host_key_under_strict_policy() {
    let host = SshdHost::start();
    // No `known_hosts` key: strict is the default.
    let (_dir, config) = write_test(
        "ssh-unknown-key",
        &format!(
            r#"{{"remote":{}}}"#,
            ssh_node(&host, &host.key(), &host.empty_known_hosts(), "")
        ),
        "remote.start();\n",
    );
    let (code, out) = run_attest(&host, &config, Duration::from_secs(60));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "host key of root@{} is not in known_hosts",
            host.addr
        )),
        "{out}"
    );
    assert!(out.contains(r#""known_hosts": "accept-new""#), "{out}");

    // A changed key is a mismatch, also under accept-new.
    let other = host.dir.path().join("other_host_key");
    std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .expect("ssh-keygen");
    let changed = host.dir.path().join("known_hosts.changed");
    let pubkey = std::fs::read_to_string(other.with_extension("pub")).expect("pub key");
    std::fs::write(&changed, format!("{} {pubkey}", host.addr)).expect("write");
    let (_dir2, config) = write_test(
        "ssh-changed-key",
        &format!(
            r#"{{"remote":{}}}"#,
            ssh_node(
                &host,
                &host.key(),
                &changed,
                r#","known_hosts":"accept-new""#
            )
        ),
        "remote.start();\n",
    );
    let (code, out) = run_attest(&host, &config, Duration::from_secs(60));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("host key mismatch for root@{}", host.addr)),
        "{out}"
    );

    // accept-new with an empty file connects and records the key.
    let fresh = host.dir.path().join("known_hosts.fresh");
    std::fs::write(&fresh, "").expect("write");
    let (_dir3, config) = write_test(
        "ssh-accept-new",
        &format!(
            r#"{{"remote":{}}}"#,
            ssh_node(&host, &host.key(), &fresh, r#","known_hosts":"accept-new""#)
        ),
        "remote.succeed(\"true\");\n",
    );
    let (code, out) = run_attest(&host, &config, Duration::from_secs(60));
    assert_eq!(code, 0, "{out}");
    let recorded = std::fs::read_to_string(&fresh).expect("read");
    assert!(recorded.contains("ssh-ed25519"), "{recorded}");
}

#[test]
fn ssh_sshd_killed_mid_command_fails_at_once() {
    let mut host = SshdHost::start();
    let (_dir, config) = write_test(
        "ssh-killed",
        &format!(
            r#"{{"remote":{}}}"#,
            ssh_node(&host, &host.key(), &host.known_hosts(), "")
        ),
        "remote.start();\nremote.succeed(\"sleep 60\");\n",
    );
    let killed_at = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while host.pids_named("sleep").is_empty() {
                assert!(Instant::now() < deadline, "sleep 60 never started");
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(300));
            assert!(host.kill_sshd() > 0);
            Instant::now()
        });
        let (code, out) = run_attest(&host, &config, Duration::from_secs(90));
        let killed_at = killer.join().expect("killer thread");
        let ended = Instant::now();
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("lost the ssh connection to root@{}", host.addr)),
            "{out}"
        );
        assert!(out.contains("while running `sleep 60`"), "{out}");
        (killed_at, ended)
    });
    let (killed, ended) = killed_at;
    assert!(
        ended.duration_since(killed) < Duration::from_secs(10),
        "the call took {:?} to fail after sshd died",
        ended.duration_since(killed)
    );
    // Only sshd died: the host itself runs on.
    assert!(host.container_running());
    assert!(leftover_ssh_clients(&host.addr).is_empty());
}

#[test]
fn ssh_mixed_with_nspawn_node() {
    let host = SshdHost::start();
    let manifest = common::sshd_host::image_dir().join("manifest.json");
    let nodes = format!(
        r#"{{"remote":{},"local":{{"backend":{{"nspawn":{{"image":"{}"}}}}}}}}"#,
        ssh_node(&host, &host.key(), &host.known_hosts(), ""),
        manifest.display()
    );
    let script = r#"
start_all();
local.wait_for_unit("multi-user.target");
remote.wait_for_unit("multi-user.target");
assert_eq(local.succeed("hostname"), "local\n");
let r = remote.succeed("cat /proc/sys/kernel/hostname");
if r == "local\n" { throw r; }
remote.succeed("echo from-remote > /tmp/x");
assert_eq(remote.succeed("cat /tmp/x"), "from-remote\n");
local.shutdown();
"#;
    let (_dir, config) = write_test("ssh-mixed", &nodes, script);
    let (code, out) = run_attest(&host, &config, Duration::from_secs(180));
    assert_eq!(code, 0, "{out}");
    assert!(host.ssh("true").status.success());
}

#[test]
fn ssh_owned_host_may_be_shut_down() {
    let mut host = SshdHost::start();
    let (_dir, config) = write_test(
        "ssh-owned",
        &format!(
            r#"{{"remote":{}}}"#,
            ssh_node(&host, &host.key(), &host.known_hosts(), r#","owned":true"#)
        ),
        "remote.start();\nremote.wait_for_unit(\"multi-user.target\");\nremote.shutdown();\n",
    );
    let (code, out) = run_attest(&host, &config, Duration::from_secs(120));
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while host.container_running() {
        assert!(
            Instant::now() < deadline,
            "the owned host did not power off"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ssh_remote_lacking_tools_and_closed_port() {
    let host = SshdHost::start();
    // The container's root is a volatile overlay: this changes only this boot.
    let hide = host.ssh("mv /usr/bin/timeout /usr/bin/timeout.hidden");
    assert!(hide.status.success(), "{hide:?}");
    let (_dir, config) = write_test(
        "ssh-lacks-timeout",
        &format!(
            r#"{{"remote":{}}}"#,
            ssh_node(&host, &host.key(), &host.known_hosts(), "")
        ),
        "remote.start();\n",
    );
    let (code, out) = run_attest(&host, &config, Duration::from_secs(60));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("remote lacks timeout on root@{}", host.addr)),
        "{out}"
    );
    assert!(host
        .ssh("mv /usr/bin/timeout.hidden /usr/bin/timeout")
        .status
        .success());

    // Nothing listens on port 2222: attest retries until the node's
    // boot_timeout, then says the host refused the connection.
    let (_dir2, config) = write_test(
        "ssh-closed-port",
        &format!(
            r#"{{"remote":{{"boot_timeout":3,"backend":{{"ssh":{{"host":"{}","port":2222,"user":"root","identity_file":"{}","known_hosts_file":"{}"}}}}}}}}"#,
            host.addr,
            host.key().display(),
            host.known_hosts().display()
        ),
        "remote.start();\n",
    );
    let started = Instant::now();
    let (code, out) = run_attest(&host, &config, Duration::from_secs(60));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "cannot connect to root@{}:2222 within 3 s",
            host.addr
        )),
        "{out}"
    );
    assert!(out.contains("refused the connection"), "{out}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "{took:?}"
    );
}

/// Sessions run concurrently over the one connection (`max_sessions` > 1),
/// and `terminate` ends every ssh process while the host keeps running.
#[test]
fn ssh_sessions_are_concurrent_over_one_connection() {
    use std::sync::Arc;

    use attest::backend::StartContext;
    use attest::config::{BackendKind, TestConfig};
    use attest::console::ConsoleLog;
    use attest::guest::Session;
    use attest::report::{ReportOptions, Reporter};

    let mut host = SshdHost::start();
    let (dir, config) = write_test(
        "ssh-concurrent",
        &format!(
            r#"{{"remote":{}}}"#,
            ssh_node(&host, &host.key(), &host.known_hosts(), "")
        ),
        "",
    );
    let addr = host.addr.clone();
    // A runtime on one thread inside the test's namespace: the ssh processes
    // it spawns live there too.
    host.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let config = Arc::new(TestConfig::load(&config).expect("config"));
            let console = ConsoleLog::new(Arc::new(|_: &str| {}));
            let node = &config.nodes["remote"];
            let backend = attest::backend::for_node(node);
            assert_eq!(backend.kind(), BackendKind::Ssh);
            let ctx = StartContext {
                machine: "remote".into(),
                boot_timeout: attest::backend::boot_timeout(node, &*backend),
                config: config.clone(),
                state_dir: dir.path().join("state"),
                console,
                network: None,
                reporter: Reporter::new("ssh-concurrent", &ReportOptions::default())
                    .expect("reporter"),
                tasks: tokio_util::task::TaskTracker::new(),
            };
            let instance = backend.start(&ctx).await.expect("start");
            assert!(instance.max_sessions() > 1);
            assert!(attest::backend::capability::support(
                &config.nodes["remote"].backend,
                attest::backend::capability::Capability::PowerOff
            )
            .is_err());
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut sessions = Vec::new();
            for _ in 0..4 {
                let stream = instance.connect(deadline).await.expect("connect");
                sessions.push(
                    Session::establish(stream, Duration::from_secs(30))
                        .await
                        .expect("session"),
                );
            }
            let started = Instant::now();
            let runs = sessions
                .iter_mut()
                .map(|s| s.execute("sleep 2; echo $$", Duration::from_secs(30)));
            let outs = futures_join_all(runs).await;
            let took = started.elapsed();
            let mut shells: Vec<String> = outs
                .into_iter()
                .map(|o| o.expect("execute").stdout_text())
                .collect();
            shells.sort();
            shells.dedup();
            assert_eq!(shells.len(), 4, "four distinct remote shells");
            assert!(
                took < Duration::from_secs(5),
                "4 × sleep 2 took {took:?}: not concurrent"
            );

            drop(sessions);
            instance.terminate(Duration::from_secs(5)).await;
            assert!(
                instance.exit_watch().borrow().is_some(),
                "master still running"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                leftover_ssh_clients(&addr).is_empty(),
                "{:?}",
                leftover_ssh_clients(&addr)
            );
        })
    });
    assert!(host.container_running());
    assert!(host.ssh("true").status.success());
}

/// Polls every future to completion concurrently (no `futures` dependency).
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut outs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if outs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outs[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().map(|o| o.expect("ready")).collect()
}

/// Through a jump host: the container is the hop, and the target is its own
/// sshd on 127.0.0.1 (same host key). The hop uses the node's identity file
/// and known_hosts too.
#[test]
fn ssh_through_jump_host() {
    let host = SshdHost::start();
    let known = host.dir.path().join("known_hosts.jump");
    let line = std::fs::read_to_string(host.known_hosts()).expect("read");
    let key = line.split_once(' ').expect("known_hosts line").1;
    std::fs::write(&known, format!("{line}127.0.0.1 {key}")).expect("write");
    let (_dir, config) = write_test(
        "ssh-jump",
        &format!(
            r#"{{"remote":{{"backend":{{"ssh":{{"host":"127.0.0.1","user":"root","identity_file":"{}","known_hosts_file":"{}","jump_host":"root@{}:22"}}}}}}}}"#,
            host.key().display(),
            known.display(),
            host.addr
        ),
        "remote.start();\nassert_eq(remote.succeed(\"echo $SSH_CLIENT | cut -d' ' -f1\"), \"127.0.0.1\\n\");\n",
    );
    let (code, out) = run_attest(&host, &config, Duration::from_secs(60));
    assert_eq!(code, 0, "{out}");
    assert!(leftover_ssh_clients(&host.addr).is_empty());
}

#[test]
fn ssh_owned_host_may_be_crashed() {
    let mut host = SshdHost::start();
    let (_dir, config) = write_test(
        "ssh-owned-crash",
        &format!(
            r#"{{"remote":{}}}"#,
            ssh_node(&host, &host.key(), &host.known_hosts(), r#","owned":true"#)
        ),
        "remote.start();\nremote.crash();\n",
    );
    let (code, out) = run_attest(&host, &config, Duration::from_secs(60));
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while host.container_running() {
        assert!(Instant::now() < deadline, "the owned host did not go down");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM to attest while a command runs on an ssh host: 128 + SIGTERM,
/// no ssh client left, the command ended on the host (its session closed),
/// and the host itself runs on (attest never powers off a host it did not
/// start).
#[test]
fn ssh_sigterm_mid_command_leaves_no_client_and_no_command() {
    let mut host = SshdHost::start();
    let (_dir, config) = write_test(
        "ssh-sigterm",
        &format!(
            r#"{{"remote":{}}}"#,
            ssh_node(&host, &host.key(), &host.known_hosts(), "")
        ),
        "remote.start();\nremote.succeed(\"sleep 97\");\n",
    );
    let started = Instant::now();
    let mut cmd = host.command(env!("CARGO_BIN_EXE_attest"));
    cmd.arg("run")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // nsenter execs attest: the child's pid is attest's.
    let child = cmd.spawn().expect("run attest");
    let deadline = Instant::now() + Duration::from_secs(60);
    while host.pids_named("sleep").is_empty() {
        assert!(Instant::now() < deadline, "sleep 97 never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id() as i32;
    assert!(pid > 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM attest");
    let r = harness::finish(child, started, Duration::from_secs(60));
    assert_eq!(
        r.code,
        Some(attest::exit_code::interrupted(libc::SIGTERM).into()),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("interrupted by SIGTERM"), "{}", r.stderr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host.pids_named("sleep").is_empty() || !leftover_ssh_clients(&host.addr).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left: sleep {:?}, clients {:?}",
            host.pids_named("sleep"),
            leftover_ssh_clients(&host.addr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(host.container_running());
}
