//! `attest convert`: one snapshot per translation rule, the Nix file eras,
//! and the whole nixpkgs corpus (tests/fixtures/nixpkgs-tests, a copy of
//! ../shared/nixpkgs-tests) converted and
//! checked (`attest check`'s library function) with the share that passes.

use std::path::{Path, PathBuf};

use attest::convert::{self, nix::PythonSource, ConvertOptions};
use attest::exit_code::{FAILED, INVALID, PASSED};

fn py(src: &str, nodes: &[&str]) -> String {
    let nodes: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
    let py = PythonSource {
        text: src.to_owned(),
        ..Default::default()
    };
    let c = convert::convert_python("t", &py, Some(&nodes));
    // What converted completely must also pass `attest check` unedited.
    if c.summary.complete() {
        let dir = tempfile::tempdir().unwrap();
        let opts = ConvertOptions::default();
        let s = convert::write(std::slice::from_ref(&c), dir.path(), &opts).unwrap();
        attest::driver::check_test(&Path::new(&s[0].out_dir).join("test.json"))
            .unwrap_or_else(|e| panic!("{}\n{e}", c.rhai));
    }
    let mut out = c.rhai;
    for t in &c.summary.todos {
        out.push_str(&format!("// summary: line {}: {}\n", t.line, t.reason));
    }
    out
}

macro_rules! rule {
    ($name:ident, $src:expr) => {
        rule!($name, $src, &["machine", "server", "client"]);
    };
    ($name:ident, $src:expr, $nodes:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(py($src, $nodes));
        }
    };
}

rule!(
    driver_calls_and_options,
    r#"start_all()
machine.wait_for_unit("nginx.service")
machine.wait_for_open_port("80")
server.wait_for_open_port(8080, "localhost", timeout=30)
machine.wait_for_unit("foo", user="alice")
out = machine.succeed("echo a", "echo b", timeout=10)
machine.succeed("a", "b")
machine.wait_until_succeeds("curl -sf localhost", timeout=60)
machine.wait_until_tty_matches("1", "login: ")
"#
);

// NixOS takes every parameter positionally; `None` is its default.
rule!(
    positional_options_keyword_defaults_and_none,
    r#"machine.wait_for_unit("foo.service", None, 30)
machine.wait_for_unit("bar.service", user=None)
machine.wait_until_succeeds("test -e /run/ready", 60)
server.wait_for_open_port(80, "127.0.0.1", 10)
machine.start(allow_reboot=True)
machine.send_key("ctrl-alt-delete", log=False)
machine.send_chars("root\n", delay=0.2)
machine.execute("true", False)
machine.systemctl("restart foo", None)
"#
);

rule!(
    python_string_methods_slices_and_repr,
    r#"token = server.succeed("cat /token").strip().removeprefix("'").removesuffix("'")
name = machine.succeed("hostname").rstrip("\n")
assert machine.succeed("cat /etc/passwd").count("nologin") > 2
assert machine.succeed("uname").find("Linux") != -1
assert machine.succeed("id -u").strip().isdigit()
first = token[:8]
last = token[-4:]
initial = token[0]
lines = sorted(machine.succeed("ls /etc").splitlines())
middle = lines[1:-1]
import re
ports = re.findall(r":(\d+) ", machine.succeed("ss -ltn"))
print(f"token {token!r}", repr(ports), sep=": ", end="")
print("done", flush=True)
"#
);

// The driver's `machines`; `time.time()` for durations; the lines of
// `splitlines()` and fields of `split()` are strings, so `if line` is
// Python's truthiness.
rule!(
    machines_time_and_string_elements,
    r#"for m in machines:
    m.wait_for_unit("multi-user.target")
import time
start = time.time()
lines = [l for l in machine.succeed("ls /etc").splitlines() if l]
for word in machine.succeed("cat /etc/hostname").split():
    if word:
        print(word)
assert time.time() - start < 60
"#
);

// `re` flags become inline `(?m)`, `re.match` anchors with `\A`;
// `re.sub`, `textwrap.dedent`, format specs in f-strings, `str.format` and
// `%`, `int(x, 16)`, `startswith` over a tuple.
rule!(
    regex_flags_sub_dedent_and_format_specs,
    r#"import re
import textwrap
out = machine.succeed("systemctl status foo")
assert re.search(r"^\s+Active: active", out, re.MULTILINE | re.I)
assert re.match("foo", out, flags=re.S) is None
masked = re.sub(r"token=(\w+)", r"token=<\1>", out)
script = textwrap.dedent("""
    set -e
    echo hi
""")
machine.succeed(script)
size = int(machine.succeed("stat -c %s /big"))
print(f"{size / 1024:.1f} KiB, {size:>10,} bytes {out!r:.20}")
print("{0:>5} {name:03d}".format(size, name=7))
print("%-8s|%5.2f|%x" % ("a", 1.5, 255))
mode = int(machine.succeed("stat -c %a /etc"), 8)
assert out.startswith(("●", "○"))
"#
);

// Python 3.12 f-strings reusing their quote inside `{…}` (PEP 701); dict
// comprehensions; comprehensions over tuples.
rule!(
    pep701_fstrings_and_dict_comprehensions,
    r#"def fields(output):
    return {k: v for (k, v) in (l.split(": ", 1) for l in output.splitlines() if l != "")}

user = fields(machine.succeed("ldapsearch -LLL uid=alice"))
if user.get('mail') != "alice@example.com":
    raise Exception(f'unexpected mail: {user.get('mail')}')
sizes = {name: int(size) for name, size in [("a", "1"), ("b", "2")] if name != "b"}
pairs = [f"{k}={v}" for k, v in [("x", 1)]]
"#
);

// `@polling_condition` functions and `with` over them; `for`/`while` with
// `else`; `sorted(…, reverse=True)`; `succeed(*cmds)`; `del d[k]`.
rule!(
    polling_conditions_loop_else_and_sorted_reverse,
    r#"@polling_condition
def nginx_running():
    machine.succeed("pgrep nginx")

@polling_condition(seconds_interval=10, description="the API answers")
def api_up():
    server.succeed("curl -sf localhost/health")

with nginx_running:
    machine.succeed("systemctl reload nginx")
    reloaded = True
with subtest("api"), api_up:
    server.succeed("curl -sf localhost/api")
print(reloaded)
for attempt in range(10):
    if machine.execute("test -e /run/ready")[0] == 0:
        break
    machine.sleep(1)
else:
    raise Exception("never ready")
newest = sorted(machine.succeed("ls /srv").split(), reverse=True)
cmds = [f"test -d /srv/{n}" for n in newest]
machine.succeed(*cmds)
seen = {"a": 1, "b": 2}
del seen["a"]
"#
);

// Driver methods attest has (QEMU-only ones put the node on QEMU, so the
// result still passes check).
rule!(
    monitor_qmp_tty_and_copy_methods,
    r#"info = machine.send_monitor_command("info status")
machine.wait_for_qmp_event(lambda event: event["event"] == "SHUTDOWN", 60)
machine.dump_tty_contents("2")
texts = machine.get_screen_text_variants()
machine.copy_from_machine("/var/log/app.log")
windows = machine.get_window_names()
log_text = machine.get_console_log()
"#,
    &["machine"]
);

// Python's list builtins as values: `zip`, `enumerate`, `range`, `sum`,
// `max`/`min` of a list, `any`/`all` of a list, `dict.items()`; Python's
// truth of a value of unknown type; `and`/`or` giving an operand;
// repetition, `//`, chained assignment, `str(bool)`, `enumerate(xs, 1)`.
rule!(
    list_builtins_as_values,
    r#"ports = [80, 443]
names = ["http", "https"]
pairs = [f"{n}:{p}" for n, p in zip(names, ports)]
numbered = [f"{i}. {n}" for i, n in enumerate(names, 1)]
squares = [i * i for i in range(1, 4)]
total = sum(ports)
assert max(ports) == 443 and min(ports) == 80
up = [machine.execute(f"curl -sf localhost:{p}")[0] == 0 for p in ports]
assert all(up) or any(up)
env = {"A": "1", "B": "2"}
exports = " ".join(f"{k}={v}" for k, v in env.items())
import json
print(json.dumps(env, indent=2, sort_keys=True))
def state(flag):
    if flag:
        return "on"
    return "off"
label = machine.succeed("cat /etc/label").strip() or "unlabelled"
print("=" * 40)
half = total // 2
half //= 2
rule_line = "-"
rule_line *= 10
first = second = machine.succeed("date +%s").strip()
flag = str(max(ports) > 80)
up_now = machine.execute("true")[0] == 0
print(f"up={up_now}", "none:", None)
for i, name in enumerate(names, 1):
    print(f"{i}: {name}")
def pick(a, b):
    if a and not b:
        return a and b
"#
);

// `@contextmanager` functions take the `with` body as a closure their
// `yield` calls; a `return` inside a subtest in a function comes back
// through the subtest's value.
rule!(
    context_managers,
    r#"from contextlib import contextmanager

@contextmanager
def record_audio(machine: Machine):
    machine.systemctl("start audio-recorder")
    yield
    machine.systemctl("stop audio-recorder")

with subtest("sound"):
    with record_audio(machine):
        machine.succeed("play ding.oga")
    machine.copy_from_vm("/tmp/record.wav")

def version(m):
    with subtest("version"):
        out = m.succeed("app --version")
        with subtest("parse"):
            if out.startswith("app "):
                return out.split()[1]
        m.log(out)
    return None
"#
);

rule!(
    subtest_hoists_names_used_after,
    r#"with subtest("first"):
    token = server.succeed("cat /token").strip()
    unused = 1
    server.succeed(f"use {token}")
client.succeed(f"echo {token}")
with machine.nested("waiting"):
    machine.wait_for_unit("x")
"#
);

rule!(
    def_fn_closure_defaults_keywords,
    r#"def check(m, port=80, *, proto="http"):
    m.succeed(f"curl {proto}://localhost:{port}")

url = "http://server"

def fetch(path):
    return client.succeed(url + path)

check(server)
check(server, proto="https", port=443)
fetch("/index.html")

def varargs(*args):
    return " ".join(args)

varargs("a", "b")
"#
);

rule!(
    loops,
    r#"for m in [server, client]:
    m.wait_for_unit("multi-user.target")
for node in server, client:
    node.succeed("true")
for i in range(3):
    machine.succeed(f"echo {i}")
for i, name in enumerate(["a", "b"]):
    machine.succeed(f"echo {i} {name}")
for k, v in {"a": "1"}.items():
    machine.succeed(f"echo {k}={v}")
for a, b in [("x", "y")]:
    machine.succeed(a + b)
"#
);

rule!(
    comprehensions_and_any_all,
    r#"lines = machine.succeed("ls").splitlines()
big = [l.upper() for l in lines if l.startswith("a")]
assert any(l.endswith(".conf") for l in lines)
assert all(len(l) > 0 for l in lines)
"#
);

rule!(
    execute_tuples,
    r#"status, out = machine.execute("true")
_, out = machine.execute("cat /etc/hostname")
code = machine.execute("false")[0]
rc, _ = machine.systemctl("is-active foo")
_, log_text = machine.execute("journalctl -b", check_return=False, timeout=30)
"#
);

rule!(
    strings_fstrings_format,
    r#"name = "world"
a = f"hello {name}!"
b = "hello {}, {x}".format(name, x=2)
c = "%s and %d" % (name, 3)
d = f"literal ${{HOME}} and `tick` {name}"
e = f"value: {name!r}"
f = '''multi
line'''
g = "tab\there"
h = "a" + name + "b" + (name + "c")
"#
);

rule!(
    asserts,
    r#"out = machine.succeed("cat /etc/os-release")
assert "Debian" in out
assert "Windows" not in out
assert out.strip() == "x"
assert len(out) > 3, "too short"
import re
assert re.search(r"ID=\w+", out)
assert out, f"empty: {out}"
"#
);

rule!(
    strip_split_json_re_shlex_time,
    r#"import json, re, shlex, time
raw = machine.succeed("cat data.json")
data = json.loads(raw)
text = json.dumps({"a": 1})
n = int(machine.succeed("wc -l < /etc/passwd"))
parts = raw.split(":", 1)
words = raw.split()
m = re.search(r"version (\d+)", raw)
major = m.group(1)
if re.match(r"\d+", raw):
    machine.succeed(f"echo {shlex.quote(raw)}")
time.sleep(2)
x = raw.lstrip().rstrip()
y = raw.replace("a", "b").upper()
"#
);

rule!(
    try_raise_print_if,
    r#"try:
    machine.succeed("false")
except Exception as e:
    print("failed:", e)
    raise Exception(f"bad: {e}")
if machine.succeed("cat x").strip() == "1":
    print("one")
elif False:
    pass
else:
    raise AssertionError("other")
try:
    machine.succeed("x")
except subprocess.CalledProcessError:
    pass
try:
    machine.succeed("mount /dev/vdb /mnt")
    mounted = True
finally:
    machine.succeed("sync")
print(mounted)
try:
    out = machine.succeed("cat /mnt/data")
except Exception as e:
    print(f"no data: {e}")
else:
    print(out)
finally:
    machine.succeed("umount /mnt")
"#
);

rule!(
    refused_and_host_side,
    r#"import subprocess
subprocess.run(["ls"])
with open("/tmp/x") as f:
    data = f.read()
print(data)
machine.shell_interact()
x = y // 2
class Foo:
    pass
"#
);

rule!(
    logger_and_serial_output,
    r#"log.info("starting")
serial_stdout_off()
machine.succeed("true")
serial_stdout_on()
with log.nested("section"):
    log.warning(machine.succeed("hostname"))
"#
);

rule!(
    comments_and_blank_lines,
    r#"# start everything
start_all()

# then wait
machine.wait_for_unit("x")  # trailing
"#
);

rule!(
    retry_and_closures,
    r#"def ready(last):
    return "ok" in machine.succeed("cat /status")
retry(ready)
f = lambda x: x + 1
f(1)
"#
);

// A node may bear a Python module's name (grafana's `socket`): without an
// `import`, the name is the node, as in the NixOS driver's globals; an
// imported module and the driver's `os` stay host-side.
rule!(
    nodes_named_like_modules,
    r#"socket.wait_for_unit("nginx.service")
http.succeed("curl --fail http://socket/")
os.system("true")
import subprocess
subprocess.run(["true"])
"#,
    &["socket", "http"]
);

/// Converts one Nix file and renders every test's script, config and
/// summary, for a snapshot.
fn nix(src: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.nix");
    std::fs::write(&file, src).unwrap();
    let opts = ConvertOptions {
        image: Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian/out/manifest.json"),
        ..Default::default()
    };
    let convs = convert::convert_file(&file, &opts).unwrap();
    let summaries = convert::write(&convs, &dir.path().join("out"), &opts).unwrap();
    let mut out = String::new();
    for s in &summaries {
        let dir = Path::new(&s.out_dir);
        let json = std::fs::read_to_string(dir.join("test.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        if s.complete() {
            attest::driver::check_test(&dir.join("test.json")).unwrap_or_else(|e| panic!("{e}"));
        }
        out.push_str(&format!(
            "== {} (global_timeout {}, nodes {:?})\n{}",
            s.name,
            json["global_timeout"],
            json["nodes"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            std::fs::read_to_string(dir.join("test.rhai")).unwrap()
        ));
        if let Some(f) = &s.fatal {
            out.push_str(&format!("// summary: {f}\n"));
        }
    }
    out
}

// A test factory's `if testScript != null then testScript else ''…''`:
// the string branch is converted and the summary says which; two strings
// stay for a hand. `send_monitor_command("quit")` is NixOS's `crash()`.
#[test]
fn nix_if_else_script_and_monitor_quit() {
    let out = nix(r#"let
  mk = name: { testScript ? null }: {
    inherit name;
    nodes.server = { };
    testScript = if testScript != null then testScript else ''
      server.wait_for_unit("vaultwarden.service")
      server.send_monitor_command("quit")
      server.wait_for_shutdown()
    '';
  };
  two = {
    name = "two";
    nodes.m = { };
    testScript = if true then "m.succeed('a')" else "m.succeed('b')";
  };
in { a = mk "factory" { }; inherit two; }
"#);
    assert!(
        out.contains("// Note: the testScript is chosen by Nix (`if testScript != null then … else …`): this is its `else` branch")
            && out.contains("server.wait_for_unit(\"vaultwarden.service\");\nserver.crash();\nserver.wait_for_shutdown();"),
        "{out}"
    );
    assert!(
        out.contains("// summary: the testScript is chosen by Nix (`if true then … else …`) between two strings or none"),
        "{out}"
    );
}

// `testScript = ''…'' + extraTest + lib.optionalString c ''…''`: the strings
// are converted, the operand Nix splices in as code is a TODO at its place,
// an optional string's code follows a TODO naming its condition; `exit(1)` fails the test;
// a name with an interpolation keeps one dash.
#[test]
fn nix_concatenated_script_and_exit() {
    let out = nix(r#"let
  mk = type: { extraTest ? "" }: makeTest {
    name = "zfs-${type}";
    nodes.machine = { };
    testScript = ''
      machine.wait_for_unit("multi-user.target")
      size = int(machine.succeed("df -k --output=size /tank | tail -n1"))
      if size < 1000:
          exit(1)
    ''
    + extraTest
    + lib.optionalString pkgs.stdenv.isx86_64 ''
      machine.succeed("modprobe kvm-intel")
    '';
  };
in { a = mk "stable" { }; }
"#);
    assert!(out.starts_with("== zfs-type "), "{out}");
    assert!(
        out.contains("    throw \"the script called exit(1)\";\n")
            && out.contains("// TODO(convert), source line 10: Python code Nix splices in here (its value is known only to Nix): convert it by hand\n// TODO(convert): ${extraTest}\n"),
        "{out}"
    );
    // `lib.optionalString c ''…''`: converted after a TODO naming `c`.
    assert!(
        out.contains("only when `pkgs.stdenv.isx86_64` (lib.optionalString): keep, guard or drop them by hand\n// TODO(convert): ${lib.optionalString (pkgs.stdenv.isx86_64) ''…''}\nmachine.succeed(\"modprobe kvm-intel\");\n"),
        "{out}"
    );
}

// `nodes = { inherit server; inherit (common) client; … }`: inherited
// names are nodes too.
#[test]
fn nix_inherited_nodes() {
    let out = nix(r#"let
  server = { services.nginx.enable = true; };
  common.client = { };
in {
  name = "inherited";
  nodes = {
    inherit server;
    inherit (common) client;
    extra = { };
  };
  testScript = ''
    server.wait_for_unit("nginx")
    client.succeed("curl server")
    extra.succeed("true")
  '';
}
"#);
    assert!(
        out.starts_with(
            "== inherited (global_timeout 3600, nodes [\"client\", \"extra\", \"server\"])"
        ) && out.contains("server.wait_for_unit(\"nginx\");"),
        "{out}"
    );
}

// `containers.X` (the NixOS driver's nspawn nodes) are nodes like
// `nodes.X`; `inherit containers;` is computed, so they are guessed;
// `globalTimeout` (a literal or `60 * 60`) becomes `global_timeout`, NixOS's
// one hour when absent; a Perl testScript of the old driver is named as such.
#[test]
fn nix_containers_global_timeout_and_perl() {
    insta::assert_snapshot!(nix(r#"{ lib, ... }:
let
  containers = lib.mapAttrs (_: v: v) { socket = { }; sqlite = { }; };
in {
  literal = {
    name = "literal";
    globalTimeout = 5;
    containers.alpha = { };
    nodes.beta = { };
    testScript = ''
      alpha.wait_for_unit("nginx.service")
      beta.succeed("curl --fail http://alpha/")
    '';
  };
  computed = {
    name = "computed";
    globalTimeout = 2 * 60;
    nodes.gamma = { };
    inherit containers;
    testScript = ''
      socket.wait_for_open_port(80)
      sqlite.succeed("true")
    '';
  };
  defaults = {
    name = "defaults";
    containers = { delta = { }; };
    testScript = "delta.succeed('true')";
  };
  perl = {
    name = "perl";
    machine = { };
    testScript = ''
      startAll;
      $machine->waitForUnit("multi-user.target");
    '';
  };
}
"#));
}

#[test]
fn nix_file_eras_and_multi_test_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("multi.nix");
    std::fs::write(
        &file,
        r#"{ pkgs, lib, ... }:
let
  mk = name: import ./make-test-python.nix {
    inherit name;
    machine = { ... }: { };
    testScript = { nodes, ... }: ''
      machine.succeed("${pkgs.hello}/bin/hello")
    '';
  };
in {
  a = mk "a";
  b = import ./make-test-python.nix ({ pkgs, ... }: {
    name = "b";
    nodes.server = { };
    nodes.client = { };
    testScript = ''
      start_all()
      client.succeed("curl http://server")
    '';
  });
}
"#,
    )
    .unwrap();
    let opts = ConvertOptions::default();
    let convs = convert::convert_file(&file, &opts).unwrap();
    let out = dir.path().join("out");
    let summaries = convert::write(&convs, &out, &opts).unwrap();
    assert_eq!(summaries.len(), 2);
    // `inherit name` is no literal and Nix is not evaluated: the test is
    // named by the binding of its attrset, `mk`.
    assert!(out.join("mk/test.rhai").exists(), "{summaries:?}");
    assert!(out.join("b/test.json").exists());
    let a = std::fs::read_to_string(out.join("mk/test.rhai")).unwrap();
    assert!(
        a.contains(r#"machine.succeed("${pkgs.hello}/bin/hello");"#),
        "{a}"
    );
    let nix = std::fs::read_to_string(out.join("mk/test-script.nix")).unwrap();
    assert!(
        nix.contains(r#"machine.succeed("${pkgs.hello}/bin/hello");"#),
        "{nix}"
    );
    let json = std::fs::read_to_string(out.join("b/test.json")).unwrap();
    assert!(
        json.contains("\"client\"") && json.contains("\"server\""),
        "{json}"
    );
    for s in &summaries {
        assert!(s.complete(), "{}", s.render("multi.nix"));
        attest::driver::check_test(&Path::new(&s.out_dir).join("test.json"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nixpkgs-tests")
}

/// Converts all of tests/fixtures/nixpkgs-tests, checks each result, prints the
/// table and asserts the share the README states.
#[test]
fn corpus_converts_and_passes_check() {
    let corpus = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("{}: {e}", corpus.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "nix"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 45, "the corpus has 45 test files");
    let out = tempfile::tempdir().unwrap();
    let opts = ConvertOptions {
        image: Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian/out/manifest.json"),
        ..Default::default()
    };
    let (mut good, mut host_side, mut total) = (0, 0, 0);
    let mut report = String::new();
    for f in &files {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let convs = convert::convert_file(f, &opts).unwrap_or_else(|e| panic!("{e}"));
        let summaries = convert::write(&convs, &out.path().join(&stem), &opts).unwrap();
        for s in summaries {
            total += 1;
            let check = attest::driver::check_test(&Path::new(&s.out_dir).join("test.json"));
            let verdict = if !s.host_side.is_empty() {
                host_side += 1;
                "host-side Python (flagged)".to_owned()
            } else if !s.complete() {
                format!(
                    "incomplete: {} TODO(s)",
                    s.todos.len() + usize::from(s.fatal.is_some())
                )
            } else if let Err(e) = &check {
                format!(
                    "check failed: {}",
                    e.to_string().lines().next().unwrap_or("")
                )
            } else {
                good += 1;
                "ok".to_owned()
            };
            report.push_str(&format!("{stem:32} {verdict}\n"));
        }
    }
    let eligible = total - host_side;
    let share = good as f64 * 100.0 / eligible as f64;
    println!("{report}");
    println!(
        "corpus: {good} of {eligible} tests without host-side Python convert completely and pass check ({share:.0} %); {host_side} use host-side Python"
    );
    assert!(
        share >= 85.0,
        "only {share:.0} % convert completely and pass check:\n{report}"
    );
}

/// The command line: a bare Python testScript with `--nodes`, the exit
/// status for a complete (0) and an incomplete (1) conversion, and 2 when
/// nothing can be written.
#[test]
fn cli_converts_a_bare_python_script() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_attest"))
            .arg("convert")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::fs::write(
        dir.path().join("ok.py"),
        "start_all()\nweb_1.wait_for_unit(\"nginx.service\")\nclient.succeed(\"curl -sf http://web-1\")\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run(&["ok.py", "--nodes", "web-1,client", "-o", "ok"]);
    assert_eq!(code, Some(PASSED.into()), "{stdout}{stderr}");
    assert!(stdout.contains("converted completely"), "{stdout}");
    let json = std::fs::read_to_string(dir.path().join("ok/test.json")).unwrap();
    assert!(json.contains("\"web-1\""), "{json}");
    let rhai = std::fs::read_to_string(dir.path().join("ok/test.rhai")).unwrap();
    assert!(
        rhai.contains("web_1.wait_for_unit(\"nginx.service\");"),
        "{rhai}"
    );

    std::fs::write(
        dir.path().join("todo.py"),
        "import subprocess\nsubprocess.run(['ls'])\n",
    )
    .unwrap();
    let (code, stdout, _) = run(&["todo.py", "-o", "todo"]);
    assert_eq!(code, Some(FAILED.into()), "{stdout}");
    assert!(
        stdout.contains("todo.py:1: host-side Python (module `subprocess`)"),
        "{stdout}"
    );
    let rhai = std::fs::read_to_string(dir.path().join("todo/test.rhai")).unwrap();
    assert!(
        rhai.contains("// TODO(convert): import subprocess"),
        "{rhai}"
    );
    // `attest check` names each statement left as TODO, with its source line.
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian/out/manifest.json");
    let image = image.to_str().unwrap();
    run(&[
        "todo.py", "--nodes", "machine", "-o", "todo", "--image", image,
    ]);
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_attest"))
        .args(["check", "todo/test.json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(FAILED.into()), "{stderr}");
    assert!(
        stderr.contains("2 statement(s)")
            && stderr.contains("test.rhai:5: // TODO(convert), source line 1: host-side Python (module `subprocess`)")
            && stderr.contains("source line 2:"),
        "{stderr}"
    );

    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian/out/manifest.json");
    let (code, stdout, stderr) = run(&[
        "ok.py",
        "--nodes",
        "web-1,client",
        "-o",
        "qemu",
        "--backend",
        "qemu",
        "--image",
        image.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(PASSED.into()), "{stdout}{stderr}");
    let json = std::fs::read_to_string(dir.path().join("qemu/test.json")).unwrap();
    assert!(json.contains("\"qemu\""), "{json}");
    attest::driver::check_test(&dir.path().join("qemu/test.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, stderr) = run(&["ok.py", "-o", "ssh", "--backend", "ssh"]);
    assert_eq!(code, Some(INVALID.into()));
    assert!(
        stderr.contains("write other backends' settings by hand"),
        "{stderr}"
    );

    let (code, _, stderr) = run(&["missing.nix", "-o", "x"]);
    assert_eq!(code, Some(INVALID.into()));
    assert!(stderr.contains("missing.nix: cannot read"), "{stderr}");
}

/// Nix interpolations: kept verbatim in strings, `${toString …}` in code as
/// a number, anything else in code a TODO; `test-script.nix` has them live.
#[test]
fn nix_interpolations() {
    let py = PythonSource {
        text: "machine.wait_for_open_port(__nix_interp_0__)\nmachine.succeed(\"__nix_interp_1__/bin/hello\")\nmachine.succeed(f\"echo {__nix_interp_2__}\")\nmachine.wait_for_open_port(__nix_interp_3__)\n".to_owned(),
        interpolations: vec![
            "${toString port}".to_owned(),
            r#"${pkgs.writeText "a" "b"}"#.to_owned(),
            "${builtins.toJSON x}".to_owned(),
            "${builtins.toString nodes.server.services.foo.port}".to_owned(),
        ],
        line_offset: 10,
        ..Default::default()
    };
    let c = convert::convert_python("t", &py, Some(&["machine".to_owned()]));
    let nix = c.nix_script.clone().unwrap();
    insta::assert_snapshot!(format!(
        "{}\n// summary: {:?}\n---- test-script.nix\n{nix}",
        c.rhai, c.summary.todos
    ));
}

/// A node named with a Rhai keyword is `default` in the Python (NixOS maps
/// only non-identifiers) and `default_` in the Rhai (miniflux's node).
#[test]
fn a_node_named_with_a_rhai_keyword() {
    let out = py(
        "default.start()\nother.start()\nm = default\nm.succeed(\"true\")\n",
        &["default", "other"],
    );
    assert!(out.contains("default_.start();"), "{out}");
    assert!(!out.contains("TODO"), "{out}");
}

/// A node whose calls nspawn cannot do (a screen, keys) is written on QEMU,
/// with OCR when it reads the screen, so `attest check` accepts the result;
/// the other nodes stay on nspawn.
#[test]
fn nodes_that_need_a_screen_go_on_qemu() {
    let c = convert::convert_python(
        "t",
        &PythonSource {
            text: "start_all()\nclient.wait_for_text('login')\nclient.send_chars('x')\nserver.succeed('true')\n"
                .to_owned(),
            ..Default::default()
        },
        Some(&["client".to_owned(), "server".to_owned()]),
    );
    assert!(c.summary.complete(), "{}", c.rhai);
    let dir = tempfile::tempdir().unwrap();
    let s = convert::write(
        std::slice::from_ref(&c),
        dir.path(),
        &ConvertOptions::default(),
    )
    .unwrap();
    let config = Path::new(&s[0].out_dir).join("test.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(
        json["nodes"]["client"]["backend"]["qemu"]["enable_ocr"], true,
        "{json}"
    );
    assert!(
        json["nodes"]["server"]["backend"]["nspawn"].is_object(),
        "{json}"
    );
    attest::driver::check_test(&config).unwrap();
}
