//! The nixpkgs tests translated by hand in `examples/nixpkgs/` pass on
//! nspawn containers from the Debian test image, with no attest-specific
//! workaround in their scripts. Needs root and `images/debian/build`.

mod harness;

use std::path::Path;
use std::time::Duration;

use attest::exit_code::PASSED;
use harness::{assert_nothing_left, attest, image_manifest};

fn passes(name: &str) {
    image_manifest();
    let config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/nixpkgs")
        .join(name)
        .join("test.json");
    let r = attest(
        &["run", "--quiet-console", config.to_str().unwrap()],
        Duration::from_secs(180),
    );
    assert_eq!(r.code, Some(PASSED.into()), "{name}:\n{}", r.stderr);
    assert!(r.stderr.contains("test passed"), "{}", r.stderr);
    assert_nothing_left(&r, name);
}

#[test]
fn systemd_user_tmpfiles_rules() {
    passes("systemd-user-tmpfiles-rules");
}

#[test]
fn tor() {
    passes("tor");
}

#[test]
fn traefik() {
    passes("traefik");
}

#[test]
fn minidlna() {
    passes("minidlna");
}
