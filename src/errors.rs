//! Error text every layer shares. A leaf module: nothing here depends on
//! another part of attest.

/// A binary attest runs is not on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{name}` is not installed or not on PATH: install it (apt-get install {package}, or run .ci/install-deps)"
)]
pub struct MissingBinary {
    /// The binary.
    pub name: String,
    /// The Debian package that has it.
    pub package: String,
}

/// An I/O error's reason as a person reads it: `No such file or directory`,
/// without the `(os error 2)` the standard library appends.
pub fn os_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" (os error ") {
        Some((reason, _)) => reason.to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_error_number_is_left_out() {
        let e = std::fs::read("/nonexistent/attest").unwrap_err();
        assert_eq!(os_reason(&e), "No such file or directory");
    }
}
