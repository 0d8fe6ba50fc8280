//! Builds the guest agent (`src/agent`, std only) as a static binary with a
//! bare `rustc` call, for the library to embed (`guest::agent`). A failure
//! leaves an empty binary and the reason next to it: attest then falls back
//! to the bash protocol and says why, instead of not building at all.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let agent_dir = manifest.join("src/agent");
    println!("cargo:rerun-if-changed={}", agent_dir.display());
    println!("cargo:rerun-if-changed=build.rs");
    let root = out.join("attest_agent_main.rs");
    std::fs::write(
        &root,
        format!(
            "#[path = {:?}]\nmod agent;\nfn main() {{ agent::main() }}\n",
            agent_dir.join("mod.rs")
        ),
    )
    .expect("write the agent's crate root");
    let binary = out.join("attest-agent");
    let error = out.join("attest-agent.error");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let result = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "bin", "--crate-name"])
        .arg("attest_agent")
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "-A", "warnings"])
        .arg("-o")
        .arg(&binary)
        .arg(&root)
        .output();
    let failure = match result {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "rustc failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Some(format!("cannot run rustc: {e}")),
    };
    match failure {
        None => {
            std::fs::write(&error, b"").expect("write the agent build status");
        }
        Some(why) => {
            println!("cargo:warning=the guest agent was not built; attest will use the bash protocol: {}", why.lines().next().unwrap_or(""));
            std::fs::write(&binary, b"").expect("write the empty agent");
            std::fs::write(&error, why).expect("write the agent build error");
        }
    }
    gzip(&binary, &out.join("attest-agent.gz"));
}

/// The agent as it travels to guests that have gzip (`guest::agent`),
/// compressed here once instead of in every run.
fn gzip(from: &std::path::Path, to: &std::path::Path) {
    use std::io::Write as _;
    let binary = std::fs::read(from).expect("read the agent");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&binary).expect("gzip the agent");
    std::fs::write(to, enc.finish().expect("gzip the agent")).expect("write the gzipped agent");
}
