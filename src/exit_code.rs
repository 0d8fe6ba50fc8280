//! The exit statuses of `attest run`, `check` and `repl`: one table, used by
//! `main` and the tests (the README shows the same table). `attest convert`
//! and `attest bench` use the same three: 0 complete, 1 some statement needs
//! a hand / some figure failed, 2 nothing could be written / the bench could
//! not start.
//!
//! | status  | meaning |
//! |---------|---------|
//! | 0       | the test passed (`check`: config and script are valid) |
//! | 1       | the test failed: a step failed, a machine died, the global timeout passed (`check`: statements marked TODO by `attest convert`) |
//! | 2       | the config, the script or the command line is invalid, or a file the config names is missing; nothing booted |
//! | 128 + N | interrupted by signal N (SIGHUP 129, SIGINT 130, SIGTERM 143), a second signal too: CI can tell "cancelled" from "failed" |

/// The test passed.
pub const PASSED: u8 = 0;
/// The test failed.
pub const FAILED: u8 = 1;
/// The config, the script or the command line is invalid.
pub const INVALID: u8 = 2;

/// The status of a run interrupted by signal `signal`.
pub fn interrupted(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn signals_map_to_128_plus_the_number() {
        assert_eq!(super::interrupted(libc::SIGINT), 130);
        assert_eq!(super::interrupted(libc::SIGTERM), 143);
        assert_eq!(super::interrupted(libc::SIGHUP), 129);
    }
}
