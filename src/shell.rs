//! Quoting for the POSIX shells attest writes command lines for: the guest's
//! bash, `sh -c` in QEMU's `exec:` URIs, ssh's remote command. A leaf module:
//! every layer may quote without depending on another.

/// Single-quotes `s` for a POSIX shell: `it's` becomes `'it'\''s'`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quoted word reaches a real shell as the exact bytes.
    #[test]
    fn a_real_shell_gets_the_word_back() {
        for word in ["", "plain", "it's", "a b\tc\nd", "$HOME `x` \\ \"q\" '' *"] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(word)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
        }
        assert_eq!(quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
