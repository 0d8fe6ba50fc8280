//! Converted nixpkgs tests really run: `attest convert` on the unmodified
//! nixpkgs file, then `attest run` of its output on nspawn containers from
//! the Debian test image. Where the test waits for a NixOS service Debian
//! does not have, a stand-in unit (nginx answering what the script asks) is
//! provisioned through the node's `extra_args` (`--bind-ro` of a unit
//! directory) — the converted script itself is not touched.
//! Needs root and `images/debian/build`.

mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use attest::exit_code::{FAILED, PASSED};
use harness::{assert_nothing_left, attest, image_manifest};

const LIMIT: Duration = Duration::from_secs(180);

/// A NixOS service stood in for by nginx: the unit's name, the port and
/// the paths it answers with 200 and a body.
struct StandIn {
    unit: &'static str,
    port: u16,
    answers: &'static [(&'static str, &'static str)],
}

/// Converts `tests/fixtures/nixpkgs-tests/<name>.nix` with the binary and
/// returns the output directory; the conversion must be complete.
fn convert(tmp: &Path, name: &str) -> PathBuf {
    let input = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nixpkgs-tests")
        .join(format!("{name}.nix"));
    let out = tmp.join(name);
    let manifest = image_manifest();
    let r = attest(
        &[
            "convert",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--image",
            manifest.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(
        r.code,
        Some(PASSED.into()),
        "convert {name}:\n{}{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stdout.contains("converted completely"), "{}", r.stdout);
    out
}

/// Writes the stand-in units to `dir` (a unit directory with a
/// `multi-user.target.wants`) and adds it to every node of the config.
fn provision(out: &Path, stand_ins: &[StandIn]) {
    let units = out.join("stand-in-units");
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    for s in stand_ins {
        let locations: String = s
            .answers
            .iter()
            .map(|(path, body)| {
                format!("location = {path} {{ default_type text/plain; return 200 '{body}'; }}\n")
            })
            .collect();
        let conf = format!(
            "pid /run/{unit}-nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n access_log off;\n server {{\n  listen {port};\n  {locations} }}\n}}\n",
            unit = s.unit,
            port = s.port
        );
        std::fs::write(units.join(format!("{}-nginx.conf", s.unit)), conf).unwrap();
        let unit = format!(
            "[Unit]\nDescription=stand-in for the NixOS {unit} service (nginx)\n\n[Service]\nExecStart=/usr/sbin/nginx -c /usr/local/lib/systemd/system/{unit}-nginx.conf -g 'daemon off;'\n",
            unit = s.unit
        );
        std::fs::write(units.join(format!("{}.service", s.unit)), unit).unwrap();
        std::os::unix::fs::symlink(
            format!("../{}.service", s.unit),
            wants.join(format!("{}.service", s.unit)),
        )
        .unwrap();
    }
    let config_path = out.join("test.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let bind = format!(
        "--bind-ro={}:/usr/local/lib/systemd/system",
        units.display()
    );
    for node in config["nodes"].as_object_mut().unwrap().values_mut() {
        node["backend"]["nspawn"]["extra_args"] = serde_json::json!([bind]);
    }
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

fn run(out: &Path, name: &str) {
    let config = out.join("test.json");
    let r = attest(&["run", "--quiet-console", config.to_str().unwrap()], LIMIT);
    assert_eq!(
        r.code,
        Some(0),
        "converted {name} failed:\n{}\n{}",
        std::fs::read_to_string(out.join("test.rhai")).unwrap_or_default(),
        r.stderr
    );
    assert!(r.stderr.contains("test passed"), "{}", r.stderr);
    assert_nothing_left(&r, name);
}

/// `machine.fail("grep . /etc/terminfo-missing >&2")`: holds on Debian as on
/// NixOS with every terminfo present; no adaptation.
#[test]
fn converted_all_terminfo_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = convert(tmp.path(), "all-terminfo");
    run(&out, "all-terminfo");
}

/// gotenberg: the service, its port 3000 and `/health`, stood in by nginx.
#[test]
fn converted_gotenberg_runs() {
    converted_runs_with(
        "gotenberg",
        StandIn {
            unit: "gotenberg",
            port: 3000,
            answers: &[("/health", "{\"status\":\"up\"}")],
        },
    );
}

/// zoneminder: Debian's own nginx.service, plus a stand-in zoneminder.service
/// answering on 8095.
#[test]
fn converted_zoneminder_runs() {
    converted_runs_with(
        "zoneminder",
        StandIn {
            unit: "zoneminder",
            port: 8095,
            answers: &[("/", "ZoneMinder")],
        },
    );
}

fn converted_runs_with(name: &str, stand_in: StandIn) {
    let tmp = tempfile::tempdir().unwrap();
    let out = convert(tmp.path(), name);
    provision(&out, &[stand_in]);
    run(&out, name);
}

/// A converted script that does not hold fails the run: the stand-in
/// service fails to start, so `wait_for_unit` fails as on a broken NixOS
/// service.
#[test]
fn a_converted_test_fails_when_the_service_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let out = convert(tmp.path(), "gotenberg");
    provision(
        &out,
        &[StandIn {
            unit: "gotenberg",
            port: 3000,
            answers: &[],
        }],
    );
    let unit = out.join("stand-in-units/gotenberg.service");
    std::fs::write(&unit, "[Service]\nExecStart=/bin/false\n").unwrap();
    let config = out.join("test.json");
    let r = attest(&["run", "--quiet-console", config.to_str().unwrap()], LIMIT);
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(r.stderr.contains("gotenberg.service"), "{}", r.stderr);
    assert_nothing_left(&r, "gotenberg");
}

/// Python idioms of NixOS test scripts keep Python's results once converted:
/// a dict comprehension over split lines, a PEP 701 f-string, `re` flags,
/// slices, format specs and `!r`, `@polling_condition`, `for … else`,
/// `try … finally`, `sorted(reverse=True)`, `sum`/`max`, `all` over a
/// generator, `succeed(*cmds)`, a `@contextmanager`, a `return` inside a
/// subtest in a function — converted unedited and
/// run on nspawn; the
/// printed line is what Python prints. A false assertion fails the run.
#[test]
fn converted_python_idioms_keep_python_semantics() {
    const SCRIPT: &str = r#"import re
import json
start_all()
machine.wait_for_unit("multi-user.target", None, 120)
out = machine.succeed("printf 'a: 1\\nb: 2\\n\\n'")
fields = {k: v for (k, v) in (l.split(": ", 1) for l in out.splitlines() if l)}
assert fields.get('a') == "1", f'bad a: {fields.get('a')}'
assert re.search(r"^b: 2$", out, re.M)
host = machine.succeed("hostname").strip()
assert host[:3] == host[0:3] and len(host[-2:]) == 2
print(f"{len(fields):03d} {3.14159:.2f} {host!r}")
@polling_condition(seconds_interval=1)
def shell_up():
    machine.succeed("true")
with shell_up:
    machine.succeed("true")
for attempt in range(5):
    if machine.execute("test -d /tmp")[0] == 0:
        break
else:
    raise Exception("no /tmp")
try:
    machine.succeed("echo x > /tmp/f")
finally:
    machine.succeed("rm -f /tmp/f")
nums = sorted([int(x) for x in re.findall(r"\d+", out)], reverse=True)
assert nums == [2, 1] and sum(nums) == 3 and max(nums) == 2
data = json.loads(machine.succeed("echo '{\"k\": [1, 2]}'"))
assert all(v > 0 for v in data["k"])
machine.succeed(*[f"test {n} -gt 0" for n in nums])
machine.fail("test -e /tmp/f")
from contextlib import contextmanager
@contextmanager
def marked(m):
    m.succeed("touch /tmp/in")
    yield
    m.succeed("rm /tmp/in")
with marked(machine):
    machine.succeed("test -e /tmp/in")
machine.fail("test -e /tmp/in")
def first_word(m):
    with subtest("read"):
        out = m.succeed("echo hello world")
        if out:
            return out.split()[0]
    return "none"
assert first_word(machine) == "hello"
"#;
    let tmp = tempfile::tempdir().unwrap();
    let manifest = image_manifest();
    let convert_and_run = |name: &str, script: &str| {
        let py = tmp.path().join(format!("{name}.py"));
        std::fs::write(&py, script).unwrap();
        let out = tmp.path().join(name);
        let r = attest(
            &[
                "convert",
                py.to_str().unwrap(),
                "--nodes",
                "machine",
                "-o",
                out.to_str().unwrap(),
                "--image",
                manifest.to_str().unwrap(),
            ],
            Duration::from_secs(60),
        );
        assert_eq!(r.code, Some(PASSED.into()), "{}{}", r.stdout, r.stderr);
        let config = out.join("test.json");
        let run = attest(&["run", "--quiet-console", config.to_str().unwrap()], LIMIT);
        assert_nothing_left(&run, name);
        (run, out)
    };
    let (r, out) = convert_and_run("idioms", SCRIPT);
    assert_eq!(
        r.code,
        Some(PASSED.into()),
        "{}\n{}",
        std::fs::read_to_string(out.join("test.rhai")).unwrap_or_default(),
        r.stderr
    );
    assert!(r.stderr.contains("002 3.14 'machine'"), "{}", r.stderr);

    let wrong = SCRIPT.replace("nums == [2, 1]", "nums == [1, 2]");
    let (r, _) = convert_and_run("wrong", &wrong);
    assert_eq!(r.code, Some(FAILED.into()), "{}", r.stderr);
    assert!(r.stderr.contains("nums == [1, 2]"), "{}", r.stderr);
}
