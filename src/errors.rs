//! Error text every layer shares. A leaf module: nothing here depends on
//! another part of attest.

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
